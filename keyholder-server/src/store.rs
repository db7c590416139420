//! The daemon's persisted state, behind the [`StateStore`] trait.
//!
//! Owns what survives a restart: principals, key versions (KCV, split set,
//! threshold, lifecycle state, encryption count), the per-index share
//! fingerprints and who each index was dealt to, the age-encrypted share
//! envelopes, canaries, the rotation blob, re-encryption checkpoints, consumer
//! fetches, the encryption counts each database process reported and the hash-chained audit log.
//!
//! It must never hold a plaintext key or share: the only share material it
//! sees is age ciphertext. Every state change is written in one transaction
//! together with its audit entry ([`Transition`]).

pub mod postgres;
pub mod sqlite;

use std::sync::Arc;

use crypto_core::KeyVersion;
use futures::future::BoxFuture;
use keyholder_api::{AuditEntry, VersionState};

pub use keyholder_core::{Canary, DealtShare, VersionRecord};
pub use postgres::{PgLocation, PostgresStore};
pub use sqlite::SqliteStore;

/// The format of the state store this build reads and writes (semver: a
/// store of another major version is refused).
pub const STORE_FORMAT: &str = "1.0.0";

/// Opens the state store `location` names: the SQLite file in a state
/// directory, or a PostgreSQL schema (created and migrated when needed).
pub async fn open(
    location: &crate::config::StateLocation,
) -> Result<Arc<dyn StateStore>, StoreError> {
    use crate::config::StateLocation;
    Ok(match location {
        StateLocation::Dir(dir) => {
            // Opening migrates the file: blocking work, off the async threads.
            let file = StateLocation::sqlite_file(dir);
            let store = tokio::task::spawn_blocking(move || SqliteStore::open(&file))
                .await
                .map_err(|e| StoreError::Task {
                    reason: e.to_string(),
                })??;
            Arc::new(store)
        }
        StateLocation::Postgres(at) => Arc::new(PostgresStore::connect(at).await?),
    })
}

/// What a store call returns.
pub type StoreFuture<'a, T> = BoxFuture<'a, Result<T, StoreError>>;

/// Why the state store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The SQLite driver failed.
    #[error("state store {}: {operation} failed: {source}", .path.display())]
    Sqlite {
        /// The store's file.
        path: std::path::PathBuf,
        /// What the store was doing.
        operation: &'static str,
        /// The driver's error.
        source: rusqlite::Error,
    },
    /// PostgreSQL failed (connection, query or a refused statement), in
    /// the server's own words (SQLSTATE, message, detail, table).
    #[error("state store: {operation} failed: {source}")]
    Postgres {
        /// What the store was doing.
        operation: &'static str,
        /// The database's account of it; `transient` when trying again on a
        /// fresh connection may succeed.
        source: Box<keyholder_reencrypt::DatabaseError>,
    },
    /// The store was written by an incompatible build.
    #[error(
        "state store format {found} is not readable by this build (it reads {STORE_FORMAT}); run the keyholderd that wrote it"
    )]
    Format {
        /// The format found.
        found: String,
    },
    /// A stored value does not parse.
    #[error("state store is corrupt: {what}; restore it from a backup")]
    Corrupt {
        /// Which value.
        what: String,
    },
    /// A stored value carries a field this build does not know: a newer
    /// keyholderd sharing the store wrote it (a rolling upgrade), which a
    /// restore from a backup would undo.
    #[error(
        "the state store's {what} has a field this keyholderd does not know (`{field}`): a newer keyholderd sharing the store wrote it; upgrade this node to that version (the store is not damaged: do not restore it)"
    )]
    WrittenByNewer {
        /// Which value.
        what: String,
        /// The field.
        field: String,
    },
    /// A version was inserted twice.
    #[error("{version} already exists in the state store; a version is made once")]
    VersionExists {
        /// The version.
        version: KeyVersion,
    },
    /// A transition names a version the store does not know.
    #[error("{version} is not in the state store")]
    UnknownVersion {
        /// The version.
        version: KeyVersion,
    },
    /// A file or directory of the store could not be used.
    #[error("state store: cannot {operation} {}: {source}", .path.display())]
    Io {
        /// The file or directory.
        path: std::path::PathBuf,
        /// What the store was doing.
        operation: &'static str,
        /// The system's error.
        source: std::io::Error,
    },
    /// A cluster call on a store that holds no cluster (SQLite).
    #[error(
        "this state store holds no cluster; a [cluster] needs the PostgreSQL state store (state_store = \"postgres://...\")"
    )]
    NoCluster,
    /// A leader-only write carried an epoch the lease no longer holds (a
    /// newer leader took over, or the lease ran out): nothing of it was
    /// stored.
    #[error(
        "state store: refused a write of leader epoch {epoch}: the lease is at epoch {current}{}; this node is not the leader",
        if *.expired { " and ran out" } else { "" }
    )]
    Fenced {
        /// The epoch the write carried.
        epoch: u64,
        /// The lease's epoch in the store.
        current: u64,
        /// The lease (still at `epoch`) ran out by the database's clock.
        expired: bool,
    },
    /// A leader-only write on a cluster node that holds no lease (or whose
    /// lease ran out by its own clock): it was not sent to the store.
    #[error("this node does not hold the cluster's lease; only the leader writes the rotation")]
    NotLeader,
    /// A store call's blocking task failed (it panicked); nothing of it was
    /// committed.
    #[error("state store: a call failed on its thread ({reason}); see the daemon's log")]
    Task {
        /// The runtime's account of it.
        reason: String,
    },
}

