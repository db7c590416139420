//! The destructive steps, retire and rollback: each answers its plan first,
//! takes two distinct operators' `--execute` (the machine's approvals) and
//! copies the state store aside before it acts. Retire also waits for
//! `rotation.min_verified` keyholders to have verified the new share.

use crypto_core::KeyVersion;
use keyholder_api::{RetirePlan, RollbackPlan, RotationState, VersionState};
use serde_json::json;

use super::{RotationError, Rotator, Step, worker};
use crate::principal::Principal;
use crate::rotation::{APPROVALS_NEEDED, Outcome, TransitionError};

impl Rotator {
    /// `rotate retire VERSION [--execute]`: after a fresh full scan.
    pub(super) async fn retire(
        &mut self,
        operator: &Principal,
        version: KeyVersion,
        execute: bool,
    ) -> Result<RetirePlan, RotationError> {
        if let (Some(next), true) = (self.machine.next(), version == self.machine.current()) {
            let job = crate::rotation::Job {
                from: version,
                to: next,
            };
            let gone = worker::gone_targets(&self.daemon, job).await?;
            if !gone.is_empty() {
                return Err(RotationError::TargetsGone {
                    version,
                    retiring: true,
                    places: gone,
                });
            }
        }
        let per_target = worker::counts_at(&self.daemon, version).await?;
        let remaining = per_target.iter().map(|(_, n)| n).sum();
        let quorum = self.quorum();
        let mut next = self.machine.clone();
        self.drop_lapsed_approvals(&mut next);
        let outcome = next
            .retire(version, &operator.name, remaining, execute, &quorum)
            .map_err(|e| match e {
                TransitionError::RecordsRemain { version, remaining } => {
                    RotationError::RecordsRemain {
                        version,
                        remaining,
                        targets: per_target.iter().filter(|(_, n)| *n > 0).cloned().collect(),
                    }
                }
                e => e.into(),
            })?;
        let scanned: Vec<String> = per_target
            .iter()
            .map(|(t, n)| format!("target {t}: {n}"))
            .collect();
        let steps = vec![
            format!(
                "a full scan found {remaining} record(s) at {version} ({})",
                scanned.join(", ")
            ),
            format!(
                "{} of {} keyholder(s) verified their share of {} ({} needed, rotation.min_verified)",
                self.machine.verified_by().count(),
                quorum.keyholders.len(),
                self.machine.next().map(|v| v.to_string()).unwrap_or_default(),
                quorum.min_verified
            ),
            format!("two distinct operators run `keyholder rotate retire {version} --execute`"),
            format!(
                "{version} leaves the keyring handed to consumers; its key is dropped from memory"
            ),
            format!("{version}'s KCV, fingerprints and audit history stay in the state store"),
            "the state store is copied aside before the version is retired (SQLite: state_dir/snapshots)".to_owned(),
        ];
        let executed = outcome == Outcome::Executed;
        let approvals = next.retire_approvals().map(str::to_owned).collect();
        let mut detail = json!({"version": version.number(), "records_remaining": remaining});
        if executed {
            detail["snapshot"] = json!(self.snapshot(&format!("retire-{version}")).await?);
        }
        if outcome != Outcome::Planned {
            let states = if executed {
                vec![(version, VersionState::Retired)]
            } else {
                Vec::new()
            };
            let step = Step {
                actor: &operator.name,
                action: if executed {
                    "version_retired"
                } else {
                    "retire_approved"
                },
                detail,
                version_states: states,
                new_version: None,
            };
            self.commit(next, step).await?;
            if executed {
                self.daemon.vault().forget(version);
            }
        }
        Ok(RetirePlan {
            version,
            records_remaining: remaining,
            approvals,
            approvals_needed: APPROVALS_NEEDED as u8,
            executed,
            steps,
        })
    }

