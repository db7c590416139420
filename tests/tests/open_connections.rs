//! What a connection held open is worth once its certificate no longer
//! stands for its principal, over the real `keyholderd`: a reload that
//! revokes bob's certificate (CRL) and takes oscar's identity away refuses
//! both at their next request on the connections they kept open, and closes
//! them, while olivia's connection keeps serving; a certificate that expires
//! while its connection stays open is refused at its next request too, and
//! so is the first request of a TLS session resumed after it expired. A
//! full handshake was already refused; before this, an open keep-alive
//! connection stayed its principal for as long as it was used, and a
//! resumed session (which carries its first handshake's certificate,
//! unchecked) was its principal whatever the certificate had become.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyholder_api::{API_VERSION, API_VERSION_HEADER};
use keyholder_tests::client::tls_config;
use keyholder_tests::daemon::{OPERATOR, SECOND_OPERATOR};
use keyholder_tests::pki::ClientFiles;
use keyholder_tests::{Env, EnvOptions};
use serde_json::json;

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// Idle keep-alive connections live this long: longer than the test.
const LISTEN: &str = "header_read_timeout = \"300s\"\n";

fn options() -> EnvOptions {
    EnvOptions {
        listen_toml: LISTEN.to_owned(),
        ..EnvOptions::default()
    }
}

/// A finished mutual TLS handshake with `files`' certificate.
fn connect(env: &Env, files: &ClientFiles) -> Tls {
    connect_with(env, Arc::new(tls_config(&env.pki.ca_pem, Some(files))))
}

/// A finished mutual TLS handshake with `config` (which keeps the sessions
/// it can resume).
fn connect_with(env: &Env, config: Arc<rustls::ClientConfig>) -> Tls {
    let server = rustls_pki_types::ServerName::IpAddress(env.addr.ip().into());
    let mut conn = rustls::ClientConnection::new(config, server).unwrap();
    let mut tcp = TcpStream::connect(env.addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).unwrap();
    }
    rustls::StreamOwned::new(conn, tcp)
}

/// One answer on `stream`.
struct Answer {
    status: u16,
    body: String,
    /// The daemon said it closes the connection, and did.
    closed: bool,
}

