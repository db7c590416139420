//! Several workers on disjoint key ranges (`Reencryptor::with_workers`), on
//! the real PostgreSQL server named by `KEYHOLDER_TEST_PG`. Without the
//! variable each test prints a notice and returns; with it set and the
//! server unreachable, the test fails.

#[path = "support/fixture.rs"]
mod fixture;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crypto_core::KeyVersion;
use fixture::{Db, drop_pg_table, keyring, pg_connect, postgres, v};
use futures::FutureExt as _;
use futures::future::BoxFuture;
use keyholder_reencrypt::*;

/// Every checkpoint saved, with when: what a restart would resume from.
#[derive(Default)]
struct Recording {
    inner: MemoryCheckpoints,
    saved: Mutex<Vec<(Instant, Checkpoint)>>,
}

impl Recording {
    fn saved(&self) -> Vec<(Instant, Checkpoint)> {
        self.saved.lock().unwrap().clone()
    }
}

impl CheckpointStore for Recording {
    fn load<'a>(
        &'a self,
        target: &'a str,
        from: KeyVersion,
        to: KeyVersion,
    ) -> BoxFuture<'a, Result<Option<Checkpoint>, BoxError>> {
        self.inner.load(target, from, to)
    }

    fn save(&self, checkpoint: Checkpoint) -> BoxFuture<'_, Result<(), BoxError>> {
        self.saved
            .lock()
            .unwrap()
            .push((Instant::now(), checkpoint.clone()));
        self.inner.save(checkpoint).boxed()
    }

    fn clear<'a>(
        &'a self,
        target: &'a str,
        from: KeyVersion,
        to: KeyVersion,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        self.inner.clear(target, from, to)
    }
}

fn control(batch_size: u32, rows_per_sec: u64) -> ControlHandle {
    ControlHandle::new(Throttle {
        batch_size,
        rows_per_sec,
        ..Throttle::default()
    })
    .unwrap()
}

async fn pass(
    db: &Db,
    workers: u32,
    checkpoints: Arc<dyn CheckpointStore>,
    control: &ControlHandle,
) -> Reencryptor {
    let target = db.target();
    let store = open_store(&target).await.unwrap();
    Reencryptor::new(target, store, keyring(10), v(9), checkpoints, control)
        .unwrap()
        .with_workers(workers)
}

fn drained(outcome: PassOutcome) -> PassReport {
    match outcome {
        PassOutcome::Drained(report) => report,
        PassOutcome::Aborted(checkpoint) => panic!("pass aborted at {checkpoint:?}"),
    }
}

fn int(pk: &Option<Pk>) -> Option<i64> {
    pk.as_ref().map(|pk| match pk {
        Pk::Int(value) => *value,
        Pk::Text(_) => panic!("integer keys"),
    })
}

