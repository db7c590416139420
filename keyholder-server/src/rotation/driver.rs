//! The rotation orchestrator: one task that owns the [`Rotation`] machine
//! and does the I/O around it.
//!
//! Handlers send it [`Command`]s over a channel (through a
//! [`RotationHandle`]) and read its state from a `watch` ([`View`]); the
//! daemon tells it of keyring fetches over a channel and of seal and unseal
//! through its seal `watch`; the re-encryption worker reports progress,
//! retries, failures and drains as [`WorkerEvent`]s. Nothing calls back into
//! it and it polls nothing. One message at a time: a step is never
//! interleaved with another.
//!
//! Owns the order of every rotation step: check the machine allows it, do
//! the I/O it depends on (deal the new key, prove keys on sample records,
//! scan the targets), then persist the new machine state together with its
//! audit entry and version states in one store transaction, and only then
//! republish the keyring and the view. A failed step leaves the last good
//! state.
//!
//! It runs the re-encryption worker for the machine's current [`Job`] and
//! resumes it after a restart once the daemon is unsealed. It never holds a
//! key beyond what the vault holds: the worker gets the vault's keyring, and
//! sealing aborts it (the worker watches the seal itself, so a step in
//! progress here never delays that).

mod commands;
mod destructive;
mod shares;
mod status;

use std::collections::BTreeMap;
use std::sync::Arc;

use crypto_core::{Key, KeyVersion, Share};
use keyholder_api::{RotationState, RotationStatus, ThrottleRequest, VersionState};
use keyholder_reencrypt::{ControlHandle, Progress, Throttle};
use serde_json::json;
use tokio::sync::{mpsc, watch};

pub(crate) use commands::Command;
pub use commands::RotationHandle;
pub(crate) use status::View;
use status::{Resting, shown_job};

use super::worker::{self, WorkerEvent};
use super::{Job, Rotation, TransitionError, VerifyQuorum};
use crate::audit;
use crate::daemon::{Daemon, DaemonError, Fetched, SealState};
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
    /// `prepare` named a version number that was used before.
    #[error(
        "{version} was made before (the highest version ever made is {highest}); a version number is never reused, prepare {} or above",
        .highest.next().map(|v| v.to_string()).unwrap_or_default()
    )]
    VersionReused {
        /// The version asked for.
        version: KeyVersion,
        /// The highest version ever made.
        highest: KeyVersion,
    },
    /// A key the step needs is not in memory.
    #[error("{version}'s key is not held{}", if *.after_restart {
        " (the daemon restarted since prepare); its keyholders must run `keyholder share verify` again"
    } else {
        "; unseal first"
    })]
    KeyNotHeld {
        /// The version.
        version: KeyVersion,
        /// The new version's key, lost by a restart since `prepare`.
        after_restart: bool,
    },
    /// `share fetch` of a retired version.
    #[error(
        "{version} is retired; its shares are no longer handed out (`keyholder status` shows the live versions)"
    )]
    ShareRetired {
        /// The version.
        version: KeyVersion,
    },
    /// `share fetch` by a principal who was dealt no share of the version.
    #[error(
        "no share of {version} was dealt to {keyholder}; check the version (`keyholder status`)"
    )]
    NoShareDealt {
        /// The version.
        version: KeyVersion,
        /// The caller.
        keyholder: String,
    },
    /// Verified new shares did not rebuild the new key.
    #[error("rebuilding {version}: {source}")]
    Rebuild {
        /// The version.
        version: KeyVersion,
        /// crypto-core's reason (never share data).
        source: crypto_core::Error,
    },
    /// A throttle value out of range.
    #[error(transparent)]
    Throttle(keyholder_reencrypt::Error),
    /// Making the new version failed.
    #[error(transparent)]
    Init(#[from] crate::init::InitError),
    /// A data store or the worker failed.
    #[error("{0}")]
    Worker(String),
    /// A cluster node that does not lead was asked for a leader-only step.
    #[error("{}", match .leader {
        Some((name, addr)) => format!("this node is not the cluster's leader; {name} at {addr} leads: send the request there (the keyholder CLI does so by itself)"),
        None => "this node is not the cluster's leader and no leader is known now (a lease is being taken over); try again in a few seconds".to_owned(),
    })]
    NotLeader {
        /// The leader's node name and API address, when one is known.
        leader: Option<(String, String)>,
    },
    /// Targets (or columns of targets) a pass of the rotation was started
    /// on are no longer configured: no scan can show they hold no record
    /// at `version`, so it is not dropped.
    #[error(
        "{version} {}: {} {} part of this rotation and {} no longer in the config, so no scan can show {} no record at {version}; put {} back in [[targets]] and restart keyholderd (if its data is gone for good, an empty table or column of that name will do)",
        if *.retiring { "cannot be retired" } else { "cannot be called drained" },
        .places.join(", "),
        if .places.len() == 1 { "was" } else { "were" },
        if .places.len() == 1 { "is" } else { "are" },
        if .places.len() == 1 { "it holds" } else { "they hold" },
        if .places.len() == 1 { "it" } else { "them" },
    )]
    TargetsGone {
        /// The version records may still need.
        version: KeyVersion,
        /// Refused at `retire` (else the worker's drain check).
        retiring: bool,
        /// What is gone: `target NAME` or `column C of target NAME`.
        places: Vec<String>,
    },
    /// The orchestrator is gone (the daemon is shutting down).
    #[error("the rotation has stopped: keyholderd is shutting down")]
    Stopped,
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

