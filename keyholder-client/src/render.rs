//! Text for people: status, unseal progress, rotation, plans and the audit
//! log. Pure functions from API documents to strings, so they are tested
//! without a daemon. Versions are always shown in numeric order.

use std::fmt::Write as _;

use crypto_core::KeyVersion;
use keyholder_api::{
    AuditEntry, ClusterStatus, RetirePlan, RollbackPlan, RotationState, RotationStatus, Status,
    UnsealProgress, UnsealResponse, UsageLevel, VersionState,
};

/// The first 8 hex characters of a KCV (what logs and status show).
pub fn kcv_prefix(kcv: &str) -> &str {
    kcv.get(..8).unwrap_or(kcv)
}

fn join_versions(versions: impl IntoIterator<Item = KeyVersion>) -> String {
    let mut sorted: Vec<KeyVersion> = versions.into_iter().collect();
    sorted.sort();
    sorted.dedup();
    let shown: Vec<String> = sorted.iter().map(ToString::to_string).collect();
    if shown.is_empty() {
        "none".to_owned()
    } else {
        shown.join(", ")
    }
}

fn version_state(state: VersionState) -> &'static str {
    match state {
        VersionState::Prepared => "prepared",
        VersionState::SharesVerified => "shares_verified",
        VersionState::Active => "active",
        VersionState::Retired => "retired",
    }
}

/// One line of unseal progress: `v10 1/2 (alice)`.
pub fn progress_line(progress: &UnsealProgress) -> String {
    let mut line = format!("{} {}/{}", progress.version, progress.have, progress.need);
    if !progress.from.is_empty() {
        let _ = write!(line, " ({})", progress.from.join(", "));
    }
    line
}

/// `keyholder status` as text.
pub fn status(status: &Status) -> String {
    let mut out = String::new();
    let seal = if status.sealed { "sealed" } else { "unsealed" };
    let _ = writeln!(out, "keyring {}: {seal}", status.keyring);
    let mut versions = status.versions.clone();
    versions.sort_by_key(|v| v.version);
    let _ = writeln!(
        out,
        "versions: {}",
        join_versions(versions.iter().map(|v| v.version))
    );
    for v in &versions {
        let loaded = if v.loaded { "loaded" } else { "not loaded" };
        let _ = writeln!(
            out,
            "  {:<5} {:<16} kcv {}  {:<10} {} encryptions",
            v.version.to_string(),
            version_state(v.state),
            kcv_prefix(&v.kcv),
            loaded,
            v.encryptions
        );
        let alarm = match v.usage {
            UsageLevel::Ok => continue,
            UsageLevel::Warning => "WARNING",
            UsageLevel::Exhausted => "EXHAUSTED",
        };
        let message = v
            .usage_message
            .as_deref()
            .unwrap_or("past its usage limit: rotate now (keyholder rotate prepare)");
        let _ = writeln!(out, "        {alarm}: {message}");
    }
    match status.write_version {
        Some(w) => {
            let _ = writeln!(out, "write version: {w}");
        }
        None => {
            let _ = writeln!(out, "write version: none (sealed)");
        }
    }
    if !status.unseal_progress.is_empty() {
        let mut progress = status.unseal_progress.clone();
        progress.sort_by_key(|p| p.version);
        let lines: Vec<String> = progress.iter().map(progress_line).collect();
        let _ = writeln!(out, "unseal progress: {}", lines.join(", "));
    } else if status.sealed {
        let _ = writeln!(
            out,
            "unseal progress: no shares yet; keyholders run `keyholder unseal`"
        );
    }
    match &status.rotation {
        Some(rotation) => out.push_str(&self::rotation(rotation)),
        None => out.push_str("rotation: none\n"),
    }
    if let Some(cluster) = &status.cluster {
        out.push_str(&self::cluster(cluster));
    }
    out
}

fn seconds(ms: u64) -> String {
    format!("{:.1}s", ms as f64 / 1000.0)
}

/// The cluster block of `status`: the answering node, the leader, the
/// epoch and lease age, then each node's last heartbeat.
pub fn cluster(cluster: &ClusterStatus) -> String {
    let mut out = String::new();
    let leader = match (&cluster.leader, cluster.lease_age_ms) {
        (Some(leader), Some(age)) => format!("{leader} (lease held {})", seconds(age)),
        (Some(leader), None) => leader.clone(),
        (None, _) => "none (a lease is being taken over)".to_owned(),
    };
    let _ = writeln!(
        out,
        "cluster: answered by {}; leader {leader}; epoch {}",
        cluster.node, cluster.epoch
    );
    for node in &cluster.nodes {
        let seal = match node.sealed {
            Some(true) => "sealed",
            Some(false) => "unsealed",
            None => "unknown",
        };
        let beat = node.heartbeat_age_ms.map_or_else(
            || "never seen".to_owned(),
            |ms| format!("heartbeat {} ago", seconds(ms)),
        );
        let role = if cluster.leader.as_deref() == Some(node.name.as_str()) {
            " leader"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "  {:<12} {:<24} {:<8} {beat}{role}",
            node.name, node.addr, seal
        );
    }
    out
}

