//! What readers of the rotation see ([`View`], published by the
//! orchestrator through a `watch`), and the rotation part of the status
//! document computed from it: the machine's state with the worker's progress
//! summed over targets and the throttle in force.

use std::collections::BTreeMap;

use keyholder_api::{RotationState, RotationStatus};
use keyholder_reencrypt::{Progress, Throttle};
use tokio::sync::watch;

use super::Rotator;
use crate::rotation::worker::Retries;
use crate::rotation::{Job, Rotation};

/// The rotation as the orchestrator last published it. The workers'
/// progress is read live from their own `watch`es.
#[derive(Clone)]
pub(crate) struct View {
    pub(crate) rotation: Rotation,
    pub(crate) throttle: Throttle,
    pub(crate) last_error: Option<String>,
    pub(crate) retries: Retries,
    pub(crate) progress: BTreeMap<String, watch::Receiver<Progress>>,
    /// The stored checkpoints' totals per target, for the targets no pass
    /// has reported on since the start: status shows the job's figures
    /// right after a restart, before the unseal.
    pub(crate) resting: BTreeMap<String, Resting>,
    consumers: Vec<String>,
}

/// A target's totals from its stored checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Resting {
    pub(crate) job: Job,
    pub(crate) records_done: u64,
    pub(crate) conflicts: u64,
}

/// The job whose figures status shows: the running one, or after the drain
/// the last one.
pub(crate) fn shown_job(rotation: &Rotation) -> Option<Job> {
    rotation
        .job()
        .or(match (rotation.state(), rotation.next()) {
            (RotationState::Drained | RotationState::Retired, Some(to)) => Some(Job {
                from: rotation.current(),
                to,
            }),
            _ => None,
        })
}

impl View {
    pub(crate) fn new(rotation: Rotation, throttle: Throttle, consumers: Vec<String>) -> Self {
        Self {
            rotation,
            throttle,
            last_error: None,
            retries: Retries::default(),
            progress: BTreeMap::new(),
            resting: BTreeMap::new(),
            consumers,
        }
    }

    /// The consumers of a reloaded config (`reencrypt.consumers`).
    pub(crate) fn set_consumers(&mut self, consumers: &[String]) {
        if self.consumers != consumers {
            self.consumers = consumers.to_vec();
        }
    }

    /// The rotation part of the status document.
    pub(crate) fn status(&self) -> RotationStatus {
        let rotation = &self.rotation;
        // After the drain the last pass's figures stay on show.
        let job = shown_job(rotation);
        let (mut done, mut remaining, mut conflicts, mut rate) = (0, 0, 0, 0.0);
        let mut locked = 0.0;
        if let Some(job) = job {
            for (target, resting) in &self.resting {
                if resting.job == job && !self.progress.contains_key(target) {
                    done += resting.records_done;
                    conflicts += resting.conflicts;
                }
            }
            for progress in self.progress.values() {
                let p = progress.borrow();
                if p.from == job.from && p.to == job.to {
                    done += p.records_done;
                    remaining += p.records_remaining;
                    conflicts += p.conflicts;
                    rate += p.rows_per_sec;
                    locked += p.locked_seconds;
                }
            }
        }
        let running = rotation.job().is_some();
        RotationStatus {
            state: rotation.state(),
            from: (rotation.state() != RotationState::Idle).then(|| rotation.current()),
            to: rotation.next(),
            rows_done: done,
            // Outside a job the drained state rests on a full scan that
            // found none; the pass's estimate would only mislead.
            rows_remaining: if running { remaining } else { 0 },
            conflicts,
            rows_per_sec: if running { rate } else { 0.0 },
            eta_seconds: (running && rate > 0.0).then(|| (remaining as f64 / rate).ceil() as u64),
            paused: rotation.paused(),
            verified_by: rotation.verified_by().map(str::to_owned).collect(),
            acknowledged_by: rotation.acknowledged_by().map(str::to_owned).collect(),
            waiting_for: rotation.waiting_for(&self.consumers),
            retire_approvals: rotation.retire_approvals().map(str::to_owned).collect(),
            rows_per_sec_limit: self.throttle.rows_per_sec,
            batch_size: self.throttle.batch_size,
            last_error: self.last_error.clone(),
            retries: self.retries.count,
            last_transient_error: self.retries.last.clone(),
            retrying: self.retries.waiting,
            locked_seconds: locked,
        }
    }
}

impl Rotator {
    /// The rotation part of the status document, as of now.
    pub(super) fn status(&self) -> RotationStatus {
        self.publish();
        self.view.borrow().status()
    }
}
