//! A MariaDB (MySQL) target through the real daemon: records sampled at
//! unseal (a record under another key keeps it sealed, named by id), then a
//! whole rotation v9 -> v10 re-encrypting the table in MariaDB.
//!
//! Needs `KEYHOLDER_TEST_MYSQL` (skipped, saying so, when it is not set; a
//! failure when it is set and the server does not answer).

use std::time::Duration;

use crypto_core::{Key, envelope};
use keyholder_api::{RotationState, UnsealResponse};
use keyholder_tests::records::plaintext;
use keyholder_tests::rotation::v;
use keyholder_tests::{Env, EnvOptions, mysql, pg};
use mysql_async::prelude::Queryable as _;
use serde_json::json;

const ROWS: i64 = 3000;

#[tokio::test]
async fn a_mysql_target_is_proven_at_unseal_and_rotated_from_v9_to_v10() {
    let Some(url) = mysql::url() else { return };
    let mut db = mysql::connect(&url).await;
    let table = pg::unique_name("kh_target");
    // A case-insensitive collation, as most MySQL schemas have.
    db.query_drop(format!(
        "CREATE TABLE {table} (id BIGINT PRIMARY KEY, ssn TEXT NOT NULL) \
         CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci"
    ))
    .await
    .unwrap();

    let env = Env::new(EnvOptions {
        first_version: Some(9),
        consumers: vec!["db1".to_owned()],
        extra_toml: format!(
            "\n[[targets]]\nname = \"customers-mysql\"\nstore = \"{url}\"\ntable = \"{table}\"\nprimary_key = \"id\"\ncolumns = [\"ssn\"]\naad = \"none\"\n"
        ),
        ..EnvOptions::default()
    });
    let _daemon = env.start().await;
    let (alice9, bob9) = (env.share_line("alice", 9), env.share_line("bob", 9));
    let v9 = env.rebuild_key(9, &[&alice9, &bob9]).await;
    let insert = format!("INSERT INTO {table} (id, ssn) VALUES (?, ?)");
    // Fewer records than the sample size, so every one is test-decrypted.
    const FIRST: i64 = 20;
    for id in 1..=FIRST {
        let record = envelope::seal(&v9, v(9), plaintext(id).as_bytes(), b"");
        db.exec_drop(&insert, (id, record)).await.unwrap();
    }
    // One record written under another key: unseal must find it.
    let forged = envelope::seal(&Key::generate(), v(9), b"x", b"");
    db.exec_drop(&insert, (ROWS + 1, forged)).await.unwrap();

    env.client("alice").unseal(&[&alice9]).await;
    let refused = env.client("bob").unseal(&[&bob9]).await;
    assert_eq!(refused.status, 422, "{}", refused.body);
    let message = refused.error().error;
    assert!(
        message.contains("v9") && message.contains(&format!("{table}.ssn id={}", ROWS + 1)),
        "{message}"
    );
    db.exec_drop(format!("DELETE FROM {table} WHERE id = ?"), (ROWS + 1,))
        .await
        .unwrap();
    let done: UnsealResponse = env
        .unseal_with(&[("alice", vec![alice9.clone()]), ("bob", vec![bob9.clone()])])
        .await;
    assert!(!done.sealed);
    let rest: Vec<(i64, String)> = (FIRST + 1..=ROWS)
        .map(|id| {
            let record = envelope::seal(&v9, v(9), plaintext(id).as_bytes(), b"");
            (id, record)
        })
        .collect();
    db.exec_batch(&insert, rest).await.unwrap();

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
    let rows: Vec<(i64, String)> = db
        .query(format!("SELECT id, ssn FROM {table} ORDER BY id"))
        .await
        .unwrap();
    assert_eq!(rows.len() as i64, ROWS);
    for (id, record) in rows {
        assert!(record.starts_with("V10:"), "record {id} is not at v10");
        let plain = envelope::open(&v10, v(10), &record, b"").unwrap();
        assert_eq!(&plain[..], plaintext(id).as_bytes(), "record {id}");
    }
    db.query_drop(format!("DROP TABLE {table}")).await.unwrap();
}
