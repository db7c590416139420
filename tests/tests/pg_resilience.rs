//! Re-encryption that survives its PostgreSQL database (issue 18), through
//! the real daemon: a test-owned server restarted twice during a pass (the
//! job resumes by itself each time, status shows the retries meanwhile,
//! nothing is lost), and a persistent error (the column's type changed under
//! the job) that stops the job with the database's own words until
//! `rotate resume` after the fix. And, on the store itself, the flush of the
//! batches' asynchronous commits before the inventory that may call a pass
//! drained.
//!
//! Needs `KEYHOLDER_TEST_PG` (skipped, saying so, when it is not set; with
//! it set, a missing `initdb` or an unreachable server fails).

use std::time::Duration;

use crypto_core::{Key, envelope};
use keyholder_api::{RotationState, RotationStatus};
use keyholder_tests::daemon::OPERATOR;
use keyholder_tests::pg;
use keyholder_tests::pg_instance::PgInstance;
use keyholder_tests::records::plaintext;
use keyholder_tests::rotation::v;
use keyholder_tests::{Env, EnvOptions};
use serde_json::json;

const ROWS: i64 = 20_000;

/// A daemon whose one target is `table` (`id`, `ssn`, created here) at
/// `url`, seeded with `rows` records at v9, started and still sealed;
/// `options` gives the rest of the env (throttle, state store). Returns the
/// env, the running daemon (stopped when dropped) and alice's and bob's v9
/// share lines.
async fn seeded(
    url: &str,
    table: &str,
    rows: i64,
    options: EnvOptions,
) -> (Env, keyholder_tests::Daemon, [String; 2]) {
    let db = pg::connect(url).await;
    db.batch_execute(&format!(
        "CREATE TABLE {table} (id BIGINT PRIMARY KEY, ssn TEXT NOT NULL)"
    ))
    .await
    .unwrap();
    let env = Env::new(EnvOptions {
        first_version: Some(9),
        consumers: vec!["db1".to_owned()],
        extra_toml: format!(
            "\n[[targets]]\nname = \"customers-pg\"\nstore = \"{url}\"\ntable = \"{table}\"\nprimary_key = \"id\"\ncolumns = [\"ssn\"]\naad = \"none\"\n"
        ),
        ..options
    });
    let daemon = env.start().await;
    let (alice9, bob9) = (env.share_line("alice", 9), env.share_line("bob", 9));
    let v9 = env.rebuild_key(9, &[&alice9, &bob9]).await;
    let ids: Vec<i64> = (1..=rows).collect();
    let records: Vec<String> = ids
        .iter()
        .map(|id| envelope::seal(&v9, v(9), plaintext(*id).as_bytes(), b""))
        .collect();
    db.execute(
        &format!("INSERT INTO {table} (id, ssn) SELECT * FROM unnest($1::bigint[], $2::text[])"),
        &[&ids, &records],
    )
    .await
    .unwrap();
    (env, daemon, [alice9, bob9])
}

/// [`seeded`] with [`ROWS`] records (the state store at `state_store` when
/// given), unsealed, with the rotation to v10 switched and moving records
/// at `rows_per_sec`. Returns the env, the running daemon and the v10
/// shares.
async fn rotating(
    url: &str,
    table: &str,
    rows_per_sec: u64,
    state_store: Option<String>,
) -> (Env, keyholder_tests::Daemon, [String; 2]) {
    let options = EnvOptions {
        batch_size: Some(250),
        rows_per_sec: Some(rows_per_sec),
        state_store,
        ..EnvOptions::default()
    };
    let (env, daemon, [alice9, bob9]) = seeded(url, table, ROWS, options).await;
    env.unseal_with(&[("alice", vec![alice9]), ("bob", vec![bob9])])
        .await;
    env.operate("/v1/rotation/prepare", json!({})).await;
    let alice10 = env.fetch_new_share("alice", 10).await;
    let bob10 = env.fetch_new_share("bob", 10).await;
    env.verify_new_share("alice", &alice10).await;
    env.verify_new_share("bob", &bob10).await;
    env.operate("/v1/rotation/activate", json!({})).await;
    env.database_keyring().await;
    env.operate("/v1/rotation/switch", json!({})).await;
    env.database_keyring().await;
    (env, daemon, [alice10, bob10])
}

fn rotation(status: &keyholder_api::Status) -> &RotationStatus {
    status.rotation.as_ref().expect("a rotation")
}

