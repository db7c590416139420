//! Issue 3's "Must show": the real `keyholderd`, driven over real mTLS.
//!
//! Build the daemon first: `cargo build -p keyholder-server`.

use std::path::Path;

use base64::Engine as _;
use crypto_core::{Key, KeyVersion, Keyring};
use keyholder_api::{AuditLog, Status, UnsealResponse};
use keyholder_tests::daemon::{DATABASE, OPERATOR};
use keyholder_tests::pki::ClientFiles;
use keyholder_tests::secrets::{assert_absent, encodings, files_under, share_data};
use keyholder_tests::{Env, EnvOptions, TargetSpec};
use sha2::Digest as _;

fn v1() -> KeyVersion {
    KeyVersion::new(1).unwrap()
}

/// Rewrites a share line's data and recomputes its checksum: a share that
/// parses but is not the one dealt.
fn forge(line: &str) -> String {
    let body = line.rsplit_once(" check=").unwrap().0;
    let (head, data) = body.rsplit_once(" data=").unwrap();
    let mut bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(data)
        .unwrap();
    bytes[0] ^= 0x01;
    let body = format!(
        "{head} data={}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let check = hex::encode(&sha2::Sha256::digest(body.as_bytes())[..4]);
    format!("{body} check={check}")
}

#[tokio::test]
async fn two_keyholders_unseal_a_repeat_counts_once_and_a_corrupted_share_is_named() {
    let env = Env::new(EnvOptions::default());
    let _daemon = env.start().await;
    let (alice, bob, carol) = (env.client("alice"), env.client("bob"), env.client("carol"));

    let first = alice.unseal(&[&env.share_line("alice", 1)]).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let first: UnsealResponse = first.json();
    assert!(first.sealed && first.all_accepted());
    assert_eq!(first.progress[0].have, 1);

    let again: UnsealResponse = alice.unseal(&[&env.share_line("alice", 1)]).await.json();
    assert!(again.sealed);
    assert_eq!(
        again.outcomes[0].reason.as_deref(),
        Some("alice's share of v1 is already counted; a keyholder counts once per version")
    );
    assert_eq!(
        (again.progress[0].have, again.progress[0].from.as_slice()),
        (1, &["alice".to_owned()][..])
    );

    let forged: UnsealResponse = carol
        .unseal(&[&forge(&env.share_line("carol", 1))])
        .await
        .json();
    assert!(forged.sealed);
    let outcome = &forged.outcomes[0];
    assert!(!outcome.accepted);
    assert_eq!((outcome.version, outcome.index), (Some(v1()), Some(3)));
    assert_eq!(
        outcome.reason.as_deref(),
        Some(
            "carol's share of v1 index 3 does not match the fingerprint recorded when it was dealt: it is corrupted or forged; decrypt the share file again (the shares already in are kept)"
        )
    );
    assert_eq!(
        forged.progress[0].from,
        ["alice"],
        "alice's good share stays counted"
    );

    let mut flipped = env.share_line("carol", 1);
    flipped.replace_range(40..41, if &flipped[40..41] == "a" { "b" } else { "a" });
    let typo: UnsealResponse = carol.unseal(&[&flipped]).await.json();
    assert!(!typo.outcomes[0].accepted);
    assert!(
        typo.outcomes[0]
            .reason
            .as_deref()
            .unwrap()
            .contains("checksum does not match")
    );

    let done: UnsealResponse = bob.unseal(&[&env.share_line("bob", 1)]).await.json();
    assert!(!done.sealed, "{done:?}");
    assert_eq!(done.loaded, [v1()]);

    let status: Status = alice.get("/v1/status").await.json();
    assert!(!status.sealed);
    assert_eq!(status.write_version, Some(v1()));
    let handover = env.client(DATABASE).get("/v1/keyring").await;
    assert_eq!(handover.status, 200, "{}", handover.body);
    let ring = Keyring::from_handover_json(&handover.body).unwrap();
    assert_eq!(ring.kcv(v1()).unwrap().to_hex(), status.versions[0].kcv);
    assert!(
        env.log_text().contains("keyring loaded"),
        "{}",
        env.log_text()
    );
}

#[tokio::test]
async fn a_share_dealt_to_alice_sent_with_bobs_certificate_is_refused() {
    let env = Env::new(EnvOptions::default());
    let _daemon = env.start().await;
    let answer: UnsealResponse = env
        .client("bob")
        .unseal(&[&env.share_line("alice", 1)])
        .await
        .json();
    assert!(answer.sealed);
    assert!(!answer.outcomes[0].accepted);
    assert_eq!(
        answer.outcomes[0].reason.as_deref(),
        Some(
            "share of v1 index 1 was dealt to alice, not bob; each keyholder submits only their own share with their own certificate"
        )
    );
    assert_eq!(answer.outcomes[0].refusal.as_deref(), Some("wrong_holder"));
    assert!(answer.progress.is_empty());
}

#[tokio::test]
async fn bad_certificates_fail_the_handshake_and_a_missing_role_is_named() {
    let env = Env::new(EnvOptions::default());
    let _daemon = env.start().await;
    let no_cert = env.client_with(None);
    let other_ca = env.client_with(Some(&env.pki.from_other_ca("alice")));
    let expired = env.client_with(Some(&env.pki.issue("alice", &[], true)));
    for (what, client) in [
        ("no certificate", no_cert),
        ("another CA", other_ca),
        ("expired", expired),
    ] {
        let result = client.send(reqwest::Method::GET, "/v1/health", None).await;
        assert!(
            result.is_err(),
            "{what}: the handshake must fail, got {result:?}"
        );
    }
    assert!(
        env.log_contains("tls handshake refused").await,
        "{}",
        env.log_text()
    );

    let database = env.client(DATABASE);
    let forbidden = database.unseal(&[&env.share_line("alice", 1)]).await;
    assert_eq!(forbidden.status, 403);
    assert_eq!(
        forbidden.error().error,
        "this needs the keyholder role; db1 has database"
    );
    let seal = database.post("/v1/seal", &serde_json::json!({})).await;
    assert_eq!(seal.status, 403);
    assert_eq!(
        seal.error().error,
        "this needs the operator role; db1 has database"
    );
    let sealed = database.get("/v1/keyring").await;
    assert_eq!(
        (sealed.status, sealed.error().code.as_str()),
        (503, "sealed")
    );
    assert_eq!(
        sealed.api_version.as_deref(),
        Some(keyholder_api::API_VERSION)
    );
}

#[tokio::test]
async fn a_certificate_naming_two_cns_is_nobody_even_when_one_is_alice() {
    let env = Env::new(EnvOptions::default());
    let _daemon = env.start().await;
    let forged = env.client_with(Some(&env.pki.two_cns("mallory", "alice")));
    let refused = forged.unseal(&[&env.share_line("alice", 1)]).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert_eq!(
        refused.error().error,
        "the client certificate has 2 values in its common name (CN) (mallory, alice); an identity must be exactly one, issue it with one"
    );
    let status: Status = env.client(OPERATOR).get("/v1/status").await.json();
    assert!(
        status.sealed,
        "nothing was taken from the forged certificate"
    );
    // alice's own certificate still is alice.
    let own: UnsealResponse = env
        .client("alice")
        .unseal(&[&env.share_line("alice", 1)])
        .await
        .json();
    assert!(own.outcomes[0].accepted, "{own:?}");
}

/// A SQLite target with `rows` records sealed under `key` as v1.
fn write_target(path: &Path, key: &Key, rows: u32) -> TargetSpec {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch("CREATE TABLE customers (id INTEGER PRIMARY KEY, ssn TEXT NOT NULL)")
        .unwrap();
    for id in 1..=rows {
        let record = crypto_core::envelope::seal(key, v1(), format!("ssn-{id}").as_bytes(), b"");
        conn.execute(
            "INSERT INTO customers (id, ssn) VALUES (?1, ?2)",
            rusqlite::params![id, record],
        )
        .unwrap();
    }
    TargetSpec {
        name: "customers-ssn".into(),
        db: path.to_owned(),
        table: "customers".into(),
        primary_key: "id".into(),
        column: "ssn".into(),
    }
}

#[tokio::test]
async fn a_target_encrypted_under_another_key_keeps_the_daemon_sealed_naming_version_and_records() {
    let dir = tempfile::tempdir().unwrap();
    let target = write_target(&dir.path().join("app.db"), &Key::generate(), 3);
    let env = Env::new(EnvOptions {
        targets: vec![target],
        ..EnvOptions::default()
    });
    let _daemon = env.start().await;
    env.client("alice")
        .unseal(&[&env.share_line("alice", 1)])
        .await;
    let refused = env.client("bob").unseal(&[&env.share_line("bob", 1)]).await;
    assert_eq!(refused.status, 422, "{}", refused.body);
    let error = refused.error();
    assert_eq!(error.code, "verification_failed");
    assert!(
        error.error.starts_with("unseal refused, the daemon stays sealed and dropped the rebuilt keys: v1 failed its target customers-ssn check: 3 of 3 sampled records do not decrypt with the rebuilt key (records: "),
        "{}",
        error.error
    );
    for id in 1..=3 {
        assert!(
            error.error.contains(&format!("customers.ssn id={id}")),
            "{}",
            error.error
        );
    }
    assert!(!error.error.contains("ssn-"), "no plaintext in errors");
    let status: Status = env.client(OPERATOR).get("/v1/status").await.json();
    assert!(status.sealed);
    assert!(status.versions.iter().all(|v| !v.loaded));
}

#[tokio::test]
async fn a_session_leaves_no_key_or_share_bytes_and_the_daemon_restarts_sealed() {
    let dir = tempfile::tempdir().unwrap();
    // The target is filled with the real key after the first unseal, so the
    // second unseal proves the key on real records.
    let db = dir.path().join("app.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch("CREATE TABLE customers (id INTEGER PRIMARY KEY, ssn TEXT NOT NULL)")
        .unwrap();
    let target = TargetSpec {
        name: "customers-ssn".into(),
        db: db.clone(),
        table: "customers".into(),
        primary_key: "id".into(),
        column: "ssn".into(),
    };
    let env = Env::new(EnvOptions {
        targets: vec![target],
        ..EnvOptions::default()
    });
    let lines: Vec<String> = ["alice", "bob", "carol"]
        .iter()
        .map(|n| env.share_line(n, 1))
        .collect();
    let mut daemon = env.start().await;
    env.client("alice").unseal(&[&lines[0]]).await;
    let done: UnsealResponse = env.client("bob").unseal(&[&lines[1]]).await.json();
    assert!(!done.sealed);
    let handover = env.client(DATABASE).get("/v1/keyring").await.body;
    let ring = Keyring::from_handover_json(&handover).unwrap();
    for id in 1..=5 {
        conn.execute(
            "INSERT INTO customers (id, ssn) VALUES (?1, ?2)",
            rusqlite::params![id, ring.encrypt(b"123-45-6789", b"").unwrap()],
        )
        .unwrap();
    }
    let status: Status = env
        .client(OPERATOR)
        .post("/v1/seal", &serde_json::json!({}))
        .await
        .json();
    assert!(status.sealed);
    assert!(daemon.stop(), "SIGTERM exits cleanly");

    let mut daemon = env.start().await;
    let status: Status = env.client(OPERATOR).get("/v1/status").await.json();
    assert!(status.sealed, "the daemon restarts sealed");
    env.client("carol").unseal(&[&lines[2]]).await;
    let done: UnsealResponse = env.client("alice").unseal(&[&lines[0]]).await.json();
    assert!(!done.sealed, "the key passes the sampled real records");
    let audit = env.client(OPERATOR).get("/v1/audit").await.body;
    env.client(OPERATOR)
        .post("/v1/seal", &serde_json::json!({}))
        .await;
    assert!(daemon.stop());

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
    for line in &lines {
        let data = share_data(line);
        secrets.extend(
            encodings(&data)
                .into_iter()
                .map(|e| ("share".to_owned(), e)),
        );
        secrets.push(("share line".to_owned(), line.clone().into_bytes()));
    }
    let mut places: Vec<(String, Vec<u8>)> = files_under(&env.state_dir)
        .into_iter()
        .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
        .collect();
    places.push(("log".into(), std::fs::read(&env.log).unwrap()));
    places.push(("audit log".into(), audit.into_bytes()));
    assert!(places.len() >= 3);
    assert_absent(&places, &secrets);
}

#[tokio::test]
async fn the_audit_chain_verifies_and_an_altered_row_is_named() {
    let env = Env::new(EnvOptions::default());
    let _daemon = env.start().await;
    env.client("alice")
        .unseal(&[&env.share_line("alice", 1)])
        .await;
    env.client("bob")
        .unseal(&[&env.share_line("alice", 1)])
        .await;
    env.client("bob").unseal(&[&env.share_line("bob", 1)]).await;
    let operator = env.client(OPERATOR);
    operator.post("/v1/seal", &serde_json::json!({})).await;
    let log: AuditLog = operator.get("/v1/audit").await.json();
    keyholder_api::verify_chain(&log.entries).unwrap();
    let actions: Vec<&str> = log.entries.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "init",
            "started",
            "unseal_share_accepted",
            "unseal_share_refused",
            "unseal_share_accepted",
            "unsealed",
            "sealed"
        ]
    );
    assert!(log.entries[3].detail.contains("dealt to alice, not bob"));

    let conn = rusqlite::Connection::open(env.state_dir.join("state.db")).unwrap();
    // The triggers keep the daemon itself append-only; someone with the file
    // can drop them, which is what the chain is for.
    conn.execute_batch(
        "DROP TRIGGER audit_append_only_update;
         UPDATE audit SET actor = 'mallory' WHERE seq = 3;",
    )
    .unwrap();
    let log: AuditLog = operator.get("/v1/audit").await.json();
    let err = keyholder_api::verify_chain(&log.entries).unwrap_err();
    assert_eq!(err.seq, 3);
    assert_eq!(
        err.to_string(),
        "audit entry 3 was altered (its hash does not match its content)"
    );
}