fn names(list: &[String]) -> String {
    if list.is_empty() {
        "nobody yet".to_owned()
    } else {
        list.join(", ")
    }
}

/// The rotation block of `status` and of the `rotate` commands.
pub fn rotation(r: &RotationStatus) -> String {
    let mut out = String::new();
    let mut head = format!("rotation: {}", r.state);
    match (r.from, r.to) {
        (Some(from), Some(to)) => {
            let _ = write!(head, " {from} -> {to}");
        }
        (Some(v), None) | (None, Some(v)) => {
            let _ = write!(head, " {v}");
        }
        (None, None) => {}
    }
    if r.paused {
        head.push_str(" (paused)");
    }
    let _ = writeln!(out, "{head}");
    let moving = matches!(
        r.state,
        RotationState::Reencrypting | RotationState::RollingBack | RotationState::Drained
    );
    let job_running = matches!(
        r.state,
        RotationState::Reencrypting | RotationState::RollingBack
    );
    if job_running && r.rows_done == 0 && r.rows_remaining == 0 {
        // The worker has not counted the records yet (right after `switch`
        // or a rollback): "0 remaining (100%)" would claim it is done.
        let _ = writeln!(out, "  rows: counting...");
    } else if moving || r.rows_done > 0 || r.rows_remaining > 0 {
        let total = r.rows_done + r.rows_remaining;
        let percent = if total == 0 {
            100.0
        } else {
            r.rows_done as f64 * 100.0 / total as f64
        };
        let _ = writeln!(
            out,
            "  rows: {} done, {} remaining ({percent:.1}%), {} conflicts",
            r.rows_done, r.rows_remaining, r.conflicts
        );
        let eta = r
            .eta_seconds
            .map(|s| humantime::format_duration(std::time::Duration::from_secs(s)).to_string())
            .unwrap_or_else(|| "unknown".to_owned());
        let _ = writeln!(out, "  rate: {:.0} rows/s, eta {eta}", r.rows_per_sec);
    }
    let limit = if r.rows_per_sec_limit == 0 {
        "unlimited rows/s".to_owned()
    } else {
        format!("{} rows/s", r.rows_per_sec_limit)
    };
    let _ = writeln!(out, "  throttle: {limit}, batch size {}", r.batch_size);
    if !matches!(r.state, RotationState::Idle) {
        let _ = writeln!(out, "  shares verified by: {}", names(&r.verified_by));
        if !r.acknowledged_by.is_empty() || !r.waiting_for.is_empty() {
            let _ = writeln!(
                out,
                "  consumers acknowledged: {}; waiting for: {}",
                names(&r.acknowledged_by),
                if r.waiting_for.is_empty() {
                    "nobody".to_owned()
                } else {
                    r.waiting_for.join(", ")
                }
            );
        }
        if !r.retire_approvals.is_empty() {
            let _ = writeln!(out, "  retire approvals: {}", r.retire_approvals.join(", "));
        }
    }
    if r.retries > 0 {
        let now = if r.retrying { ", retrying now" } else { "" };
        let last = r.last_transient_error.as_deref().unwrap_or("unknown");
        let _ = writeln!(out, "  database retries: {}{now}; last: {last}", r.retries);
    }
    if let Some(error) = &r.last_error {
        let _ = writeln!(out, "  last error: {error}");
    }
    out
}

/// The share of the time between two polls that the running pass held its
/// locks in the targets, in percent, from two readings of
/// `RotationStatus.locked_seconds` taken `elapsed` apart; summed over
/// targets, so two busy targets can pass 100. `None` without a usable
/// earlier reading: the counter went back (the daemon restarted, or another
/// node took the job over) or no time passed.
pub fn locked_share(before: f64, after: f64, elapsed: std::time::Duration) -> Option<f64> {
    let elapsed = elapsed.as_secs_f64();
    (after >= before && elapsed > 0.0).then(|| (after - before) * 100.0 / elapsed)
}

