//! Checkpoints: where a pass stands, persisted after every committed batch.
//!
//! Owns the [`Checkpoint`] record and the [`CheckpointStore`] trait the daemon
//! implements over its state store, plus an in-memory and a SQLite-file
//! implementation. A checkpoint holds positions and counts only: it must
//! never hold a stored value, a plaintext or a key.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use crypto_core::KeyVersion;
use futures::FutureExt as _;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::error::BoxError;
use crate::store::Pk;

/// Where a pass of one target from one version to another stands.
///
/// A pass is a main scan (`sweep == 0`) in primary-key order, then sweeps
/// (`sweep >= 1`) over the rows still at `from`, until a sweep finds none.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The target's name.
    pub target: String,
    /// The version records move away from.
    pub from: KeyVersion,
    /// The version records move to (the keyring's write version).
    pub to: KeyVersion,
    /// 0 during the main scan, then the number of the current sweep.
    pub sweep: u32,
    /// The last primary key of the last committed batch of the current scan;
    /// `None` at the start of a scan.
    pub last_pk: Option<Pk>,
    /// Records moved to `to` so far, over all runs of this pass and the
    /// full scans before it (see [`Checkpoint::rescan`]).
    pub records_done: u64,
    /// Compare-and-swap conflicts so far (records changed by the application
    /// between read and write; each is revisited).
    pub conflicts: u64,
    /// Batches committed so far.
    pub batches: u64,
    /// The final check found no record at `from`.
    pub drained: bool,
    /// `records_done` and `conflicts` when this full scan began: what
    /// earlier scans of the same job did. 0 in a checkpoint written before
    /// rescans kept their totals.
    #[serde(default)]
    pub before_scan: ScanTotals,
    /// The main scan split over several workers ([`crate::Reencryptor::with_workers`]):
    /// one entry per disjoint key range, each with its own position; empty
    /// when one worker scans in key order (`last_pk` is then the position).
    /// Fixed when the scan starts, so a resumed scan covers the same ranges.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ranges: Vec<KeyRange>,
}

/// One worker's share of a main scan: the keys in (`after`, `upto`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRange {
    /// The range starts after this key; `None`: at the first row.
    pub after: Option<Pk>,
    /// The range ends at this key, included; `None`: at the last row (rows
    /// inserted beyond the bounds read at the start belong to the last range).
    pub upto: Option<Pk>,
    /// The last primary key of the last committed batch of this range;
    /// `None` before its first.
    pub last_pk: Option<Pk>,
    /// Every row of the range was read and its last batch committed.
    pub done: bool,
}

impl KeyRange {
    /// Where the range's next page starts (after this key).
    pub fn position(&self) -> Option<&Pk> {
        self.last_pk.as_ref().or(self.after.as_ref())
    }
}

/// Records moved and conflicts met, as counted in a [`Checkpoint`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanTotals {
    /// Records moved to `to`.
    pub records_done: u64,
    /// Compare-and-swap conflicts.
    pub conflicts: u64,
}

impl Checkpoint {
    /// The start of a pass.
    pub fn start(target: &str, from: KeyVersion, to: KeyVersion) -> Self {
        Self {
            target: target.to_owned(),
            from,
            to,
            sweep: 0,
            last_pk: None,
            records_done: 0,
            conflicts: 0,
            batches: 0,
            drained: false,
            before_scan: ScanTotals::default(),
            ranges: Vec::new(),
        }
    }

    /// A new full scan of the same job from the first row, keeping the
    /// job's totals (for a record written at `from` after a scan passed it).
    pub fn rescan(&self) -> Self {
        Self {
            sweep: 0,
            last_pk: None,
            drained: false,
            ranges: Vec::new(),
            before_scan: ScanTotals {
                records_done: self.records_done,
                conflicts: self.conflicts,
            },
            ..self.clone()
        }
    }

    /// What this full scan alone did, without the scans before it.
    pub fn this_scan(&self) -> ScanTotals {
        ScanTotals {
            records_done: self
                .records_done
                .saturating_sub(self.before_scan.records_done),
            conflicts: self.conflicts.saturating_sub(self.before_scan.conflicts),
        }
    }
}

