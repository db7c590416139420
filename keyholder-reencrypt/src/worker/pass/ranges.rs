//! The main scan split over several workers on disjoint ranges of the
//! primary key ([`crate::Reencryptor::with_workers`]).
//!
//! Owns the split (the ranges, fixed in the checkpoint when the scan
//! starts) and the loop that keeps one batch of each of up to `workers`
//! ranges committing at once, each range read ahead and re-encrypted by a
//! reader of its own on its own store (connections). Everything else is
//! the one-worker pass's, in this one loop: the throttle's bucket counts
//! every worker's records, pause and abort are checked before each batch
//! is sent, and each batch is checked, counted and checkpointed (its
//! range's position) once it committed. It must never send a batch of a
//! range while another of the same range is committing (a range's position
//! only moves forward), never leave a sent batch uncounted when the scan
//! stops, aborts or fails (it awaits every batch sent), and never sit
//! paused with a batch committed and not checkpointed.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt as _;
use futures::StreamExt as _;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use tokio::time::Instant;

use super::{Pass, ReadAhead, Step};
use crate::batch::PreparedBatch;
use crate::checkpoint::KeyRange;
use crate::error::{Error, Result};
use crate::store::{Pk, SwapOutcome, open_store};
use crate::throttle::RunState;

/// A batch sent: its range, the batch without its swaps, whether its page
/// was full, what the store answered and how long it took.
type Landed = (usize, PreparedBatch, bool, Result<SwapOutcome>, Duration);

/// The batches committing at once, one at most per range.
type Flights = FuturesUnordered<BoxFuture<'static, Landed>>;

impl Pass {
    /// Whether this scan runs split: a checkpoint already split (resumed),
    /// or a main scan starting from the first row with several workers
    /// asked for and a store that splits ([`crate::DataStore::split_bounds`]).
    pub(super) async fn split(&mut self) -> Result<bool> {
        if !self.checkpoint.ranges.is_empty() {
            return Ok(true);
        }
        let workers = self.worker.workers;
        if workers <= 1 || self.checkpoint.sweep != 0 || self.checkpoint.last_pk.is_some() {
            return Ok(false);
        }
        let ranges = match self.worker.store.split_bounds().await? {
            Some((low, high)) => split_keys(low, high, workers),
            None => Vec::new(),
        };
        if ranges.len() < 2 {
            tracing::warn!(
                target = %self.worker.target.name(),
                workers,
                "one worker: this target's store does not split its scan (SQLite, MySQL, a text key, or fewer rows than workers)"
            );
            return Ok(false);
        }
        tracing::info!(target = %self.worker.target.name(), workers = ranges.len(), "main scan split over workers on disjoint key ranges");
        self.checkpoint.ranges = ranges;
        Ok(true)
    }

    /// The split scan, from each range's position to its end.
    pub(super) async fn scan_ranges(&mut self) -> Result<Step> {
        let open = self.checkpoint.ranges.iter().filter(|r| !r.done).count();
        let slots = (self.worker.workers as usize).clamp(1, open.max(1));
        while self.stores.len() < slots {
            let store = if self.stores.is_empty() {
                self.worker.store.clone()
            } else {
                open_store(&self.worker.target).await?
            };
            store.set_gentle(self.worker.control.borrow().throttle.rows_per_sec != 0);
            self.stores.push(store);
        }
        let stores = self.stores.clone();
        let mut readers: Vec<Option<ReadAhead>> = self
            .checkpoint
            .ranges
            .iter()
            .enumerate()
            .map(|(index, range)| {
                (!range.done).then(|| {
                    self.read_from(
                        stores[index % stores.len()].clone(),
                        range.position().cloned(),
                        range.upto.clone(),
                    )
                })
            })
            .collect();
        let mut flights = Flights::new();
        let scanned = self.fly(&stores, &mut readers, &mut flights, slots).await;
        // Whatever stopped the scan, the batches already sent are awaited
        // and counted: their commits are real.
        let landed = self.land_all(&mut flights).await;
        let step = scanned?;
        landed?;
        Ok(step)
    }

