//! The vault: the only place the daemon holds keys, and the plan that says
//! which versions are live and which one writes.
//!
//! Owns the loaded [`Keyring`] (keys zeroize on drop) and the keys of
//! versions that are not live yet (a prepared rotation's new key). Sealing
//! drops every key. It must never hand a key out except as a `Keyring` or a
//! `Key`, which never print their bytes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};

use crypto_core::{Key, KeyVersion, Keyring, KeyringId};

/// Which versions the keyring holds and which one writes. Set explicitly by
/// the rotation state, never inferred from "the highest".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyringPlan {
    /// The live versions (in the keyring the database receives).
    pub live: BTreeSet<KeyVersion>,
    /// The version new records are written with; one of `live`.
    pub write: KeyVersion,
}

/// Why keys could not be loaded or republished.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// A live version's key is not held.
    #[error("{version} is live but its key is not loaded; unseal with its shares first")]
    Missing {
        /// The version.
        version: KeyVersion,
    },
    /// The plan does not make a keyring.
    #[error("the keyring plan is not usable: {0}")]
    Plan(#[from] crypto_core::Error),
}

struct Loaded {
    keyring: Arc<Keyring>,
    /// Keys held but not in the keyring (not live yet).
    pending: BTreeMap<KeyVersion, Key>,
}

/// Holds the keys while the daemon is unsealed.
#[derive(Default)]
pub struct Vault {
    loaded: RwLock<Option<Loaded>>,
}

impl Vault {
    /// Whether the daemon holds no key.
    pub fn is_sealed(&self) -> bool {
        self.read().is_none()
    }

    /// The live keyring, when unsealed.
    pub fn keyring(&self) -> Option<Arc<Keyring>> {
        self.read().as_ref().map(|l| Arc::clone(&l.keyring))
    }

    /// Every version whose key is held (live and pending), in order.
    pub fn held_versions(&self) -> Vec<KeyVersion> {
        self.read()
            .as_ref()
            .map(|l| {
                l.keyring
                    .versions()
                    .chain(l.pending.keys().copied())
                    .collect::<BTreeSet<_>>()
            })
            .unwrap_or_default()
            .into_iter()
            .collect()
    }

    /// A copy of the key of `version` (live or pending), when held. The copy
    /// zeroizes on drop.
    pub fn key(&self, version: KeyVersion) -> Option<Key> {
        let guard = self.read();
        let loaded = guard.as_ref()?;
        if let Some(key) = loaded.pending.get(&version) {
            return Some(key.clone());
        }
        loaded
            .keyring
            .to_handover()
            .keys
            .into_iter()
            .find(|k| k.version == version)
            .map(|k| k.key)
    }

    /// Loads `keys`: the plan's live versions form the keyring, the others
    /// are held as pending. Refuses (holding nothing) when a live key is missing.
    pub fn load(
        &self,
        id: &KeyringId,
        mut keys: BTreeMap<KeyVersion, Key>,
        plan: &KeyringPlan,
    ) -> Result<Arc<Keyring>, VaultError> {
        let mut live = Vec::new();
        for version in &plan.live {
            let key = keys
                .remove(version)
                .ok_or(VaultError::Missing { version: *version })?;
            live.push((*version, key));
        }
        let keyring = Arc::new(Keyring::new(id.clone(), plan.write, live)?);
        *self.write() = Some(Loaded {
            keyring: Arc::clone(&keyring),
            pending: keys,
        });
        Ok(keyring)
    }

    /// Holds one more key outside the keyring (a rotation's new version).
    pub fn hold_pending(&self, version: KeyVersion, key: Key) {
        if let Some(loaded) = self.write().as_mut() {
            loaded.pending.insert(version, key);
        }
    }

    /// Rebuilds the keyring for a new plan from the keys held, e.g. when the
    /// rotation adds a version or moves the write version. Versions leaving
    /// the keyring stay held as pending until [`Vault::forget`].
    pub fn republish(&self, plan: &KeyringPlan) -> Result<Option<Arc<Keyring>>, VaultError> {
        let mut guard = self.write();
        let Some(loaded) = guard.as_mut() else {
            return Ok(None);
        };
        let mut all: BTreeMap<KeyVersion, Key> = loaded
            .keyring
            .to_handover()
            .keys
            .into_iter()
            .map(|k| (k.version, k.key))
            .collect();
        for (version, key) in &loaded.pending {
            all.insert(*version, key.clone());
        }
        let mut live = Vec::new();
        for version in &plan.live {
            let key = all
                .remove(version)
                .ok_or(VaultError::Missing { version: *version })?;
            live.push((*version, key));
        }
        let next = Keyring::new(loaded.keyring.id().clone(), plan.write, live)?;
        for version in next.versions() {
            if let Some(count) = loaded.keyring.encryptions(version) {
                next.set_encryptions(version, count)?;
            }
        }
        let next = Arc::new(next);
        loaded.keyring = Arc::clone(&next);
        loaded.pending = all;
        Ok(Some(next))
    }

    /// Drops a pending key (a retired or rolled-back version).
    pub fn forget(&self, version: KeyVersion) {
        if let Some(loaded) = self.write().as_mut()
            && loaded.pending.remove(&version).is_some()
        {
            crate::hygiene::keys_left();
        }
    }

    /// Drops every key.
    pub fn seal(&self) {
        let held = self.write().take();
        if held.is_some() {
            drop(held);
            crate::hygiene::keys_left();
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Option<Loaded>> {
        self.loaded
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Option<Loaded>> {
        self.loaded
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