/// Persists checkpoints, keyed by (target, from, to): a rollback (`from` and
/// `to` swapped) has its own checkpoint.
///
/// The daemon implements this over its state store (one row per key, the
/// checkpoint as JSON is fine). `save` must be durable when its future
/// completes: the pass moves on only after it.
pub trait CheckpointStore: Send + Sync {
    /// The checkpoint of this pass, if one was saved.
    fn load<'a>(
        &'a self,
        target: &'a str,
        from: KeyVersion,
        to: KeyVersion,
    ) -> BoxFuture<'a, Result<Option<Checkpoint>, BoxError>>;

    /// Saves (replaces) the checkpoint of its pass.
    fn save(&self, checkpoint: Checkpoint) -> BoxFuture<'_, Result<(), BoxError>>;

    /// Forgets the checkpoint of a pass (to run it again from the start).
    fn clear<'a>(
        &'a self,
        target: &'a str,
        from: KeyVersion,
        to: KeyVersion,
    ) -> BoxFuture<'a, Result<(), BoxError>>;
}

type Key = (String, KeyVersion, KeyVersion);

/// Checkpoints in memory, for tests and dry runs.
#[derive(Clone, Debug, Default)]
pub struct MemoryCheckpoints {
    entries: Arc<Mutex<HashMap<Key, Checkpoint>>>,
}

impl MemoryCheckpoints {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Checkpoint>> {
        self.entries
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

impl CheckpointStore for MemoryCheckpoints {
    fn load<'a>(
        &'a self,
        target: &'a str,
        from: KeyVersion,
        to: KeyVersion,
    ) -> BoxFuture<'a, Result<Option<Checkpoint>, BoxError>> {
        let found = self.entries().get(&(target.to_owned(), from, to)).cloned();
        futures::future::ready(Ok(found)).boxed()
    }

    fn save(&self, checkpoint: Checkpoint) -> BoxFuture<'_, Result<(), BoxError>> {
        let key = (checkpoint.target.clone(), checkpoint.from, checkpoint.to);
        self.entries().insert(key, checkpoint);
        futures::future::ready(Ok(())).boxed()
    }

    fn clear<'a>(
        &'a self,
        target: &'a str,
        from: KeyVersion,
        to: KeyVersion,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        self.entries().remove(&(target.to_owned(), from, to));
        futures::future::ready(Ok(())).boxed()
    }
}

/// Checkpoints in a SQLite file (table `reencrypt_checkpoints`), for tests and
/// tools; the daemon keeps them in its own state store.
#[derive(Clone, Debug)]
pub struct SqliteCheckpoints {
    connection: Arc<Mutex<rusqlite::Connection>>,
}

impl SqliteCheckpoints {
    /// Opens or creates the file and its table.
    pub fn open(path: &Path) -> Result<Self, BoxError> {
        let connection = rusqlite::Connection::open(path)?;
        connection.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             CREATE TABLE IF NOT EXISTS reencrypt_checkpoints (
                 target TEXT NOT NULL,
                 from_version INTEGER NOT NULL,
                 to_version INTEGER NOT NULL,
                 body TEXT NOT NULL,
                 PRIMARY KEY (target, from_version, to_version)
             );",
        )?;
        Ok(Self {
            connection: Arc::new(Mutex::new(connection)),
        })
    }

    fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&rusqlite::Connection) -> Result<T, BoxError> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, BoxError>> {
        let connection = self.connection.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let guard = connection
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner());
                work(&guard)
            })
            .await?
        }
        .boxed()
    }
}

