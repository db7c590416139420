//! `keyholderd init`: the first key of a keyring.
//!
//! Owns making the first version: generate the key, split it one share per
//! keyholder (index `i + 1` to the `i`-th keyholder in config order),
//! age-encrypt each share line to its keyholder's recipient, write one file
//! per keyholder and store the envelopes, KCV, fingerprints and a canary in
//! one transaction. The plaintext key and shares live only in memory
//! (zeroizing types) and never reach disk, a log or the audit log.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use crypto_core::{Key, KeyVersion};
use keyholder_api::VersionState;
use rand::Rng as _;
use serde_json::json;
use zeroize::Zeroizing;

use crate::audit;
use crate::config::Config;
use crate::store::{
    Canary, DealtShare, NewVersion, StateStore, StoreError, StoredEnvelope, Transition,
    VersionRecord,
};

/// Why init refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// The state already holds versions.
    #[error(
        "the state store already holds {versions}; init runs once per keyring (make new versions with a rotation)"
    )]
    AlreadyInitialized {
        /// The versions found.
        versions: String,
    },
    /// A share file would be overwritten.
    #[error(
        "{path} already exists; init never overwrites a share file, move it away or choose another --out"
    )]
    FileExists {
        /// The file.
        path: PathBuf,
    },
    /// Writing a share file failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A keyholder's age recipient did not parse (config validation should
    /// have caught it).
    #[error("principal {name}: age_recipient is not an age X25519 recipient")]
    Recipient {
        /// The keyholder.
        name: String,
    },
    /// age refused to encrypt.
    #[error("age encryption to {name} failed: {reason}")]
    Encrypt {
        /// The keyholder.
        name: String,
        /// age's reason.
        reason: String,
    },
    /// Splitting failed.
    #[error("cannot split the key: {0}")]
    Split(#[from] crypto_core::Error),
    /// The state store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What init made: public facts only.
#[derive(Debug)]
pub struct InitReport {
    /// The version made.
    pub version: KeyVersion,
    /// Its key check value (hex).
    pub kcv: String,
    /// The share files written, one per keyholder, in index order.
    pub files: Vec<PathBuf>,
}

/// The associated data of a version's canary.
pub fn canary_aad(keyring: &crypto_core::KeyringId, version: KeyVersion) -> String {
    format!("keyholder canary/{keyring}/{version}")
}

/// Makes a key for `version`, splits and deals it, and stores its facts.
/// Returns the key's public record and envelopes without storing them, so a
/// rotation can make a new version the same way.
pub fn make_version(
    config: &Config,
    version: KeyVersion,
    state: VersionState,
) -> Result<(Key, NewVersion), InitError> {
    let key = Key::generate();
    let keyholders: Vec<_> = config.keyholders().collect();
    let count =
        u8::try_from(keyholders.len()).map_err(|_| crypto_core::Error::InvalidThreshold {
            threshold: config.threshold,
            count: u8::MAX,
        })?;
    let split = crypto_core::split(&key, &config.keyring, version, config.threshold, count)?;
    let mut dealt = BTreeMap::new();
    let mut envelopes = Vec::new();
    for ((share, fingerprint), principal) in split
        .shares
        .iter()
        .zip(&split.fingerprints)
        .zip(&keyholders)
    {
        let recipient: age::x25519::Recipient = principal
            .age_recipient
            .as_deref()
            .and_then(|r| r.parse().ok())
            .ok_or_else(|| InitError::Recipient {
                name: principal.name.clone(),
            })?;
        let mut plaintext = Zeroizing::new(String::new());
        plaintext.push_str(&share.to_line());
        plaintext.push('\n');
        let armored = age::encrypt_and_armor(&recipient, plaintext.as_bytes()).map_err(|e| {
            InitError::Encrypt {
                name: principal.name.clone(),
                reason: e.to_string(),
            }
        })?;
        dealt.insert(
            share.index(),
            DealtShare {
                fingerprint: *fingerprint,
                principal: principal.name.clone(),
            },
        );
        envelopes.push(StoredEnvelope {
            principal: principal.name.clone(),
            index: share.index(),
            age_armored: armored,
        });
    }
    let mut canary_plain = Zeroizing::new([0u8; 32]);
    rand::rng().fill_bytes(canary_plain.as_mut());
    let aad = canary_aad(&config.keyring, version);
    let canary = Canary {
        record: crypto_core::envelope::seal(&key, version, canary_plain.as_ref(), aad.as_bytes()),
        aad,
    };
    let record = VersionRecord {
        version,
        kcv: split.kcv,
        set: split.set,
        threshold: config.threshold,
        count,
        state,
        encryptions: 1,
        dealt,
        canary,
    };
    Ok((key, NewVersion { record, envelopes }))
}

/// The share file of `name` for `version` in `dir`.
pub fn share_file(dir: &Path, name: &str, version: KeyVersion) -> PathBuf {
    dir.join(format!("{name}.{version}.age"))
}

/// `keyholderd init`: refuses when the state holds any version or a share
/// file exists; otherwise writes one share file per keyholder (mode 0600) and
/// stores the version, active, with its audit entry.
pub async fn init(
    config: &Config,
    store: &dyn StateStore,
    version: KeyVersion,
    out: &Path,
) -> Result<InitReport, InitError> {
    let existing = store.versions().await?;
    if !existing.is_empty() {
        let versions: Vec<String> = existing.iter().map(|v| v.version.to_string()).collect();
        return Err(InitError::AlreadyInitialized {
            versions: versions.join(", "),
        });
    }
    let files: Vec<PathBuf> = config
        .keyholders()
        .map(|p| share_file(out, &p.name, version))
        .collect();
    if let Some(path) = files.iter().find(|f| f.exists()) {
        return Err(InitError::FileExists { path: path.clone() });
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(out)
        .map_err(|source| InitError::Write {
            path: out.to_owned(),
            source,
        })?;
    let (key, new) = make_version(config, version, VersionState::Active)?;
    drop(key);
    let mut written = Vec::new();
    for (path, envelope) in files.iter().zip(&new.envelopes) {
        if let Err(e) = write_new(path, &envelope.age_armored) {
            for done in &written {
                let _ = std::fs::remove_file(done);
            }
            return Err(e);
        }
        written.push(path.clone());
    }
    let kcv = new.record.kcv.to_hex();
    let detail = json!({
        "version": version.number(),
        "kcv": kcv,
        "threshold": new.record.threshold,
        "count": new.record.count,
        "set": new.record.set.to_hex(),
        "dealt": new.record.dealt.iter().map(|(i, d)| json!({"index": i, "principal": d.principal})).collect::<Vec<_>>(),
    });
    let transition = Transition {
        new_version: Some(new),
        ..Transition::audit_only(audit::draft(audit::DAEMON, "init", detail))
    };
    if let Err(e) = store.apply(transition).await {
        for done in &written {
            let _ = std::fs::remove_file(done);
        }
        return Err(e.into());
    }
    tracing::info!(%version, kcv_prefix = &kcv[..8], files = written.len(), "initialized keyring");
    Ok(InitReport {
        version,
        kcv,
        files,
    })
}

fn write_new(path: &Path, text: &str) -> Result<(), InitError> {
    let wrap = |source| InitError::Write {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                InitError::FileExists {
                    path: path.to_owned(),
                }
            } else {
                wrap(e)
            }
        })?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|source| {
            // A write cut short (a full disk) leaves no file holding part of
            // a share: the file is ours, made by this call.
            drop(file);
            let _ = std::fs::remove_file(path);
            wrap(source)
        })
}
