//! The engine on the real MySQL or MariaDB server named by
//! `KEYHOLDER_TEST_MYSQL` (CI: `mysql://root@127.0.0.1:3306/test`, MariaDB
//! 10.11). Without the variable each test prints a notice and returns; with it
//! set and the server unreachable, the test fails. Each test uses its own
//! table, so they run in parallel.

#[path = "support/fixture.rs"]
mod fixture;
#[path = "support/scenarios.rs"]
mod scenarios;

use std::sync::Arc;
use std::time::Duration;

use fixture::{Db, mysql_connect};
use keyholder_reencrypt::*;
use mysql_async::prelude::Queryable as _;

/// The test database, with a fresh table name; `None` (and a notice) when
/// `KEYHOLDER_TEST_MYSQL` is not set.
async fn mysql(test: &str) -> Option<Db> {
    let Ok(url) = std::env::var("KEYHOLDER_TEST_MYSQL") else {
        eprintln!("skipping: KEYHOLDER_TEST_MYSQL not set");
        return None;
    };
    let table = format!(
        "kh_{test}_{}_{}",
        std::process::id(),
        rand::random_range(0..1_000_000u32)
    );
    // Fails the test (never skips) when the server is unreachable.
    mysql_connect(&url)
        .await
        .query_drop(format!("DROP TABLE IF EXISTS {table}"))
        .await
        .unwrap();
    Some(Db::Mysql { url, table })
}

async fn drop_table(db: &Db) {
    if let Db::Mysql { url, table } = db {
        mysql_connect(url)
            .await
            .query_drop(format!("DROP TABLE IF EXISTS {table}"))
            .await
            .unwrap();
    }
}

