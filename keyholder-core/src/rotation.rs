//! The rotation state machine, pure: no I/O, no clock, no keys.
//!
//! It decides which transitions are allowed, which versions are live, which
//! one writes and what the re-encryption worker must do. The daemon persists
//! it (as JSON) in the same transaction as the transition's audit entry, and
//! performs the checks that need I/O (sample verification, the drained scan)
//! before it asks for the transition that depends on them.
//!
//! It must never infer "old" or "new" from an order of arrival or from "the
//! highest": `current` and `next` are named and set explicitly.

mod approvals;
mod destructive;

use std::collections::BTreeSet;

use crypto_core::KeyVersion;
use keyholder_api::RotationState;
use serde::{Deserialize, Serialize};

use approvals::Approvals;
pub use approvals::{APPROVALS_NEEDED, Destructive, Outcome};

/// Who may still verify a share of the new version, and how many must have
/// before the old version is retired (`rotation.min_verified`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyQuorum {
    /// Distinct keyholders who must have verified.
    pub min_verified: usize,
    /// Every configured keyholder, in config order.
    pub keyholders: Vec<String>,
}

/// The persisted rotation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rotation {
    state: RotationState,
    /// The version consumers relied on before the rotation (vN).
    current: KeyVersion,
    /// The version being introduced (vN+1), from Prepared on.
    next: Option<KeyVersion>,
    verified_by: BTreeSet<String>,
    acknowledged_by: BTreeSet<String>,
    /// Consumers that fetched the keyring writing the job's target version
    /// since the job started: until every one has, one of them may still be
    /// writing records at the version being drained.
    #[serde(default)]
    writers_switched: BTreeSet<String>,
    retire_approvals: Approvals,
    /// Operators who approved rolling the next version back.
    #[serde(default)]
    rollback_approvals: Approvals,
    paused: bool,
}

/// What the re-encryption worker must do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Job {
    /// Records at this version are moved...
    pub from: KeyVersion,
    /// ...to this one, which is the keyring's write version.
    pub to: KeyVersion,
}

/// A transition that is not allowed now, with what to do instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    /// The command needs another state.
    #[error("`{command}` needs the rotation in {needed}; it is in {actual}{hint}")]
    WrongState {
        /// The command.
        command: &'static str,
        /// The state(s) it needs.
        needed: &'static str,
        /// The state it is in.
        actual: RotationState,
        /// What to do next (starts with "; " or is empty).
        hint: &'static str,
    },
    /// `prepare` asked for a version that is not above the current one.
    #[error("the new version must be above {current}; {requested} is not")]
    VersionNotAbove {
        /// The live version.
        current: KeyVersion,
        /// What was asked for.
        requested: KeyVersion,
    },
    /// Consumers have not fetched the dual-read keyring yet.
    #[error(
        "{} must fetch the keyring with both versions before the switch (their `keyholder hook` acknowledges it); waiting for: {}",
        if .waiting.len() == 1 { "a consumer" } else { "consumers" },
        .waiting.join(", ")
    )]
    ConsumersWaiting {
        /// Who has not fetched it.
        waiting: Vec<String>,
    },
    /// Consumers may still write the version being drained.
    #[error(
        "not drained yet: {} must fetch the keyring that writes the new version first (their `keyholder hook` does), or it may still write the old one; waiting for: {}",
        if .waiting.len() == 1 { "a consumer" } else { "consumers" },
        .waiting.join(", ")
    )]
    WritersWaiting {
        /// Who has not fetched it.
        waiting: Vec<String>,
    },
    /// `retire` named another version than the rotation's old one.
    #[error(
        "only {expected} can be retired now (it is the version this rotation replaced); {requested} is not"
    )]
    NotRetirable {
        /// The version that can be retired.
        expected: KeyVersion,
        /// What was named.
        requested: KeyVersion,
    },
    /// Records still need the version.
    #[error(
        "{version} still encrypts {remaining} record(s); it cannot be retired until a full scan finds none"
    )]
    RecordsRemain {
        /// The version.
        version: KeyVersion,
        /// Records still at it.
        remaining: u64,
    },
    /// The same operator approved twice.
    #[error(
        "{operator} already approved {} {version}; a second, different operator must run the same command",
        .step.gerund()
    )]
    SameOperator {
        /// Who.
        operator: String,
        /// The step approved.
        step: Destructive,
        /// The version it is about.
        version: KeyVersion,
    },
    /// Too few keyholders proved their share of the new version for the old
    /// one to go.
    #[error(
        "{} keyholder(s) verified their share of {new} ({}); retiring {old} needs {needed} (rotation.min_verified), so that one absent keyholder cannot stop an unseal; waiting for: {} (`keyholder share verify`)",
        .verified.len(),
        if .verified.is_empty() { "none".to_owned() } else { .verified.join(", ") },
        .missing.join(", ")
    )]
    TooFewVerified {
        /// The version to retire.
        old: KeyVersion,
        /// The version that stays.
        new: KeyVersion,
        /// Who verified.
        verified: Vec<String>,
        /// Distinct keyholders needed.
        needed: usize,
        /// Keyholders who have not verified yet.
        missing: Vec<String>,
    },
}