/// Every row is there, at v10, with its own plaintext.
async fn assert_all_at_v10(url: &str, table: &str, v10: &Key) {
    let db = pg::connect(url).await;
    let rows = db
        .query(&format!("SELECT id, ssn FROM {table} ORDER BY id"), &[])
        .await
        .unwrap();
    assert_eq!(rows.len() as i64, ROWS, "rows lost");
    for row in rows {
        let (id, record): (i64, String) = (row.get(0), row.get(1));
        assert!(record.starts_with("V10:"), "record {id} is not at v10");
        let plain = envelope::open(v10, v(10), &record, b"").unwrap();
        assert_eq!(&plain[..], plaintext(id).as_bytes(), "record {id}");
    }
}

#[tokio::test]
async fn the_job_rides_out_two_restarts_of_its_database_and_drains() {
    if pg::url().is_none() {
        return;
    }
    two_restarts_during_a_pass(false).await;
}

#[tokio::test]
async fn the_job_and_the_state_store_ride_out_two_restarts_of_their_database() {
    if pg::url().is_none() {
        return;
    }
    two_restarts_during_a_pass(true).await;
}

/// The server restarted twice during a pass; with `state_there`, the
/// daemon's state store (checkpoints, audit) lives on it too.
async fn two_restarts_during_a_pass(state_there: bool) {
    let server = PgInstance::start();
    let url = server.url();
    let table = pg::unique_name("kh_restart");
    let state = state_there.then(|| url.clone());
    let (env, _daemon, [alice10, bob10]) = rotating(&url, &table, 2_000, state).await;

    let mut seen_retries = 0;
    for (restart, after_rows) in [(1u64, 2_000u64), (2, 9_000)] {
        env.wait_for(
            &format!("{after_rows} records moved before restart {restart}"),
            Duration::from_secs(60),
            |s| rotation(s).rows_done >= after_rows,
        )
        .await;
        let before = rotation(&env.status().await).rows_done;
        server.stop();
        let transient = if state_there {
            // The status document reads the state store, which is away
            // too: the retries show in the log now and in status once the
            // server is back.
            assert!(
                env.log_contains("re-encryption met a transient database failure")
                    .await,
                "no retry logged while the server is away"
            );
            tokio::time::sleep(Duration::from_secs(2)).await;
            None
        } else {
            // While the server is away the worker keeps trying, and says so.
            let away = env
                .wait_for(
                    &format!("status showing retry {restart} while the server is away"),
                    Duration::from_secs(30),
                    |s| rotation(s).retries > seen_retries && rotation(s).retrying,
                )
                .await;
            let away = rotation(&away).clone();
            assert_eq!(away.state, RotationState::Reencrypting);
            assert_eq!(away.last_error, None, "a restart is not an error to fix");
            let transient = away.last_transient_error.clone().unwrap_or_default();
            assert!(
                transient.contains("target `customers-pg`: postgres"),
                "{transient}"
            );
            tokio::time::sleep(Duration::from_secs(2)).await;
            Some(transient)
        };
        server.start_again();
        let back = env
            .wait_for(
                &format!("the job going on after restart {restart}"),
                Duration::from_secs(60),
                |s| {
                    let r = rotation(s);
                    r.rows_done > before && r.retries > seen_retries && !r.retrying
                },
            )
            .await;
        let back = rotation(&back);
        assert_eq!(back.last_error, None, "a restart is not an error to fix");
        seen_retries = back.retries;
        eprintln!(
            "restart {restart}: {seen_retries} retries so far, last: {}",
            transient
                .or(back.last_transient_error.clone())
                .unwrap_or_default()
        );
    }

    let drained = env
        .wait_rotation(RotationState::Drained, Duration::from_secs(120))
        .await;
    let drained = rotation(&drained);
    assert_eq!(drained.last_error, None);
    assert!(drained.retries >= 2, "{drained:#?}");
    let v10 = env.rebuild_key(10, &[&alice10, &bob10]).await;
    assert_all_at_v10(&url, &table, &v10).await;
}