impl StoreError {
    /// Names the SQLite file an error happened in.
    pub(crate) fn at(self, file: &std::path::Path) -> Self {
        match self {
            Self::Sqlite {
                path,
                operation,
                source,
            } if path.as_os_str().is_empty() => Self::Sqlite {
                path: file.to_owned(),
                operation,
                source,
            },
            other => other,
        }
    }

    /// Whether the failure may go away by itself (a lost connection, a
    /// server restarting, a deadlock or lock timeout): the caller may try
    /// again later.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Postgres { source, .. } if source.transient)
    }
}

pub(crate) fn corrupt(what: impl Into<String>) -> StoreError {
    StoreError::Corrupt { what: what.into() }
}

/// A stored JSON value (`what`) that does not parse: written by a newer
/// keyholderd when the only fault is a field this build does not know
/// (serde's `unknown field` of a `deny_unknown_fields` type), else corrupt.
pub(crate) fn unparsable(what: &str, error: &serde_json::Error) -> StoreError {
    let text = error.to_string();
    match text
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split_once('`'))
    {
        Some((field, _)) => StoreError::WrittenByNewer {
            what: what.to_owned(),
            field: field.to_owned(),
        },
        None => corrupt(format!("{what} ({text})")),
    }
}

/// A lifecycle state as both stores write it.
pub(crate) fn state_name(state: VersionState) -> &'static str {
    match state {
        VersionState::Prepared => "prepared",
        VersionState::SharesVerified => "shares_verified",
        VersionState::Active => "active",
        VersionState::Retired => "retired",
    }
}

pub(crate) fn parse_state(text: &str) -> Result<VersionState, StoreError> {
    Ok(match text {
        "prepared" => VersionState::Prepared,
        "shares_verified" => VersionState::SharesVerified,
        "active" => VersionState::Active,
        "retired" => VersionState::Retired,
        other => return Err(corrupt(format!("unknown version state `{other}`"))),
    })
}

/// A version's canary from its row, which a join may have found missing:
/// every version is stored with one, so a version without it is named
/// rather than left out of the versions read.
pub(crate) fn canary_of(
    version: KeyVersion,
    record: Option<String>,
    aad: Option<String>,
) -> Result<Canary, StoreError> {
    match (record, aad) {
        (Some(record), Some(aad)) => Ok(Canary { record, aad }),
        _ => Err(corrupt(format!("{version} has no canary"))),
    }
}

pub(crate) fn version_of(n: i64) -> Result<KeyVersion, StoreError> {
    u32::try_from(n)
        .ok()
        .and_then(|n| KeyVersion::new(n).ok())
        .ok_or_else(|| corrupt(format!("version number {n}")))
}

