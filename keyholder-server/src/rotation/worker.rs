//! The daemon's side of re-encryption: runs the engine
//! ([`keyholder_reencrypt`]) over every configured target for the rotation's
//! current [`Job`], keeps its checkpoints in the state store, and reports a
//! drained job to the orchestrator only after a fresh full scan of every
//! target found no record left at the job's source version, and while every
//! target and column the job's passes covered (kept beside the checkpoints)
//! is still configured: a scan cannot see one a restart left out.
//!
//! It reports as [`WorkerEvent`]s on a channel (progress, retries, a
//! failure, the drain) and never calls into the orchestrator; it reads the
//! rotation from the orchestrator's `watch` and waits on changes, never
//! polls. It holds the vault's keyring only while a pass runs; sealing
//! aborts it (it watches the daemon's seal itself).
//!
//! A transient database failure (a deadlock, a lost connection, the server
//! restarting; [`keyholder_reencrypt::Error::is_transient`]) is retried here,
//! in the one retry loop status shows (`retries`, `last_transient_error`,
//! `retrying`): with exponential backoff and jitter, on fresh connections,
//! from the checkpoints. Only a persistent error stops the job, with the
//! database's own words and what to do.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crypto_core::KeyVersion;
use futures::FutureExt as _;
use futures::future::BoxFuture;
use keyholder_reencrypt::{
    BoxError, Checkpoint, CheckpointStore, ControlHandle, PassOutcome, Progress, Reencryptor,
    RunState, ScanTotals, Target,
};
use serde_json::json;
use tokio::sync::{mpsc, watch};

use super::Job;
use super::driver::{RotationError, View};
use crate::audit;
use crate::daemon::{Daemon, DaemonError, SealState};
use crate::store::StateStore;

/// The first wait after a transient failure; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// The longest wait between two tries.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// The retries of the running worker, as status shows them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Retries {
    /// Transient failures met since the worker started.
    pub(crate) count: u64,
    /// The latest, in the database's words.
    pub(crate) last: Option<String>,
    /// Waiting now to try again.
    pub(crate) waiting: bool,
}

/// What a worker tells the orchestrator.
pub(crate) enum WorkerEvent {
    /// A pass over `target` started; its progress is on `progress`.
    Progress {
        target: String,
        progress: watch::Receiver<Progress>,
    },
    /// The retries so far (the whole count, not a delta).
    Retries(Retries),
    /// The job stopped on a persistent error; it needs a fix and a resume.
    Failed(String),
    /// A fresh full scan of every target found nothing left at the job's
    /// source version, after every consumer fetched the keyring writing its
    /// target version.
    Drained(Job),
}

/// What a worker runs with.
pub(crate) struct Context {
    pub(crate) daemon: Arc<Daemon>,
    pub(crate) events: mpsc::UnboundedSender<WorkerEvent>,
    pub(crate) view: watch::Receiver<View>,
    pub(crate) seal: watch::Receiver<SealState>,
}

impl Context {
    fn report(&self, event: WorkerEvent) {
        // The orchestrator outlives its workers; a closed channel means
        // the daemon is stopping and nobody needs the report.
        let _ = self.events.send(event);
    }
}

/// Why the job could not go on.
enum JobError {
    /// May go away by itself: the job is tried again.
    Transient(String),
    /// Needs a fix first; the job stops with it.
    Stopped(RotationError),
}

impl From<RotationError> for JobError {
    fn from(error: RotationError) -> Self {
        let transient = match &error {
            RotationError::Store(e) | RotationError::Daemon(DaemonError::Store(e)) => {
                e.is_transient()
            }
            _ => false,
        };
        if transient {
            Self::Transient(error.to_string())
        } else {
            Self::Stopped(error)
        }
    }
}

impl From<keyholder_reencrypt::Error> for JobError {
    fn from(error: keyholder_reencrypt::Error) -> Self {
        use keyholder_reencrypt::Error as E;
        if error.is_transient() {
            return Self::Transient(error.to_string());
        }
        let message = match &error {
            // The database refused: its words, then what to do.
            E::Postgres { .. } | E::Sqlite { .. } | E::Schema { .. } | E::Checkpoint { .. } => {
                format!(
                    "{error}; fix it, then run `keyholder rotate resume` (the job goes on from its checkpoint)"
                )
            }
            _ => error.to_string(),
        };
        Self::Stopped(RotationError::Worker(message))
    }
}

