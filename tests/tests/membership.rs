//! Removing a keyholder (deploy/runbooks/keyholder-membership.md): carol
//! leaves the config, the daemon unseals with the others, and the next
//! version is split without her; her certificate no longer reaches the API.

use keyholder_api::{RotationState, Status};
use keyholder_tests::daemon::OPERATOR;
use keyholder_tests::{Env, EnvOptions};
use serde_json::json;

#[tokio::test]
async fn a_removed_keyholder_gets_no_share_of_the_next_version() {
    let env = Env::new(EnvOptions {
        consumers: vec!["db1".to_owned()],
        ..EnvOptions::default()
    });
    // Carol's `[[principals]]` entry leaves the config.
    let config = std::fs::read_to_string(&env.config).unwrap();
    let start = config
        .find("[[principals]]\nname = \"carol\"")
        .expect("carol is configured");
    let end = config[start + 1..]
        .find("\n[[")
        .map_or(config.len(), |i| start + 1 + i + 1);
    std::fs::write(
        &env.config,
        format!("{}{}", &config[..start], &config[end..]),
    )
    .unwrap();

    let _daemon = env.start().await;
    let carol = env.client("carol").get("/v1/status").await;
    assert_eq!(carol.status, 403, "{}", carol.body);
    let (alice1, bob1) = (env.share_line("alice", 1), env.share_line("bob", 1));
    let done = env
        .unseal_with(&[("alice", vec![alice1]), ("bob", vec![bob1])])
        .await;
    assert!(!done.sealed, "the remaining keyholders unseal v1");

    env.operate("/v1/rotation/prepare", json!({})).await;
    let alice2 = env.fetch_new_share("alice", 2).await;
    let bob2 = env.fetch_new_share("bob", 2).await;
    for line in [&alice2, &bob2] {
        assert!(line.contains(" count=2 "), "split among two: {line}");
    }
    let none = env
        .client(OPERATOR)
        .get("/v1/rotation/share?version=2")
        .await;
    assert_eq!(none.status, 403, "operators get no share: {}", none.body);
    env.verify_new_share("alice", &alice2).await;
    env.verify_new_share("bob", &bob2).await;
    let status: Status = env.status().await;
    assert_eq!(
        status.rotation.map(|r| r.state),
        Some(RotationState::SharesVerified)
    );
}
