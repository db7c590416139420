//! The running state of one pass: scans, sweeps, throttling, pause / abort,
//! checkpoints, invariants and progress.
//!
//! Owns the loop of a [`Reencryptor`] once it runs. A reader task reads pages
//! ahead (up to [`READ_AHEAD`]) and starts each one's crypto, so the writer
//! finds its next batch ready; throttled, the crypto keeps to one core and
//! the store to one connection. It must never
//! write a batch before the operator's control allows it, never advance a
//! checkpoint past a batch that did not commit, never log a stored value, and
//! never call a pass drained while a record it could not decrypt is left.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crypto_core::KeyVersion;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{PassOutcome, PassReport, Reencryptor};
use crate::batch::{self, PreparedBatch};
use crate::checkpoint::Checkpoint;
use crate::error::{BoxError, Error, Result, UNDECRYPTABLE_REMEMBERED};
use crate::progress::{self, Phase, RateWindow};
use crate::store::{DataStore, Pk, SwapOutcome};
use crate::target::SqlIdent;
use crate::throttle::{AdaptiveBatch, RunState, TokenBucket};

/// How often replica lag is read while it is below the limit.
const LAG_CHECK_INTERVAL: Duration = Duration::from_secs(1);

mod ranges;

/// Whether to go on.
enum Step {
    Go,
    Abort,
}

/// How many pages may be read (and be re-encrypting) ahead of the one the
/// writer holds: enough for the reader, the crypto and the writer to work at
/// once on different pages; few, so a pause or an abort leaves little read
/// for nothing and memory stays small (a page of 1,000 rows is ~1 MB).
const READ_AHEAD: usize = 2;
/// Pages of more rows than this are read one ahead only: at the largest
/// batch size (100,000 rows, ~100 MB a page) a pass holds three pages, not
/// four.
const LARGE_PAGE: u32 = 10_000;

/// A page read, its crypto running on the blocking pool, and the page size
/// it was read with.
type Ahead = Result<(JoinHandle<Result<PreparedBatch>>, u32)>;

/// The pages of one scan, read in key order by a task of their own and
/// re-encrypted as they arrive; the task stops when dropped.
struct ReadAhead {
    pages: mpsc::Receiver<Ahead>,
    reader: JoinHandle<()>,
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// The running state of a pass.
pub(super) struct Pass {
    worker: Reencryptor,
    checkpoint: Checkpoint,
    batch: AdaptiveBatch,
    /// The batch size the reader reads the next page with.
    page_size: Arc<AtomicU32>,
    bucket: TokenBucket,
    rate: RateWindow,
    start_versions: BTreeMap<KeyVersion, u64>,
    done_at_start: u64,
    last_lag_check: Option<Instant>,
    waiting_for_replicas: bool,
    paused: bool,
    phase: Phase,
    /// Records the running scan could not decrypt: the first ones by column
    /// and key, and how many. A scan visits each row once, so no set is needed.
    undecryptable: Vec<(SqlIdent, Pk)>,
    undecryptable_total: u64,
    /// How many the latest complete scan found.
    undecryptable_known: u64,
    /// How long this run's batches held their locks in the target
    /// (summed over the workers of a split scan).
    locked: Duration,
    /// The stores of a split scan's workers, the pass's own first; opened
    /// when a split scan starts, empty while one worker scans.
    stores: Vec<Arc<dyn DataStore>>,
}

impl Pass {
    pub(super) fn new(worker: Reencryptor) -> Self {
        let throttle = worker.control.borrow().throttle.clone();
        Self {
            checkpoint: Checkpoint::start(worker.target.name(), worker.from, worker.to()),
            batch: AdaptiveBatch::new(throttle.batch_size),
            page_size: Arc::new(AtomicU32::new(throttle.batch_size)),
            bucket: TokenBucket::new(throttle.rows_per_sec, Instant::now()),
            rate: RateWindow::default(),
            start_versions: BTreeMap::new(),
            done_at_start: 0,
            last_lag_check: None,
            waiting_for_replicas: false,
            paused: false,
            phase: Phase::Starting,
            undecryptable: Vec::new(),
            undecryptable_total: 0,
            locked: Duration::ZERO,
            undecryptable_known: 0,
            stores: Vec::new(),
            worker,
        }
    }

