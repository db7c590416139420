//! Version-prefixed records: `V<n>:<base64 standard>(nonce 12 B || ciphertext || tag 16 B)`.
//!
//! AES-256-GCM with a random 96-bit nonce and optional associated data (for
//! example `<table>/<column>/<pk>`, so a ciphertext copied to another row
//! fails). The text layout is the one of the Expensify write-up, so existing
//! data of that shape can be adopted.

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use base64::Engine as _;
use rand::Rng as _;
use zeroize::Zeroizing;

use crate::locked::Locked;
use crate::{Error, Key, KeyVersion};

/// Bytes of the random nonce.
pub const NONCE_LEN: usize = 12;
/// Bytes of the GCM tag.
pub const TAG_LEN: usize = 16;

/// A parsed, not yet authenticated, record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    version: KeyVersion,
    payload: Vec<u8>,
}

impl Envelope {
    /// Parses `V<n>:<base64>` strictly: an upper-case `V`, a canonical
    /// version, a colon, padded standard base64 of at least nonce + tag.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let version = peek_version(text)?;
        let (_, body) = text.split_once(':').ok_or(Error::MalformedEnvelope {
            reason: "no `:` after the version",
        })?;
        let payload = base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|_| Error::MalformedEnvelope {
                reason: "body is not padded standard base64",
            })?;
        if payload.len() < NONCE_LEN + TAG_LEN {
            return Err(Error::MalformedEnvelope {
                reason: "body is shorter than nonce and tag",
            });
        }
        Ok(Self { version, payload })
    }

    /// The version named by the prefix.
    pub fn version(&self) -> KeyVersion {
        self.version
    }
}

/// Reads only the version prefix of a record: what the inventory needs to
/// count records per version without decrypting them.
pub fn peek_version(text: &str) -> Result<KeyVersion, Error> {
    let rest = text.strip_prefix('V').ok_or(Error::MalformedEnvelope {
        reason: "does not start with `V`",
    })?;
    let (digits, _) = rest.split_once(':').ok_or(Error::MalformedEnvelope {
        reason: "no `:` after the version",
    })?;
    KeyVersion::parse_digits(digits, &text[..digits.len() + 1]).map_err(|_| {
        Error::MalformedEnvelope {
            reason: "version prefix is not `V` and a canonical number",
        }
    })
}

/// The AES-256-GCM cipher of one key, built once and reused.
/// The AES-GCM state of one key; its round keys are key material, so it
/// lives on locked pages like the key.
pub(crate) struct Cipher(Locked<Aes256Gcm>);

impl Cipher {
    pub(crate) fn new(key: &Key) -> Self {
        Self(Locked::new(Aes256Gcm::new(key.expose().into())))
    }

    pub(crate) fn seal(&self, version: KeyVersion, plaintext: &[u8], aad: &[u8]) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        self.seal_with_nonce(version, &nonce, plaintext, aad)
    }

    fn seal_with_nonce(
        &self,
        version: KeyVersion,
        nonce: &[u8; NONCE_LEN],
        plaintext: &[u8],
        aad: &[u8],
    ) -> String {
        let sealed = self
            .0
            .encrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .expect("AES-GCM encryption only fails for inputs over 64 GiB");
        let mut body = Vec::with_capacity(NONCE_LEN + sealed.len());
        body.extend_from_slice(nonce);
        body.extend_from_slice(&sealed);
        let mut out = format!("V{}:", version.number());
        base64::engine::general_purpose::STANDARD.encode_string(&body, &mut out);
        out
    }

    pub(crate) fn open(
        &self,
        envelope: &Envelope,
        aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, Error> {
        let (nonce, sealed) = envelope.payload.split_at(NONCE_LEN);
        self.0
            .decrypt(Nonce::from_slice(nonce), Payload { msg: sealed, aad })
            .map(Zeroizing::new)
            .map_err(|_| Error::Decrypt {
                version: envelope.version,
            })
    }
}

