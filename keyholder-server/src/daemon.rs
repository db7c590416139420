//! The daemon's core: seal state, vault, store and audit wired together.
//!
//! Owns what an API call does once the caller is known and allowed: taking
//! shares, proving rebuilt keys, loading and sealing, the status document,
//! the keyring hand-over. Handlers call these methods and map the errors to
//! HTTP; this module knows nothing of HTTP or TLS and never talks SQL itself.
//! It logs and audits versions, indices, names and KCV prefixes, never a key
//! or a share.

mod refusals;

pub use refusals::{expire_unseal_progress, write_refusal_summaries};

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use crypto_core::{HookHandover, KeyVersion};
use keyholder_api::{
    AuditLog, KeyringRequest, ShareLine, Status, UnsealResponse, UsageLevel, VersionState,
    VersionStatus,
};
use serde_json::json;

use crate::audit::{self, DAEMON};
use crate::cluster::lease::Leadership;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::principal::{Principal, Role};
use crate::store::{StateStore, StoreError, UsageChange, VersionRecord};
use crate::submissions::SubmissionLimiter;
use crate::vault::{KeyringPlan, Vault, VaultError};
use crate::verify::{self, RecordSampler};
use keyholder_core::rotation::Rotation;
use keyholder_core::seal::SealMachine;
use keyholder_core::{VersionFacts, verification};

/// Why a daemon operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A key is needed and none is held.
    #[error("the daemon is sealed; keyholders must unseal it first (keyholder unseal)")]
    Sealed,
    /// A seal came while rebuilt keys were being proven: they were dropped,
    /// so a seal is never undone by an unseal that was under way.
    #[error(
        "the daemon was sealed while the rebuilt keys were being proven; they were dropped and it stays sealed: submit the shares again"
    )]
    SealedMeanwhile,
    /// A cluster node that does not hold every version the stored rotation
    /// needs: the keyring it holds would lack one.
    #[error(
        "this node does not hold {versions} of the keyring the rotation is at (it takes them from a peer, or keyholders unseal it with their shares); another node of the cluster serves the whole keyring"
    )]
    VersionsNotHeld {
        /// The versions it lacks, `v10, v11`.
        versions: String,
    },
    /// The state store has no version yet.
    #[error("the keyring has no key yet; run keyholderd init first")]
    NotInitialized,
    /// `keyholderd init` ran after this daemon started: the daemon read the
    /// empty store at start, and only a start loads the versions.
    #[error(
        "keyholderd init made {versions} after this daemon started, and a running daemon does not load it: restart keyholderd, then unseal"
    )]
    InitializedAfterStart {
        /// The versions in the store now, `v1`.
        versions: String,
    },
    /// Rebuilt keys failed verification; nothing was loaded.
    #[error("unseal refused, the daemon stays sealed and dropped the rebuilt keys: {}", .failures.join("; "))]
    Verification {
        /// One message per failed check (version, check, record ids).
        failures: Vec<String>,
    },
    /// The keyring plan does not fit the stored versions.
    #[error("cannot decide the keyring: {0}")]
    Plan(String),
    /// Loading keys failed.
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// The state store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A database process's usage report was refused; nothing of it was
    /// recorded and no keyring was handed over.
    #[error("usage report refused: {0}")]
    Usage(#[from] crate::usage::ReportError),
}

/// Whether the daemon holds keys, as its `watch` publishes it. `epoch`
/// counts the seals: a reader that sees it change knows a seal happened,
/// even when an unseal followed before it looked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SealState {
    /// No key is held.
    pub sealed: bool,
    /// Seals so far.
    pub epoch: u64,
}

/// A database principal fetched the keyring: its acknowledgement, for the
/// rotation to record before the fetch is answered (or after, when the
/// rotation is busy with a step longer than [`ACKNOWLEDGEMENT_WAIT`]).
pub struct Fetched {
    /// The principal.
    pub consumer: String,
    /// The versions of the keyring it was handed.
    pub versions: Vec<KeyVersion>,
    /// The version that keyring writes.
    pub write_version: KeyVersion,
    /// Answered once the acknowledgement is recorded.
    pub recorded: tokio::sync::oneshot::Sender<()>,
}

/// How long a keyring fetch waits for the rotation to record it before it
/// is answered all the same: a step that takes long (a switch sampling a
/// database that restarts, a retire's full scan) must not hold up every
/// database's start. The rotation records it when it gets to it, by the
/// keyring that was handed over, not by the state it is in by then.
pub const ACKNOWLEDGEMENT_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The running daemon's state.
pub struct Daemon {
    /// The validated config; a reload publishes a new one (`reload.rs`),
    /// read per request or per step.
    config: tokio::sync::watch::Sender<Arc<Config>>,
    /// The persisted state.
    store: Arc<dyn StateStore>,
    /// The same store for the leader-only writes (the rotation's steps, the
    /// worker's checkpoints and counts): fenced by the lease's epoch in a
    /// cluster, the store itself otherwise.
    leader_store: Arc<dyn StateStore>,
    /// Who leads the cluster, as this node's lease rounds see it
    /// (`Single` outside a cluster).
    leadership: tokio::sync::watch::Sender<crate::cluster::lease::Leadership>,
    /// The cluster as the last lease round read it (status and metrics).
    cluster_status: tokio::sync::watch::Sender<Option<keyholder_api::ClusterStatus>>,
    /// The keys, when unsealed.
    vault: Vault,
    /// Metrics.
    metrics: Metrics,
    /// The budget of failed share submissions, per principal.
    submissions: SubmissionLimiter,
    /// The same budget for calls to the node endpoints of a cluster by a
    /// principal that is not a node of it: each refusal is audited, so a
    /// caller looping on them is refused unaudited once it is spent.
    node_calls: SubmissionLimiter,
    seal: Mutex<SealMachine>,
    plan: RwLock<Option<KeyringPlan>>,
    /// The stored versions as of the last write through this daemon: status
    /// reads these and never waits on the store.
    versions: RwLock<Vec<VersionRecord>>,
    samplers: Vec<Box<dyn RecordSampler>>,
    seal_state: tokio::sync::watch::Sender<SealState>,
    fetches: tokio::sync::mpsc::UnboundedSender<Fetched>,
    /// Taken once, by the rotation.
    fetched: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Fetched>>>,
}