    /// Runs to the end and publishes the final phase.
    pub(super) async fn run(mut self) -> Result<PassOutcome> {
        let result = self.drive().await;
        self.phase = match &result {
            Ok(PassOutcome::Drained(_)) => Phase::Drained,
            Ok(PassOutcome::Aborted(_)) => Phase::Aborted,
            Err(_) => Phase::Failed,
        };
        self.publish();
        match &result {
            Err(error) if error.is_transient() => {
                tracing::warn!(target = %self.worker.target.name(), %error, "re-encryption pass interrupted by a transient database failure; its checkpoint stays");
            }
            Err(error) => {
                tracing::error!(target = %self.worker.target.name(), %error, "re-encryption pass failed");
            }
            Ok(_) => {}
        }
        result
    }

    async fn drive(&mut self) -> Result<PassOutcome> {
        let worker = &self.worker;
        let (name, from, to) = (worker.target.name().to_owned(), worker.from, worker.to());
        if let Some(saved) = worker
            .checkpoints
            .load(&name, from, to)
            .await
            .map_err(|source| checkpoint_error(&name, "load", source))?
        {
            self.checkpoint = saved;
        }
        self.checkpoint.drained = false;
        let before = self.worker.store.inventory().await?;
        self.start_versions = before.by_version();
        self.done_at_start = self.checkpoint.records_done;
        tracing::info!(
            target = %name, %from, %to,
            records_at_from = before.at(from),
            resumed_at_sweep = self.checkpoint.sweep,
            records_done = self.checkpoint.records_done,
            "re-encryption pass starting"
        );
        self.publish();

        let after = loop {
            self.phase = if self.checkpoint.sweep == 0 {
                Phase::Scanning
            } else {
                Phase::Sweeping
            };
            self.undecryptable.clear();
            self.undecryptable_total = 0;
            let whole_table = self.checkpoint.last_pk.is_none()
                && self
                    .checkpoint
                    .ranges
                    .iter()
                    .all(|range| range.last_pk.is_none() && !range.done);
            self.publish();
            let step = if self.split().await? {
                self.scan_ranges().await?
            } else {
                self.scan().await?
            };
            if let Step::Abort = step {
                tracing::info!(target = %name, batches = self.checkpoint.batches, "re-encryption pass aborted; checkpoint kept");
                return Ok(PassOutcome::Aborted(self.checkpoint.clone()));
            }
            self.phase = Phase::Verifying;
            self.publish();
            // The inventory may call the pass drained: only on durable writes.
            self.worker.store.make_durable().await?;
            let (inventory, counted) = self.worker.store.counted_inventory().await?;
            if inventory.per_column() != counted {
                return Err(Error::Invariant {
                    target: name,
                    detail: format!(
                        "records per column by version {:?} do not add up to the records per column {:?}",
                        inventory.per_column(),
                        counted
                    ),
                });
            }
            let remaining = inventory.at(from);
            self.undecryptable_known = self.undecryptable_total;
            // The next scan starts over, as a sweep: conflicts and late
            // writes at `from` are revisited, everything else is skipped.
            self.checkpoint.sweep += 1;
            self.checkpoint.last_pk = None;
            self.checkpoint.ranges.clear();
            // Records that do not decrypt stay at `from` whatever a sweep
            // does: the moving is over when a scan of the whole table found
            // exactly the records left. A scan that resumed mid-table has not
            // seen the rows before its checkpoint, so a sweep names them.
            let only_undecryptable = whole_table && remaining == self.undecryptable_total;
            if remaining == 0 || only_undecryptable {
                break inventory;
            }
            if self.checkpoint.sweep > self.worker.max_sweeps {
                self.save().await?;
                return Err(Error::NotDrained {
                    target: name,
                    version: from,
                    remaining,
                    sweeps: self.worker.max_sweeps,
                });
            }
            self.save().await?;
            tracing::info!(target = %name, sweep = self.checkpoint.sweep, remaining, "sweeping records still at the old version");
        };

        if after.total() != before.total() {
            tracing::warn!(target = %name, before = before.total(), after = after.total(), "record count changed during the pass (application inserts or deletes)");
        }
        if self.undecryptable_total > 0 {
            // Not drained: the next run sweeps from the start and retries
            // them once they are restored or cleared.
            self.save().await?;
            return Err(Error::UndecryptableRecords {
                target: name,
                table: self.worker.target.table().to_string(),
                version: from,
                records: self.undecryptable.clone(),
                total: self.undecryptable_total,
            });
        }
        self.checkpoint.drained = true;
        self.save().await?;
        tracing::info!(
            target = %name, %from, %to,
            records_done = self.checkpoint.records_done,
            conflicts = self.checkpoint.conflicts,
            batches = self.checkpoint.batches,
            versions = ?after.by_version(),
            "re-encryption pass drained"
        );
        Ok(PassOutcome::Drained(PassReport {
            checkpoint: self.checkpoint.clone(),
            before,
            after,
        }))
    }

