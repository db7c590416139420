//! The scenarios every backend must pass, run on a real database.

#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use keyholder_reencrypt::*;

use super::fixture::*;

fn drained(outcome: PassOutcome) -> PassReport {
    match outcome {
        PassOutcome::Drained(report) => report,
        PassOutcome::Aborted(checkpoint) => panic!("pass aborted at {checkpoint:?}"),
    }
}

/// 50,000 rows (a at v9 or v8, b at v9 or NULL) moved from v9 to v10; every
/// plaintext unchanged, v8 untouched, inventory before and after exact.
pub async fn forward_pass(db: Db) {
    let rows = 50_000;
    db.seed(rows).await;
    let (digest_before, versions_before) = db.digest().await;
    let at_v8 = rows / 10;
    let at_v9 = rows - at_v8 + rows - rows / 7;
    assert_eq!(
        versions_before,
        [(v(8), at_v8 as u64), (v(9), at_v9 as u64)].into()
    );

    let store = open_store(&db.target()).await.unwrap();
    let inventory = store.inventory().await.unwrap();
    assert_eq!(inventory.by_version(), versions_before);

    let checkpoints = Arc::new(MemoryCheckpoints::new());
    let control = throttle(2000);
    let pass = Reencryptor::new(
        db.target(),
        store.clone(),
        keyring(10),
        v(9),
        checkpoints.clone(),
        &control,
    )
    .unwrap();
    let progress = pass.progress();
    let report = drained(pass.run().await.unwrap());

    let (digest_after, versions_after) = db.digest().await;
    assert_eq!(digest_after, digest_before, "plaintexts changed");
    assert_eq!(
        versions_after,
        [(v(8), at_v8 as u64), (v(10), at_v9 as u64)].into()
    );
    assert_eq!(report.before.by_version(), versions_before);
    assert_eq!(report.after.by_version(), versions_after);
    assert_eq!(
        store.inventory().await.unwrap().by_version(),
        versions_after
    );
    assert_eq!(report.checkpoint.records_done, at_v9 as u64);
    assert_eq!(report.checkpoint.conflicts, 0);
    assert!(report.checkpoint.drained);

    let snapshot = progress.borrow().clone();
    assert_eq!(snapshot.phase, Phase::Drained);
    assert_eq!(snapshot.records_done, at_v9 as u64);
    assert_eq!(snapshot.records_remaining, 0);
    assert_eq!(snapshot.eta_seconds, Some(0));

    let samples = store.sample(v(10), 20).await.unwrap();
    assert_eq!(samples.len(), 20);
    let ring = keyring(10);
    for sample in &samples {
        let Pk::Int(id) = sample.pk else {
            panic!("integer keys")
        };
        assert!(sample.ciphertext.starts_with("V10:"));
        ring.decrypt(&sample.ciphertext, &db.aad(sample.column.as_str(), id))
            .unwrap();
    }
    assert!(store.sample(v(9), 5).await.unwrap().is_empty());
}

