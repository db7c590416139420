//! The daemon's side of re-encryption: runs the engine
//! ([`keyholder_reencrypt`]) over every configured target for the rotation's
//! current [`Job`], keeps its checkpoints in the state store, and reports a
//! drained job back to the driver only after a fresh full scan of every
//! target found no record left at the job's source version.
//!
//! It holds the vault's keyring only while a pass runs; sealing aborts it.

use std::sync::Arc;

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
use crate::daemon::Daemon;
use crate::store::StateStore;

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
    Ok(counts_at(daemon, version)
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
    let mut counts = Vec::new();
    for target in targets(daemon)? {
        let store = keyholder_reencrypt::open_store(&target)
            .await
            .map_err(|e| RotationError::Worker(e.to_string()))?;
        let inventory = store
            .inventory()
            .await
            .map_err(|e| RotationError::Worker(e.to_string()))?;
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
    let checkpoints = StateCheckpoints(Arc::clone(&daemon.store));
    let failed = |e: BoxError| RotationError::Worker(e.to_string());
    for target in targets(daemon)? {
        let next = match checkpoints
            .load(target.name(), job.from, job.to)
            .await
            .map_err(failed)?
        {
            Some(saved) => saved.rescan(),
            None => Checkpoint::start(target.name(), job.from, job.to),
        };
        checkpoints.save(next).await.map_err(failed)?;
    }
    Ok(())
}

/// Runs the job over every target, then tells the driver it drained.
pub async fn run(rotator: Arc<Rotator>, job: Job, control: ControlHandle) {
    let daemon = Arc::clone(rotator.daemon());
    match passes(&rotator, &daemon, job, &control).await {
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

/// How many times the job scans again when records were written at its
/// source version while it ran (a consumer that had not refreshed yet).
const ROUNDS: u32 = 3;

async fn passes(
    rotator: &Rotator,
    daemon: &Arc<Daemon>,
    job: Job,
    control: &ControlHandle,
) -> Result<bool, RotationError> {
    for round in 0..ROUNDS {
        if round > 0 {
            rescan_checkpoints(daemon, job).await?;
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
        let left = count_at(daemon, job.from).await?;
        if left == 0 {
            return Ok(true);
        }
        tracing::info!(left, from = %job.from, "records were written at the old version meanwhile; scanning again");
    }
    let left = count_at(daemon, job.from).await?;
    Err(RotationError::Worker(format!(
        "a full scan still found {left} record(s) at {} after {ROUNDS} rounds; an application is still writing {}; check that every consumer refreshed its keyring, then `keyholder rotate resume`",
        job.from, job.from
    )))
}

async fn run_targets(
    rotator: &Rotator,
    daemon: &Arc<Daemon>,
    job: Job,
    control: &ControlHandle,
) -> Result<bool, RotationError> {
    let keyring = daemon
        .vault
        .keyring()
        .ok_or_else(|| RotationError::Worker("the daemon is sealed".to_owned()))?;
    if keyring.write_version() != job.to {
        return Err(RotationError::Worker(format!(
            "the keyring writes {}, the job moves records to {}",
            keyring.write_version(),
            job.to
        )));
    }
    let checkpoints: Arc<dyn CheckpointStore> =
        Arc::new(StateCheckpoints(Arc::clone(&daemon.store)));
    for target in targets(daemon)? {
        let name = target.name().to_owned();
        let store = keyholder_reencrypt::open_store(&target)
            .await
            .map_err(|e| RotationError::Worker(e.to_string()))?;
        let pass = Reencryptor::new(
            target,
            store,
            Arc::clone(&keyring),
            job.from,
            Arc::clone(&checkpoints),
            control,
        )
        .map_err(|e| RotationError::Worker(e.to_string()))?;
        rotator.set_progress(&name, pass.progress());
        tracing::info!(target = %name, from = %job.from, to = %job.to, "re-encryption pass starting");
        match pass
            .run()
            .await
            .map_err(|e| RotationError::Worker(e.to_string()))?
        {
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
                    .await?;
                let _ = daemon.store.add_encryptions(job.to, moved).await;
            }
        }
    }
    Ok(true)
}
