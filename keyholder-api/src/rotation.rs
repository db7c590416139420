//! Rotation on the wire: states, progress and the operator's requests.

use crypto_core::{KeyVersion, KeyringId};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The persisted rotation state, lowercase snake case in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RotationState {
    /// One live version, nothing under way.
    Idle,
    /// The new key is made and split; shares await their keyholders.
    Prepared,
    /// Enough keyholders proved they can rebuild the new key.
    SharesVerified,
    /// Consumers read both versions and still write the old one.
    DualRead,
    /// Consumers write the new version.
    DualWrite,
    /// The worker moves records from the old version to the new.
    Reencrypting,
    /// A full scan found no record at the old version.
    Drained,
    /// The old version left the keyring.
    Retired,
    /// A rollback is moving records back to the old version.
    RollingBack,
}

impl RotationState {
    /// Every state, in the order of the forward path (rolling back last).
    pub const ALL: [RotationState; 9] = [
        Self::Idle,
        Self::Prepared,
        Self::SharesVerified,
        Self::DualRead,
        Self::DualWrite,
        Self::Reencrypting,
        Self::Drained,
        Self::Retired,
        Self::RollingBack,
    ];

    /// The snake_case name, as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Prepared => "prepared",
            Self::SharesVerified => "shares_verified",
            Self::DualRead => "dual_read",
            Self::DualWrite => "dual_write",
            Self::Reencrypting => "reencrypting",
            Self::Drained => "drained",
            Self::Retired => "retired",
            Self::RollingBack => "rolling_back",
        }
    }
}

impl core::fmt::Display for RotationState {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The rotation part of the status document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RotationStatus {
    /// Where the rotation is.
    pub state: RotationState,
    /// The version being replaced.
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 2147483648.0)]
    pub from: Option<KeyVersion>,
    /// The version replacing it.
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 2147483648.0)]
    pub to: Option<KeyVersion>,
    /// Records moved so far in the current direction, over every full scan
    /// of the job.
    pub rows_done: u64,
    /// Records still at the version being moved away from.
    pub rows_remaining: u64,
    /// Compare-and-swap conflicts with application writes (rows revisited).
    pub conflicts: u64,
    /// The recent rate.
    pub rows_per_sec: f64,
    /// Seconds left at the recent rate, when there is one.
    pub eta_seconds: Option<u64>,
    /// Whether an operator paused the worker.
    pub paused: bool,
    /// Keyholders who proved their new share, by name.
    pub verified_by: Vec<String>,
    /// Consumers that fetched the dual-read keyring, by name.
    pub acknowledged_by: Vec<String>,
    /// Consumers that still must fetch it before `switch`.
    pub waiting_for: Vec<String>,
    /// Operators who approved retiring the old version.
    pub retire_approvals: Vec<String>,
    /// The throttle in force: rows per second (0 = unlimited).
    pub rows_per_sec_limit: u64,
    /// The throttle in force: the configured batch size.
    pub batch_size: u32,
    /// The last error of the worker, if it stopped on one (a persistent
    /// error: it names what to fix, then `keyholder rotate resume`).
    pub last_error: Option<String>,
    /// Transient database failures (deadlock, serialization failure, lock
    /// timeout, lost connection, server restarting) the running worker met
    /// since it started; after each it went on by itself from its
    /// checkpoint on a fresh connection.
    #[serde(default)]
    pub retries: u64,
    /// The latest of them, in the database's words (SQLSTATE, message).
    #[serde(default)]
    pub last_transient_error: Option<String>,
    /// Whether the worker is waiting now (with backoff) to try again.
    #[serde(default)]
    pub retrying: bool,
    /// Seconds the running workers' batches held what they locked in their
    /// targets (summed over targets, since each worker started): on SQLite
    /// the database's one write lock, on PostgreSQL and MySQL the batch's
    /// rows. Its rate over an interval is the share of that interval the
    /// pass held them; on SQLite, about the share of the application's
    /// writes that find the database locked and wait.
    #[serde(default)]
    pub locked_seconds: f64,
}

/// `POST /v1/rotation/prepare`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PrepareRequest {
    /// The new version; by default the highest known version + 1.
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 2147483648.0)]
    pub version: Option<KeyVersion>,
}

/// `GET /v1/rotation/share`: the caller's own new share, still age-encrypted
/// to the caller's recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ShareEnvelope {
    /// The keyring.
    #[schema(value_type = String, pattern = "^[a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?$")]
    pub keyring: KeyringId,
    /// The share's version.
    #[schema(value_type = u32, minimum = 1, maximum = 2147483648.0)]
    pub version: KeyVersion,
    /// The share's index.
    pub index: u8,
    /// The age-armored share file (one share line inside).
    pub age_armored: String,
}

/// `POST /v1/rotation/throttle`: fields left out stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ThrottleRequest {
    /// Target rows per second, 0 = unlimited, at most 10000000.
    #[schema(minimum = 0, maximum = 10000000)]
    pub rows_per_sec: Option<u64>,
    /// Rows per batch, 1..=100000.
    #[schema(minimum = 1, maximum = 100000)]
    pub batch_size: Option<u32>,
}

/// `POST /v1/rotation/retire`: one version, by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetireRequest {
    /// The version to retire (must be the rotation's old version).
    #[schema(value_type = u32, minimum = 1, maximum = 2147483648.0)]
    pub version: KeyVersion,
    /// `false`: answer the plan only.
    pub execute: bool,
}

/// The plan (or result) of a retire request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RetirePlan {
    /// The version.
    #[schema(value_type = u32, minimum = 1, maximum = 2147483648.0)]
    pub version: KeyVersion,
    /// Records still at that version (must be 0).
    pub records_remaining: u64,
    /// Operators who approved so far.
    pub approvals: Vec<String>,
    /// Distinct operators needed.
    pub approvals_needed: u8,
    /// Whether the version is now retired.
    pub executed: bool,
    /// What executing does (or did), step by step.
    pub steps: Vec<String>,
}

/// `POST /v1/rotation/rollback`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// `false`: answer the plan only.
    pub execute: bool,
}

/// The plan (or start) of a rollback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RollbackPlan {
    /// The version being rolled back (dropped at the end).
    #[schema(value_type = u32, minimum = 1, maximum = 2147483648.0)]
    pub from: KeyVersion,
    /// The version that writes again.
    #[schema(value_type = u32, minimum = 1, maximum = 2147483648.0)]
    pub to: KeyVersion,
    /// Records at `from` that will be moved back.
    pub records_to_move: u64,
    /// Operators who approved so far (both, once it started).
    pub approvals: Vec<String>,
    /// Distinct operators needed.
    pub approvals_needed: u8,
    /// Whether the rollback started.
    pub executed: bool,
    /// What executing does, step by step.
    pub steps: Vec<String>,
}