struct Running {
    control: ControlHandle,
    task: tokio::task::JoinHandle<()>,
}

/// The daemon's rotation: one per daemon, owned by its orchestrator task.
pub struct Rotator {
    daemon: Arc<Daemon>,
    /// The machine; only this task changes it.
    machine: Rotation,
    throttle: Throttle,
    running: Option<Running>,
    progress: BTreeMap<String, watch::Receiver<Progress>>,
    last_error: Option<String>,
    /// The running worker's retries of transient database failures.
    retries: worker::Retries,
    /// Verified new shares, kept (in memory only) to rebuild the new key when
    /// the daemon restarted after `prepare` and lost it.
    new_shares: BTreeMap<u8, Share>,
    /// What readers see; republished after every message.
    view: watch::Sender<View>,
    /// Where workers report.
    events: mpsc::UnboundedSender<WorkerEvent>,
    /// The seal epoch this task last acted on.
    seal_epoch: u64,
}

/// What an operator changed at run time and a restart keeps: the
/// throttle's rate and batch size (the `runtime_settings` record, written
/// with every transition and every `rotate throttle`). The pause is the
/// machine's own. `rotate prepare` starts each rotation at the configured
/// throttle again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RuntimeSettings {
    rows_per_sec: u64,
    batch_size: u32,
}

impl RuntimeSettings {
    fn of(throttle: &Throttle) -> Self {
        Self {
            rows_per_sec: throttle.rows_per_sec,
            batch_size: throttle.batch_size,
        }
    }

    fn json(self) -> String {
        serde_json::to_string(&self).expect("the settings serialise")
    }

    /// The configured throttle with the stored settings over it.
    async fn restore(daemon: &Daemon) -> Result<Throttle, RotationError> {
        let mut throttle = daemon.config().reencrypt.throttle();
        let Some(text) = daemon.store().runtime_settings().await? else {
            return Ok(throttle);
        };
        let corrupt = |what: String| StoreError::Corrupt {
            what: format!("runtime settings ({what})"),
        };
        let settings: Self = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
        throttle.rows_per_sec = settings.rows_per_sec;
        throttle.batch_size = settings.batch_size;
        throttle.validate().map_err(|e| corrupt(e.to_string()))?;
        Ok(throttle)
    }
}

