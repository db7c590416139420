//! age identities and age-encrypted share files.
//!
//! An identity file is read only when no one else can read it; a
//! passphrase-protected one asks for its passphrase without echo (or reads
//! one line from stdin when stdin is not a terminal). Share files are
//! decrypted in memory into zeroizing buffers; a plaintext share file on disk
//! is refused, because shares rest only age-encrypted.

use std::io::{BufRead as _, IsTerminal as _, Read as _};
use std::path::{Path, PathBuf};

use age::armor::ArmoredReader;
use age::secrecy::SecretString;
use crypto_core::Share;
use zeroize::Zeroizing;

use crate::error::CliError;
use crate::files;

/// The path meaning "standard input" for `--shares`.
pub const STDIN: &str = "-";

/// The x25519 identities of one or more identity files.
pub struct Identities {
    files: Vec<PathBuf>,
    identities: Vec<age::x25519::Identity>,
    /// For each identity, the index in `files` it was read from.
    origin: Vec<usize>,
}

impl Identities {
    /// Loads every file, refusing one that others can read. `stdin_busy` says
    /// that stdin carries shares, so it cannot also carry a passphrase.
    pub fn load(paths: &[PathBuf], stdin_busy: bool) -> Result<Self, CliError> {
        let mut identities = Vec::new();
        let mut origin = Vec::new();
        for (index, path) in paths.iter().enumerate() {
            let bytes = files::read_private(path)?;
            let text = if is_age_file(&bytes) {
                let passphrase = read_passphrase(path, stdin_busy)?;
                decrypt_identity_file(path, &bytes, passphrase)?
            } else {
                Zeroizing::new(String::from_utf8(bytes.to_vec()).map_err(|_| {
                    CliError::NotAnIdentity {
                        path: path.clone(),
                        reason: "it is not text".to_owned(),
                    }
                })?)
            };
            let found = parse_identities(path, &text)?;
            origin.extend(std::iter::repeat_n(index, found.len()));
            identities.extend(found);
        }
        Ok(Self {
            files: paths.to_vec(),
            identities,
            origin,
        })
    }

    /// The identity files, for messages.
    pub fn describe(&self) -> String {
        let names: Vec<String> = self.files.iter().map(|p| p.display().to_string()).collect();
        names.join(", ")
    }

    /// Decrypts an age file (armored or binary) held in memory.
    pub fn decrypt(&self, source: &Path, bytes: &[u8]) -> Result<Zeroizing<String>, CliError> {
        self.decrypt_naming(source, bytes).map(|(text, _)| text)
    }

    /// Decrypts an age file held in memory, and names the identity file
    /// whose identity opened it: each identity is tried alone, so the
    /// answer names one file (the offline two-person rule needs it).
    pub fn decrypt_naming(
        &self,
        source: &Path,
        bytes: &[u8],
    ) -> Result<(Zeroizing<String>, &Path), CliError> {
        let not_age = |reason: String| CliError::NotAgeFile {
            path: source.to_owned(),
            reason,
        };
        let header = || {
            age::Decryptor::new_buffered(ArmoredReader::new(bytes))
                .map_err(|e| not_age(e.to_string()))
        };
        if header()?.is_scrypt() {
            return Err(CliError::PassphraseShareFile {
                path: source.to_owned(),
            });
        }
        for (identity, &file) in self.identities.iter().zip(&self.origin) {
            let mut reader =
                match header()?.decrypt(std::iter::once(identity as &dyn age::Identity)) {
                    Ok(reader) => reader,
                    Err(age::DecryptError::NoMatchingKeys) => continue,
                    Err(other) => return Err(not_age(other.to_string())),
                };
            let mut plain = Zeroizing::new(Vec::new());
            reader
                .read_to_end(&mut plain)
                .map_err(|e| not_age(e.to_string()))?;
            let text = String::from_utf8(plain.to_vec())
                .map(Zeroizing::new)
                .map_err(|_| not_age("its content is not text".to_owned()))?;
            return Ok((text, &self.files[file]));
        }
        Err(CliError::WrongIdentity {
            path: source.to_owned(),
            identity: self.describe(),
        })
    }
}

fn parse_identities(path: &Path, text: &str) -> Result<Vec<age::x25519::Identity>, CliError> {
    let mut found = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let identity =
            line.parse::<age::x25519::Identity>()
                .map_err(|_| CliError::NotAnIdentity {
                    path: path.to_owned(),
                    reason: format!("line {} is not an AGE-SECRET-KEY-1 line", number + 1),
                })?;
        found.push(identity);
    }
    if found.is_empty() {
        return Err(CliError::NotAnIdentity {
            path: path.to_owned(),
            reason: "it holds no identity".to_owned(),
        });
    }
    Ok(found)
}

