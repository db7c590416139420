//! Seal state on the wire: health, status, unseal requests and answers.

use core::fmt;

use crypto_core::{KeyVersion, KeyringId};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use utoipa::ToSchema;
use zeroize::Zeroizing;

use crate::{RotationStatus, UsageLevel};

/// `GET /v1/health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// Always `"ok"` when the daemon answers.
    pub status: String,
    /// Whether the daemon holds no key.
    pub sealed: bool,
}

/// The lifecycle of one key version as the daemon records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VersionState {
    /// Made and split; its keyholders have not proven they can rebuild it.
    Prepared,
    /// Enough keyholders proved they can rebuild it; not yet in the keyring.
    SharesVerified,
    /// In the keyring the database receives.
    Active,
    /// Out of the keyring for good.
    Retired,
}

/// One version in the status document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VersionStatus {
    /// The version, an integer in JSON.
    #[schema(value_type = u32, minimum = 1, maximum = 2147483648.0)]
    pub version: KeyVersion,
    /// Where it is in its lifecycle.
    pub state: VersionState,
    /// Its key check value (hex); public, it proves a rebuilt key.
    pub kcv: String,
    /// Encryptions counted under it: the daemon's own (canaries,
    /// re-encryption) and those the database processes reported when they
    /// fetched the keyring (API 1.3).
    pub encryptions: u64,
    /// Whether the daemon holds its key right now.
    pub loaded: bool,
    /// How close `encryptions` is to the version's usage limit (API 1.3;
    /// `ok` from an older daemon).
    #[serde(default)]
    pub usage: UsageLevel,
    /// What to do about it, when `usage` is not `ok` (API 1.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_message: Option<String>,
}

/// Unseal progress of one version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UnsealProgress {
    /// The version.
    #[schema(value_type = u32, minimum = 1, maximum = 2147483648.0)]
    pub version: KeyVersion,
    /// Distinct keyholders whose share is in.
    pub have: u8,
    /// The threshold.
    pub need: u8,
    /// Who submitted, by principal name.
    pub from: Vec<String>,
}

/// `GET /v1/status`: the document `keyholder --output json status` prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Status {
    /// The keyring's name.
    #[schema(value_type = String, pattern = "^[a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?$")]
    pub keyring: KeyringId,
    /// Whether the daemon holds no key.
    pub sealed: bool,
    /// Every known version, in numeric order.
    pub versions: Vec<VersionStatus>,
    /// The version new records are written with (`None` while sealed).
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 2147483648.0)]
    pub write_version: Option<KeyVersion>,
    /// Versions with shares in but below the threshold, in numeric order.
    pub unseal_progress: Vec<UnsealProgress>,
    /// The rotation, when one is under way or the last one's result.
    pub rotation: Option<RotationStatus>,
    /// When the daemon's TLS credentials run out (API 1.2; absent from an
    /// older daemon).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificates: Option<CertificateExpiry>,
    /// The cluster, when the daemon is a node of one (API 1.3; absent
    /// from a single daemon and an older one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterStatus>,
    /// Only in the answer to `POST /v1/seal`, and only when its audit entry
    /// (in a cluster, also the seal's generation) could not be written: why.
    /// The seal is done all the same: every key was dropped, and a seal is
    /// never refused (API 1.9; absent from an older daemon).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unaudited: Option<String>,
}

/// A keyholderd cluster as the answering node saw it at its last lease
/// round (ages by the state store's clock).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClusterStatus {
    /// The node that answered.
    pub node: String,
    /// The node holding an unexpired lease, if any.
    #[serde(default)]
    pub leader: Option<String>,
    /// The lease's epoch: one more at every change of leader.
    pub epoch: u64,
    /// Milliseconds since the leader took the lease.
    #[serde(default)]
    pub lease_age_ms: Option<u64>,
    /// Every node of the cluster, in config order.
    pub nodes: Vec<ClusterNode>,
}

