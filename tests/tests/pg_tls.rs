//! PostgreSQL over TLS (issue 14), against a test-owned server with
//! `ssl=on`, a certificate made by rcgen for `localhost`, and a
//! `pg_hba.conf` that takes TCP only over TLS (`hostssl ... trust`,
//! `hostssl ... cert` for the client-certificate user, `hostnossl ...
//! reject`): the real daemon keeps its state there and rotates a target
//! table there with `sslmode=verify-full`; `keyholderd check-config` names
//! the cause of each refused connection (unknown CA, host name mismatch,
//! plain TCP refused by the server, a client key readable by others).
//!
//! Needs `KEYHOLDER_TEST_PG` (as every PostgreSQL test, so CI runs it;
//! skipped, saying so, when it is not set) and the PostgreSQL server
//! binaries (`initdb`, `pg_ctl`).

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;

use crypto_core::envelope;
use keyholder_api::{RotationState, UnsealResponse};
use keyholder_tests::pg;
use keyholder_tests::pg_instance::PgInstance;
use keyholder_tests::pki::Pki;
use keyholder_tests::records::plaintext;
use keyholder_tests::rotation::v;
use keyholder_tests::{Env, EnvOptions};
use serde_json::json;

/// The target store in the config until a case replaces it.
const PLACEHOLDER: &str = "postgres://placeholder@127.0.0.1:1/none";

/// The role that logs in with a client certificate (its CN).
const CERT_USER: &str = "kh_cert";
/// The role that logs in with a password (SCRAM), read from a `.pgpass`.
const PASSWORD_USER: &str = "kh_pw";

/// A server that takes TCP only over TLS, and the PKI of its certificate.
struct TlsServer {
    pg: PgInstance,
    pki: Pki,
    _dir: tempfile::TempDir,
}

impl TlsServer {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::generate(&dir.path().join("db-pki"));
        let cert = pki.issue("pg-server", &["localhost"], false);
        let pg = PgInstance::start();
        pg.enable_tls(
            &cert.cert,
            &cert.key,
            &pki.ca_pem,
            &format!(
                "hostssl all {CERT_USER} 127.0.0.1/32 cert\n\
                 hostssl all {PASSWORD_USER} 127.0.0.1/32 scram-sha-256\n\
                 hostssl all all 127.0.0.1/32 trust\n\
                 hostnossl all all 127.0.0.1/32 reject"
            ),
        );
        Self { pg, pki, _dir: dir }
    }

    /// A URL of this server: `host`, then the query (`sslmode=...`).
    fn url(&self, user: &str, host: &str, query: &str) -> String {
        format!(
            "postgres://{user}@{host}:{}/postgres?{query}",
            self.pg.port()
        )
    }

    /// `sslmode=verify-full` to `localhost` with the right CA.
    fn verified(&self) -> String {
        self.url(
            "postgres",
            "localhost",
            &format!(
                "sslmode=verify-full&sslrootcert={}",
                self.pki.ca_pem.display()
            ),
        )
    }

    /// An administrator's connection over the Unix socket.
    async fn admin(&self) -> tokio_postgres::Client {
        pg::connect(&self.pg.socket_conninfo()).await
    }
}

fn target_toml(table: &str, store: &str) -> String {
    format!(
        "\n[[targets]]\nname = \"customers-pg\"\nstore = \"{store}\"\ntable = \"{table}\"\nprimary_key = \"id\"\ncolumns = [\"ssn\"]\naad = \"none\"\n"
    )
}

