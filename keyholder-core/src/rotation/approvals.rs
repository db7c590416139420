//! The two-operator rule of the destructive steps (retire, rollback): each
//! distinct operator's `--execute` is recorded, and the second one performs
//! the step. A plan (no `--execute`) never counts.

use std::collections::BTreeSet;

use crypto_core::KeyVersion;
use serde::{Deserialize, Serialize};

use super::TransitionError;

/// Distinct operators needed to perform a destructive step.
pub const APPROVALS_NEEDED: usize = 2;

/// A step no single operator may take alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destructive {
    /// Retiring the old version: its key leaves the keyring for good.
    Retire,
    /// Rolling back: the new version is dropped, records move back.
    Rollback,
}

impl Destructive {
    /// The step as a gerund, for messages ("retiring v9").
    pub fn gerund(self) -> &'static str {
        match self {
            Self::Retire => "retiring",
            Self::Rollback => "rolling back",
        }
    }
}

/// The outcome of a request for a destructive step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Only a plan: nothing changed.
    Planned,
    /// The approval was recorded; another operator must confirm.
    Approved {
        /// Approvals so far.
        approvals: usize,
    },
    /// The step was performed.
    Executed,
}

/// The operators who approved one step, persisted with the rotation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub(super) struct Approvals(BTreeSet<String>);

impl Approvals {
    /// Refuses an operator who approved already.
    pub(super) fn check(
        &self,
        step: Destructive,
        operator: &str,
        version: KeyVersion,
    ) -> Result<(), TransitionError> {
        if self.0.contains(operator) {
            return Err(TransitionError::SameOperator {
                operator: operator.to_owned(),
                step,
                version,
            });
        }
        Ok(())
    }

    /// Records `operator`'s approval; [`Outcome::Executed`] when it is the
    /// last one needed (the caller then performs the step).
    pub(super) fn approve(
        &mut self,
        step: Destructive,
        operator: &str,
        version: KeyVersion,
    ) -> Result<Outcome, TransitionError> {
        self.check(step, operator, version)?;
        self.0.insert(operator.to_owned());
        if self.0.len() >= APPROVALS_NEEDED {
            return Ok(Outcome::Executed);
        }
        Ok(Outcome::Approved {
            approvals: self.0.len(),
        })
    }

    pub(super) fn contains(&self, operator: &str) -> bool {
        self.0.contains(operator)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }

    pub(super) fn clear(&mut self) {
        self.0.clear();
    }

    /// Drops the approvals of operators `keep` refuses; the names dropped.
    pub(super) fn retain(&mut self, keep: impl Fn(&str) -> bool) -> Vec<String> {
        let lapsed: Vec<String> = self.0.iter().filter(|name| !keep(name)).cloned().collect();
        for name in &lapsed {
            self.0.remove(name);
        }
        lapsed
    }
}
