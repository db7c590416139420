use std::collections::HashMap;
use std::path::PathBuf;

use super::{PgConnect, PgSslMode};

fn parse(url: &str, env: &[(&str, &str)]) -> Result<PgConnect, String> {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    PgConnect::parse_with_env(url, &|name| env.get(name).cloned())
}

#[test]
fn loopback_defaults_to_prefer_and_other_hosts_to_verify_full() {
    let local = parse("postgres://kh@127.0.0.1:5432/state", &[]).unwrap();
    assert_eq!(local.ssl_mode(), PgSslMode::Prefer);
    assert!(!local.ssl_mode_given());
    assert!(!local.plaintext_to_remote());
    let socket = parse("postgres://kh@%2Frun%2Fpostgresql/state", &[]).unwrap();
    assert_eq!(socket.ssl_mode(), PgSslMode::Prefer);
    // As libpq: no TLS over a Unix socket, even when asked for.
    let socket = parse(
        "postgres://kh@%2Frun%2Fpostgresql/state",
        &[("PGSSLMODE", "verify-full"), ("PGSSLROOTCERT", "/ca.pem")],
    )
    .unwrap();
    assert_eq!(
        socket.config().get_ssl_mode(),
        tokio_postgres::config::SslMode::Disable
    );

    assert_eq!(
        parse("postgres://kh@db.internal/state", &[]).unwrap_err(),
        "sslmode=verify-full (the default for a host that is not loopback) needs sslrootcert, the CA that signed the server's certificate (or PGSSLROOTCERT); sslmode=disable sends in the clear instead"
    );
    let remote = parse(
        "postgres://kh@db.internal/state?sslrootcert=%2Fetc%2Fkh%2Fpg-ca.pem",
        &[],
    )
    .unwrap();
    assert_eq!(remote.ssl_mode(), PgSslMode::VerifyFull);
    assert_eq!(
        remote.tls.root_cert.as_deref(),
        Some(std::path::Path::new("/etc/kh/pg-ca.pem"))
    );
    // The driver never sees libpq's TLS parameters.
    assert_eq!(
        remote.config().get_ssl_mode(),
        tokio_postgres::config::SslMode::Require
    );
}

#[test]
fn plain_tcp_to_another_host_only_when_said_and_then_flagged() {
    let plain = parse("postgres://kh@db.internal/state?sslmode=disable", &[]).unwrap();
    assert_eq!(plain.ssl_mode(), PgSslMode::Disable);
    assert!(plain.plaintext_to_remote());
    assert!(
        parse("postgres://kh@db.internal/state?sslmode=prefer", &[])
            .unwrap_err()
            .starts_with("sslmode=prefer may fall back to plain TCP")
    );
    assert!(
        parse("postgres://kh@127.0.0.1/state?sslmode=allow", &[])
            .unwrap_err()
            .starts_with("sslmode=allow is not supported")
    );
    assert_eq!(
        parse("postgres://kh@127.0.0.1/state?sslmode=secure", &[]).unwrap_err(),
        "sslmode=secure is not one of disable, prefer, require, verify-ca, verify-full"
    );
}

#[test]
fn the_url_wins_over_the_environment_which_wins_over_the_default() {
    let env = [
        ("PGSSLMODE", "verify-ca"),
        ("PGSSLROOTCERT", "/env/ca.pem"),
        ("PGSSLCERT", "/env/client.pem"),
        ("PGSSLKEY", "/env/client.key"),
    ];
    let from_env = parse("postgres://kh@db.internal/state", &env).unwrap();
    assert_eq!(from_env.ssl_mode(), PgSslMode::VerifyCa);
    assert!(from_env.ssl_mode_given());
    assert_eq!(
        from_env.tls.client,
        Some((
            PathBuf::from("/env/client.pem"),
            PathBuf::from("/env/client.key")
        ))
    );
    let from_url = parse(
        "postgres://kh@db.internal/state?sslmode=require&sslrootcert=/url/ca.pem",
        &env,
    )
    .unwrap();
    assert_eq!(from_url.ssl_mode(), PgSslMode::Require);
    assert_eq!(from_url.tls.root_cert, Some(PathBuf::from("/url/ca.pem")));
    assert_eq!(
        parse(
            "postgres://kh@127.0.0.1/state?sslcert=/c.pem",
            &[("HOME", "/nonexistent")]
        )
        .unwrap_err(),
        "sslcert is given without sslkey"
    );
    assert_eq!(
        parse("postgres://kh@h/db?sslmode=disable&sslmode=disable", &[]).unwrap_err(),
        "names sslmode twice"
    );
}

#[test]
fn shown_without_the_password() {
    let at = parse(
        "postgres://kh:hunter2@db.internal/state?sslmode=require&connect_timeout=3",
        &[],
    )
    .unwrap();
    assert_eq!(
        at.to_string(),
        "postgres://kh:***@db.internal/state?sslmode=require&connect_timeout=3"
    );
    assert!(!format!("{at:?}").contains("hunter2"));
    let in_query = parse(
        "postgres://kh@127.0.0.1/state?password=hunter2&sslmode=disable",
        &[],
    )
    .unwrap();
    assert_eq!(
        in_query.to_string(),
        "postgres://kh@127.0.0.1/state?password=***&sslmode=disable"
    );
    let refused = parse("postgres://kh:hunter2@h/db?sslmode=disable&nonsense=1", &[]).unwrap_err();
    assert!(refused.starts_with("is not a PostgreSQL URL"), "{refused}");
    assert!(!refused.contains("hunter2"), "{refused}");
    // A `/` in the password is the driver's password still: none of it is
    // shown (it was, in full, when the password was taken to end at the
    // first `/`).
    let slash = parse(
        "postgres://kh:hun/ter2@db.internal/state?sslmode=require",
        &[],
    )
    .unwrap();
    assert_eq!(slash.config().get_password(), Some(b"hun/ter2".as_slice()));
    assert_eq!(
        slash.to_string(),
        "postgres://kh:***@db.internal/state?sslmode=require"
    );
    assert!(!format!("{slash:?}").contains("ter2"), "{slash:?}");
    // An `@` in it ends the driver's password early, and its rest would be
    // the host: refused, naming none of it.
    let at = parse(
        "postgres://kh:hun@ter2@db.internal/state?sslmode=require",
        &[],
    )
    .unwrap_err();
    assert_eq!(
        at,
        "holds `@` more than once before its query: percent-encode `@` (%40) and `/` (%2F) in the user name and password"
    );
}

#[test]
fn a_client_key_readable_by_others_is_refused_by_name() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("client.key");
    std::fs::write(&key, "not a key").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let settings = super::TlsSettings {
        mode: PgSslMode::Require,
        root_cert: None,
        client: Some((dir.path().join("client.pem"), key.clone())),
    };
    std::fs::write(dir.path().join("client.pem"), "").unwrap();
    let error = super::tls::client_config(&settings).unwrap_err();
    // The certificate is read first; an empty one is named.
    assert!(error.contains("holds no certificate"), "{error}");
    let cert = rcgen::generate_simple_self_signed(vec!["kh".to_owned()]).unwrap();
    std::fs::write(dir.path().join("client.pem"), cert.cert.pem()).unwrap();
    let error = super::tls::client_config(&settings).unwrap_err();
    assert_eq!(
        error,
        format!(
            "sslkey {0} has mode 0644, readable by others; it must be 0600 or stricter (chmod 600 {0})",
            key.display()
        )
    );
    std::fs::write(&key, cert.signing_key.serialize_pem()).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    super::tls::client_config(&settings).unwrap();
}
