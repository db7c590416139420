//! A node's client certificate renewed in place, over a real two-node
//! cluster: kh-a calls kh-b with a certificate that kh-b's new CRL revokes;
//! kh-a's certificate file is renewed (same path, a new serial) and kh-a
//! reloaded, kh-b reloaded with the CRL. alice's share submitted to kh-a
//! then reaches kh-b: the reload made kh-a present the renewed certificate.
//! Before, the peers' client read the `[cluster]` files once at start, so
//! kh-a kept presenting the revoked one until a restart (which seals it).
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::time::Duration;

use keyholder_api::UnsealProgress;
use keyholder_tests::EnvOptions;
use keyholder_tests::cluster::ClusterEnv;
use keyholder_tests::daemon::OPERATOR;
use keyholder_tests::pg_instance::PgInstance;
use serde_json::json;

/// Generous: debug builds on two shared cores.
const WAIT: Duration = Duration::from_secs(60);

fn from(progress: &[UnsealProgress]) -> Vec<Vec<String>> {
    progress.iter().map(|p| p.from.clone()).collect()
}

fn edit(path: &std::path::Path, edit: impl FnOnce(String) -> String) {
    let text = std::fs::read_to_string(path).unwrap();
    std::fs::write(path, edit(text)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_certificate_renewed_in_place_is_presented_to_the_peers_after_a_reload() {
    let pg = PgInstance::start();
    let cluster = ClusterEnv::new(
        2,
        "3s",
        EnvOptions {
            state_store: Some(pg.url()),
            ..EnvOptions::default()
        },
        "",
    );
    let env = &cluster.env;
    // kh-a's node certificate is the one the CRL will revoke.
    let current = env.pki.client("kh-a");
    let (old, crl) = env.pki.revoked("kh-a");
    edit(&cluster.nodes[0].config, |text| {
        text.replacen(
            &format!("client_cert = \"{}\"", current.cert.display()),
            &format!("client_cert = \"{}\"", old.cert.display()),
            1,
        )
        .replacen(
            &format!("client_key = \"{}\"", current.key.display()),
            &format!("client_key = \"{}\"", old.key.display()),
            1,
        )
    });
    let _a = cluster.start(0).await;
    let _b = cluster.start(1).await;

    // Renewed in place: a new certificate (another serial) and key under
    // the configured paths, and kh-b revokes the old one.
    std::fs::copy(&current.cert, &old.cert).unwrap();
    std::fs::copy(&current.key, &old.key).unwrap();
    edit(&cluster.nodes[1].config, |text| {
        text.replacen(
            "handshake_timeout = \"3s\"\n",
            &format!("handshake_timeout = \"3s\"\ncrl = \"{}\"\n", crl.display()),
            1,
        )
    });
    for i in [1, 0] {
        let reloaded = cluster
            .client(i, OPERATOR)
            .post("/v1/admin/reload", &json!({}))
            .await;
        assert_eq!(reloaded.status, 200, "{}", reloaded.body);
    }

    let alice = env.share_line("alice", 1);
    let submitted = cluster.client(0, "alice").unseal(&[&alice]).await;
    assert_eq!(submitted.status, 200, "{}", submitted.body);
    cluster
        .wait_for(1, "got alice's relayed share", WAIT, |s| {
            from(&s.unseal_progress) == [vec!["alice".to_owned()]]
        })
        .await;
}