impl From<JobError> for RotationError {
    fn from(error: JobError) -> Self {
        match error {
            JobError::Transient(message) => RotationError::Worker(message),
            JobError::Stopped(error) => error,
        }
    }
}

/// The wait before try `attempt` (1, 2, ...): exponential, capped, with
/// jitter (a uniform draw from its upper half) so daemons sharing a
/// database do not come back in step.
fn backoff(attempt: u32) -> Duration {
    let ceiling = FIRST_BACKOFF
        .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)))
        .min(MAX_BACKOFF);
    ceiling / 2 + ceiling.mul_f64(rand::random_range(0.0..0.5))
}

/// Checkpoints kept in the daemon's state store, one row per target and
/// direction (`v9->v10`; a rollback is `v10->v9`).
struct StateCheckpoints(Arc<dyn StateStore>);

fn direction(from: KeyVersion, to: KeyVersion) -> String {
    format!("{from}->{to}")
}

impl CheckpointStore for StateCheckpoints {
    fn load<'a>(
        &'a self,
        target: &'a str,
        from: KeyVersion,
        to: KeyVersion,
    ) -> BoxFuture<'a, Result<Option<Checkpoint>, BoxError>> {
        async move {
            match self.0.checkpoint(target, &direction(from, to)).await? {
                None => Ok(None),
                Some(text) => Ok(Some(serde_json::from_str(&text)?)),
            }
        }
        .boxed()
    }

    fn save(&self, checkpoint: Checkpoint) -> BoxFuture<'_, Result<(), BoxError>> {
        async move {
            let text = serde_json::to_string(&checkpoint)?;
            let key = direction(checkpoint.from, checkpoint.to);
            self.0
                .put_checkpoint(&checkpoint.target, &key, text)
                .await?;
            Ok(())
        }
        .boxed()
    }

    fn clear<'a>(
        &'a self,
        target: &'a str,
        from: KeyVersion,
        to: KeyVersion,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        async move {
            let fresh = serde_json::to_string(&Checkpoint::start(target, from, to))?;
            self.0
                .put_checkpoint(target, &direction(from, to), fresh)
                .await?;
            Ok(())
        }
        .boxed()
    }
}

fn targets(daemon: &Daemon) -> Result<Vec<Target>, RotationError> {
    Ok(daemon.config().targets.clone())
}

/// Records at `version` in every target, by a full scan now.
pub async fn count_at(daemon: &Daemon, version: KeyVersion) -> Result<u64, RotationError> {
    Ok(job_count_at(daemon, version).await?)
}

async fn job_count_at(daemon: &Daemon, version: KeyVersion) -> Result<u64, JobError> {
    Ok(job_counts_at(daemon, version)
        .await?
        .iter()
        .map(|(_, n)| n)
        .sum())
}

/// Records at `version` per target (by name, in config order), by a full
/// scan now.
pub async fn counts_at(
    daemon: &Daemon,
    version: KeyVersion,
) -> Result<Vec<(String, u64)>, RotationError> {
    Ok(job_counts_at(daemon, version).await?)
}

async fn job_counts_at(
    daemon: &Daemon,
    version: KeyVersion,
) -> Result<Vec<(String, u64)>, JobError> {
    let mut counts = Vec::new();
    for target in targets(daemon)? {
        let store = keyholder_reencrypt::open_store(&target).await?;
        let inventory = store.inventory().await?;
        counts.push((target.name().to_owned(), inventory.at(version)));
    }
    Ok(counts)
}

/// The key, beside a target's checkpoints, of the columns the passes of a
/// job (`from` -> `to`) covered in it.
fn columns_key(from: KeyVersion, to: KeyVersion) -> String {
    format!("{} columns", direction(from, to))
}

/// The columns of `target` that passes of the job `from` -> `to` covered.
async fn covered_columns(
    store: &dyn StateStore,
    target: &str,
    from: KeyVersion,
    to: KeyVersion,
) -> Result<std::collections::BTreeSet<String>, RotationError> {
    match store.checkpoint(target, &columns_key(from, to)).await? {
        None => Ok(std::collections::BTreeSet::new()),
        Some(text) => serde_json::from_str(&text).map_err(|e| {
            crate::store::StoreError::Corrupt {
                what: format!("the columns of target {target} ({e})"),
            }
            .into()
        }),
    }
}

