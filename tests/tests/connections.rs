//! Who may hold the daemon's connections, over the real `keyholderd` with
//! `max_connections = 16`: a certificate the CA signed but no principal
//! maps to gets one 403 per connection and is closed, so however it
//! reconnects the operator keeps getting answers; a configured principal
//! holds at most `max_connections_per_principal` (a quarter, 4) and each
//! further connection is answered 429 `too_many_connections` and closed (or
//! ended sooner for a newer connection), so it cannot take every slot
//! either.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use keyholder_api::{API_VERSION, API_VERSION_HEADER};
use keyholder_tests::client::tls_config;
use keyholder_tests::daemon::{DATABASE, OPERATOR};
use keyholder_tests::{Env, EnvOptions};

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A finished mutual TLS handshake as `name`.
fn tls_stream(env: &Env, name: &str) -> Tls {
    let config = tls_config(&env.pki.ca_pem, Some(&env.pki.client(name)));
    let server = rustls_pki_types::ServerName::IpAddress(env.addr.ip().into());
    let mut conn = rustls::ClientConnection::new(Arc::new(config), server).unwrap();
    let mut tcp = TcpStream::connect(env.addr).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).unwrap();
    }
    rustls::StreamOwned::new(conn, tcp)
}

/// What the daemon sends on `stream` within `wait`, up to the end of one
/// answer, and whether it closed the connection (EOF or an error other than
/// the timeout).
fn read_for(stream: &mut Tls, wait: Duration) -> (String, bool) {
    let deadline = Instant::now() + wait;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let text = |got: &[u8]| String::from_utf8_lossy(got).into_owned();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || complete(&text(&got)) {
            return (text(&got), false);
        }
        stream.sock.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return (text(&got), true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return (text(&got), true),
        }
    }
}

/// Whether `answer` holds a whole HTTP answer (its headers and as many
/// bytes of body as `content-length` says).
fn complete(answer: &str) -> bool {
    let Some((head, body)) = answer.split_once("\r\n\r\n") else {
        return false;
    };
    head.lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")?
                .trim()
                .parse()
                .ok()
        })
        .is_some_and(|length: usize| body.len() >= length)
}

fn health_request() -> String {
    format!(
        "GET /v1/health HTTP/1.1\r\nhost: keyholder\r\n{API_VERSION_HEADER}: {API_VERSION}\r\n\r\n"
    )
}

/// What mallory's 16 connections got.
#[derive(Default)]
struct Mallory {
    connections: u64,
    refusals: u64,
    first: String,
    answered_twice: u64,
}

