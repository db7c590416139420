//! The keyring: live versions in numeric order and the one that writes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use zeroize::Zeroizing;

use crate::envelope::{Cipher, Envelope};
use crate::{Error, HandoverKey, HookHandover, Kcv, Key, KeyVersion, KeyringId};

/// Encryptions under one key after which callers should rotate (2^31).
pub const NONCE_WARN_LIMIT: u64 = 1 << 31;
/// Encryptions under one key after which it refuses to encrypt (2^32, the
/// NIST SP 800-38D bound for random 96-bit nonces).
pub const NONCE_HARD_LIMIT: u64 = 1 << 32;

struct Entry {
    key: Key,
    cipher: Cipher,
    encryptions: AtomicU64,
}

/// The live key versions of one keyring and its write version.
///
/// Versions are held in a `BTreeMap` keyed by [`KeyVersion`], so their order is
/// numeric whatever order they arrived in. The write version is set by the
/// caller (the rotation state decides it), never inferred from "the highest".
/// Encrypting uses the write version; decrypting uses the record's prefix.
pub struct Keyring {
    id: KeyringId,
    write_version: KeyVersion,
    entries: BTreeMap<KeyVersion, Entry>,
}

impl Keyring {
    /// Builds a keyring. Refuses an empty set of keys, a version given twice,
    /// one key given under two versions and a write version that is not
    /// among the keys: every version given is either in the keyring or the
    /// call fails naming it.
    ///
    /// A record's version prefix is not authenticated (see
    /// [`crate::envelope`]): a record relabelled to another version fails
    /// only because that version's key is another key. One key under two
    /// versions would let a `V9:` record pass as `V10:`, so it is refused.
    pub fn new(
        id: KeyringId,
        write_version: KeyVersion,
        keys: impl IntoIterator<Item = (KeyVersion, Key)>,
    ) -> Result<Self, Error> {
        let mut entries: BTreeMap<KeyVersion, Entry> = BTreeMap::new();
        for (version, key) in keys {
            if entries.contains_key(&version) {
                return Err(Error::DuplicateVersion { version });
            }
            let same = entries.iter().find(|(_, entry)| entry.key.same_bytes(&key));
            if let Some((&first, _)) = same {
                return Err(Error::SameKeyForTwoVersions {
                    first,
                    second: version,
                });
            }
            let cipher = Cipher::new(&key);
            entries.insert(
                version,
                Entry {
                    key,
                    cipher,
                    encryptions: AtomicU64::new(0),
                },
            );
        }
        if entries.is_empty() {
            return Err(Error::EmptyKeyring);
        }
        if !entries.contains_key(&write_version) {
            return Err(Error::WriteVersionNotInKeyring { write_version });
        }
        Ok(Self {
            id,
            write_version,
            entries,
        })
    }

    /// Loads the hook's hand-over JSON (see [`HookHandover`]).
    pub fn from_handover_json(text: &str) -> Result<Self, Error> {
        HookHandover::from_json(text)?.into_keyring()
    }

    /// The hand-over of this keyring: the one place its keys leave as text.
    pub fn to_handover(&self) -> HookHandover {
        HookHandover {
            keyring: self.id.clone(),
            write_version: self.write_version,
            keys: self
                .entries
                .iter()
                .map(|(version, entry)| HandoverKey {
                    version: *version,
                    key: entry.key.clone(),
                })
                .collect(),
        }
    }

    /// The keyring's name.
    pub fn id(&self) -> &KeyringId {
        &self.id
    }

    /// The version new records are written with.
    pub fn write_version(&self) -> KeyVersion {
        self.write_version
    }