#[tokio::test]
async fn state_store_and_target_through_verify_full_tls_with_a_whole_rotation() {
    if pg::url().is_none() {
        return;
    }
    let server = TlsServer::start();
    let db = server.admin().await;
    db.batch_execute("CREATE TABLE customers (id BIGINT PRIMARY KEY, ssn TEXT NOT NULL)")
        .await
        .unwrap();
    let verified = server.verified();
    let env = Env::new(EnvOptions {
        first_version: Some(9),
        consumers: vec!["db1".to_owned()],
        batch_size: Some(50),
        state_store: Some(format!("{verified}&schema=kh_tls")),
        extra_toml: target_toml("customers", &verified),
        ..EnvOptions::default()
    });
    let stored: i64 = db
        .query_one("SELECT count(*) FROM kh_tls.share_envelopes", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 3, "init stored the envelopes over TLS");

    let _daemon = env.start().await;
    let (alice9, bob9) = (env.share_line("alice", 9), env.share_line("bob", 9));
    let v9 = env.rebuild_key(9, &[&alice9, &bob9]).await;
    const ROWS: i64 = 300;
    let insert = db
        .prepare("INSERT INTO customers (id, ssn) VALUES ($1, $2)")
        .await
        .unwrap();
    for id in 1..=ROWS {
        let record = envelope::seal(&v9, v(9), plaintext(id).as_bytes(), b"");
        db.execute(&insert, &[&id, &record]).await.unwrap();
    }
    let done: UnsealResponse = env
        .unseal_with(&[("alice", vec![alice9]), ("bob", vec![bob9])])
        .await;
    assert!(!done.sealed, "{done:?}");

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
        .query("SELECT id, ssn FROM customers ORDER BY id", &[])
        .await
        .unwrap();
    assert_eq!(rows.len() as i64, ROWS);
    for row in rows {
        let (id, record): (i64, String) = (row.get(0), row.get(1));
        let plain = envelope::open(&v10, v(10), &record, b"").unwrap();
        assert_eq!(&plain[..], plaintext(id).as_bytes(), "record {id}");
    }

    // Every TCP session the daemon holds is TLS (hostnossl rejects the
    // others anyway), the state store's among them.
    let row = db
        .query_one(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE a.application_name = 'keyholderd' AND s.ssl), count(*)
             FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.client_addr IS NOT NULL",
            &[],
        )
        .await
        .unwrap();
    let (tls, state_store, all): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert!(state_store >= 1, "the state store's session is TLS");
    assert_eq!(tls, all, "every TCP session is TLS");
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `keyholderd check-config` with `store` as both the state store and the
/// target's store: its output, which must name each once.
fn check_with(env: &Env, original: &str, store: &str) -> (bool, String) {
    let state = format!("state_dir = \"{}\"", env.state_dir.display());
    let text = original
        .replace(&state, &format!("state_store = \"{store}&schema=kh_tls\""))
        .replace(PLACEHOLDER, store);
    fs::write(&env.config, text).unwrap();
    let check = env.keyholderd(&["check-config"]);
    (check.status.success(), stderr(&check))
}

fn assert_refused_naming(env: &Env, original: &str, store: &str, cause: &str) {
    let (ok, text) = check_with(env, original, store);
    assert!(!ok, "{store}: check-config passed:\n{text}");
    for field in ["state_store:", "targets[0].store:"] {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(field))
            .unwrap_or_else(|| panic!("{store}: no {field} problem in:\n{text}"));
        assert!(
            line.contains(cause),
            "{store}: {field} does not name {cause:?}:\n{line}"
        );
    }
}

