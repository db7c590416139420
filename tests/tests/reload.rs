//! Issue 14's reload without sealing, over the real `keyholderd`: unsealed
//! and re-encrypting (throttled so the job keeps running), then (a) the
//! server certificate replaced and SIGHUP: a new connection sees the new
//! certificate; (b) a CRL revoking bob published and `keyholder admin
//! reload`: bob is refused at the handshake from then on; (c) a new
//! principal added and SIGHUP: it can call the API; (d) a config with an
//! error, and one changing the keyring, reloaded: refused by name, nothing
//! changed. Through all of it the daemon stays unsealed and the rotation
//! keeps moving records; every reload is in the audit log.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::io::Write as _;
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyholder_api::{AuditLog, RotationState, RotationStatus};
use keyholder_tests::daemon::{DATABASE, OPERATOR};
use keyholder_tests::records::Table;
use keyholder_tests::rotation::v;
use keyholder_tests::{Env, EnvOptions};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

/// The server certificate a new TLS connection to the daemon is shown.
fn served_certificate(env: &Env) -> Vec<u8> {
    let config = keyholder_tests::client::tls_config(&env.pki.ca_pem, None);
    let mut tls =
        rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").unwrap())
            .unwrap();
    let mut tcp = TcpStream::connect(env.addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The server's certificate arrives before the client's is asked for;
    // the handshake may then fail (no client certificate), which is fine.
    while tls.is_handshaking() && tls.peer_certificates().is_none() {
        if tls.complete_io(&mut tcp).is_err() {
            break;
        }
    }
    let _ = tcp.flush();
    tls.peer_certificates()
        .and_then(|c| c.first())
        .expect("the daemon sent its certificate")
        .as_ref()
        .to_vec()
}

fn file_certificate(path: &std::path::Path) -> Vec<u8> {
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .as_ref()
        .to_vec()
}

fn edit_config(env: &Env, edit: impl FnOnce(String) -> String) {
    let text = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(&env.config, edit(text)).unwrap();
}

async fn audit(env: &Env) -> AuditLog {
    let answer = env.client(OPERATOR).get("/v1/audit").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let log: AuditLog = answer.json();
    keyholder_api::verify_chain(&log.entries).expect("the audit chain verifies");
    log
}

/// The details of the reload entries (`config_reloaded`,
/// `config_reload_refused`), in order.
async fn reloads(env: &Env) -> Vec<(String, serde_json::Value)> {
    audit(env)
        .await
        .entries
        .iter()
        .filter(|e| e.action.starts_with("config_reload"))
        .map(|e| (e.action.clone(), serde_json::from_str(&e.detail).unwrap()))
        .collect()
}

/// Waits until the audit log holds `count` reload entries.
async fn wait_reloads(env: &Env, count: usize) -> Vec<(String, serde_json::Value)> {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = reloads(env).await;
        if got.len() >= count {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "waited for reload {count}: {got:?}\n{}",
            env.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn sighup(daemon: &keyholder_tests::Daemon) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(daemon.pid().unwrap()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
}

async fn rotation(env: &Env) -> RotationStatus {
    env.status().await.rotation.expect("a rotation")
}

/// Unsealed, still re-encrypting, and further along than `before` rows.
async fn still_rotating(env: &Env, before: u64) -> u64 {
    let status = env.status().await;
    assert!(!status.sealed, "{status:?}");
    let deadline = Instant::now() + WAIT;
    loop {
        let r = rotation(env).await;
        assert_eq!(r.state, RotationState::Reencrypting, "{r:?}");
        if r.rows_done > before {
            return r.rows_done;
        }
        assert!(Instant::now() < deadline, "{r:?}\n{}", env.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn admin_reload(env: &Env) -> std::process::Output {
    env.keyholder_cli(OPERATOR)
        .args(["admin", "reload"])
        .output()
        .unwrap()
}

#[tokio::test]
async fn reloads_certificate_crl_and_principals_while_unsealed_and_rotating_and_refuses_bad_configs()
 {
    let data = tempfile::tempdir().unwrap();
    let table = Table::create(&data.path().join("app.db"));
    let env = Env::new(EnvOptions {
        targets: vec![table.spec.clone()],
        first_version: Some(9),
        consumers: vec![DATABASE.to_owned()],
        batch_size: Some(10),
        rows_per_sec: Some(40),
        extra_toml: "\n[rotation]\nmin_verified = 2\n".to_owned(),
        ..EnvOptions::default()
    });
    let daemon = env.start().await;
    let v9_lines = [env.share_line("alice", 9), env.share_line("bob", 9)];
    let v9 = env.rebuild_key(9, &[&v9_lines[0], &v9_lines[1]]).await;
    table.seed(&v9, v(9), 20_000);
    let unsealed = env
        .unseal_with(&[
            ("alice", vec![v9_lines[0].clone()]),
            ("bob", vec![v9_lines[1].clone()]),
        ])
        .await;
    assert!(!unsealed.sealed, "{unsealed:?}");
    // bob's certificate that the CRL of (b) will revoke works until then.
    let (bob_revoked, crl) = env.pki.revoked("bob");
    let bob = env.client_with(Some(&bob_revoked));
    assert_eq!(bob.get("/v1/health").await.status, 200);

    env.operate("/v1/rotation/prepare", json!({})).await;
    for name in ["alice", "bob"] {
        let line = env.fetch_new_share(name, 10).await;
        env.verify_new_share(name, &line).await;
    }
    env.operate("/v1/rotation/activate", json!({})).await;
    env.database_keyring().await;
    env.operate("/v1/rotation/switch", json!({})).await;
    let mut done = still_rotating(&env, 0).await;

    // (a) The server certificate renewed in place, then SIGHUP.
    let old_cert = file_certificate(&env.pki.server.cert);
    assert_eq!(served_certificate(&env), old_cert);
    let old_expiry = env
        .status()
        .await
        .certificates
        .unwrap()
        .server_cert_not_after;
    let renewed = env.pki.issue_until(
        "server",
        &["localhost", "127.0.0.1"],
        time::OffsetDateTime::now_utc() + time::Duration::days(200),
    );
    assert_eq!(renewed.cert, env.pki.server.cert);
    let new_cert = file_certificate(&renewed.cert);
    assert_ne!(new_cert, old_cert);
    sighup(&daemon);
    let entries = wait_reloads(&env, 1).await;
    assert_eq!(entries[0].0, "config_reloaded", "{entries:?}");
    assert_eq!(entries[0].1["via"], "sighup");
    assert_eq!(served_certificate(&env), new_cert);
    // The expiry shown and exported is the new certificate's.
    let new_expiry = env
        .status()
        .await
        .certificates
        .unwrap()
        .server_cert_not_after;
    assert_ne!(new_expiry, old_expiry);
    let year = (time::OffsetDateTime::now_utc() + time::Duration::days(200))
        .year()
        .to_string();
    assert!(new_expiry.starts_with(&year), "{new_expiry}");
    done = still_rotating(&env, done).await;

    // (b) A CRL revoking bob's certificate, reloaded with the CLI.
    edit_config(&env, |text| {
        text.replacen(
            "handshake_timeout = \"3s\"\n",
            &format!("handshake_timeout = \"3s\"\ncrl = \"{}\"\n", crl.display()),
            1,
        )
    });
    let out = admin_reload(&env);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("listen.crl"), "{stdout}");
    let bob = env.client_with(Some(&bob_revoked));
    assert!(
        bob.send(reqwest::Method::GET, "/v1/health", None)
            .await
            .is_err(),
        "a revoked certificate is refused at the handshake"
    );
    assert_eq!(env.client("bob").get("/v1/health").await.status, 200);
    done = still_rotating(&env, done).await;

    // (c) A new principal, added and reloaded with SIGHUP: it can call the API.
    let olga = env.pki.client("olga");
    let before = env.client_with(Some(&olga)).get("/v1/audit").await;
    assert_eq!(before.status, 403, "{}", before.body);
    assert!(
        before.body.contains("not a configured principal"),
        "{}",
        before.body
    );
    edit_config(&env, |text| {
        format!(
            "{text}\n[[principals]]\nname = \"olga\"\nroles = [\"operator\"]\ncert_identity = \"olga\"\n"
        )
    });
    sighup(&daemon);
    let entries = wait_reloads(&env, 3).await;
    assert_eq!(entries[2].0, "config_reloaded", "{entries:?}");
    assert_eq!(entries[2].1["changed"], json!(["principals"]));
    let after = env.client_with(Some(&olga)).get("/v1/audit").await;
    assert_eq!(after.status, 200, "{}", after.body);
    done = still_rotating(&env, done).await;

    // (d) A config with an error, then one changing what needs a restart:
    // refused by name, nothing changed.
    let good = std::fs::read_to_string(&env.config).unwrap();
    edit_config(&env, |text| {
        text.replacen("sample_size = 64", "sample_size = 0", 1)
            .replacen("name = \"olga\"", "name = \"olga\"\nroles_typo = 1", 1)
    });
    let out = admin_reload(&env);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(
            "unknown field, expected one of `name`, `roles`, `cert_identity`, `age_recipient`"
        ),
        "{stderr}"
    );
    edit_config(&env, |_| {
        good.replacen("sample_size = 64", "sample_size = 0", 1)
    });
    let out = admin_reload(&env);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("verify.sample_size"), "{stderr}");
    edit_config(&env, |_| {
        good.replacen("keyring = \"orders\"", "keyring = \"payments\"", 1)
            .replacen(
                "[[principals]]\nname = \"olga\"",
                "[[principals]]\nname = \"olga2\"",
                1,
            )
    });
    let answer = env
        .client(OPERATOR)
        .post("/v1/admin/reload", &json!({}))
        .await;
    assert_eq!(answer.status, 422, "{}", answer.body);
    let error = answer.error();
    assert_eq!(error.code, "reload_refused");
    assert!(error.error.contains("keyring"), "{}", error.error);
    assert!(error.error.contains("restart"), "{}", error.error);
    // Nothing changed: olga (renamed in the refused config) still calls, the
    // new certificate and the CRL stay, the daemon is unsealed and rotating.
    assert_eq!(
        env.client_with(Some(&olga)).get("/v1/audit").await.status,
        200
    );
    assert_eq!(served_certificate(&env), new_cert);
    let bob = env.client_with(Some(&bob_revoked));
    assert!(
        bob.send(reqwest::Method::GET, "/v1/health", None)
            .await
            .is_err()
    );
    still_rotating(&env, done).await;

    let entries = wait_reloads(&env, 6).await;
    let actions: Vec<&str> = entries.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(
        actions,
        [
            "config_reloaded",
            "config_reloaded",
            "config_reloaded",
            "config_reload_refused",
            "config_reload_refused",
            "config_reload_refused"
        ]
    );
    assert_eq!(entries[1].1["via"], "api");
    assert_eq!(entries[1].1["changed"], json!(["listen.crl"]));
    assert!(
        entries[4].1["error"]
            .as_str()
            .unwrap()
            .contains("verify.sample_size"),
        "{entries:?}"
    );
    assert!(
        env.log_text()
            .contains("config reload refused; nothing changed")
    );
}

/// A config edit that does not parse, on the line holding a target's
/// database URL and its password: the reload API's answer, the SIGHUP's log
/// line, the audit entries, `check-config` and a start-up all say where
/// (file, line, column) and what kind of error, and none of them the line.
#[tokio::test]
async fn a_config_that_does_not_parse_is_reported_by_place_and_never_by_its_text() {
    const PASSWORD: &str = "Pw-S3cret-4711";
    let env = Env::new(EnvOptions::default());
    let daemon = env.start().await;
    let good = std::fs::read_to_string(&env.config).unwrap();
    let bad = format!(
        "{good}\n[[targets]]\nname = \"app\"\nstore = \"postgres://app:{PASSWORD}@db.example/app\ntable = \"t\"\n"
    );
    std::fs::write(&env.config, &bad).unwrap();
    let line = bad.lines().position(|l| l.contains(PASSWORD)).unwrap() + 1;
    let expected = format!(
        "config {} does not parse at line {line}, column 54: invalid basic string, expected `\"`; fix the file there (its text is not repeated: it may hold a password)",
        env.config.display()
    );

    let answer = env
        .client(OPERATOR)
        .post("/v1/admin/reload", &json!({}))
        .await;
    assert_eq!(answer.status, 422, "{}", answer.body);
    let error = answer.error();
    assert_eq!(error.code, "reload_refused");
    assert_eq!(error.error, expected);

    sighup(&daemon);
    let entries = wait_reloads(&env, 2).await;
    for (action, detail) in &entries {
        assert_eq!(action, "config_reload_refused", "{entries:?}");
        assert_eq!(detail["error"], expected.as_str(), "{entries:?}");
    }
    assert!(env.log_contains("config reload refused").await);

    let check = env.keyholderd(&["check-config"]);
    assert_eq!(check.status.code(), Some(64));
    assert_eq!(
        String::from_utf8_lossy(&check.stderr),
        format!("error: {expected}\n")
    );
    let start = env.keyholderd(&["run"]);
    assert_eq!(start.status.code(), Some(64));
    assert_eq!(
        String::from_utf8_lossy(&start.stderr),
        format!("error: {expected}\n")
    );

    let log = env.log_text();
    assert!(!log.contains(PASSWORD), "{log}");
    assert!(log.contains(&expected), "{log}");
    // Nothing changed: the daemon still answers with the good config.
    assert_eq!(env.client(OPERATOR).get("/v1/health").await.status, 200);
}
