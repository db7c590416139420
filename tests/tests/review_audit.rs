//! Nothing the daemon does with keys goes unaudited: when the state store
//! cannot take the `unsealed` entry (a full disk, a failing file; here a
//! trigger on the real SQLite state file refuses that one action), the
//! daemon stays sealed: it does not hand the keyring to a database while
//! telling the keyholder the unseal failed. Once the store takes entries
//! again, the keyholders unseal as usual.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use keyholder_api::{AuditLog, Status};
use keyholder_tests::daemon::{DATABASE, OPERATOR};
use keyholder_tests::{Env, EnvOptions};

fn state_db(env: &Env) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(env.state_dir.join("state.db")).unwrap();
    conn.busy_timeout(std::time::Duration::from_secs(30))
        .unwrap();
    conn
}

#[tokio::test]
async fn an_unseal_the_audit_log_cannot_record_leaves_the_daemon_sealed() {
    let env = Env::new(EnvOptions::default());
    let _daemon = env.start().await;
    state_db(&env)
        .execute_batch(
            "CREATE TRIGGER review_refuse_unsealed BEFORE INSERT ON audit \
             WHEN NEW.action = 'unsealed' \
             BEGIN SELECT RAISE(ABORT, 'disk I/O error (simulated)'); END;",
        )
        .unwrap();

    let alice = env
        .client("alice")
        .unseal(&[&env.share_line("alice", 1)])
        .await;
    assert_eq!(alice.status, 200, "{}", alice.body);
    let bob = env.client("bob").unseal(&[&env.share_line("bob", 1)]).await;
    assert_ne!(
        bob.status, 200,
        "the unseal could not be audited: {}",
        bob.body
    );

    // The keyholder was told it failed: the daemon must not serve keys.
    let status: Status = env.client(OPERATOR).get("/v1/status").await.json();
    assert!(status.sealed, "{status:?}");
    let fetch = env.client(DATABASE).get("/v1/keyring").await;
    assert_eq!(fetch.status, 503, "{}", fetch.body);

    // The store takes entries again: the keyholders unseal once more.
    state_db(&env)
        .execute_batch("DROP TRIGGER review_refuse_unsealed;")
        .unwrap();
    for name in ["alice", "bob"] {
        let answer = env.client(name).unseal(&[&env.share_line(name, 1)]).await;
        assert_eq!(answer.status, 200, "{name}: {}", answer.body);
    }
    let fetch = env.client(DATABASE).get("/v1/keyring").await;
    assert_eq!(fetch.status, 200, "{}", fetch.body);
    let log: AuditLog = env
        .client(OPERATOR)
        .get("/v1/audit?since=0&limit=1000")
        .await
        .json();
    let actions: Vec<&str> = log.entries.iter().map(|e| e.action.as_str()).collect();
    let unsealed = actions.iter().position(|a| *a == "unsealed");
    let fetched = actions.iter().position(|a| *a == "keyring_fetched");
    assert!(
        matches!((unsealed, fetched), (Some(u), Some(f)) if u < f),
        "{actions:?}"
    );
}

