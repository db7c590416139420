//! The metrics follow the keyring the daemon serves: `keyholder_versions_loaded`
//! counts the versions a database fetching now gets, also after a rotation's
//! activate (v10 joins), not only at unseal.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use crypto_core::KeyVersion;
use keyholder_api::{RotationState, RotationStatus};
use keyholder_tests::client::tls_config;
use keyholder_tests::daemon::{DATABASE, free_addr};
use keyholder_tests::records::Table;
use keyholder_tests::rotation::v;
use keyholder_tests::{Env, EnvOptions};
use serde_json::json;

async fn scrape(addr: std::net::SocketAddr, env: &Env) -> String {
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls_config(&env.pki.ca_pem, None))
        .build()
        .unwrap()
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of the unlabelled metric `name`.
fn value(text: &str, name: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{name} missing from:\n{text}"))
        .to_owned()
}

/// The versions a database fetching now gets.
async fn served(env: &Env) -> Vec<u32> {
    env.database_keyring()
        .await
        .versions()
        .map(KeyVersion::number)
        .collect()
}

#[tokio::test]
async fn versions_loaded_counts_v10_once_activate_adds_it_to_the_keyring() {
    let data = tempfile::tempdir().unwrap();
    let table = Table::create(&data.path().join("app.db"));
    let metrics_addr = free_addr();
    let env = Env::new(EnvOptions {
        targets: vec![table.spec.clone()],
        first_version: Some(9),
        consumers: vec![DATABASE.to_owned()],
        listen_toml: format!("metrics_addr = \"{metrics_addr}\"\n"),
        extra_toml: "\n[rotation]\nmin_verified = 2\n".to_owned(),
        ..EnvOptions::default()
    });
    let _daemon = env.start().await;
    let lines = [env.share_line("alice", 9), env.share_line("bob", 9)];
    let v9 = env.rebuild_key(9, &[&lines[0], &lines[1]]).await;
    table.seed(&v9, v(9), 20);
    let unsealed = env
        .unseal_with(&[
            ("alice", vec![lines[0].clone()]),
            ("bob", vec![lines[1].clone()]),
        ])
        .await;
    assert!(!unsealed.sealed, "{unsealed:?}");
    assert_eq!(served(&env).await, [9]);
    let text = scrape(metrics_addr, &env).await;
    assert_eq!(value(&text, "keyholder_versions_loaded"), "1");

    env.operate("/v1/rotation/prepare", json!({})).await;
    for name in ["alice", "bob"] {
        let line = env.fetch_new_share(name, 10).await;
        env.verify_new_share(name, &line).await;
    }
    let active: RotationStatus = env.operate("/v1/rotation/activate", json!({})).await.json();
    assert_eq!(active.state, RotationState::DualRead);
    assert_eq!(served(&env).await, [9, 10]);
    let text = scrape(metrics_addr, &env).await;
    assert_eq!(value(&text, "keyholder_versions_loaded"), "2");
}
