//! Reading and writing the files the CLI touches: private keys and age
//! identities only when no one else can read them, new files only where
//! nothing exists yet, secrets only with mode 0600.
//!
//! Nothing here ever prints a file's content.

use std::fs::{self, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

/// A file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file does not exist.
    #[error("{} does not exist; check the path", path.display())]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// The file exists but could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A private file is readable or writable by group or others.
    #[error(
        "{} is accessible by other users (mode {mode:03o}); a private key or identity must be mode 0600: run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    TooOpen {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A file to be written already exists.
    #[error(
        "{} already exists; keyholder never overwrites a file: move it away or choose another path",
        path.display()
    )]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// A file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

fn read_error(path: &Path, source: io::Error) -> FileError {
    if source.kind() == io::ErrorKind::NotFound {
        FileError::Missing {
            path: path.to_owned(),
        }
    } else {
        FileError::Read {
            path: path.to_owned(),
            source,
        }
    }
}

/// Reads a public file (a certificate, a CA).
pub fn read_public(path: &Path) -> Result<Vec<u8>, FileError> {
    fs::read(path).map_err(|e| read_error(path, e))
}

/// Refuses a private file that group or others can access, before reading it.
pub fn check_private(path: &Path) -> Result<(), FileError> {
    let meta = fs::metadata(path).map_err(|e| read_error(path, e))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(FileError::TooOpen {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// Reads a private file (a TLS key, an age identity) into a zeroizing buffer,
/// refusing it when group or others can access it.
pub fn read_private(path: &Path) -> Result<Zeroizing<Vec<u8>>, FileError> {
    check_private(path)?;
    fs::read(path)
        .map(Zeroizing::new)
        .map_err(|e| read_error(path, e))
}

/// Reads a file the user names (a share file); no permission rule, since it
/// is still age-encrypted.
pub fn read_input(path: &Path) -> Result<Zeroizing<Vec<u8>>, FileError> {
    fs::read(path)
        .map(Zeroizing::new)
        .map_err(|e| read_error(path, e))
}

/// Refuses `path` if something is there already.
pub fn ensure_absent(path: &Path) -> Result<(), FileError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Err(FileError::Exists {
            path: path.to_owned(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(FileError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Creates a new file with `mode`, refusing an existing one (no race: the
/// open itself fails when the file exists).
pub fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), FileError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|source| {
            if source.kind() == io::ErrorKind::AlreadyExists {
                FileError::Exists {
                    path: path.to_owned(),
                }
            } else {
                FileError::Write {
                    path: path.to_owned(),
                    source,
                }
            }
        })?;
    // The umask may have narrowed `mode`; never widened, so only 0600 files
    // need no fix-up. Public files get their intended mode explicitly.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .and_then(|()| file.write_all(contents))
        .and_then(|()| file.sync_all())
        .map_err(|source| {
            // A write cut short (a full disk) leaves no file holding part of
            // a key or share, nor one that blocks the same command once
            // there is room: the file is ours, made by this call.
            drop(file);
            let _ = fs::remove_file(path);
            FileError::Write {
                path: path.to_owned(),
                source,
            }
        })
}

/// Creates a new private file, mode 0600.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), FileError> {
    write_new(path, contents, 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_files_are_0600_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        write_private(&path, b"x").unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(
            write_private(&path, b"y"),
            Err(FileError::Exists { .. })
        ));
        assert_eq!(&*read_private(&path).unwrap(), b"x");
    }

    #[test]
    fn an_open_private_file_is_refused_naming_chmod() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id.age");
        write_new(&path, b"x", 0o644).unwrap();
        let err = read_private(&path).unwrap_err().to_string();
        assert!(err.contains("mode 644"), "{err}");
        assert!(
            err.contains(&format!("chmod 600 {}", path.display())),
            "{err}"
        );
    }
}
