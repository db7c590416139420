//! One unseal ceremony across a two-node cluster on a test-owned
//! PostgreSQL state store: a share a keyholder withdraws (`DELETE
//! /v1/unseal`) on one node is withdrawn on every node it was relayed to,
//! so it never unseals a peer; and a sealed node keeps partial progress
//! while a rotation is stored (its poll of the stored rotation every second
//! does not start the ceremony over), so a second submission on another
//! node is `already_counted`.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::time::Duration;

use keyholder_api::{AuditEntry, UnsealProgress, UnsealResponse};
use keyholder_tests::EnvOptions;
use keyholder_tests::cluster::ClusterEnv;
use keyholder_tests::daemon::{DATABASE, OPERATOR};
use keyholder_tests::pg_instance::PgInstance;
use keyholder_tests::proxy::Proxy;

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

fn from(progress: &[UnsealProgress]) -> Vec<Vec<String>> {
    progress.iter().map(|p| p.from.clone()).collect()
}

/// alice submits `share` to kh-a; returns kh-a's answer once kh-b holds it
/// (relayed) as its only progress.
async fn submit_to_kh_a_until_kh_b_holds_it(cluster: &ClusterEnv, share: &str) -> UnsealResponse {
    let submitted = cluster.client(0, "alice").unseal(&[share]).await;
    assert_eq!(submitted.status, 200, "{}", submitted.body);
    cluster
        .wait_for(1, "got alice's relayed share", WAIT, |s| {
            from(&s.unseal_progress) == [vec!["alice".to_owned()]]
        })
        .await;
    submitted.json()
}

/// alice submits to kh-a, which relays her share to kh-b; she withdraws it
/// on kh-a. When her `DELETE` is answered kh-b no longer holds it either:
/// bob's share on kh-b leaves kh-b sealed, waiting for a second keyholder,
/// and kh-a has no unsealed peer to take the keyring from.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_share_withdrawn_on_one_node_is_withdrawn_on_the_node_it_was_relayed_to() {
    let pg = PgInstance::start();
    let cluster = two_nodes(&pg);
    let env = &cluster.env;
    let _a = cluster.start(0).await;
    let _b = cluster.start(1).await;
    let alice = env.share_line("alice", 1);
    let bob = env.share_line("bob", 1);

    submit_to_kh_a_until_kh_b_holds_it(&cluster, &alice).await;

    let withdrawn = cluster
        .client(0, "alice")
        .send(reqwest::Method::DELETE, "/v1/unseal", None)
        .await
        .unwrap();
    assert_eq!(withdrawn.status, 200, "{}", withdrawn.body);
    let withdrawn: UnsealResponse = withdrawn.json();
    assert!(withdrawn.progress.is_empty(), "{withdrawn:?}");
    // No waiting: the withdrawal is answered once the peers have it.
    assert_eq!(cluster.status(0).await.unseal_progress, []);
    assert_eq!(cluster.status(1).await.unseal_progress, []);

    let answer = cluster.client(1, "bob").unseal(&[&bob]).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let answer: UnsealResponse = answer.json();
    assert!(
        answer.sealed,
        "alice's withdrawn share unsealed kh-b: {answer:?}"
    );
    assert_eq!(from(&answer.progress), [vec!["bob".to_owned()]]);
    // kh-a has nobody to take the keyring from (it asks every second).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(cluster.status(0).await.sealed);
    assert!(cluster.status(1).await.sealed);

    let entries = cluster.audit().await;
    let relayed: Vec<&AuditEntry> = entries
        .iter()
        .filter(|e| e.action == "unseal_shares_withdrawn" && e.actor == "alice")
        .collect();
    assert_eq!(relayed.len(), 2, "one per node: {relayed:?}");
    assert!(
        relayed
            .iter()
            .any(|e| e.detail.contains("\"relayed_by\":\"kh-a\"")
                && e.detail.contains("\"node\":\"kh-b\"")),
        "{relayed:?}"
    );

    // alice may submit again; then bob's share on kh-b completes it.
    let again = cluster.client(0, "alice").unseal(&[&alice]).await;
    assert_eq!(again.status, 200, "{}", again.body);
    cluster
        .wait_for(1, "got alice's share again", WAIT, |s| {
            s.unseal_progress.iter().any(|p| p.have == 2) || !s.sealed
        })
        .await;
    cluster.wait_for(1, "unsealed", WAIT, |s| !s.sealed).await;
    cluster
        .wait_for(0, "unsealed from kh-b", WAIT, |s| !s.sealed)
        .await;
}