/// An application writes fresh v9 or v10 values into random rows during the
/// pass. No write is lost, every record ends at v10, conflicts were counted.
pub async fn concurrent_writer(db: Db) {
    // Few rows, a page read ahead and a slow rate: many writes land between
    // a page's read and its write.
    let rows = 1_000;
    db.seed(rows).await;
    let checkpoints = Arc::new(MemoryCheckpoints::new());
    let control = ControlHandle::new(Throttle {
        batch_size: 50,
        rows_per_sec: 600,
        ..Throttle::default()
    })
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let writer = db.spawn_writer(rows, stop.clone(), writes.clone());

    let target = db.target();
    let store = open_store(&target).await.unwrap();
    let pass = Reencryptor::new(
        target,
        store,
        keyring(10),
        v(9),
        checkpoints.clone(),
        &control,
    )
    .unwrap();
    let mut progress = pass.progress();
    let running = tokio::spawn(pass.run());
    // The application writes throughout the main scan.
    progress
        .wait_for(|progress| progress.phase != Phase::Starting && progress.phase != Phase::Scanning)
        .await
        .unwrap();
    stop.store(true, Ordering::SeqCst);
    let last = writer.await.unwrap();
    // The first run may finish before the writer's last write landed; the
    // final sweep is a second run, from the same checkpoint.
    running.await.unwrap().unwrap();
    let report = drained(run_pass(&db, 10, 9, checkpoints, &control).await.unwrap());

    eprintln!(
        "application writes: {}, conflicts: {}, sweeps: {}",
        writes.load(Ordering::SeqCst),
        report.checkpoint.conflicts,
        report.checkpoint.sweep
    );
    assert!(writes.load(Ordering::SeqCst) > 100, "the writer barely ran");
    assert!(report.checkpoint.conflicts > 0, "no conflict observed");
    let ring = keyring(10);
    for (id, a, b) in db.rows().await {
        for (column, value) in [("a", a), ("b", b)] {
            let Some(value) = value else { continue };
            assert!(
                value.starts_with("V10:") || value.starts_with("V8:"),
                "{column}/{id} not moved"
            );
            let plaintext = ring.decrypt(&value, &db.aad(column, id)).unwrap();
            if let Some(expected) = last.get(&(id, column)) {
                assert_eq!(
                    String::from_utf8(plaintext.to_vec()).unwrap(),
                    *expected,
                    "lost update at {column}/{id}"
                );
            }
        }
    }
    let (_, versions) = db.digest().await;
    assert_eq!(versions.get(&v(9)), None);
}

/// Killed five times at random points (the future dropped mid-batch, or an
/// operator abort), resumed from the checkpoint each time: same end state.
pub async fn crash_and_resume(db: Db, checkpoints: Arc<dyn CheckpointStore>) {
    let rows = 12_000;
    db.seed(rows).await;
    let (digest_before, versions_before) = db.digest().await;
    let control = throttle(200);
    for round in 0..5 {
        let target = db.target();
        let store = open_store(&target).await.unwrap();
        let round_control = throttle(200);
        let pass = Reencryptor::new(
            target,
            store,
            keyring(10),
            v(9),
            checkpoints.clone(),
            &round_control,
        )
        .unwrap();
        let mut progress = pass.progress();
        let running = tokio::spawn(pass.run());
        let start = progress
            .wait_for(|progress| progress.phase == Phase::Scanning)
            .await
            .unwrap()
            .batches;
        let stop_at = start + rand::random_range(1..6);
        progress
            .wait_for(|progress| progress.batches >= stop_at)
            .await
            .unwrap();
        if round % 2 == 0 {
            // A crash: the future is dropped wherever it is, possibly with a
            // batch committed and its checkpoint not yet saved.
            for _ in 0..rand::random_range(0..50) {
                tokio::task::yield_now().await;
            }
            running.abort();
            assert!(running.await.unwrap_err().is_cancelled());
        } else {
            round_control.abort();
            match running.await.unwrap().unwrap() {
                PassOutcome::Aborted(checkpoint) => assert!(checkpoint.last_pk.is_some()),
                PassOutcome::Drained(_) => panic!("round {round} drained before its abort"),
            }
        }
        let saved = checkpoints
            .load("records", v(9), v(10))
            .await
            .unwrap()
            .expect("a checkpoint after a committed batch");
        assert!(!saved.drained);
    }
    let report = drained(run_pass(&db, 10, 9, checkpoints, &control).await.unwrap());
    let (digest_after, versions_after) = db.digest().await;
    assert_eq!(digest_after, digest_before);
    let moved = versions_before[&v(9)];
    assert_eq!(
        versions_after,
        [(v(8), versions_before[&v(8)]), (v(10), moved)].into()
    );
    // Batches committed just before a crash are not counted again.
    assert!(report.checkpoint.records_done <= moved);
}