    /// One keyset scan from the checkpoint's position to the end of the table.
    /// Three stages work at once on different pages: the reader reads the
    /// next page, the crypto re-encrypts the one before, and this loop
    /// writes (throttled, pausable) the one before that.
    async fn scan(&mut self) -> Result<Step> {
        let mut ahead = self.read_ahead();
        loop {
            if let Step::Abort = self.wait_for_go().await {
                return Ok(Step::Abort);
            }
            let Some(page) = ahead.pages.recv().await else {
                // The reader sends every page up to a short one, or an error.
                return Err(Error::Task {
                    target: self.worker.target.name().to_owned(),
                    reason: "the page reader stopped before the end of the table".to_owned(),
                });
            };
            let (crypto, limit) = page?;
            let prepared = crypto.await.map_err(|error| self.task_error(error))??;
            if prepared.rows_read == 0 {
                return Ok(Step::Go);
            }
            let full = prepared.rows_read >= limit as usize;
            if let Step::Abort = self.write(prepared, full).await? {
                return Ok(Step::Abort);
            }
            self.page_size
                .store(self.batch.current(), Ordering::Relaxed);
            if !full {
                return Ok(Step::Go);
            }
        }
    }

    /// Starts the reader of this scan at the checkpoint's position.
    fn read_ahead(&self) -> ReadAhead {
        self.read_from(
            self.worker.store.clone(),
            self.checkpoint.last_pk.clone(),
            None,
        )
    }

    /// Starts a reader of `store` after `after`, up to `upto` (included;
    /// `None`: to the end of the table).
    fn read_from(
        &self,
        store: Arc<dyn DataStore>,
        mut after: Option<Pk>,
        upto: Option<Pk>,
    ) -> ReadAhead {
        let depth = if self.batch.current() > LARGE_PAGE {
            1
        } else {
            READ_AHEAD
        };
        let (sender, pages) = mpsc::channel::<Ahead>(depth);
        let worker = &self.worker;
        let (target, keyring, from) = (worker.target.clone(), worker.keyring.clone(), worker.from);
        let page_size = self.page_size.clone();
        self.page_size
            .store(self.batch.current(), Ordering::Relaxed);
        let control = worker.control.clone();
        // Before the first read (`wait_for_go` keeps it current after).
        store.set_gentle(control.borrow().throttle.rows_per_sec != 0);
        let all_cores = std::thread::available_parallelism().map_or(1, usize::from);
        let reader = tokio::spawn(async move {
            loop {
                let limit = page_size.load(Ordering::Relaxed);
                let read = match &upto {
                    None => store.read_page(from, after.as_ref(), limit).await,
                    Some(_) => {
                        store
                            .read_range(from, after.as_ref(), upto.as_ref(), limit)
                            .await
                    }
                };
                let rows = match read {
                    Ok(rows) => rows,
                    Err(error) => {
                        let _ = sender.send(Err(error)).await;
                        return;
                    }
                };
                let last = rows.len() < limit as usize;
                // Throttled, the crypto keeps to one core: the database's
                // own work comes first (`foreground` in keyholder-bench).
                let cores = if control.borrow().throttle.rows_per_sec == 0 {
                    all_cores
                } else {
                    1
                };
                after = rows.last().map(|row| row.pk.clone()).or(after);
                let crypto = tokio::spawn(batch::prepare(
                    target.clone(),
                    keyring.clone(),
                    from,
                    rows,
                    cores,
                ));
                if sender.send(Ok((crypto, limit))).await.is_err() || last {
                    return;
                }
            }
        });
        ReadAhead { pages, reader }
    }