/// Records that the job `from` -> `to` covers `target`'s configured
/// columns, keeping those it covered before (a restart may have dropped
/// one from the config; its records still need `from`).
async fn record_columns(
    store: &dyn StateStore,
    target: &Target,
    from: KeyVersion,
    to: KeyVersion,
) -> Result<(), RotationError> {
    let mut columns = covered_columns(store, target.name(), from, to).await?;
    let before = columns.len();
    columns.extend(target.columns().iter().map(ToString::to_string));
    if before == 0 || columns.len() != before {
        let text = serde_json::to_string(&columns).expect("column names serialise");
        store
            .put_checkpoint(target.name(), &columns_key(from, to), text)
            .await?;
    }
    Ok(())
}

/// What a pass of `job` (or of its way back) was started on and the config
/// no longer names, by the checkpoints: a target (`target NAME`) or one of
/// a target's columns (`column C of target NAME`), left out by a restart
/// with another `[[targets]]` list. They are out of every scan, so the
/// job's source version may still encrypt some of their records.
pub(crate) async fn gone_targets(daemon: &Daemon, job: Job) -> Result<Vec<String>, RotationError> {
    let store = daemon.leader_store();
    let configured = targets(daemon)?;
    let mut gone = std::collections::BTreeSet::new();
    for (from, to) in [(job.from, job.to), (job.to, job.from)] {
        for name in store.checkpoint_targets(&direction(from, to)).await? {
            if !configured.iter().any(|t| t.name() == name) {
                gone.insert(format!("target {name}"));
            }
        }
        for target in &configured {
            for column in covered_columns(store.as_ref(), target.name(), from, to).await? {
                if !target.columns().iter().any(|c| c.to_string() == column) {
                    gone.insert(format!("column {column} of target {}", target.name()));
                }
            }
        }
    }
    Ok(gone.into_iter().collect())
}

/// Each target's stored totals for `job` (records moved, conflicts), by
/// target name; a target without a checkpoint is left out.
pub(crate) async fn checkpoint_totals(
    daemon: &Daemon,
    job: Job,
) -> Result<BTreeMap<String, (u64, u64)>, RotationError> {
    let checkpoints = StateCheckpoints(Arc::clone(daemon.leader_store()));
    let mut totals = BTreeMap::new();
    for target in targets(daemon)? {
        let saved = checkpoints
            .load(target.name(), job.from, job.to)
            .await
            .map_err(|e| {
                RotationError::Worker(format!(
                    "target {}: reading its checkpoint failed: {e}",
                    target.name()
                ))
            })?;
        if let Some(saved) = saved {
            totals.insert(
                target.name().to_owned(),
                (saved.records_done, saved.conflicts),
            );
        }
    }
    Ok(totals)
}

/// Starts the job's passes from the beginning (a new switch or rollback, not
/// a resume after a restart).
pub async fn reset_checkpoints(daemon: &Daemon, job: Job) -> Result<(), RotationError> {
    let checkpoints = StateCheckpoints(Arc::clone(daemon.leader_store()));
    for target in targets(daemon)? {
        checkpoints
            .clear(target.name(), job.from, job.to)
            .await
            .map_err(|e| RotationError::Worker(e.to_string()))?;
        record_columns(daemon.leader_store().as_ref(), &target, job.from, job.to).await?;
    }
    Ok(())
}

/// Starts a new full scan of every target for the same job, keeping what
/// the job moved so far, so the status counts the whole job.
pub async fn rescan_checkpoints(daemon: &Daemon, job: Job) -> Result<(), RotationError> {
    Ok(job_rescan_checkpoints(daemon, job).await?)
}

async fn job_rescan_checkpoints(daemon: &Daemon, job: Job) -> Result<(), JobError> {
    let checkpoints = StateCheckpoints(Arc::clone(daemon.leader_store()));
    for target in targets(daemon)? {
        let failed = |operation| {
            let target = target.name().to_owned();
            move |source: BoxError| keyholder_reencrypt::Error::Checkpoint {
                target,
                operation,
                source,
            }
        };
        let next = match checkpoints
            .load(target.name(), job.from, job.to)
            .await
            .map_err(failed("load"))?
        {
            Some(saved) => saved.rescan(),
            None => Checkpoint::start(target.name(), job.from, job.to),
        };
        checkpoints.save(next).await.map_err(failed("save"))?;
    }
    Ok(())
}

