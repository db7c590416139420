//! Hostile clients against the real `keyholderd`: floods of bad share
//! submissions, slow clients, connections beyond the limit, oversized and
//! malformed bodies, a database certificate posting a huge body, a keyholder
//! wiping the others' progress. Each asserts a clear error, no state change,
//! and `/v1/health` answering within a second.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use keyholder_api::{API_VERSION, API_VERSION_HEADER, AuditLog, Status, UnsealResponse};
use keyholder_tests::client::tls_config;
use keyholder_tests::daemon::{DATABASE, OPERATOR};
use keyholder_tests::{Env, EnvOptions};

/// `/v1/health` must answer within this, whatever else is going on.
const HEALTH_BOUND: Duration = Duration::from_secs(1);

async fn assert_healthy(env: &Env) {
    let started = Instant::now();
    let answer = env.client(OPERATOR).get("/v1/health").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(
        started.elapsed() < HEALTH_BOUND,
        "health took {:?}",
        started.elapsed()
    );
}

/// Entries, and bytes of the state store (file and WAL) on disk.
fn store_size(state_dir: &Path) -> (u64, u64) {
    let db = state_dir.join("state.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let entries: i64 = conn
        .query_row("SELECT count(*) FROM audit", [], |r| r.get(0))
        .unwrap();
    let bytes = ["state.db", "state.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(state_dir.join(f)).ok())
        .map(|m| m.len())
        .sum();
    (entries as u64, bytes)
}

async fn status(env: &Env) -> Status {
    let answer = env.client(OPERATOR).get("/v1/status").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_bad_submissions_is_refused_with_429_and_costs_a_bounded_amount() {
    let env = Env::new(EnvOptions::default());
    let mut daemon = env.start().await;
    let before = store_size(&env.state_dir);
    // Bob's share from alice's certificate: refused, line by line, every time.
    let bad = env.share_line("bob", 1);
    let body = serde_json::json!({ "shares": vec![bad; keyholder_api::MAX_SHARE_LINES] });
    let deadline = Instant::now() + Duration::from_secs(30);
    let processed = Arc::new(AtomicU64::new(0));
    let limited = Arc::new(AtomicU64::new(0));
    let mut loops = Vec::new();
    for _ in 0..3 {
        let client = env.client("alice");
        let body = body.clone();
        let (processed, limited) = (Arc::clone(&processed), Arc::clone(&limited));
        loops.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let answer = client.post("/v1/unseal", &body).await;
                match answer.status {
                    200 => {
                        let response: UnsealResponse = answer.json();
                        assert!(response.outcomes.iter().all(|o| !o.accepted));
                        processed.fetch_add(1, Ordering::Relaxed);
                    }
                    429 => {
                        assert_eq!(answer.error().code, "rate_limited");
                        let retry: u64 = answer
                            .retry_after
                            .as_deref()
                            .expect("a 429 carries Retry-After")
                            .parse()
                            .unwrap();
                        assert!((1..=10).contains(&retry), "Retry-After {retry}");
                        limited.fetch_add(1, Ordering::Relaxed);
                    }
                    other => panic!("{other}: {}", answer.body),
                }
            }
        }));
    }
    let probe = env.client(OPERATOR);
    let mut slowest = Duration::ZERO;
    let mut probes = 0;
    while Instant::now() < deadline {
        let started = Instant::now();
        let answer = probe.get("/v1/health").await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        slowest = slowest.max(started.elapsed());
        probes += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for l in loops {
        l.await.unwrap();
    }
    let (processed, limited) = (
        processed.load(Ordering::Relaxed),
        limited.load(Ordering::Relaxed),
    );
    assert!(
        slowest < HEALTH_BOUND,
        "health took {slowest:?} during the flood"
    );
    // The first failures in flight at once, the burst of 5, then one every
    // 10 s: about 11.
    assert!(
        processed <= 14,
        "{processed} bad submissions were processed"
    );
    assert!(limited > 100, "only {limited} submissions were refused");

    // Bob is not slowed down by alice's flood, and nothing of it stuck.
    let answer = env.client("bob").unseal(&[&env.share_line("bob", 1)]).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let progress = status(&env).await.unseal_progress;
    assert_eq!(progress.len(), 1);
    assert_eq!(progress[0].from, ["bob"]);
    assert_healthy(&env).await;

    assert!(daemon.stop(), "keyholderd did not stop cleanly");
    let after = store_size(&env.state_dir);
    let conn = rusqlite::Connection::open(env.state_dir.join("state.db")).unwrap();
    let summaries: Vec<(String, String)> = conn
        .prepare("SELECT actor, detail FROM audit WHERE action = 'share_submissions_rate_limited'")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let counted: u64 = summaries
        .iter()
        .map(|(actor, detail)| {
            assert_eq!(actor, "alice");
            let detail: serde_json::Value = serde_json::from_str(detail).unwrap();
            detail["refused"].as_u64().unwrap()
        })
        .sum();
    assert_eq!(
        counted, limited,
        "every refusal is counted in the summaries, once"
    );
    assert!(
        summaries.len() <= 2,
        "one summary per minute: {summaries:?}"
    );
    let times: Vec<String> = conn
        .prepare("SELECT time FROM audit ORDER BY seq")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "audit times go backwards"
    );
    let grown = after.0 - before.0;
    // One entry per processed submission, whatever its lines; then bob's
    // share, the summaries and the stop.
    assert!(
        grown <= processed + 4,
        "the audit log grew by {grown} entries"
    );
    println!(
        "flood: {} requests in 30 s, {processed} processed, {limited} refused with 429; \
         health slowest {slowest:?} over {probes} probes; audit {} -> {} entries, \
         state store {} -> {} bytes",
        processed + limited,
        before.0,
        after.0,
        before.1,
        after.1
    );
}

