//! The destructive transitions, retire and rollback: each checked without
//! change first (the plan), then performed on the second distinct operator's
//! approval.

use crypto_core::KeyVersion;
use keyholder_api::RotationState;

use super::{Destructive, Outcome, Rotation, TransitionError, VerifyQuorum, wrong};

impl Rotation {
    /// Checks a retire request without changing anything.
    pub fn check_retire(
        &self,
        version: KeyVersion,
        operator: &str,
        remaining: u64,
        quorum: &VerifyQuorum,
    ) -> Result<(), TransitionError> {
        if self.state != RotationState::Drained {
            return Err(wrong(
                "retire",
                "drained",
                self.state,
                "; wait until `keyholder rotate status` shows drained",
            ));
        }
        if version != self.current {
            return Err(TransitionError::NotRetirable {
                expected: self.current,
                requested: version,
            });
        }
        if remaining > 0 {
            return Err(TransitionError::RecordsRemain { version, remaining });
        }
        if self.verified_by.len() < quorum.min_verified {
            return Err(TransitionError::TooFewVerified {
                old: version,
                new: self.next_version(),
                verified: self.verified_by.iter().cloned().collect(),
                needed: quorum.min_verified,
                missing: self
                    .unverified(quorum)
                    .into_iter()
                    .map(str::to_owned)
                    .collect(),
            });
        }
        self.retire_approvals
            .check(Destructive::Retire, operator, version)
    }

    /// `rotate retire VERSION [--execute]`, after a fresh full scan counted
    /// `remaining` records at `version`. The second distinct operator's
    /// `--execute` retires it, once `quorum` keyholders verified.
    pub fn retire(
        &mut self,
        version: KeyVersion,
        operator: &str,
        remaining: u64,
        execute: bool,
        quorum: &VerifyQuorum,
    ) -> Result<Outcome, TransitionError> {
        if !execute {
            if self.retire_approvals.contains(operator) {
                // A plan is always allowed to the one who approved.
                return Ok(Outcome::Planned);
            }
            self.check_retire(version, operator, remaining, quorum)?;
            return Ok(Outcome::Planned);
        }
        self.check_retire(version, operator, remaining, quorum)?;
        let outcome = self
            .retire_approvals
            .approve(Destructive::Retire, operator, version)?;
        if outcome == Outcome::Executed {
            self.state = RotationState::Retired;
        }
        Ok(outcome)
    }

    /// Whether records may exist at the next version, so a rollback must
    /// move them back before it drops the version.
    pub fn rollback_moves_records(&self) -> bool {
        use RotationState::*;
        matches!(self.state, DualWrite | Reencrypting | Drained | RollingBack)
    }

    /// Checks a rollback request without changing anything.
    pub fn check_rollback(&self) -> Result<(KeyVersion, KeyVersion), TransitionError> {
        use RotationState::*;
        match self.state {
            Prepared | SharesVerified | DualRead | DualWrite | Reencrypting | Drained => {
                Ok((self.next_version(), self.current))
            }
            actual => Err(wrong(
                "rollback",
                "a state between prepared and drained",
                actual,
                "; a retired version cannot come back, and idle has nothing to roll back",
            )),
        }
    }

    /// `rotate rollback [--execute]`: a plan, or one operator's approval;
    /// the second distinct operator's `--execute` performs it. Before any
    /// record can be at the next version, the rotation simply returns to
    /// Idle (the next version is dropped); after, it goes to RollingBack and
    /// the worker moves records back before [`Rotation::drained`] drops it.
    /// A pause stays in force: the way back starts paused until `resume`.
    pub fn rollback(&mut self, operator: &str, execute: bool) -> Result<Outcome, TransitionError> {
        let (dropped, _) = self.check_rollback()?;
        if !execute {
            return Ok(Outcome::Planned);
        }
        let outcome = self
            .rollback_approvals
            .approve(Destructive::Rollback, operator, dropped)?;
        if outcome != Outcome::Executed {
            return Ok(outcome);
        }
        if self.rollback_moves_records() {
            self.state = RotationState::RollingBack;
            self.retire_approvals.clear();
            self.rollback_approvals.clear();
            self.writers_switched.clear();
        } else {
            *self = Self::idle(self.current);
        }
        Ok(Outcome::Executed)
    }
}