/// Encrypts one record with `key` as `version`, outside of any keyring
/// (the daemon's canaries, tests). Applications use [`crate::Keyring`].
pub fn seal(key: &Key, version: KeyVersion, plaintext: &[u8], aad: &[u8]) -> String {
    Cipher::new(key).seal(version, plaintext, aad)
}

/// Encrypts with a caller-chosen nonce: for known-answer tests only. Reusing
/// a nonce under one key breaks GCM; production code never calls this.
#[doc(hidden)]
pub fn seal_with_nonce_for_tests(
    key: &Key,
    version: KeyVersion,
    nonce: &[u8; NONCE_LEN],
    plaintext: &[u8],
    aad: &[u8],
) -> String {
    Cipher::new(key).seal_with_nonce(version, nonce, plaintext, aad)
}

/// Decrypts one record with `key`, refusing a record of another version.
pub fn open(
    key: &Key,
    version: KeyVersion,
    record: &str,
    aad: &[u8],
) -> Result<Zeroizing<Vec<u8>>, Error> {
    let envelope = Envelope::parse(record)?;
    if envelope.version != version {
        return Err(Error::UnknownVersion {
            version: envelope.version,
        });
    }
    Cipher::new(key).open(&envelope, aad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(n: u32) -> KeyVersion {
        KeyVersion::new(n).unwrap()
    }

    #[test]
    fn round_trips_with_and_without_aad() {
        let key = Key::generate();
        let record = seal(&key, v(10), b"4111-1111", b"customers/ssn/42");
        assert!(record.starts_with("V10:"));
        assert_eq!(
            &*open(&key, v(10), &record, b"customers/ssn/42").unwrap(),
            b"4111-1111"
        );
        assert_eq!(
            open(&key, v(10), &record, b"customers/ssn/43"),
            Err(Error::Decrypt { version: v(10) })
        );
        let plain = seal(&key, v(10), b"", b"");
        assert_eq!(&*open(&key, v(10), &plain, b"").unwrap(), b"");
    }

    #[test]
    fn parses_strictly() {
        let key = Key::generate();
        let good = seal(&key, v(9), b"x", b"");
        let body = good.split_once(':').unwrap().1;
        let cases = [
            (format!("v9:{body}"), "does not start with `V`"),
            (
                format!("V09:{body}"),
                "version prefix is not `V` and a canonical number",
            ),
            (
                format!("V:{body}"),
                "version prefix is not `V` and a canonical number",
            ),
            (
                format!("V+9:{body}"),
                "version prefix is not `V` and a canonical number",
            ),
            (format!("V9{body}"), "no `:` after the version"),
            (format!("V9: {body}"), "body is not padded standard base64"),
            (
                format!("V9:{}", body.trim_end_matches('=')),
                "body is not padded standard base64",
            ),
            (
                format!("V9:{}", body.replace('+', "-").replace('/', "_")),
                "body is not padded standard base64",
            ),
            ("V9:AAAA".to_owned(), "body is shorter than nonce and tag"),
            (String::new(), "does not start with `V`"),
        ];
        for (text, reason) in cases {
            if text == good {
                continue;
            }
            match Envelope::parse(&text) {
                Err(Error::MalformedEnvelope { reason: got }) => assert_eq!(got, reason, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_flipped_bit_anywhere_fails_authentication() {
        let key = Key::generate();
        let record = seal(&key, v(3), b"secret record", b"");
        let payload = Envelope::parse(&record).unwrap().payload;
        for i in 0..payload.len() {
            let mut altered = payload.clone();
            altered[i] ^= 1;
            let text = format!(
                "V3:{}",
                base64::engine::general_purpose::STANDARD.encode(&altered)
            );
            assert_eq!(
                open(&key, v(3), &text, b""),
                Err(Error::Decrypt { version: v(3) })
            );
        }
    }
}
