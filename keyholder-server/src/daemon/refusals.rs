//! The daemon's side of the failed-submission budget
//! ([`crate::submissions`]): admitting a share submission, settling it, and
//! writing each window of refusals as one audit entry and one log line. The
//! same budget bounds the audited refusals of calls to a cluster's node
//! endpoints by principals that are not nodes. And the expiry of unseal
//! progress on time.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::{Daemon, DaemonError};
use crate::principal::Principal;
use crate::submissions::Refused;

/// How often windows of refusals that are over are written.
const SUMMARY_TICK: Duration = Duration::from_secs(5);

impl Daemon {
    /// Whether `principal`'s share submission may be processed now; a
    /// refusal is counted, and only the first of its window is logged.
    pub fn admit_submission(&self, principal: &Principal) -> Result<(), Refused> {
        let verdict = self.submissions.admit(&principal.name);
        if let Err(refused) = &verdict {
            self.metrics.submissions_rate_limited.inc();
            if refused.first_in_window {
                tracing::warn!(
                    principal = %principal.name,
                    retry_after_secs = refused.retry_after_secs,
                    "share submissions refused: too many failed submissions; refusals are counted and written to the audit log once a minute"
                );
            }
        }
        verdict
    }

    /// Records whether `principal`'s processed submission failed (a refused
    /// line, a body that did not parse, a refused request).
    pub fn settle_submission(&self, principal: &Principal, failed: bool) {
        self.submissions.settled(&principal.name, failed);
    }

    /// Whether a refused call of `principal` to a node endpoint may be
    /// audited now: the first refusals are, then one every
    /// [`crate::submissions::FAILURE_REFILL`]; the rest are refused with 429
    /// and counted, one audit entry a window. The caller records each
    /// audited refusal with [`Daemon::node_call_refused`].
    pub fn admit_node_call(&self, principal: &Principal) -> Result<(), Refused> {
        let verdict = self.node_calls.admit(&principal.name);
        if let Err(refused) = &verdict
            && refused.first_in_window
        {
            tracing::warn!(
                principal = %principal.name,
                retry_after_secs = refused.retry_after_secs,
                "node calls refused unaudited: too many from a principal that is not a node; counted and written to the audit log once a minute"
            );
        }
        verdict
    }

    /// Records that a call of `principal` to a node endpoint was refused.
    pub fn node_call_refused(&self, principal: &Principal) {
        self.node_calls.settled(&principal.name, true);
    }

    /// Writes the windows of refusals that are over (every one when `all`)
    /// as one audit entry each: failed share submissions as
    /// `share_submissions_rate_limited`, node calls as
    /// `cluster_calls_rate_limited`.
    pub async fn write_refusals(&self, all: bool) -> Result<(), DaemonError> {
        let budgets = [
            (&self.node_calls, "cluster_calls_rate_limited"),
            (&self.submissions, "share_submissions_rate_limited"),
        ];
        for (budget, action) in budgets {
            for summary in budget.take_summaries(all) {
                let time = |t| humantime::format_rfc3339_millis(t).to_string();
                tracing::info!(
                    principal = %summary.principal,
                    refused = summary.refused,
                    action,
                    "requests refused unaudited in the last window"
                );
                self.audit(
                    &summary.principal,
                    action,
                    json!({
                        "refused": summary.refused,
                        "first": time(summary.first),
                        "last": time(summary.last),
                    }),
                )
                .await?;
            }
        }
        Ok(())
    }
}

/// Writes windows of refusals as they end, and every open one once `stop`
/// turns true.
pub async fn write_refusal_summaries(
    daemon: Arc<Daemon>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(SUMMARY_TICK);
    loop {
        let all = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.wait_for(|s| *s) => true,
        };
        if let Err(e) = daemon.write_refusals(all).await {
            tracing::error!(error = %e, "writing the refused submissions to the audit log failed");
        }
        if all {
            return;
        }
    }
}

/// How often abandoned unseal progress is looked for.
const EXPIRY_TICK: Duration = Duration::from_secs(1);

/// Drops unseal progress past `unseal.progress_ttl` as it expires, until
/// `stop` turns true.
pub async fn expire_unseal_progress(
    daemon: Arc<Daemon>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(EXPIRY_TICK);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if let Err(e) = daemon.expire_unseal_progress().await {
            tracing::error!(error = %e, "auditing expired unseal progress failed");
        }
    }
}