/// One persisted step: who, what, and what changes with it.
struct Step<'a> {
    actor: &'a str,
    action: &'static str,
    detail: serde_json::Value,
    version_states: Vec<(KeyVersion, VersionState)>,
    new_version: Option<crate::store::NewVersion>,
}

/// The stored checkpoints' totals of the job status shows.
async fn resting_of(
    daemon: &Daemon,
    rotation: &Rotation,
) -> Result<BTreeMap<String, Resting>, RotationError> {
    let Some(job) = shown_job(rotation) else {
        return Ok(BTreeMap::new());
    };
    Ok(worker::checkpoint_totals(daemon, job)
        .await?
        .into_iter()
        .map(|(target, (records_done, conflicts))| {
            let resting = Resting {
                job,
                records_done,
                conflicts,
            };
            (target, resting)
        })
        .collect())
}

/// How often a cluster node re-reads the stored rotation: a follower for
/// its view and keyring plan, the leader for the acknowledgements of
/// consumers that fetched from the other nodes.
const CLUSTER_POLL: std::time::Duration = std::time::Duration::from_secs(1);

fn plan_of(rotation: &Rotation) -> KeyringPlan {
    KeyringPlan {
        live: rotation.live_versions().into_iter().collect(),
        write: rotation.write_version(),
    }
}

impl Rotator {
    /// Loads the persisted rotation (or starts one at the single active
    /// version), gives the daemon its keyring plan, and starts the
    /// orchestrator task; returns the handle handlers use and the task.
    pub async fn start(
        daemon: Arc<Daemon>,
    ) -> Result<(RotationHandle, tokio::task::JoinHandle<()>), RotationError> {
        let stored = daemon.load_rotation().await?;
        let rotation = match &stored {
            Some(rotation) => rotation.clone(),
            None => match daemon.plan() {
                Some(plan) => Rotation::idle(plan.write),
                // Not initialised: nothing to rotate; `prepare` will say so.
                None => Rotation::idle(KeyVersion::new(1).expect("1 is a version")),
            },
        };
        if daemon.plan().is_some() || stored.is_some() {
            daemon.set_plan(plan_of(&rotation)).await?;
        }
        let throttle = RuntimeSettings::restore(&daemon).await?;
        let consumers = daemon.config().reencrypt.consumers.clone();
        let mut view = View::new(rotation.clone(), throttle.clone(), consumers);
        view.resting = resting_of(&daemon, &rotation).await?;
        let (view, view_rx) = watch::channel(view);
        let (events, events_rx) = mpsc::unbounded_channel();
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let fetches = daemon
            .take_fetches()
            .expect("one rotation per daemon takes its keyring fetches");
        let seal = daemon.seal_state();
        tracing::info!(state = %rotation.state(), current = %rotation.current(), next = ?rotation.next().map(|v| v.to_string()), rows_per_sec = throttle.rows_per_sec, batch_size = throttle.batch_size, "rotation state loaded");
        let rotator = Self {
            seal_epoch: seal.borrow().epoch,
            daemon,
            machine: rotation,
            throttle,
            running: None,
            progress: BTreeMap::new(),
            last_error: None,
            retries: worker::Retries::default(),
            new_shares: BTreeMap::new(),
            view,
            events,
        };
        let task = tokio::spawn(rotator.run(commands_rx, events_rx, fetches, seal));
        Ok((RotationHandle::new(commands, view_rx), task))
    }

