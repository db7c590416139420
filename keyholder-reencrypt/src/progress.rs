//! Progress: the snapshot of a pass the daemon shows in status and metrics.
//!
//! Owns the [`Progress`] struct and the rate / ETA arithmetic. It holds counts
//! and positions only; it must never hold a stored value or a key.

use std::collections::{BTreeMap, VecDeque};

use crypto_core::KeyVersion;
use serde::Serialize;
use tokio::time::Instant;

/// Where a pass is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Loading the checkpoint and counting records.
    Starting,
    /// The main scan in primary-key order.
    Scanning,
    /// A sweep over records still at the source version (conflicts, late writes).
    Sweeping,
    /// The final full scan and the end invariants.
    Verifying,
    /// No record is left at the source version.
    Drained,
    /// Stopped by the operator; the checkpoint stays.
    Aborted,
    /// Stopped by an error; the checkpoint stays.
    Failed,
}

/// Records at one version (a list entry, so JSON never keys objects by version).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct VersionCount {
    /// The version.
    pub version: KeyVersion,
    /// Its records.
    pub records: u64,
}

/// A snapshot of a pass, published after every batch.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Progress {
    /// The target's name.
    pub target: String,
    /// The version records move away from.
    pub from: KeyVersion,
    /// The version records move to.
    pub to: KeyVersion,
    /// Where the pass is.
    pub phase: Phase,
    /// Records moved so far (over all runs of this pass). A record is one
    /// encrypted value of one row.
    pub records_done: u64,
    /// Records still at `from` (estimated from the inventory taken when this
    /// run started; exact after the final check).
    pub records_remaining: u64,
    /// Records per version, in version order (the same estimate).
    pub versions: Vec<VersionCount>,
    /// Compare-and-swap conflicts so far.
    pub conflicts: u64,
    /// Records at `from` that do not decrypt, left untouched (found by the
    /// latest full scan, or by the running one when it has found more).
    pub undecryptable: u64,
    /// Batches committed so far.
    pub batches: u64,
    /// 0 during the main scan, then the sweep number.
    pub sweep: u32,
    /// Records per second over the last batches.
    pub rows_per_sec: f64,
    /// Seconds to go at that rate, when there is a rate.
    pub eta_seconds: Option<u64>,
    /// Paused by the operator.
    pub paused: bool,
    /// Waiting for PostgreSQL replicas to catch up.
    pub waiting_for_replicas: bool,
    /// The batch size in use (after adaptation).
    pub batch_size: u32,
    /// Seconds this run's batches held what they locked in the target
    /// ([`SwapOutcome::locked`](crate::store::SwapOutcome::locked)). Its
    /// rate is the share of the time the pass held them: on SQLite, the
    /// share of the time the application's writers find the database
    /// locked and wait.
    pub locked_seconds: f64,
}

impl Progress {
    /// The snapshot before anything is known.
    pub fn starting(target: &str, from: KeyVersion, to: KeyVersion, batch_size: u32) -> Self {
        Self {
            target: target.to_owned(),
            from,
            to,
            phase: Phase::Starting,
            records_done: 0,
            records_remaining: 0,
            versions: Vec::new(),
            conflicts: 0,
            undecryptable: 0,
            batches: 0,
            sweep: 0,
            rows_per_sec: 0.0,
            eta_seconds: None,
            paused: false,
            waiting_for_replicas: false,
            batch_size,
            locked_seconds: 0.0,
        }
    }
}

/// Estimates per version: the inventory at the start of this run, with the
/// records moved since then taken from `from` and given to `to`.
pub(crate) fn estimate(
    start: &BTreeMap<KeyVersion, u64>,
    from: KeyVersion,
    to: KeyVersion,
    moved: u64,
) -> (u64, Vec<VersionCount>) {
    let mut versions = start.clone();
    let at_from = versions.get(&from).copied().unwrap_or(0);
    let moved = moved.min(at_from);
    versions.insert(from, at_from - moved);
    *versions.entry(to).or_insert(0) += moved;
    let list = versions
        .into_iter()
        .map(|(version, records)| VersionCount { version, records })
        .collect();
    (at_from - moved, list)
}

/// The rate over a window of recent batches.
#[derive(Debug, Default)]
pub(crate) struct RateWindow {
    points: VecDeque<(Instant, u64)>,
}

impl RateWindow {
    const LEN: usize = 20;

    /// Records the cumulative count at `now`.
    pub(crate) fn record(&mut self, now: Instant, cumulative: u64) {
        if self.points.len() == Self::LEN {
            self.points.pop_front();
        }
        self.points.push_back((now, cumulative));
    }

    /// Records per second over the window (0 until two points).
    pub(crate) fn rate(&self) -> f64 {
        match (self.points.front(), self.points.back()) {
            (Some((t0, n0)), Some((t1, n1))) if t1 > t0 => {
                (n1 - n0) as f64 / t1.duration_since(*t0).as_secs_f64()
            }
            _ => 0.0,
        }
    }
}

/// Seconds to move `remaining` records at `rate`.
pub(crate) fn eta(remaining: u64, rate: f64) -> Option<u64> {
    if remaining == 0 {
        Some(0)
    } else if rate > 0.0 {
        Some((remaining as f64 / rate).ceil() as u64)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn rate_and_eta_follow_the_window() {
        let mut window = RateWindow::default();
        let mut done = 0;
        for _ in 0..5 {
            window.record(Instant::now(), done);
            tokio::time::sleep(Duration::from_millis(500)).await;
            done += 1000;
        }
        assert_eq!(window.rate(), 2000.0);
        assert_eq!(eta(10_000, window.rate()), Some(5));
        assert_eq!(eta(0, 0.0), Some(0));
        assert_eq!(eta(1, 0.0), None);
    }

    #[test]
    fn estimate_moves_counts_between_versions() {
        let v = |n| KeyVersion::new(n).unwrap();
        let start = BTreeMap::from([(v(8), 5), (v(9), 100)]);
        let (remaining, versions) = estimate(&start, v(9), v(10), 40);
        assert_eq!(remaining, 60);
        assert_eq!(
            versions,
            vec![
                VersionCount {
                    version: v(8),
                    records: 5
                },
                VersionCount {
                    version: v(9),
                    records: 60
                },
                VersionCount {
                    version: v(10),
                    records: 40
                },
            ]
        );
    }
}
