//! The real `keyholderd` with its state in PostgreSQL (`state_store`): init,
//! run, unseal, restart sealed, unseal again, on the server named by
//! `KEYHOLDER_TEST_PG` (skipped, saying so, when it is not set; a failure
//! when it is set and the server does not answer).
//!
//! Build the daemon first: `cargo build -p keyholder-server`.

use crypto_core::KeyVersion;
use keyholder_api::{AuditLog, Status, UnsealResponse};
use keyholder_tests::daemon::OPERATOR;
use keyholder_tests::pg::{self, Schema};
use keyholder_tests::{Env, EnvOptions};

#[tokio::test]
async fn the_daemon_keeps_its_state_in_postgres_and_restarts_sealed() {
    let Some(url) = pg::url() else { return };
    let schema = Schema::new(&url).await;
    let env = Env::new(EnvOptions {
        state_store: Some(schema.state_store()),
        ..EnvOptions::default()
    });
    assert!(
        std::fs::read_dir(&env.state_dir).unwrap().next().is_none(),
        "nothing is written to the state dir"
    );
    let stored: i64 = schema
        .client
        .query_one(
            &format!(
                "SELECT count(*) FROM \"{}\".share_envelopes WHERE version = 1",
                schema.name
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        stored, 3,
        "init stored one envelope per keyholder in PostgreSQL"
    );

    let lines: Vec<String> = ["alice", "bob", "carol"]
        .iter()
        .map(|n| env.share_line(n, 1))
        .collect();
    let mut daemon = env.start().await;
    env.client("alice").unseal(&[&lines[0]]).await;
    let done: UnsealResponse = env.client("bob").unseal(&[&lines[1]]).await.json();
    assert!(!done.sealed, "{done:?}");
    let status: Status = env.client(OPERATOR).get("/v1/status").await.json();
    assert_eq!(status.write_version, KeyVersion::new(1).ok());
    assert!(daemon.stop(), "SIGTERM exits cleanly");

    let mut daemon = env.start().await;
    let status: Status = env.client(OPERATOR).get("/v1/status").await.json();
    assert!(status.sealed, "the daemon restarts sealed");
    assert_eq!(status.versions.len(), 1, "v1 read back from PostgreSQL");
    env.client("carol").unseal(&[&lines[2]]).await;
    let done: UnsealResponse = env.client("alice").unseal(&[&lines[0]]).await.json();
    assert!(!done.sealed, "{done:?}");

    let log: AuditLog = env.client(OPERATOR).get("/v1/audit").await.json();
    keyholder_api::verify_chain(&log.entries).expect("the audit chain verifies");
    let started = log.entries.iter().filter(|e| e.action == "started").count();
    assert_eq!(started, 2, "both runs appended to one chain");
    let refused = schema
        .client
        .batch_execute(&format!(
            "UPDATE \"{}\".audit SET actor = 'mallory'",
            schema.name
        ))
        .await
        .unwrap_err();
    assert_eq!(
        refused.as_db_error().map(|e| e.message()),
        Some("the audit log is append-only (UPDATE refused)")
    );
    assert!(daemon.stop());
    schema.drop_it().await;
}