#[tokio::test]
async fn a_column_type_changed_under_the_job_stops_it_with_the_databases_words_until_resume() {
    let Some(url) = pg::url() else { return };
    let table = pg::unique_name("kh_retype");
    let (env, _daemon, [alice10, bob10]) = rotating(&url, &table, 2_000, None).await;
    env.wait_for("records moving", Duration::from_secs(60), |s| {
        rotation(s).rows_done >= 1_000
    })
    .await;
    let db = pg::connect(&url).await;
    db.batch_execute(&format!(
        "ALTER TABLE {table} ALTER COLUMN ssn TYPE bytea USING convert_to(ssn, 'UTF8')"
    ))
    .await
    .unwrap();
    let stopped = env
        .wait_for(
            "the job stopping on the changed column",
            Duration::from_secs(60),
            |s| rotation(s).last_error.is_some(),
        )
        .await;
    let stopped = rotation(&stopped).clone();
    let error = stopped.last_error.clone().unwrap();
    eprintln!("the job stopped with: {error}");
    for part in [
        "target `customers-pg`: postgres",
        "SQLSTATE 42883",
        "operator does not exist: bytea = text",
        &format!("table `{table}`"),
        &format!("column `{table}.ssn` has type `bytea`; records are stored as text"),
        "then run `keyholder rotate resume`",
    ] {
        assert!(error.contains(part), "{part:?} missing from: {error}");
    }
    assert_eq!(stopped.state, RotationState::Reencrypting);
    assert!(!stopped.retrying);
    // Nothing moves while it is stopped.
    let moved = stopped.rows_done;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rotation(&env.status().await).rows_done, moved);

    db.batch_execute(&format!(
        "ALTER TABLE {table} ALTER COLUMN ssn TYPE text USING convert_from(ssn, 'UTF8')"
    ))
    .await
    .unwrap();
    let resumed: RotationStatus = env.operate("/v1/rotation/resume", json!({})).await.json();
    assert_eq!(resumed.last_error, None);
    let drained = env
        .wait_rotation(RotationState::Drained, Duration::from_secs(120))
        .await;
    assert_eq!(rotation(&drained).last_error, None);
    let v10 = env.rebuild_key(10, &[&alice10, &bob10]).await;
    assert_all_at_v10(&url, &table, &v10).await;
    db.batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

#[tokio::test]
async fn an_unseal_while_the_targets_database_restarts_waits_for_it_and_succeeds() {
    if pg::url().is_none() {
        return;
    }
    let server = std::sync::Arc::new(PgInstance::start());
    let url = server.url();
    let table = pg::unique_name("kh_unseal");
    let db = pg::connect(&url).await;
    db.batch_execute(&format!(
        "CREATE TABLE {table} (id BIGINT PRIMARY KEY, ssn TEXT NOT NULL)"
    ))
    .await
    .unwrap();
    let env = Env::new(EnvOptions {
        first_version: Some(9),
        extra_toml: format!(
            "\n[[targets]]\nname = \"customers-pg\"\nstore = \"{url}\"\ntable = \"{table}\"\nprimary_key = \"id\"\ncolumns = [\"ssn\"]\naad = \"none\"\n"
        ),
        ..EnvOptions::default()
    });
    let _daemon = env.start().await;
    let (alice9, bob9) = (env.share_line("alice", 9), env.share_line("bob", 9));
    let v9 = env.rebuild_key(9, &[&alice9, &bob9]).await;
    for id in 1..=20i64 {
        let record = envelope::seal(&v9, v(9), plaintext(id).as_bytes(), b"");
        db.execute(
            &format!("INSERT INTO {table} (id, ssn) VALUES ($1, $2)"),
            &[&id, &record],
        )
        .await
        .unwrap();
    }
    drop(db);
    server.stop();
    let restarting = std::sync::Arc::clone(&server);
    let back = tokio::task::spawn_blocking(move || {
        std::thread::sleep(Duration::from_secs(2));
        restarting.start_again();
    });
    let unsealed = env
        .unseal_with(&[("alice", vec![alice9]), ("bob", vec![bob9])])
        .await;
    back.await.unwrap();
    assert!(!unsealed.sealed, "{unsealed:#?}");
    assert!(
        env.log_contains("sampling met a transient database failure")
            .await,
        "the retries are not in the log"
    );
}

/// Processes of a test-owned server stopped with SIGSTOP; SIGCONT when
/// dropped, also when the test panics.
struct Stopped(Vec<nix::unistd::Pid>);

impl Stopped {
    fn new(pids: Vec<i32>) -> Self {
        let pids: Vec<_> = pids.into_iter().map(nix::unistd::Pid::from_raw).collect();
        for pid in &pids {
            nix::sys::signal::kill(*pid, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP");
        }
        Self(pids)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = nix::sys::signal::kill(*pid, nix::sys::signal::Signal::SIGCONT);
        }
    }
}

