//! The secret key type.

use core::fmt;

use base64::Engine as _;
use subtle::ConstantTimeEq as _;
use zeroize::Zeroizing;

use crate::Error;
use crate::locked::Locked;

/// One 256-bit AES key, on its own heap cell whose page is locked in RAM.
/// Zeroized on drop; moving it moves a pointer, not the bytes; its `Debug`
/// never shows them.
pub struct Key(Locked<Zeroizing<[u8; 32]>>);

impl Key {
    /// A zeroed cell, filled in place so the bytes never sit on the stack.
    fn empty() -> Self {
        Self(Locked::new(Zeroizing::new([0u8; 32])))
    }

    /// A fresh random key from the operating system's generator.
    pub fn generate() -> Self {
        let mut key = Self::empty();
        crate::random::fill(&mut key.0[..]);
        key
    }

    /// Takes exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.len() != 32 {
            return Err(Error::InvalidKey {
                reason: "must be exactly 32 bytes",
            });
        }
        let mut key = Self::empty();
        key.0.copy_from_slice(bytes);
        Ok(key)
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
        Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&self.0[..]))
    }

    /// Whether `other` holds the same bytes, compared in constant time.
    pub(crate) fn same_bytes(&self, other: &Key) -> bool {
        self.expose()[..].ct_eq(&other.expose()[..]).into()
    }

    /// The raw bytes, for the crypto of this crate only.
    pub(crate) fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl Clone for Key {
    fn clone(&self) -> Self {
        let mut copy = Self::empty();
        copy.0.copy_from_slice(&self.0[..]);
        copy
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