/// The time an appended entry gets: its draft's, or the previous entry's
/// when the draft is older. Drafts are stamped before they wait for the
/// store's lock, so without this a log's times could step backwards.
/// Both are RFC 3339 UTC with milliseconds, which order as text.
pub(crate) fn chained_time(draft: &str, previous: Option<&str>) -> String {
    match previous {
        Some(previous) if previous.len() == draft.len() && previous > draft => previous.to_owned(),
        _ => draft.to_owned(),
    }
}

/// Whether a recorded store format is readable by this build (same major).
pub(crate) fn format_compatible(found: &str) -> bool {
    let ours = semver::Version::parse(STORE_FORMAT).expect("STORE_FORMAT is semver");
    semver::Version::parse(found).is_ok_and(|v| v.major == ours.major)
}

/// One share, age-encrypted to the principal it was dealt to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEnvelope {
    /// The principal.
    pub principal: String,
    /// The share's index.
    pub index: u8,
    /// The age-armored file holding the share line.
    pub age_armored: String,
}

/// A version to insert: its record plus the share envelopes.
#[derive(Clone, Debug)]
pub struct NewVersion {
    /// The record (its `encryptions` is the canary's count).
    pub record: VersionRecord,
    /// One envelope per dealt share.
    pub envelopes: Vec<StoredEnvelope>,
}

/// An audit entry before the store numbers and chains it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditDraft {
    /// RFC 3339 UTC.
    pub time: String,
    /// The principal, or `keyholderd`.
    pub actor: String,
    /// snake_case action.
    pub action: String,
    /// Details, a JSON object as text; never key or share material.
    pub detail: String,
}

/// A version's encryption total went from `before` to `after` in one
/// store call (its crossings of the usage limits are read from it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsageChange {
    /// The version.
    pub version: KeyVersion,
    /// Its total before the call.
    pub before: u64,
    /// Its total after the call.
    pub after: u64,
}

/// One atomic change: everything in it is written in one transaction with its
/// audit entry, or nothing is.
#[derive(Clone, Debug)]
pub struct Transition {
    /// The audit entry describing the change.
    pub audit: AuditDraft,
    /// A version to insert.
    pub new_version: Option<NewVersion>,
    /// Lifecycle changes.
    pub version_states: Vec<(KeyVersion, VersionState)>,
    /// The rotation blob to store (JSON text), replacing the previous one.
    pub rotation: Option<String>,
    /// The runtime settings to store (JSON text: what an operator changed
    /// at run time, such as the throttle), replacing the previous ones.
    pub settings: Option<String>,
    /// A keyring fetch to record (the consumer's acknowledgement).
    pub fetch: Option<FetchRecord>,
}

/// `principal` fetched a keyring holding `versions` at `time`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchRecord {
    /// The database principal.
    pub principal: String,
    /// The versions handed over.
    pub versions: Vec<KeyVersion>,
    /// When (RFC 3339).
    pub time: String,
}

impl Transition {
    /// A change that only appends an audit entry.
    pub fn audit_only(audit: AuditDraft) -> Self {
        Self {
            audit,
            new_version: None,
            version_states: Vec::new(),
            rotation: None,
            settings: None,
            fetch: None,
        }
    }
}

/// A leader's proof of its lease, carried by every leader-only write: the
/// store refuses the write unless the lease row still names `node` at
/// `epoch`, unexpired by the database's clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    /// The leader's node name.
    pub node: String,
    /// The lease epoch it acquired.
    pub epoch: u64,
}

/// One node's turn at the lease: its heartbeat, and whether it wants the
/// lease (an unsealed node does; a sealed one only reports).
#[derive(Clone, Debug)]
pub struct LeaseBid {
    /// The node's name.
    pub node: String,
    /// Its API address.
    pub addr: String,
    /// Whether it holds no key.
    pub sealed: bool,
    /// Take the lease when it is free or expired, renew it while this node
    /// holds it unexpired (at the same epoch: nobody took it over).
    pub want: bool,
    /// The epoch this process holds the lease at (it took or renewed it
    /// then, and leads): only that renews it. The node's name is not
    /// enough: a second process running the same node's config would renew
    /// the first one's lease as its own and lead beside it. `None`: the
    /// lease is taken only once expired, at the next epoch.
    pub held: Option<u64>,
    /// How long the lease lasts from now (the database's `now()`).
    pub lease: std::time::Duration,
}