/// Whether `bytes` start like an age file, binary or armored.
pub fn is_age_file(bytes: &[u8]) -> bool {
    bytes.starts_with(b"age-encryption.org/") || bytes.starts_with(b"-----BEGIN AGE ENCRYPTED FILE")
}

/// Opens a passphrase-protected identity file (as `age -p` writes it).
pub fn decrypt_identity_file(
    path: &Path,
    bytes: &[u8],
    passphrase: SecretString,
) -> Result<Zeroizing<String>, CliError> {
    let decryptor = age::Decryptor::new_buffered(ArmoredReader::new(bytes)).map_err(|e| {
        CliError::NotAnIdentity {
            path: path.to_owned(),
            reason: e.to_string(),
        }
    })?;
    if !decryptor.is_scrypt() {
        return Err(CliError::NotAnIdentity {
            path: path.to_owned(),
            reason:
                "it is an age file encrypted to a recipient, not a passphrase-protected identity"
                    .to_owned(),
        });
    }
    let identity = age::scrypt::Identity::new(passphrase);
    let mut reader = decryptor
        .decrypt(std::iter::once(&identity as &dyn age::Identity))
        .map_err(|e| match e {
            age::DecryptError::DecryptionFailed
            | age::DecryptError::KeyDecryptionFailed
            | age::DecryptError::NoMatchingKeys => CliError::WrongPassphrase {
                path: path.to_owned(),
            },
            other => CliError::NotAnIdentity {
                path: path.to_owned(),
                reason: other.to_string(),
            },
        })?;
    let mut plain = Zeroizing::new(Vec::new());
    reader
        .read_to_end(&mut plain)
        .map_err(|_| CliError::WrongPassphrase {
            path: path.to_owned(),
        })?;
    String::from_utf8(plain.to_vec())
        .map(Zeroizing::new)
        .map_err(|_| CliError::NotAnIdentity {
            path: path.to_owned(),
            reason: "its decrypted content is not text".to_owned(),
        })
}

/// Asks without echo on a terminal, or reads one line from stdin.
fn read_passphrase(path: &Path, stdin_busy: bool) -> Result<SecretString, CliError> {
    let unavailable = |reason: String| CliError::PassphraseUnavailable {
        path: path.to_owned(),
        reason,
    };
    let line = if std::io::stdin().is_terminal() {
        Zeroizing::new(
            rpassword::prompt_password(format!("passphrase for {}: ", path.display()))
                .map_err(|e| unavailable(e.to_string()))?,
        )
    } else {
        if stdin_busy {
            return Err(CliError::PassphraseAndSharesOnStdin {
                path: path.to_owned(),
            });
        }
        let mut line = Zeroizing::new(String::new());
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| unavailable(e.to_string()))?;
        line
    };
    let trimmed = line.trim_end_matches(['\n', '\r']);
    if trimmed.is_empty() {
        return Err(unavailable("the passphrase is empty".to_owned()));
    }
    Ok(SecretString::from(trimmed.to_owned()))
}

/// The shares of one input (a file or stdin), with where they came from.
pub struct ShareInput {
    /// The file, or `-` for stdin.
    pub source: PathBuf,
    /// Its shares, in file order.
    pub shares: Vec<Share>,
    /// The identity file that opened it, for an age file (stdin included).
    pub opened_by: Option<PathBuf>,
}

impl ShareInput {
    /// The file name for messages (`stdin` for `-`).
    pub fn name(&self) -> String {
        if self.source.as_os_str() == STDIN {
            "stdin".to_owned()
        } else {
            self.source.display().to_string()
        }
    }
}

/// Reads and parses one share input: an age file decrypted with
/// `identities`, or plaintext share lines from stdin.
pub fn read_shares(path: &Path, identities: Option<&Identities>) -> Result<ShareInput, CliError> {
    let from_stdin = path.as_os_str() == STDIN;
    let bytes = if from_stdin {
        let mut buffer = Zeroizing::new(Vec::new());
        std::io::stdin()
            .lock()
            .read_to_end(&mut buffer)
            .map_err(|source| {
                CliError::File(files::FileError::Read {
                    path: path.to_owned(),
                    source,
                })
            })?;
        buffer
    } else {
        files::read_input(path)?
    };
    let mut opened_by = None;
    let text = if is_age_file(&bytes) {
        let identities = identities.ok_or_else(|| CliError::IdentityNeeded {
            path: path.to_owned(),
        })?;
        let (text, by) = identities.decrypt_naming(path, &bytes)?;
        opened_by = Some(by.to_owned());
        text
    } else if from_stdin {
        Zeroizing::new(
            String::from_utf8(bytes.to_vec()).map_err(|_| CliError::NotAgeFile {
                path: path.to_owned(),
                reason: "it is neither an age file nor share lines".to_owned(),
            })?,
        )
    } else if bytes.starts_with(b"khs1 ") || bytes.starts_with(b"#") {
        return Err(CliError::PlaintextShareFile {
            path: path.to_owned(),
        });
    } else {
        return Err(CliError::NotAgeFile {
            path: path.to_owned(),
            reason: "it does not start with an age header".to_owned(),
        });
    };
    let shares =
        crypto_core::parse_share_file(&text).map_err(|(line, source)| CliError::ShareFile {
            path: path.to_owned(),
            line,
            source,
        })?;
    if shares.is_empty() {
        return Err(CliError::NoShares {
            path: path.to_owned(),
        });
    }
    Ok(ShareInput {
        source: path.to_owned(),
        shares,
        opened_by,
    })
}