    /// `rotate rollback [--execute]`: the plan, one operator's approval, or
    /// (the second distinct operator's) the start of the rollback. A pause
    /// stays in force through it.
    pub(super) async fn rollback(
        &mut self,
        operator: &Principal,
        execute: bool,
    ) -> Result<RollbackPlan, RotationError> {
        let (from, to) = self.machine.check_rollback()?;
        let moves = self.machine.rollback_moves_records();
        let records_to_move = if moves {
            worker::count_at(&self.daemon, from).await?
        } else {
            0
        };
        let mut steps = vec![
            "two distinct operators run `keyholder rotate rollback --execute`".to_owned(),
            "the state store is copied aside first (SQLite: state_dir/snapshots)".to_owned(),
            format!("{to} writes again"),
        ];
        if moves {
            steps.push(format!(
                "the worker moves {records_to_move} record(s) from {from} back to {to}, with the same checks as the forward path"
            ));
        }
        if self.machine.paused() {
            steps.push(
                "the rotation is paused: the worker stays paused until `keyholder rotate resume`"
                    .to_owned(),
            );
        }
        steps.push(format!("{from} leaves the keyring and its key is dropped"));
        let mut next = self.machine.clone();
        self.drop_lapsed_approvals(&mut next);
        let mut approvals: std::collections::BTreeSet<String> =
            next.rollback_approvals().map(str::to_owned).collect();
        let outcome = next.rollback(&operator.name, execute)?;
        if outcome != Outcome::Planned {
            approvals.insert(operator.name.clone());
        }
        let executed = outcome == Outcome::Executed;
        match outcome {
            Outcome::Planned => {}
            Outcome::Approved { .. } => {
                let step = Step {
                    actor: &operator.name,
                    action: "rollback_approved",
                    detail: json!({"from": from.number(), "to": to.number()}),
                    version_states: Vec::new(),
                    new_version: None,
                };
                self.commit(next, step).await?;
            }
            Outcome::Executed => {
                if moves {
                    self.require_unsealed()?;
                }
                let snapshot = self.snapshot(&format!("rollback-{from}")).await?;
                self.stop_worker().await;
                let states = if next.state() == RotationState::Idle {
                    vec![(from, VersionState::Retired)]
                } else {
                    Vec::new()
                };
                if let Some(job) = next.job() {
                    worker::reset_checkpoints(&self.daemon, job).await?;
                }
                let step = Step {
                    actor: &operator.name,
                    action: "rotation_rolled_back",
                    detail: json!({
                        "from": from.number(),
                        "to": to.number(),
                        "records_to_move": records_to_move,
                        "approvals": approvals,
                        "snapshot": snapshot,
                    }),
                    version_states: states,
                    new_version: None,
                };
                self.commit(next, step).await?;
                if self.machine.state() == RotationState::Idle {
                    self.new_shares.clear();
                    self.daemon.vault().forget(from);
                }
                self.start_worker();
            }
        }
        Ok(RollbackPlan {
            from,
            to,
            records_to_move,
            approvals: approvals.into_iter().collect(),
            approvals_needed: APPROVALS_NEEDED as u8,
            executed,
            steps,
        })
    }

    /// Drops from `next` the approvals of operators the config in force no
    /// longer names as operators (a reload removed them): they count only
    /// while they could be given again. Said in the log; the audit has each
    /// approval and the reload that removed its operator.
    fn drop_lapsed_approvals(&self, next: &mut crate::rotation::Rotation) {
        let config = self.daemon.config();
        let lapsed = next.drop_lapsed_approvals(|name| {
            config
                .principal(name)
                .is_some_and(|p| p.has(crate::principal::Role::Operator))
        });
        if !lapsed.is_empty() {
            tracing::warn!(
                operators = ?lapsed,
                "approvals lapse: these operators are no longer configured as operators"
            );
        }
    }

    /// Copies the state store aside before a destructive step (the
    /// Scalingo lesson): the copy holds what the store holds, no key.
    async fn snapshot(&self, label: &str) -> Result<Option<String>, RotationError> {
        let keep = self.daemon.config().rotation.keep_snapshots;
        let path = self.daemon.store().snapshot(label, keep).await?;
        if let Some(path) = &path {
            tracing::info!(snapshot = %path, label, "state store snapshot taken");
        }
        Ok(path)
    }
}
