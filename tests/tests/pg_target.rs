//! A PostgreSQL target through the real daemon: records sampled at unseal
//! (a record under another key keeps it sealed, named by id), then a whole
//! rotation v9 -> v10 re-encrypting the table in PostgreSQL.
//!
//! Needs `KEYHOLDER_TEST_PG` (skipped, saying so, when it is not set; a
//! failure when it is set and the server does not answer).

use std::time::Duration;

use crypto_core::{Key, envelope};
use keyholder_api::{RotationState, UnsealResponse};
use keyholder_tests::pg;
use keyholder_tests::records::plaintext;
use keyholder_tests::rotation::v;
use keyholder_tests::{Env, EnvOptions};
use serde_json::json;

const ROWS: i64 = 3000;

#[tokio::test]
async fn a_postgres_target_is_proven_at_unseal_and_rotated_from_v9_to_v10() {
    let Some(url) = pg::url() else { return };
    let db = pg::connect(&url).await;
    let table = pg::unique_name("kh_target");
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
        ..EnvOptions::default()
    });
    let _daemon = env.start().await;
    let (alice9, bob9) = (env.share_line("alice", 9), env.share_line("bob", 9));
    let v9 = env.rebuild_key(9, &[&alice9, &bob9]).await;
    let insert = db
        .prepare(&format!("INSERT INTO {table} (id, ssn) VALUES ($1, $2)"))
        .await
        .unwrap();
    // Fewer records than the sample size, so every one is test-decrypted.
    const FIRST: i64 = 20;
    for id in 1..=FIRST {
        let record = envelope::seal(&v9, v(9), plaintext(id).as_bytes(), b"");
        db.execute(&insert, &[&id, &record]).await.unwrap();
    }
    // One record written under another key: unseal must find it.
    let forged = envelope::seal(&Key::generate(), v(9), b"x", b"");
    db.execute(&insert, &[&(ROWS + 1), &forged]).await.unwrap();

    env.client("alice").unseal(&[&alice9]).await;
    let refused = env.client("bob").unseal(&[&bob9]).await;
    assert_eq!(refused.status, 422, "{}", refused.body);
    let message = refused.error().error;
    assert!(
        message.contains("v9") && message.contains(&format!("{table}.ssn id={}", ROWS + 1)),
        "{message}"
    );
    db.execute(
        &format!("DELETE FROM {table} WHERE id = $1"),
        &[&(ROWS + 1)],
    )
    .await
    .unwrap();
    let done: UnsealResponse = env
        .unseal_with(&[("alice", vec![alice9.clone()]), ("bob", vec![bob9.clone()])])
        .await;
    assert!(!done.sealed);
    for id in FIRST + 1..=ROWS {
        let record = envelope::seal(&v9, v(9), plaintext(id).as_bytes(), b"");
        db.execute(&insert, &[&id, &record]).await.unwrap();
    }

    env.operate("/v1/rotation/prepare", json!({})).await;
    let alice10 = env.fetch_new_share("alice", 10).await;
    let bob10 = env.fetch_new_share("bob", 10).await;
    env.verify_new_share("alice", &alice10).await;
    env.verify_new_share("bob", &bob10).await;
    env.operate("/v1/rotation/activate", json!({})).await;
    env.database_keyring().await;
    env.operate("/v1/rotation/switch", json!({})).await;
    env.database_keyring().await;
    env.wait_rotation(RotationState::Drained, Duration::from_secs(60))
        .await;

    let v10 = env.rebuild_key(10, &[&alice10, &bob10]).await;
    let rows = db
        .query(&format!("SELECT id, ssn FROM {table} ORDER BY id"), &[])
        .await
        .unwrap();
    assert_eq!(rows.len() as i64, ROWS);
    for row in rows {
        let (id, record): (i64, String) = (row.get(0), row.get(1));
        assert!(record.starts_with("V10:"), "record {id} is not at v10");
        let plain = envelope::open(&v10, v(10), &record, b"").unwrap();
        assert_eq!(&plain[..], plaintext(id).as_bytes(), "record {id}");
    }
    db.batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

/// `[reencrypt] workers = 2`: the daemon's pass splits the table's keys
/// between two workers, says so in its log, and drains every record.
#[tokio::test]
async fn two_workers_rotate_a_postgres_target() {
    let Some(url) = pg::url() else { return };
    let db = pg::connect(&url).await;
    let table = pg::unique_name("kh_workers");
    db.batch_execute(&format!(
        "CREATE TABLE {table} (id BIGINT PRIMARY KEY, ssn TEXT NOT NULL)"
    ))
    .await
    .unwrap();
    let env = Env::new(EnvOptions {
        first_version: Some(9),
        consumers: vec!["db1".to_owned()],
        batch_size: Some(100),
        workers: Some(2),
        extra_toml: format!(
            "\n[[targets]]\nname = \"customers-pg\"\nstore = \"{url}\"\ntable = \"{table}\"\nprimary_key = \"id\"\ncolumns = [\"ssn\"]\naad = \"none\"\n"
        ),
        ..EnvOptions::default()
    });
    let _daemon = env.start().await;
    let (alice9, bob9) = (env.share_line("alice", 9), env.share_line("bob", 9));
    let v9 = env.rebuild_key(9, &[&alice9, &bob9]).await;
    let insert = db
        .prepare(&format!("INSERT INTO {table} (id, ssn) VALUES ($1, $2)"))
        .await
        .unwrap();
    for id in 1..=ROWS {
        let record = envelope::seal(&v9, v(9), plaintext(id).as_bytes(), b"");
        db.execute(&insert, &[&id, &record]).await.unwrap();
    }
    let done: UnsealResponse = env
        .unseal_with(&[("alice", vec![alice9]), ("bob", vec![bob9])])
        .await;
    assert!(!done.sealed);
    env.operate("/v1/rotation/prepare", json!({})).await;
    let alice10 = env.fetch_new_share("alice", 10).await;
    let bob10 = env.fetch_new_share("bob", 10).await;
    env.verify_new_share("alice", &alice10).await;
    env.verify_new_share("bob", &bob10).await;
    env.operate("/v1/rotation/activate", json!({})).await;
    env.database_keyring().await;
    env.operate("/v1/rotation/switch", json!({})).await;
    env.database_keyring().await;
    env.wait_rotation(RotationState::Drained, Duration::from_secs(60))
        .await;
    assert!(
        env.log_contains("main scan split over workers on disjoint key ranges")
            .await,
        "{}",
        env.log_text()
    );

    let v10 = env.rebuild_key(10, &[&alice10, &bob10]).await;
    let rows = db
        .query(&format!("SELECT id, ssn FROM {table} ORDER BY id"), &[])
        .await
        .unwrap();
    assert_eq!(rows.len() as i64, ROWS);
    for row in rows {
        let (id, record): (i64, String) = (row.get(0), row.get(1));
        assert!(record.starts_with("V10:"), "record {id} is not at v10");
        let plain = envelope::open(&v10, v(10), &record, b"").unwrap();
        assert_eq!(&plain[..], plaintext(id).as_bytes(), "record {id}");
    }
    db.batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}