/// Every saved position lies in its range and never moves back; the ranges
/// never change within a scan.
fn check_positions(saved: &[(Instant, Checkpoint)]) {
    let mut last: Option<&Checkpoint> = None;
    for (_, checkpoint) in saved {
        for range in &checkpoint.ranges {
            if let Some(at) = int(&range.last_pk) {
                assert!(
                    int(&range.after).is_none_or(|after| at > after),
                    "{range:?}"
                );
                assert!(int(&range.upto).is_none_or(|upto| at <= upto), "{range:?}");
            }
        }
        if let Some(before) = last
            && !before.ranges.is_empty()
            && !checkpoint.ranges.is_empty()
        {
            assert_eq!(before.ranges.len(), checkpoint.ranges.len());
            for (old, new) in before.ranges.iter().zip(&checkpoint.ranges) {
                assert_eq!((&old.after, &old.upto), (&new.after, &new.upto));
                assert!(int(&new.last_pk) >= int(&old.last_pk), "{old:?} -> {new:?}");
                assert!(new.done || !old.done, "{old:?} -> {new:?}");
            }
        }
        last = Some(checkpoint);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_two_workers_drain_every_record_each_in_its_own_range() {
    let Some(db) = postgres("workers_drain").await else {
        return;
    };
    db.seed(20_000).await;
    let (digest_before, versions_before) = db.digest().await;
    let checkpoints = Arc::new(Recording::default());
    let control = control(500, 0);
    let report = drained(
        pass(&db, 2, checkpoints.clone(), &control)
            .await
            .run()
            .await
            .unwrap(),
    );
    let (digest_after, versions_after) = db.digest().await;
    assert_eq!(digest_after, digest_before, "plaintexts changed");
    let moved = versions_before[&v(9)];
    assert_eq!(
        versions_after,
        [(v(8), versions_before[&v(8)]), (v(10), moved)].into()
    );
    assert_eq!(report.checkpoint.records_done, moved);
    assert_eq!(report.checkpoint.conflicts, 0);
    assert!(report.checkpoint.ranges.is_empty(), "the scan is over");

    let saved = checkpoints.saved();
    check_positions(&saved);
    let split: Vec<&Checkpoint> = saved
        .iter()
        .map(|(_, checkpoint)| checkpoint)
        .filter(|checkpoint| !checkpoint.ranges.is_empty())
        .collect();
    let last = split.last().expect("the main scan ran split");
    assert_eq!(
        last.ranges
            .iter()
            .map(|range| (int(&range.after), int(&range.upto), range.done))
            .collect::<Vec<_>>(),
        [(None, Some(10_000), true), (Some(10_000), None, true)]
    );
    // Each worker committed batches of its own range while the other's ran.
    let both_under_way = split.iter().any(|checkpoint| {
        checkpoint
            .ranges
            .iter()
            .all(|range| range.last_pk.is_some() && !range.done)
    });
    assert!(
        both_under_way,
        "the two ranges were never under way together"
    );
    drop_pg_table(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_a_split_pass_stopped_and_crashed_resumes_every_range_from_its_checkpoint() {
    let Some(db) = postgres("workers_resume").await else {
        return;
    };
    db.seed(12_000).await;
    let (digest_before, versions_before) = db.digest().await;
    let checkpoints = Arc::new(Recording::default());
    let mut counted_at_stops = Vec::new();
    for round in 0..4 {
        let round_control = control(200, 20_000);
        let pass = pass(&db, 2, checkpoints.clone(), &round_control).await;
        let mut progress = pass.progress();
        let running = tokio::spawn(pass.run());
        let start = progress
            .wait_for(|progress| progress.phase == Phase::Scanning)
            .await
            .unwrap()
            .batches;
        let stop_at = start + rand::random_range(2..8);
        progress
            .wait_for(|progress| progress.batches >= stop_at)
            .await
            .unwrap();
        if round == 1 {
            // A crash: the future dropped wherever it is, batches possibly
            // committed and not yet checkpointed.
            running.abort();
            assert!(running.await.unwrap_err().is_cancelled());
        } else {
            round_control.abort();
            let PassOutcome::Aborted(checkpoint) = running.await.unwrap().unwrap() else {
                panic!("round {round} drained before its abort")
            };
            assert_eq!(checkpoint.ranges.len(), 2, "{checkpoint:?}");
            // An abort lands every batch sent: the checkpoint counts each.
            let saved = checkpoints
                .load("records", v(9), v(10))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(saved, checkpoint);
            counted_at_stops.push(checkpoint.records_done);
        }
    }
    // The last run has one worker: it keeps the saved ranges.
    let report = drained(
        pass(&db, 1, checkpoints.clone(), &control(200, 0))
            .await
            .run()
            .await
            .unwrap(),
    );
    check_positions(&checkpoints.saved());
    let (digest_after, versions_after) = db.digest().await;
    assert_eq!(digest_after, digest_before, "plaintexts changed");
    let moved = versions_before[&v(9)];
    assert_eq!(
        versions_after,
        [(v(8), versions_before[&v(8)]), (v(10), moved)].into()
    );
    assert!(
        counted_at_stops.windows(2).all(|w| w[0] < w[1]),
        "{counted_at_stops:?}"
    );
    // Only the crash can lose a count (batches committed, not yet saved);
    // nothing is counted twice.
    assert!(report.checkpoint.records_done <= moved);
    assert!(
        report.checkpoint.records_done >= moved - 2 * 2 * 200,
        "more than a batch per worker lost to the crash: {} of {moved}",
        report.checkpoint.records_done
    );
    drop_pg_table(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_the_throttle_counts_every_workers_records_together() {
    let Some(db) = postgres("workers_throttle").await else {
        return;
    };
    db.seed(3_000).await;
    let rate = 5_000;
    let checkpoints = Arc::new(Recording::default());
    let control = control(100, rate);
    drained(
        pass(&db, 2, checkpoints.clone(), &control)
            .await
            .run()
            .await
            .unwrap(),
    );
    let scan: Vec<(Instant, u64)> = checkpoints
        .saved()
        .into_iter()
        .filter(|(_, checkpoint)| checkpoint.ranges.len() == 2)
        .map(|(at, checkpoint)| (at, checkpoint.records_done))
        .collect();
    let (first, last) = (scan[0], scan[scan.len() - 1]);
    let achieved = (last.1 - first.1) as f64 / (last.0 - first.0).as_secs_f64();
    // Two buckets, one per worker, would let twice the rate through.
    assert!(
        achieved <= rate as f64 * 1.1,
        "{achieved:.0} records/s against a throttle of {rate}"
    );
    drop_pg_table(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_pause_stops_every_worker_within_its_batch() {
    let Some(db) = postgres("workers_pause").await else {
        return;
    };
    db.seed(6_000).await;
    let checkpoints = Arc::new(Recording::default());
    let control = control(50, 6_000);
    let pass = pass(&db, 2, checkpoints.clone(), &control).await;
    let mut progress = pass.progress();
    let running = tokio::spawn(pass.run());
    progress
        .wait_for(|progress| progress.batches >= 6)
        .await
        .unwrap();
    control.pause();
    let at_pause = progress.borrow().batches;
    progress.wait_for(|progress| progress.paused).await.unwrap();
    let when_paused = progress.borrow().batches;
    assert!(
        when_paused <= at_pause + 2,
        "more than one batch per worker after pause: {at_pause} -> {when_paused}"
    );
    // Paused with every batch sent checkpointed.
    let saved = checkpoints
        .load("records", v(9), v(10))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(saved.batches, when_paused);
    assert_eq!(saved.ranges.len(), 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        progress.borrow().batches,
        when_paused,
        "a batch was written while paused"
    );
    let (_, versions) = db.digest().await;
    assert!(versions.get(&v(9)).is_some_and(|&n| n > 0));
    control.resume();
    drained(running.await.unwrap().unwrap());
    assert!(!progress.borrow().paused);
    drop_pg_table(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_text_keys_run_one_worker() {
    let Some(db) = postgres("workers_text").await else {
        return;
    };
    let Db::Postgres { url, table } = &db else {
        unreachable!()
    };
    let client = pg_connect(url).await;
    client
        .batch_execute(&format!(
            "CREATE TABLE {table} (handle TEXT PRIMARY KEY, token TEXT)"
        ))
        .await
        .unwrap();
    let old = keyring(9);
    for n in 0..300 {
        let key = format!("user-{n:03}");
        let aad = format!("{table}/token/{key}");
        let value = old.encrypt(key.as_bytes(), aad.as_bytes()).unwrap();
        client
            .execute(
                &format!("INSERT INTO {table} VALUES ($1, $2)"),
                &[&key, &value],
            )
            .await
            .unwrap();
    }
    let target = TargetConfig {
        name: "accounts".into(),
        store: url.clone(),
        table: table.clone(),
        primary_key: "handle".into(),
        columns: vec!["token".into()],
        aad: AadRule::Row,
    }
    .validate("targets[0]")
    .unwrap();
    let store = open_store(&target).await.unwrap();
    let checkpoints = Arc::new(Recording::default());
    let report = drained(
        Reencryptor::new(
            target,
            store,
            keyring(10),
            v(9),
            checkpoints.clone(),
            &control(50, 0),
        )
        .unwrap()
        .with_workers(2)
        .run()
        .await
        .unwrap(),
    );
    assert_eq!(report.checkpoint.records_done, 300);
    let saved = checkpoints.saved();
    assert!(saved.len() > 6, "one checkpoint per batch of 50");
    assert!(
        saved
            .iter()
            .all(|(_, checkpoint)| checkpoint.ranges.is_empty()),
        "a text key was split"
    );
    drop_pg_table(&db).await;
}
