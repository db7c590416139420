//! One unseal ceremony across a two-node cluster on a test-owned
//! PostgreSQL state store: a sealed node keeps partial progress while a
//! rotation is stored (its poll of the stored rotation every second does
//! not start the ceremony over), so a second submission on another node is
//! `already_counted`.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::time::{Duration, Instant};

use keyholder_api::{Status, UnsealProgress, UnsealResponse};
use keyholder_tests::EnvOptions;
use keyholder_tests::cluster::ClusterEnv;
use keyholder_tests::daemon::OPERATOR;
use keyholder_tests::pg_instance::PgInstance;

/// Generous: debug builds on two shared cores.
const WAIT: Duration = Duration::from_secs(60);

fn two_nodes(pg: &PgInstance) -> ClusterEnv {
    ClusterEnv::new(
        2,
        "3s",
        EnvOptions {
            state_store: Some(pg.url()),
            ..EnvOptions::default()
        },
        "",
    )
}

async fn status(cluster: &ClusterEnv, i: usize) -> Status {
    let answer = cluster.client(i, OPERATOR).get("/v1/status").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.json()
}

/// Polls node `i`'s status until `done` holds; panics after [`WAIT`] with
/// the status and the node's log.
async fn wait_for(
    cluster: &ClusterEnv,
    i: usize,
    what: &str,
    done: impl Fn(&Status) -> bool,
) -> Status {
    let deadline = Instant::now() + WAIT;
    loop {
        let status = status(cluster, i).await;
        if done(&status) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "{} never {what}: {status:?}\n{}",
            cluster.nodes[i].name,
            cluster.log_text(i)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn from(progress: &[UnsealProgress]) -> Vec<Vec<String>> {
    progress.iter().map(|p| p.from.clone()).collect()
}

/// With a rotation stored, every sealed node re-reads it every second; that
/// keeps the ceremony's progress (`unseal.progress_ttl` is 15 minutes): a
/// few seconds after alice's share on kh-a both nodes still hold it, her
/// share again on kh-b is `already_counted`, and bob's share completes the
/// unseal.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sealed_node_keeps_unseal_progress_while_a_rotation_is_stored() {
    let pg = PgInstance::start();
    let cluster = two_nodes(&pg);
    let env = &cluster.env;
    let _a = cluster.start(0).await;
    let _b = cluster.start(1).await;
    let alice = env.share_line("alice", 1);
    let bob = env.share_line("bob", 1);
    env.unseal_with(&[("alice", vec![alice.clone()]), ("bob", vec![bob.clone()])])
        .await;
    wait_for(&cluster, 1, "unsealed from kh-a", |s| !s.sealed).await;
    let leader = wait_for(&cluster, 0, "saw a leader", |s| {
        s.cluster
            .as_ref()
            .and_then(|c| c.leader.as_deref())
            .is_some()
    })
    .await;
    let leader = match leader.cluster.and_then(|c| c.leader).as_deref() {
        Some("kh-a") => 0,
        _ => 1,
    };
    let prepared = cluster
        .client(leader, OPERATOR)
        .post("/v1/rotation/prepare", &serde_json::json!({}))
        .await;
    assert_eq!(prepared.status, 200, "{}", prepared.body);
    let sealed = cluster
        .client(leader, OPERATOR)
        .post("/v1/seal", &serde_json::json!({}))
        .await;
    assert_eq!(sealed.status, 200, "{}", sealed.body);
    wait_for(&cluster, 0, "sealed", |s| s.sealed).await;
    wait_for(&cluster, 1, "sealed", |s| s.sealed).await;

    let first = cluster.client(0, "alice").unseal(&[&alice]).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let first: UnsealResponse = first.json();
    assert!(first.outcomes[0].accepted, "{first:?}");
    wait_for(&cluster, 1, "got alice's relayed share", |s| {
        from(&s.unseal_progress) == [vec!["alice".to_owned()]]
    })
    .await;
    // Several polls of the stored rotation on each node.
    tokio::time::sleep(Duration::from_secs(4)).await;
    for i in 0..2 {
        assert_eq!(
            from(&status(&cluster, i).await.unseal_progress),
            [vec!["alice".to_owned()]],
            "{} dropped alice's share before progress_ttl\n{}",
            cluster.nodes[i].name,
            cluster.log_text(i)
        );
    }
    let again = cluster.client(1, "alice").unseal(&[&alice]).await;
    assert_eq!(again.status, 200, "{}", again.body);
    let again: UnsealResponse = again.json();
    assert_eq!(
        again.outcomes[0].refusal.as_deref(),
        Some("already_counted"),
        "{again:?}"
    );
    let done = cluster.client(1, "bob").unseal(&[&bob]).await;
    assert_eq!(done.status, 200, "{}", done.body);
    let done: UnsealResponse = done.json();
    assert!(!done.sealed, "{done:?}");
    wait_for(&cluster, 0, "unsealed", |s| !s.sealed).await;
}