/// The outcome of `unseal` or `share verify`: each share, then each version.
/// `inputs` names where each submitted share came from (by position) and
/// `thresholds` gives each submitted version's threshold, from the lines.
pub fn unseal(
    response: &UnsealResponse,
    inputs: &[String],
    thresholds: &[(KeyVersion, u8)],
) -> String {
    let mut out = String::new();
    for outcome in &response.outcomes {
        let what = match (outcome.version, outcome.index) {
            (Some(v), Some(i)) => format!("{v} index {i}"),
            (Some(v), None) => v.to_string(),
            _ => format!("share {}", outcome.position),
        };
        let from = inputs
            .get(outcome.position.wrapping_sub(1))
            .map(|s| format!(" from {s}"))
            .unwrap_or_default();
        if outcome.accepted {
            let note = outcome
                .reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default();
            let _ = writeln!(out, "{what}{from}: accepted{note}");
        } else if not_needed(outcome) {
            let reason = outcome.reason.as_deref().unwrap_or("no reason given");
            let _ = writeln!(out, "{what}{from}: not needed: {reason}");
        } else {
            let reason = outcome.reason.as_deref().unwrap_or("no reason given");
            let _ = writeln!(out, "{what}{from}: REFUSED: {reason}");
        }
    }
    let mut versions: Vec<KeyVersion> = thresholds.iter().map(|(v, _)| *v).collect();
    versions.extend(response.progress.iter().map(|p| p.version));
    versions.sort();
    versions.dedup();
    for version in versions {
        if response.loaded.contains(&version) {
            let need = thresholds
                .iter()
                .find(|(v, _)| *v == version)
                .map(|(_, t)| *t);
            match need {
                Some(t) => {
                    let _ = writeln!(out, "{version} {t}/{t} rebuilt");
                }
                None => {
                    let _ = writeln!(out, "{version} rebuilt");
                }
            }
        } else if let Some(p) = response.progress.iter().find(|p| p.version == version) {
            let _ = writeln!(out, "{}", progress_line(p));
        } else {
            let _ = writeln!(out, "{version} no share counted");
        }
    }
    out
}

/// A share refused only because the daemon was already unsealed: nothing is
/// wrong with it (it was not even read), and the keyholder has nothing to do.
pub fn not_needed(outcome: &keyholder_api::ShareOutcome) -> bool {
    !outcome.accepted && outcome.refusal.as_deref() == Some("already_unsealed")
}

/// The keyring the daemon holds after unsealing: versions in order, which
/// one writes, KCV prefixes.
pub fn loaded_keyring(status: &Status) -> String {
    let mut out = String::new();
    let mut versions: Vec<_> = status.versions.iter().filter(|v| v.loaded).collect();
    versions.sort_by_key(|v| v.version);
    let write = status
        .write_version
        .map(|w| w.to_string())
        .unwrap_or_else(|| "none".to_owned());
    let _ = writeln!(
        out,
        "unsealed: keyring {} holds {}; write version {write}",
        status.keyring,
        join_versions(versions.iter().map(|v| v.version))
    );
    for v in versions {
        let _ = writeln!(
            out,
            "  {:<5} kcv {}",
            v.version.to_string(),
            kcv_prefix(&v.kcv)
        );
    }
    out
}

/// A retire plan or its result.
pub fn retire_plan(plan: &RetirePlan) -> String {
    let mut out = String::new();
    let head = if plan.executed {
        format!("retire {}: done, it left the keyring", plan.version)
    } else {
        format!("retire {}: plan", plan.version)
    };
    let _ = writeln!(out, "{head}");
    let _ = writeln!(
        out,
        "  records still at {}: {}",
        plan.version, plan.records_remaining
    );
    let _ = writeln!(
        out,
        "  approvals: {} ({} of {} distinct operators)",
        names(&plan.approvals),
        plan.approvals.len(),
        plan.approvals_needed
    );
    steps(&mut out, &plan.steps);
    out
}

/// A rollback plan or its start.
pub fn rollback_plan(plan: &RollbackPlan) -> String {
    let mut out = String::new();
    let head = if plan.executed {
        format!("rollback {} -> {}: started", plan.from, plan.to)
    } else {
        format!("rollback {} -> {}: plan", plan.from, plan.to)
    };
    let _ = writeln!(out, "{head}");
    let _ = writeln!(
        out,
        "  records at {} to move back to {}: {}",
        plan.from, plan.to, plan.records_to_move
    );
    let _ = writeln!(
        out,
        "  approvals: {} ({} of {} distinct operators)",
        names(&plan.approvals),
        plan.approvals.len(),
        plan.approvals_needed
    );
    steps(&mut out, &plan.steps);
    out
}