/// Parses the rotation the store holds: the one place its JSON is read.
/// A rotation the machine never makes (no next version past idle, say) is
/// refused here, before any of its methods could trip on it.
fn parse_rotation(text: Option<String>) -> Result<Option<Rotation>, DaemonError> {
    let corrupt = |what: String| DaemonError::Store(StoreError::Corrupt { what });
    text.map(|text| {
        let rotation: Rotation = serde_json::from_str(&text)
            .map_err(|e| DaemonError::Store(crate::store::unparsable("rotation state", &e)))?;
        match rotation.inconsistency() {
            Some(why) => Err(corrupt(format!("rotation state: {why}"))),
            None => Ok(rotation),
        }
    })
    .transpose()
}

/// The default plan with no rotation under way: the active versions are live
/// and, when there is exactly one, it writes.
pub fn default_plan(versions: &[VersionRecord]) -> Result<Option<KeyringPlan>, DaemonError> {
    let live: BTreeSet<KeyVersion> = versions
        .iter()
        .filter(|v| v.state == VersionState::Active)
        .map(|v| v.version)
        .collect();
    match live.len() {
        0 => Ok(None),
        1 => Ok(Some(KeyringPlan {
            write: *live.first().expect("one version"),
            live,
        })),
        _ => Err(DaemonError::Plan(format!(
            "{} versions are active and no rotation state says which one writes",
            live.len()
        ))),
    }
}

impl Daemon {
    /// Opens the state store of `config` and starts sealed.
    pub async fn open(config: Config) -> Result<Arc<Self>, DaemonError> {
        let store = crate::store::open(&config.state).await?;
        Self::with_store(config, store).await
    }

    /// Starts sealed on `store`.
    pub async fn with_store(
        config: Config,
        store: Arc<dyn StateStore>,
    ) -> Result<Arc<Self>, DaemonError> {
        store.sync_principals(&config.principals).await?;
        let samplers = config
            .targets
            .iter()
            .map(verify::sampler_for)
            .collect::<Vec<_>>();
        let versions = store.versions().await?;
        let plan = match parse_rotation(store.load_rotation().await?)? {
            // The persisted rotation says which versions are live and which
            // one writes; never "the highest".
            Some(rotation) => Some(KeyringPlan {
                live: rotation.live_versions().into_iter().collect(),
                write: rotation.write_version(),
            }),
            None => default_plan(&versions)?,
        };
        let seal = Mutex::new(Self::machine(&config, &versions, plan.as_ref()));
        let (fetches, fetched) = tokio::sync::mpsc::unbounded_channel();
        let (leadership, leader_store) = match &config.cluster {
            Some(cluster) => {
                let leadership =
                    tokio::sync::watch::Sender::new(Leadership::Follower { leader: None });
                let fenced: Arc<dyn StateStore> =
                    Arc::new(crate::cluster::fence::FencedStore::new(
                        Arc::clone(&store),
                        cluster.node.clone(),
                        leadership.subscribe(),
                    ));
                (leadership, fenced)
            }
            None => (
                tokio::sync::watch::Sender::new(Leadership::Single),
                Arc::clone(&store),
            ),
        };
        let daemon = Arc::new(Self {
            config: tokio::sync::watch::Sender::new(Arc::new(config)),
            store,
            leader_store,
            leadership,
            cluster_status: tokio::sync::watch::Sender::new(None),
            vault: Vault::default(),
            metrics: Metrics::default(),
            submissions: SubmissionLimiter::default(),
            node_calls: SubmissionLimiter::default(),
            seal,
            plan: RwLock::new(plan),
            versions: RwLock::new(versions.clone()),
            samplers,
            seal_state: tokio::sync::watch::Sender::new(SealState {
                sealed: true,
                epoch: 0,
            }),
            fetches,
            fetched: Mutex::new(Some(fetched)),
        });
        let versions: Vec<u32> = versions.iter().map(|v| v.version.number()).collect();
        daemon
            .store
            .append_audit(audit::draft(
                DAEMON,
                "started",
                json!({"versions": versions, "sealed": true}),
            ))
            .await?;
        tracing::info!(keyring = %daemon.config().keyring, ?versions, "started sealed");
        Ok(daemon)
    }

    fn machine(
        config: &Config,
        versions: &[VersionRecord],
        plan: Option<&KeyringPlan>,
    ) -> SealMachine {
        SealMachine::new(
            config.keyring.clone(),
            Self::facts(versions, plan),
            config.progress_ttl,
        )
    }

    /// What the seal machine knows of the stored `versions`: the live ones
    /// of `plan` are required.
    fn facts(
        versions: &[VersionRecord],
        plan: Option<&KeyringPlan>,
    ) -> BTreeMap<KeyVersion, VersionFacts> {
        versions
            .iter()
            .map(|r| {
                let live = plan.is_some_and(|p| p.live.contains(&r.version));
                (r.version, VersionFacts::from_record(r, live))
            })
            .collect()
    }

