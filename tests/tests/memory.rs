//! Keys and shares leave the daemon's memory when it seals: the test reads
//! the running daemon's whole address space through `/proc/<pid>/mem` (as
//! root, which CI is) and looks for every encoding of every secret.

use base64::Engine as _;
use keyholder_api::UnsealResponse;
use keyholder_tests::daemon::{DATABASE, OPERATOR};
use keyholder_tests::secrets::{
    assert_memory_clean, can_read_memory, encodings, memory_holding, share_data,
};
use keyholder_tests::{Env, EnvOptions, TargetSpec};

/// `VmLck` of process `pid`: the memory it holds locked in RAM, in KiB.
fn locked_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmLck:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmLck in /proc/<pid>/status")
}

#[tokio::test]
async fn after_seal_no_key_or_share_bytes_remain_in_the_daemons_memory() {
    if !can_read_memory() {
        println!("skipping: reading another process's memory needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch("CREATE TABLE customers (id INTEGER PRIMARY KEY, ssn TEXT NOT NULL)")
        .unwrap();
    let env = Env::new(EnvOptions {
        targets: vec![TargetSpec {
            name: "customers-ssn".into(),
            db: db.clone(),
            table: "customers".into(),
            primary_key: "id".into(),
            column: "ssn".into(),
        }],
        ..EnvOptions::default()
    });
    let lines: Vec<String> = ["alice", "bob"]
        .iter()
        .map(|n| env.share_line(n, 1))
        .collect();
    let daemon = env.start().await;
    let pid = daemon.pid().unwrap();

    // First unseal: the key is rebuilt, the database fetches it and writes
    // records with it, so the second unseal test-decrypts real records.
    env.client("alice").unseal(&[&lines[0]]).await;
    let done: UnsealResponse = env.client("bob").unseal(&[&lines[1]]).await.json();
    assert!(!done.sealed);
    let handover = env.client(DATABASE).get("/v1/keyring").await.body;
    let ring = crypto_core::Keyring::from_handover_json(&handover).unwrap();
    for id in 1..=20 {
        conn.execute(
            "INSERT INTO customers (id, ssn) VALUES (?1, ?2)",
            rusqlite::params![id, ring.encrypt(b"123-45-6789", b"").unwrap()],
        )
        .unwrap();
    }
    let key = serde_json::from_str::<serde_json::Value>(&handover).unwrap()["keys"][0]["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let key = base64::engine::general_purpose::STANDARD
        .decode(key)
        .unwrap();
    let mut secrets: Vec<(String, Vec<u8>)> = encodings(&key)
        .into_iter()
        .map(|e| ("key".to_owned(), e))
        .collect();
    for (name, line) in ["alice", "bob"].iter().zip(&lines) {
        secrets.extend(
            encodings(&share_data(line))
                .into_iter()
                .map(|e| (format!("{name}'s share"), e)),
        );
        secrets.push((format!("{name}'s share line"), line.clone().into_bytes()));
    }

    // The scan sees a key where one is: unsealed, the raw key is in memory.
    assert!(
        !memory_holding(pid, &key).is_empty(),
        "an unsealed daemon holds its key"
    );
    // Its key pages, and only those, are locked in RAM (no mlockall).
    let locked = locked_kib(pid);
    assert!(
        locked > 0 && locked < 1024,
        "unsealed, {locked} KiB are locked"
    );

    env.client(OPERATOR)
        .post("/v1/seal", &serde_json::json!({}))
        .await;
    env.client("bob").unseal(&[&lines[1]]).await;
    let done: UnsealResponse = env.client("alice").unseal(&[&lines[0]]).await.json();
    assert!(!done.sealed, "the second unseal passes the sampled records");
    for _ in 0..3 {
        env.client(DATABASE).get("/v1/keyring").await;
    }
    let sealed = env
        .client(OPERATOR)
        .post("/v1/seal", &serde_json::json!({}))
        .await;
    assert_eq!(sealed.status, 200, "{}", sealed.body);

    assert_eq!(locked_kib(pid), 0, "sealed, no key page stays locked");
    assert_memory_clean(pid, &secrets).await;
}

/// A new share sent back with `share verify` has done its work once checked
/// while the daemon holds the new key: it is not kept, neither before
/// `activate` nor after (where a late keyholder verifies only to count
/// towards `rotation.min_verified`).
#[tokio::test]
async fn a_verified_new_share_does_not_stay_in_the_daemons_memory() {
    if !can_read_memory() {
        println!("skipping: reading another process's memory needs root");
        return;
    }
    let env = Env::new(EnvOptions::default());
    let daemon = env.start().await;
    let pid = daemon.pid().unwrap();
    env.unseal_with(&[
        ("alice", vec![env.share_line("alice", 1)]),
        ("bob", vec![env.share_line("bob", 1)]),
    ])
    .await;
    env.operate("/v1/rotation/prepare", serde_json::json!({}))
        .await;
    let alice2 = env.fetch_new_share("alice", 2).await;
    let bob2 = env.fetch_new_share("bob", 2).await;
    let carol2 = env.fetch_new_share("carol", 2).await;
    env.verify_new_share("alice", &alice2).await;
    env.verify_new_share("bob", &bob2).await;
    env.operate("/v1/rotation/activate", serde_json::json!({}))
        .await;
    env.verify_new_share("carol", &carol2).await;
    // Connections closed, their buffers freed (and zeroed by the allocator).
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    for (name, line) in [("alice", &alice2), ("bob", &bob2), ("carol", &carol2)] {
        let places = memory_holding(pid, &share_data(line));
        assert!(
            places.is_empty(),
            "{name}'s verified v2 share is still in the daemon's memory at {places:?}"
        );
    }
}

/// Unseal progress abandoned past `unseal.progress_ttl` leaves memory when it
/// expires, not when someone next asks for the status or submits.
#[tokio::test]
async fn an_abandoned_share_leaves_memory_when_its_progress_expires() {
    if !can_read_memory() {
        println!("skipping: reading another process's memory needs root");
        return;
    }
    let env = Env::new(EnvOptions::default());
    let text = std::fs::read_to_string(&env.config).unwrap();
    assert!(text.contains("progress_ttl = \"15m\""), "{text}");
    std::fs::write(
        &env.config,
        text.replacen("progress_ttl = \"15m\"", "progress_ttl = \"10s\"", 1),
    )
    .unwrap();
    let daemon = env.start().await;
    let pid = daemon.pid().unwrap();
    let alice = env.share_line("alice", 1);
    let answer = env.client("alice").unseal(&[&alice]).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    // Nobody asks for anything meanwhile.
    tokio::time::sleep(std::time::Duration::from_secs(14)).await;
    let places = memory_holding(pid, &share_data(&alice));
    assert!(
        places.is_empty(),
        "alice's share outlived its progress_ttl in the daemon's memory at {places:?}"
    );
    let status = env.client(OPERATOR).get("/v1/status").await;
    assert!(
        status.body.contains("\"unseal_progress\":[]"),
        "{}",
        status.body
    );
}
