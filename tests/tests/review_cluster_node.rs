//! A node whose config names it after another node must not run: two real
//! nodes on the PostgreSQL of `KEYHOLDER_TEST_PG` (skipped, saying so, when
//! it is not set). kh-b's config was copied from kh-a's and keeps
//! `node = "kh-a"` (its client certificate is kh-b's own). The lease and its
//! fence know a node by that name alone, so such a node renews kh-a's lease
//! as its own, at kh-a's epoch, and both lead: both take rotation commands
//! and both pass the fence of every leader-only write. keyholderd refuses
//! the config instead (exit 64, `keyholderd check-config` likewise), naming
//! `cluster.client_cert`: the certificate is not cluster.node's.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::os::unix::fs::PermissionsExt as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use keyholder_tests::EnvOptions;
use keyholder_tests::client::Client;
use keyholder_tests::cluster::ClusterEnv;
use keyholder_tests::daemon::{OPERATOR, free_addr, keyholderd};
use keyholder_tests::pg::{self, Schema};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

/// The problem keyholderd names for kh-b's config.
const PROBLEM: &str = "cluster.client_cert: the certificate's common name (CN) is \"kh-b\", the cert_identity of \"kh-b\", but cluster.node is \"kh-a\" (cert_identity \"kh-a\"): the peers would take this node for kh-b, and a node named after another one holds the lease beside it; set cluster.node to the name of the node this certificate is for, or point client_cert at kh-a's certificate";

/// Whether `client`'s node takes a leader-only request (not 421
/// `not_leader`).
async fn leads(client: &Client) -> bool {
    let answer = client.post("/v1/rotation/pause", &json!({})).await;
    answer.status != 421
}