#[tokio::test]
async fn init_runs_once_and_check_config_names_every_problem() {
    let env = Env::new(EnvOptions::default());
    let again = env.keyholderd(&[
        "init",
        "--out",
        &env.tmp.path().join("again").display().to_string(),
    ]);
    assert_eq!(
        again.status.code(),
        Some(65),
        "a state that refuses the command is EX_DATAERR"
    );
    assert_eq!(
        String::from_utf8_lossy(&again.stderr).lines().last(),
        Some(
            "error: the state store already holds v1; init runs once per keyring (make new versions with a rotation)"
        )
    );
    let ok = env.keyholderd(&["check-config"]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let text = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace("threshold = 2", "threshold = 4")
        .replace("name = \"bob\"", "name = \"alice\"");
    std::fs::write(&env.config, text).unwrap();
    let bad = env.keyholderd(&["check-config"]);
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("has 2 problem(s)"), "{stderr}");
    assert!(
        stderr.contains("  principals[1].name: duplicate name \"alice\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("  shamir.threshold: 4 is more than the 3 keyholder(s) configured; add keyholders or lower it"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_request_without_the_api_version_is_refused_naming_it() {
    let env = Env::new(EnvOptions::default());
    let _daemon = env.start().await;
    let answer = env.client(OPERATOR).get_without_version("/v1/status").await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.error().code, "incompatible_api_version");
    assert_eq!(
        answer.api_version.as_deref(),
        Some(keyholder_api::API_VERSION)
    );
}

#[tokio::test]
async fn a_revoked_certificate_is_refused_at_the_handshake() {
    let env = Env::new(EnvOptions {
        revoked: Some("alice".to_owned()),
        ..EnvOptions::default()
    });
    let _daemon = env.start().await;
    let good = env.client("alice").get("/v1/health").await;
    assert_eq!(good.status, 200, "{}", good.body);
    let revoked = ClientFiles {
        cert: env.pki.dir.join("alice-revoked.pem"),
        key: env.pki.dir.join("alice-revoked.key"),
    };
    let result = env
        .client_with(Some(&revoked))
        .send(reqwest::Method::GET, "/v1/health", None)
        .await;
    assert!(result.is_err(), "the handshake must fail, got {result:?}");
    assert!(
        env.log_contains("tls handshake refused").await,
        "{}",
        env.log_text()
    );
}
