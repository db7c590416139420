//! Key check values: a public fingerprint that proves a rebuilt key is the
//! key that was made, without revealing it.

use core::fmt;
use core::str::FromStr;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::{Error, Key, KeyVersion, KeyringId};

/// `HMAC-SHA256(key, "keyholder kcv" || 0x00 || keyring || 0x00 || version as u32 BE)`,
/// first 16 bytes. The zero bytes separate the fields; a keyring name never
/// holds one.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Kcv([u8; 16]);

impl Kcv {
    /// Computes the KCV of `key` as `version` of `keyring`.
    pub fn compute(key: &Key, keyring: &KeyringId, version: KeyVersion) -> Self {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(key.expose()).expect("HMAC takes keys of any length");
        mac.update(b"keyholder kcv\0");
        mac.update(keyring.as_str().as_bytes());
        mac.update(&[0]);
        mac.update(&version.number().to_be_bytes());
        let tag = mac.finalize().into_bytes();
        let mut out = [0u8; 16];
        out.copy_from_slice(&tag[..16]);
        Self(out)
    }

    /// Whether `key` matches this KCV, compared in constant time.
    pub fn matches(&self, key: &Key, keyring: &KeyringId, version: KeyVersion) -> bool {
        Kcv::compute(key, keyring, version).0.ct_eq(&self.0).into()
    }

    /// Checks `key`, naming the version when it does not match.
    pub fn verify(&self, key: &Key, keyring: &KeyringId, version: KeyVersion) -> Result<(), Error> {
        if self.matches(key, keyring, version) {
            Ok(())
        } else {
            Err(Error::KcvMismatch { version })
        }
    }

    /// Lowercase hex, 32 characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 8 hex characters, for logs.
    pub fn prefix(&self) -> String {
        hex::encode(&self.0[..4])
    }
}

impl FromStr for Kcv {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        let refuse = || Error::MalformedShare {
            field: "kcv",
            reason: "a key check value is 32 lowercase hex characters".into(),
        };
        if text.len() != 32 || text.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(refuse());
        }
        let mut out = [0u8; 16];
        hex::decode_to_slice(text, &mut out).map_err(|_| refuse())?;
        Ok(Self(out))
    }
}

impl fmt::Display for Kcv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Kcv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Kcv({})", self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_key_keyring_and_version() {
        let key = Key::from_slice(&[7; 32]).unwrap();
        let orders: KeyringId = "orders".parse().unwrap();
        let billing: KeyringId = "billing".parse().unwrap();
        let v9 = KeyVersion::new(9).unwrap();
        let v10 = KeyVersion::new(10).unwrap();
        let kcv = Kcv::compute(&key, &orders, v9);
        assert!(kcv.matches(&key, &orders, v9));
        assert!(!kcv.matches(&key, &orders, v10));
        assert!(!kcv.matches(&key, &billing, v9));
        assert!(!kcv.matches(&Key::from_slice(&[8; 32]).unwrap(), &orders, v9));
        assert_eq!(kcv.to_hex().parse::<Kcv>().unwrap(), kcv);
    }
}
