//! The secret key type.

use core::fmt;

use base64::Engine as _;
use rand::Rng as _;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::Error;

/// One 256-bit AES key. Zeroized on drop; its `Debug` never shows the bytes.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Key([u8; 32]);

impl Key {
    /// A fresh random key from the thread's CSPRNG (seeded by the OS).
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let key = Self(bytes);
        bytes.zeroize();
        key
    }

    /// Takes exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, Error> {
        let array: [u8; 32] = bytes.try_into().map_err(|_| Error::InvalidKey {
            reason: "must be exactly 32 bytes",
        })?;
        Ok(Self(array))
    }

    /// Decodes standard base64 of exactly 32 bytes.
    pub fn from_base64(text: &str) -> Result<Self, Error> {
        let bytes = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|_| Error::InvalidKey {
                    reason: "is not valid standard base64",
                })?,
        );
        Self::from_slice(&bytes)
    }

    /// The key as standard base64, for the one place a key crosses a
    /// boundary: the hook hand-over.
    pub fn expose_base64_for_handover(&self) -> Zeroizing<String> {
        Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(self.0))
    }

    /// The raw bytes, for the crypto of this crate only.
    pub(crate) fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_bytes() {
        let key = Key::from_slice(&[0xab; 32]).unwrap();
        let shown = format!("{key:?}");
        assert_eq!(shown, "Key(<redacted>)");
        assert!(!shown.contains("ab") && !shown.contains("171"));
    }

    #[test]
    fn refuses_wrong_lengths() {
        assert!(Key::from_slice(&[0; 31]).is_err());
        assert!(Key::from_slice(&[0; 33]).is_err());
        assert!(Key::from_base64("not base64!").is_err());
    }
}
