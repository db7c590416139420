//! Keys and shares leave the daemon's memory when it seals: the test reads
//! the running daemon's whole address space through `/proc/<pid>/mem` (as
//! root, which CI is) and looks for every encoding of every secret.

use std::time::Duration;

use base64::Engine as _;
use keyholder_api::UnsealResponse;
use keyholder_tests::daemon::{DATABASE, OPERATOR};
use keyholder_tests::secrets::{encodings, process_memory, share_data};
use keyholder_tests::{Env, EnvOptions, TargetSpec};

/// Where `needle` occurs in `regions`, by region name.
fn found_in(regions: &[(String, Vec<u8>)], needle: &[u8]) -> Vec<String> {
    regions
        .iter()
        .filter(|(_, bytes)| memchr::memmem::find(bytes, needle).is_some())
        .map(|(name, _)| name.clone())
        .collect()
}

/// `VmLck` of process `pid`: the memory it holds locked in RAM, in KiB.
fn locked_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmLck:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmLck in /proc/<pid>/status")
}

/// Every secret still in the daemon's memory: `(what, region)`.
fn leaks(pid: u32, secrets: &[(String, Vec<u8>)]) -> Vec<(String, String)> {
    let regions = process_memory(pid).expect("reading the daemon's memory");
    let scanned: usize = regions.iter().map(|(_, b)| b.len()).sum();
    assert!(scanned > 1 << 20, "the scan read only {scanned} bytes");
    secrets
        .iter()
        .flat_map(|(what, needle)| {
            found_in(&regions, needle)
                .into_iter()
                .map(move |region| (what.clone(), region))
        })
        .collect()
}

#[tokio::test]
async fn after_seal_no_key_or_share_bytes_remain_in_the_daemons_memory() {
    // /proc/self belongs to the effective user.
    if std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) != 0 {
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
    let raw = found_in(&process_memory(pid).unwrap(), &key);
    assert!(!raw.is_empty(), "an unsealed daemon holds its key");
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

    // Connections close and their buffers go a moment after the answer.
    let mut found = Vec::new();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        found = leaks(pid, &secrets);
        if found.is_empty() {
            break;
        }
    }
    assert_eq!(locked_kib(pid), 0, "sealed, no key page stays locked");
    assert!(
        found.is_empty(),
        "secrets left in the sealed daemon's memory:\n{}",
        found
            .iter()
            .map(|(what, region)| format!("  {what} in {region}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