#[tokio::test]
async fn a_node_named_after_another_one_is_refused_instead_of_leading_beside_it() {
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
    let b_config = &cluster.nodes[1].config;
    let text = std::fs::read_to_string(b_config).unwrap();
    assert_eq!(text.matches("\nnode = \"kh-b\"\n").count(), 1, "{text}");
    std::fs::write(
        b_config,
        text.replace("\nnode = \"kh-b\"\n", "\nnode = \"kh-a\"\n"),
    )
    .unwrap();

    let env = &cluster.env;
    let lines = [env.share_line("alice", 1), env.share_line("bob", 1)];
    let _a = cluster.start(0).await;
    for (name, line) in [("alice", &lines[0]), ("bob", &lines[1])] {
        let answer = cluster.client(0, name).unseal(&[line]).await;
        assert_eq!(answer.status, 200, "{name}: {}", answer.body);
    }
    cluster
        .wait_for(0, "leads", WAIT, |s| {
            !s.sealed && s.cluster.as_ref().and_then(|c| c.leader.as_deref()) == Some("kh-a")
        })
        .await;

    let log = std::fs::File::create(&cluster.nodes[1].log).unwrap();
    let mut b = Command::new(keyholderd())
        .arg("run")
        .arg("--config")
        .arg(b_config)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    let exit = loop {
        if let Some(status) = b.try_wait().unwrap() {
            break Some(status);
        }
        if cluster
            .client(1, OPERATOR)
            .send(reqwest::Method::GET, "/v1/health", None)
            .await
            .is_ok()
        {
            break None;
        }
        assert!(
            Instant::now() < deadline,
            "kh-b neither answered nor exited"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let Some(exit) = exit else {
        // It runs: unsealed by the keyholders (it refuses kh-a's relays,
        // taking kh-a for itself), it renews kh-a's lease as its own.
        for (name, line) in [("alice", &lines[0]), ("bob", &lines[1])] {
            let answer = cluster.client(1, name).unseal(&[line]).await;
            assert_eq!(answer.status, 200, "{name} at kh-b: {}", answer.body);
        }
        let deadline = Instant::now() + WAIT;
        let mut both = false;
        while Instant::now() < deadline && !both {
            both = leads(&cluster.client(0, OPERATOR)).await
                && leads(&cluster.client(1, OPERATOR)).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(b.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = b.wait();
        panic!(
            "kh-b started as kh-a; both nodes took leader-only requests at once: {both}\n{}",
            cluster.log_text(1)
        );
    };
    assert_eq!(exit.code(), Some(64), "{}", cluster.log_text(1));
    let logged = cluster.log_text(1);
    assert!(logged.contains(PROBLEM), "{logged}");

    let checked = Command::new(keyholderd())
        .arg("check-config")
        .arg("--config")
        .arg(b_config)
        .output()
        .unwrap();
    assert_eq!(checked.status.code(), Some(64));
    let said = String::from_utf8_lossy(&checked.stderr);
    assert!(said.contains(PROBLEM), "{said}");

    // kh-a was never disturbed.
    assert!(leads(&cluster.client(0, OPERATOR)).await);
    schema.drop_it().await;
}

/// A second keyholderd running one node's config (a replacement started
/// before the old process is gone, two replicas of one node's deployment)
/// must not lead while the first holds the lease. The lease knew its holder
/// by node name only: the second process's first round renewed the first
/// one's unexpired lease as its own, at the same epoch, and both led.
#[tokio::test]
async fn a_second_process_of_one_node_never_leads_beside_the_first() {
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
    let env = &cluster.env;
    let _a = cluster.start(0).await;
    let _b = cluster.start(1).await;
    for name in ["alice", "bob"] {
        let answer = cluster
            .client(0, name)
            .unseal(&[&env.share_line(name, 1)])
            .await;
        assert_eq!(answer.status, 200, "{name}: {}", answer.body);
    }
    for i in [0, 1] {
        cluster
            .wait_for(i, "sees kh-a lead", WAIT, |s| {
                !s.sealed && s.cluster.as_ref().and_then(|c| c.leader.as_deref()) == Some("kh-a")
            })
            .await;
    }
    let epoch = cluster.status(0).await.cluster.unwrap().epoch;

    // kh-a's config again, on another address of the same host.
    let text = std::fs::read_to_string(&cluster.nodes[0].config).unwrap();
    let listen = format!("addr = \"{}\"", cluster.nodes[0].addr);
    let addr = free_addr();
    let config = cluster.nodes[0].config.with_file_name("kh-a-again.toml");
    std::fs::write(
        &config,
        text.replacen(&listen, &format!("addr = \"{addr}\""), 1),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    let log = config.with_extension("log");
    let _again = env.start_node(&config, addr, &log).await;
    let again = Client::new(addr, &env.pki.ca_pem, Some(&env.pki.client(OPERATOR)));
    let deadline = Instant::now() + WAIT;
    loop {
        let status: keyholder_api::Status = again.get("/v1/status").await.json();
        if !status.sealed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the second kh-a never took the keyring from kh-b"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Several lease rounds: the first process keeps the lease, the second
    // follows it.
    let watch_until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < watch_until {
        assert!(
            !leads(&again).await,
            "a second kh-a process leads beside the first:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(leads(&cluster.client(0, OPERATOR)).await);
    let cluster_status = cluster.status(0).await.cluster.unwrap();
    assert_eq!(
        (cluster_status.leader.as_deref(), cluster_status.epoch),
        (Some("kh-a"), epoch)
    );
    let answer = again.post("/v1/rotation/pause", &json!({})).await;
    assert_eq!(answer.status, 421, "{}", answer.body);
    assert_eq!(
        answer.error().leader.as_deref(),
        Some(cluster.nodes[0].addr.to_string().as_str())
    );
    schema.drop_it().await;
}

/// Keys a ceremony unsealed before a cluster seal the node did not hear of
/// are never handed to a peer as keys of after the seal. kh-a is unsealed
/// by alice and bob; then the cluster is sealed by kh-b, whose notice never
/// reaches kh-a (kh-b is not running here: the test writes the next
/// generation into the state store as kh-b's seal does). kh-a used to take
/// the generation it read at its next check for the one its keys belong
/// to: it stayed unsealed and handed them, stamped with the new
/// generation, to a node the seal had sealed (the test asks as kh-b), which
/// would take them and be unsealed again without a keyholder. kh-a seals
/// itself instead, and refuses the keyring.
#[tokio::test]
async fn keys_unsealed_before_a_missed_seal_are_never_handed_to_a_peer() {
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
    let env = &cluster.env;
    let _a = cluster.start(0).await;
    // kh-a has read the generation of now (0) before the ceremony.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for name in ["alice", "bob"] {
        let answer = cluster
            .client(0, name)
            .unseal(&[&env.share_line(name, 1)])
            .await;
        assert_eq!(answer.status, 200, "{name}: {}", answer.body);
    }
    // kh-b's seal, at once: kh-a hears nothing of it.
    schema
        .client
        .batch_execute(&format!(
            "UPDATE \"{}\".cluster_seal SET generation = generation + 1 WHERE id = 1",
            schema.name
        ))
        .await
        .unwrap();
    // Two of kh-a's checks of the generation.
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let recipient = age::x25519::Identity::generate().to_public().to_string();
    let answer = cluster
        .client(0, "kh-b")
        .post("/v1/cluster/keyring", &json!({ "recipient": recipient }))
        .await;
    if answer.status == 200 {
        let handed: keyholder_api::PeerKeyring = answer.json();
        panic!(
            "kh-a handed its keys from before the seal to kh-b as keys of generation {}\n{}",
            handed.generation,
            cluster.log_text(0)
        );
    }
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert_eq!(answer.error().code, "sealed");
    let status = cluster.status(0).await;
    assert!(status.sealed, "{status:?}");
    let entries = cluster.audit().await;
    assert!(
        entries
            .iter()
            .any(|e| e.action == "sealed_with_cluster" && e.detail.contains("\"node\":\"kh-a\"")),
        "{entries:?}"
    );
    schema.drop_it().await;
}

/// Two nodes listed at one address: kh-a's config gives kh-c kh-b's
/// address (a line copied and not edited). Everything kh-a tells kh-c then
/// reaches kh-b: the old kh-a ran, and alice's withdrawal on kh-a never
/// reached kh-c, which kept her share and unsealed with bob's, although she
/// had taken hers back. keyholderd refuses the config instead, naming the
/// address and both nodes.
#[tokio::test]
async fn two_nodes_listed_at_one_address_are_refused() {
    let Some(url) = pg::url() else { return };
    let schema = Schema::new(&url).await;
    let cluster = ClusterEnv::new(
        3,
        "2s",
        EnvOptions {
            state_store: Some(schema.state_store()),
            ..EnvOptions::default()
        },
        "",
    );
    let (b_addr, c_addr) = (cluster.nodes[1].addr, cluster.nodes[2].addr);
    let a_config = &cluster.nodes[0].config;
    let text = std::fs::read_to_string(a_config).unwrap();
    let listed = format!("addr = \"{c_addr}\"");
    assert_eq!(text.matches(&listed).count(), 1, "{text}");
    std::fs::write(
        a_config,
        text.replace(&listed, &format!("addr = \"{b_addr}\"")),
    )
    .unwrap();

    let checked = Command::new(keyholderd())
        .arg("check-config")
        .arg("--config")
        .arg(a_config)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&checked.stderr).into_owned();
    if checked.status.success() {
        // What the config does: alice's share, submitted on kh-b, reaches
        // kh-c; her withdrawal on kh-a does not.
        let env = &cluster.env;
        let _nodes = [
            cluster.start(0).await,
            cluster.start(1).await,
            cluster.start(2).await,
        ];
        let answer = cluster
            .client(1, "alice")
            .unseal(&[&env.share_line("alice", 1)])
            .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        cluster
            .wait_for(2, "got alice's share", WAIT, |s| {
                s.unseal_progress.iter().any(|p| p.from == ["alice"])
            })
            .await;
        let withdrawn = cluster
            .client(0, "alice")
            .send(reqwest::Method::DELETE, "/v1/unseal", None)
            .await
            .unwrap();
        assert_eq!(withdrawn.status, 200, "{}", withdrawn.body);
        let answer = cluster
            .client(2, "bob")
            .unseal(&[&env.share_line("bob", 1)])
            .await;
        let response: keyholder_api::UnsealResponse = answer.json();
        panic!(
            "check-config passed a config listing kh-b and kh-c at one address; alice withdrew her share on kh-a, then bob's share on kh-c left it {}",
            if response.sealed {
                "sealed"
            } else {
                "UNSEALED with alice's withdrawn share"
            }
        );
    }
    assert_eq!(checked.status.code(), Some(64), "{said}");
    let problem = format!(
        "cluster.nodes[2].addr: \"{b_addr}\" is also the address of kh-b (cluster.nodes[1]); each node is reached at its own address: what this node tells kh-c (relayed shares, withdrawals, seal notices) would reach kh-b instead"
    );
    assert!(said.contains(&problem), "{said}");
    schema.drop_it().await;
}
