//! The rotation driver: the [`Rotation`] machine plus the I/O around it.
//!
//! Owns the order of every rotation step: check the machine allows it, do
//! the I/O it depends on (deal the new key, prove keys on sample records,
//! scan the targets), then persist the new machine state together with its
//! audit entry and version states in one store transaction, and only then
//! republish the keyring. A failed step leaves the last good state.
//!
//! It runs the re-encryption worker for the machine's current [`Job`] and
//! resumes it after a restart once the daemon is unsealed. It never holds a
//! key beyond what the vault holds: the worker gets the vault's keyring, and
//! sealing aborts it.

mod destructive;
mod shares;
mod status;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use crypto_core::{Key, KeyVersion, Share};
use keyholder_api::{RotationState, RotationStatus, ThrottleRequest, VersionState};
use keyholder_reencrypt::{ControlHandle, Progress, Throttle};
use serde_json::json;
use tokio::sync::watch;

use super::worker;
use super::{Job, Rotation, TransitionError, VerifyQuorum};
use crate::audit;
use crate::daemon::{Daemon, DaemonError};
use crate::principal::Principal;
use crate::store::{StoreError, Transition};
use crate::vault::KeyringPlan;

/// Why a rotation step was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    /// The machine does not allow the step now.
    #[error(transparent)]
    Transition(#[from] TransitionError),
    /// The daemon failed (sealed, store, verification).
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    /// The state store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Something the operator can fix: a missing key, a share to resubmit.
    #[error("{0}")]
    Refused(String),
    /// A data store or the worker failed.
    #[error("{0}")]
    Worker(String),
    /// Records still need the version to retire; says where.
    #[error(
        "{version} still encrypts {remaining} record(s) ({}); it cannot be retired until a full scan finds none (`keyholder rotate resume` scans and moves them again)",
        .targets.iter().map(|(t, n)| format!("target {t}: {n}")).collect::<Vec<_>>().join(", ")
    )]
    RecordsRemain {
        /// The version.
        version: KeyVersion,
        /// Records at it in all targets.
        remaining: u64,
        /// The targets holding some, with their counts.
        targets: Vec<(String, u64)>,
    },
}

impl From<crate::init::InitError> for RotationError {
    fn from(e: crate::init::InitError) -> Self {
        Self::Refused(e.to_string())
    }
}

struct Running {
    control: ControlHandle,
    task: tokio::task::JoinHandle<()>,
}

/// The daemon's rotation: one per daemon.
pub struct Rotator {
    daemon: Arc<Daemon>,
    /// Serialises every step; held across the step's I/O.
    machine: tokio::sync::Mutex<Rotation>,
    /// A copy for readers that must not wait on a step (status).
    snapshot: RwLock<Rotation>,
    throttle: Mutex<Throttle>,
    running: Mutex<Option<Running>>,
    progress: Mutex<BTreeMap<String, watch::Receiver<Progress>>>,
    last_error: Mutex<Option<String>>,
    /// The running worker's retries of transient database failures.
    retries: Mutex<worker::Retries>,
    /// Verified new shares, kept (in memory only) to rebuild the new key when
    /// the daemon restarted after `prepare` and lost it.
    new_shares: Mutex<BTreeMap<u8, Share>>,
}

/// One persisted step: who, what, and what changes with it.
struct Step<'a> {
    actor: &'a str,
    action: &'static str,
    detail: serde_json::Value,
    version_states: Vec<(KeyVersion, VersionState)>,
    new_version: Option<crate::store::NewVersion>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn plan_of(rotation: &Rotation) -> KeyringPlan {
    KeyringPlan {
        live: rotation.live_versions().into_iter().collect(),
        write: rotation.write_version(),
    }
}

impl Rotator {
    /// Loads the persisted rotation (or starts one at the single active
    /// version), gives the daemon its keyring plan and hooks itself in.
    pub async fn start(daemon: Arc<Daemon>) -> Result<Arc<Self>, RotationError> {
        let rotation = match daemon.store.load_rotation().await? {
            Some(text) => {
                serde_json::from_str::<Rotation>(&text).map_err(|e| StoreError::Corrupt {
                    what: format!("rotation state ({e})"),
                })?
            }
            None => match daemon.plan() {
                Some(plan) => Rotation::idle(plan.write),
                // Not initialised: nothing to rotate; `prepare` will say so.
                None => Rotation::idle(KeyVersion::new(1).expect("1 is a version")),
            },
        };
        if daemon.plan().is_some() || daemon.store.load_rotation().await?.is_some() {
            daemon.set_plan(plan_of(&rotation)).await?;
        }
        let throttle = daemon.config.reencrypt.throttle();
        let rotator = Arc::new(Self {
            daemon: Arc::clone(&daemon),
            snapshot: RwLock::new(rotation.clone()),
            machine: tokio::sync::Mutex::new(rotation.clone()),
            throttle: Mutex::new(throttle),
            running: Mutex::new(None),
            progress: Mutex::new(BTreeMap::new()),
            last_error: Mutex::new(None),
            retries: Mutex::new(worker::Retries::default()),
            new_shares: Mutex::new(BTreeMap::new()),
        });
        let hooks: Arc<dyn crate::daemon::RotationHooks> = rotator.clone();
        daemon.set_rotation_hooks(Arc::downgrade(&hooks));
        tracing::info!(state = %rotation.state(), current = %rotation.current(), next = ?rotation.next().map(|v| v.to_string()), "rotation state loaded");
        Ok(rotator)
    }

