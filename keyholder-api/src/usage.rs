//! Encryption usage on the wire: what a database process reports when it
//! fetches a new keyring (`POST /v1/keyring`), and how close each version
//! is to the usage limit of AES-GCM with random nonces.

use crypto_core::{KeyVersion, Keyring};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// At most this many versions in one report.
pub const MAX_USAGE_VERSIONS: usize = 32;

/// The longest process id.
pub const MAX_PROCESS_ID_LEN: usize = 64;

/// `POST /v1/keyring`: a database process fetches the keyring and reports
/// the encryptions it did under each version since it started.
///
/// Counts are cumulative for the process: a report repeated, or arriving
/// after a later one, adds nothing; a restarted process takes a new
/// `process` id and counts from 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyringRequest {
    /// A random id the process chose when it started (1 to 64 characters of
    /// `A-Z a-z 0-9 - _`); never reused by another process.
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub process: String,
    /// The process's count per version, each version at most once (at
    /// most 32).
    #[schema(max_items = 32)]
    pub encryptions: Vec<VersionEncryptions>,
}

impl KeyringRequest {
    /// The report of a process whose keyring (carried over across its
    /// refreshes with [`Keyring::continue_counts_from`]) is `keyring`.
    pub fn from_keyring(process: impl Into<String>, keyring: &Keyring) -> Self {
        Self {
            process: process.into(),
            encryptions: keyring
                .encryption_counts()
                .into_iter()
                .map(|(version, count)| VersionEncryptions { version, count })
                .collect(),
        }
    }
}

/// One version's count in a [`KeyringRequest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VersionEncryptions {
    /// The version.
    #[schema(value_type = u32, minimum = 1, maximum = 2147483648.0)]
    pub version: KeyVersion,
    /// Encryptions the process did under it since it started (at most
    /// 2^32: no keyring encrypts past it).
    #[schema(maximum = 4294967296_u64)]
    pub count: u64,
}

/// How close a version is to its usage limit (API 1.3).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum UsageLevel {
    /// Below the warning limit (2^31 encryptions).
    #[default]
    Ok,
    /// At or past the warning limit: rotate now.
    Warning,
    /// At or past the limit (2^32): rotate to a new version now. The
    /// keyring is still served; each process refuses to encrypt with the
    /// version past its own 2^32.
    Exhausted,
}

impl UsageLevel {
    /// The snake_case name, as on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Warning => "warning",
            Self::Exhausted => "exhausted",
        }
    }
}
