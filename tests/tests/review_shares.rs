//! A new version's shares sent back with `share verify` while the daemon is
//! sealed (it restarted after `prepare`): the daemon counts them, but a
//! sealed daemon rebuilds nothing, so it keeps none of them in memory; the
//! keyholders verify again after the unseal, which rebuilds the new key.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use keyholder_tests::daemon::OPERATOR;
use keyholder_tests::rotation::v;
use keyholder_tests::secrets::{assert_memory_clean, can_read_memory, encodings, share_data};
use keyholder_tests::{Env, EnvOptions};
use serde_json::json;

#[tokio::test]
async fn new_shares_verified_while_sealed_do_not_stay_in_the_sealed_daemons_memory() {
    if !can_read_memory() {
        println!("skipping: reading another process's memory needs root");
        return;
    }
    let env = Env::new(EnvOptions::default());
    let mut daemon = env.start().await;
    let v1 = [env.share_line("alice", 1), env.share_line("bob", 1)];
    env.unseal_with(&[("alice", vec![v1[0].clone()]), ("bob", vec![v1[1].clone()])])
        .await;
    env.operate("/v1/rotation/prepare", json!({})).await;
    let alice2 = env.fetch_new_share("alice", 2).await;
    let bob2 = env.fetch_new_share("bob", 2).await;

    assert!(daemon.stop());
    let daemon = env.start().await;
    let pid = daemon.pid().unwrap();
    for (name, line) in [("alice", &alice2), ("bob", &bob2)] {
        let answer = env.verify_new_share(name, line).await;
        assert!(answer.sealed, "{name}: {answer:?}");
    }
    let status = env.status().await;
    assert_eq!(
        status.rotation.as_ref().map(|r| r.state),
        Some(keyholder_api::RotationState::SharesVerified),
        "verifications while sealed count: {status:?}"
    );
    // Two v2 shares in a sealed daemon's memory are the v2 key.
    let secrets: Vec<(String, Vec<u8>)> = [("alice", &alice2), ("bob", &bob2)]
        .into_iter()
        .flat_map(|(name, line)| {
            encodings(&share_data(line))
                .into_iter()
                .map(move |bytes| (format!("{name}'s v2 share"), bytes))
        })
        .collect();
    assert_memory_clean(pid, &secrets).await;

    // After the unseal the keyholders verify again, as the refusal says,
    // and that rebuilds v2.
    env.unseal_with(&[("alice", vec![v1[0].clone()]), ("bob", vec![v1[1].clone()])])
        .await;
    let refused = env
        .post_as(OPERATOR, "/v1/rotation/activate", json!({}))
        .await;
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert_eq!(
        refused.error().error,
        "v2's key is not held (the daemon restarted since prepare); its keyholders must run `keyholder share verify` again"
    );
    env.verify_new_share("alice", &alice2).await;
    env.verify_new_share("bob", &bob2).await;
    env.operate("/v1/rotation/activate", json!({})).await;
    let keyring = env.database_keyring().await;
    assert_eq!(
        keyring.versions().collect::<Vec<_>>(),
        [v(1), v(2)],
        "the rebuilt v2 is served"
    );
}