    /// The rotation as the machine has it now.
    pub fn rotation(&self) -> Rotation {
        self.snapshot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Persists `next` with its audit entry and version states, then
    /// publishes it (snapshot, keyring plan).
    async fn commit(
        &self,
        machine: &mut Rotation,
        next: Rotation,
        step: Step<'_>,
    ) -> Result<(), RotationError> {
        let Step {
            actor,
            action,
            detail,
            version_states,
            new_version,
        } = step;
        let json = serde_json::to_string(&next).expect("the rotation serialises");
        let mut transition = Transition::audit_only(audit::draft(actor, action, detail));
        transition.rotation = Some(json);
        transition.version_states = version_states;
        transition.new_version = new_version;
        self.daemon.store.apply(transition).await?;
        tracing::info!(
            actor,
            action,
            state = %next.state(),
            current = %next.current(),
            write_version = %next.write_version(),
            "rotation transition"
        );
        *machine = next.clone();
        *self.snapshot.write().unwrap_or_else(|p| p.into_inner()) = next.clone();
        if self.daemon.plan().is_some() {
            self.daemon.set_plan(plan_of(&next)).await?;
        }
        Ok(())
    }

    /// Who may verify a new share, and how many must before `retire`.
    fn quorum(&self) -> VerifyQuorum {
        VerifyQuorum {
            min_verified: usize::from(self.daemon.config.rotation.min_verified),
            keyholders: self
                .daemon
                .config
                .keyholders()
                .map(|p| p.name.clone())
                .collect(),
        }
    }

    fn require_unsealed(&self) -> Result<(), RotationError> {
        if self.daemon.vault.is_sealed() {
            return Err(DaemonError::Sealed.into());
        }
        Ok(())
    }

    /// `rotate prepare`: make, split and deal the new key.
    pub async fn prepare(
        &self,
        operator: &Principal,
        requested: Option<KeyVersion>,
    ) -> Result<RotationStatus, RotationError> {
        self.require_unsealed()?;
        let mut machine = self.machine.lock().await;
        let known = self.daemon.store.versions().await?;
        let highest = known.iter().map(|r| r.version).max();
        // The default is the highest version ever made + 1, not the live
        // one + 1: a rolled-back version's number is taken for good.
        let requested = requested.or_else(|| highest.and_then(|h| h.next().ok()));
        let mut next = machine.clone();
        let version = next.prepare(requested)?;
        if let Some(highest) = highest
            && version <= highest
        {
            return Err(RotationError::Refused(format!(
                "{version} was made before (the highest version ever made is {highest}); a version number is never reused, prepare {} or above",
                highest.next().map(|v| v.to_string()).unwrap_or_default()
            )));
        }
        let config = Arc::clone(&self.daemon.config);
        let (key, new_version) = tokio::task::spawn_blocking(move || {
            crate::init::make_version(&config, version, VersionState::Prepared)
        })
        .await
        .map_err(|e| RotationError::Worker(format!("key generation task failed: {e}")))??;
        let dealt: Vec<_> = new_version
            .envelopes
            .iter()
            .map(|e| json!({"index": e.index, "principal": e.principal}))
            .collect();
        let step = Step {
            actor: &operator.name,
            action: "rotation_prepared",
            detail: json!({
                "version": version.number(),
                "kcv_prefix": new_version.record.kcv.prefix(),
                "shares": dealt,
            }),
            version_states: Vec::new(),
            new_version: Some(new_version),
        };
        self.commit(&mut machine, next, step).await?;
        self.daemon.vault.hold_pending(version, key);
        lock(&self.new_shares).clear();
        // A throttle set during an earlier (perhaps rolled-back) rotation was
        // for that job's load; each rotation starts at the configured one.
        *lock(&self.throttle) = self.daemon.config.reencrypt.throttle();
        Ok(self.status_of(&machine))
    }

    /// `rotate activate`: SharesVerified -> DualRead (consumers get both keys).
    pub async fn activate(&self, operator: &Principal) -> Result<RotationStatus, RotationError> {
        self.require_unsealed()?;
        let mut machine = self.machine.lock().await;
        let mut next = machine.clone();
        next.activate()?;
        let version = next.next().expect("dual read has a next version");
        if self.daemon.vault.key(version).is_none() {
            return Err(RotationError::Refused(format!(
                "{version}'s key is not held (the daemon restarted since prepare); its keyholders must run `keyholder share verify` again"
            )));
        }
        let detail = json!({"versions": next.live_versions().iter().map(|v| v.number()).collect::<Vec<_>>(), "write_version": next.write_version().number(), "new": version.number()});
        let step = Step {
            actor: &operator.name,
            action: "rotation_activated",
            detail,
            version_states: vec![(version, VersionState::Active)],
            new_version: None,
        };
        self.commit(&mut machine, next, step).await?;
        // The new key is live now; the shares that proved it are not needed.
        lock(&self.new_shares).clear();
        Ok(self.status_of(&machine))
    }

    /// A consumer fetched the keyring: its acknowledgement of both versions
    /// in DualRead, or proof that it writes the job's version while a job
    /// runs. Other fetches change nothing.
    pub async fn acknowledge(&self, consumer: &str) -> Result<(), RotationError> {
        let mut machine = self.machine.lock().await;
        let consumers = &self.daemon.config.reencrypt.consumers;
        if !machine.waiting_for(consumers).iter().any(|c| c == consumer) {
            return Ok(());
        }
        let mut next = machine.clone();
        next.acknowledge(consumer);
        let detail = json!({"version": next.next().map(|v| v.number())});
        self.commit(
            &mut machine,
            next,
            Step {
                actor: consumer,
                action: "rotation_consumer_acknowledged",
                detail,
                version_states: Vec::new(),
                new_version: None,
            },
        )
        .await
    }

    /// `rotate switch`: prove both keys on sample records, then write the new
    /// version and start re-encrypting.
    pub async fn switch(
        self: &Arc<Self>,
        operator: &Principal,
    ) -> Result<RotationStatus, RotationError> {
        self.require_unsealed()?;
        let mut machine = self.machine.lock().await;
        let consumers = self.daemon.config.reencrypt.consumers.clone();
        machine.check_switch(&consumers)?;
        let mut keys = BTreeMap::new();
        for version in machine.live_versions() {
            let key: Key = self.daemon.vault.key(version).ok_or_else(|| {
                RotationError::Refused(format!("{version}'s key is not held; unseal first"))
            })?;
            keys.insert(version, key);
        }
        let report = self.daemon.verify_keys(keys).await?;
        let mut next = machine.clone();
        next.switch(&consumers)?;
        let job = next.job().expect("reencrypting has a job");
        worker::reset_checkpoints(&self.daemon, job).await?;
        let sampled: Vec<_> = report
            .iter()
            .map(|(v, n)| json!({"version": v.number(), "records": n}))
            .collect();
        let step = Step {
            actor: &operator.name,
            action: "rotation_switched",
            detail: json!({
                "write_version": job.to.number(),
                "from": job.from.number(),
                "sampled": sampled,
            }),
            version_states: Vec::new(),
            new_version: None,
        };
        self.commit(&mut machine, next, step).await?;
        drop(machine);
        self.start_worker();
        Ok(self.status())
    }

    /// `rotate pause` / `rotate resume`.
    pub async fn set_paused(
        self: &Arc<Self>,
        operator: &Principal,
        paused: bool,
    ) -> Result<RotationStatus, RotationError> {
        let mut machine = self.machine.lock().await;
        let mut next = machine.clone();
        let rescan = machine.state() == RotationState::Drained;
        next.set_paused(paused)?;
        if rescan && let Some(job) = next.job() {
            // A record written late at the old version: scan again.
            worker::rescan_checkpoints(&self.daemon, job).await?;
        }
        let step = Step {
            actor: &operator.name,
            action: if paused {
                "rotation_paused"
            } else {
                "rotation_resumed"
            },
            detail: json!({}),
            version_states: Vec::new(),
            new_version: None,
        };
        self.commit(&mut machine, next, step).await?;
        drop(machine);
        if let Some(running) = lock(&self.running).as_ref() {
            if paused {
                running.control.pause();
            } else {
                running.control.resume();
            }
        }
        if !paused {
            *lock(&self.last_error) = None;
            self.start_worker();
        }
        Ok(self.status())
    }

    /// `rotate throttle`: changes apply from the worker's next batch.
    pub async fn throttle(
        &self,
        operator: &Principal,
        request: &ThrottleRequest,
    ) -> Result<RotationStatus, RotationError> {
        let mut throttle = lock(&self.throttle).clone();
        if let Some(rate) = request.rows_per_sec {
            throttle.rows_per_sec = rate;
        }
        if let Some(size) = request.batch_size {
            throttle.batch_size = size;
        }
        throttle
            .validate()
            .map_err(|e| RotationError::Refused(e.to_string()))?;
        if let Some(running) = lock(&self.running).as_ref() {
            running
                .control
                .set_throttle(throttle.clone())
                .map_err(|e| RotationError::Refused(e.to_string()))?;
        }
        *lock(&self.throttle) = throttle.clone();
        self.daemon
            .audit(
                &operator.name,
                "rotation_throttled",
                json!({"rows_per_sec": throttle.rows_per_sec, "batch_size": throttle.batch_size}),
            )
            .await?;
        Ok(self.status())
    }

    /// The worker finished a full scan with nothing left at `job.from`.
    pub(super) async fn job_drained(&self, job: Job) -> Result<(), RotationError> {
        let mut machine = self.machine.lock().await;
        if machine.job() != Some(job) {
            return Ok(());
        }
        let mut next = machine.clone();
        next.drained(&self.daemon.config.reencrypt.consumers)?;
        let rolled_back = next.state() == RotationState::Idle;
        let states = if rolled_back {
            vec![(job.from, VersionState::Retired)]
        } else {
            Vec::new()
        };
        let step = Step {
            actor: audit::DAEMON,
            action: if rolled_back {
                "rollback_drained"
            } else {
                "rotation_drained"
            },
            detail: json!({"from": job.from.number(), "to": job.to.number()}),
            version_states: states,
            new_version: None,
        };
        self.commit(&mut machine, next, step).await?;
        if rolled_back {
            self.daemon.vault.forget(job.from);
        }
        Ok(())
    }

    /// Starts the worker for the machine's job, unless one runs, the job is
    /// paused or the daemon is sealed.
    pub fn start_worker(self: &Arc<Self>) {
        let rotation = self.rotation();
        let Some(job) = rotation.job() else { return };
        if self.daemon.vault.is_sealed() {
            return;
        }
        let mut running = lock(&self.running);
        if running.as_ref().is_some_and(|r| !r.task.is_finished()) {
            return;
        }
        let throttle = lock(&self.throttle).clone();
        let control = ControlHandle::new(throttle).expect("the throttle was validated");
        if rotation.paused() {
            control.pause();
        }
        let task = tokio::spawn(worker::run(Arc::clone(self), job, control.clone()));
        *running = Some(Running { control, task });
    }

    /// Stops the worker after its batch in flight; its checkpoint stays.
    pub async fn stop_worker(&self) {
        let running = lock(&self.running).take();
        if let Some(running) = running {
            running.control.abort();
            let _ = running.task.await;
        }
    }

    pub(super) fn set_progress(&self, target: &str, progress: watch::Receiver<Progress>) {
        lock(&self.progress).insert(target.to_owned(), progress);
    }

    pub(super) fn set_error(&self, error: Option<String>) {
        *lock(&self.last_error) = error;
    }

    pub(super) fn set_retries(&self, retries: worker::Retries) {
        *lock(&self.retries) = retries;
    }

    /// Counts one transient failure and marks the worker waiting; returns
    /// the count.
    pub(super) fn note_retry(&self, error: String) -> u64 {
        let mut retries = lock(&self.retries);
        retries.count += 1;
        retries.last = Some(error);
        retries.waiting = true;
        retries.count
    }

    pub(super) fn set_retrying(&self, waiting: bool) {
        lock(&self.retries).waiting = waiting;
    }

    pub(super) fn daemon(&self) -> &Arc<Daemon> {
        &self.daemon
    }
}

impl crate::daemon::RotationHooks for Rotator {
    fn status(&self) -> Option<RotationStatus> {
        Some(Rotator::status(self))
    }

    fn keyring_fetched<'a>(&'a self, consumer: &'a str) -> futures::future::BoxFuture<'a, ()> {
        Box::pin(async move {
            if let Err(e) = self.acknowledge(consumer).await {
                tracing::error!(consumer, error = %e, "recording a consumer's acknowledgement failed");
            }
        })
    }

    fn unsealed(self: Arc<Self>) {
        self.start_worker();
    }

    fn sealed(self: Arc<Self>) {
        // Verified new shares could rebuild the new key: they go with the keys.
        lock(&self.new_shares).clear();
        // Abort now, before the vault drops its keys, so a worker started by
        // a quick re-unseal is never the one stopped; wait for it elsewhere.
        let running = lock(&self.running).take();
        if let Some(running) = running {
            running.control.abort();
            tokio::spawn(async move {
                let _ = running.task.await;
            });
        }
    }
}
