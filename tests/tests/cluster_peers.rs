//! Three real keyholderd nodes on one PostgreSQL state store (the server
//! named by `KEYHOLDER_TEST_PG`; skipped, saying so, when it is not set, a
//! failure when it is set and the server does not answer): one ceremony
//! unseals every node (shares relayed between nodes), a node killed and
//! restarted comes back unsealed from a peer, and so does each node of a
//! rolling restart; a peer's keys that fail their proof are dropped;
//! `keyholder seal` seals the
//! cluster and a restart after it stays sealed; the keyring transfer is
//! refused to a node outside the cluster and to a database, and its body
//! never holds a key in plaintext.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::time::{Duration, Instant};

use keyholder_api::{AuditEntry, PeerKeyring, UnsealResponse};
use keyholder_tests::EnvOptions;
use keyholder_tests::cluster::ClusterEnv;
use keyholder_tests::daemon::{DATABASE, OPERATOR};
use keyholder_tests::pg::{self, Schema};
use keyholder_tests::secrets;

/// A node principal whose certificate the CA signed but that the cluster
/// does not list.
const OUTSIDER: &str = "kh-x";

/// Polls the audit log until `done` holds: a node audits a step just after
/// its status shows it, so an entry is awaited, never assumed.
async fn wait_audit(
    cluster: &ClusterEnv,
    what: &str,
    done: impl Fn(&[AuditEntry]) -> bool,
) -> Vec<AuditEntry> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = cluster.audit().await;
        if done(&log) {
            return log;
        }
        assert!(Instant::now() < deadline, "never audited: {what}: {log:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls node `i`'s log until it contains `needle`.
async fn wait_log(cluster: &ClusterEnv, i: usize, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cluster.log_text(i).contains(needle) {
        assert!(
            Instant::now() < deadline,
            "{} never logged {needle:?}:\n{}",
            cluster.nodes[i].name,
            cluster.log_text(i)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn detail(entry: &AuditEntry) -> serde_json::Value {
    serde_json::from_str(&entry.detail).unwrap()
}

fn entries<'a>(log: &'a [AuditEntry], action: &str) -> Vec<&'a AuditEntry> {
    log.iter().filter(|e| e.action == action).collect()
}

#[tokio::test]
async fn one_ceremony_unseals_the_cluster_a_restarted_node_takes_the_keyring_from_a_peer_and_a_seal_seals_every_node()
 {
    let Some(url) = pg::url() else { return };
    let schema = Schema::new(&url).await;
    let cluster = ClusterEnv::new(
        3,
        "2s",
        EnvOptions {
            state_store: Some(schema.state_store()),
            ..EnvOptions::default()
        },
        &format!(
            "\n[[principals]]\nname = \"{OUTSIDER}\"\nroles = [\"node\"]\ncert_identity = \"{OUTSIDER}\"\n"
        ),
    );
    cluster.env.pki.client(OUTSIDER);
    let alice = cluster.env.share_line("alice", 1);
    let bob = cluster.env.share_line("bob", 1);
    let mut daemons = Vec::new();
    for i in 0..3 {
        daemons.push(cluster.start(i).await);
    }

    // One ceremony: alice submits to kh-a only, bob to kh-b only.
    let answer: UnsealResponse = cluster.client(0, "alice").unseal(&[&alice]).await.json();
    assert!(answer.sealed, "{answer:?}");
    for i in [1, 2] {
        cluster
            .wait_for(
                i,
                "got alice's share relayed",
                Duration::from_secs(10),
                |s| s.unseal_progress.iter().any(|p| p.from == ["alice"]),
            )
            .await;
    }
    let answer = cluster.client(1, "bob").unseal(&[&bob]).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let answer: UnsealResponse = answer.json();
    assert!(
        !answer.sealed,
        "alice's relayed share and bob's unseal kh-b: {answer:?}"
    );
    for i in 0..3 {
        let status = cluster
            .wait_for(i, "unsealed", Duration::from_secs(10), |s| !s.sealed)
            .await;
        assert_eq!(status.write_version.map(|v| v.number()), Some(1));
    }
    let log = wait_audit(
        &cluster,
        "alice's share relayed by kh-a to kh-b and kh-c",
        |log| {
            ["kh-b", "kh-c"].iter().all(|node| {
                entries(log, "unseal_share_relayed").iter().any(|e| {
                    e.actor == "alice"
                        && detail(e)["relayed_by"] == "kh-a"
                        && detail(e)["node"] == *node
                        && detail(e)["accepted"] == 1
                })
            })
        },
    )
    .await;
    wait_log(&cluster, 1, "cluster: shares relayed").await;
    assert!(
        entries(&log, "unseal_share_accepted")
            .iter()
            .filter(|e| e.actor == "alice" || e.actor == "bob")
            .count()
            == 2,
        "each keyholder submitted once: {log:?}"
    );

    // The transfer: a node of the cluster gets the keys age-encrypted to
    // its own recipient, never in plaintext; an outside node and a
    // database are refused, by name.
    let database = cluster.client(0, DATABASE).get("/v1/keyring").await;
    assert_eq!(database.status, 200, "{}", database.body);
    let keyring = crypto_core::Keyring::from_handover_json(&database.body).unwrap();
    let key = keyring.to_handover().keys.remove(0).key;
    let identity = age::x25519::Identity::generate();
    let request = serde_json::json!({"recipient": identity.to_public().to_string()});
    let answer = cluster
        .client(1, "kh-c")
        .post("/v1/cluster/keyring", &request)
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let encodings: Vec<(String, Vec<u8>)> = secrets::encodings(&secrets::key_bytes(&key))
        .into_iter()
        .map(|e| ("v1 key".to_owned(), e))
        .collect();
    secrets::assert_absent(
        &[(
            "the transfer body".to_owned(),
            answer.body.clone().into_bytes(),
        )],
        &encodings,
    );
    let sent: PeerKeyring = answer.json();
    assert_eq!(sent.node, "kh-b");
    let plain = age::decrypt(&identity, sent.age_armored.as_bytes()).unwrap();
    let handed =
        crypto_core::Keyring::from_handover_json(std::str::from_utf8(&plain).unwrap()).unwrap();
    assert_eq!(
        handed.kcv(keyring.write_version()),
        keyring.kcv(keyring.write_version()),
        "the encrypted hand-over holds the keyring's key"
    );
    for (who, reason) in [
        (
            OUTSIDER,
            "kh-x has the node role but is not a node of this cluster ([cluster] nodes: kh-a, kh-b, kh-c)",
        ),
        (
            DATABASE,
            "this is for the nodes of this cluster only; db1 has database, not the node role",
        ),
    ] {
        let answer = cluster
            .client(0, who)
            .post("/v1/cluster/keyring", &request)
            .await;
        assert_eq!(answer.status, 403, "{}", answer.body);
        assert_eq!(answer.error().code, "forbidden");
        assert_eq!(answer.error().error, reason);
        secrets::assert_absent(
            &[("a refusal".to_owned(), answer.body.clone().into_bytes())],
            &encodings,
        );
    }
    // A keyholder cannot pass shares off as relayed by a node.
    let answer = cluster
        .client(2, "alice")
        .post(
            "/v1/cluster/shares",
            &serde_json::json!({"keyholder": "bob", "shares": [&alice]}),
        )
        .await;
    assert_eq!(answer.status, 403, "{}", answer.body);
    assert_eq!(
        answer.error().error,
        "this is for the nodes of this cluster only; alice has keyholder, not the node role"
    );
    let log = cluster.audit().await;
    assert!(
        entries(&log, "cluster_call_refused")
            .iter()
            .any(|e| e.actor == "alice" && detail(e)["path"] == "/v1/cluster/shares"),
        "{log:?}"
    );
    let refused = entries(&log, "keyring_refused_to_node");
    for who in [OUTSIDER, DATABASE] {
        assert!(
            refused
                .iter()
                .any(|e| e.actor == who && detail(e)["node"] == "kh-a"),
            "the refusal of {who} is audited: {refused:?}"
        );
    }
    assert!(
        entries(&log, "keyring_sent_to_node")
            .iter()
            .any(|e| e.actor == "kh-c" && detail(e)["node"] == "kh-b"),
        "{log:?}"
    );

    // A node killed and restarted comes back from a peer, no share given.
    daemons[2].kill();
    let restarted = Instant::now();
    daemons[2] = cluster.start(2).await;
    cluster
        .wait_for(2, "unsealed from a peer", Duration::from_secs(15), |s| {
            !s.sealed
        })
        .await;
    println!(
        "unseal from a peer: {} ms from the restart of kh-c to its status unsealed",
        restarted.elapsed().as_millis()
    );
    let log = wait_audit(&cluster, "kh-c unsealed from a peer", |log| {
        entries(log, "unsealed_from_peer")
            .iter()
            .any(|e| detail(e)["node"] == "kh-c")
    })
    .await;
    let from_peer = entries(&log, "unsealed_from_peer");
    let from_peer = from_peer
        .iter()
        .find(|e| detail(e)["node"] == "kh-c")
        .unwrap_or_else(|| panic!("kh-c audited its unseal from a peer: {log:?}"));
    let peer = detail(from_peer)["peer"].as_str().unwrap().to_owned();
    assert!(peer == "kh-a" || peer == "kh-b", "{peer}");
    assert!(
        entries(&log, "keyring_sent_to_node")
            .iter()
            .any(|e| e.actor == "kh-c" && detail(e)["node"] == peer && e.seq < from_peer.seq),
        "{peer} audited the keyring it sent to kh-c: {log:?}"
    );

    // A rolling restart (an upgrade): each node in turn, stopped cleanly
    // and started again, comes back from a peer; no share is submitted.
    for (i, daemon) in daemons.iter_mut().enumerate() {
        assert!(daemon.stop());
        let restarted = Instant::now();
        *daemon = cluster.start(i).await;
        cluster
            .wait_for(i, "back from a peer", Duration::from_secs(15), |s| {
                !s.sealed
            })
            .await;
        println!(
            "rolling restart: {} back unsealed {} ms after its start",
            cluster.nodes[i].name,
            restarted.elapsed().as_millis()
        );
    }
    let log = wait_audit(&cluster, "every node came back from a peer", |log| {
        ["kh-a", "kh-b", "kh-c"].iter().all(|node| {
            entries(log, "unsealed_from_peer")
                .iter()
                .filter(|e| detail(e)["node"] == *node)
                .count()
                >= 1
        }) && entries(log, "unsealed_from_peer").len() >= 4
    })
    .await;
    let from_peer_before_seal = entries(&log, "unsealed_from_peer").len();

    // `keyholder seal` on one node seals all three.
    let out = cluster
        .keyholder_cli(OPERATOR)
        .env("KEYHOLDER_ADDR", cluster.nodes[1].addr.to_string())
        .arg("seal")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for i in 0..3 {
        cluster
            .wait_for(i, "sealed with the cluster", Duration::from_secs(10), |s| {
                s.sealed
            })
            .await;
    }
    let log = wait_audit(&cluster, "kh-a and kh-c sealed with the cluster", |log| {
        entries(log, "sealed_with_cluster").len() >= 2
    })
    .await;
    let sealed = entries(&log, "cluster_sealed");
    assert_eq!(sealed.len(), 1, "{sealed:?}");
    assert_eq!(sealed[0].actor, OPERATOR);
    assert_eq!(detail(sealed[0])["node"], "kh-b");
    let generation = detail(sealed[0])["generation"].clone();
    for node in ["kh-a", "kh-c"] {
        assert!(
            entries(&log, "sealed_with_cluster")
                .iter()
                .any(|e| detail(e)["node"] == node && detail(e)["generation"] == generation),
            "{node} sealed with the cluster: {log:?}"
        );
    }

    // Cold start: a restart after the seal stays sealed (no peer holds a
    // key); the ceremony unseals the cluster again.
    daemons[0].kill();
    daemons[0] = cluster.start(0).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for i in 0..3 {
        assert!(cluster.status(i).await.sealed, "{}", cluster.log_text(i));
    }
    let log = cluster.audit().await;
    assert_eq!(
        entries(&log, "unsealed_from_peer").len(),
        from_peer_before_seal,
        "nothing is handed out after the seal: {log:?}"
    );
    cluster.client(2, "bob").unseal(&[&bob]).await;
    cluster.client(0, "alice").unseal(&[&alice]).await;
    for i in 0..3 {
        cluster
            .wait_for(i, "unsealed again", Duration::from_secs(10), |s| !s.sealed)
            .await;
    }
    let log = cluster.audit().await;
    keyholder_api::verify_chain(&log).expect("the nodes' audit chain verifies");

    // No share or key in any node's log or in the audit log.
    let mut secrets_of = encodings;
    for (who, line) in [("alice", &alice), ("bob", &bob)] {
        for encoding in secrets::encodings(&secrets::share_data(line)) {
            secrets_of.push((format!("{who}'s share"), encoding));
        }
    }
    let mut places: Vec<(String, Vec<u8>)> = (0..3)
        .map(|i| {
            (
                format!("{}'s log", cluster.nodes[i].name),
                cluster.log_text(i).into_bytes(),
            )
        })
        .collect();
    places.push((
        "the audit log".to_owned(),
        serde_json::to_vec(&log.iter().map(|e| &e.detail).collect::<Vec<_>>()).unwrap(),
    ));
    secrets::assert_absent(&places, &secrets_of);

    for daemon in &mut daemons {
        assert!(daemon.stop());
    }
    schema.drop_it().await;
}

/// A hostile peer: it holds kh-b's address and the cluster's server
/// certificate (a node whose host was taken over), and answers every
/// keyring request with keys of its own, age-encrypted to the requester's
/// recipient as a real node would. Counts the requests it answered.
async fn serve_wrong_keys(
    listener: tokio::net::TcpListener,
    server: keyholder_tests::pki::ClientFiles,
    keyring: String,
    answered: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use rustls_pki_types::pem::PemObject as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let chain: Vec<rustls_pki_types::CertificateDer<'static>> =
        rustls_pki_types::CertificateDer::pem_file_iter(&server.cert)
            .unwrap()
            .map(Result::unwrap)
            .collect();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(&server.key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    loop {
        let (tcp, _) = listener.accept().await.unwrap();
        let Ok(mut tls) = acceptor.accept(tcp).await else {
            continue;
        };
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        let body = loop {
            let n = tls.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break None;
            }
            request.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&request).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                if body.len() >= length {
                    break Some(body.to_owned());
                }
            }
        };
        let Some(body) = body else { continue };
        let request: keyholder_api::PeerKeyringRequest = serde_json::from_str(&body).unwrap();
        let recipient: age::x25519::Recipient = request.recipient.parse().unwrap();
        let wrong = crypto_core::Key::generate();
        let handover = serde_json::json!({
            "keyring": keyring,
            "write_version": 1,
            "keys": [{"version": 1, "key": wrong.expose_base64_for_handover().as_str()}],
        })
        .to_string();
        let answer = serde_json::json!({
            "node": "kh-b",
            "generation": 0,
            "age_armored": age::encrypt_and_armor(&recipient, handover.as_bytes()).unwrap(),
        })
        .to_string();
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n{}: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
            keyholder_api::API_VERSION_HEADER,
            keyholder_api::API_VERSION,
            answer.len()
        );
        let _ = tls.write_all(response.as_bytes()).await;
        let _ = tls.shutdown().await;
        answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test]