/// For tests and tools: the recipient of an identity line.
pub fn recipient_of(identity_line: &str) -> Option<String> {
    identity_line
        .trim()
        .parse::<age::x25519::Identity>()
        .ok()
        .map(|i| i.to_public().to_string())
}

/// For tests: encrypt `plain` to `recipient`, armored.
pub fn encrypt_armored(recipient: &str, plain: &str) -> Option<String> {
    let recipient: age::x25519::Recipient = recipient.parse().ok()?;
    age::encrypt_and_armor(&recipient, plain.as_bytes()).ok()
}

/// For tests: `plain` encrypted with a passphrase, armored (the shape of a
/// passphrase-protected identity file, as `age -p -a` writes it).
pub fn encrypt_with_passphrase(passphrase: &str, plain: &str) -> Option<String> {
    use std::io::Write as _;
    let encryptor = age::Encryptor::with_user_passphrase(SecretString::from(passphrase.to_owned()));
    let mut out = Vec::new();
    let armor =
        age::armor::ArmoredWriter::wrap_output(&mut out, age::armor::Format::AsciiArmor).ok()?;
    let mut writer = encryptor.wrap_output(armor).ok()?;
    writer.write_all(plain.as_bytes()).ok()?;
    writer.finish().and_then(|armor| armor.finish()).ok()?;
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_protected_identity_opens_with_its_passphrase_only() {
        let identity = age::x25519::Identity::generate();
        let line = {
            use age::secrecy::ExposeSecret as _;
            identity.to_string().expose_secret().to_owned()
        };
        let file = encrypt_with_passphrase("correct horse", &format!("# me\n{line}\n")).unwrap();
        let path = Path::new("me.id");
        let text = decrypt_identity_file(
            path,
            file.as_bytes(),
            SecretString::from("correct horse".to_owned()),
        )
        .unwrap();
        let found = parse_identities(path, &text).unwrap();
        assert_eq!(
            found[0].to_public().to_string(),
            identity.to_public().to_string()
        );
        let err = decrypt_identity_file(
            path,
            file.as_bytes(),
            SecretString::from("battery staple".to_owned()),
        )
        .err()
        .unwrap();
        assert_eq!(
            err.to_string(),
            "the passphrase for me.id is wrong; run the command again and retype it"
        );
    }

    #[test]
    fn a_share_file_for_someone_else_is_named() {
        let mine = age::x25519::Identity::generate();
        let theirs = age::x25519::Identity::generate();
        let file = encrypt_armored(&theirs.to_public().to_string(), "khs1 ...").unwrap();
        let identities = Identities {
            files: vec!["alice.age".into()],
            identities: vec![mine],
            origin: vec![0],
        };
        let err = identities
            .decrypt(Path::new("bob.v9.age"), file.as_bytes())
            .err()
            .unwrap();
        assert!(matches!(err, CliError::WrongIdentity { .. }), "{err}");
        assert!(err.to_string().starts_with(
            "bob.v9.age was not encrypted to the identity in alice.age — is it your file?"
        ));
    }

    fn named<'a>(identities: &'a Identities, file: &str) -> Option<&'a Path> {
        identities
            .decrypt_naming(Path::new("share.age"), file.as_bytes())
            .ok()
            .map(|(_, by)| by)
    }

    #[test]
    fn the_identity_file_that_opens_a_share_file_is_named() {
        let alice = age::x25519::Identity::generate();
        let bob = age::x25519::Identity::generate();
        let to = |i: &age::x25519::Identity| {
            encrypt_armored(&i.to_public().to_string(), "khs1 ...").unwrap()
        };
        let identities = Identities {
            files: vec!["alice.id".into(), "bob.id".into()],
            identities: vec![alice.clone(), bob.clone()],
            origin: vec![0, 1],
        };
        assert_eq!(named(&identities, &to(&bob)), Some(Path::new("bob.id")));
        assert_eq!(named(&identities, &to(&alice)), Some(Path::new("alice.id")));
        let stranger = age::x25519::Identity::generate();
        assert_eq!(named(&identities, &to(&stranger)), None);
    }
}
