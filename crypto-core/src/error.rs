//! The one error type of crypto-core.

use core::fmt;

use crate::KeyVersion;

/// Everything that can go wrong in crypto-core.
///
/// Every variant names what was wrong; none carries key, share or plaintext
/// bytes. All AEAD failures are the one opaque [`Error::Decrypt`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// A key version did not parse.
    InvalidVersion {
        /// The text given (shortened when long).
        input: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A keyring name did not parse.
    InvalidKeyringId {
        /// The text given (shortened when long).
        input: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A key was not exactly 32 bytes, or not valid base64.
    InvalidKey {
        /// What was wrong with it.
        reason: &'static str,
    },
    /// A stored record is not a `V<n>:<base64>` envelope.
    MalformedEnvelope {
        /// What was wrong with it.
        reason: &'static str,
    },
    /// A record names a version that is not in the keyring.
    UnknownVersion {
        /// The version the record names.
        version: KeyVersion,
    },
    /// Authenticated decryption failed: wrong key, altered record, or
    /// associated data of another row.
    Decrypt {
        /// The version the record names.
        version: KeyVersion,
    },
    /// A version has reached 2^32 encryptions with random nonces and refuses
    /// more (NIST SP 800-38D).
    NonceLimitReached {
        /// The exhausted version.
        version: KeyVersion,
    },
    /// The same version was given twice when building a keyring.
    DuplicateVersion {
        /// The repeated version.
        version: KeyVersion,
    },
    /// One key was given under two versions when building a keyring: a
    /// record of one would decrypt relabelled as the other.
    SameKeyForTwoVersions {
        /// The version given earlier.
        first: KeyVersion,
        /// The version given later with the same key.
        second: KeyVersion,
    },
    /// A keyring had no version at all.
    EmptyKeyring,
    /// The write version is not one of the keyring's versions.
    WriteVersionNotInKeyring {
        /// The write version asked for.
        write_version: KeyVersion,
    },
    /// The hook hand-over JSON did not parse.
    MalformedHandover {
        /// What was wrong (never the value of a key).
        reason: String,
    },
    /// A share line did not parse.
    MalformedShare {
        /// The field that was wrong, or `line` for the layout.
        field: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// A share line's `check=` does not match the rest of the line.
    ShareChecksum,
    /// A share belongs to another keyring.
    ShareFromOtherKeyring {
        /// The keyring expected.
        expected: String,
        /// The keyring the share names.
        found: String,
    },
    /// A share belongs to another key version.
    ShareFromOtherVersion {
        /// The version expected.
        expected: KeyVersion,
        /// The version the share names.
        found: KeyVersion,
    },
    /// A share belongs to another split of the same version.
    ShareFromOtherSet {
        /// The set expected (hex).
        expected: String,
        /// The set the share names (hex).
        found: String,
    },
    /// Shares disagree on their threshold or count.
    ShareParametersDiffer {
        /// `threshold` or `count`.
        field: &'static str,
        /// The value of the first share.
        expected: u8,
        /// The value of this share.
        found: u8,
    },
    /// Two shares carry the same index.
    DuplicateShareIndex {
        /// The repeated index.
        index: u8,
    },
    /// The same version appears twice in one share file.
    DuplicateShareVersion {
        /// The repeated version.
        version: KeyVersion,
    },
    /// Not exactly `threshold` shares were given to combine.
    WrongShareCount {
        /// Shares given.
        have: usize,
        /// Shares needed.
        need: u8,
    },
    /// The threshold or count of a split is out of range.
    InvalidThreshold {
        /// The threshold asked for.
        threshold: u8,
        /// The count asked for.
        count: u8,
    },
    /// A share does not match the fingerprint recorded when it was dealt.
    FingerprintMismatch {
        /// The index of the share.
        index: u8,
    },
    /// A rebuilt key does not match its key check value.
    KcvMismatch {
        /// The version rebuilt.
        version: KeyVersion,
    },
    /// The Shamir engine refused the operation.
    Shamir {
        /// The engine's reason.
        reason: String,
    },
}

impl Error {
    /// Shortens text echoed back in an error so a pasted blob cannot flood a log.
    pub(crate) fn excerpt(input: &str) -> String {
        const MAX: usize = 40;
        if input.chars().count() <= MAX {
            input.to_owned()
        } else {
            let head: String = input.chars().take(MAX).collect();
            format!("{head}…")
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidVersion { input, reason } => {
                write!(f, "`{input}` is not a key version: {reason}")
            }
            Error::InvalidKeyringId { input, reason } => {
                write!(f, "`{input}` is not a keyring name: {reason}")
            }
            Error::InvalidKey { reason } => write!(f, "invalid key: {reason}"),
            Error::MalformedEnvelope { reason } => {
                write!(f, "record is not a keyholder envelope: {reason}")
            }
            Error::UnknownVersion { version } => {
                write!(
                    f,
                    "record is encrypted with {version}, which is not in the keyring"
                )
            }
            Error::Decrypt { version } => write!(
                f,
                "record at {version} failed authentication: wrong key, altered record or associated data of another row"
            ),
            Error::NonceLimitReached { version } => write!(
                f,
                "{version} has reached 2^32 encryptions and must not encrypt again: rotate the key"
            ),
            Error::DuplicateVersion { version } => {
                write!(
                    f,
                    "{version} was given twice; a keyring holds each version once"
                )
            }
            Error::SameKeyForTwoVersions { first, second } => write!(
                f,
                "{first} and {second} have the same key; each version needs its own key, or a record of one decrypts as the other"
            ),
            Error::EmptyKeyring => write!(f, "a keyring needs at least one version"),
            Error::WriteVersionNotInKeyring { write_version } => {
                write!(f, "write version {write_version} is not in the keyring")
            }
            Error::MalformedHandover { reason } => {
                write!(f, "keyring hand-over is malformed: {reason}")
            }
            Error::MalformedShare { field, reason } => {
                write!(f, "share line is malformed at `{field}`: {reason}")
            }
            Error::ShareChecksum => write!(
                f,
                "share line checksum does not match: the line was altered or mistyped; copy it again from the share file"
            ),
            Error::ShareFromOtherKeyring { expected, found } => {
                write!(f, "share is for keyring `{found}`, expected `{expected}`")
            }
            Error::ShareFromOtherVersion { expected, found } => {
                write!(f, "share is for {found}, expected {expected}")
            }
            Error::ShareFromOtherSet { expected, found } => write!(
                f,
                "share is from split set {found}, expected set {expected}: it belongs to an older or newer split"
            ),
            Error::ShareParametersDiffer {
                field,
                expected,
                found,
            } => {
                write!(f, "shares disagree on {field}: {expected} and {found}")
            }
            Error::DuplicateShareIndex { index } => {
                write!(f, "share index {index} was given twice")
            }
            Error::DuplicateShareVersion { version } => {
                write!(f, "{version} appears twice in one share file")
            }
            Error::WrongShareCount { have, need } => {
                write!(f, "{have} shares given, exactly {need} are needed")
            }
            Error::InvalidThreshold { threshold, count } => write!(
                f,
                "threshold {threshold} of {count} is not allowed: need 2 <= threshold <= count <= 255"
            ),
            Error::FingerprintMismatch { index } => write!(
                f,
                "share index {index} does not match the fingerprint recorded when it was dealt: it is corrupted or forged"
            ),
            Error::KcvMismatch { version } => write!(
                f,
                "the key rebuilt for {version} does not match its key check value"
            ),
            Error::Shamir { reason } => write!(f, "secret sharing refused: {reason}"),
        }
    }
}

impl std::error::Error for Error {}