async fn keys_from_a_peer_that_fail_their_proof_are_dropped_and_the_node_stays_sealed() {
    let Some(url) = pg::url() else { return };
    let schema = Schema::new(&url).await;
    let cluster = ClusterEnv::new(
        2,
        "2s",
        EnvOptions {
            state_store: Some(schema.state_store()),
            ..EnvOptions::default()
        },
        "",
    );
    let listener = tokio::net::TcpListener::bind(cluster.nodes[1].addr)
        .await
        .unwrap();
    let mut node = cluster.start(0).await;
    let keyring = cluster.status(0).await.keyring.to_string();
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let server = cluster.env.pki.server.clone();
    let hostile = tokio::spawn({
        let answered = std::sync::Arc::clone(&answered);
        serve_wrong_keys(listener, server, keyring, answered)
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    let refused = loop {
        let log = cluster.audit().await;
        if let Some(entry) = entries(&log, "unseal_from_peer_refused").first() {
            break detail(entry);
        }
        assert!(
            Instant::now() < deadline,
            "kh-a never refused the wrong keys:\n{}",
            cluster.log_text(0)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(refused["node"], "kh-a");
    assert_eq!(refused["peer"], "kh-b");
    let failures = refused["failures"].as_array().unwrap();
    assert!(
        failures.iter().any(|f| f.as_str().unwrap().contains("v1")),
        "{refused}"
    );
    assert!(answered.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    let status = cluster.status(0).await;
    assert!(status.sealed, "the wrong keys were dropped: {status:?}");
    let log = cluster.audit().await;
    assert!(entries(&log, "unsealed").is_empty(), "{log:?}");
    assert!(entries(&log, "unsealed_from_peer").is_empty(), "{log:?}");
    assert!(
        cluster
            .log_text(0)
            .contains("a key from a peer failed verification; it was dropped"),
        "{}",
        cluster.log_text(0)
    );
    hostile.abort();
    assert!(node.stop());
    schema.drop_it().await;
}