/// Runs the job over every target, then reports it drained. Transient
/// failures are retried here until the job drains, stops on a persistent
/// error, or is aborted (by the orchestrator or by a seal).
pub(crate) async fn run(mut context: Context, job: Job, control: ControlHandle) {
    let epoch = context.seal.borrow().epoch;
    let mut seal = context.seal.clone();
    let guard = control.clone();
    // A seal aborts the job at once, whatever the orchestrator is doing.
    let seal_guard = tokio::spawn(async move {
        if seal.wait_for(|s| s.epoch != epoch).await.is_ok() {
            guard.abort();
        }
    });
    let mut retries = Retries::default();
    let mut progress = BTreeMap::new();
    let mut attempt = 0u32;
    let result = loop {
        let done_before = rows_done(&progress, job);
        match passes(&mut context, &mut progress, job, &control).await {
            Err(JobError::Transient(error)) => {
                // A try that moved records got somewhere: this failure is a
                // new one and waits the shortest time again.
                if rows_done(&progress, job) > done_before {
                    attempt = 0;
                }
                attempt = attempt.saturating_add(1);
                let wait = backoff(attempt);
                retries.count += 1;
                retries.last = Some(error.clone());
                retries.waiting = true;
                context.report(WorkerEvent::Retries(retries.clone()));
                tracing::warn!(
                    from = %job.from, to = %job.to, retries = retries.count, wait_ms = wait.as_millis() as u64, %error,
                    "re-encryption met a transient database failure; trying again from the checkpoint on a fresh connection"
                );
                let aborted = wait_unless_aborted(&control, wait).await;
                retries.waiting = false;
                context.report(WorkerEvent::Retries(retries.clone()));
                if aborted {
                    break Ok(false);
                }
            }
            other => break other.map_err(RotationError::from),
        }
    };
    seal_guard.abort();
    match result {
        Ok(true) => context.report(WorkerEvent::Drained(job)),
        Ok(false) => {
            tracing::info!(from = %job.from, to = %job.to, "re-encryption stopped; its checkpoint stays")
        }
        Err(e) => {
            tracing::error!(from = %job.from, to = %job.to, error = %e, "re-encryption stopped on an error; fix it and run `keyholder rotate resume`");
            if let Err(audit_error) = context
                .daemon
                .audit(
                    audit::DAEMON,
                    "reencrypt_failed",
                    json!({"from": job.from.number(), "to": job.to.number(), "error": e.to_string()}),
                )
                .await
            {
                tracing::error!(error = %audit_error, "writing the failed re-encryption to the audit log failed");
            }
            context.report(WorkerEvent::Failed(e.to_string()));
        }
    }
}

/// Records the job's passes moved so far, over every target.
fn rows_done(progress: &BTreeMap<String, watch::Receiver<Progress>>, job: Job) -> u64 {
    progress
        .values()
        .map(|p| p.borrow().clone())
        .filter(|p| p.from == job.from && p.to == job.to)
        .map(|p| p.records_done)
        .sum()
}

/// Resolves once the job is aborted.
async fn aborted(control: &ControlHandle) {
    let mut state = control.subscribe();
    // The handle lives as long as the job: the channel stays open.
    let _ = state.wait_for(|c| c.state == RunState::Aborted).await;
}

/// Sleeps `wait`; true when the job was aborted meanwhile.
async fn wait_unless_aborted(control: &ControlHandle, wait: Duration) -> bool {
    tokio::select! {
        () = tokio::time::sleep(wait) => false,
        () = aborted(control) => true,
    }
}

/// How many times the job scans again when records were written at its
/// source version while it ran (a consumer that had not refreshed yet).
const ROUNDS: u32 = 3;

