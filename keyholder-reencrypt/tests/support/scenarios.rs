//! The scenarios every backend must pass, run on a real database.

#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

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
    let started = Instant::now();
    let report = drained(pass.run().await.unwrap());
    let elapsed = started.elapsed().as_secs_f64();

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
    // The batches' time in the target's locks: some, and never more than
    // the pass took (PostgreSQL's two halves of a batch count once).
    assert!(
        snapshot.locked_seconds > 0.0 && snapshot.locked_seconds <= elapsed,
        "locked {} s in a pass of {elapsed} s",
        snapshot.locked_seconds
    );

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
    // Few rows, pages read ahead and a slow rate: many writes land between
    // a page's read and its write. Throttled, PostgreSQL writes a batch in
    // statements of 100 rows: 250 makes three, conflicts in each.
    let rows = 1_000;
    db.seed(rows).await;
    let checkpoints = Arc::new(MemoryCheckpoints::new());
    let control = ControlHandle::new(Throttle {
        batch_size: 250,
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

/// An application inserts and deletes rows all through the pass, the final
/// scans included (a live database does). The pass drains: the final
/// inventory and the count it is checked against see one snapshot, so a row
/// inserted or deleted between them is no "records do not add up" failure; a
/// row deleted under a batch is a conflict, not an error; every row the
/// application left is there, at v10.
pub async fn inserts_during_the_pass(db: Db) {
    let rows = 20_000;
    db.seed(rows).await;
    let stop = Arc::new(AtomicBool::new(false));
    let inserter = db.spawn_inserter(rows + 1, stop.clone());
    // The application is under way before the pass starts.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let outcome = run_pass(
        &db,
        10,
        9,
        Arc::new(MemoryCheckpoints::new()),
        &throttle(1000),
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    let (inserted, deleted) = inserter.await.unwrap();
    let report = match outcome {
        Ok(outcome) => drained(outcome),
        Err(error) => {
            panic!("the pass failed beside {inserted} inserts and {deleted} deletes: {error}")
        }
    };
    eprintln!(
        "inserted {inserted} and deleted {deleted} rows during the pass; records {} before, {} after, {} conflicts",
        report.before.total(),
        report.after.total(),
        report.checkpoint.conflicts
    );
    assert!(
        inserted > 10 && deleted > 10,
        "the application barely ran ({inserted} inserts, {deleted} deletes)"
    );
    let all = db.rows().await;
    assert_eq!(all.len() as i64, rows + inserted - deleted);
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

/// Records at v9 that do not decrypt (another key, a value copied from
/// another row, a body that is not an envelope) are left byte-identical and
/// named by column and key, never by value; every other record moves, the
/// pass fails instead of draining, and drains once they are restored.
pub async fn undecryptable_records(db: Db) {
    let rows = 2_000;
    db.seed(rows).await;
    let table = db.table().to_owned();
    let foreign = foreign_v9();
    let planted = [
        // Row 500: `b` under another key; its `a` still moves.
        (
            "b",
            500,
            foreign.encrypt(b"secret-500-b", &db.aad("b", 500)).unwrap(),
        ),
        // Row 1200: a v9 prefix on a body that is not an envelope.
        ("b", 1200, "V9:not-an-envelope".to_owned()),
        // Row 1501: the valid record of row 1500, bound to row 1500.
        ("b", 1501, db.rows().await[1499].2.clone().unwrap()),
        // Row 1999: `a` under another key, in the same batch as movable rows.
        (
            "a",
            1999,
            foreign
                .encrypt(b"secret-1999-a", &db.aad("a", 1999))
                .unwrap(),
        ),
    ];
    for (column, id, value) in &planted {
        db.set(*id, column, value).await;
    }
    let bad: Vec<(&str, i64)> = planted
        .iter()
        .map(|(column, id, _)| (*column, *id))
        .collect();
    let before = db.rows().await;
    let (digest_before, versions_before) = db.digest_except(&bad).await;
    let at_v9 = versions_before[&v(9)];

    let checkpoints: Arc<dyn CheckpointStore> = Arc::new(MemoryCheckpoints::new());
    let control = throttle(100);
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
    let progress = pass.progress();
    let error = pass.run().await.unwrap_err();

    let message = format!(
        "target `records`: 4 record(s) of {table} at v9 do not decrypt and were left untouched: b pk=500, b pk=1200, b pk=1501, a pk=1999; every other record was moved; restore or clear those values, then run the pass again"
    );
    assert_eq!(error.to_string(), message);
    let Error::UndecryptableRecords { records, total, .. } = &error else {
        panic!("expected UndecryptableRecords, got {error:?}")
    };
    let listed: Vec<(&str, Pk)> = records
        .iter()
        .map(|(column, pk)| (column.as_str(), pk.clone()))
        .collect();
    let expected: Vec<(&str, Pk)> = bad
        .iter()
        .map(|(column, id)| (*column, Pk::Int(*id)))
        .collect();
    assert_eq!(listed, expected);
    assert_eq!(*total, 4);
    for (_, _, value) in &planted {
        assert!(!message.contains(&value[3..15]), "a stored value leaked");
    }

    // The bad records are byte-identical; every other v9 record is at v10
    // with its plaintext unchanged; v8 and NULL are untouched.
    let after = db.rows().await;
    assert_eq!(after.len(), before.len());
    for ((id, a0, b0), (_, a1, b1)) in before.iter().zip(&after) {
        for (column, old, new) in [("a", a0, a1), ("b", b0, b1)] {
            if bad.contains(&(column, *id))
                || old.as_ref().is_none_or(|old| !old.starts_with("V9:"))
            {
                assert_eq!(old, new, "{column} of row {id} changed");
            } else {
                assert!(
                    new.as_ref().is_some_and(|new| new.starts_with("V10:")),
                    "{column} of row {id} was not moved"
                );
            }
        }
    }
    let (digest_after, versions_after) = db.digest_except(&bad).await;
    assert_eq!(digest_after, digest_before, "plaintexts changed");
    assert_eq!(
        versions_after,
        [(v(8), versions_before[&v(8)]), (v(10), at_v9)].into()
    );

    let snapshot = progress.borrow().clone();
    assert_eq!(snapshot.phase, Phase::Failed);
    assert_eq!(snapshot.undecryptable, 4);
    assert_eq!(snapshot.records_done, at_v9);
    let checkpoint = checkpoints
        .load("records", v(9), v(10))
        .await
        .unwrap()
        .unwrap();
    assert!(!checkpoint.drained);
    assert_eq!(checkpoint.records_done, at_v9);

    // Run again: the same records, the same error, nothing written.
    let again = run_pass(&db, 10, 9, checkpoints.clone(), &control)
        .await
        .unwrap_err();
    assert_eq!(again.to_string(), message);
    assert_eq!(db.rows().await, after);

    // Restored (rewritten with the right key and row), they move and the pass drains.
    let ring = keyring(9);
    for (column, id) in &bad {
        let value = ring
            .encrypt(
                format!("restored-{id}-{column}").as_bytes(),
                &db.aad(column, *id),
            )
            .unwrap();
        db.set(*id, column, &value).await;
    }
    let report = drained(
        run_pass(&db, 10, 9, checkpoints.clone(), &control)
            .await
            .unwrap(),
    );
    assert_eq!(report.after.at(v(9)), 0);
    assert_eq!(report.checkpoint.records_done, at_v9 + 4);
    assert_eq!(db.digest().await.1[&v(10)], at_v9 + 4);

    db.set(1501, "b", "not a record").await;
    let store = open_store(&db.target()).await.unwrap();
    let error = store.inventory().await.unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "{table}.b at primary key 1501 is not a keyholder record; fix or clear that value, the pass stopped before writing its batch"
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

/// An application updates 50 random rows per transaction, in random order,
/// as fast as it can, for the whole pass: not one of its transactions fails
/// (no deadlock, no lock wait timeout: the pass never waits on its locks),
/// no write is lost, and every record ends at v10.
pub async fn multi_row_writer(db: Db) {
    let rows = 5_000;
    db.seed(rows).await;
    let checkpoints = Arc::new(MemoryCheckpoints::new());
    let control = throttle(200);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = db.spawn_multi_row_writer(rows, 50, stop.clone());

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
    progress
        .wait_for(|progress| progress.phase != Phase::Starting && progress.phase != Phase::Scanning)
        .await
        .unwrap();
    stop.store(true, Ordering::SeqCst);
    // A failed transaction panics the writer: this unwrap fails the test.
    let (last, committed) = writer.await.unwrap();
    running.await.unwrap().unwrap();
    let report = drained(run_pass(&db, 10, 9, checkpoints, &control).await.unwrap());
    eprintln!(
        "application transactions: {committed} (0 failed), conflicts: {}, sweeps: {}",
        report.checkpoint.conflicts, report.checkpoint.sweep
    );
    assert!(committed > 10, "the writer barely ran");
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
}

/// The body of `record` with the case of every letter flipped: another value
/// byte for byte, the same one to a collation that ignores case.
fn other_case(record: &str) -> String {
    let (prefix, body) = record.split_once(':').unwrap();
    let body: String = body
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect();
    format!("{prefix}:{body}")
}

/// The compare-and-swap compares byte for byte, whatever the columns'
/// collation: the application rewrites every record between the engine's
/// read and its swap with a value equal to the old one only to the column's
/// collation (`a` in another case, `b` with trailing spaces), and the swap
/// must write none of them and leave the application's values.
pub async fn swap_ignores_the_columns_collation(db: Db) {
    db.seed_case_insensitive(2).await;
    let store = open_store(&db.target()).await.unwrap();
    let read = store.read_page(v(9), None, 10).await.unwrap();
    assert_eq!(read.len(), 2);
    let keyring = keyring(10);
    let mut swaps = Vec::new();
    let mut written = Vec::new();
    for row in &read {
        let Pk::Int(id) = row.pk else {
            panic!("an integer key")
        };
        let mut cells = Vec::new();
        let mut values = Vec::new();
        for (index, column) in ["a", "b"].into_iter().enumerate() {
            let old = row.values[index].clone().unwrap();
            let plaintext = keyring.decrypt(&old, &db.aad(column, id)).unwrap();
            let new = keyring.encrypt(&plaintext, &db.aad(column, id)).unwrap();
            let changed = if column == "a" {
                other_case(&old)
            } else {
                format!("{old}  ")
            };
            assert_ne!(changed, old);
            db.set(id, column, &changed).await;
            values.push(Some(changed));
            cells.push(Some(CellSwap { old, new }));
        }
        written.push((id, values.remove(0), values.remove(0)));
        swaps.push(RowSwap {
            pk: row.pk.clone(),
            cells,
        });
    }
    let outcome = store.swap_batch(swaps).await.unwrap();
    assert_eq!(outcome.applied, 0, "a changed value was overwritten");
    assert_eq!(outcome.conflicts.len(), 4);
    assert_eq!(
        db.rows().await,
        written,
        "the application's writes are lost"
    );
    // The inventory reads the prefixes byte for byte too (PostgreSQL before
    // 18 refuses `strpos` under a nondeterministic collation).
    let inventory = store.inventory().await.unwrap();
    assert_eq!(inventory.at(v(9)), 4);
}

/// Sampling (the key test before an unseal or a switch) works on text keys
/// that are not ASCII. The random start key of a probe took a byte between
/// the smallest and largest key's where they first differ, clamped to
/// printable ASCII with `clamp(from, b'~')`; a first differing byte of a
/// UTF-8 letter (`Á` is `C3 81`) is above `~`, and the clamp panicked.
pub async fn sample_of_text_keys_beyond_ascii(db: Db) {
    let table = db.table().to_owned();
    let old = keyring(9);
    let keys = ["Ábel", "Émile", "Ívar", "Óli", "Úrsula"];
    let rows: Vec<(String, String)> = keys
        .iter()
        .map(|key| {
            let aad = format!("{table}/token/{key}");
            let record = old.encrypt(key.as_bytes(), aad.as_bytes()).unwrap();
            ((*key).to_owned(), record)
        })
        .collect();
    let ddl = format!("CREATE TABLE {table} (handle VARCHAR(40) NOT NULL PRIMARY KEY, token TEXT)");
    let insert = |mark: &str| format!("INSERT INTO {table} VALUES ({mark}1, {mark}2)");
    match &db {
        Db::Sqlite(path) => {
            let connection = rusqlite::Connection::open(path).unwrap();
            connection.execute_batch(&ddl).unwrap();
            for (key, record) in &rows {
                connection
                    .execute(&insert("?"), rusqlite::params![key, record])
                    .unwrap();
            }
        }
        Db::Postgres { url, .. } => {
            let client = pg_connect(url).await;
            client.batch_execute(&ddl).await.unwrap();
            for (key, record) in &rows {
                client.execute(&insert("$"), &[key, record]).await.unwrap();
            }
        }
        Db::Mysql { url, .. } => {
            use mysql_async::prelude::Queryable as _;
            let mut conn = mysql_connect(url).await;
            conn.query_drop(format!("{ddl} CHARACTER SET utf8mb4"))
                .await
                .unwrap();
            for (key, record) in &rows {
                conn.exec_drop(format!("INSERT INTO {table} VALUES (?, ?)"), (key, record))
                    .await
                    .unwrap();
            }
        }
    }
    let store_url = match &db {
        Db::Sqlite(path) => format!("sqlite://{}", path.display()),
        Db::Postgres { url, .. } | Db::Mysql { url, .. } => url.clone(),
    };
    let target = TargetConfig {
        name: "handles".into(),
        store: store_url,
        table: table.clone(),
        primary_key: "handle".into(),
        columns: vec!["token".into()],
        aad: AadRule::Row,
    }
    .validate("targets[0]")
    .unwrap();
    let store = open_store(&target).await.unwrap();
    assert_eq!(store.pk_kind(), PkKind::Text);
    let sampled = tokio::spawn(async move { store.sample(v(9), 3).await })
        .await
        .expect("sampling panicked")
        .unwrap();
    assert_eq!(sampled.len(), 3);
    for record in sampled {
        let Pk::Text(key) = &record.pk else {
            panic!("a text key")
        };
        let aad = format!("{table}/token/{key}");
        assert_eq!(
            &*old.decrypt(&record.ciphertext, aad.as_bytes()).unwrap(),
            key.as_bytes()
        );
    }
}

/// How a store takes a table keyed as one case of [`key_unique_and_not_null`]
/// declares it.
#[derive(Debug, PartialEq)]
enum Taken {
    /// Opened, and a pass moved every record.
    Drains,
    /// Refused when the store opened, with this error.
    Refused(String),
    /// Opened, and the pass stopped with this error.
    Failed(String),
    /// Opened, and the pass did not move every record: what it did.
    LeftRecords(String),
}

/// The pass reads the table in keyset pages (`key > last`): of two rows that
/// share a key, a page that ends between them hides the second from every
/// later page, and a row whose key is NULL is on no page at all (SQLite and
/// PostgreSQL took such a table and the pass left records behind or failed
/// on the NULL). So a store opens a target only when its declared schema
/// makes the key unique (and on PostgreSQL never NULL), and names the column
/// and what to declare otherwise; MySQL wants the table's own primary key
/// (the batch's row locks rely on it too). SQLite, whose every PRIMARY KEY
/// but the rowid may hold NULL, refuses records whose key is NULL in the
/// inventory before the pass writes.
pub async fn key_unique_and_not_null(db: Db) {
    let table = db.table().to_owned();
    let sqlite = matches!(db, Db::Sqlite(_));
    let mysql = matches!(db, Db::Mysql { .. });
    let not_unique = if mysql {
        format!(
            "target `records`: `{table}.id` is not the table's primary key (it is `()`); name the one-column primary key"
        )
    } else {
        format!(
            "target `records`: `{table}.id` is not unique: it is not the one column of the primary key or of a unique index without WHERE or expressions, so two rows may share a key and the pass, which pages by key, would skip one of them; declare it PRIMARY KEY or UNIQUE NOT NULL, or set `primary_key` to a column that is"
        )
    };
    let may_be_null = format!(
        "target `records`: `{table}.id` may be NULL, and the pass, which pages by key, would skip a row whose key is NULL; declare it NOT NULL, or set `primary_key` to a column that is"
    );
    // SQLite takes a key it lets be NULL (any PRIMARY KEY of a rowid table
    // but the rowid may hold NULL, and refusing them all would fail the
    // unseal of databases that never store one): its inventory, before the
    // pass writes, refuses records whose key is NULL.
    let null_records = format!(
        "target `records`: 2 record(s) in rows whose key `{table}.id` is NULL, which the pass, paging by key, cannot reach; give those rows a key and declare the column NOT NULL, or set `primary_key` to a column that is never NULL"
    );
    // More rows per key than the pass has sweeps: a sweep moves one row per
    // key in pages of one row.
    let repeated: Vec<Option<i64>> = (1..=3)
        .flat_map(|id| [Some(id); DEFAULT_MAX_SWEEPS as usize + 5])
        .collect();
    let once: Vec<Option<i64>> = (1..=6).map(Some).collect();
    let with_nulls: Vec<Option<i64>> = once.iter().copied().chain([None, None]).collect();
    let mut cases: Vec<(&str, String, &[Option<i64>], Taken)> = vec![
        (
            "an index that is not unique",
            format!(
                "CREATE TABLE {table} (id BIGINT NOT NULL, a TEXT, b TEXT); CREATE INDEX {table}_id ON {table} (id)"
            ),
            &repeated,
            Taken::Refused(not_unique.clone()),
        ),
        (
            "a unique index over two columns",
            format!(
                "CREATE TABLE {table} (id BIGINT NOT NULL, n INT, a TEXT, b TEXT); CREATE UNIQUE INDEX {table}_id ON {table} (id, n)"
            ),
            &repeated,
            Taken::Refused(not_unique.clone()),
        ),
        (
            "a unique column that may be NULL",
            format!("CREATE TABLE {table} (id BIGINT UNIQUE, a TEXT, b TEXT)"),
            &with_nulls,
            if mysql {
                Taken::Refused(not_unique.clone())
            } else if sqlite {
                Taken::Failed(null_records.clone())
            } else {
                Taken::Refused(may_be_null.clone())
            },
        ),
        (
            "a unique index on a NOT NULL column",
            format!(
                "CREATE TABLE {table} (id BIGINT NOT NULL, a TEXT, b TEXT); CREATE UNIQUE INDEX {table}_id ON {table} (id)"
            ),
            &once,
            if mysql {
                Taken::Refused(not_unique.clone())
            } else {
                Taken::Drains
            },
        ),
        (
            "a BIGINT PRIMARY KEY",
            format!("CREATE TABLE {table} (id BIGINT PRIMARY KEY, a TEXT, b TEXT)"),
            &once,
            Taken::Drains,
        ),
        (
            "a PRIMARY KEY declared NOT NULL",
            format!("CREATE TABLE {table} (id BIGINT NOT NULL PRIMARY KEY, a TEXT, b TEXT)"),
            &once,
            Taken::Drains,
        ),
    ];
    if !mysql {
        // MySQL has no partial index.
        cases.push((
            "a partial unique index",
            format!(
                "CREATE TABLE {table} (id BIGINT NOT NULL, a TEXT, b TEXT); CREATE UNIQUE INDEX {table}_id ON {table} (id) WHERE b IS NOT NULL"
            ),
            &repeated,
            Taken::Refused(not_unique.clone()),
        ));
    }
    if sqlite {
        cases.push((
            "a BIGINT PRIMARY KEY holding NULL keys",
            format!("CREATE TABLE {table} (id BIGINT PRIMARY KEY, a TEXT, b TEXT)"),
            &with_nulls,
            Taken::Failed(null_records.clone()),
        ));
        cases.push((
            "a WITHOUT ROWID table",
            format!("CREATE TABLE {table} (id INTEGER PRIMARY KEY, a TEXT, b TEXT) WITHOUT ROWID"),
            &once,
            Taken::Drains,
        ));
    }
    let mut wrong = Vec::new();
    for (case, ddl, keys, expected) in cases {
        let taken = take_table(&db, &ddl, keys).await;
        if taken != expected {
            wrong.push(format!("{case}: {taken:?}, expected {expected:?}"));
        }
    }
    execute(&db, &format!("DROP TABLE IF EXISTS {table}")).await;
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Creates the test table by `ddl` with one record at v9 in `a` per key of
/// `keys` (`None`: a NULL key), opens the store and runs a pass to v10 in
/// pages of one row.
async fn take_table(db: &Db, ddl: &str, keys: &[Option<i64>]) -> Taken {
    let table = db.table();
    execute(db, &format!("DROP TABLE IF EXISTS {table}")).await;
    execute(db, ddl).await;
    let old = keyring(9);
    let values = keys
        .iter()
        .map(|key| {
            let record = old
                .encrypt(b"secret", &db.aad("a", key.unwrap_or(0)))
                .unwrap();
            let id = key.map_or("NULL".to_owned(), |id| id.to_string());
            format!("({id}, '{record}')")
        })
        .collect::<Vec<_>>()
        .join(", ");
    execute(db, &format!("INSERT INTO {table} (id, a) VALUES {values}")).await;
    let target = db.target();
    let store = match open_store(&target).await {
        Ok(store) => store,
        Err(error) => return Taken::Refused(error.to_string()),
    };
    let control = throttle(1);
    let pass = Reencryptor::new(
        target,
        store.clone(),
        keyring(10),
        v(9),
        Arc::new(MemoryCheckpoints::new()),
        &control,
    )
    .unwrap();
    let outcome = tokio::spawn(pass.run()).await;
    let left = store.inventory().await.map(|inventory| inventory.at(v(9)));
    match (outcome, left) {
        (Ok(Ok(PassOutcome::Drained(_))), Ok(0)) => Taken::Drains,
        (Ok(Err(error)), _) => Taken::Failed(error.to_string()),
        (outcome, left) => Taken::LeftRecords(format!(
            "a pass over {} rows, {} distinct keys: {outcome:?}; records left at v9: {left:?}",
            keys.len(),
            keys.iter().collect::<std::collections::BTreeSet<_>>().len()
        )),
    }
}

/// Runs `sql` (statements separated by `;`) on the test database.
async fn execute(db: &Db, sql: &str) {
    match db {
        Db::Sqlite(path) => rusqlite::Connection::open(path)
            .unwrap()
            .execute_batch(sql)
            .unwrap(),
        Db::Postgres { url, .. } => pg_connect(url).await.batch_execute(sql).await.unwrap(),
        Db::Mysql { url, .. } => {
            use mysql_async::prelude::Queryable as _;
            let mut conn = mysql_connect(url).await;
            for statement in sql.split(';') {
                conn.query_drop(statement).await.unwrap();
            }
        }
    }
}
