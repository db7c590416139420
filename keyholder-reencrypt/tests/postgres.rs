//! The engine on the real PostgreSQL server named by `KEYHOLDER_TEST_PG`
//! (CI: `postgres://postgres@127.0.0.1:5432/test`). Without the variable each
//! test prints a notice and returns; with it set and the server unreachable,
//! the test fails. Each test uses its own table, so they run in parallel.

#[path = "support/fixture.rs"]
mod fixture;
#[path = "support/scenarios.rs"]
mod scenarios;

use std::sync::Arc;
use std::time::Duration;

use fixture::{Db, drop_pg_table, pg_connect, postgres};
use keyholder_reencrypt::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_fifty_thousand_records_move_to_v10_unchanged() {
    let Some(db) = postgres("forward").await else {
        return;
    };
    scenarios::forward_pass(db.clone()).await;
    drop_pg_table(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_inserts_during_the_pass_do_not_fail_it() {
    let Some(db) = postgres("inserts").await else {
        return;
    };
    scenarios::inserts_during_the_pass(db.clone()).await;
    drop_pg_table(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_concurrent_writer_loses_no_update() {
    let Some(db) = postgres("writer").await else {
        return;
    };
    scenarios::concurrent_writer(db.clone()).await;
    drop_pg_table(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_the_swap_compares_bytes_not_the_columns_collation() {
    let Some(db) = postgres("collation").await else {
        return;
    };
    scenarios::swap_ignores_the_columns_collation(db.clone()).await;
    drop_pg_table(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_resumes_after_five_crashes() {
    let Some(db) = postgres("crash").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let checkpoints = Arc::new(SqliteCheckpoints::open(&dir.path().join("state.db")).unwrap());
    scenarios::crash_and_resume(db.clone(), checkpoints).await;
    drop_pg_table(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_rollback_moves_records_back() {
    let Some(db) = postgres("rollback").await else {
        return;
    };
    scenarios::rollback(db.clone()).await;
    drop_pg_table(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_undecryptable_records_are_left_and_reported() {
    let Some(db) = postgres("bad").await else {
        return;
    };
    scenarios::undecryptable_records(db.clone()).await;
    drop_pg_table(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_pause_stops_writes_within_one_batch() {
    let Some(db) = postgres("pause").await else {
        return;
    };
    scenarios::pause_and_resume(db.clone()).await;
    drop_pg_table(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_reads_replica_lag_and_refuses_bad_schemas() {
    let Some(db) = postgres("schema").await else {
        return;
    };
    db.seed(10).await;
    let store = open_store(&db.target()).await.unwrap();
    // The test server has no replicas: lag is zero, not absent.
    assert_eq!(store.replica_lag().await.unwrap(), Some(Duration::ZERO));
    assert_eq!(store.pk_kind(), PkKind::Int);

    let Db::Postgres { url, table } = &db else {
        unreachable!()
    };
    let missing = TargetConfig {
        name: "missing".into(),
        store: url.clone(),
        table: format!("{table}_none"),
        primary_key: "id".into(),
        columns: vec!["a".into()],
        aad: AadRule::None,
    };
    let error = open_store(&missing.validate("targets[0]").unwrap())
        .await
        .err()
        .unwrap();
    assert_eq!(
        error.to_string(),
        format!("target `missing`: table `{table}_none` does not exist")
    );
    let wrong_column = TargetConfig {
        table: table.clone(),
        columns: vec!["a".into(), "c".into()],
        ..missing
    };
    let error = open_store(&wrong_column.validate("targets[0]").unwrap())
        .await
        .err()
        .unwrap();
    assert_eq!(
        error.to_string(),
        format!("target `missing`: column `{table}.c` does not exist")
    );
    drop_pg_table(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_text_primary_keys_with_row_binding() {
    let Some(db) = postgres("textpk").await else {
        return;
    };
    let Db::Postgres { url, table } = &db else {
        unreachable!()
    };
    let client = pg_connect(url).await;
    client
        .batch_execute(&format!(
            "CREATE TABLE {table} (handle VARCHAR(40) PRIMARY KEY, token TEXT)"
        ))
        .await
        .unwrap();
    let old = fixture::keyring(9);
    let keys: Vec<String> = (0..700).map(|n| format!("user-{n:x}")).collect();
    for key in &keys {
        let aad = format!("{table}/token/{key}");
        let value = old.encrypt(key.as_bytes(), aad.as_bytes()).unwrap();
        client
            .execute(
                &format!("INSERT INTO {table} VALUES ($1, $2)"),
                &[key, &value],
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
    assert_eq!(store.pk_kind(), PkKind::Text);
    let outcome = Reencryptor::new(
        target,
        store,
        fixture::keyring(10),
        fixture::v(9),
        Arc::new(MemoryCheckpoints::new()),
        &fixture::throttle(64),
    )
    .unwrap()
    .run()
    .await
    .unwrap();
    let PassOutcome::Drained(report) = outcome else {
        panic!("aborted")
    };
    assert_eq!(report.checkpoint.records_done, 700);
    let ring = fixture::keyring(10);
    for row in client
        .query(&format!("SELECT handle, token FROM {table}"), &[])
        .await
        .unwrap()
    {
        let (key, value): (String, String) = (row.get(0), row.get(1));
        assert!(value.starts_with("V10:"));
        let aad = format!("{table}/token/{key}");
        assert_eq!(
            &*ring.decrypt(&value, aad.as_bytes()).unwrap(),
            key.as_bytes()
        );
    }
    drop_pg_table(&db).await;
}

/// Rows of the hammered table; each holds one record (column `a`; `b` is NULL).
const HAMMER_ROWS: i64 = 100_000;
/// Rows the application updates per transaction.
const HAMMER_TXN_ROWS: usize = 50;

/// What the hammering application did.
#[derive(Default)]
struct AppTally {
    committed: u64,
    failed: u64,
    deadlocks: u64,
    /// The last committed plaintext per row.
    last: std::collections::HashMap<i64, String>,
}

/// How many connections the application writes on. Each owns the rows
/// whose id is its number modulo this, so the application's transactions
/// never wait on each other, only on the rotation.
const HAMMER_CONNECTIONS: i64 = 4;

/// One connection of the application: transactions of 50 random rows of its
/// share, each row its own `UPDATE` in random order (so a transaction holds
/// row locks while it takes more), back to back until `stop`. Its values
/// are written at v10, as after `switch`.
fn spawn_hammering_app(
    url: String,
    table: String,
    lane: i64,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<AppTally> {
    use std::sync::atomic::Ordering;
    tokio::spawn(async move {
        let mut client = fixture::pg_connect(&url).await;
        let update = client
            .prepare(&format!("UPDATE {table} SET a = $1 WHERE id = $2"))
            .await
            .unwrap();
        let ring = fixture::keyring(10);
        let mut tally = AppTally::default();
        let mut serial = 0u64;
        while !stop.load(Ordering::SeqCst) {
            let mut ids = std::collections::BTreeSet::new();
            while ids.len() < HAMMER_TXN_ROWS {
                let id = rand::random_range(0..HAMMER_ROWS / HAMMER_CONNECTIONS)
                    * HAMMER_CONNECTIONS
                    + lane
                    + 1;
                ids.insert(id);
            }
            let mut ids: Vec<i64> = ids.into_iter().collect();
            // Random lock order: the pattern that deadlocked a waiting batch.
            for i in (1..ids.len()).rev() {
                ids.swap(i, rand::random_range(0..=i));
            }
            serial += 1;
            let writes: Vec<(i64, String)> = ids
                .iter()
                .map(|id| (*id, format!("app-{id}-{serial}")))
                .collect();
            let values: Vec<String> = writes
                .iter()
                .map(|(id, plaintext)| {
                    ring.encrypt(plaintext.as_bytes(), format!("{table}/a/{id}").as_bytes())
                        .unwrap()
                })
                .collect();
            let result: Result<(), tokio_postgres::Error> = async {
                let tx = client.transaction().await?;
                for ((id, _), value) in writes.iter().zip(&values) {
                    tx.execute(&update, &[value, id]).await?;
                }
                tx.commit().await
            }
            .await;
            match result {
                Ok(()) => {
                    tally.committed += 1;
                    tally.last.extend(writes);
                }
                Err(error) => {
                    tally.failed += 1;
                    if error.code() == Some(&tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED)
                    {
                        tally.deadlocks += 1;
                    }
                    eprintln!("application transaction failed: {error:?}");
                }
            }
        }
        tally
    })
}

/// Issue 18: an application updating 50 random rows per transaction as fast
/// as it can, throughout a whole unthrottled rotation of 100,000 records:
/// no deadlock, no failed application transaction, the job drained, every
/// record at v10 holding the application's last committed value (or the
/// original one). `KEYHOLDER_TEST_HAMMER_RUNS=N` repeats it N times and
/// prints each run's figures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_hammering_application_never_deadlocks_with_an_unthrottled_rotation() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let runs: u32 = std::env::var("KEYHOLDER_TEST_HAMMER_RUNS")
        .ok()
        .map(|n| n.parse().expect("KEYHOLDER_TEST_HAMMER_RUNS is a number"))
        .unwrap_or(1);
    for run in 1..=runs {
        let Some(db) = postgres("hammer").await else {
            return;
        };
        let Db::Postgres { url, table } = &db else {
            unreachable!()
        };
        let client = pg_connect(url).await;
        client
            .batch_execute(&format!(
                "CREATE TABLE {table} (id BIGINT PRIMARY KEY, a TEXT, b TEXT)"
            ))
            .await
            .unwrap();
        let old = fixture::keyring(9);
        let ids: Vec<i64> = (1..=HAMMER_ROWS).collect();
        for chunk in ids.chunks(10_000) {
            let values: Vec<String> = chunk
                .iter()
                .map(|id| {
                    old.encrypt(format!("seed-{id}").as_bytes(), &db.aad("a", *id))
                        .unwrap()
                })
                .collect();
            client
                .execute(
                    &format!(
                        "INSERT INTO {table} (id, a) SELECT * FROM unnest($1::bigint[], $2::text[])"
                    ),
                    &[&chunk, &values],
                )
                .await
                .unwrap();
        }

        let stop = Arc::new(AtomicBool::new(false));
        let app: Vec<_> = (0..HAMMER_CONNECTIONS)
            .map(|lane| spawn_hammering_app(url.clone(), table.clone(), lane, stop.clone()))
            .collect();
        // The application is under way before the rotation starts.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let started = std::time::Instant::now();
        let outcome = fixture::run_pass(
            &db,
            10,
            9,
            Arc::new(MemoryCheckpoints::new()),
            &fixture::throttle(1000),
        )
        .await;
        let elapsed = started.elapsed();
        stop.store(true, Ordering::SeqCst);
        let mut tally = AppTally::default();
        for lane in app {
            let lane = lane.await.unwrap();
            tally.committed += lane.committed;
            tally.failed += lane.failed;
            tally.deadlocks += lane.deadlocks;
            tally.last.extend(lane.last);
        }
        let report = match outcome {
            Ok(PassOutcome::Drained(report)) => report,
            Ok(PassOutcome::Aborted(_)) => panic!("run {run}: the pass aborted"),
            Err(error) => panic!("run {run}: the pass failed: {error}"),
        };
        eprintln!(
            "hammer run {run}/{runs}: rotation of {HAMMER_ROWS} records drained in {:.2}s ({} batches, {} sweeps, {} conflicts revisited); application: {} transactions committed ({:.0}/s), {} failed, {} deadlocks",
            elapsed.as_secs_f64(),
            report.checkpoint.batches,
            report.checkpoint.sweep,
            report.checkpoint.conflicts,
            tally.committed,
            tally.committed as f64 / elapsed.as_secs_f64(),
            tally.failed,
            tally.deadlocks,
        );
        assert_eq!(tally.deadlocks, 0, "run {run}: deadlocks");
        assert_eq!(
            tally.failed, 0,
            "run {run}: failed application transactions"
        );
        assert!(
            tally.committed > 10,
            "run {run}: the application barely ran ({} transactions)",
            tally.committed
        );
        let ring = fixture::keyring(10);
        let rows = db.rows().await;
        assert_eq!(rows.len() as i64, HAMMER_ROWS);
        for (id, a, _) in rows {
            let value = a.unwrap();
            assert!(
                value.starts_with("V10:"),
                "run {run}: row {id} is not at v10"
            );
            let plaintext = ring.decrypt(&value, &db.aad("a", id)).unwrap();
            let expected = tally
                .last
                .get(&id)
                .cloned()
                .unwrap_or_else(|| format!("seed-{id}"));
            assert_eq!(
                String::from_utf8(plaintext.to_vec()).unwrap(),
                expected,
                "run {run}: row {id} lost the application's last committed value"
            );
        }
        drop_pg_table(&db).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_sampling_text_keys_beyond_ascii() {
    let Some(db) = postgres("nonascii").await else {
        return;
    };
    scenarios::sample_of_text_keys_beyond_ascii(db.clone()).await;
    drop_pg_table(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_a_key_that_may_repeat_or_be_null_is_refused() {
    let Some(db) = postgres("uniquekey").await else {
        return;
    };
    scenarios::key_unique_and_not_null(db.clone()).await;
    drop_pg_table(&db).await;
}