/// Forward to v10, then back to v9 with the same engine: plaintexts and v8
/// unchanged, nothing left at v10.
pub async fn rollback(db: Db) {
    let rows = 5_000;
    db.seed(rows).await;
    let (digest_before, versions_before) = db.digest().await;
    let checkpoints: Arc<dyn CheckpointStore> = Arc::new(MemoryCheckpoints::new());
    drained(
        run_pass(&db, 10, 9, checkpoints.clone(), &throttle(500))
            .await
            .unwrap(),
    );
    let report = drained(
        run_pass(&db, 9, 10, checkpoints, &throttle(500))
            .await
            .unwrap(),
    );
    let (digest_after, versions_after) = db.digest().await;
    assert_eq!(digest_after, digest_before);
    assert_eq!(versions_after, versions_before);
    assert_eq!(report.after.at(v(10)), 0);
    assert_eq!(report.checkpoint.records_done, versions_before[&v(9)]);
}

/// A stored record that does not decrypt stops the pass with an error naming
/// table, column and key; its batch is not written at all.
pub async fn bad_ciphertext(db: Db) {
    let rows = 3_000;
    db.seed(rows).await;
    // A record of row 1500 copied into row 1501: valid, but bound to row 1500.
    let copied = db.rows().await[1499].2.clone().unwrap();
    db.set(1501, "b", &copied).await;
    let checkpoints: Arc<dyn CheckpointStore> = Arc::new(MemoryCheckpoints::new());
    let error = run_pass(&db, 10, 9, checkpoints.clone(), &throttle(100))
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "{}.b at primary key 1501 (encrypted with v9) does not decrypt; the pass stopped before writing its batch and left the record untouched",
            db.table()
        )
    );
    assert!(!error.to_string().contains(&copied[4..20]));
    let checkpoint = checkpoints
        .load("records", v(9), v(10))
        .await
        .unwrap()
        .unwrap();
    let Some(Pk::Int(last)) = checkpoint.last_pk else {
        panic!("no batch committed")
    };
    assert!((1300..1501).contains(&last), "checkpoint at {last}");
    for (id, a, b) in db.rows().await {
        let moved = [a, b]
            .into_iter()
            .flatten()
            .filter(|value| value.starts_with("V10:"))
            .count();
        if id <= last {
            assert!(id % 70 == 0 || moved > 0, "row {id} was not moved");
        } else {
            assert_eq!(
                moved, 0,
                "row {id} after the last committed batch was written"
            );
        }
    }

    db.set(1501, "b", "not a record").await;
    let store = open_store(&db.target()).await.unwrap();
    let error = store.inventory().await.unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "{}.b at primary key 1501 is not a keyholder record; fix or clear that value, the pass stopped before writing its batch",
            db.table()
        )
    );
}

/// Pause stops writes within one batch; resume finishes the pass.
pub async fn pause_and_resume(db: Db) {
    let rows = 3_000;
    db.seed(rows).await;
    let control = ControlHandle::new(Throttle {
        batch_size: 20,
        rows_per_sec: 3_000,
        ..Throttle::default()
    })
    .unwrap();
    let target = db.target();
    let store = open_store(&target).await.unwrap();
    let pass = Reencryptor::new(
        target,
        store,
        keyring(10),
        v(9),
        Arc::new(MemoryCheckpoints::new()),
        &control,
    )
    .unwrap();
    let mut progress = pass.progress();
    let running = tokio::spawn(pass.run());
    progress
        .wait_for(|progress| progress.batches >= 3)
        .await
        .unwrap();
    control.pause();
    let at_pause = progress.borrow().batches;
    progress.wait_for(|progress| progress.paused).await.unwrap();
    let when_paused = progress.borrow().batches;
    assert!(
        when_paused <= at_pause + 1,
        "more than one batch after pause"
    );
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
}
