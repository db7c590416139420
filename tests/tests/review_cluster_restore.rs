//! A cluster's PostgreSQL state store restored from a backup while the
//! nodes run: the cluster seal generation in it goes back, and a seal of
//! the cluster must still seal every node (KEYHOLDER_TEST_PG; skipped,
//! saying so, when it is not set).
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::time::Duration;

use keyholder_api::UnsealResponse;
use keyholder_tests::EnvOptions;
use keyholder_tests::cluster::ClusterEnv;
use keyholder_tests::daemon::OPERATOR;
use keyholder_tests::pg::{self, Schema};

/// Generous: debug builds on two shared cores.
const WAIT: Duration = Duration::from_secs(30);

/// alice submits to kh-a, bob to kh-b: one ceremony unseals both nodes.
async fn ceremony(cluster: &ClusterEnv) {
    let alice = cluster.env.share_line("alice", 1);
    let bob = cluster.env.share_line("bob", 1);
    let answer: UnsealResponse = cluster.client(0, "alice").unseal(&[&alice]).await.json();
    assert!(answer.sealed, "{answer:?}");
    cluster
        .wait_for(1, "alice's share relayed", WAIT, |s| {
            s.unseal_progress.iter().any(|p| p.from == ["alice"])
        })
        .await;
    let answer = cluster.client(1, "bob").unseal(&[&bob]).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    for i in 0..2 {
        cluster.wait_for(i, "unsealed", WAIT, |s| !s.sealed).await;
    }
}

async fn seal_the_cluster(cluster: &ClusterEnv) {
    let sealed = cluster
        .client(0, OPERATOR)
        .post("/v1/seal", &serde_json::json!({}))
        .await;
    assert_eq!(sealed.status, 200, "{}", sealed.body);
}

#[tokio::test]
async fn a_seal_after_the_store_was_restored_to_an_older_seal_generation_seals_every_node() {
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
    let _daemons = [cluster.start(0).await, cluster.start(1).await];
    // The nightly backup of the store is taken here, at generation 0.
    ceremony(&cluster).await;
    seal_the_cluster(&cluster).await;
    for i in 0..2 {
        cluster.wait_for(i, "sealed", WAIT, |s| s.sealed).await;
    }
    ceremony(&cluster).await;
    // Each node's check (every second) stamps its keys with generation 1.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // The DBA restores the store from last night's backup; the nodes run on.
    let restored = schema
        .client
        .execute(
            &format!(
                "UPDATE \"{}\".cluster_seal SET generation = 0 WHERE id = 1",
                schema.name
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(restored, 1);

    seal_the_cluster(&cluster).await;
    // The old store gave this seal generation 1, the one kh-b's keys were
    // already stamped with: kh-b took the notice for an old seal and kept
    // handing out keys.
    cluster
        .wait_for(1, "kh-b sealed by the cluster seal", WAIT, |s| s.sealed)
        .await;
    let fetch = cluster
        .client(1, keyholder_tests::daemon::DATABASE)
        .get("/v1/keyring")
        .await;
    assert_eq!(fetch.status, 503, "{}", fetch.body);
    schema.drop_it().await;
}
