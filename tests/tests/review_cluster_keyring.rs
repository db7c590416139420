//! A follower that does not hold a version the stored rotation needs never
//! hands a database the keyring without it. Two real nodes on the
//! PostgreSQL of `KEYHOLDER_TEST_PG` (skipped, saying so, when it is not
//! set); kh-b's config names a dead address for kh-a, so kh-b cannot take
//! v10's key from its peer. After the leader kh-a switched the writes to v10
//! (records move to v10 from then on), kh-b must refuse the keyring as a
//! sealed node does (503 `sealed`), not serve v9 alone writing v9; and the
//! real `keyholder hook`, given kh-b first, takes the whole keyring from
//! kh-a.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::time::Duration;

use crypto_core::KeyVersion;
use keyholder_api::{RotationState, RotationStatus};
use keyholder_tests::EnvOptions;
use keyholder_tests::cluster::ClusterEnv;
use keyholder_tests::daemon::{DATABASE, free_addr};
use keyholder_tests::pg::{self, Schema};
use keyholder_tests::records::Table;
use keyholder_tests::rotation::v;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_follower_without_v10_refuses_the_keyring_after_the_switch_and_the_hook_takes_it_from_the_leader()
 {
    let Some(url) = pg::url() else { return };
    let schema = Schema::new(&url).await;
    let data = tempfile::tempdir().unwrap();
    let table = Table::create(&data.path().join("app.db"));
    let cluster = ClusterEnv::new(
        2,
        "2s",
        EnvOptions {
            state_store: Some(schema.state_store()),
            targets: vec![table.spec.clone()],
            first_version: Some(9),
            consumers: vec![DATABASE.to_owned()],
            extra_toml: "\n[rotation]\nmin_verified = 2\n".to_owned(),
            ..EnvOptions::default()
        },
        "",
    );
    // kh-b's way to kh-a leads nowhere.
    let b_config = &cluster.nodes[1].config;
    let text = std::fs::read_to_string(b_config).unwrap();
    let listed = format!("addr = \"{}\"", cluster.nodes[0].addr);
    assert_eq!(text.matches(&listed).count(), 1, "{text}");
    std::fs::write(
        b_config,
        text.replace(&listed, &format!("addr = \"{}\"", free_addr())),
    )
    .unwrap();

    let env = &cluster.env;
    let lines = [env.share_line("alice", 9), env.share_line("bob", 9)];
    let _a = cluster.start(0).await;
    let v9 = env.rebuild_key(9, &[&lines[0], &lines[1]]).await;
    table.seed(&v9, v(9), 20);
    // kh-a unseals first and leads; then kh-b starts and each keyholder
    // submits there too (kh-b can take nothing from kh-a).
    let mut nodes = Vec::new();
    for i in [0, 1] {
        if i == 1 {
            nodes.push(cluster.start(1).await);
        }
        for (name, line) in [("alice", &lines[0]), ("bob", &lines[1])] {
            let answer = cluster.client(i, name).unseal(&[line]).await;
            assert_eq!(answer.status, 200, "{name} at node {i}: {}", answer.body);
        }
        cluster.wait_for(i, "unsealed", WAIT, |s| !s.sealed).await;
        cluster
            .wait_for(i, "sees kh-a lead", WAIT, |s| {
                s.cluster.as_ref().and_then(|c| c.leader.as_deref()) == Some("kh-a")
            })
            .await;
    }

    // The rotation, at the leader kh-a, up to the switch.
    env.operate("/v1/rotation/prepare", json!({})).await;
    for name in ["alice", "bob"] {
        let line = env.fetch_new_share(name, 10).await;
        env.verify_new_share(name, &line).await;
    }
    let active: RotationStatus = env.operate("/v1/rotation/activate", json!({})).await.json();
    assert_eq!(active.state, RotationState::DualRead);
    let ring = env.database_keyring().await;
    assert_eq!(
        ring.versions().map(KeyVersion::number).collect::<Vec<_>>(),
        [9, 10]
    );
    let switched: RotationStatus = env.operate("/v1/rotation/switch", json!({})).await.json();
    assert_ne!(switched.state, RotationState::DualRead, "{switched:?}");

    // kh-b holds v9 alone: it must not hand that out as the keyring.
    let at_b = cluster.client(1, DATABASE).get("/v1/keyring").await;
    if at_b.status == 200 {
        let ring = crypto_core::Keyring::from_handover_json(&at_b.body).unwrap();
        panic!(
            "kh-b handed out versions {:?} writing {} after the switch to v10",
            ring.versions().map(KeyVersion::number).collect::<Vec<_>>(),
            ring.write_version()
        );
    }
    assert_eq!(at_b.status, 503, "{}", at_b.body);
    assert_eq!(at_b.error().code, "sealed", "{}", at_b.body);

    // The hook asks kh-b first and takes the whole keyring from kh-a.
    let out = cluster
        .keyholder_cli(DATABASE)
        .env(
            "KEYHOLDER_ADDR",
            format!("{},{}", cluster.nodes[1].addr, cluster.nodes[0].addr),
        )
        .args(["hook", "--wait", "30s", "--format", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ring =
        crypto_core::Keyring::from_handover_json(String::from_utf8_lossy(&out.stdout).trim())
            .unwrap();
    assert_eq!(
        (
            ring.versions().map(KeyVersion::number).collect::<Vec<_>>(),
            ring.write_version().number()
        ),
        (vec![9, 10], 10)
    );
}

/// A fetch whose audit entry cannot be written is not an acknowledgement:
/// db1's fetch of the keyring holding v10 fails (a trigger refuses its
/// `keyring_fetched` entry), so db1 never got v10, and the leader, which
/// takes the fetches other nodes served from the state store, must not
/// count db1 as having it (the switch would then move records to v10 under
/// a db1 without it). db2's fetch, served by the follower kh-b, shows the
/// leader read the stored fetches since.
#[tokio::test]
async fn a_keyring_fetch_that_could_not_be_audited_is_not_taken_as_an_acknowledgement() {
    let Some(url) = pg::url() else { return };
    let schema = Schema::new(&url).await;
    let data = tempfile::tempdir().unwrap();
    let table = Table::create(&data.path().join("app.db"));
    let cluster = ClusterEnv::new(
        2,
        "2s",
        EnvOptions {
            state_store: Some(schema.state_store()),
            targets: vec![table.spec.clone()],
            first_version: Some(9),
            consumers: vec![DATABASE.to_owned(), "db2".to_owned()],
            extra_toml: "\n[[principals]]\nname = \"db2\"\nroles = [\"database\"]\ncert_identity = \"db2\"\n\n[rotation]\nmin_verified = 2\n".to_owned(),
            ..EnvOptions::default()
        },
        "",
    );
    let env = &cluster.env;
    env.pki.client("db2");
    let lines = [env.share_line("alice", 9), env.share_line("bob", 9)];
    let _a = cluster.start(0).await;
    let v9 = env.rebuild_key(9, &[&lines[0], &lines[1]]).await;
    table.seed(&v9, v(9), 20);
    for (name, line) in [("alice", &lines[0]), ("bob", &lines[1])] {
        let answer = cluster.client(0, name).unseal(&[line]).await;
        assert_eq!(answer.status, 200, "{name}: {}", answer.body);
    }
    cluster
        .wait_for(0, "leads", WAIT, |s| {
            !s.sealed && s.cluster.as_ref().and_then(|c| c.leader.as_deref()) == Some("kh-a")
        })
        .await;
    let _b = cluster.start(1).await;
    cluster.wait_for(1, "unsealed", WAIT, |s| !s.sealed).await;

    env.operate("/v1/rotation/prepare", json!({})).await;
    for name in ["alice", "bob"] {
        let line = env.fetch_new_share(name, 10).await;
        env.verify_new_share(name, &line).await;
    }
    let active: RotationStatus = env.operate("/v1/rotation/activate", json!({})).await.json();
    assert_eq!(active.state, RotationState::DualRead);

    schema
        .client
        .batch_execute(&format!(
            "CREATE FUNCTION \"{s}\".review_refuse() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION 'could not extend file (simulated)'; END $$; \
             CREATE TRIGGER review_refuse_db1_fetch BEFORE INSERT ON \"{s}\".audit FOR EACH ROW \
             WHEN (NEW.actor = 'db1' AND NEW.action = 'keyring_fetched') \
             EXECUTE FUNCTION \"{s}\".review_refuse();",
            s = schema.name
        ))
        .await
        .unwrap();
    let db1 = cluster.client(0, DATABASE).get("/v1/keyring").await;
    assert_ne!(db1.status, 200, "{}", db1.body);

    // db2 takes v10 from the follower (once it holds v10).
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let db2 = cluster.client(1, "db2").get("/v1/keyring").await;
        if db2.status == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{}\n{}",
            db2.body,
            cluster.log_text(1)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = cluster
        .wait_for(0, "counted db2's fetch from kh-b", WAIT, |s| {
            s.rotation
                .as_ref()
                .is_some_and(|r| r.acknowledged_by.iter().any(|c| c == "db2"))
        })
        .await;
    let rotation = status.rotation.unwrap();
    assert_eq!(
        (
            rotation.acknowledged_by.as_slice(),
            rotation.waiting_for.as_slice()
        ),
        (&["db2".to_owned()][..], &[DATABASE.to_owned()][..]),
        "db1 never got v10"
    );
    let switch = env
        .post_as(
            keyholder_tests::daemon::OPERATOR,
            "/v1/rotation/switch",
            json!({}),
        )
        .await;
    assert_ne!(switch.status, 200, "{}", switch.body);
}