/// The lease row as the store has it after a round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRecord {
    /// Who holds it (`None` before the first leader).
    pub holder: Option<String>,
    /// Its epoch: one more at every change of holder.
    pub epoch: u64,
    /// Whether it ran out by the database's clock.
    pub expired: bool,
    /// Milliseconds since the holder acquired it.
    pub held_ms: u64,
    /// Milliseconds since its last renewal.
    pub renewed_ms: u64,
    /// Whether this round took or renewed it for the process that bid
    /// (never outside a round).
    pub ours: bool,
}

/// One node's last heartbeat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    /// The node's name.
    pub node: String,
    /// Its API address.
    pub addr: String,
    /// Whether it held no key.
    pub sealed: bool,
    /// Milliseconds since (by the database's clock).
    pub age_ms: u64,
}

/// The daemon's state store. Calls return boxed futures so a network store
/// (PostgreSQL) fits behind the same trait.
pub trait StateStore: Send + Sync {
    /// Records the configured principals (name, roles, certificate identity).
    fn sync_principals(&self, principals: &[crate::principal::Principal]) -> StoreFuture<'_, ()>;
    /// Every version, in numeric order.
    fn versions(&self) -> StoreFuture<'_, Vec<VersionRecord>>;
    /// Applies `transition` atomically and returns its chained audit entry.
    fn apply(&self, transition: Transition) -> StoreFuture<'_, AuditEntry>;
    /// Appends one audit entry.
    fn append_audit(&self, audit: AuditDraft) -> StoreFuture<'_, AuditEntry> {
        self.apply(Transition::audit_only(audit))
    }
    /// At most `limit` audit entries with a seq above `since`, in order.
    fn audit_page(&self, since: u64, limit: u32) -> StoreFuture<'_, Vec<AuditEntry>>;
    /// Adds `n` to the encryption count of `version`.
    fn add_encryptions(&self, version: KeyVersion, n: u64) -> StoreFuture<'_, UsageChange>;
    /// Records a database process's cumulative encryption counts: keeps
    /// the largest count seen per (`consumer`, `process`, version) and adds
    /// only the increase to the version's total, in one transaction, so a
    /// repeated or late report adds nothing. Returns the versions whose
    /// total grew.
    fn record_usage(
        &self,
        consumer: &str,
        process: &str,
        counts: &[(KeyVersion, u64)],
    ) -> StoreFuture<'_, Vec<UsageChange>>;
    /// The share of `version` dealt to `principal`, age-encrypted.
    fn share_envelope(
        &self,
        version: KeyVersion,
        principal: &str,
    ) -> StoreFuture<'_, Option<StoredEnvelope>>;
    /// The rotation blob (JSON text), if one was saved.
    fn load_rotation(&self) -> StoreFuture<'_, Option<String>>;
    /// The runtime settings (JSON text), if an operator changed any.
    fn runtime_settings(&self) -> StoreFuture<'_, Option<String>>;
    /// A re-encryption checkpoint (JSON text) of `target` in `direction`.
    fn checkpoint(&self, target: &str, direction: &str) -> StoreFuture<'_, Option<String>>;
    /// Stores a re-encryption checkpoint (JSON text).
    fn put_checkpoint(&self, target: &str, direction: &str, json: String) -> StoreFuture<'_, ()>;
    /// The targets holding a checkpoint in `direction`: every target a
    /// job's passes were started on, by name, whatever the config says now.
    fn checkpoint_targets(&self, direction: &str) -> StoreFuture<'_, Vec<String>>;
    /// Records a keyring fetch and its audit entry in one transaction, so
    /// a fetch is never counted as a consumer's acknowledgement without its
    /// entry (nor audited unrecorded). Any node's write: never fenced.
    fn record_fetch_audited(
        &self,
        fetch: FetchRecord,
        audit: AuditDraft,
    ) -> StoreFuture<'_, AuditEntry> {
        self.apply(Transition {
            fetch: Some(fetch),
            ..Transition::audit_only(audit)
        })
    }
    /// Records that `principal` fetched a keyring holding `versions` at `time`.
    fn record_fetch(
        &self,
        principal: &str,
        versions: &[KeyVersion],
        time: &str,
    ) -> StoreFuture<'_, ()>;
    /// Copies the whole store aside before a destructive transition
    /// (`label` says which), keeping only the newest `keep` copies, and
    /// returns where; `None` where the store leaves snapshots to its own
    /// backups (PostgreSQL: PITR or pg_dump).
    fn snapshot(&self, label: &str, keep: u32) -> StoreFuture<'_, Option<String>> {
        let _ = (label, keep);
        Box::pin(futures::future::ready(Ok(None)))
    }
    /// The cluster seal generation (`[cluster]`): bumped by every seal of
    /// the cluster, so a node holding keys of an older one knows to drop
    /// them and never hands them out. A store without a cluster says 0.
    fn cluster_seal_generation(&self) -> StoreFuture<'_, u64> {
        Box::pin(futures::future::ready(Ok(0)))
    }
    /// Bumps the cluster seal generation above both the stored one and
    /// `seen` (the highest the sealing node knows) and appends the audit
    /// entry `audit` makes of the new one, in one transaction; returns the
    /// new generation. A store restored from an older backup holds a lower
    /// generation than the nodes' keys are stamped with, and a seal there
    /// must still be newer than those keys. A store without a cluster
    /// refuses.
    fn seal_cluster(&self, seen: u64, audit: ClusterSealAudit) -> StoreFuture<'_, u64> {
        let _ = (seen, audit);
        Box::pin(futures::future::ready(Err(StoreError::NoCluster)))
    }

    /// Applies a leader-only `transition` if `fence` still holds the lease.
    /// A store outside a cluster (SQLite) has no lease: it applies it.
    fn apply_fenced(&self, fence: Fence, transition: Transition) -> StoreFuture<'_, AuditEntry> {
        let _ = fence;
        self.apply(transition)
    }
    /// [`StateStore::put_checkpoint`] if `fence` still holds the lease.
    fn put_checkpoint_fenced(
        &self,
        fence: Fence,
        target: &str,
        direction: &str,
        json: String,
    ) -> StoreFuture<'_, ()> {
        let _ = fence;
        self.put_checkpoint(target, direction, json)
    }
    /// [`StateStore::add_encryptions`] if `fence` still holds the lease.
    fn add_encryptions_fenced(
        &self,
        fence: Fence,
        version: KeyVersion,
        n: u64,
    ) -> StoreFuture<'_, UsageChange> {
        let _ = fence;
        self.add_encryptions(version, n)
    }
    /// One lease round of a cluster node: its heartbeat, and the lease
    /// taken (when expired), renewed (by its holder at its epoch) or left.
    fn lease_round(&self, bid: LeaseBid) -> StoreFuture<'_, LeaseRecord> {
        let _ = bid;
        Box::pin(futures::future::ready(Err(StoreError::NoCluster)))
    }
    /// The lease and every node's last heartbeat, in name order.
    fn cluster_state(&self) -> StoreFuture<'_, (LeaseRecord, Vec<Heartbeat>)> {
        Box::pin(futures::future::ready(Err(StoreError::NoCluster)))
    }
    /// The consumers that fetched a keyring holding `version`, with the
    /// time of their last such fetch (whichever node served it).
    fn fetches_of(&self, version: KeyVersion) -> StoreFuture<'_, Vec<(String, String)>> {
        let _ = version;
        Box::pin(futures::future::ready(Ok(Vec::new())))
    }
    /// The time of the last audit entry with `action`.
    fn last_audit_time(&self, action: &str) -> StoreFuture<'_, Option<String>> {
        let _ = action;
        Box::pin(futures::future::ready(Ok(None)))
    }
}

/// Makes the audit entry of a cluster seal from the generation it made.
pub type ClusterSealAudit = Box<dyn FnOnce(u64) -> AuditDraft + Send>;