fn wrong(
    command: &'static str,
    needed: &'static str,
    actual: RotationState,
    hint: &'static str,
) -> TransitionError {
    TransitionError::WrongState {
        command,
        needed,
        actual,
        hint,
    }
}

impl Rotation {
    /// A keyring at rest on one version.
    pub fn idle(current: KeyVersion) -> Self {
        Self {
            state: RotationState::Idle,
            current,
            next: None,
            verified_by: BTreeSet::new(),
            acknowledged_by: BTreeSet::new(),
            writers_switched: BTreeSet::new(),
            retire_approvals: Approvals::default(),
            rollback_approvals: Approvals::default(),
            paused: false,
        }
    }

    /// The state.
    pub fn state(&self) -> RotationState {
        self.state
    }

    /// The version consumers relied on before the rotation.
    pub fn current(&self) -> KeyVersion {
        self.current
    }

    /// The version being introduced.
    pub fn next(&self) -> Option<KeyVersion> {
        self.next
    }

    /// Whether an operator paused the worker.
    pub fn paused(&self) -> bool {
        self.paused
    }

    /// Keyholders who proved their new share.
    pub fn verified_by(&self) -> impl Iterator<Item = &str> {
        self.verified_by.iter().map(String::as_str)
    }

    /// Consumers that fetched the dual-read keyring.
    pub fn acknowledged_by(&self) -> impl Iterator<Item = &str> {
        self.acknowledged_by.iter().map(String::as_str)
    }

    /// Operators who approved the retirement.
    pub fn retire_approvals(&self) -> impl Iterator<Item = &str> {
        self.retire_approvals.iter()
    }

    /// Operators who approved the rollback.
    pub fn rollback_approvals(&self) -> impl Iterator<Item = &str> {
        self.rollback_approvals.iter()
    }

    /// Drops the retire and rollback approvals of operators who could not
    /// give them now (`still_operator` refuses them: a reload removed the
    /// principal or its operator role), so that a second operator never
    /// completes a step with an approval nobody configured could still
    /// give. The names dropped, sorted, once each.
    pub fn drop_lapsed_approvals(&mut self, still_operator: impl Fn(&str) -> bool) -> Vec<String> {
        let mut lapsed = self.retire_approvals.retain(&still_operator);
        lapsed.extend(self.rollback_approvals.retain(&still_operator));
        lapsed.sort();
        lapsed.dedup();
        lapsed
    }