    /// The versions, in numeric order.
    pub fn versions(&self) -> impl Iterator<Item = KeyVersion> + '_ {
        self.entries.keys().copied()
    }

    /// Whether `version` is in the keyring.
    pub fn contains(&self, version: KeyVersion) -> bool {
        self.entries.contains_key(&version)
    }

    /// The key check value of `version`, when it is in the keyring.
    pub fn kcv(&self, version: KeyVersion) -> Option<Kcv> {
        self.entries
            .get(&version)
            .map(|entry| Kcv::compute(&entry.key, &self.id, version))
    }

    /// Encrypts with the write version. Refuses once that version has done
    /// 2^32 encryptions in this keyring's lifetime (see [`Keyring::set_encryptions`]).
    pub fn encrypt(&self, plaintext: &[u8], aad: &[u8]) -> Result<String, Error> {
        let version = self.write_version;
        let entry = &self.entries[&version];
        let before = entry.encryptions.fetch_add(1, Ordering::Relaxed);
        if before >= NONCE_HARD_LIMIT {
            entry.encryptions.fetch_sub(1, Ordering::Relaxed);
            return Err(Error::NonceLimitReached { version });
        }
        Ok(entry.cipher.seal(version, plaintext, aad))
    }

    /// Decrypts a record with the key its prefix names.
    pub fn decrypt(&self, record: &str, aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
        let envelope = Envelope::parse(record)?;
        let entry = self
            .entries
            .get(&envelope.version())
            .ok_or(Error::UnknownVersion {
                version: envelope.version(),
            })?;
        entry.cipher.open(envelope, aad)
    }

    /// Encryptions done under `version`.
    pub fn encryptions(&self, version: KeyVersion) -> Option<u64> {
        self.entries
            .get(&version)
            .map(|entry| entry.encryptions.load(Ordering::Relaxed))
    }

    /// Seeds the encryption count of `version` from a persisted total, so the
    /// nonce limit holds across restarts.
    pub fn set_encryptions(&self, version: KeyVersion, count: u64) -> Result<(), Error> {
        let entry = self
            .entries
            .get(&version)
            .ok_or(Error::UnknownVersion { version })?;
        entry.encryptions.store(count, Ordering::Relaxed);
        Ok(())
    }

    /// Every version's encryption count, in numeric order: what a database
    /// process reports to the daemon when it fetches a new keyring.
    pub fn encryption_counts(&self) -> Vec<(KeyVersion, u64)> {
        self.entries
            .iter()
            .map(|(version, entry)| (*version, entry.encryptions.load(Ordering::Relaxed)))
            .collect()
    }

    /// Carries the counts of `previous` (the keyring this one replaces in
    /// the same process) over to the versions both hold, so a refreshed
    /// keyring goes on counting, and refusing at 2^32, where the old one
    /// stopped. A count is only ever raised here, never lowered.
    pub fn continue_counts_from(&self, previous: &Keyring) {
        for (version, entry) in &self.entries {
            if let Some(old) = previous.entries.get(version) {
                entry
                    .encryptions
                    .fetch_max(old.encryptions.load(Ordering::Relaxed), Ordering::Relaxed);
            }
        }
    }

    /// Versions past 2^31 encryptions: time to rotate.
    pub fn near_nonce_limit(&self) -> Vec<KeyVersion> {
        self.entries
            .iter()
            .filter(|(_, entry)| entry.encryptions.load(Ordering::Relaxed) >= NONCE_WARN_LIMIT)
            .map(|(version, _)| *version)
            .collect()
    }
}

