//! The keyring between two nodes: every key the serving node holds (live
//! and pending), as the hook hand-over JSON, age-encrypted to the
//! requester's ephemeral X25519 recipient.
//!
//! TLS already protects the body; the age layer keeps the keys out of
//! every plaintext HTTP body (and out of any proxy or capture that ends
//! TLS), and the requester's identity lives only for one request. Nothing
//! here logs; errors never hold key material.

use std::collections::BTreeMap;

use crypto_core::{HandoverKey, HookHandover, Key, KeyVersion, KeyringId};
use zeroize::Zeroizing;

use crate::vault::Vault;

/// Why a peer hand-over could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    /// The requester's recipient is not an age X25519 recipient.
    #[error("recipient is not an age X25519 recipient (age1...): {0}")]
    Recipient(String),
    /// age refused to encrypt.
    #[error("the keyring could not be encrypted to the requester: {0}")]
    Encrypt(String),
    /// The answer is not age ciphertext for our identity.
    #[error("the keyring could not be decrypted with this request's identity: {0}")]
    Decrypt(String),
    /// The decrypted hand-over does not parse or is for another keyring.
    #[error("the decrypted keyring is not usable: {0}")]
    Content(String),
}

/// Every key `vault` holds, as a hand-over (`None` while sealed).
pub fn held(vault: &Vault) -> Option<HookHandover> {
    let keyring = vault.keyring()?;
    let keys = vault
        .held_versions()
        .into_iter()
        .filter_map(|version| vault.key(version).map(|key| HandoverKey { version, key }))
        .collect();
    Some(HookHandover {
        keyring: keyring.id().clone(),
        write_version: keyring.write_version(),
        keys,
    })
}

/// `handover` encrypted to `recipient`, armored.
pub fn encrypt(handover: &HookHandover, recipient: &str) -> Result<String, HandoverError> {
    let recipient: age::x25519::Recipient = recipient
        .trim()
        .parse()
        .map_err(|e: &str| HandoverError::Recipient(e.to_owned()))?;
    let json = handover.to_json();
    age::encrypt_and_armor(&recipient, json.as_bytes())
        .map_err(|e| HandoverError::Encrypt(e.to_string()))
}

/// Decrypts `armored` with `identity` and reads the keys of keyring `id`,
/// refusing a version given twice.
pub fn decrypt(
    identity: &age::x25519::Identity,
    armored: &str,
    id: &KeyringId,
) -> Result<BTreeMap<KeyVersion, Key>, HandoverError> {
    let plain = Zeroizing::new(
        age::decrypt(identity, armored.as_bytes())
            .map_err(|e| HandoverError::Decrypt(e.to_string()))?,
    );
    let text = std::str::from_utf8(&plain)
        .map_err(|_| HandoverError::Content("it is not UTF-8".to_owned()))?;
    let handover =
        HookHandover::from_json(text).map_err(|e| HandoverError::Content(e.to_string()))?;
    if &handover.keyring != id {
        return Err(HandoverError::Content(format!(
            "it is keyring {}, this node's is {id}",
            handover.keyring
        )));
    }
    let mut keys = BTreeMap::new();
    for HandoverKey { version, key } in handover.keys {
        if keys.insert(version, key).is_some() {
            return Err(HandoverError::Content(format!("{version} is given twice")));
        }
    }
    if keys.is_empty() {
        return Err(HandoverError::Content("it holds no key".to_owned()));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(n: u32) -> KeyVersion {
        KeyVersion::new(n).unwrap()
    }

    fn handover(id: &str) -> HookHandover {
        HookHandover {
            keyring: id.parse().unwrap(),
            write_version: v(2),
            keys: vec![
                HandoverKey {
                    version: v(1),
                    key: Key::from_slice(&[0x11; 32]).unwrap(),
                },
                HandoverKey {
                    version: v(2),
                    key: Key::from_slice(&[0x22; 32]).unwrap(),
                },
            ],
        }
    }

    #[test]
    fn the_keys_travel_encrypted_and_come_back_whole() {
        let identity = age::x25519::Identity::generate();
        let armored = encrypt(&handover("orders"), &identity.to_public().to_string()).unwrap();
        assert!(armored.starts_with("-----BEGIN AGE ENCRYPTED FILE-----"));
        let plain_key = crypto_core::Key::from_slice(&[0x22; 32])
            .unwrap()
            .expose_base64_for_handover();
        assert!(!armored.contains(plain_key.as_str()));
        let keys = decrypt(&identity, &armored, &"orders".parse().unwrap()).unwrap();
        assert_eq!(keys.keys().copied().collect::<Vec<_>>(), vec![v(1), v(2)]);
        assert_eq!(
            keys[&v(2)].expose_base64_for_handover().as_str(),
            plain_key.as_str()
        );
    }

    #[test]
    fn another_identity_or_keyring_is_refused() {
        let identity = age::x25519::Identity::generate();
        let armored = encrypt(&handover("orders"), &identity.to_public().to_string()).unwrap();
        let other = age::x25519::Identity::generate();
        let refused = decrypt(&other, &armored, &"orders".parse().unwrap()).unwrap_err();
        assert!(matches!(refused, HandoverError::Decrypt(_)), "{refused}");
        let refused = decrypt(&identity, &armored, &"billing".parse().unwrap()).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "the decrypted keyring is not usable: it is keyring orders, this node's is billing"
        );
        let refused = encrypt(&handover("orders"), "ssh-ed25519 AAAA").unwrap_err();
        assert!(matches!(refused, HandoverError::Recipient(_)), "{refused}");
    }
}