/// kh-b is frozen (SIGSTOP: it keeps what it holds but answers nothing)
/// when alice withdraws on kh-a; her `DELETE` is answered all the same,
/// and once kh-b runs again kh-a tells it within a few seconds: bob's share
/// on kh-b then leaves it sealed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_that_missed_a_withdrawal_gets_it_when_it_answers_again() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let pg = PgInstance::start();
    let cluster = two_nodes(&pg);
    let env = &cluster.env;
    let _a = cluster.start(0).await;
    let b = cluster.start(1).await;
    let alice = env.share_line("alice", 1);
    let bob = env.share_line("bob", 1);

    submit_to_kh_a_until_kh_b_holds_it(&cluster, &alice).await;
    // kh-b holds the shares before its audit entry of them commits: frozen
    // inside that transaction it would hold the audit log's lock, and kh-a's
    // own audit of the withdrawal would time out on it.
    let deadline = std::time::Instant::now() + WAIT;
    while !cluster
        .audit()
        .await
        .iter()
        .any(|e| e.action == "unseal_share_relayed" && e.actor == "alice")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "kh-b never audited alice's relayed share"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let kh_b = Pid::from_raw(i32::try_from(b.pid().unwrap()).unwrap());
    kill(kh_b, Signal::SIGSTOP).unwrap();
    let withdrawn = cluster
        .client(0, "alice")
        .send(reqwest::Method::DELETE, "/v1/unseal", None)
        .await;
    kill(kh_b, Signal::SIGCONT).unwrap();
    let withdrawn = withdrawn.unwrap();
    assert_eq!(withdrawn.status, 200, "{}", withdrawn.body);
    assert!(
        cluster
            .log_text(0)
            .contains("a peer did not get a withdrawal of unseal shares"),
        "kh-b was frozen, yet kh-a's relay of the withdrawal did not fail"
    );

    cluster
        .wait_for(1, "dropped alice's share", WAIT, |s| {
            s.unseal_progress.is_empty()
        })
        .await;
    let answer = cluster.client(1, "bob").unseal(&[&bob]).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let answer: UnsealResponse = answer.json();
    assert!(
        answer.sealed,
        "alice's withdrawn share unsealed kh-b: {answer:?}"
    );
    assert_eq!(from(&answer.progress), [vec!["bob".to_owned()]]);
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
    cluster
        .wait_for(1, "unsealed from kh-a", WAIT, |s| !s.sealed)
        .await;
    let leader = cluster
        .wait_for(0, "saw a leader", WAIT, |s| {
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
    cluster.wait_for(0, "sealed", WAIT, |s| s.sealed).await;
    cluster.wait_for(1, "sealed", WAIT, |s| s.sealed).await;

    let first = submit_to_kh_a_until_kh_b_holds_it(&cluster, &alice).await;
    assert!(first.outcomes[0].accepted, "{first:?}");
    // Several polls of the stored rotation on each node.
    tokio::time::sleep(Duration::from_secs(4)).await;
    for i in 0..2 {
        assert_eq!(
            from(&cluster.status(i).await.unseal_progress),
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
    cluster.wait_for(0, "unsealed", WAIT, |s| !s.sealed).await;
}

/// Requests in a loop that change nothing cannot fill the audit log: a
/// principal that is not a node calling a node endpoint gets its refusals
/// audited only until its budget is spent, then 429 `rate_limited`, counted
/// in one audit entry a minute; a keyholder resubmitting an accepted share
/// (`already_counted`) spends the same budget as a failed submission.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_in_a_loop_that_change_nothing_are_rate_limited_not_audited_one_by_one() {
    let pg = PgInstance::start();
    let cluster = two_nodes(&pg);
    let env = &cluster.env;
    let _a = cluster.start(0).await;
    let _b = cluster.start(1).await;
    let count = |entries: &[AuditEntry], action: &str| {
        entries.iter().filter(|e| e.action == action).count()
    };

    let db1 = cluster.client(0, DATABASE);
    let mut answered = std::collections::BTreeMap::<u16, usize>::new();
    for _ in 0..40 {
        let answer = db1
            .post("/v1/cluster/seal", &serde_json::json!({"generation": 1}))
            .await;
        *answered.entry(answer.status).or_default() += 1;
    }
    let refused = answered.get(&403).copied().unwrap_or(0);
    assert!(
        (1..=8).contains(&refused) && answered.get(&429) == Some(&(40 - refused)),
        "db1's 40 node calls: {answered:?}"
    );
    let entries = cluster.audit().await;
    assert_eq!(
        count(&entries, "cluster_call_refused"),
        refused,
        "one audit entry per refusal that was answered 403"
    );

    let alice = env.share_line("alice", 1);
    let mut answered = std::collections::BTreeMap::<u16, usize>::new();
    for _ in 0..20 {
        let answer = cluster.client(0, "alice").unseal(&[&alice]).await;
        *answered.entry(answer.status).or_default() += 1;
    }
    let processed = answered.get(&200).copied().unwrap_or(0);
    assert!(
        (2..=9).contains(&processed) && answered.get(&429) == Some(&(20 - processed)),
        "alice's share, then 19 repeats: {answered:?}"
    );
    // The budget holds back repeats, not a share that counts.
    let bob = env.share_line("bob", 1);
    let answer = cluster.client(0, "bob").unseal(&[&bob]).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    cluster.wait_for(0, "unsealed", WAIT, |s| !s.sealed).await;
}

/// The cluster seal generation in the state store.
async fn generation(pg: &PgInstance) -> u64 {
    let (client, connection) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let row = client
        .query_one(
            "SELECT generation FROM keyholder.cluster_seal WHERE id = 1",
            &[],
        )
        .await
        .unwrap();
    u64::try_from(row.get::<_, i64>(0)).unwrap()
}

/// kh-a reaches kh-b through a proxy the test cuts: alice's share reaches
/// kh-b, then the operator seals the cluster on kh-a, whose notice cannot
/// reach kh-b. kh-b reads the new generation itself within a second and
/// drops alice's share as the notice would have: bob's share on kh-b then
/// leaves it sealed. (Before, a sealed node ignored a generation it read,
/// and bob unsealed kh-b with a share given before the seal.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sealed_node_the_seal_notice_missed_drops_its_progress_on_reading_the_generation() {
    let pg = PgInstance::start();
    let cluster = two_nodes(&pg);
    let env = &cluster.env;
    let proxy = Proxy::start(cluster.nodes[1].addr).await;
    let config = std::fs::read_to_string(&cluster.nodes[0].config).unwrap();
    let listed = format!("addr = \"{}\"", cluster.nodes[1].addr);
    assert_eq!(config.matches(&listed).count(), 1, "{config}");
    std::fs::write(
        &cluster.nodes[0].config,
        config.replace(&listed, &format!("addr = \"{}\"", proxy.addr)),
    )
    .unwrap();
    let _a = cluster.start(0).await;
    let _b = cluster.start(1).await;
    let alice = env.share_line("alice", 1);
    let bob = env.share_line("bob", 1);

    submit_to_kh_a_until_kh_b_holds_it(&cluster, &alice).await;

    proxy.cut();
    let before = generation(&pg).await;
    let sealed = cluster
        .client(0, OPERATOR)
        .post("/v1/seal", &serde_json::json!({}))
        .await;
    assert_eq!(sealed.status, 200, "{}", sealed.body);
    assert_eq!(generation(&pg).await, before + 1);
    cluster
        .wait_for(1, "dropped alice's share", WAIT, |s| {
            s.unseal_progress.is_empty()
        })
        .await;
    let deadline = std::time::Instant::now() + WAIT;
    while !cluster
        .log_text(0)
        .contains("a peer was not told of the seal")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "kh-a's notice reached kh-b through the cut proxy"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let answer = cluster.client(1, "bob").unseal(&[&bob]).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let answer: UnsealResponse = answer.json();
    assert!(
        answer.sealed,
        "alice's share from before the seal unsealed kh-b: {answer:?}"
    );
    assert_eq!(from(&answer.progress), [vec!["bob".to_owned()]]);
    let entries = cluster.audit().await;
    assert!(
        entries.iter().any(|e| e.action == "sealed_with_cluster"
            && e.actor == "keyholderd"
            && e.detail.contains("\"node\":\"kh-b\"")),
        "{entries:?}"
    );
}

/// A relay kh-a admitted before a seal and delivered after it (a call in
/// flight, or one kh-a gave up on that kh-b still took) carries the
/// generation it was admitted at; kh-b, which knows of the seal, refuses
/// it (409 `sealed_since`, audited), so bob's share does not complete an
/// unseal with alice's share from before the seal. A relay of the
/// generation kh-b knows is admitted. The test plays kh-a with its
/// certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shares_relayed_from_before_a_seal_are_refused_after_it() {
    let pg = PgInstance::start();
    let cluster = two_nodes(&pg);
    let env = &cluster.env;
    let _a = cluster.start(0).await;
    let _b = cluster.start(1).await;
    let alice = env.share_line("alice", 1);
    let bob = env.share_line("bob", 1);

    let before = generation(&pg).await;
    let sealed = cluster
        .client(1, OPERATOR)
        .post("/v1/seal", &serde_json::json!({}))
        .await;
    assert_eq!(sealed.status, 200, "{}", sealed.body);
    let now = generation(&pg).await;
    assert_eq!(now, before + 1);

    let kh_a = cluster.client(1, "kh-a");
    let relay = |generation: u64| serde_json::json!({"keyholder": "alice", "shares": [alice], "generation": generation});
    let late = kh_a.post("/v1/cluster/shares", &relay(before)).await;
    assert_eq!(late.status, 409, "{}", late.body);
    assert_eq!(late.error().code, "sealed_since");
    assert_eq!(cluster.status(1).await.unseal_progress, []);
    let answer = cluster.client(1, "bob").unseal(&[&bob]).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let answer: UnsealResponse = answer.json();
    assert!(
        answer.sealed,
        "a share from before the seal counted: {answer:?}"
    );
    let refused: Vec<AuditEntry> = cluster
        .audit()
        .await
        .into_iter()
        .filter(|e| e.action == "unseal_relay_refused")
        .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].actor, "alice");
    assert!(
        refused[0].detail.contains("\"relayed_by\":\"kh-a\"")
            && refused[0]
                .detail
                .contains(&format!("\"admitted_at\":{before}"))
            && refused[0].detail.contains(&format!("\"generation\":{now}")),
        "{refused:?}"
    );
    // A relay admitted at the generation kh-b knows counts: with bob's
    // share it unseals kh-b.
    let current = kh_a.post("/v1/cluster/shares", &relay(now)).await;
    assert_eq!(current.status, 200, "{}", current.body);
    cluster.wait_for(1, "unsealed", WAIT, |s| !s.sealed).await;
}