async fn passes(
    context: &mut Context,
    progress: &mut BTreeMap<String, watch::Receiver<Progress>>,
    job: Job,
    control: &ControlHandle,
) -> Result<bool, JobError> {
    let daemon = Arc::clone(&context.daemon);
    for round in 0..ROUNDS {
        if round > 0 {
            job_rescan_checkpoints(&daemon, job).await?;
        }
        if !run_targets(context, progress, job, control).await? {
            return Ok(false);
        }
        // Until every consumer has the keyring that writes `job.to`, one of
        // them may still write `job.from`: a scan before that proves nothing.
        // Each acknowledgement is a new rotation the orchestrator publishes.
        let mut logged = Vec::new();
        loop {
            let waiting = {
                let view = context.view.borrow_and_update();
                view.rotation
                    .waiting_for(&daemon.config().reencrypt.consumers)
            };
            if waiting.is_empty() {
                break;
            }
            if waiting != logged {
                tracing::info!(?waiting, to = %job.to, "re-encryption waits for consumers to fetch the keyring writing the new version");
                logged = waiting;
            }
            tokio::select! {
                changed = context.view.changed() => {
                    if changed.is_err() {
                        return Ok(false);
                    }
                }
                () = aborted(control) => return Ok(false),
            }
        }
        // The drained state rests on a fresh full scan of every target, not
        // on the passes' own bookkeeping.
        let left = job_count_at(&daemon, job.from).await?;
        if left == 0 {
            // That scan covered the configured targets only: one the job
            // started on and a restart left out may still hold some.
            let gone = gone_targets(&daemon, job).await?;
            if !gone.is_empty() {
                return Err(JobError::Stopped(RotationError::TargetsGone {
                    version: job.from,
                    retiring: false,
                    places: gone,
                }));
            }
            return Ok(true);
        }
        tracing::info!(left, from = %job.from, "records were written at the old version meanwhile; scanning again");
    }
    let left = job_count_at(&daemon, job.from).await?;
    Err(JobError::Stopped(RotationError::Worker(format!(
        "a full scan still found {left} record(s) at {} after {ROUNDS} rounds; an application is still writing {}; check that every consumer refreshed its keyring, then `keyholder rotate resume`",
        job.from, job.from
    ))))
}

async fn run_targets(
    context: &Context,
    progress: &mut BTreeMap<String, watch::Receiver<Progress>>,
    job: Job,
    control: &ControlHandle,
) -> Result<bool, JobError> {
    let daemon = &context.daemon;
    let keyring = daemon
        .vault()
        .keyring()
        .ok_or_else(|| RotationError::Worker("the daemon is sealed".to_owned()))?;
    if keyring.write_version() != job.to {
        return Err(JobError::Stopped(RotationError::Worker(format!(
            "the keyring writes {}, the job moves records to {}",
            keyring.write_version(),
            job.to
        ))));
    }
    let checkpoints: Arc<dyn CheckpointStore> =
        Arc::new(StateCheckpoints(Arc::clone(daemon.leader_store())));
    for target in targets(daemon)? {
        let name = target.name().to_owned();
        record_columns(daemon.leader_store().as_ref(), &target, job.from, job.to).await?;
        let store = keyholder_reencrypt::open_store(&target).await?;
        let pass = Reencryptor::new(
            target,
            store,
            Arc::clone(&keyring),
            job.from,
            Arc::clone(&checkpoints),
            control,
        )?
        .with_workers(daemon.config().reencrypt.workers);
        progress.insert(name.clone(), pass.progress());
        context.report(WorkerEvent::Progress {
            target: name.clone(),
            progress: pass.progress(),
        });
        tracing::info!(target = %name, from = %job.from, to = %job.to, "re-encryption pass starting");
        match pass.run().await? {
            PassOutcome::Aborted(_) => return Ok(false),
            PassOutcome::Drained(report) => {
                // This scan's figures: earlier scans of the job were
                // audited (and their encryptions counted) when they drained.
                let ScanTotals {
                    records_done: moved,
                    conflicts,
                } = report.checkpoint.this_scan();
                tracing::info!(target = %name, moved, conflicts, "target drained");
                daemon
                    .audit(
                        audit::DAEMON,
                        "target_drained",
                        json!({"target": name, "from": job.from.number(), "to": job.to.number(),
                               "records_moved": moved, "conflicts": conflicts,
                               "after": report.after.by_version().iter().map(|(v, n)| json!({"version": v.number(), "records": n})).collect::<Vec<_>>()}),
                    )
                    .await
                    .map_err(RotationError::from)?;
                // The count the AES-GCM usage limit rests on: a failure to
                // record it stops the job rather than under-count.
                daemon
                    .add_encryptions(job.to, moved)
                    .await
                    .map_err(RotationError::from)?;
            }
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_200ms_to_10s_with_jitter_in_its_upper_half() {
        for _ in 0..200 {
            let first = backoff(1);
            assert!(
                first >= FIRST_BACKOFF / 2 && first < FIRST_BACKOFF,
                "{first:?}"
            );
            let third = backoff(3);
            assert!(
                third >= FIRST_BACKOFF * 2 && third < FIRST_BACKOFF * 4,
                "{third:?}"
            );
            let late = backoff(40);
            assert!(late >= MAX_BACKOFF / 2 && late < MAX_BACKOFF, "{late:?}");
        }
    }
}
