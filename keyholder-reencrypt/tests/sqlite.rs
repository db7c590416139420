//! The engine on real SQLite files.

#[path = "support/fixture.rs"]
mod fixture;
#[path = "support/scenarios.rs"]
mod scenarios;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use fixture::Db;
use futures::future::BoxFuture;
use keyholder_reencrypt::*;

fn sqlite() -> (tempfile::TempDir, Db) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::Sqlite(dir.path().join("app.db"));
    (dir, db)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_thousand_records_move_to_v10_unchanged() {
    let (_dir, db) = sqlite();
    scenarios::forward_pass(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writer_loses_no_update() {
    let (_dir, db) = sqlite();
    scenarios::concurrent_writer(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_swap_compares_bytes_not_the_columns_collation() {
    let (_dir, db) = sqlite();
    scenarios::swap_ignores_the_columns_collation(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inserts_during_the_pass_do_not_fail_it() {
    let (_dir, db) = sqlite();
    scenarios::inserts_during_the_pass(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_after_five_crashes() {
    let (dir, db) = sqlite();
    let checkpoints = Arc::new(SqliteCheckpoints::open(&dir.path().join("state.db")).unwrap());
    scenarios::crash_and_resume(db, checkpoints).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_moves_records_back() {
    let (_dir, db) = sqlite();
    scenarios::rollback(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecryptable_records_are_left_and_reported() {
    let (_dir, db) = sqlite();
    scenarios::undecryptable_records(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_stops_writes_within_one_batch() {
    let (_dir, db) = sqlite();
    scenarios::pause_and_resume(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_primary_keys_with_row_binding() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let old = fixture::keyring(9);
    let keys: Vec<String> = (0..700).map(|n| format!("user-{n:x}")).collect();
    {
        let connection = rusqlite::Connection::open(&path).unwrap();
        connection
            .execute_batch("CREATE TABLE accounts (handle TEXT NOT NULL PRIMARY KEY, token TEXT)")
            .unwrap();
        for key in &keys {
            let aad = format!("accounts/token/{key}");
            let value = old.encrypt(key.as_bytes(), aad.as_bytes()).unwrap();
            connection
                .execute("INSERT INTO accounts VALUES (?1, ?2)", [key, &value])
                .unwrap();
        }
    }
    let target = TargetConfig {
        name: "accounts".into(),
        store: format!("sqlite://{}", path.display()),
        table: "accounts".into(),
        primary_key: "handle".into(),
        columns: vec!["token".into()],
        aad: AadRule::Row,
    }
    .validate("targets[0]")
    .unwrap();
    let store = open_store(&target).await.unwrap();
    assert_eq!(store.pk_kind(), PkKind::Text);
    let samples = store.sample(fixture::v(9), 5).await.unwrap();
    assert_eq!(samples.len(), 5);
    assert!(
        samples
            .iter()
            .all(|sample| matches!(sample.pk, Pk::Text(_)))
    );
    let control = fixture::throttle(64);
    let outcome = Reencryptor::new(
        target,
        store.clone(),
        fixture::keyring(10),
        fixture::v(9),
        Arc::new(MemoryCheckpoints::new()),
        &control,
    )
    .unwrap()
    .run()
    .await
    .unwrap();
    let PassOutcome::Drained(report) = outcome else {
        panic!("aborted")
    };
    assert_eq!(report.checkpoint.records_done, 700);
    assert_eq!(report.after.by_version(), [(fixture::v(10), 700)].into());
    let ring = fixture::keyring(10);
    let connection = rusqlite::Connection::open(&path).unwrap();
    for key in &keys {
        let value: String = connection
            .query_row(
                "SELECT token FROM accounts WHERE handle = ?1",
                [key],
                |row| row.get(0),
            )
            .unwrap();
        let aad = format!("accounts/token/{key}");
        assert_eq!(
            &*ring.decrypt(&value, aad.as_bytes()).unwrap(),
            key.as_bytes()
        );
    }
}

/// A real SQLite store that reports a replica lag the test sets.
struct Lagging {
    inner: Arc<dyn DataStore>,
    lag: Arc<std::sync::Mutex<Duration>>,
}

impl DataStore for Lagging {
    fn pk_kind(&self) -> PkKind {
        self.inner.pk_kind()
    }
    fn read_page<'a>(
        &'a self,
        version: crypto_core::KeyVersion,
        after: Option<&'a Pk>,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<StoredRow>>> {
        self.inner.read_page(version, after, limit)
    }
    fn swap_batch(&self, swaps: Vec<RowSwap>) -> BoxFuture<'_, Result<SwapOutcome>> {
        self.inner.swap_batch(swaps)
    }
    fn inventory(&self) -> BoxFuture<'_, Result<Inventory>> {
        self.inner.inventory()
    }
    fn counted_inventory(&self) -> BoxFuture<'_, Result<(Inventory, BTreeMap<SqlIdent, u64>)>> {
        self.inner.counted_inventory()
    }
    fn sample(
        &self,
        version: crypto_core::KeyVersion,
        n: u32,
    ) -> BoxFuture<'_, Result<Vec<SampleRecord>>> {
        self.inner.sample(version, n)
    }
    fn replica_lag(&self) -> BoxFuture<'_, Result<Option<Duration>>> {
        let lag = *self.lag.lock().unwrap();
        Box::pin(async move { Ok(Some(lag)) })
    }
    fn make_durable(&self) -> BoxFuture<'_, Result<()>> {
        self.inner.make_durable()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_lag_over_the_limit_holds_every_write() {
    let (_dir, db) = sqlite();
    db.seed(500).await;
    let lag = Arc::new(std::sync::Mutex::new(Duration::from_secs(30)));
    let store: Arc<dyn DataStore> = Arc::new(Lagging {
        inner: open_store(&db.target()).await.unwrap(),
        lag: lag.clone(),
    });
    let control = ControlHandle::new(Throttle {
        batch_size: 100,
        max_replica_lag: Duration::from_millis(200),
        ..Throttle::default()
    })
    .unwrap();
    let pass = Reencryptor::new(
        db.target(),
        store,
        fixture::keyring(10),
        fixture::v(9),
        Arc::new(MemoryCheckpoints::new()),
        &control,
    )
    .unwrap();
    let mut progress = pass.progress();
    let running = tokio::spawn(pass.run());
    progress
        .wait_for(|progress| progress.waiting_for_replicas)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        progress.borrow().batches,
        0,
        "a batch was written while replicas lagged"
    );
    assert!(progress.borrow().waiting_for_replicas);
    *lag.lock().unwrap() = Duration::from_millis(50);
    let PassOutcome::Drained(report) = running.await.unwrap().unwrap() else {
        panic!("aborted")
    };
    assert_eq!(report.after.at(fixture::v(9)), 0);
    assert!(!progress.borrow().waiting_for_replicas);
}

/// The worker of [`resumes_after_five_sigkills`], run in a child process (this
/// test binary re-executed); it does nothing unless that test started it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of resumes_after_five_sigkills"]
async fn sigkill_child_worker() {
    let (Ok(db), Ok(state)) = (
        std::env::var("KH_SIGKILL_DB"),
        std::env::var("KH_SIGKILL_STATE"),
    ) else {
        return;
    };
    let db = Db::Sqlite(db.into());
    let checkpoints = Arc::new(SqliteCheckpoints::open(std::path::Path::new(&state)).unwrap());
    let control = ControlHandle::new(Throttle {
        batch_size: 100,
        rows_per_sec: 4_000,
        ..Throttle::default()
    })
    .unwrap();
    fixture::run_pass(&db, 10, 9, checkpoints, &control)
        .await
        .unwrap();
}

/// The worker process is SIGKILLed five times at random points, restarted
/// each time, and resumes from its checkpoint: same end state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_after_five_sigkills() {
    let (dir, db) = sqlite();
    db.seed(6_000).await;
    let (digest_before, versions_before) = db.digest().await;
    let state = dir.path().join("state.db");
    let checkpoints = Arc::new(SqliteCheckpoints::open(&state).unwrap());
    let Db::Sqlite(path) = &db else {
        unreachable!()
    };
    let mut last_batches = 0;
    for round in 0..5 {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "sigkill_child_worker",
                "--nocapture",
            ])
            .env("KH_SIGKILL_DB", path)
            .env("KH_SIGKILL_STATE", &state)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let kill_after = last_batches + rand::random_range(1..6);
        loop {
            let batches = checkpoints
                .load("records", fixture::v(9), fixture::v(10))
                .await
                .unwrap()
                .map_or(0, |checkpoint| checkpoint.batches);
            if batches >= kill_after {
                last_batches = batches;
                break;
            }
            assert!(
                child.try_wait().unwrap().is_none(),
                "round {round}: the worker ended before it was killed"
            );
            tokio::time::sleep(Duration::from_millis(rand::random_range(1..15))).await;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    let control = fixture::throttle(500);
    let outcome = fixture::run_pass(&db, 10, 9, checkpoints, &control)
        .await
        .unwrap();
    let PassOutcome::Drained(report) = outcome else {
        panic!("aborted")
    };
    assert!(report.checkpoint.batches > last_batches);
    let (digest_after, versions_after) = db.digest().await;
    assert_eq!(digest_after, digest_before);
    assert_eq!(
        versions_after,
        [
            (fixture::v(8), versions_before[&fixture::v(8)]),
            (fixture::v(10), versions_before[&fixture::v(9)])
        ]
        .into()
    );
}

/// Runs a pass over 1000 seeded rows in batches of 50 and returns the
/// (paused) time it took.
async fn timed_pass(rows_per_sec: u64, pause: Duration) -> Duration {
    let (_dir, db) = sqlite();
    db.seed(1_000).await;
    let control = ControlHandle::new(Throttle {
        batch_size: 50,
        rows_per_sec,
        pause_between_batches: pause,
        max_batch_latency: Duration::from_secs(3600),
        ..Throttle::default()
    })
    .unwrap();
    let started = tokio::time::Instant::now();
    let outcome = fixture::run_pass(&db, 10, 9, Arc::new(MemoryCheckpoints::new()), &control)
        .await
        .unwrap();
    let elapsed = started.elapsed();
    let PassOutcome::Drained(report) = outcome else {
        panic!("aborted")
    };
    // a: 900 rows at v9 (every 10th at v8); b: 858 (every 7th NULL); every
    // one of the 1000 rows holds a v9 record, so 20 batches.
    assert_eq!(report.checkpoint.records_done, 900 + 858);
    assert_eq!(report.checkpoint.batches, 20);
    elapsed
}

/// The pass holds its records/s and its pause between batches on a real
/// store, in tokio's paused time: the only time that passes is the throttle's.
#[tokio::test(start_paused = true)]
async fn pass_holds_the_configured_rate_in_paused_time() {
    // The first batch (88 records: 45 in a, 43 in b) goes at once, with no
    // burst of a second's records; the other 1670 go at 500/s, each batch
    // paced after the one before. The 10 ms pauses overlap the pacing
    // except after the last batch.
    let elapsed = timed_pass(500, Duration::from_millis(10)).await;
    let expected = Duration::from_millis(3340 + 10);
    assert!(
        elapsed >= expected && elapsed <= expected + Duration::from_millis(5),
        "{elapsed:?} vs {expected:?}"
    );
    // Unthrottled, only the 20 pauses take time.
    let elapsed = timed_pass(0, Duration::from_millis(10)).await;
    assert_eq!(elapsed, Duration::from_millis(200));
}

/// Runs `sql` in the `sqlite3` shell, another process: SQLite's locks are
/// per process, so only another one sees what this one's locks say.
fn sqlite3_shell(path: &std::path::Path, sql: &str) -> String {
    let output = std::process::Command::new("sqlite3")
        .arg(path)
        .arg(sql)
        .output()
        .expect("the sqlite3 shell (Debian's sqlite3) runs");
    assert!(
        output.status.success(),
        "sqlite3: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// `make_durable` must not open the database file: closing that descriptor
/// would drop every SQLite lock of this process on it, and the next process
/// to close its last connection would delete the WAL under the store, whose
/// later commits no other process would ever see. Here the shell opens and
/// closes the file between the sync and a batch; the batch must be visible
/// to the next process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_after_the_durability_sync_is_seen_by_other_processes() {
    let (_dir, db) = sqlite();
    let Db::Sqlite(path) = &db else {
        unreachable!()
    };
    db.seed(10).await;
    let store = open_store(&db.target()).await.unwrap();
    let page = store.read_page(fixture::v(9), None, 1).await.unwrap();
    let row = &page[0];
    let old = row.values[0].clone().unwrap();
    store.make_durable().await.unwrap();
    // Another process opens and closes the database.
    assert_eq!(sqlite3_shell(path, "SELECT count(*) FROM records"), "10");
    let outcome = store
        .swap_batch(vec![RowSwap {
            pk: row.pk.clone(),
            cells: vec![
                Some(CellSwap {
                    old,
                    new: "V10:moved".to_owned(),
                }),
                None,
            ],
        }])
        .await
        .unwrap();
    assert_eq!(outcome.applied, 1);
    assert_eq!(
        sqlite3_shell(path, "SELECT count(*) FROM records WHERE a = 'V10:moved'"),
        "1",
        "a committed batch is invisible to other processes: the store lost its locks"
    );
}

/// Records an application stored as BLOBs (a driver binding bytes, as Go's
/// `[]byte` or Python's `bytes` do, into a TEXT column keeps them BLOBs)
/// move, and stay BLOBs. Reading a row failed on a BLOB value, so the pass
/// failed at the first page holding one beside a text record at v9, and
/// sampling failed the same way; a row whose only v9 record was a BLOB was
/// never read at all (a BLOB's prefix never equals the text `V9:`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_stored_as_blobs_move_and_stay_blobs() {
    let (_dir, db) = sqlite();
    db.seed(300).await;
    let Db::Sqlite(path) = &db else {
        unreachable!("a sqlite database")
    };
    let connection = rusqlite::Connection::open(path).unwrap();
    connection
        .execute_batch("UPDATE records SET a = CAST(a AS BLOB) WHERE id % 2 = 0")
        .unwrap();
    let text = |connection: &rusqlite::Connection| {
        let mut select = connection
            .prepare("SELECT id, CAST(a AS TEXT), typeof(a) FROM records ORDER BY id")
            .unwrap();
        select
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
            .unwrap()
            .collect::<rusqlite::Result<Vec<(i64, String, String)>>>()
            .unwrap()
    };
    let before = text(&connection);
    let store = open_store(&db.target()).await.unwrap();
    let samples = store.sample(fixture::v(9), 20).await.unwrap();
    assert_eq!(samples.len(), 20);
    let outcome = fixture::run_pass(
        &db,
        10,
        9,
        Arc::new(MemoryCheckpoints::new()),
        &fixture::throttle(100),
    )
    .await;
    let Ok(PassOutcome::Drained(_)) = outcome else {
        panic!("the pass did not drain: {outcome:?}");
    };
    let ring = fixture::keyring(10);
    let after = text(&connection);
    assert_eq!(after.len(), before.len());
    for ((id, old, old_type), (_, new, new_type)) in before.iter().zip(&after) {
        assert_eq!(new_type, old_type, "row {id} changed its storage class");
        assert!(
            new.starts_with("V10:") || old.starts_with("V8:"),
            "row {id}"
        );
        assert_eq!(
            ring.decrypt(new, &db.aad("a", *id)).unwrap(),
            ring.decrypt(old, &db.aad("a", *id)).unwrap(),
            "row {id}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_text_keys_beyond_ascii() {
    let (_dir, db) = sqlite();
    scenarios::sample_of_text_keys_beyond_ascii(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_may_repeat_or_be_null_is_refused() {
    let (_dir, db) = sqlite();
    scenarios::key_unique_and_not_null(db).await;
}
