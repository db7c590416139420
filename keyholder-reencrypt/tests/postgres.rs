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

use fixture::{Db, pg_connect};
use keyholder_reencrypt::*;

/// The test database, with a fresh table name; `None` (and a notice) when
/// `KEYHOLDER_TEST_PG` is not set.
async fn postgres(test: &str) -> Option<Db> {
    let Ok(url) = std::env::var("KEYHOLDER_TEST_PG") else {
        eprintln!("skipping: KEYHOLDER_TEST_PG not set");
        return None;
    };
    let table = format!(
        "kh_{test}_{}_{}",
        std::process::id(),
        rand::random_range(0..1_000_000u32)
    );
    // Fails the test (never skips) when the server is unreachable.
    pg_connect(&url)
        .await
        .batch_execute(&format!("DROP TABLE IF EXISTS {table}"))
        .await
        .unwrap();
    Some(Db::Postgres { url, table })
}

async fn drop_table(db: &Db) {
    if let Db::Postgres { url, table } = db {
        pg_connect(url)
            .await
            .batch_execute(&format!("DROP TABLE IF EXISTS {table}"))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_fifty_thousand_records_move_to_v10_unchanged() {
    let Some(db) = postgres("forward").await else {
        return;
    };
    scenarios::forward_pass(db.clone()).await;
    drop_table(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_concurrent_writer_loses_no_update() {
    let Some(db) = postgres("writer").await else {
        return;
    };
    scenarios::concurrent_writer(db.clone()).await;
    drop_table(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_resumes_after_five_crashes() {
    let Some(db) = postgres("crash").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let checkpoints = Arc::new(SqliteCheckpoints::open(&dir.path().join("state.db")).unwrap());
    scenarios::crash_and_resume(db.clone(), checkpoints).await;
    drop_table(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_rollback_moves_records_back() {
    let Some(db) = postgres("rollback").await else {
        return;
    };
    scenarios::rollback(db.clone()).await;
    drop_table(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_undecryptable_records_are_left_and_reported() {
    let Some(db) = postgres("bad").await else {
        return;
    };
    scenarios::undecryptable_records(db.clone()).await;
    drop_table(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_pause_stops_writes_within_one_batch() {
    let Some(db) = postgres("pause").await else {
        return;
    };
    scenarios::pause_and_resume(db.clone()).await;
    drop_table(&db).await;
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
    drop_table(&db).await;
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
    drop_table(&db).await;
}