    /// The validated config in force (the last one reloaded).
    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.config.borrow())
    }

    /// Records a reloaded config's principals in the state store, before
    /// it is put in force; `reload.rs` has validated it and refused what
    /// cannot change live.
    pub(crate) async fn sync_principals(&self, config: &Config) -> Result<(), DaemonError> {
        self.store.sync_principals(&config.principals).await?;
        Ok(())
    }

    /// Puts `config` in force (its principals recorded first with
    /// [`Self::sync_principals`]).
    pub(crate) fn publish_config(&self, config: Arc<Config>) {
        self.config.send_replace(config);
    }

    /// The persisted state: for the rotation's steps, which write it with
    /// their audit entries. Handlers go through the daemon's methods.
    pub(crate) fn store(&self) -> &Arc<dyn StateStore> {
        &self.store
    }

    /// The store for leader-only writes (fenced in a cluster).
    pub(crate) fn leader_store(&self) -> &Arc<dyn StateStore> {
        &self.leader_store
    }

    /// Who leads the cluster, as this node knows it; a new value at every
    /// change.
    pub fn leadership(&self) -> tokio::sync::watch::Receiver<Leadership> {
        self.leadership.subscribe()
    }

    /// Where the lease rounds publish this node's leadership.
    pub(crate) fn leadership_sender(&self) -> &tokio::sync::watch::Sender<Leadership> {
        &self.leadership
    }

    /// Publishes the cluster as a lease round read it.
    pub(crate) fn set_cluster_status(&self, status: keyholder_api::ClusterStatus) {
        self.metrics.set_cluster(&status);
        self.cluster_status.send_replace(Some(status));
    }

    /// This node stepped down without reaching the store: status shows no
    /// leader known until a lease round reads the lease again.
    pub(crate) fn forget_cluster_leader(&self) {
        self.cluster_status.send_modify(|status| {
            if let Some(status) = status {
                status.leader = None;
                status.lease_age_ms = None;
                self.metrics.set_cluster(status);
            }
        });
    }

    /// Whether this node runs the rotation now (always outside a cluster).
    pub fn leads(&self) -> bool {
        self.leadership.borrow().leads()
    }

    /// The leader's API address from `[cluster] nodes` and its name, when
    /// another node leads; `None` when no leader is known.
    pub fn leader_addr(&self) -> Option<(String, String)> {
        let config = self.config();
        let cluster = config.cluster.as_ref()?;
        let leadership = self.leadership.borrow();
        let name = leadership.leader(&cluster.node)?;
        cluster
            .node_named(name)
            .map(|n| (n.name.clone(), n.addr.clone()))
    }

    /// The keys, when unsealed.
    pub(crate) fn vault(&self) -> &Vault {
        &self.vault
    }

    /// The daemon's metrics.
    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// How many seals there have been: unchanged since a reading, no seal
    /// came in between.
    pub fn seal_epoch(&self) -> u64 {
        self.seal_state.borrow().epoch
    }

    /// The seal state, published on every seal and unseal.
    pub fn seal_state(&self) -> tokio::sync::watch::Receiver<SealState> {
        self.seal_state.subscribe()
    }

    /// The keyring fetches of database principals, for the one reader that
    /// records them as acknowledgements (the rotation); `None` after the
    /// first call.
    pub fn take_fetches(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<Fetched>> {
        self.fetched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// The persisted rotation, parsed (`None` before the first step).
    pub async fn load_rotation(&self) -> Result<Option<Rotation>, DaemonError> {
        parse_rotation(self.store.load_rotation().await?)
    }

    /// Proves `keys` as unseal does (KCV, canary, sample records of every
    /// target) without loading them; the rotation calls it before `switch`.
    pub async fn verify_keys(
        &self,
        keys: BTreeMap<KeyVersion, crypto_core::Key>,
    ) -> Result<BTreeMap<KeyVersion, usize>, DaemonError> {
        let (_, verdict) = self.prove(keys).await?;
        match verdict {
            Ok(report) => Ok(report.sampled),
            Err(failures) => {
                for failure in &failures {
                    tracing::error!(
                        version = failure.version.number(),
                        check = %failure.check,
                        record_ids = ?failure.record_ids,
                        "key verification failed; nothing switched"
                    );
                }
                Err(DaemonError::Verification {
                    failures: failures.iter().map(ToString::to_string).collect(),
                })
            }
        }
    }

    /// Checks `keys` (KCV, canary, sample records of every target): the
    /// records are fetched here, for the keys whose KCV and canary pass, and
    /// the decision (crypto) runs on a blocking thread; hands the keys back
    /// with the verdict.
    pub(crate) async fn prove(
        &self,
        keys: BTreeMap<KeyVersion, crypto_core::Key>,
    ) -> Result<
        (
            BTreeMap<KeyVersion, crypto_core::Key>,
            Result<verify::Report, Vec<verify::Failure>>,
        ),
        DaemonError,
    > {
        let versions: BTreeMap<KeyVersion, VersionRecord> = self
            .store
            .versions()
            .await?
            .into_iter()
            .map(|v| (v.version, v))
            .collect();
        let keyring_id = self.config().keyring.clone();
        // Sampling is for keys that can pass; a wrong key fails on its KCV
        // without waiting on a target.
        let worth_sampling: Vec<KeyVersion> = keys
            .iter()
            .filter(|(v, key)| {
                verification::check_key(&keyring_id, **v, key, versions.get(*v)).is_ok()
            })
            .map(|(v, _)| *v)
            .collect();
        let samples =
            verify::fetch(&self.samplers, worth_sampling, self.config().sample_size).await;
        tokio::task::spawn_blocking(move || {
            let verdict = verification::decide(&keyring_id, &keys, &versions, &samples);
            (keys, verdict)
        })
        .await
        .map_err(|e| DaemonError::Plan(format!("verification task failed: {e}")))
    }

    /// The keyring plan in force (`None` before init).
    pub fn plan(&self) -> Option<KeyringPlan> {
        self.plan.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Sets which versions are live and which writes (the rotation drives
    /// this), re-reads the stored versions and, when unsealed and the plan
    /// changed, republishes the keyring. While sealed, partial unseal
    /// progress is kept: a cluster node sets the stored plan every second,
    /// and the ceremony must last `unseal.progress_ttl`. Only a version
    /// whose stored facts changed (its state, its shares) loses its
    /// progress.
    pub async fn set_plan(&self, plan: KeyringPlan) -> Result<(), DaemonError> {
        let versions = self.refresh_versions().await?;
        let previous = self
            .plan
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .replace(plan.clone());
        let dropped = self
            .lock_seal()
            .set_versions(Self::facts(&versions, Some(&plan)));
        if !dropped.is_empty() {
            let versions: Vec<u32> = dropped.iter().map(|v| v.number()).collect();
            tracing::info!(
                ?versions,
                "unseal progress dropped: these versions changed in the state store"
            );
            self.audit(
                DAEMON,
                "unseal_progress_reset",
                json!({"versions": versions, "reason": "the versions changed in the state store"}),
            )
            .await?;
        }
        // Every rotation step sets the plan; only a changed one makes a new
        // keyring, so "keyring loaded" is logged once per real change.
        if previous.as_ref() != Some(&plan)
            && let Some(keyring) = self.vault.republish(&plan)?
        {
            self.metrics.set_loaded(keyring.versions().count());
            self.log_keyring(&keyring);
        }
        Ok(())
    }

    fn lock_seal(&self) -> std::sync::MutexGuard<'_, SealMachine> {
        self.seal.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Re-reads the stored versions into the copy status shows.
    async fn refresh_versions(&self) -> Result<Vec<VersionRecord>, DaemonError> {
        let versions = self.store.versions().await?;
        *self.versions.write().unwrap_or_else(|p| p.into_inner()) = versions.clone();
        Ok(versions)
    }

    /// The stored versions as of the last write (no store call).
    fn known_versions(&self) -> Vec<VersionRecord> {
        self.versions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Applies a rotation step's `transition` to the store (fenced by the
    /// lease in a cluster); when it changes versions, the copy status shows
    /// follows.
    pub async fn apply(
        &self,
        transition: crate::store::Transition,
    ) -> Result<keyholder_api::AuditEntry, DaemonError> {
        let touches_versions =
            transition.new_version.is_some() || !transition.version_states.is_empty();
        let entry = self.leader_store.apply(transition).await?;
        if touches_versions {
            self.refresh_versions().await?;
        }
        Ok(entry)
    }

    /// Counts `n` encryptions under `version` (the usage limit of AES-GCM
    /// with random nonces rests on this count).
    pub async fn add_encryptions(&self, version: KeyVersion, n: u64) -> Result<(), DaemonError> {
        let change = self.leader_store.add_encryptions(version, n).await?;
        self.counted(DAEMON, &[change]).await
    }

    /// Puts counts the store just wrote into the copy status shows, then
    /// logs and audits each usage limit a version crossed (once per
    /// crossing: the store's before and after say which call crossed it).
    async fn counted(&self, reporter: &str, changes: &[UsageChange]) -> Result<(), DaemonError> {
        let states: BTreeMap<KeyVersion, VersionState> = {
            let mut versions = self.versions.write().unwrap_or_else(|p| p.into_inner());
            for change in changes {
                if let Some(record) = versions.iter_mut().find(|r| r.version == change.version) {
                    record.encryptions = record.encryptions.max(change.after);
                }
            }
            versions.iter().map(|r| (r.version, r.state)).collect()
        };
        let limits = self.config().usage;
        for change in changes {
            let Some(level) = change.crossed(&limits) else {
                continue;
            };
            if states.get(&change.version) == Some(&VersionState::Retired) {
                continue;
            }
            let message = limits
                .message(change.version, change.after, level)
                .unwrap_or_default();
            let (action, limit) = match level {
                UsageLevel::Exhausted => ("encryptions_exhausted", limits.limit),
                _ => ("encryptions_warning", limits.warn_at),
            };
            // WARN, not ERROR: an ERROR line means a fault of the daemon;
            // this one is the operator's to act on (and is audited).
            tracing::warn!(
                version = change.version.number(),
                encryptions = change.after,
                limit,
                reported_by = reporter,
                "{message}"
            );
            self.audit(
                DAEMON,
                action,
                json!({
                    "version": change.version.number(),
                    "encryptions": change.after,
                    "limit": limit,
                    "reported_by": reporter,
                    "message": message,
                }),
            )
            .await?;
        }
        Ok(())
    }

    /// Takes shares from `principal`; unseals when every live version is
    /// rebuilt and proven.
    pub async fn unseal(
        &self,
        principal: &Principal,
        lines: &[ShareLine],
    ) -> Result<UnsealResponse, DaemonError> {
        let epoch = self.seal_epoch();
        // Admitted at any epoch: `None` is for relayed shares only.
        self.unseal_via(principal, lines, None, epoch)
            .await?
            .ok_or(DaemonError::SealedMeanwhile)
    }

    /// Takes shares `principal` submitted to another node of the cluster,
    /// which admitted them there and relayed them (`relayed_by`): the same
    /// admission, counted as that keyholder's, audited as relayed. `None`,
    /// nothing admitted, when this daemon was sealed after seal epoch
    /// `epoch`: that seal dropped the progress these shares belong to.
    pub async fn unseal_relayed(
        &self,
        principal: &Principal,
        lines: &[ShareLine],
        relayed_by: &str,
        epoch: u64,
    ) -> Result<Option<UnsealResponse>, DaemonError> {
        self.unseal_via(principal, lines, Some(relayed_by), epoch)
            .await
    }

    /// Drops the unseal progress older than `unseal.progress_ttl` now, not
    /// only when the next submission or status asks: an abandoned share
    /// leaves memory on time. Each version dropped is audited
    /// (`unseal_progress_expired`), and the threads scrub their stacks of
    /// the copies the submission left.
    pub async fn expire_unseal_progress(&self) -> Result<(), DaemonError> {
        let expired = self.lock_seal().expire(Instant::now());
        if expired.is_empty() {
            return Ok(());
        }
        crate::hygiene::keys_left();
        for version in expired {
            self.audit(
                DAEMON,
                "unseal_progress_expired",
                json!({"version": version.number()}),
            )
            .await?;
        }
        Ok(())
    }

    /// Why there is no keyring plan: init has not run, or it ran after this
    /// daemon read the store at start (told apart, since "run init" is then
    /// a step init refuses).
    async fn not_initialized(&self) -> DaemonError {
        match self.store.versions().await {
            Ok(found) if !found.is_empty() => DaemonError::InitializedAfterStart {
                versions: found
                    .iter()
                    .map(|r| r.version.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            },
            _ => DaemonError::NotInitialized,
        }
    }

    async fn unseal_via(
        &self,
        principal: &Principal,
        lines: &[ShareLine],
        relayed_by: Option<&str>,
        epoch: u64,
    ) -> Result<Option<UnsealResponse>, DaemonError> {
        if !self.vault.is_sealed() {
            return Ok(Some(self.already_unsealed(lines.len())));
        }
        let Some(plan) = self.plan() else {
            return Err(self.not_initialized().await);
        };
        // A seal from `epoch` on drops what this submission rebuilds.
        let (submission, expired) = {
            let mut machine = self.lock_seal();
            // A seal bumps the epoch before it resets the progress: shares
            // relayed from before it are either dropped by that reset or
            // not admitted at all.
            if relayed_by.is_some() && self.seal_epoch() != epoch {
                return Ok(None);
            }
            let expired = machine.expire(Instant::now());
            (
                machine.submit(&principal.name, lines, Instant::now()),
                expired,
            )
        };
        for version in expired {
            self.audit(
                DAEMON,
                "unseal_progress_expired",
                json!({"version": version.number()}),
            )
            .await?;
        }
        // A share is counted only once its submission is audited: told the
        // submission failed, the keyholder submits again.
        if let Err(e) = self
            .audit_submission(principal, &submission.outcomes, relayed_by)
            .await
        {
            let admitted: Vec<(KeyVersion, u8)> = submission
                .outcomes
                .iter()
                .filter(|o| o.accepted && o.refusal.is_none())
                .filter_map(|o| Some((o.version?, o.index?)))
                .collect();
            self.lock_seal().forget(&principal.name, &admitted);
            drop(submission);
            crate::hygiene::keys_left();
            return Err(e);
        }
        let failures: Vec<String> = submission
            .failures
            .iter()
            .map(|f| format!("{}: {}", f.version, f.reason))
            .collect();
        if !failures.is_empty() {
            self.audit(
                DAEMON,
                "unseal_rebuild_failed",
                json!({"failures": failures}),
            )
            .await?;
        }
        let mut response = UnsealResponse {
            sealed: true,
            outcomes: submission.outcomes,
            progress: Vec::new(),
            loaded: Vec::new(),
        };
        let Some(rebuilt) = submission.rebuilt else {
            if !failures.is_empty() {
                return Err(DaemonError::Verification { failures });
            }
            response.progress = self.lock_seal().progress();
            return Ok(Some(response));
        };
        let (keys, verdict) = self.prove(rebuilt.keys).await?;
        match verdict {
            Err(failures) => {
                drop(keys);
                Err(self.unproven(&failures).await?)
            }
            Ok(report) => {
                // A store restored from an older backup may not know, or
                // keep live, the version records are at.
                let versions = self.store.versions().await?;
                let stray = verify::stray_records(&self.samplers, &versions, &plan.live).await;
                if !stray.is_empty() {
                    drop(keys);
                    return Err(self.unproven(&stray).await?);
                }
                self.load_proven(keys, &report, &plan, epoch).await?;
                response.sealed = false;
                response.loaded = self.vault.held_versions();
                Ok(Some(response))
            }
        }
    }

    /// The answer to shares sent to an unsealed daemon: none was needed.
    fn already_unsealed(&self, lines: usize) -> UnsealResponse {
        let outcomes = (1..=lines)
            .map(|position| keyholder_api::ShareOutcome {
                position,
                version: None,
                index: None,
                accepted: false,
                reason: Some(
                    "the daemon is already unsealed; this share was not needed".to_owned(),
                ),
                refusal: Some("already_unsealed".to_owned()),
            })
            .collect();
        UnsealResponse {
            sealed: false,
            outcomes,
            progress: Vec::new(),
            loaded: self.vault.held_versions(),
        }
    }

    /// One audit entry per submission, not per line: a submission holds at
    /// most a few lines, and the rate limit bounds the submissions. Shares
    /// relayed by another node are `unseal_share_relayed`, naming it.
    async fn audit_submission(
        &self,
        principal: &Principal,
        outcomes: &[keyholder_api::ShareOutcome],
        relayed_by: Option<&str>,
    ) -> Result<(), DaemonError> {
        let refused = outcomes.iter().filter(|o| !o.accepted).count();
        tracing::info!(
            principal = %principal.name,
            lines = outcomes.len(),
            refused,
            "unseal shares submitted (each line's outcome is in the audit log)"
        );
        let mut lines = Vec::with_capacity(outcomes.len());
        for outcome in outcomes {
            // A line that did not parse may hold share data in its message:
            // the audit log says only that it did not parse.
            let reason = match (outcome.version, &outcome.reason) {
                (None, _) => Some("the share line does not parse".to_owned()),
                (_, reason) => reason.clone(),
            };
            tracing::debug!(
                principal = %principal.name,
                version = outcome.version.map(|v| v.number()),
                index = outcome.index,
                accepted = outcome.accepted,
                reason = reason.as_deref().unwrap_or(""),
                "unseal share"
            );
            lines.push(json!({
                "position": outcome.position,
                "version": outcome.version.map(|v| v.number()),
                "index": outcome.index,
                "accepted": outcome.accepted,
                "reason": reason,
            }));
        }
        let mut detail = json!({
            "accepted": outcomes.len() - refused,
            "refused": refused,
            "lines": lines,
        });
        let action = match relayed_by {
            Some(node) => {
                detail["relayed_by"] = json!(node);
                detail["node"] = json!(self.config().cluster.as_ref().map(|c| c.node.clone()));
                "unseal_share_relayed"
            }
            None if refused == 0 => "unseal_share_accepted",
            None => "unseal_share_refused",
        };
        self.audit(&principal.name, action, detail).await?;
        // Counted once audited: a submission that could not be is dropped.
        for outcome in outcomes {
            self.metrics.share(outcome.accepted);
        }
        Ok(())
    }

    /// Logs and audits rebuilt keys that failed verification; the daemon
    /// stays sealed. Returns the error to answer with.
    async fn unproven(&self, failures: &[verify::Failure]) -> Result<DaemonError, DaemonError> {
        for failure in failures {
            tracing::error!(
                version = failure.version.number(),
                check = %failure.check,
                record_ids = ?failure.record_ids,
                "key verification failed; staying sealed"
            );
        }
        self.audit(
            DAEMON,
            "unseal_verification_failed",
            json!({"failures": failures.iter().map(|f| json!({
                "version": f.version.number(),
                "check": f.check,
                "record_ids": f.record_ids,
                "reason": f.reason,
            })).collect::<Vec<_>>()}),
        )
        .await?;
        Ok(DaemonError::Verification {
            failures: failures.iter().map(ToString::to_string).collect(),
        })
    }

    /// Loads proven keys as the plan says, restores their encryption counts,
    /// logs and audits the keyring, and announces the unseal. `epoch` is
    /// the seal epoch when the keys were gathered: after a seal since then
    /// they are dropped, not loaded ([`DaemonError::SealedMeanwhile`]),
    /// checked again once loaded so a seal racing the load wins.
    pub(crate) async fn load_proven(
        &self,
        keys: BTreeMap<KeyVersion, crypto_core::Key>,
        report: &verify::Report,
        plan: &KeyringPlan,
        epoch: u64,
    ) -> Result<(), DaemonError> {
        let sealed_since = || self.seal_state.borrow().epoch != epoch;
        if sealed_since() {
            drop(keys);
            crate::hygiene::keys_left();
            return Err(self.sealed_meanwhile().await);
        }
        let keyring = self.vault.load(&self.config().keyring, keys, plan)?;
        if sealed_since() {
            drop(keyring);
            self.vault.seal();
            return Err(self.sealed_meanwhile().await);
        }
        // Keys are never held unaudited: when the counts cannot be read or
        // the `unsealed` entry cannot be written, the keys are dropped and
        // the daemon stays sealed (the keyholder is answered the error).
        if let Err(e) = self.announce_unsealed(&keyring, report).await {
            drop(keyring);
            self.vault.seal();
            crate::hygiene::keys_left();
            tracing::error!(
                error = %e,
                "the unseal could not be recorded in the state store: the rebuilt keys were dropped and the daemon stays sealed; keyholders submit their shares again once the store is back"
            );
            return Err(e);
        }
        self.metrics.set_loaded(keyring.versions().count());
        self.log_keyring(&keyring);
        // The rotation resumes its work on this.
        self.seal_state.send_modify(|s| s.sealed = false);
        Ok(())
    }

    /// Restores the loaded keyring's encryption counts and audits the
    /// unseal.
    async fn announce_unsealed(
        &self,
        keyring: &crypto_core::Keyring,
        report: &verify::Report,
    ) -> Result<(), DaemonError> {
        let counts = self.refresh_versions().await?;
        for record in counts.iter().filter(|r| keyring.contains(r.version)) {
            keyring
                .set_encryptions(record.version, record.encryptions)
                .map_err(VaultError::Plan)?;
        }
        self.audit(
            DAEMON,
            "unsealed",
            json!({
                "versions": keyring.versions().map(|v| v.number()).collect::<Vec<_>>(),
                "write_version": keyring.write_version().number(),
                "kcv_prefixes": keyring.versions().map(|v| keyring.kcv(v).map(|k| k.prefix())).collect::<Vec<_>>(),
                "sampled": report.sampled.iter().map(|(v, n)| json!({"version": v.number(), "records": n})).collect::<Vec<_>>(),
            }),
        )
        .await
    }

    /// Audits keys dropped because a seal came while they were proven.
    async fn sealed_meanwhile(&self) -> DaemonError {
        tracing::warn!("a seal came while rebuilt keys were being proven: they were dropped");
        if let Err(e) = self
            .audit(DAEMON, "unseal_dropped_by_seal", json!({}))
            .await
        {
            return e;
        }
        DaemonError::SealedMeanwhile
    }

    /// A follower of a cluster takes the plan of the stored rotation before
    /// it hands a keyring out: its own poll of the rotation lags the
    /// leader's step by up to a second, and a database must not get the
    /// keyring writing the old version once the leader switched (its fetch
    /// counts as the acknowledgement of the new one). The leader's plan is
    /// already the stored one; with the store unreachable the keyring in
    /// memory is served (the fetch is refused anyway when it cannot be
    /// recorded). A follower that does not hold every version of the stored
    /// plan (it could not take a new version's key from a peer yet) refuses
    /// as a sealed node does, so a hook tries another node: the keyring it
    /// holds would lack a version records may be at.
    async fn follow_stored_plan(&self) -> Result<(), DaemonError> {
        if self.config().cluster.is_none() || self.leads() || self.vault.is_sealed() {
            return Ok(());
        }
        let stored = match self.store.load_rotation().await.map_err(DaemonError::from) {
            Ok(text) => parse_rotation(text),
            Err(e) => Err(e),
        };
        let plan = match stored {
            Ok(Some(rotation)) => KeyringPlan {
                live: rotation.live_versions().into_iter().collect(),
                write: rotation.write_version(),
            },
            Ok(None) => return Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "cluster: the stored rotation could not be read before a keyring fetch; serving the keyring in memory");
                return Ok(());
            }
        };
        if let Err(e) = self.set_plan(plan.clone()).await {
            tracing::warn!(error = %e, "cluster: the stored rotation's keyring plan could not be applied before a keyring fetch");
        }
        let Some(keyring) = self.vault.keyring() else {
            return Err(DaemonError::Sealed);
        };
        let missing: Vec<KeyVersion> = plan
            .live
            .iter()
            .copied()
            .filter(|v| !keyring.contains(*v))
            .collect();
        if !missing.is_empty() || keyring.write_version() != plan.write {
            let versions = missing
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            tracing::warn!(
                missing = %versions,
                write_version = %plan.write,
                "cluster: keyring fetch refused: this node does not hold every version the rotation needs (it takes them from a peer, or keyholders unseal it with their shares)"
            );
            return Err(DaemonError::VersionsNotHeld { versions });
        }
        Ok(())
    }

    /// Holds proven keys of versions this unsealed daemon lacked (taken
    /// from a peer of the cluster) and republishes the keyring when the
    /// plan makes them live.
    pub(crate) fn hold_proven(
        &self,
        keys: BTreeMap<KeyVersion, crypto_core::Key>,
    ) -> Result<(), DaemonError> {
        for (version, key) in keys {
            self.vault.hold_pending(version, key);
        }
        if let Some(plan) = self.plan()
            && let Some(keyring) = self.vault.republish(&plan)?
        {
            self.metrics.set_loaded(keyring.versions().count());
            self.log_keyring(&keyring);
        }
        Ok(())
    }

    /// Logs the loaded keyring after processing: versions in order, the
    /// write version, KCV prefixes.
    fn log_keyring(&self, keyring: &crypto_core::Keyring) {
        let versions: Vec<String> = keyring
            .versions()
            .map(|v| {
                format!(
                    "{v}(kcv {})",
                    keyring.kcv(v).map(|k| k.prefix()).unwrap_or_default()
                )
            })
            .collect();
        tracing::info!(
            keyring = %keyring.id(),
            versions = %versions.join(", "),
            write_version = %keyring.write_version(),
            "keyring loaded"
        );
        let locks = crypto_core::memory_lock_report();
        if locks.refused > 0 {
            tracing::warn!(
                refused = locks.refused,
                locked_pages = locks.locked_pages,
                "the system refused to lock some key pages in RAM; they may be swapped out (raise LimitMEMLOCK or use encrypted swap)"
            );
        }
    }

    /// Drops partial unseal progress: an operator's call clears everyone's,
    /// a keyholder's withdraws only the shares that keyholder submitted.
    pub async fn reset_unseal(&self, principal: &Principal) -> Result<UnsealResponse, DaemonError> {
        self.reset_unseal_via(principal, None).await
    }

    /// Drops what `principal`'s `DELETE /v1/unseal` on another node of the
    /// cluster (`relayed_by`) dropped there: the same rule, whichever node
    /// the shares came from, audited as relayed.
    pub async fn reset_unseal_relayed(
        &self,
        principal: &Principal,
        relayed_by: &str,
    ) -> Result<UnsealResponse, DaemonError> {
        self.reset_unseal_via(principal, Some(relayed_by)).await
    }

    async fn reset_unseal_via(
        &self,
        principal: &Principal,
        relayed_by: Option<&str>,
    ) -> Result<UnsealResponse, DaemonError> {
        let everyone = principal.has(Role::Operator);
        let (cleared, progress) = {
            let mut machine = self.lock_seal();
            let cleared = if everyone {
                machine.reset()
            } else {
                machine.withdraw(&principal.name)
            };
            (cleared, machine.progress())
        };
        let versions: Vec<u32> = cleared.iter().map(|v| v.number()).collect();
        let mut detail = json!({ "versions": versions });
        if let Some(node) = relayed_by {
            detail["relayed_by"] = json!(node);
            detail["node"] = json!(self.config().cluster.as_ref().map(|c| c.node.clone()));
        }
        let action = if everyone {
            "unseal_progress_reset"
        } else {
            "unseal_shares_withdrawn"
        };
        self.audit(&principal.name, action, detail).await?;
        tracing::info!(by = %principal.name, everyone, ?versions, relayed_by, "unseal progress cleared");
        let sealed = self.vault.is_sealed();
        Ok(UnsealResponse {
            sealed,
            outcomes: Vec::new(),
            progress: if sealed { progress } else { Vec::new() },
            loaded: self.vault.held_versions(),
        })
    }

    /// Drops every key, and then audits it: when the entry cannot be
    /// written, the status says why in `unaudited` (the keys are gone all the
    /// same; a seal is never refused).
    pub async fn seal(&self, actor: &str) -> Status {
        let was_sealed = self.vault.is_sealed();
        // First the news (a running worker aborts on it, so a worker started
        // by a quick re-unseal is never the one stopped), then the keys go.
        self.seal_state.send_modify(|s| {
            s.sealed = true;
            s.epoch += 1;
        });
        self.vault.seal();
        self.lock_seal().reset();
        self.metrics.set_loaded(0);
        if !was_sealed {
            tracing::info!(by = actor, "sealed: every key dropped");
        }
        let audited = self
            .audit(actor, "sealed", json!({"was_sealed": was_sealed}))
            .await;
        let mut status = self.status();
        if let Err(e) = audited {
            // The keys are gone all the same: a seal is never refused, and
            // the answer says what the audit log is missing.
            tracing::error!(error = %e, by = actor, "sealed, but the seal could not be audited");
            status.unaudited = Some(e.to_string());
        }
        status
    }

    /// The status document, from memory: it never waits on the store.
    pub fn status(&self) -> Status {
        let versions = self.known_versions();
        let keyring = self.vault.keyring();
        let held = self.vault.held_versions();
        let progress = {
            let mut machine = self.lock_seal();
            machine.expire(Instant::now());
            machine.progress()
        };
        let config = self.config();
        let limits = config.usage;
        Status {
            keyring: config.keyring.clone(),
            sealed: keyring.is_none(),
            versions: versions
                .iter()
                .map(|v| {
                    let encryptions = keyring
                        .as_ref()
                        .and_then(|k| k.encryptions(v.version))
                        .unwrap_or(v.encryptions)
                        .max(v.encryptions);
                    let usage = limits.level_in(v.state, encryptions);
                    VersionStatus {
                        version: v.version,
                        state: v.state,
                        kcv: v.kcv.to_hex(),
                        encryptions,
                        loaded: held.contains(&v.version),
                        usage,
                        usage_message: limits.message(v.version, encryptions, usage),
                    }
                })
                .collect(),
            write_version: keyring.as_ref().map(|k| k.write_version()),
            unseal_progress: if keyring.is_none() {
                progress
            } else {
                Vec::new()
            },
            // The API adds the rotation's part (the daemon does not know
            // the rotation).
            rotation: None,
            certificates: self.metrics.certificates(),
            cluster: self.cluster_status.borrow().clone(),
            unaudited: None,
        }
    }

    /// The hand-over for a database principal; records the encryption
    /// counts its process reported with the fetch (`report`), then the fetch
    /// as its acknowledgement of every version in it. A version past its
    /// usage limit is handed over all the same: refusing would stop the
    /// database.
    pub async fn keyring_for(
        &self,
        principal: &Principal,
        report: Option<KeyringRequest>,
    ) -> Result<HookHandover, DaemonError> {
        self.follow_stored_plan().await?;
        let keyring = self.vault.keyring().ok_or(DaemonError::Sealed)?;
        let mut reported = None;
        if let Some(request) = report {
            let known: Vec<KeyVersion> = self.known_versions().iter().map(|r| r.version).collect();
            let report = crate::usage::check(request, &known)?;
            let changes = self
                .store
                .record_usage(&principal.name, &report.process, &report.counts)
                .await?;
            self.counted(&principal.name, &changes).await?;
            reported = Some(json!({
                "process": report.process,
                "encryptions": report.counts.iter().map(|(v, n)| json!({"version": v.number(), "count": n})).collect::<Vec<_>>(),
            }));
        }
        let versions: Vec<KeyVersion> = keyring.versions().collect();
        let now = audit::now_rfc3339();
        // The fetch (the acknowledgement a rotation counts) and its audit
        // entry are one write: neither without the other.
        self.store
            .record_fetch_audited(
                crate::store::FetchRecord {
                    principal: principal.name.clone(),
                    versions: versions.clone(),
                    time: now,
                },
                audit::draft(
                    &principal.name,
                    "keyring_fetched",
                    json!({
                        "versions": versions.iter().map(|v| v.number()).collect::<Vec<_>>(),
                        "write_version": keyring.write_version().number(),
                        "reported": reported,
                    }),
                ),
            )
            .await?;
        self.metrics.keyring_fetches.inc();
        tracing::info!(principal = %principal.name, write_version = %keyring.write_version(), "keyring handed over");
        // The rotation records the fetch as an acknowledgement before the
        // keyring is handed over, so a `switch` right after sees it.
        let (recorded, done) = tokio::sync::oneshot::channel();
        let fetched = Fetched {
            consumer: principal.name.clone(),
            versions: versions.clone(),
            write_version: keyring.write_version(),
            recorded,
        };
        let listened = self
            .fetched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none();
        if listened
            && self.fetches.send(fetched).is_ok()
            && tokio::time::timeout(ACKNOWLEDGEMENT_WAIT, done)
                .await
                .is_err()
        {
            tracing::info!(
                principal = %principal.name,
                "the rotation is busy with a step: keyring handed over before it recorded the fetch (it will)"
            );
        }
        Ok(keyring.to_handover())
    }

    /// At most `limit` audit entries after `since`, and whether more follow.
    pub async fn audit_page(&self, since: u64, limit: u32) -> Result<AuditLog, DaemonError> {
        let mut entries = self
            .store
            .audit_page(since, limit.saturating_add(1))
            .await?;
        let more = entries.len() > limit as usize;
        entries.truncate(limit as usize);
        Ok(AuditLog {
            next_since: entries.last().map_or(since, |e| e.seq),
            more,
            entries,
        })
    }

    /// Appends an audit entry.
    pub async fn audit(
        &self,
        actor: &str,
        action: &str,
        detail: serde_json::Value,
    ) -> Result<(), DaemonError> {
        self.store
            .append_audit(audit::draft(actor, action, detail))
            .await?;
        Ok(())
    }
}