/// A raw TLS connection as `name`, handshake done.
fn tls_stream(env: &Env, name: &str) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let config = tls_config(&env.pki.ca_pem, Some(&env.pki.client(name)));
    let server = rustls_pki_types::ServerName::IpAddress(env.addr.ip().into());
    let mut conn = rustls::ClientConnection::new(Arc::new(config), server).unwrap();
    let mut tcp = TcpStream::connect(env.addr).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).unwrap();
    }
    rustls::StreamOwned::new(conn, tcp)
}

/// Reads until the daemon closes the connection or `within` passes;
/// returns what it sent and whether it closed.
fn read_until_closed(
    stream: &mut rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    within: Duration,
) -> (String, bool) {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (String::from_utf8_lossy(&got).into_owned(), false);
        }
        stream.sock.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&got).into_owned(), true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(_) => return (String::from_utf8_lossy(&got).into_owned(), true),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_clients_are_cut_off_by_the_timeouts() {
    let env = Env::new(EnvOptions {
        listen_toml: "header_read_timeout = \"1s\"\n".to_owned(),
        ..EnvOptions::default()
    });
    let _daemon = env.start().await;
    let env = Arc::new(env);

    // Idle after the handshake.
    let idle = {
        let env = Arc::clone(&env);
        tokio::task::spawn_blocking(move || {
            let mut stream = tls_stream(&env, "alice");
            let started = Instant::now();
            let (_, closed) = read_until_closed(&mut stream, Duration::from_secs(8));
            (closed, started.elapsed())
        })
    };
    // Headers at a byte a second.
    let trickle = {
        let env = Arc::clone(&env);
        tokio::task::spawn_blocking(move || {
            let mut stream = tls_stream(&env, "alice");
            let request = format!(
                "GET /v1/health HTTP/1.1\r\nhost: keyholder\r\n{API_VERSION_HEADER}: {API_VERSION}\r\n\r\n"
            );
            let started = Instant::now();
            for (sent, byte) in request.bytes().enumerate() {
                if stream
                    .write_all(&[byte])
                    .and_then(|()| stream.flush())
                    .is_err()
                {
                    return (true, sent, started.elapsed());
                }
                let (_, closed) = read_until_closed(&mut stream, Duration::from_secs(1));
                if closed {
                    return (true, sent + 1, started.elapsed());
                }
            }
            (false, request.len(), started.elapsed())
        })
    };
    // A body at a byte a second.
    let slow_body = {
        let env = Arc::clone(&env);
        tokio::task::spawn_blocking(move || {
            let mut stream = tls_stream(&env, "alice");
            let head = format!(
                "POST /v1/unseal HTTP/1.1\r\nhost: keyholder\r\n{API_VERSION_HEADER}: {API_VERSION}\r\ncontent-type: application/json\r\ncontent-length: 64\r\n\r\n{{"
            );
            stream.write_all(head.as_bytes()).unwrap();
            stream.flush().unwrap();
            let started = Instant::now();
            for _ in 0..20 {
                let (answer, closed) = read_until_closed(&mut stream, Duration::from_secs(1));
                if !answer.is_empty() || closed {
                    return (answer, started.elapsed());
                }
                if stream
                    .write_all(b" ")
                    .and_then(|()| stream.flush())
                    .is_err()
                {
                    break;
                }
            }
            (String::new(), started.elapsed())
        })
    };
    for _ in 0..5 {
        assert_healthy(&env).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (closed, after) = idle.await.unwrap();
    assert!(closed, "an idle connection was kept open for 8 s");
    println!("idle connection closed after {after:?}");
    let (closed, sent, after) = trickle.await.unwrap();
    assert!(
        closed,
        "a byte-a-second client got its whole request in ({sent} bytes)"
    );
    println!("byte-a-second headers cut after {sent} bytes, {after:?}");
    let (answer, after) = slow_body.await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"code\":\"request_timeout\""), "{answer}");
    println!("byte-a-second body answered 408 after {after:?}");
    assert!(status(&env).await.unseal_progress.is_empty());
    assert_healthy(&env).await;
}

