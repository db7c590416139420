//! The rotation part of the status document: the machine's state with the
//! worker's progress summed over targets and the throttle in force.

use keyholder_api::{RotationState, RotationStatus};

use super::{Rotator, lock};
use crate::rotation::{Job, Rotation};

impl Rotator {
    /// The rotation part of the status document.
    pub fn status(&self) -> RotationStatus {
        self.status_of(&self.rotation())
    }

    pub(super) fn status_of(&self, rotation: &Rotation) -> RotationStatus {
        // After the drain the last pass's figures stay on show.
        let job = rotation
            .job()
            .or(match (rotation.state(), rotation.next()) {
                (RotationState::Drained | RotationState::Retired, Some(to)) => Some(Job {
                    from: rotation.current(),
                    to,
                }),
                _ => None,
            });
        let (mut done, mut remaining, mut conflicts, mut rate) = (0, 0, 0, 0.0);
        if let Some(job) = job {
            for progress in lock(&self.progress).values() {
                let p = progress.borrow();
                if p.from == job.from && p.to == job.to {
                    done += p.records_done;
                    remaining += p.records_remaining;
                    conflicts += p.conflicts;
                    rate += p.rows_per_sec;
                }
            }
        }
        let throttle = lock(&self.throttle).clone();
        let retries = lock(&self.retries).clone();
        RotationStatus {
            state: rotation.state(),
            from: (rotation.state() != RotationState::Idle).then(|| rotation.current()),
            to: rotation.next(),
            rows_done: done,
            // Outside a job the drained state rests on a full scan that
            // found none; the pass's estimate would only mislead.
            rows_remaining: if rotation.job().is_some() {
                remaining
            } else {
                0
            },
            conflicts,
            rows_per_sec: if rotation.job().is_some() { rate } else { 0.0 },
            eta_seconds: (rotation.job().is_some() && rate > 0.0)
                .then(|| (remaining as f64 / rate).ceil() as u64),
            paused: rotation.paused(),
            verified_by: rotation.verified_by().map(str::to_owned).collect(),
            acknowledged_by: rotation.acknowledged_by().map(str::to_owned).collect(),
            waiting_for: rotation.waiting_for(&self.daemon.config.reencrypt.consumers),
            retire_approvals: rotation.retire_approvals().map(str::to_owned).collect(),
            rows_per_sec_limit: throttle.rows_per_sec,
            batch_size: throttle.batch_size,
            last_error: lock(&self.last_error).clone(),
            retries: retries.count,
            last_transient_error: retries.last,
            retrying: retries.waiting,
        }
    }
}