/// One node of a cluster and its last heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClusterNode {
    /// Its name.
    pub name: String,
    /// Its API address.
    pub addr: String,
    /// Whether it held no key at its last heartbeat.
    #[serde(default)]
    pub sealed: Option<bool>,
    /// Milliseconds since its last heartbeat (`None`: never seen).
    #[serde(default)]
    pub heartbeat_age_ms: Option<u64>,
}

/// When the daemon's TLS credentials run out, as loaded: RFC 3339 times in
/// UTC (`2027-12-01T00:00:00Z`). The daemon warns in its log from
/// [`CertificateExpiry::WARN_DAYS`] days before each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CertificateExpiry {
    /// The server certificate's end of validity (`notAfter`).
    pub server_cert_not_after: String,
    /// The end of validity of the client CA (`listen.client_ca`; the
    /// earliest when the file holds several).
    pub client_ca_not_after: String,
    /// The CRL's `nextUpdate` (`listen.crl`), when a CRL is configured and
    /// names one: publish a new CRL before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crl_next_update: Option<String>,
}

impl CertificateExpiry {
    /// Days before an end of validity from which the daemon warns.
    pub const WARN_DAYS: u64 = 30;
}

/// One share line on the wire. It is a secret: zeroized on drop, never shown
/// by `Debug`, serialised only into the request that carries it.
#[derive(Clone)]
pub struct ShareLine(Zeroizing<String>);

impl ShareLine {
    /// Wraps a line read from a decrypted share file.
    pub fn new(line: Zeroizing<String>) -> Self {
        Self(line)
    }

    /// The line, for parsing into a [`crypto_core::Share`].
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ShareLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ShareLine(<redacted>)")
    }
}

impl Serialize for ShareLine {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ShareLine {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(|s| Self(Zeroizing::new(s)))
    }
}

/// Share lines one `UnsealRequest` may carry: a keyholder holds one share
/// per version that is not retired, a handful at most.
pub const MAX_SHARE_LINES: usize = 16;

/// `POST /v1/unseal` and `POST /v1/rotation/verify`: shares of any versions,
/// in any order (at most [`MAX_SHARE_LINES`]).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UnsealRequest {
    /// One line per share.
    #[schema(value_type = Vec<String>, min_items = 1, max_items = 16)]
    pub shares: Vec<ShareLine>,
}

/// What happened to one submitted share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ShareOutcome {
    /// Its position in the request, from 1.
    pub position: usize,
    /// Its version, when the line parsed far enough to say.
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 2147483648.0)]
    pub version: Option<KeyVersion>,
    /// Its share index, when the line parsed far enough to say.
    pub index: Option<u8>,
    /// Whether it was taken.
    pub accepted: bool,
    /// Why it was refused (or a note on an accepted one), never its data.
    pub reason: Option<String>,
    /// The rule that refused it (or noted it), a stable snake_case code:
    /// `bad_checksum`, `malformed`, `wrong_keyring`, `unknown_version`,
    /// `not_the_new_version`, `retired`, `other_split`, `wrong_parameters`,
    /// `unknown_index`, `fingerprint_mismatch`, `wrong_holder`,
    /// `already_counted`, or `already_unsealed`. Optional on the wire: a
    /// daemon that does not send it reads as `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
}

/// The answer to an unseal or verify submission.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UnsealResponse {
    /// Whether the daemon is still sealed.
    pub sealed: bool,
    /// One outcome per submitted share, in request order.
    pub outcomes: Vec<ShareOutcome>,
    /// Versions still gathering shares.
    pub progress: Vec<UnsealProgress>,
    /// Versions whose key the daemon holds now, in numeric order.
    #[schema(value_type = Vec<u32>)]
    pub loaded: Vec<KeyVersion>,
}

impl UnsealResponse {
    /// Whether every share was taken.
    pub fn all_accepted(&self) -> bool {
        self.outcomes.iter().all(|o| o.accepted)
    }
}