fn url_and_table(db: &Db) -> (&str, &str) {
    match db {
        Db::Mysql { url, table } => (url, table),
        _ => unreachable!("a mysql database"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_fifty_thousand_records_move_to_v10_unchanged() {
    let Some(db) = mysql("forward").await else {
        return;
    };
    scenarios::forward_pass(db.clone()).await;
    drop_table(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_inserts_during_the_pass_do_not_fail_it() {
    let Some(db) = mysql("inserts").await else {
        return;
    };
    scenarios::inserts_during_the_pass(db.clone()).await;
    drop_table(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_concurrent_writer_loses_no_update() {
    let Some(db) = mysql("writer").await else {
        return;
    };
    scenarios::concurrent_writer(db.clone()).await;
    drop_table(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_the_swap_compares_bytes_not_the_columns_collation() {
    let Some(db) = mysql("collation").await else {
        return;
    };
    scenarios::swap_ignores_the_columns_collation(db.clone()).await;
    drop_table(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_fifty_row_transactions_never_fail() {
    let Some(db) = mysql("multirow").await else {
        return;
    };
    scenarios::multi_row_writer(db.clone()).await;
    drop_table(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_resumes_after_five_crashes() {
    let Some(db) = mysql("crash").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let checkpoints = Arc::new(SqliteCheckpoints::open(&dir.path().join("state.db")).unwrap());
    scenarios::crash_and_resume(db.clone(), checkpoints).await;
    drop_table(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_rollback_moves_records_back() {
    let Some(db) = mysql("rollback").await else {
        return;
    };
    scenarios::rollback(db.clone()).await;
    drop_table(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_undecryptable_records_are_left_and_reported() {
    let Some(db) = mysql("bad").await else {
        return;
    };
    scenarios::undecryptable_records(db.clone()).await;
    drop_table(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_pause_stops_writes_within_one_batch() {
    let Some(db) = mysql("pause").await else {
        return;
    };
    scenarios::pause_and_resume(db.clone()).await;
    drop_table(&db).await;
}

/// On a utf8mb4 case-insensitive column, a value that differs from the stored
/// one only in case is equal for the server's collation, and must not be
/// for the compare-and-swap; nor may a lowercase `v9:` be read as a v9 record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_case_insensitive_collation_never_matches_a_case_variant() {
    let Some(db) = mysql("collation").await else {
        return;
    };
    db.seed(3).await;
    let (url, table) = url_and_table(&db);
    let mut conn = mysql_connect(url).await;
    let stored: String = conn
        .query_first(format!("SELECT a FROM {table} WHERE id = 1"))
        .await
        .unwrap()
        .unwrap();
    let upper = stored.to_uppercase();
    assert_ne!(upper, stored, "the record has lowercase letters");
    // The column's collation does equate the two:
    let equal: i64 = conn
        .exec_first(format!("SELECT a = ? FROM {table} WHERE id = 1"), (&upper,))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(equal, 1, "utf8mb4_general_ci compares without case");

    let store = open_store(&db.target()).await.unwrap();
    let swap = |old: &str| RowSwap {
        pk: Pk::Int(1),
        cells: vec![
            Some(CellSwap {
                old: old.to_owned(),
                new: "V10:replaced".to_owned(),
            }),
            None,
        ],
    };
    let outcome = store.swap_batch(vec![swap(&upper)]).await.unwrap();
    assert_eq!(outcome.applied, 0);
    assert_eq!(outcome.conflicts, vec![(Pk::Int(1), 0)]);
    let after: String = conn
        .query_first(format!("SELECT a FROM {table} WHERE id = 1"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after, stored, "a case variant was swapped");

    // The exact value does swap.
    let outcome = store.swap_batch(vec![swap(&stored)]).await.unwrap();
    assert_eq!(outcome.applied, 1);
    assert!(outcome.conflicts.is_empty());

    // `v9:` is not `V9:`: row 2's `a` is not read as a v9 record, and the
    // inventory refuses it by name.
    let lower = format!(
        "v{}",
        &conn
            .query_first::<String, _>(format!("SELECT a FROM {table} WHERE id = 2"))
            .await
            .unwrap()
            .unwrap()[1..]
    );
    conn.exec_drop(format!("UPDATE {table} SET a = ? WHERE id = 2"), (&lower,))
        .await
        .unwrap();
    let page = store.read_page(fixture::v(9), None, 10).await.unwrap();
    let row2 = page.iter().find(|row| row.pk == Pk::Int(2)).unwrap();
    assert_eq!(
        row2.values[0].as_deref(),
        Some(lower.as_str()),
        "read as stored"
    );
    let error = store.inventory().await.unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "{table}.a at primary key 2 is not a keyholder record; fix or clear that value, the pass stopped before writing its batch"
        )
    );
    drop_table(&db).await;
}

/// A row an application holds locked is skipped, not waited for: the batch
/// returns at once with that row as a conflict, and the other rows written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_batch_skips_a_row_the_application_holds() {
    let Some(db) = mysql("locked").await else {
        return;
    };
    db.seed(3).await;
    let (url, table) = url_and_table(&db);
    let store = open_store(&db.target()).await.unwrap();
    let page = store.read_page(fixture::v(9), None, 10).await.unwrap();
    let swaps: Vec<RowSwap> = page
        .iter()
        .map(|row| RowSwap {
            pk: row.pk.clone(),
            cells: vec![
                row.values[0].clone().map(|old| CellSwap {
                    old,
                    new: "V10:new".to_owned(),
                }),
                None,
            ],
        })
        .collect();
    let mut app = mysql_connect(url).await;
    let mut held = app
        .start_transaction(mysql_async::TxOpts::default())
        .await
        .unwrap();
    held.query_drop(format!("SELECT a FROM {table} WHERE id = 2 FOR UPDATE"))
        .await
        .unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(10), store.swap_batch(swaps))
        .await
        .expect("the batch waited on the application's lock")
        .unwrap();
    assert_eq!(outcome.applied, 2);
    assert_eq!(outcome.conflicts, vec![(Pk::Int(2), 0)]);
    held.rollback().await.unwrap();
    drop_table(&db).await;
}

/// The worker of [`mysql_resumes_after_five_sigkills`], run in a child process
/// (this test binary re-executed); it does nothing unless that test started it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of mysql_resumes_after_five_sigkills"]
async fn mysql_sigkill_child_worker() {
    let (Ok(url), Ok(table), Ok(state)) = (
        std::env::var("KH_SIGKILL_MYSQL"),
        std::env::var("KH_SIGKILL_TABLE"),
        std::env::var("KH_SIGKILL_STATE"),
    ) else {
        return;
    };
    let db = Db::Mysql { url, table };
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
async fn mysql_resumes_after_five_sigkills() {
    let Some(db) = mysql("sigkill").await else {
        return;
    };
    db.seed(6_000).await;
    let (digest_before, versions_before) = db.digest().await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.db");
    let checkpoints = Arc::new(SqliteCheckpoints::open(&state).unwrap());
    let (url, table) = url_and_table(&db);
    let mut last_batches = 0;
    for round in 0..5 {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "mysql_sigkill_child_worker",
                "--nocapture",
            ])
            .env("KH_SIGKILL_MYSQL", url)
            .env("KH_SIGKILL_TABLE", table)
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
    drop_table(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_reads_replica_lag_and_refuses_bad_schemas() {
    let Some(db) = mysql("schema").await else {
        return;
    };
    db.seed(10).await;
    let store = open_store(&db.target()).await.unwrap();
    // The test server replicates from no source: no lag, not an error.
    assert_eq!(store.replica_lag().await.unwrap(), Some(Duration::ZERO));
    assert_eq!(store.pk_kind(), PkKind::Int);

    let (url, table) = url_and_table(&db);
    let config = |table: String, columns: &[&str], store: String| TargetConfig {
        name: "missing".into(),
        store,
        table,
        primary_key: "id".into(),
        columns: columns.iter().map(|c| (*c).to_owned()).collect(),
        aad: AadRule::None,
    };
    let open = async |config: TargetConfig| {
        open_store(&config.validate("targets[0]").unwrap())
            .await
            .err()
            .unwrap()
            .to_string()
    };
    assert_eq!(
        open(config(format!("{table}_none"), &["a"], url.to_owned())).await,
        format!("target `missing`: table `{table}_none` does not exist")
    );
    assert_eq!(
        open(config(table.to_owned(), &["a", "c"], url.to_owned())).await,
        format!("target `missing`: column `{table}.c` does not exist")
    );
    // A server named as a replica that replicates from nothing is refused.
    let with_replica = format!("{url}?replica=127.0.0.1:3306");
    let target = config(table.to_owned(), &["a"], with_replica)
        .validate("targets[0]")
        .unwrap();
    let store = open_store(&target).await.unwrap();
    assert_eq!(
        store.replica_lag().await.unwrap_err().to_string(),
        "target `missing`: replica 127.0.0.1:3306 replicates from no source (its replica status is empty); name the target's replicas in `replica=`"
    );
    // ssl-mode=REQUIRED against a server without TLS fails to connect,
    // never falls back to plain text.
    let tls = config(table.to_owned(), &["a"], format!("{url}?ssl-mode=REQUIRED"));
    let error = open(tls).await;
    assert!(
        error.starts_with("target `missing`: mysql read schema failed:") && error.contains("SSL"),
        "{error}"
    );

    // A composite key, or a column that is not the key, is refused by name.
    let mut conn = mysql_connect(url).await;
    let composite = format!("{table}_pair");
    conn.query_drop(format!(
        "CREATE TABLE {composite} (id BIGINT, n INT, a TEXT, PRIMARY KEY (id, n))"
    ))
    .await
    .unwrap();
    assert_eq!(
        open(config(composite.clone(), &["a"], url.to_owned())).await,
        format!(
            "target `missing`: `{composite}.id` is not the table's primary key (it is `(id, n)`); name the one-column primary key"
        )
    );
    conn.query_drop(format!("DROP TABLE {composite}"))
        .await
        .unwrap();
    drop_table(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_text_primary_keys_with_row_binding() {
    let Some(db) = mysql("textpk").await else {
        return;
    };
    let (url, table) = url_and_table(&db);
    let mut conn = mysql_connect(url).await;
    conn.query_drop(format!(
        "CREATE TABLE {table} (handle VARCHAR(40) PRIMARY KEY, token TEXT) \
         CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci"
    ))
    .await
    .unwrap();
    let old = fixture::keyring(9);
    let keys: Vec<String> = (0..700).map(|n| format!("User-{n:x}")).collect();
    for key in &keys {
        let aad = format!("{table}/token/{key}");
        let value = old.encrypt(key.as_bytes(), aad.as_bytes()).unwrap();
        conn.exec_drop(format!("INSERT INTO {table} VALUES (?, ?)"), (key, value))
            .await
            .unwrap();
    }
    let target = TargetConfig {
        name: "accounts".into(),
        store: url.to_owned(),
        table: table.to_owned(),
        primary_key: "handle".into(),
        columns: vec!["token".into()],
        aad: AadRule::Row,
    }
    .validate("targets[0]")
    .unwrap();
    let store = open_store(&target).await.unwrap();
    assert_eq!(store.pk_kind(), PkKind::Text);
    let samples = store.sample(fixture::v(9), 20).await.unwrap();
    assert_eq!(samples.len(), 20, "random probes of text keys find records");
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
    let rows: Vec<(String, String)> = conn
        .query(format!("SELECT handle, token FROM {table}"))
        .await
        .unwrap();
    assert_eq!(rows.len(), 700);
    for (key, value) in rows {
        assert!(value.starts_with("V10:"));
        let aad = format!("{table}/token/{key}");
        assert_eq!(
            &*ring.decrypt(&value, aad.as_bytes()).unwrap(),
            key.as_bytes()
        );
    }
    drop_table(&db).await;
}

/// A MariaDB server of the test's own (`mariadbd` from `PATH`, or
/// `KEYHOLDER_MARIADBD`), started with the given `sql_mode` in a temporary
/// data directory; stopped when dropped.
struct OwnServer {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl OwnServer {
    async fn start(sql_mode: &str) -> Self {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let as_root = std::fs::metadata("/proc/self").unwrap().uid() == 0;
        let user = as_root.then_some("--user=root");
        let installed = std::process::Command::new("mariadb-install-db")
            .args(["--no-defaults", "--auth-root-authentication-method=normal"])
            .arg("--skip-test-db")
            .arg(format!("--datadir={}", data.display()))
            .args(user)
            .output()
            .expect("mariadb-install-db (apt-get install mariadb-server)");
        assert!(installed.status.success(), "mariadb-install-db failed");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let server = std::env::var("KEYHOLDER_MARIADBD").unwrap_or_else(|_| "mariadbd".into());
        let child = std::process::Command::new(server)
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", dir.path().join("sock").display()))
            .arg(format!("--pid-file={}", dir.path().join("pid").display()))
            .arg(format!("--port={port}"))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--sql-mode={sql_mode}"))
            .arg("--innodb-buffer-pool-size=16M")
            .args(user)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("mariadbd");
        let server = Self {
            child,
            url: format!("mysql://root@127.0.0.1:{port}/test"),
            _dir: dir,
        };
        let admin = format!("mysql://root@127.0.0.1:{port}/mysql");
        for _ in 0..300 {
            let opts = mysql_async::Opts::from_url(&admin).unwrap();
            if let Ok(mut conn) = mysql_async::Conn::new(opts).await {
                conn.query_drop("CREATE DATABASE test").await.unwrap();
                return server;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the test's own mariadbd did not accept connections");
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// On a server whose `sql_mode` is not strict (MySQL 5.6's default, and
/// many a legacy server's), a value too long for its column is cut with a
/// warning instead of refused. A v10 record is one character longer than
/// the v9 one it replaces: in a `VARCHAR` sized for the v9 records, the
/// swap cut the new record, the record was lost, and the inventory (which
/// reads prefixes only) called the pass drained. The engine's sessions are
/// strict whatever the server's default, so the batch is refused and
/// rolled back, and every record still decrypts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_a_server_without_strict_mode_never_cuts_a_record() {
    if std::env::var("KEYHOLDER_TEST_MYSQL").is_err() {
        eprintln!("skipping: KEYHOLDER_TEST_MYSQL not set");
        return;
    }
    let server = OwnServer::start("").await;
    let db = Db::Mysql {
        url: server.url.clone(),
        table: "records".into(),
    };
    db.seed(20).await;
    let mut conn = mysql_connect(&server.url).await;
    let longest: u64 = conn
        .query_first("SELECT MAX(CHAR_LENGTH(a)) FROM records")
        .await
        .unwrap()
        .unwrap();
    conn.query_drop(format!("ALTER TABLE records MODIFY a VARCHAR({longest})"))
        .await
        .unwrap();

    let result = run_pass_on(&db).await;
    let ring = fixture::keyring(10);
    let cut: Vec<i64> = db
        .rows()
        .await
        .into_iter()
        .filter(|(id, a, _)| {
            a.as_ref()
                .is_some_and(|a| ring.decrypt(a, &db.aad("a", *id)).is_err())
        })
        .map(|(id, _, _)| id)
        .collect();
    assert_eq!(
        cut,
        Vec::<i64>::new(),
        "records cut by the swap; the pass: {result:?}"
    );
    match result {
        Err(Error::Mysql { code, .. }) => assert_eq!(code, Some(1406), "data too long"),
        other => panic!("a pass that could not write its records: {other:?}"),
    }
}

async fn run_pass_on(db: &Db) -> Result<PassOutcome> {
    fixture::run_pass(
        db,
        10,
        9,
        Arc::new(MemoryCheckpoints::new()),
        &fixture::throttle(1000),
    )
    .await
}

/// Records in a column of a character set that is not ASCII's (`utf16`,
/// `ucs2`, `utf32`) move too. The byte comparisons cast the column as
/// stored: in `utf16` the prefix `V9:` is six bytes that never equal the
/// three of the bound `V9:`, so no page held a record, while the inventory
/// (read as utf8mb4) counted them all, and the pass swept 20 times for
/// nothing and failed with every record of the column left at v9.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_records_in_a_utf16_column_move() {
    let Some(db) = mysql("utf16").await else {
        return;
    };
    db.seed(300).await;
    let (url, table) = url_and_table(&db);
    mysql_connect(url)
        .await
        .query_drop(format!(
            "ALTER TABLE {table} MODIFY a TEXT CHARACTER SET utf16 COLLATE utf16_general_ci"
        ))
        .await
        .unwrap();
    let (digest_before, versions_before) = db.digest().await;
    let outcome = fixture::run_pass(
        &db,
        10,
        9,
        Arc::new(MemoryCheckpoints::new()),
        &fixture::throttle(100),
    )
    .await;
    let Ok(PassOutcome::Drained(report)) = outcome else {
        panic!("the pass did not drain: {outcome:?}");
    };
    let (digest_after, versions_after) = db.digest().await;
    assert_eq!(digest_after, digest_before, "plaintexts changed");
    assert_eq!(versions_after.get(&fixture::v(9)), None);
    assert_eq!(
        report.checkpoint.records_done,
        versions_before[&fixture::v(9)]
    );
    drop_table(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_sampling_text_keys_beyond_ascii() {
    let Some(db) = mysql("nonascii").await else {
        return;
    };
    scenarios::sample_of_text_keys_beyond_ascii(db.clone()).await;
    drop_table(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_a_key_that_may_repeat_or_be_null_is_refused() {
    let Some(db) = mysql("uniquekey").await else {
        return;
    };
    scenarios::key_unique_and_not_null(db.clone()).await;
    drop_table(&db).await;
}