/// mallory (a certificate of the CA, no principal) opens 16 connections,
/// says `ready`, then sends a request on each every 500 ms, reconnecting
/// every one the daemon closed, until `stop`.
fn mallory(env: &Env, ready: &AtomicBool, stop: &AtomicBool) -> Mallory {
    let mut seen = Mallory {
        connections: 16,
        ..Mallory::default()
    };
    let mut streams: Vec<Option<Tls>> = (0..16).map(|_| Some(tls_stream(env, "mallory"))).collect();
    ready.store(true, Ordering::Relaxed);
    let send = |stream: &mut Tls| -> (String, bool) {
        let sent = stream
            .write_all(health_request().as_bytes())
            .and_then(|()| stream.flush());
        match sent {
            Ok(()) => read_for(stream, Duration::from_millis(300)),
            Err(_) => (String::new(), true),
        }
    };
    while !stop.load(Ordering::Relaxed) {
        for slot in &mut streams {
            let stream = slot.get_or_insert_with(|| {
                seen.connections += 1;
                tls_stream(env, "mallory")
            });
            let (answer, mut closed) = send(stream);
            if answer.starts_with("HTTP/1.1 403") {
                seen.refusals += 1;
                if seen.first.is_empty() {
                    seen.first = answer;
                }
            }
            if !closed {
                // Open after its answer: a second request must not be
                // answered.
                let again;
                (again, closed) = send(stream);
                if !again.is_empty() {
                    seen.answered_twice += 1;
                }
            }
            if closed {
                *slot = None;
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_certificate_of_no_principal_gets_one_403_a_connection_and_never_keeps_the_operator_out()
{
    let env = Arc::new(Env::new(EnvOptions {
        listen_toml: "max_connections = 16\nheader_read_timeout = \"2s\"\n".to_owned(),
        ..EnvOptions::default()
    }));
    let _daemon = env.start().await;
    let ready = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let holder = {
        let (env, ready, stop) = (Arc::clone(&env), Arc::clone(&ready), Arc::clone(&stop));
        tokio::task::spawn_blocking(move || mallory(&env, &ready, &stop))
    };
    while !ready.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let operator = env.client(OPERATOR);
    let started = Instant::now();
    let mut failures = Vec::new();
    let mut answered = 0;
    while started.elapsed() < Duration::from_secs(8) {
        match operator
            .send(reqwest::Method::GET, "/v1/health", None)
            .await
        {
            Ok(a) if a.status == 200 => answered += 1,
            Ok(a) => failures.push(format!("{}: {}", a.status, a.body)),
            Err(e) => failures.push(e.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let seen = holder.await.unwrap();
    println!(
        "mallory: {} connections, {} answered 403; the operator: {answered} health answers, {} failures",
        seen.connections,
        seen.refusals,
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "the operator was refused: {failures:?}"
    );
    assert!(answered >= 20, "{answered}");
    assert!(seen.refusals >= 16, "mallory got {} answers", seen.refusals);
    assert!(seen.first.starts_with("HTTP/1.1 403"), "{}", seen.first);
    assert!(
        seen.first.contains(
            r#"{"error":"the client certificate (mallory) is not a configured principal; add it as a cert_identity","code":"forbidden"}"#
        ),
        "{}",
        seen.first
    );
    assert_eq!(seen.answered_twice, 0, "a connection answered twice");
    // Logged, but not once per connection.
    let warnings = env
        .log_text()
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("maps to no principal"))
        .count();
    assert!(
        (1..=2).contains(&warnings),
        "{warnings} WARN lines for {} connections",
        seen.connections
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_principal_holds_a_quarter_of_the_connections_and_the_rest_stay_free() {
    let env = Arc::new(Env::new(EnvOptions {
        listen_toml: "max_connections = 16\nheader_read_timeout = \"30s\"\n".to_owned(),
        ..EnvOptions::default()
    }));
    let _daemon = env.start().await;
    // db1 opens 16 connections and stays silent on them: 4 hold its
    // places, the others wait in the evictable half (8 places), so the
    // oldest of them are ended to make room for the newer ones.
    let held = {
        let env = Arc::clone(&env);
        tokio::task::spawn_blocking(move || {
            (0..16)
                .map(|_| tls_stream(&env, DATABASE))
                .collect::<Vec<_>>()
        })
        .await
        .unwrap()
    };
    // The operator is served all the same: a place in the half is taken
    // from one of db1's connections over its limit.
    assert_eq!(env.client(OPERATOR).get("/v1/health").await.status, 200);
    // Then db1 asks on each: the 4 that hold its places are served, each
    // of the others still open is answered 429 and closed.
    let (kept, answers) = tokio::task::spawn_blocking(move || {
        let mut kept = Vec::new();
        let mut answers = Vec::new();
        for mut stream in held {
            let sent = stream
                .write_all(health_request().as_bytes())
                .and_then(|()| stream.flush());
            let (answer, closed) = if sent.is_ok() {
                read_for(&mut stream, Duration::from_millis(2000))
            } else {
                (String::new(), true)
            };
            if answer.starts_with("HTTP/1.1 200") {
                kept.push(stream);
            }
            answers.push((answer, closed));
        }
        (kept, answers)
    })
    .await
    .unwrap();
    let served = answers
        .iter()
        .filter(|(a, _)| a.starts_with("HTTP/1.1 200"))
        .count();
    let over: Vec<&String> = answers
        .iter()
        .map(|(a, _)| a)
        .filter(|a| a.starts_with("HTTP/1.1 429"))
        .collect();
    assert_eq!(served, 4, "db1 keeps 4 of its 16 connections: {answers:?}");
    assert!(!over.is_empty(), "{answers:?}");
    for answer in &over {
        assert!(
            answer.contains("\"code\":\"too_many_connections\"")
                && answer.contains("db1 already holds 4 open connections")
                && answer.to_ascii_lowercase().contains("retry-after: 1"),
            "{answer}"
        );
    }
    assert_eq!(
        answers
            .iter()
            .filter(|(a, closed)| a.is_empty() && *closed)
            .count()
            + over.len(),
        12,
        "each connection over the limit is answered 429 or was ended for a newer one: {answers:?}"
    );
    // A fifth while the 4 are open is told why, as the CLI shows it; their
    // places come back when they close.
    let db1 = env.client(DATABASE);
    let fifth = db1.get("/v1/health").await;
    assert_eq!(fifth.status, 429, "{}", fifth.body);
    assert_eq!(fifth.error().code, "too_many_connections");
    assert!(
        env.log_contains("429 too_many_connections, then it is closed")
            .await
    );
    drop(kept);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(db1.get("/v1/health").await.status, 200);
}

/// db1's start-up hook, run while db1 holds all 4 of its places, is
/// answered 429 `too_many_connections` and waits, saying why, as it waits
/// for a sealed daemon; once a place is free it gets the keyring. (Many
/// application servers sharing one certificate start at once.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_hook_waits_while_its_principal_holds_every_place_it_may() {
    let env = Arc::new(Env::new(EnvOptions {
        listen_toml: "max_connections = 16\nheader_read_timeout = \"30s\"\n".to_owned(),
        ..EnvOptions::default()
    }));
    let _daemon = env.start().await;
    for name in ["alice", "bob"] {
        let answer = env.client(name).unseal(&[&env.share_line(name, 1)]).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    let held = {
        let env = Arc::clone(&env);
        tokio::task::spawn_blocking(move || {
            (0..4)
                .map(|_| {
                    let mut stream = tls_stream(&env, DATABASE);
                    stream.write_all(health_request().as_bytes()).unwrap();
                    stream.flush().unwrap();
                    let (answer, _) = read_for(&mut stream, Duration::from_secs(5));
                    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
                    stream
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap()
    };

    let mut hook = env
        .keyholder_cli(DATABASE)
        .args(["hook", "--wait", "60s", "--format", "json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = hook.stderr.take().unwrap();
    let (saw, seen) = std::sync::mpsc::channel();
    let said = std::thread::spawn(move || {
        let mut said = String::new();
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)) {
            let line = line.unwrap();
            if line.contains("holds as many connections of this certificate as it allows") {
                let _ = saw.send(());
            }
            said.push_str(&line);
            said.push('\n');
        }
        said
    });
    let waited = seen.recv_timeout(Duration::from_secs(30));
    drop(held);
    let out = tokio::task::spawn_blocking(move || hook.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let said = said.join().unwrap();
    assert!(waited.is_ok(), "the hook did not wait for a place: {said}");
    assert!(out.status.success(), "{said}");
    let ring: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ring["write_version"], 1, "{said}");
}

/// A daemon that takes the connection and the request but never answers (a
/// hung process, a stuck disk): `keyholder hook --wait 3s` gives up when
/// its wait is over, not after the client's 60 s per request, so a service
/// manager's start timeout set above `--wait` is never the one that fires.
#[test]
fn the_hook_gives_up_at_its_wait_when_the_daemon_takes_the_request_and_never_answers() {
    let env = Env::new(EnvOptions::default());
    let certs: Vec<rustls_pki_types::CertificateDer<'static>> = {
        use rustls_pki_types::pem::PemObject as _;
        rustls_pki_types::CertificateDer::pem_file_iter(&env.pki.server.cert)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    let key = {
        use rustls_pki_types::pem::PemObject as _;
        rustls_pki_types::PrivateKeyDer::from_pem_file(&env.pki.server.key).unwrap()
    };
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap(),
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicBool::new(false));
    let seen = Arc::clone(&requests);
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let (Ok(mut tcp), config, seen) = (tcp, Arc::clone(&config), Arc::clone(&seen)) else {
                continue;
            };
            std::thread::spawn(move || {
                let mut conn = rustls::ServerConnection::new(config).unwrap();
                while conn.is_handshaking() {
                    if conn.complete_io(&mut tcp).is_err() {
                        return;
                    }
                }
                let mut stream = rustls::StreamOwned::new(conn, tcp);
                let mut buf = [0u8; 4096];
                // Takes the request, answers nothing, holds the connection.
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        return;
                    }
                    seen.store(true, Ordering::SeqCst);
                }
            });
        }
    });

    let started = Instant::now();
    let out = env
        .keyholder_cli(DATABASE)
        .env("KEYHOLDER_ADDR", silent.to_string())
        .args(["hook", "--wait", "3s"])
        .output()
        .unwrap();
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        requests.load(Ordering::SeqCst),
        "the request reached the silent daemon: {stderr}"
    );
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty(), "no keyring was printed");
    assert!(stderr.contains("did not answer in time"), "{stderr}");
    // The old hook waited out the client's 60 s request timeout.
    assert!(
        took < Duration::from_secs(30),
        "the hook took {took:?} with --wait 3s: {stderr}"
    );
}