    /// Sends batches while fewer than `slots` commit, and lands each as it
    /// commits, until every range is read to its end.
    async fn fly(
        &mut self,
        stores: &[Arc<dyn crate::store::DataStore>],
        readers: &mut [Option<ReadAhead>],
        flights: &mut Flights,
        slots: usize,
    ) -> Result<Step> {
        let count = readers.len();
        let mut busy = vec![false; count];
        let mut next = 0;
        loop {
            while flights.len() < slots {
                let Some(index) = (0..count)
                    .map(|k| (next + k) % count)
                    .find(|&i| readers[i].is_some() && !busy[i])
                else {
                    break;
                };
                next = index + 1;
                if let Step::Abort = self.go(flights, &mut busy).await? {
                    return Ok(Step::Abort);
                }
                let reader = readers[index].as_mut().expect("an open range");
                let Some(page) = reader.pages.recv().await else {
                    return Err(Error::Task {
                        target: self.worker.target.name().to_owned(),
                        reason: "a range's page reader stopped before the end of its range"
                            .to_owned(),
                    });
                };
                let (crypto, limit) = page?;
                let mut prepared = crypto.await.map_err(|error| self.task_error(error))??;
                if prepared.rows_read == 0 {
                    readers[index] = None;
                    self.checkpoint.ranges[index].done = true;
                    self.save().await?;
                    continue;
                }
                let full = prepared.rows_read >= limit as usize;
                if !full {
                    // Its reader has stopped after this last page.
                    readers[index] = None;
                }
                if let Step::Abort = self.wait_for_replicas().await? {
                    return Ok(Step::Abort);
                }
                let wait = self.bucket.reserve(prepared.records, Instant::now());
                if let Step::Abort = self.sleep(wait).await {
                    return Ok(Step::Abort);
                }
                if let Step::Abort = self.go(flights, &mut busy).await? {
                    return Ok(Step::Abort);
                }
                let swaps = std::mem::take(&mut prepared.swaps);
                let store = stores[index % stores.len()].clone();
                busy[index] = true;
                flights.push(
                    async move {
                        let started = Instant::now();
                        let outcome = if swaps.is_empty() {
                            Ok(SwapOutcome::default())
                        } else {
                            store.swap_batch(swaps).await
                        };
                        (index, prepared, full, outcome, started.elapsed())
                    }
                    .boxed(),
                );
                let pause = self.worker.control.borrow().throttle.pause_between_batches;
                if let Step::Abort = self.sleep(pause).await {
                    return Ok(Step::Abort);
                }
            }
            let Some(landed) = flights.next().await else {
                return Ok(Step::Go);
            };
            busy[landed.0] = false;
            self.land(landed).await?;
        }
    }

    /// Returns once running, or on abort; paused, lands every batch sent
    /// first, so the pause is published with the checkpoint complete.
    async fn go(&mut self, flights: &mut Flights, busy: &mut [bool]) -> Result<Step> {
        if self.worker.control.borrow().state != RunState::Running {
            self.land_all(flights).await?;
            busy.fill(false);
        }
        Ok(self.wait_for_go().await)
    }

    /// Checks, counts and checkpoints one committed batch.
    async fn land(&mut self, (index, prepared, full, outcome, latency): Landed) -> Result<()> {
        let outcome = outcome?;
        self.commit(prepared, outcome, latency, full, Some(index))
            .await?;
        self.page_size
            .store(self.batch.current(), std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Lands every batch sent; the first error after all of them.
    async fn land_all(&mut self, flights: &mut Flights) -> Result<()> {
        let mut first = None;
        while let Some(landed) = flights.next().await {
            if let Err(error) = self.land(landed).await {
                first.get_or_insert(error);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

/// `workers` disjoint ranges of the integer keys from `low` to `high`, of
/// even width; the first open below and the last open above, so a row
/// inserted outside the bounds still belongs to one. Fewer ranges when
/// there are fewer keys than workers.
pub(super) fn split_keys(low: i64, high: i64, workers: u32) -> Vec<KeyRange> {
    let span = i128::from(high) - i128::from(low) + 1;
    if span < 2 {
        return Vec::new();
    }
    let count = i128::from(workers).min(span);
    // The last key of every range but the last.
    let ends: Vec<i64> = (1..count)
        .map(|i| (i128::from(low) + span * i / count - 1) as i64)
        .collect();
    (0..ends.len() + 1)
        .map(|i| KeyRange {
            after: i.checked_sub(1).map(|before| Pk::Int(ends[before])),
            upto: ends.get(i).map(|&end| Pk::Int(end)),
            last_pk: None,
            done: false,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds(ranges: &[KeyRange]) -> Vec<(Option<i64>, Option<i64>)> {
        let int = |pk: &Option<Pk>| {
            pk.as_ref().map(|pk| match pk {
                Pk::Int(value) => *value,
                Pk::Text(_) => panic!("integer keys"),
            })
        };
        ranges
            .iter()
            .map(|range| (int(&range.after), int(&range.upto)))
            .collect()
    }

    #[test]
    fn keys_split_into_disjoint_ranges_covering_every_key() {
        assert_eq!(
            bounds(&split_keys(1, 1_000_000, 2)),
            [(None, Some(500_000)), (Some(500_000), None)]
        );
        assert_eq!(
            bounds(&split_keys(1, 10, 3)),
            [(None, Some(3)), (Some(3), Some(6)), (Some(6), None)]
        );
        assert_eq!(
            bounds(&split_keys(-5, 5, 2)),
            [(None, Some(-1)), (Some(-1), None)]
        );
    }

    #[test]
    fn fewer_keys_than_workers_make_fewer_ranges() {
        assert_eq!(
            bounds(&split_keys(7, 8, 4)),
            [(None, Some(7)), (Some(7), None)]
        );
        assert!(split_keys(7, 7, 4).is_empty(), "one key: one worker");
    }

    #[test]
    fn the_widest_keys_do_not_overflow() {
        let ranges = bounds(&split_keys(i64::MIN, i64::MAX, 2));
        assert_eq!(ranges, [(None, Some(-1)), (Some(-1), None)]);
    }
}