    /// Throttles, writes one batch, checks it and saves the checkpoint.
    async fn write(&mut self, mut prepared: PreparedBatch, full: bool) -> Result<Step> {
        if let Step::Abort = self.wait_for_replicas().await? {
            return Ok(Step::Abort);
        }
        let wait = self.bucket.reserve(prepared.records, Instant::now());
        if let Step::Abort = self.sleep(wait).await {
            return Ok(Step::Abort);
        }
        // Pause is honoured here, right before the write: at most the batch
        // already committing when it came is written after it.
        if let Step::Abort = self.wait_for_go().await {
            return Ok(Step::Abort);
        }
        let started = Instant::now();
        let outcome = if prepared.swaps.is_empty() {
            Default::default()
        } else {
            let swaps = std::mem::take(&mut prepared.swaps);
            self.worker.store.swap_batch(swaps).await?
        };
        let latency = started.elapsed();
        self.commit(prepared, outcome, latency, full, None).await?;
        let pause = self.worker.control.borrow().throttle.pause_between_batches;
        Ok(self.sleep(pause).await)
    }

    /// Checks a written batch, counts it and saves the checkpoint: its
    /// position the scan's (`range` `None`) or its range's.
    async fn commit(
        &mut self,
        prepared: PreparedBatch,
        outcome: SwapOutcome,
        latency: Duration,
        full: bool,
        range: Option<usize>,
    ) -> Result<()> {
        let conflicts = outcome.conflicts.len() as u64;
        let undecryptable = prepared.undecryptable.len() as u64;
        if outcome.applied + conflicts != prepared.records
            || outcome.applied + conflicts + undecryptable != prepared.at_from
        {
            return Err(Error::Invariant {
                target: self.worker.target.name().to_owned(),
                detail: format!(
                    "batch {} read {} records at {} and sent {} but {} were written, {} conflicted and {} were left undecryptable",
                    self.checkpoint.batches + 1,
                    prepared.at_from,
                    self.worker.from,
                    prepared.records,
                    outcome.applied,
                    conflicts,
                    undecryptable
                ),
            });
        }
        if let Some((column, pk)) = prepared.undecryptable.first() {
            tracing::warn!(
                target = %self.worker.target.name(),
                table = %self.worker.target.table(),
                records = undecryptable,
                first_column = %column,
                first_pk = %pk,
                "records that do not decrypt were left untouched"
            );
        }
        let room = UNDECRYPTABLE_REMEMBERED.saturating_sub(self.undecryptable.len());
        self.undecryptable
            .extend(prepared.undecryptable.into_iter().take(room));
        self.undecryptable_total += undecryptable;
        match range {
            None => self.checkpoint.last_pk = prepared.last_pk,
            Some(index) => {
                let range = &mut self.checkpoint.ranges[index];
                range.last_pk = prepared.last_pk.or(range.last_pk.take());
                range.done = !full;
            }
        }
        self.checkpoint.records_done += outcome.applied;
        self.checkpoint.conflicts += conflicts;
        self.checkpoint.batches += 1;
        self.locked += outcome.locked;
        self.save().await?;
        if full {
            let target = self.worker.control.borrow().throttle.max_batch_latency;
            self.batch.observe(latency, target);
        }
        tracing::debug!(
            target = %self.worker.target.name(),
            batch = self.checkpoint.batches,
            rows = prepared.rows_read,
            records = outcome.applied,
            conflicts,
            latency_ms = latency.as_millis() as u64,
            next_batch_size = self.batch.current(),
            "batch committed"
        );
        if conflicts > 0 {
            tracing::info!(
                target = %self.worker.target.name(),
                batch = self.checkpoint.batches,
                conflicts,
                first_pk = %outcome.conflicts[0].0,
                "rows changed by the application during the batch; they are revisited"
            );
        }
        let now = Instant::now();
        self.rate.record(now, self.checkpoint.records_done);
        self.publish();
        Ok(())
    }