impl core::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Keyring")
            .field("id", &self.id)
            .field("versions", &self.entries.keys().collect::<Vec<_>>())
            .field("write_version", &self.write_version)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(n: u32) -> KeyVersion {
        KeyVersion::new(n).unwrap()
    }

    fn orders() -> KeyringId {
        "orders".parse().unwrap()
    }

    #[test]
    fn v10_after_v9_and_both_decrypt() {
        let (k9, k10) = (Key::generate(), Key::generate());
        let old = Keyring::new(orders(), v(9), [(v(9), k9.clone())]).unwrap();
        let record9 = old.encrypt(b"nine", b"").unwrap();
        let ring = Keyring::new(orders(), v(9), [(v(10), k10), (v(9), k9)]).unwrap();
        assert_eq!(ring.versions().collect::<Vec<_>>(), [v(9), v(10)]);
        assert_eq!(ring.write_version(), v(9));
        assert_eq!(&*ring.decrypt(&record9, b"").unwrap(), b"nine");
        assert!(ring.encrypt(b"x", b"").unwrap().starts_with("V9:"));
    }

    #[test]
    fn refuses_duplicates_empty_and_foreign_write_version() {
        let k = Key::generate();
        assert_eq!(
            Keyring::new(orders(), v(9), [(v(9), k.clone()), (v(9), k.clone())]).unwrap_err(),
            Error::DuplicateVersion { version: v(9) }
        );
        assert_eq!(
            Keyring::new(orders(), v(9), std::iter::empty()).unwrap_err(),
            Error::EmptyKeyring
        );
        assert_eq!(
            Keyring::new(orders(), v(10), [(v(9), k)]).unwrap_err(),
            Error::WriteVersionNotInKeyring {
                write_version: v(10)
            }
        );
    }

    /// The version prefix is not associated data: relabelling a record is
    /// caught by the other version's key being another key, so a keyring
    /// never holds one key under two versions.
    #[test]
    fn a_relabelled_record_never_decrypts_as_another_version() {
        let (k9, k10) = (Key::generate(), Key::generate());
        let old = Keyring::new(orders(), v(9), [(v(9), k9.clone())]).unwrap();
        let record = old.encrypt(b"nine", b"").unwrap();
        let relabelled = format!("V10:{}", record.strip_prefix("V9:").unwrap());
        assert_eq!(
            Keyring::new(orders(), v(10), [(v(9), k9.clone()), (v(10), k9.clone())]).unwrap_err(),
            Error::SameKeyForTwoVersions {
                first: v(9),
                second: v(10)
            }
        );
        assert_eq!(
            Keyring::new(orders(), v(10), [(v(10), k9.clone()), (v(9), k9.clone())]).unwrap_err(),
            Error::SameKeyForTwoVersions {
                first: v(10),
                second: v(9)
            }
        );
        let ring = Keyring::new(orders(), v(10), [(v(9), k9), (v(10), k10)]).unwrap();
        assert_eq!(&*ring.decrypt(&record, b"").unwrap(), b"nine");
        assert_eq!(
            ring.decrypt(&relabelled, b"").unwrap_err(),
            Error::Decrypt { version: v(10) }
        );
    }

    #[test]
    fn unknown_version_is_named() {
        let ring = Keyring::new(orders(), v(9), [(v(9), Key::generate())]).unwrap();
        let other = Keyring::new(orders(), v(11), [(v(11), Key::generate())]).unwrap();
        let record = other.encrypt(b"x", b"").unwrap();
        let err = ring.decrypt(&record, b"").unwrap_err();
        assert_eq!(err, Error::UnknownVersion { version: v(11) });
        assert_eq!(
            err.to_string(),
            "record is encrypted with v11, which is not in the keyring"
        );
    }

    #[test]
    fn a_refreshed_keyring_goes_on_counting_where_the_old_one_stopped() {
        let (k9, k10) = (Key::generate(), Key::generate());
        let old = Keyring::new(orders(), v(9), [(v(9), k9.clone())]).unwrap();
        old.set_encryptions(v(9), NONCE_HARD_LIMIT - 1).unwrap();
        old.encrypt(b"x", b"").unwrap();
        let new = Keyring::new(orders(), v(9), [(v(9), k9), (v(10), k10)]).unwrap();
        new.set_encryptions(v(10), 5).unwrap();
        new.continue_counts_from(&old);
        assert_eq!(
            new.encryption_counts(),
            [(v(9), NONCE_HARD_LIMIT), (v(10), 5)]
        );
        assert_eq!(
            new.encrypt(b"x", b"").unwrap_err(),
            Error::NonceLimitReached { version: v(9) }
        );
    }

    #[test]
    fn nonce_limit_warns_then_refuses() {
        let ring = Keyring::new(orders(), v(9), [(v(9), Key::generate())]).unwrap();
        ring.set_encryptions(v(9), NONCE_WARN_LIMIT - 1).unwrap();
        assert!(ring.near_nonce_limit().is_empty());
        ring.encrypt(b"x", b"").unwrap();
        assert_eq!(ring.near_nonce_limit(), [v(9)]);
        ring.set_encryptions(v(9), NONCE_HARD_LIMIT - 1).unwrap();
        ring.encrypt(b"x", b"").unwrap();
        assert_eq!(
            ring.encrypt(b"x", b"").unwrap_err(),
            Error::NonceLimitReached { version: v(9) }
        );
        assert_eq!(ring.encryptions(v(9)), Some(NONCE_HARD_LIMIT));
    }
}