/// A reload the audit log cannot record is not applied: `keyholder admin
/// reload` fails and the operator it would have added is still refused.
/// Once the store takes entries again, the same reload applies, audited.
#[tokio::test]
async fn a_reload_the_audit_log_cannot_record_changes_nothing() {
    let env = Env::new(EnvOptions::default());
    let _daemon = env.start().await;
    let olga = env.pki.client("olga");
    let text = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(
        &env.config,
        format!(
            "{text}\n[[principals]]\nname = \"olga\"\nroles = [\"operator\"]\ncert_identity = \"olga\"\n"
        ),
    )
    .unwrap();
    state_db(&env)
        .execute_batch(
            "CREATE TRIGGER review_refuse_reloaded BEFORE INSERT ON audit \
             WHEN NEW.action = 'config_reloaded' \
             BEGIN SELECT RAISE(ABORT, 'disk I/O error (simulated)'); END;",
        )
        .unwrap();
    let reload = || {
        env.keyholder_cli(OPERATOR)
            .args(["admin", "reload"])
            .output()
            .unwrap()
    };
    let out = reload();
    assert!(
        !out.status.success(),
        "the reload could not be audited, yet: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let refused = env.client_with(Some(&olga)).get("/v1/audit").await;
    assert_eq!(
        refused.status, 403,
        "olga was added unaudited: {}",
        refused.body
    );

    state_db(&env)
        .execute_batch("DROP TRIGGER review_refuse_reloaded;")
        .unwrap();
    let out = reload();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log: AuditLog = env
        .client_with(Some(&olga))
        .get("/v1/audit?since=0&limit=1000")
        .await
        .json();
    assert!(
        log.entries
            .iter()
            .any(|e| e.action == "config_reloaded"
                && e.detail.contains("\"changed\":[\"principals\"]")),
        "{:?}",
        log.entries
    );
}

/// A share whose submission the audit log cannot record is not counted:
/// alice is told her submission failed, so it must not help unseal with
/// bob's share later (the log would never show she took part).
#[tokio::test]
async fn a_share_the_audit_log_cannot_record_is_not_counted() {
    let metrics_addr = keyholder_tests::daemon::free_addr();
    let env = Env::new(EnvOptions {
        listen_toml: format!("metrics_addr = \"{metrics_addr}\"\n"),
        ..EnvOptions::default()
    });
    let _daemon = env.start().await;
    state_db(&env)
        .execute_batch(
            "CREATE TRIGGER review_refuse_alice BEFORE INSERT ON audit \
             WHEN NEW.actor = 'alice' AND NEW.action LIKE 'unseal_share%' \
             BEGIN SELECT RAISE(ABORT, 'disk I/O error (simulated)'); END;",
        )
        .unwrap();
    let alice = env
        .client("alice")
        .unseal(&[&env.share_line("alice", 1)])
        .await;
    assert_ne!(alice.status, 200, "{}", alice.body);
    // Nor is it counted in the metrics.
    let scraped = reqwest::Client::builder()
        .tls_backend_preconfigured(keyholder_tests::client::tls_config(&env.pki.ca_pem, None))
        .build()
        .unwrap()
        .get(format!("http://{metrics_addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !scraped.lines().any(|l| l
            .starts_with("keyholder_unseal_shares_total{outcome=\"accepted\"} ")
            && !l.ends_with(" 0")),
        "{scraped}"
    );
    state_db(&env)
        .execute_batch("DROP TRIGGER review_refuse_alice;")
        .unwrap();

    let status: Status = env.client(OPERATOR).get("/v1/status").await.json();
    assert!(status.unseal_progress.is_empty(), "{status:?}");
    let bob = env.client("bob").unseal(&[&env.share_line("bob", 1)]).await;
    assert_eq!(bob.status, 200, "{}", bob.body);
    let status: Status = env.client(OPERATOR).get("/v1/status").await.json();
    assert!(
        status.sealed,
        "alice's unaudited share helped unseal: {status:?}"
    );

    // Submitted again, it counts.
    let alice = env
        .client("alice")
        .unseal(&[&env.share_line("alice", 1)])
        .await;
    assert_eq!(alice.status, 200, "{}", alice.body);
    let status: Status = env.client(OPERATOR).get("/v1/status").await.json();
    assert!(!status.sealed, "{status:?}");
}

/// A seal is never refused: when the audit log cannot take its entry, the
/// keys are dropped all the same, and `keyholder seal` says so (exit 0,
/// "the seal is done", and what the audit log is missing) instead of a
/// refusal saying nothing was done.
#[tokio::test]
async fn a_seal_the_audit_log_cannot_record_is_done_and_says_so() {
    let env = Env::new(EnvOptions::default());
    let _daemon = env.start().await;
    for name in ["alice", "bob"] {
        let answer = env.client(name).unseal(&[&env.share_line(name, 1)]).await;
        assert_eq!(answer.status, 200, "{name}: {}", answer.body);
    }
    state_db(&env)
        .execute_batch(
            "CREATE TRIGGER review_refuse_sealed BEFORE INSERT ON audit \
             WHEN NEW.action = 'sealed' \
             BEGIN SELECT RAISE(ABORT, 'disk I/O error (simulated)'); END;",
        )
        .unwrap();

    let out = env.keyholder_cli(OPERATOR).arg("seal").output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.starts_with("sealed: keyholderd holds no key now\n"),
        "{stdout}"
    );
    assert!(
        stderr.contains("warning: the seal is done, but the audit log does not have it: ")
            && stderr.contains("simulated"),
        "{stderr}"
    );
    let status: Status = env.client(OPERATOR).get("/v1/status").await.json();
    assert!(status.sealed, "{status:?}");
    assert_eq!(status.unaudited, None, "only the seal's answer says it");
    let fetch = env.client(DATABASE).get("/v1/keyring").await;
    assert_eq!(fetch.status, 503, "{}", fetch.body);

    // As JSON, the answer carries the reason.
    let answer = env
        .client(OPERATOR)
        .post("/v1/seal", &serde_json::json!({}))
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let sealed: Status = answer.json();
    assert!(
        sealed.sealed
            && sealed
                .unaudited
                .as_deref()
                .is_some_and(|w| w.contains("simulated")),
        "{sealed:?}"
    );
}
