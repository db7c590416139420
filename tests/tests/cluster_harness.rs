//! The cluster harness itself: three nodes' configs pass `check-config`
//! (the `[cluster]` table, the node principals) and each node starts and
//! answers on its own address, on the PostgreSQL server named by
//! `KEYHOLDER_TEST_PG` (skipped, saying so, when it is not set).

use keyholder_tests::daemon::OPERATOR;
use keyholder_tests::pg::{self, Schema};
use keyholder_tests::{ClusterEnv, EnvOptions};

#[tokio::test]
async fn three_node_configs_check_and_every_node_answers_on_its_own_address() {
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
    for node in &cluster.nodes {
        let out = std::process::Command::new(keyholder_tests::daemon::keyholderd())
            .args(["check-config", "--config"])
            .arg(&node.config)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            node.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut daemons = Vec::new();
    for (i, node) in cluster.nodes.iter().enumerate() {
        daemons.push(cluster.start(i).await);
        let health = cluster
            .client(i, OPERATOR)
            .send(reqwest::Method::GET, "/v1/health", None)
            .await
            .unwrap();
        assert_eq!(health.status, 200, "{} ({})", health.body, node.name);
    }
    for mut daemon in daemons {
        assert!(daemon.stop());
    }
    schema.drop_it().await;
}