/// The batches commit asynchronously (`synchronous_commit = off`), so the
/// store's `make_durable`, run before the inventory that may call a pass
/// drained, must flush them: were they lost in a crash after the old key's
/// retirement, their records would be back at a key nobody holds. With the
/// server's WAL writer and background writer stopped, nothing else flushes
/// the WAL; a transaction that writes no WAL (`txid_current()` alone)
/// commits asynchronously whatever `synchronous_commit` says, and left the
/// batch unflushed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn make_durable_flushes_the_batches_asynchronous_commits() {
    use keyholder_reencrypt::{AadRule, CellSwap, RowSwap, TargetConfig, open_store};

    if pg::url().is_none() {
        return;
    }
    let server = PgInstance::start();
    let url = server.url();
    let db = pg::connect(&url).await;
    // Nothing of the server's own may write or flush meanwhile.
    db.batch_execute("ALTER SYSTEM SET autovacuum = off")
        .await
        .unwrap();
    db.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    let v9 = Key::from_slice(&[9; 32]).unwrap();
    let v10 = Key::from_slice(&[10; 32]).unwrap();
    let old = envelope::seal(&v9, v(9), plaintext(1).as_bytes(), b"");
    db.batch_execute("CREATE TABLE durable (id BIGINT PRIMARY KEY, ssn TEXT NOT NULL)")
        .await
        .unwrap();
    db.execute("INSERT INTO durable VALUES (1, $1)", &[&old])
        .await
        .unwrap();
    let target = TargetConfig {
        name: "durable".into(),
        store: url.clone(),
        table: "durable".into(),
        primary_key: "id".into(),
        columns: vec!["ssn".into()],
        aad: AadRule::None,
    }
    .validate("targets[0]")
    .unwrap();
    let store = open_store(&target).await.unwrap();
    let read = store.read_page(v(9), None, 10).await.unwrap();
    assert_eq!(read.len(), 1);
    let flushers: Vec<i32> = db
        .query(
            "SELECT pid FROM pg_stat_activity WHERE backend_type IN ('walwriter', 'background writer')",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        flushers.len(),
        2,
        "the WAL writer and the background writer"
    );

    let stopped = Stopped::new(flushers);
    let swap = RowSwap {
        pk: read[0].pk.clone(),
        cells: vec![Some(CellSwap {
            old,
            new: envelope::seal(&v10, v(10), plaintext(1).as_bytes(), b""),
        })],
    };
    assert_eq!(store.swap_batch(vec![swap]).await.unwrap().applied, 1);
    let batch_end: String = db
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    let unflushed: bool = db
        .query_one(
            "SELECT pg_current_wal_flush_lsn() < $1::text::pg_lsn",
            &[&batch_end],
        )
        .await
        .unwrap()
        .get(0);
    store.make_durable().await.unwrap();
    let flushed: String = db
        .query_one("SELECT pg_current_wal_flush_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    drop(stopped);
    assert!(
        unflushed,
        "the batch was flushed before make_durable: the test shows nothing"
    );
    let covered: bool = db
        .query_one(
            "SELECT $1::text::pg_lsn >= $2::text::pg_lsn",
            &[&flushed, &batch_end],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        covered,
        "make_durable returned with the WAL flushed to {flushed}, short of the batch's commit (before {batch_end})"
    );
}