fn steps(out: &mut String, steps: &[String]) {
    for (n, step) in steps.iter().enumerate() {
        let _ = writeln!(out, "  {}. {step}", n + 1);
    }
}

/// One audit entry per line.
pub fn audit(entries: &[AuditEntry]) -> String {
    let mut out = String::new();
    for e in entries {
        let _ = writeln!(
            out,
            "{:>5} {} {:<12} {:<28} {}",
            e.seq, e.time, e.actor, e.action, e.detail
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyholder_api::{ShareOutcome, VersionStatus};

    fn v(n: u32) -> KeyVersion {
        KeyVersion::new(n).unwrap()
    }

    #[test]
    fn the_cluster_block_names_the_leader_and_each_heartbeat() {
        let node =
            |name: &str, sealed: Option<bool>, age: Option<u64>| keyholder_api::ClusterNode {
                name: name.to_owned(),
                addr: format!("{name}.internal:8443"),
                sealed,
                heartbeat_age_ms: age,
            };
        let text = cluster(&ClusterStatus {
            node: "kh-b".to_owned(),
            leader: Some("kh-a".to_owned()),
            epoch: 3,
            lease_age_ms: Some(81_234),
            nodes: vec![
                node("kh-a", Some(false), Some(412)),
                node("kh-b", Some(true), Some(1_380)),
                node("kh-c", None, None),
            ],
        });
        assert_eq!(
            text,
            "cluster: answered by kh-b; leader kh-a (lease held 81.2s); epoch 3\n\
             \x20 kh-a         kh-a.internal:8443       unsealed heartbeat 0.4s ago leader\n\
             \x20 kh-b         kh-b.internal:8443       sealed   heartbeat 1.4s ago\n\
             \x20 kh-c         kh-c.internal:8443       unknown  never seen\n"
        );
    }

    fn version(n: u32, kcv: &str) -> VersionStatus {
        VersionStatus {
            version: v(n),
            state: VersionState::Active,
            kcv: kcv.to_owned(),
            encryptions: u64::from(n) * 100,
            loaded: true,
            usage: UsageLevel::Ok,
            usage_message: None,
        }
    }

    fn sample() -> Status {
        Status {
            keyring: "orders".parse().unwrap(),
            sealed: false,
            // Deliberately out of order: rendering must not trust the input.
            versions: vec![
                version(10, "a07e0000000000000000000000000000"),
                version(9, "5f1c0000000000000000000000000000"),
            ],
            write_version: Some(v(10)),
            unseal_progress: vec![UnsealProgress {
                version: v(10),
                have: 1,
                need: 2,
                from: vec!["alice".into()],
            }],
            rotation: None,
            certificates: None,
            cluster: None,
            unaudited: None,
        }
    }

    #[test]
    fn status_lists_versions_numerically() {
        let text = status(&sample());
        assert_eq!(
            text,
            "keyring orders: unsealed\n\
             versions: v9, v10\n\
             \x20 v9    active           kcv 5f1c0000  loaded     900 encryptions\n\
             \x20 v10   active           kcv a07e0000  loaded     1000 encryptions\n\
             write version: v10\n\
             unseal progress: v10 1/2 (alice)\n\
             rotation: none\n"
        );
        assert!(text.find("v9 ").unwrap() < text.find("v10 ").unwrap());
    }

    #[test]
    fn status_says_to_rotate_a_version_past_its_usage_limits() {
        let mut doc = sample();
        doc.versions[0].usage = UsageLevel::Exhausted;
        doc.versions[0].usage_message =
            Some("v10 reached its limit: rotate to a new version now".into());
        doc.versions[1].usage = UsageLevel::Warning;
        let text = status(&doc);
        assert!(
            text.contains(
                "loaded     900 encryptions\n        WARNING: past its usage limit: rotate now (keyholder rotate prepare)\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "loaded     1000 encryptions\n        EXHAUSTED: v10 reached its limit: rotate to a new version now\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn unseal_reports_each_share_and_each_version() {
        let response = UnsealResponse {
            sealed: true,
            outcomes: vec![
                ShareOutcome {
                    position: 1,
                    version: Some(v(10)),
                    index: Some(2),
                    accepted: true,
                    reason: None,
                    refusal: None,
                },
                ShareOutcome {
                    position: 2,
                    version: Some(v(9)),
                    index: Some(2),
                    accepted: false,
                    reason: Some("share index 2 does not match its fingerprint".into()),
                    refusal: Some("fingerprint_mismatch".into()),
                },
            ],
            progress: vec![UnsealProgress {
                version: v(9),
                have: 1,
                need: 2,
                from: vec!["alice".into()],
            }],
            loaded: vec![v(10)],
        };
        let text = unseal(
            &response,
            &["bob.age".into(), "bob.age".into()],
            &[(v(10), 2), (v(9), 2)],
        );
        assert_eq!(
            text,
            "v10 index 2 from bob.age: accepted\n\
             v9 index 2 from bob.age: REFUSED: share index 2 does not match its fingerprint\n\
             v9 1/2 (alice)\n\
             v10 2/2 rebuilt\n"
        );
    }

    #[test]
    fn locked_share_is_the_difference_over_the_time_between_polls() {
        let second = std::time::Duration::from_secs(1);
        assert_eq!(locked_share(2.0, 2.25, second), Some(25.0));
        assert_eq!(locked_share(2.0, 2.0, second * 2), Some(0.0));
        // Two targets both busy for the whole interval.
        assert_eq!(locked_share(0.0, 3.0, second * 2), Some(150.0));
        // The counter went back (a restart, another node): no figure.
        assert_eq!(locked_share(5.0, 0.5, second), None);
        assert_eq!(locked_share(1.0, 1.0, std::time::Duration::ZERO), None);
    }

    #[test]
    fn rotation_shows_progress_rate_and_eta() {
        let r = RotationStatus {
            state: RotationState::Reencrypting,
            from: Some(v(9)),
            to: Some(v(10)),
            rows_done: 120_000,
            rows_remaining: 880_000,
            conflicts: 3,
            rows_per_sec: 41_000.0,
            eta_seconds: Some(21),
            paused: false,
            verified_by: vec!["alice".into(), "bob".into()],
            acknowledged_by: vec!["db1".into()],
            waiting_for: vec![],
            retire_approvals: vec![],
            rows_per_sec_limit: 0,
            batch_size: 1000,
            last_error: None,
            retries: 0,
            last_transient_error: None,
            retrying: false,
            locked_seconds: 0.0,
        };
        assert_eq!(
            rotation(&r),
            "rotation: reencrypting v9 -> v10\n\
             \x20 rows: 120000 done, 880000 remaining (12.0%), 3 conflicts\n\
             \x20 rate: 41000 rows/s, eta 21s\n\
             \x20 throttle: unlimited rows/s, batch size 1000\n\
             \x20 shares verified by: alice, bob\n\
             \x20 consumers acknowledged: db1; waiting for: nobody\n"
        );
    }

    #[test]
    fn a_job_not_counted_yet_says_so_instead_of_100_percent() {
        let mut r = RotationStatus {
            state: RotationState::Reencrypting,
            from: Some(v(9)),
            to: Some(v(10)),
            rows_done: 0,
            rows_remaining: 0,
            conflicts: 0,
            rows_per_sec: 0.0,
            eta_seconds: None,
            paused: false,
            verified_by: vec!["alice".into(), "bob".into()],
            acknowledged_by: vec!["db1".into()],
            waiting_for: vec![],
            retire_approvals: vec![],
            rows_per_sec_limit: 0,
            batch_size: 1000,
            last_error: None,
            retries: 0,
            last_transient_error: None,
            retrying: false,
            locked_seconds: 0.0,
        };
        let text = rotation(&r);
        assert!(text.contains("\n  rows: counting...\n"), "{text}");
        assert!(!text.contains("100.0%"), "{text}");
        r.state = RotationState::Drained;
        assert!(
            rotation(&r).contains("rows: 0 done, 0 remaining (100.0%)"),
            "drained really is done"
        );
    }

    #[test]
    fn rotation_shows_the_workers_database_retries() {
        let r = RotationStatus {
            state: RotationState::Reencrypting,
            from: Some(v(9)),
            to: Some(v(10)),
            rows_done: 0,
            rows_remaining: 10,
            conflicts: 0,
            rows_per_sec: 0.0,
            eta_seconds: None,
            paused: false,
            verified_by: vec![],
            acknowledged_by: vec![],
            waiting_for: vec![],
            retire_approvals: vec![],
            rows_per_sec_limit: 0,
            batch_size: 1000,
            last_error: None,
            retries: 3,
            last_transient_error: Some(
                "target `orders`: postgres connect failed: error connecting to server".into(),
            ),
            retrying: true,
            locked_seconds: 0.0,
        };
        assert!(rotation(&r).ends_with(
            "  database retries: 3, retrying now; last: target `orders`: postgres connect failed: error connecting to server\n"
        ), "{}", rotation(&r));
    }
}