    /// The keyholders of `quorum` who have not verified their new share.
    pub fn unverified<'a>(&self, quorum: &'a VerifyQuorum) -> Vec<&'a str> {
        quorum
            .keyholders
            .iter()
            .filter(|k| !self.verified_by.contains(*k))
            .map(String::as_str)
            .collect()
    }

    /// What makes a rotation read back from the store one this machine
    /// never makes (the row was edited or damaged), if anything: every state
    /// past idle names its next version, and a next version is above the
    /// current one. Checked before any other method runs on it.
    pub fn inconsistency(&self) -> Option<String> {
        match self.next {
            None if self.state != RotationState::Idle => {
                Some(format!("{} names no next version", self.state))
            }
            Some(next) if next <= self.current => Some(format!(
                "its next version {next} is not above its current {}",
                self.current
            )),
            _ => None,
        }
    }

    fn next_version(&self) -> KeyVersion {
        self.next
            .expect("every state past idle and retired has a next version")
    }

    /// The versions that must be in the keyring, in numeric order: needed
    /// to unseal and handed to consumers.
    pub fn live_versions(&self) -> Vec<KeyVersion> {
        use RotationState::*;
        match self.state {
            Idle | Prepared | SharesVerified => vec![self.current],
            DualRead | DualWrite | Reencrypting | Drained | RollingBack => {
                vec![self.current, self.next_version()]
            }
            Retired => vec![self.next_version()],
        }
    }

    /// A version whose shares are taken at unseal when given, but whose
    /// absence does not keep the daemon sealed.
    pub fn optional_version(&self) -> Option<KeyVersion> {
        match self.state {
            RotationState::Prepared | RotationState::SharesVerified => self.next,
            _ => None,
        }
    }

    /// The version new records are written with.
    pub fn write_version(&self) -> KeyVersion {
        use RotationState::*;
        match self.state {
            Idle | Prepared | SharesVerified | DualRead | RollingBack => self.current,
            DualWrite | Reencrypting | Drained | Retired => self.next_version(),
        }
    }

    /// What the worker must do, if anything, ignoring pause.
    pub fn job(&self) -> Option<Job> {
        match self.state {
            RotationState::Reencrypting => Some(Job {
                from: self.current,
                to: self.next_version(),
            }),
            RotationState::RollingBack => Some(Job {
                from: self.next_version(),
                to: self.current,
            }),
            _ => None,
        }
    }

    /// `rotate prepare`: Idle (or the end of the last rotation) -> Prepared.
    pub fn prepare(
        &mut self,
        requested: Option<KeyVersion>,
    ) -> Result<KeyVersion, TransitionError> {
        let base = match self.state {
            RotationState::Idle => self.current,
            RotationState::Retired => self.next_version(),
            actual => {
                return Err(wrong(
                    "prepare",
                    "idle or retired",
                    actual,
                    "; finish or roll back the rotation under way first",
                ));
            }
        };
        let next = match requested {
            Some(v) if v <= base => {
                return Err(TransitionError::VersionNotAbove {
                    current: base,
                    requested: v,
                });
            }
            Some(v) => v,
            None => base.next().map_err(|_| TransitionError::VersionNotAbove {
                current: base,
                requested: base,
            })?,
        };
        *self = Self::idle(base);
        self.state = RotationState::Prepared;
        self.next = Some(next);
        Ok(next)
    }

    /// Whether a keyholder may still prove their share of the next version:
    /// from `prepare` until the old version is retired, so that a keyholder
    /// absent at the start can still count towards `rotation.min_verified`.
    pub fn accepts_share_verify(&self) -> bool {
        use RotationState::*;
        matches!(
            self.state,
            Prepared | SharesVerified | DualRead | DualWrite | Reencrypting | Drained
        )
    }

    /// A keyholder proved their new share; returns whether this made the
    /// rotation SharesVerified.
    pub fn share_verified(
        &mut self,
        keyholder: &str,
        threshold: u8,
    ) -> Result<bool, TransitionError> {
        if !self.accepts_share_verify() {
            return Err(wrong(
                "share verify",
                "a state between prepared and drained",
                self.state,
                "",
            ));
        }
        self.verified_by.insert(keyholder.to_owned());
        if self.state == RotationState::Prepared && self.verified_by.len() >= usize::from(threshold)
        {
            self.state = RotationState::SharesVerified;
            return Ok(true);
        }
        Ok(false)
    }

    /// `rotate activate`: SharesVerified -> DualRead.
    pub fn activate(&mut self) -> Result<(), TransitionError> {
        match self.state {
            RotationState::SharesVerified => {
                self.state = RotationState::DualRead;
                Ok(())
            }
            actual => Err(wrong(
                "activate",
                "shares_verified",
                actual,
                "; at least `threshold` keyholders must run `keyholder share verify` first",
            )),
        }
    }

    /// A consumer fetched the keyring of the current state: in DualRead its
    /// acknowledgement of both versions; while a job runs, proof that it now
    /// writes the job's target version. Returns whether it was new.
    pub fn acknowledge(&mut self, consumer: &str) -> bool {
        match self.state {
            RotationState::DualRead => self.acknowledged_by.insert(consumer.to_owned()),
            RotationState::Reencrypting | RotationState::RollingBack => {
                self.writers_switched.insert(consumer.to_owned())
            }
            _ => false,
        }
    }

    /// The consumers that have not fetched the keyring this state needs
    /// them to have, in the given order: in DualRead the one with both
    /// versions (before `switch`), while a job runs the one writing its
    /// target version (before the job may be declared drained).
    pub fn waiting_for(&self, consumers: &[String]) -> Vec<String> {
        let have = match self.state {
            RotationState::DualRead => &self.acknowledged_by,
            RotationState::Reencrypting | RotationState::RollingBack => &self.writers_switched,
            _ => return Vec::new(),
        };
        consumers
            .iter()
            .filter(|c| !have.contains(*c))
            .cloned()
            .collect()
    }

    /// Whether `switch` may start: DualRead and every consumer acknowledged.
    /// The caller then proves both keys on sample records and calls
    /// [`Rotation::switch`].
    pub fn check_switch(&self, consumers: &[String]) -> Result<(), TransitionError> {
        if self.state != RotationState::DualRead {
            return Err(wrong(
                "switch",
                "dual_read",
                self.state,
                "; run `keyholder rotate activate` first",
            ));
        }
        let waiting = self.waiting_for(consumers);
        if !waiting.is_empty() {
            return Err(TransitionError::ConsumersWaiting { waiting });
        }
        Ok(())
    }

    /// `rotate switch` after both keys passed sample verification:
    /// DualRead -> DualWrite -> Reencrypting. A rollback approved before
    /// only dropped the next version; from here it moves every record back,
    /// a plan nobody approved yet, so earlier approvals lapse.
    pub fn switch(&mut self, consumers: &[String]) -> Result<(), TransitionError> {
        self.check_switch(consumers)?;
        self.state = RotationState::DualWrite;
        self.state = RotationState::Reencrypting;
        self.paused = false;
        self.writers_switched.clear();
        self.rollback_approvals.clear();
        Ok(())
    }

    /// A full scan found no record at the job's `from` version, after every
    /// consumer fetched the keyring writing the job's `to` version.
    /// Reencrypting -> Drained; RollingBack -> Idle on the old version.
    pub fn drained(&mut self, consumers: &[String]) -> Result<(), TransitionError> {
        let waiting = self.waiting_for(consumers);
        if !waiting.is_empty() {
            return Err(TransitionError::WritersWaiting { waiting });
        }
        match self.state {
            RotationState::Reencrypting => {
                self.state = RotationState::Drained;
                self.paused = false;
                Ok(())
            }
            RotationState::RollingBack => {
                *self = Self::idle(self.current);
                Ok(())
            }
            actual => Err(wrong("drained", "reencrypting or rolling_back", actual, "")),
        }
    }

    /// `rotate pause` / `rotate resume`. `resume` in Drained goes back to
    /// Reencrypting for another scan: the way out when a record was written
    /// at the old version after the drain and blocks `retire`.
    pub fn set_paused(&mut self, paused: bool) -> Result<(), TransitionError> {
        match self.state {
            RotationState::Reencrypting | RotationState::RollingBack => {
                self.paused = paused;
                Ok(())
            }
            RotationState::Drained if !paused => {
                self.state = RotationState::Reencrypting;
                self.retire_approvals.clear();
                Ok(())
            }
            actual => Err(wrong(
                if paused { "pause" } else { "resume" },
                "reencrypting or rolling_back",
                actual,
                "; only a running re-encryption can be paused",
            )),
        }
    }
}

#[cfg(test)]
mod tests;