impl CheckpointStore for SqliteCheckpoints {
    fn load<'a>(
        &'a self,
        target: &'a str,
        from: KeyVersion,
        to: KeyVersion,
    ) -> BoxFuture<'a, Result<Option<Checkpoint>, BoxError>> {
        let target = target.to_owned();
        self.run(move |connection| {
            let body: Option<String> = rusqlite::OptionalExtension::optional(connection.query_row(
                "SELECT body FROM reencrypt_checkpoints WHERE target = ?1 AND from_version = ?2 AND to_version = ?3",
                rusqlite::params![target, from.number(), to.number()],
                |row| row.get(0),
            ))?;
            Ok(body.map(|body| serde_json::from_str(&body)).transpose()?)
        })
    }

    fn save(&self, checkpoint: Checkpoint) -> BoxFuture<'_, Result<(), BoxError>> {
        self.run(move |connection| {
            connection.execute(
                "INSERT INTO reencrypt_checkpoints (target, from_version, to_version, body) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (target, from_version, to_version) DO UPDATE SET body = excluded.body",
                rusqlite::params![
                    checkpoint.target,
                    checkpoint.from.number(),
                    checkpoint.to.number(),
                    serde_json::to_string(&checkpoint)?
                ],
            )?;
            Ok(())
        })
    }

    fn clear<'a>(
        &'a self,
        target: &'a str,
        from: KeyVersion,
        to: KeyVersion,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        let target = target.to_owned();
        self.run(move |connection| {
            connection.execute(
                "DELETE FROM reencrypt_checkpoints WHERE target = ?1 AND from_version = ?2 AND to_version = ?3",
                rusqlite::params![target, from.number(), to.number()],
            )?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rescan_starts_from_the_first_row_and_keeps_the_jobs_totals() {
        let (v9, v10) = (KeyVersion::new(9).unwrap(), KeyVersion::new(10).unwrap());
        let mut first = Checkpoint::start("t", v9, v10);
        first.sweep = 2;
        first.last_pk = Some(Pk::Int(300));
        first.records_done = 300;
        first.conflicts = 4;
        first.batches = 3;
        first.drained = true;
        first.ranges = vec![KeyRange {
            after: None,
            upto: Some(Pk::Int(500)),
            last_pk: Some(Pk::Int(300)),
            done: false,
        }];
        let mut second = first.rescan();
        assert_eq!(
            (second.sweep, second.last_pk.clone(), second.drained),
            (0, None, false)
        );
        assert!(second.ranges.is_empty(), "a rescan splits afresh");
        assert_eq!(second.this_scan(), ScanTotals::default());
        second.records_done += 1;
        assert_eq!(
            second.this_scan(),
            ScanTotals {
                records_done: 1,
                conflicts: 0
            }
        );
        assert_eq!((second.records_done, second.conflicts), (301, 4));
    }

    #[test]
    fn a_checkpoint_saved_before_scan_totals_existed_still_loads() {
        let mut saved = serde_json::to_value(Checkpoint::start(
            "t",
            KeyVersion::new(9).unwrap(),
            KeyVersion::new(10).unwrap(),
        ))
        .unwrap();
        saved["records_done"] = 7.into();
        saved.as_object_mut().unwrap().remove("before_scan");
        let loaded: Checkpoint = serde_json::from_value(saved).unwrap();
        assert_eq!(loaded.this_scan().records_done, 7);
    }

    #[tokio::test]
    async fn sqlite_checkpoints_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteCheckpoints::open(&dir.path().join("state.db")).unwrap();
        let v9 = KeyVersion::new(9).unwrap();
        let v10 = KeyVersion::new(10).unwrap();
        assert_eq!(store.load("t", v9, v10).await.unwrap(), None);
        let mut checkpoint = Checkpoint::start("t", v9, v10);
        checkpoint.last_pk = Some(Pk::Text("k-7".into()));
        checkpoint.records_done = 42;
        store.save(checkpoint.clone()).await.unwrap();
        checkpoint.records_done = 43;
        store.save(checkpoint.clone()).await.unwrap();
        assert_eq!(store.load("t", v9, v10).await.unwrap(), Some(checkpoint));
        assert_eq!(
            store.load("t", v10, v9).await.unwrap(),
            None,
            "rollback is its own pass"
        );
        store.clear("t", v9, v10).await.unwrap();
        assert_eq!(store.load("t", v9, v10).await.unwrap(), None);
    }
}