#[tokio::test]
async fn wrong_ca_wrong_host_plain_tcp_and_client_certificates_are_named() {
    if pg::url().is_none() {
        return;
    }
    let server = TlsServer::start();
    let db = server.admin().await;
    db.batch_execute(&format!(
        "CREATE TABLE customers (id BIGINT PRIMARY KEY, ssn TEXT NOT NULL);
         CREATE ROLE {CERT_USER} LOGIN;
         GRANT SELECT, UPDATE ON customers TO {CERT_USER};
         CREATE ROLE {PASSWORD_USER} LOGIN PASSWORD 'pa:ss';
         GRANT SELECT, UPDATE ON customers TO {PASSWORD_USER};"
    ))
    .await
    .unwrap();
    let env = Env::new(EnvOptions {
        extra_toml: target_toml("customers", PLACEHOLDER),
        ..EnvOptions::default()
    });
    let original = fs::read_to_string(&env.config).unwrap();
    let ca = server.pki.ca_pem.display().to_string();

    let (ok, text) = check_with(&env, &original, &server.verified());
    assert!(ok, "verify-full to localhost with the right CA:\n{text}");

    let other = Pki::generate(&env.tmp.path().join("other-db-pki"));
    let wrong_ca = server.url(
        "postgres",
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", other.ca_pem.display()),
    );
    assert_refused_naming(&env, &original, &wrong_ca, "unknown CA");

    // The certificate names localhost, not 127.0.0.1.
    let wrong_host = server.url(
        "postgres",
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    assert_refused_naming(&env, &original, &wrong_host, "host name mismatch");
    // verify-ca checks the chain only, as libpq does.
    let any_name = server.url(
        "postgres",
        "127.0.0.1",
        &format!("sslmode=verify-ca&sslrootcert={ca}"),
    );
    let (ok, text) = check_with(&env, &original, &any_name);
    assert!(ok, "verify-ca to 127.0.0.1:\n{text}");

    // require: encrypted, the certificate unchecked; with sslrootcert it
    // is checked as verify-ca, as in libpq.
    let (ok, text) = check_with(
        &env,
        &original,
        &server.url("postgres", "127.0.0.1", "sslmode=require"),
    );
    assert!(ok, "require without sslrootcert:\n{text}");
    let require_other_ca = server.url(
        "postgres",
        "127.0.0.1",
        &format!("sslmode=require&sslrootcert={}", other.ca_pem.display()),
    );
    assert_refused_naming(&env, &original, &require_other_ca, "unknown CA");

    let plain = server.url("postgres", "127.0.0.1", "sslmode=disable");
    assert_refused_naming(
        &env,
        &original,
        &plain,
        "the server refuses connections without TLS",
    );

    // hostssl ... cert: the client certificate (CN = the role) logs in; its
    // key must be 0600 or stricter.
    let client = server.pki.issue(CERT_USER, &[], false);
    let with_cert = |key: &Path| {
        server.url(
            CERT_USER,
            "localhost",
            &format!(
                "sslmode=verify-full&sslrootcert={ca}&sslcert={}&sslkey={}",
                client.cert.display(),
                key.display()
            ),
        )
    };
    let (ok, text) = check_with(&env, &original, &with_cert(&client.key));
    assert!(ok, "client certificate login:\n{text}");
    let no_cert = server.url(
        CERT_USER,
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    assert_refused_naming(&env, &original, &no_cert, "certificate");

    // The password from a passfile (libpq's format, `:` escaped), never the
    // URL; a passfile others can read is ignored, as libpq does.
    let passfile = env.tmp.path().join("pgpass");
    fs::write(
        &passfile,
        format!(
            "localhost:{}:postgres:{PASSWORD_USER}:pa\\:ss\n",
            server.pg.port()
        ),
    )
    .unwrap();
    fs::set_permissions(&passfile, fs::Permissions::from_mode(0o600)).unwrap();
    let with_password = server.url(
        PASSWORD_USER,
        "localhost",
        &format!(
            "sslmode=verify-full&sslrootcert={ca}&passfile={}",
            passfile.display()
        ),
    );
    let (ok, text) = check_with(&env, &original, &with_password);
    assert!(ok, "password from the passfile:\n{text}");
    fs::set_permissions(&passfile, fs::Permissions::from_mode(0o644)).unwrap();
    assert_refused_naming(&env, &original, &with_password, "password");

    fs::set_permissions(&client.key, fs::Permissions::from_mode(0o644)).unwrap();
    assert_refused_naming(
        &env,
        &original,
        &with_cert(&client.key),
        &format!(
            "sslkey {} has mode 0644, readable by others; it must be 0600 or stricter",
            client.key.display()
        ),
    );
}

#[tokio::test]
async fn plain_tcp_to_another_host_is_warned_about_at_start_up() {
    // 192.0.2.1 (TEST-NET-1) is never reached: the daemon only warns at
    // start-up; it connects to a target when it samples or rotates.
    let env = Env::new(EnvOptions {
        extra_toml: target_toml(
            "customers",
            "postgres://app@192.0.2.1/orders?sslmode=disable",
        ),
        ..EnvOptions::default()
    });
    let _daemon = env.start().await;
    let log = env.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("postgresql target is reached without TLS"))
        .unwrap_or_else(|| panic!("no warning in:\n{log}"));
    assert!(
        line.contains("WARN") && line.contains("customers-pg") && line.contains("192.0.2.1:5432"),
        "{line}"
    );
}