/// `GET path` on the open `stream`, and its whole answer.
fn get(stream: &mut Tls, path: &str) -> Answer {
    let request = format!(
        "GET {path} HTTP/1.1\r\nhost: keyholder\r\n{API_VERSION_HEADER}: {API_VERSION}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).unwrap();
    stream.flush().unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let (head, length) = loop {
        let n = stream
            .read(&mut buf)
            .expect("an answer on the open connection");
        assert_ne!(
            n,
            0,
            "closed without an answer: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, _)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")?
                        .trim()
                        .parse::<usize>()
                        .ok()
                })
                .expect("a content-length");
            break (head.to_owned(), length);
        }
    };
    while got.len() < head.len() + 4 + length {
        let n = stream.read(&mut buf).unwrap();
        assert_ne!(n, 0, "closed within the body");
        got.extend_from_slice(&buf[..n]);
    }
    let body = String::from_utf8_lossy(&got[head.len() + 4..]).into_owned();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let says_close = head.to_ascii_lowercase().contains("\r\nconnection: close");
    // What the daemon does after the answer: close, or wait for the next
    // request (the read then times out).
    stream
        .sock
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let ended = match stream.read(&mut buf) {
        Ok(0) => true,
        Ok(n) => panic!(
            "more than one answer: {}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    };
    stream
        .sock
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    assert_eq!(says_close, ended, "{head}");
    Answer {
        status,
        body,
        closed: ended,
    }
}

fn edit_config(env: &Env, edit: impl FnOnce(String) -> String) {
    let text = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(&env.config, edit(text)).unwrap();
}

#[tokio::test]
async fn a_reload_that_revokes_or_removes_a_principal_refuses_its_open_connection_at_the_next_request()
 {
    let env = Env::new(options());
    let _daemon = env.start().await;
    let (bob_revoked, crl) = env.pki.revoked("bob");
    let mut bob = connect(&env, &bob_revoked);
    let mut oscar = connect(&env, &env.pki.client(SECOND_OPERATOR));
    let mut olivia = connect(&env, &env.pki.client(OPERATOR));
    for (stream, path) in [
        (&mut bob, "/v1/status"),
        (&mut oscar, "/v1/audit"),
        (&mut olivia, "/v1/audit"),
    ] {
        let answer = get(stream, path);
        assert_eq!(answer.status, 200, "{path}: {}", answer.body);
        assert!(!answer.closed);
    }

    // bob's certificate revoked, oscar's identity no longer a principal's.
    edit_config(&env, |text| {
        text.replacen(
            "handshake_timeout = \"3s\"\n",
            &format!("handshake_timeout = \"3s\"\ncrl = \"{}\"\n", crl.display()),
            1,
        )
        .replacen(
            &format!("cert_identity = \"{SECOND_OPERATOR}\""),
            "cert_identity = \"oscar-retired\"",
            1,
        )
    });
    let reloaded = env
        .client(OPERATOR)
        .post("/v1/admin/reload", &json!({}))
        .await;
    assert_eq!(reloaded.status, 200, "{}", reloaded.body);

    let answer = get(&mut bob, "/v1/status");
    assert_eq!(answer.status, 403, "{}", answer.body);
    assert!(
        answer.body.contains(
            "the client certificate is no longer accepted (invalid peer certificate: Revoked)"
        ),
        "{}",
        answer.body
    );
    assert!(answer.closed);
    let answer = get(&mut oscar, "/v1/audit");
    assert_eq!(answer.status, 403, "{}", answer.body);
    assert!(
        answer.body.contains(
            "the client certificate (oscar) is not a configured principal; add it as a cert_identity"
        ),
        "{}",
        answer.body
    );
    assert!(answer.closed);
    // A principal the reload left as it was keeps its connection.
    let answer = get(&mut olivia, "/v1/audit");
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(!answer.closed);
    assert!(
        env.log_contains(
            "an open connection's client certificate no longer stands for its principal"
        )
        .await,
        "{}",
        env.log_text()
    );
}

#[tokio::test]
async fn a_certificate_that_expires_while_its_connection_is_open_is_refused_at_the_next_request() {
    let env = Env::new(options());
    edit_config(&env, |text| {
        format!(
            "{text}\n[[principals]]\nname = \"olga\"\nroles = [\"operator\"]\ncert_identity = \"olga\"\n"
        )
    });
    let _daemon = env.start().await;
    // Whole seconds: a certificate's dates have no finer precision.
    let now = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap();
    let not_after = now + time::Duration::seconds(10);
    let olga = env.pki.issue_until("olga", &[], not_after);
    let mut stream = connect(&env, &olga);
    let answer = get(&mut stream, "/v1/status");
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(!answer.closed);
    // A second connection whose client keeps the TLS session tickets the
    // daemon sends (read with its answer), to resume after the expiry.
    let resuming = Arc::new(tls_config(&env.pki.ca_pem, Some(&olga)));
    let answer = get(&mut connect_with(&env, Arc::clone(&resuming)), "/v1/status");
    assert_eq!(answer.status, 200, "{}", answer.body);

    while time::OffsetDateTime::now_utc() <= not_after + time::Duration::seconds(1) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let answer = get(&mut stream, "/v1/status");
    assert_eq!(answer.status, 403, "{}", answer.body);
    assert!(
        answer
            .body
            .contains("the client certificate is no longer accepted"),
        "{}",
        answer.body
    );
    assert!(answer.body.contains("expired"), "{}", answer.body);
    assert!(answer.closed);
    // A resumed TLS 1.3 session carries the certificate of its first
    // handshake without checking it again: its first request is where the
    // expiry is seen.
    let mut resumed = connect_with(&env, resuming);
    assert_eq!(
        resumed.conn.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    let answer = get(&mut resumed, "/v1/status");
    assert_eq!(answer.status, 403, "{}", answer.body);
    assert!(
        answer
            .body
            .contains("the client certificate is no longer accepted"),
        "{}",
        answer.body
    );
    assert!(answer.closed);
    // And a new connection is refused at its handshake, as before.
    let config = tls_config(&env.pki.ca_pem, Some(&olga));
    let server = rustls_pki_types::ServerName::IpAddress(env.addr.ip().into());
    let mut conn = rustls::ClientConnection::new(Arc::new(config), server).unwrap();
    let mut tcp = TcpStream::connect(env.addr).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let refused = loop {
        match conn.complete_io(&mut tcp) {
            Err(_) => break true,
            Ok(_) if !conn.is_handshaking() => {
                // TLS 1.3: the client finishes before the server checked
                // its certificate; the refusal comes with the first read.
                let mut stream = rustls::StreamOwned::new(conn, tcp);
                let request = format!(
                    "GET /v1/status HTTP/1.1\r\nhost: keyholder\r\n{API_VERSION_HEADER}: {API_VERSION}\r\n\r\n"
                );
                let _ = stream.write_all(request.as_bytes());
                let mut buf = [0u8; 64];
                break !matches!(stream.read(&mut buf), Ok(n) if n > 0);
            }
            Ok(_) => assert!(Instant::now() < deadline, "the handshake never ended"),
        }
    };
    assert!(refused, "a new connection with the expired certificate");
}
