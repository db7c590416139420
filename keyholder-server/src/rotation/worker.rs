//! The daemon's side of re-encryption: runs the engine
//! ([`keyholder_reencrypt`]) over every configured target for the rotation's
//! current [`Job`], keeps its checkpoints in the state store, and reports a
//! drained job back to the driver only after a fresh full scan of every
//! target found no record left at the job's source version.
//!
//! It holds the vault's keyring only while a pass runs; sealing aborts it.
//!
//! A transient database failure (a deadlock, a lost connection, the server
//! restarting; [`keyholder_reencrypt::Error::is_transient`]) is retried here,
//! in the one retry loop status shows (`retries`, `last_transient_error`,
//! `retrying`): with exponential backoff and jitter, on fresh connections,
//! from the checkpoints. Only a persistent error stops the job, with the
//! database's own words and what to do.

use std::sync::Arc;
use std::time::Duration;

use crypto_core::KeyVersion;
use futures::FutureExt as _;
use futures::future::BoxFuture;
use keyholder_reencrypt::{
    BoxError, Checkpoint, CheckpointStore, ControlHandle, PassOutcome, Reencryptor, ScanTotals,
    Target,
};
use serde_json::json;

use super::Job;
use super::driver::{RotationError, Rotator};
use crate::audit;
use crate::daemon::{Daemon, DaemonError};
use crate::store::StateStore;

/// The first wait after a transient failure; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// The longest wait between two tries.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// The retries of the running worker, as status shows them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Retries {
    /// Transient failures met since the worker started.
    pub(super) count: u64,
    /// The latest, in the database's words.
    pub(super) last: Option<String>,
    /// Waiting now to try again.
    pub(super) waiting: bool,
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
    Ok(daemon.config.targets.clone())
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

/// Starts the job's passes from the beginning (a new switch or rollback, not
/// a resume after a restart).
pub async fn reset_checkpoints(daemon: &Daemon, job: Job) -> Result<(), RotationError> {
    let checkpoints = StateCheckpoints(Arc::clone(&daemon.store));
    for target in targets(daemon)? {
        checkpoints
            .clear(target.name(), job.from, job.to)
            .await
            .map_err(|e| RotationError::Worker(e.to_string()))?;
    }
    Ok(())
}

/// Starts a new full scan of every target for the same job, keeping what
/// the job moved so far, so the status counts the whole job.
pub async fn rescan_checkpoints(daemon: &Daemon, job: Job) -> Result<(), RotationError> {
    Ok(job_rescan_checkpoints(daemon, job).await?)
}

async fn job_rescan_checkpoints(daemon: &Daemon, job: Job) -> Result<(), JobError> {
    let checkpoints = StateCheckpoints(Arc::clone(&daemon.store));
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

/// Runs the job over every target, then tells the driver it drained.
/// Transient failures are retried here until the job drains, stops on a
/// persistent error, or is aborted.
pub async fn run(rotator: Arc<Rotator>, job: Job, control: ControlHandle) {
    let daemon = Arc::clone(rotator.daemon());
    rotator.set_retries(Retries::default());
    let mut attempt = 0u32;
    let result = loop {
        let done_before = rotator.status().rows_done;
        match passes(&rotator, &daemon, job, &control).await {
            Err(JobError::Transient(error)) => {
                // A try that moved records got somewhere: this failure is a
                // new one and waits the shortest time again.
                if rotator.status().rows_done > done_before {
                    attempt = 0;
                }
                attempt = attempt.saturating_add(1);
                let wait = backoff(attempt);
                let count = rotator.note_retry(error.clone());
                tracing::warn!(
                    from = %job.from, to = %job.to, retries = count, wait_ms = wait.as_millis() as u64, %error,
                    "re-encryption met a transient database failure; trying again from the checkpoint on a fresh connection"
                );
                let aborted = wait_unless_aborted(&control, wait).await;
                rotator.set_retrying(false);
                if aborted {
                    break Ok(false);
                }
            }
            other => break other.map_err(RotationError::from),
        }
    };
    match result {
        Ok(true) => {
            rotator.set_error(None);
            if let Err(e) = rotator.job_drained(job).await {
                tracing::error!(error = %e, "recording the drained job failed");
                rotator.set_error(Some(e.to_string()));
            }
        }
        Ok(false) => {
            tracing::info!(from = %job.from, to = %job.to, "re-encryption stopped; its checkpoint stays")
        }
        Err(e) => {
            tracing::error!(from = %job.from, to = %job.to, error = %e, "re-encryption stopped on an error; fix it and run `keyholder rotate resume`");
            let _ = daemon
                .audit(
                    audit::DAEMON,
                    "reencrypt_failed",
                    json!({"from": job.from.number(), "to": job.to.number(), "error": e.to_string()}),
                )
                .await;
            rotator.set_error(Some(e.to_string()));
        }
    }
}

/// Sleeps `wait`; true when the job was aborted meanwhile.
async fn wait_unless_aborted(control: &ControlHandle, wait: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if control.current().state == keyholder_reencrypt::RunState::Aborted {
            return true;
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return false;
        }
        tokio::time::sleep((deadline - now).min(Duration::from_millis(100))).await;
    }
}

/// How many times the job scans again when records were written at its
/// source version while it ran (a consumer that had not refreshed yet).
const ROUNDS: u32 = 3;

async fn passes(
    rotator: &Rotator,
    daemon: &Arc<Daemon>,
    job: Job,
    control: &ControlHandle,
) -> Result<bool, JobError> {
    for round in 0..ROUNDS {
        if round > 0 {
            job_rescan_checkpoints(daemon, job).await?;
        }
        if !run_targets(rotator, daemon, job, control).await? {
            return Ok(false);
        }
        // Until every consumer has the keyring that writes `job.to`, one of
        // them may still write `job.from`: a scan before that proves nothing.
        loop {
            let waiting = rotator
                .rotation()
                .waiting_for(&daemon.config.reencrypt.consumers);
            if waiting.is_empty() {
                break;
            }
            if control.current().state == keyholder_reencrypt::RunState::Aborted {
                return Ok(false);
            }
            tracing::info!(?waiting, to = %job.to, "re-encryption waits for consumers to fetch the keyring writing the new version");
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
        // The drained state rests on a fresh full scan of every target, not
        // on the passes' own bookkeeping.
        let left = job_count_at(daemon, job.from).await?;
        if left == 0 {
            return Ok(true);
        }
        tracing::info!(left, from = %job.from, "records were written at the old version meanwhile; scanning again");
    }
    let left = job_count_at(daemon, job.from).await?;
    Err(JobError::Stopped(RotationError::Worker(format!(
        "a full scan still found {left} record(s) at {} after {ROUNDS} rounds; an application is still writing {}; check that every consumer refreshed its keyring, then `keyholder rotate resume`",
        job.from, job.from
    ))))
}

async fn run_targets(
    rotator: &Rotator,
    daemon: &Arc<Daemon>,
    job: Job,
    control: &ControlHandle,
) -> Result<bool, JobError> {
    let keyring = daemon
        .vault
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
        Arc::new(StateCheckpoints(Arc::clone(&daemon.store)));
    for target in targets(daemon)? {
        let name = target.name().to_owned();
        let store = keyholder_reencrypt::open_store(&target).await?;
        let pass = Reencryptor::new(
            target,
            store,
            Arc::clone(&keyring),
            job.from,
            Arc::clone(&checkpoints),
            control,
        )?;
        rotator.set_progress(&name, pass.progress());
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
                let _ = daemon.store.add_encryptions(job.to, moved).await;
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