    /// Returns once running (publishing `paused` meanwhile), or on abort.
    /// Also applies throttle changes.
    async fn wait_for_go(&mut self) -> Step {
        loop {
            let control = self.worker.control.borrow_and_update().clone();
            self.batch.set_ceiling(control.throttle.batch_size);
            self.bucket
                .set_rate(control.throttle.rows_per_sec, Instant::now());
            let gentle = control.throttle.rows_per_sec != 0;
            self.worker.store.set_gentle(gentle);
            for store in &self.stores {
                store.set_gentle(gentle);
            }
            match control.state {
                RunState::Aborted => return Step::Abort,
                RunState::Running => {
                    if self.paused {
                        self.paused = false;
                        tracing::info!(target = %self.worker.target.name(), "re-encryption resumed");
                        self.publish();
                    }
                    return Step::Go;
                }
                RunState::Paused => {
                    if !self.paused {
                        self.paused = true;
                        tracing::info!(target = %self.worker.target.name(), "re-encryption paused");
                        self.publish();
                    }
                    // A dropped handle can never resume a paused pass: stop.
                    if self.worker.control.changed().await.is_err() {
                        return Step::Abort;
                    }
                }
            }
        }
    }

    /// Sleeps, unless aborted meanwhile.
    async fn sleep(&mut self, duration: Duration) -> Step {
        if duration.is_zero() {
            return Step::Go;
        }
        let deadline = Instant::now() + duration;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => return Step::Go,
                changed = self.worker.control.changed() => {
                    if changed.is_err() {
                        tokio::time::sleep_until(deadline).await;
                        return Step::Go;
                    }
                    if self.worker.control.borrow().state == RunState::Aborted {
                        return Step::Abort;
                    }
                }
            }
        }
    }

    /// Waits while a replica lags more than the limit (PostgreSQL).
    async fn wait_for_replicas(&mut self) -> Result<Step> {
        loop {
            let now = Instant::now();
            let recent = self
                .last_lag_check
                .is_some_and(|checked| now.duration_since(checked) < LAG_CHECK_INTERVAL);
            if recent && !self.waiting_for_replicas {
                return Ok(Step::Go);
            }
            self.last_lag_check = Some(now);
            let limit = self.worker.control.borrow().throttle.max_replica_lag;
            match self.worker.store.replica_lag().await? {
                Some(lag) if lag > limit => {
                    if !self.waiting_for_replicas {
                        self.waiting_for_replicas = true;
                        tracing::info!(
                            target = %self.worker.target.name(),
                            lag_ms = lag.as_millis() as u64,
                            limit_ms = limit.as_millis() as u64,
                            "replica lag over the limit; waiting"
                        );
                        self.publish();
                    }
                    if let Step::Abort = self.sleep(LAG_CHECK_INTERVAL.min(limit)).await {
                        return Ok(Step::Abort);
                    }
                }
                _ => {
                    if self.waiting_for_replicas {
                        self.waiting_for_replicas = false;
                        self.publish();
                    }
                    return Ok(Step::Go);
                }
            }
        }
    }

    async fn save(&self) -> Result<()> {
        self.worker
            .checkpoints
            .save(self.checkpoint.clone())
            .await
            .map_err(|source| checkpoint_error(self.worker.target.name(), "save", source))
    }

    fn publish(&self) {
        let moved = self.checkpoint.records_done - self.done_at_start;
        let (remaining, versions) = progress::estimate(
            &self.start_versions,
            self.worker.from,
            self.worker.to(),
            moved,
        );
        let rate = self.rate.rate();
        self.worker.progress.send_modify(|progress| {
            progress.phase = self.phase;
            progress.records_done = self.checkpoint.records_done;
            progress.records_remaining = remaining;
            progress.versions = versions;
            progress.conflicts = self.checkpoint.conflicts;
            progress.undecryptable = self.undecryptable_known.max(self.undecryptable_total);
            progress.batches = self.checkpoint.batches;
            progress.sweep = self.checkpoint.sweep;
            progress.rows_per_sec = rate;
            progress.eta_seconds = progress::eta(remaining, rate);
            progress.paused = self.paused;
            progress.waiting_for_replicas = self.waiting_for_replicas;
            progress.batch_size = self.batch.current();
            progress.locked_seconds = self.locked.as_secs_f64();
        });
    }

    fn task_error(&self, error: tokio::task::JoinError) -> Error {
        Error::Task {
            target: self.worker.target.name().to_owned(),
            reason: error.to_string(),
        }
    }
}

fn checkpoint_error(target: &str, operation: &'static str, source: BoxError) -> Error {
    Error::Checkpoint {
        target: target.to_owned(),
        operation,
        source,
    }
}