/// Whether the daemon closed `tcp` (EOF or reset) within `wait`.
fn closed_within(mut tcp: &TcpStream, wait: Duration) -> bool {
    tcp.set_read_timeout(Some(wait)).unwrap();
    match tcp.read(&mut [0u8; 1]) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_beyond_the_limits_do_not_stop_keyholder_status() {
    let metrics = keyholder_tests::daemon::free_addr();
    let env = Env::new(EnvOptions {
        listen_toml: format!(
            "max_connections = 16\nheader_read_timeout = \"4s\"\nmetrics_addr = \"{metrics}\"\n"
        ),
        ..EnvOptions::default()
    });
    let _daemon = env.start().await;
    let status_ok = |env: &Env| {
        let out = env.keyholder_cli(OPERATOR).arg("status").output().unwrap();
        assert!(
            out.status.success(),
            "keyholder status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };

    // 500 connections that never start a handshake: only the newest 8 are
    // kept waiting, each new one ends the oldest.
    let silent: Vec<TcpStream> = (0..500)
        .map(|_| TcpStream::connect(env.addr).unwrap())
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let closed = silent
        .iter()
        .filter(|tcp| closed_within(tcp, Duration::from_millis(20)))
        .count();
    assert!(
        closed >= 480,
        "only {closed} of 500 silent connections were closed"
    );
    let started = Instant::now();
    status_ok(&env);
    println!(
        "keyholder status among 500 silent connections ({closed} closed by the daemon): {:?}",
        started.elapsed()
    );
    assert_healthy(&env).await;
    drop(silent);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // 16 handshaken, idle connections take every slot (4 principals, each
    // at its max_connections_per_principal, a quarter): the next one is
    // closed at once; once the header timeout cuts them, status answers.
    let env = Arc::new(env);
    let held = {
        let env = Arc::clone(&env);
        tokio::task::spawn_blocking(move || {
            ["alice", "bob", "carol", DATABASE]
                .iter()
                .flat_map(|name| (0..4).map(|_| tls_stream(&env, name)).collect::<Vec<_>>())
                .collect::<Vec<_>>()
        })
        .await
        .unwrap()
    };
    let extra = TcpStream::connect(env.addr).unwrap();
    assert!(
        closed_within(&extra, Duration::from_secs(1)),
        "the 17th connection was not closed at once"
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    status_ok(&env);
    assert_healthy(&env).await;
    drop(held);

    // Counted, not logged line by line: the failed handshakes make one WARN
    // line.
    let plain = reqwest::Client::builder()
        .tls_backend_preconfigured(tls_config(&env.pki.ca_pem, None))
        .build()
        .unwrap();
    let text = plain
        .get(format!("http://{metrics}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from:\n{text}"))
    };
    assert!(
        value("keyholder_connections_refused_total") >= 492.0,
        "{text}"
    );
    // The silent connections still waiting were closed by the test: their
    // handshakes count as refused.
    assert!(
        value("keyholder_tls_handshake_failures_total{reason=\"refused\"}") >= 1.0,
        "{text}"
    );
    let warnings = env
        .log_text()
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("tls handshake"))
        .count();
    assert!(
        warnings <= 2,
        "{warnings} handshake WARN lines:\n{}",
        env.log_text()
    );
}

/// `POST path` as `name` announcing a 2 MiB body and sending its first KiB,
/// over a raw TLS connection (an HTTP client would fail writing the rest
/// once the daemon answered); the status and the error body.
async fn huge_post(env: &Arc<Env>, name: &str, path: &str) -> (u16, keyholder_api::ApiError) {
    let env = Arc::clone(env);
    let (name, path) = (name.to_owned(), path.to_owned());
    let answer = tokio::task::spawn_blocking(move || {
        let mut stream = tls_stream(&env, &name);
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: keyholder\r\n{API_VERSION_HEADER}: {API_VERSION}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            2 * 1024 * 1024
        );
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(&[b'x'; 1024]).unwrap();
        stream.flush().unwrap();
        read_until_closed(&mut stream, Duration::from_secs(5)).0
    })
    .await
    .unwrap();
    let status = answer
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer: {answer:?}"));
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let error = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"));
    (status, error)
}

#[tokio::test]
async fn oversized_and_malformed_bodies_get_json_errors_and_change_nothing() {
    let env = Env::new(EnvOptions::default());
    let _daemon = env.start().await;
    let audit_len = |log: AuditLog| log.entries.len();
    let entries = audit_len(env.client(OPERATOR).get("/v1/audit").await.json());
    let alice = env.client("alice");
    let env = Arc::new(env);

    // 2 MiB announced, the first KiB sent: refused without reading the rest.
    let (status_code, error) = huge_post(&env, "alice", "/v1/unseal").await;
    assert_eq!(status_code, 413, "{error:?}");
    assert_eq!(error.code, "body_too_large");
    assert_eq!(
        error.error,
        "the request body is larger than this endpoint takes (16384 bytes at most)"
    );

    let line = env.share_line("alice", 1);
    let lines = vec![line.as_str(); keyholder_api::MAX_SHARE_LINES + 1];
    let answer = alice.unseal(&lines).await;
    assert_eq!(answer.status, 413, "{}", answer.body);
    assert_eq!(answer.error().code, "too_many_shares");
    assert!(answer.error().error.contains("nothing was processed"));

    let answer = alice
        .send(
            reqwest::Method::POST,
            "/v1/unseal",
            Some("{\"shares\": [".to_owned()),
        )
        .await
        .unwrap();
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert_eq!(answer.error().code, "bad_request");

    let answer = alice
        .send(reqwest::Method::PUT, "/v1/unseal", None)
        .await
        .unwrap();
    assert_eq!(answer.status, 405, "{}", answer.body);
    assert_eq!(answer.error().code, "method_not_allowed");
    assert_eq!(
        answer.error().error,
        "this endpoint does not take PUT; see docs/protocol.md"
    );

    // A submission of no share at all is refused, not taken as a success
    // (which ended a streak of failures and wrote an `unseal_share_accepted`
    // entry with no line).
    let bob = env.client("bob");
    for path in ["/v1/unseal", "/v1/rotation/verify"] {
        let answer = bob.post(path, &serde_json::json!({"shares": []})).await;
        assert_eq!(answer.status, 400, "{path}: {}", answer.body);
        assert_eq!(answer.error().code, "bad_request");
        assert_eq!(
            answer.error().error,
            "the request carries no share line; nothing was processed"
        );
    }

    // The database role is refused before its body is read.
    for path in ["/v1/unseal", "/v1/rotation/verify", "/v1/rotation/prepare"] {
        let (status_code, error) = huge_post(&env, DATABASE, path).await;
        assert_eq!(status_code, 403, "{path}: {error:?}");
        assert_eq!(error.code, "forbidden");
        assert!(
            error.error.starts_with("this needs the ") && error.error.ends_with("db1 has database"),
            "{}",
            error.error
        );
    }

    let status = status(&env).await;
    assert!(status.sealed);
    assert!(status.unseal_progress.is_empty());
    assert_eq!(
        audit_len(env.client(OPERATOR).get("/v1/audit").await.json()),
        entries,
        "refused bodies wrote audit entries"
    );
    assert_healthy(&env).await;
}

#[tokio::test]
async fn a_keyholder_withdraws_only_its_own_shares_and_an_operator_clears_all() {
    let env = Env::new(EnvOptions::default());
    let _daemon = env.start().await;
    let alice = env.client("alice");
    assert_eq!(
        alice.unseal(&[&env.share_line("alice", 1)]).await.status,
        200
    );
    // Bob cannot wipe alice's progress.
    let answer = env
        .client("bob")
        .send(reqwest::Method::DELETE, "/v1/unseal", None)
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    let response: UnsealResponse = answer.json();
    assert_eq!(response.progress.len(), 1);
    assert_eq!(response.progress[0].from, ["alice"]);
    // Alice withdraws her own.
    let answer = alice
        .send(reqwest::Method::DELETE, "/v1/unseal", None)
        .await
        .unwrap();
    assert!(answer.json::<UnsealResponse>().progress.is_empty());
    // An operator clears everyone's.
    alice.unseal(&[&env.share_line("alice", 1)]).await;
    let answer = env
        .client(OPERATOR)
        .send(reqwest::Method::DELETE, "/v1/unseal", None)
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(status(&env).await.unseal_progress.is_empty());
    let log: AuditLog = env.client(OPERATOR).get("/v1/audit").await.json();
    let actions: Vec<(&str, &str)> = log
        .entries
        .iter()
        .filter(|e| {
            e.action.starts_with("unseal_progress") || e.action.starts_with("unseal_shares")
        })
        .map(|e| (e.actor.as_str(), e.action.as_str()))
        .collect();
    assert_eq!(
        actions,
        [
            ("bob", "unseal_shares_withdrawn"),
            ("alice", "unseal_shares_withdrawn"),
            (OPERATOR, "unseal_progress_reset"),
        ]
    );
}

#[tokio::test]
async fn the_audit_log_is_read_a_page_at_a_time() {
    let env = Env::new(EnvOptions::default());
    let _daemon = env.start().await;
    for _ in 0..3 {
        env.client("alice")
            .unseal(&[&env.share_line("bob", 1)])
            .await;
    }
    let operator = env.client(OPERATOR);
    let all: AuditLog = operator.get("/v1/audit").await.json();
    assert!(!all.more);
    let total = all.entries.len() as u64;
    assert!(total >= 5, "{total}");
    assert_eq!(all.next_since, total);
    let page: AuditLog = operator.get("/v1/audit?since=1&limit=2").await.json();
    let seqs: Vec<u64> = page.entries.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [2, 3]);
    assert!(page.more);
    assert_eq!(page.next_since, 3);
    let end: AuditLog = operator
        .get(&format!("/v1/audit?since={total}"))
        .await
        .json();
    assert!(end.entries.is_empty() && !end.more);
    assert_eq!(end.next_since, total);
    for query in ["limit=0", "limit=1001", "since=-1", "since=1&color=red"] {
        let answer = operator.get(&format!("/v1/audit?{query}")).await;
        assert_eq!(answer.status, 400, "{query}: {}", answer.body);
        assert_eq!(answer.error().code, "bad_request");
    }

    // The CLI: a window of the log, and the whole chain verified in pages.
    let out = env
        .keyholder_cli(OPERATOR)
        .args(["audit", "--since", "1", "--limit", "2"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let printed: Vec<&str> = text
        .lines()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(printed, ["2", "3"], "{text}");
    let out = env
        .keyholder_cli(OPERATOR)
        .args(["audit", "--verify"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("audit chain intact: {total} entries\n")
    );

    // --follow prints what is written after it started.
    let mut follow = env
        .keyholder_cli(OPERATOR)
        .args(["audit", "--since", &total.to_string(), "--follow"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stdout).lines() {
            if lines_tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    operator.post("/v1/seal", &serde_json::json!({})).await;
    let line = lines
        .recv_timeout(Duration::from_secs(10))
        .expect("--follow printed the new entry");
    let _ = follow.kill();
    let _ = follow.wait();
    let mut fields = line.split_whitespace();
    assert_eq!(
        fields.next(),
        Some((total + 1).to_string().as_str()),
        "{line}"
    );
    assert!(line.contains(" sealed "), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_store_locked_by_another_process_stalls_only_the_requests_that_write_it() {
    let env = Env::new(EnvOptions::default());
    let _daemon = env.start().await;
    let before = status(&env).await;
    // Another connection (this test process) takes the file's write lock
    // and holds it past the daemon's busy timeout (5 s).
    let locker = rusqlite::Connection::open(env.state_dir.join("state.db")).unwrap();
    locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let locked_at = Instant::now();
    // Four audited operator requests queue on the store.
    let writers: Vec<_> = (0..4)
        .map(|i| {
            let client = env.client(OPERATOR);
            tokio::spawn(async move {
                client
                    .post(
                        "/v1/rotation/throttle",
                        &serde_json::json!({ "rows_per_sec": 100 + i }),
                    )
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..3 {
        assert_healthy(&env).await;
        let started = Instant::now();
        let now = status(&env).await;
        assert!(
            started.elapsed() < HEALTH_BOUND,
            "status took {:?} with the store locked",
            started.elapsed()
        );
        assert_eq!(now.versions, before.versions);
        assert!(now.sealed);
    }
    assert!(
        writers.iter().all(|w| !w.is_finished()),
        "the writers wait on the lock while status and health answer"
    );
    // Past the busy timeout the first writer fails, naming the file and what
    // it was doing; once the lock is gone the others go through.
    tokio::time::sleep(Duration::from_secs(6).saturating_sub(locked_at.elapsed())).await;
    locker.execute_batch("ROLLBACK").unwrap();
    let mut answers = Vec::new();
    for writer in writers {
        answers.push(writer.await.unwrap());
    }
    let failed: Vec<_> = answers.iter().filter(|a| a.status != 200).collect();
    assert!(!failed.is_empty(), "the lock outlived the busy timeout");
    for answer in &failed {
        assert_eq!(answer.status, 500, "{}", answer.body);
        let error = answer.error();
        assert!(
            error.error.contains("state.db") && error.error.contains("begin transition"),
            "{}",
            error.error
        );
    }
    assert!(
        failed.len() < answers.len(),
        "the later writers got through"
    );
    assert_healthy(&env).await;
}