    /// The orchestrator's loop: one message at a time until `Stop`.
    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut events: mpsc::UnboundedReceiver<WorkerEvent>,
        mut fetches: mpsc::UnboundedReceiver<Fetched>,
        mut seal: watch::Receiver<SealState>,
    ) {
        let mut leadership = self.daemon.leadership();
        let clustered = self.daemon.config().cluster.is_some();
        let mut poll = tokio::time::interval(CLUSTER_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // An unsealed daemon at start (never, today) or one unsealed before
        // this task ran: the worker resumes.
        self.start_worker();
        loop {
            tokio::select! {
                // Commands first: a step the operator asked for is not
                // starved by a busy worker's progress.
                biased;
                command = commands.recv() => match command {
                    Some(Command::Stop { done }) => {
                        self.stop_worker().await;
                        let _ = done.send(());
                        return;
                    }
                    Some(command) => {
                        if self.daemon.leads() {
                            self.handle(command).await;
                        } else {
                            command.refuse(|| RotationError::NotLeader {
                                leader: self.daemon.leader_addr(),
                            });
                        }
                    }
                    None => {
                        self.stop_worker().await;
                        return;
                    }
                },
                Ok(()) = seal.changed() => {
                    let state = *seal.borrow_and_update();
                    self.seal_changed(state);
                }
                Ok(()) = leadership.changed() => {
                    let leads = leadership.borrow_and_update().leads();
                    self.leadership_changed(leads).await;
                }
                _ = poll.tick(), if clustered => self.cluster_poll().await,
                Some(fetch) = fetches.recv() => {
                    // A follower's fetch is in the store: the leader reads
                    // it there.
                    if !self.daemon.leads() {
                        let _ = fetch.recorded.send(());
                        continue;
                    }
                    if self.handed_what_is_needed(&fetch)
                        && let Err(e) = self.acknowledge(&fetch.consumer).await
                    {
                        tracing::error!(consumer = %fetch.consumer, error = %e, "recording a consumer's acknowledgement failed");
                    }
                    let _ = fetch.recorded.send(());
                }
                Some(event) = events.recv() => self.worker_event(event).await,
            }
            self.publish();
        }
    }

    /// What readers see, after every message.
    fn publish(&self) {
        self.view.send_modify(|view| {
            view.rotation.clone_from(&self.machine);
            view.throttle.clone_from(&self.throttle);
            view.last_error.clone_from(&self.last_error);
            view.retries.clone_from(&self.retries);
            view.progress.clone_from(&self.progress);
            view.set_consumers(&self.daemon.config().reencrypt.consumers);
        });
    }

    /// The daemon sealed (a new epoch) or unsealed.
    fn seal_changed(&mut self, state: SealState) {
        if state.epoch != self.seal_epoch {
            self.seal_epoch = state.epoch;
            // Verified new shares could rebuild the new key: they go with
            // the keys. The worker already stopped on the seal itself.
            self.new_shares.clear();
            if let Some(running) = self.running.take() {
                running.control.abort();
                tokio::spawn(async move {
                    let _ = running.task.await;
                });
            }
        }
        if !state.sealed {
            self.start_worker();
        }
    }

    /// This node took or lost the cluster's lease.
    async fn leadership_changed(&mut self, leads: bool) {
        if leads {
            // What the last leader stored is the truth: the rotation, the
            // throttle and the checkpoints, as after a restart.
            match self.reload().await {
                Ok(()) => {
                    tracing::info!(state = %self.machine.state(), "leading: rotation reloaded from the store");
                    self.last_error = None;
                    self.start_worker();
                }
                Err(e) => {
                    tracing::error!(error = %e, "reloading the rotation on taking the lease failed");
                    self.last_error = Some(e.to_string());
                }
            }
        } else if let Some(running) = self.running.take() {
            tracing::warn!("lost the cluster's lease: stopping the re-encryption worker");
            running.control.abort();
            tokio::spawn(async move {
                let _ = running.task.await;
            });
        }
    }

    /// Reads the rotation, the throttle and the checkpoints' totals from
    /// the store (another node may have changed them) and follows its plan.
    async fn reload(&mut self) -> Result<(), RotationError> {
        let Some(stored) = self.daemon.load_rotation().await? else {
            return Ok(());
        };
        let throttle = RuntimeSettings::restore(&self.daemon).await?;
        let resting = resting_of(&self.daemon, &stored).await?;
        if self.machine != stored {
            // A new key proven on another node is not held here.
            self.new_shares.clear();
        }
        self.machine = stored;
        self.throttle = throttle;
        self.view.send_modify(|view| view.resting = resting);
        if self.daemon.plan().is_some() {
            self.daemon.set_plan(plan_of(&self.machine)).await?;
        }
        Ok(())
    }

    /// A cluster node's poll: a follower re-reads the stored rotation; the
    /// leader takes the acknowledgements of fetches other nodes served.
    async fn cluster_poll(&mut self) {
        let result = if self.daemon.leads() {
            self.stored_acknowledgements().await
        } else {
            self.progress.clear();
            self.reload().await
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "cluster poll of the rotation failed");
        }
    }

    /// Acknowledges the consumers whose fetch the store holds: in DualRead
    /// a keyring with the new version, while a job runs one fetched after
    /// the job started (its step's audit time).
    async fn stored_acknowledgements(&mut self) -> Result<(), RotationError> {
        let consumers = self.daemon.config().reencrypt.consumers.clone();
        if self.machine.waiting_for(&consumers).is_empty() {
            return Ok(());
        }
        let store = self.daemon.store();
        let (version, since) = match (self.machine.state(), self.machine.job()) {
            (RotationState::DualRead, _) => match self.machine.next() {
                Some(next) => (next, None),
                None => return Ok(()),
            },
            (RotationState::Reencrypting, Some(job)) => {
                (job.to, store.last_audit_time("rotation_switched").await?)
            }
            (RotationState::RollingBack, Some(job)) => {
                (job.to, store.last_audit_time("rotation_rolled_back").await?)
            }
            _ => return Ok(()),
        };
        let fetched = store.fetches_of(version).await?;
        for consumer in self.machine.waiting_for(&consumers) {
            let counts = fetched.iter().any(|(principal, last)| {
                principal == &consumer && since.as_deref().is_none_or(|s| last.as_str() > s)
            });
            if counts {
                self.acknowledge(&consumer).await?;
            }
        }
        Ok(())
    }

    /// A worker's report.
    async fn worker_event(&mut self, event: WorkerEvent) {
        match event {
            WorkerEvent::Progress { target, progress } => {
                self.progress.insert(target, progress);
            }
            WorkerEvent::Retries(retries) => self.retries = retries,
            WorkerEvent::Failed(error) => self.last_error = Some(error),
            WorkerEvent::Drained(job) => {
                self.last_error = None;
                if let Err(e) = self.job_drained(job).await {
                    tracing::error!(error = %e, "recording the drained job failed");
                    self.last_error = Some(e.to_string());
                }
            }
        }
    }

    /// Persists `next` with its audit entry and version states, then
    /// publishes it (snapshot, keyring plan).
    async fn commit(&mut self, next: Rotation, step: Step<'_>) -> Result<(), RotationError> {
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
        transition.settings = Some(RuntimeSettings::of(&self.throttle).json());
        transition.version_states = version_states;
        transition.new_version = new_version;
        self.daemon.apply(transition).await?;
        tracing::info!(
            actor,
            action,
            state = %next.state(),
            current = %next.current(),
            write_version = %next.write_version(),
            "rotation transition"
        );
        self.machine = next.clone();
        self.publish();
        if self.daemon.plan().is_some() {
            self.daemon.set_plan(plan_of(&next)).await?;
        }
        Ok(())
    }

    /// Who may verify a new share, and how many must before `retire`.
    fn quorum(&self) -> VerifyQuorum {
        VerifyQuorum {
            min_verified: usize::from(self.daemon.config().rotation.min_verified),
            keyholders: self
                .daemon
                .config()
                .keyholders()
                .map(|p| p.name.clone())
                .collect(),
        }
    }

    fn require_unsealed(&self) -> Result<(), RotationError> {
        if self.daemon.vault().is_sealed() {
            return Err(DaemonError::Sealed.into());
        }
        Ok(())
    }

    /// `rotate prepare`: make, split and deal the new key.
    pub(crate) async fn prepare(
        &mut self,
        operator: &Principal,
        requested: Option<KeyVersion>,
    ) -> Result<RotationStatus, RotationError> {
        self.require_unsealed()?;
        let known = self.daemon.store().versions().await?;
        let highest = known.iter().map(|r| r.version).max();
        // The default is the highest version ever made + 1, not the live
        // one + 1: a rolled-back version's number is taken for good.
        let requested = requested.or_else(|| highest.and_then(|h| h.next().ok()));
        let mut next = self.machine.clone();
        let version = next.prepare(requested)?;
        if let Some(highest) = highest
            && version <= highest
        {
            return Err(RotationError::VersionReused { version, highest });
        }
        let config = self.daemon.config();
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
        // A throttle set during an earlier (perhaps rolled-back) rotation was
        // for that job's load; each rotation starts at the configured one,
        // stored with the step.
        let earlier = std::mem::replace(
            &mut self.throttle,
            self.daemon.config().reencrypt.throttle(),
        );
        if let Err(e) = self.commit(next, step).await {
            self.throttle = earlier;
            return Err(e);
        }
        self.daemon.vault().hold_pending(version, key);
        self.new_shares.clear();
        Ok(self.status())
    }

    /// `rotate activate`: SharesVerified -> DualRead (consumers get both keys).
    pub(crate) async fn activate(
        &mut self,
        operator: &Principal,
    ) -> Result<RotationStatus, RotationError> {
        self.require_unsealed()?;
        let mut next = self.machine.clone();
        next.activate()?;
        let version = next.next().expect("dual read has a next version");
        if self.daemon.vault().key(version).is_none() {
            return Err(RotationError::KeyNotHeld {
                version,
                after_restart: true,
            });
        }
        let detail = json!({"versions": next.live_versions().iter().map(|v| v.number()).collect::<Vec<_>>(), "write_version": next.write_version().number(), "new": version.number()});
        let step = Step {
            actor: &operator.name,
            action: "rotation_activated",
            detail,
            version_states: vec![(version, VersionState::Active)],
            new_version: None,
        };
        self.commit(next, step).await?;
        // The new key is live now; the shares that proved it are not needed.
        self.new_shares.clear();
        Ok(self.status())
    }

    /// Whether the keyring a local fetch handed over is the one this state
    /// needs consumers to have: in DualRead one holding the next version,
    /// while a job runs one writing the job's version. A fetch queued while
    /// a step changed the state (answered with the keyring from before it,
    /// say one still writing the old version during a `switch`) is not.
    fn handed_what_is_needed(&self, fetch: &Fetched) -> bool {
        match (self.machine.state(), self.machine.job()) {
            (RotationState::DualRead, _) => self
                .machine
                .next()
                .is_some_and(|next| fetch.versions.contains(&next)),
            (RotationState::Reencrypting | RotationState::RollingBack, Some(job)) => {
                fetch.write_version == job.to
            }
            _ => false,
        }
    }

    /// A consumer fetched the keyring: its acknowledgement of both versions
    /// in DualRead, or proof that it writes the job's version while a job
    /// runs. Other fetches change nothing.
    pub(crate) async fn acknowledge(&mut self, consumer: &str) -> Result<(), RotationError> {
        let consumers = &self.daemon.config().reencrypt.consumers;
        if !self
            .machine
            .waiting_for(consumers)
            .iter()
            .any(|c| c == consumer)
        {
            return Ok(());
        }
        let mut next = self.machine.clone();
        next.acknowledge(consumer);
        let detail = json!({"version": next.next().map(|v| v.number())});
        self.commit(
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
    pub(crate) async fn switch(
        &mut self,
        operator: &Principal,
    ) -> Result<RotationStatus, RotationError> {
        self.require_unsealed()?;
        let consumers = self.daemon.config().reencrypt.consumers.clone();
        self.machine.check_switch(&consumers)?;
        let mut keys = BTreeMap::new();
        for version in self.machine.live_versions() {
            let key: Key =
                self.daemon
                    .vault()
                    .key(version)
                    .ok_or_else(|| RotationError::KeyNotHeld {
                        version,
                        after_restart: false,
                    })?;
            keys.insert(version, key);
        }
        let report = self.daemon.verify_keys(keys).await?;
        let mut next = self.machine.clone();
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
        self.commit(next, step).await?;
        self.start_worker();
        Ok(self.status())
    }

    /// `rotate pause` / `rotate resume`.
    pub(crate) async fn set_paused(
        &mut self,
        operator: &Principal,
        paused: bool,
    ) -> Result<RotationStatus, RotationError> {
        let mut next = self.machine.clone();
        let rescan = self.machine.state() == RotationState::Drained;
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
        self.commit(next, step).await?;
        if let Some(running) = self.running.as_ref() {
            if paused {
                running.control.pause();
            } else {
                running.control.resume();
            }
        }
        if !paused {
            self.last_error = None;
            self.start_worker();
        }
        Ok(self.status())
    }

    /// `rotate throttle`: changes apply from the worker's next batch.
    pub(crate) async fn throttle(
        &mut self,
        operator: &Principal,
        request: &ThrottleRequest,
    ) -> Result<RotationStatus, RotationError> {
        let mut throttle = self.throttle.clone();
        if let Some(rate) = request.rows_per_sec {
            throttle.rows_per_sec = rate;
        }
        if let Some(size) = request.batch_size {
            throttle.batch_size = size;
        }
        throttle.validate().map_err(RotationError::Throttle)?;
        // Stored with its audit entry first, so a restart resumes at it and
        // a failed write changes nothing.
        let mut transition = Transition::audit_only(audit::draft(
            &operator.name,
            "rotation_throttled",
            json!({"rows_per_sec": throttle.rows_per_sec, "batch_size": throttle.batch_size}),
        ));
        transition.settings = Some(RuntimeSettings::of(&throttle).json());
        self.daemon.apply(transition).await?;
        if let Some(running) = self.running.as_ref() {
            running
                .control
                .set_throttle(throttle.clone())
                .map_err(RotationError::Throttle)?;
        }
        self.throttle = throttle;
        Ok(self.status())
    }

    /// The worker finished a full scan with nothing left at `job.from`.
    async fn job_drained(&mut self, job: Job) -> Result<(), RotationError> {
        if self.machine.job() != Some(job) {
            return Ok(());
        }
        let mut next = self.machine.clone();
        next.drained(&self.daemon.config().reencrypt.consumers)?;
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
        self.commit(next, step).await?;
        if rolled_back {
            self.daemon.vault().forget(job.from);
        }
        Ok(())
    }

    /// Starts the worker for the machine's job, unless one runs, the job is
    /// paused or the daemon is sealed.
    fn start_worker(&mut self) {
        let Some(job) = self.machine.job() else {
            return;
        };
        if !self.daemon.leads() {
            return;
        }
        if self.daemon.vault().is_sealed() {
            return;
        }
        if self.running.as_ref().is_some_and(|r| !r.task.is_finished()) {
            return;
        }
        let control =
            ControlHandle::new(self.throttle.clone()).expect("the throttle was validated");
        if self.machine.paused() {
            control.pause();
        }
        self.retries = worker::Retries::default();
        let context = worker::Context {
            daemon: Arc::clone(&self.daemon),
            events: self.events.clone(),
            view: self.view.subscribe(),
            seal: self.daemon.seal_state(),
        };
        let task = tokio::spawn(worker::run(context, job, control.clone()));
        self.running = Some(Running { control, task });
    }

    /// Stops the worker after its batch in flight; its checkpoint stays.
    async fn stop_worker(&mut self) {
        if let Some(running) = self.running.take() {
            running.control.abort();
            let _ = running.task.await;
        }
    }
}