/// A daemon whose state store is a PostgreSQL server that stops: a keyring
/// is never handed over unrecorded, so `GET /v1/keyring` answers 503
/// `store_unavailable` with `Retry-After` (not 500), the daemon stays
/// unsealed, and a database's `keyholder hook --wait` started meanwhile
/// waits for the store and gets its keyring once the server is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_waits_out_a_state_store_restart_and_gets_its_keyring() {
    if pg::url().is_none() {
        return;
    }
    let server = PgInstance::start();
    let env = Env::new(EnvOptions {
        first_version: Some(9),
        consumers: vec!["db1".to_owned()],
        state_store: Some(server.url()),
        ..EnvOptions::default()
    });
    let _daemon = env.start().await;
    env.unseal_with(&[
        ("alice", vec![env.share_line("alice", 9)]),
        ("bob", vec![env.share_line("bob", 9)]),
    ])
    .await;
    env.database_keyring().await;

    server.stop();
    let answer = env.client("db1").get("/v1/keyring").await;
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert_eq!(answer.error().code, "store_unavailable", "{}", answer.body);
    assert_eq!(answer.retry_after.as_deref(), Some("1"));
    let health = env.client("db1").get("/v1/health").await;
    assert!(health.body.contains("\"sealed\":false"), "{}", health.body);

    let hook = env
        .keyholder_cli("db1")
        .args(["hook", "--wait", "60s", "--format", "json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.start_again();
    let out = tokio::task::spawn_blocking(move || hook.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the hook failed: {stderr}");
    assert!(
        stderr.contains("keyholderd cannot reach its state store"),
        "the hook said why it waited: {stderr}"
    );
    let handover = String::from_utf8(out.stdout).unwrap();
    let keyring = crypto_core::Keyring::from_handover_json(&handover).unwrap();
    assert_eq!(keyring.write_version(), v(9));
}

/// A rotation step that takes long must not hold up the databases' keyring
/// fetches, and a fetch answered during it counts by the keyring it got:
/// with the target's server stopped, `switch` keeps retrying its sample
/// reads; db1's fetch meanwhile is answered at once with the keyring still
/// writing v9 (before, it waited for the whole step), and once the switch
/// is done db1 is still awaited as a writer of v10 until it fetches again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyring_fetch_during_a_long_switch_is_answered_and_counts_by_what_it_got() {
    if pg::url().is_none() {
        return;
    }
    let server = PgInstance::start();
    let url = server.url();
    let table = pg::unique_name("kh_switch");
    let (env, _daemon, [alice9, bob9]) = seeded(&url, &table, 100, EnvOptions::default()).await;
    env.unseal_with(&[("alice", vec![alice9]), ("bob", vec![bob9])])
        .await;
    env.operate("/v1/rotation/prepare", json!({})).await;
    for name in ["alice", "bob"] {
        let line = env.fetch_new_share(name, 10).await;
        env.verify_new_share(name, &line).await;
    }
    env.operate("/v1/rotation/activate", json!({})).await;
    env.database_keyring().await;

    server.stop();
    let operator = env.client(OPERATOR);
    let switch =
        tokio::spawn(async move { operator.post("/v1/rotation/switch", &json!({})).await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = std::time::Instant::now();
    let fetched = tokio::time::timeout(
        Duration::from_secs(10),
        env.client("db1").get("/v1/keyring"),
    )
    .await
    .expect("the keyring fetch waited for the switch");
    assert_eq!(fetched.status, 200, "{}", fetched.body);
    let keyring = crypto_core::Keyring::from_handover_json(&fetched.body).unwrap();
    assert_eq!(keyring.write_version(), v(9), "fetched before the switch");
    assert!(!switch.is_finished(), "the switch waits for its database");
    println!(
        "keyring answered in {:?} during the switch",
        started.elapsed()
    );

    server.start_again();
    let switched = switch.await.unwrap();
    assert_eq!(switched.status, 200, "{}", switched.body);
    let status: RotationStatus = switched.json();
    assert_eq!(status.state, RotationState::Reencrypting);
    // The rotation has taken the queued fetch by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = env.status().await;
    assert_eq!(
        rotation(&status).waiting_for,
        ["db1"],
        "db1 got a keyring writing v9: not yet a writer of v10"
    );
    let keyring = env.database_keyring().await;
    assert_eq!(keyring.write_version(), v(10));
    let status = env.status().await;
    assert_eq!(rotation(&status).waiting_for, Vec::<String>::new());
}

/// A seal is never undone by an unseal that was under way: with the
/// target's server stopped, the unseal's proof of the rebuilt key keeps
/// retrying its sample reads; an operator seals meanwhile; when the server
/// is back and the proof passes, the keys are dropped, not loaded, and the
/// daemon stays sealed (before, it unsealed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seal_during_an_unseals_proof_wins() {
    if pg::url().is_none() {
        return;
    }
    let server = PgInstance::start();
    let url = server.url();
    let table = pg::unique_name("kh_sealrace");
    let (env, _daemon, [alice9, bob9]) = seeded(&url, &table, 100, EnvOptions::default()).await;
    let alice = env.client("alice").unseal(&[&alice9]).await;
    assert_eq!(alice.status, 200, "{}", alice.body);

    server.stop();
    let bob = env.client("bob");
    let unseal = tokio::spawn(async move { bob.unseal(&[&bob9]).await });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!unseal.is_finished(), "the proof waits for its database");
    let sealed = env.operate("/v1/seal", json!({})).await;
    assert_eq!(sealed.status, 200, "{}", sealed.body);
    server.start_again();
    let answer = unseal.await.unwrap();
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert!(
        answer
            .body
            .contains("sealed while the rebuilt keys were being proven"),
        "{}",
        answer.body
    );
    let status = env.status().await;
    assert!(status.sealed, "the seal was undone: {status:?}");
    assert_eq!(env.client("db1").get("/v1/keyring").await.status, 503);
}
