//! Issue 15's leader lease, end to end: three real keyholderd processes on
//! one real PostgreSQL state store (`KEYHOLDER_TEST_PG`; skipped, saying
//! so, when it is not set, failed when set and unreachable), a rotation
//! v1 -> v2 over a SQLite target while the test writes records as an
//! application would, and the leader killed (SIGKILL) in the middle of the
//! re-encryption: another node takes the lease and finishes the job, every
//! record ends at v2 with the plaintext the application last wrote. The same
//! world cut off from PostgreSQL (a proxy the test cuts), and restarted one
//! node at a time during the job: each node comes back unsealed from a peer,
//! no share is submitted again, and the real `keyholder hook`, given every
//! node, never fails.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crypto_core::{Key, Keyring};
use keyholder_api::{ApiError, RotationState, RotationStatus, Status};
use keyholder_tests::cluster::ClusterEnv;
use keyholder_tests::daemon::{DATABASE, OPERATOR};
use keyholder_tests::pg::{self, Schema};
use keyholder_tests::proxy::Proxy;
use keyholder_tests::records::{Table, plaintext};
use keyholder_tests::rotation::v;
use keyholder_tests::{Daemon, EnvOptions};
use serde_json::json;
use sha2::Digest as _;

/// Generous: debug builds on two shared cores.
const WAIT: Duration = Duration::from_secs(150);
const RECORDS: i64 = 3_000;

async fn status(cluster: &ClusterEnv, i: usize) -> Option<Status> {
    let answer = cluster
        .client(i, OPERATOR)
        .send(reqwest::Method::GET, "/v1/status", None)
        .await
        .ok()?;
    (answer.status == 200).then(|| answer.json())
}

/// Polls node `i`'s status until `done`; panics after [`WAIT`] with the
/// last status and the node's log.
async fn wait_on(
    cluster: &ClusterEnv,
    i: usize,
    what: &str,
    done: impl Fn(&Status) -> bool,
) -> Status {
    let deadline = Instant::now() + WAIT;
    loop {
        let last = status(cluster, i).await;
        if let Some(status) = &last
            && done(status)
        {
            return status.clone();
        }
        assert!(
            Instant::now() < deadline,
            "waited {WAIT:?} on {} for {what}; last status: {last:#?}\nlog:\n{}",
            cluster.nodes[i].name,
            cluster.log_text(i)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn leader_of(status: &Status) -> Option<&str> {
    status.cluster.as_ref().and_then(|c| c.leader.as_deref())
}

fn rotation(status: &Status) -> &RotationStatus {
    status.rotation.as_ref().expect("a rotation")
}

/// db1 fetches its keyring from node `i`.
async fn db1_keyring(cluster: &ClusterEnv, i: usize) -> Keyring {
    let answer = cluster.client(i, DATABASE).get("/v1/keyring").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    Keyring::from_handover_json(&answer.body).unwrap()
}

/// An application writing records all along: each write picks a record and
/// stores a new plaintext under the write version it was last told; what
/// it wrote last per record is what the table must hold at the end.
struct Writer {
    stop: Arc<AtomicBool>,
    version: Arc<AtomicU32>,
    thread: std::thread::JoinHandle<BTreeMap<i64, String>>,
}

impl Writer {
    fn start(table: Table, keys: BTreeMap<u32, Key>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let version = Arc::new(AtomicU32::new(1));
        let thread = {
            let (stop, version) = (Arc::clone(&stop), Arc::clone(&version));
            std::thread::spawn(move || {
                let mut written = BTreeMap::new();
                let mut n = 0i64;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    // Spread over the table, so writes meet the worker's
                    // batches ahead of and behind its cursor.
                    let id = (n * 7919) % RECORDS + 1;
                    let at = version.load(Ordering::SeqCst);
                    let text = format!("written-{n}-{id}");
                    table.put(id, &keys[&at], v(at), &text);
                    written.insert(id, text);
                    std::thread::sleep(Duration::from_millis(15));
                }
                written
            })
        };
        Self {
            stop,
            version,
            thread,
        }
    }

    fn finish(self) -> BTreeMap<i64, String> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap()
    }
}

/// What [`Table::digest`] gives for the seeded plaintexts with the
/// application's writes over them.
fn expected_digest(written: &BTreeMap<i64, String>) -> String {
    let mut hash = sha2::Sha256::new();
    for id in 1..=RECORDS {
        let plain = written.get(&id).cloned().unwrap_or_else(|| plaintext(id));
        hash.update(id.to_be_bytes());
        hash.update((plain.len() as u64).to_be_bytes());
        hash.update(plain.as_bytes());
    }
    hex::encode(hash.finalize())
}

/// A cluster of three whose leader kh-a runs a job v1 -> v2 while the
/// application writes; kh-a's state store URL goes through `via` when given.
struct World {
    cluster: ClusterEnv,
    schema: Schema,
    table: Table,
    nodes: Vec<Daemon>,
    writer: Writer,
    v1: Key,
    v2: Key,
    _data: tempfile::TempDir,
}

async fn reencrypting(url: &str, via: Option<std::net::SocketAddr>) -> World {
    let schema = Schema::new(url).await;
    let data = tempfile::tempdir().unwrap();
    let table = Table::create(&data.path().join("app.db"));
    let cluster = ClusterEnv::new(
        3,
        "3s",
        EnvOptions {
            targets: vec![table.spec.clone()],
            state_store: Some(schema.state_store()),
            consumers: vec![DATABASE.to_owned()],
            rows_per_sec: Some(300),
            batch_size: Some(50),
            extra_toml: "\n[rotation]\nmin_verified = 2\n".to_owned(),
            ..EnvOptions::default()
        },
        "",
    );
    if let Some(proxy) = via {
        let host = url
            .split('@')
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .expect("KEYHOLDER_TEST_PG names host:port");
        let config = &cluster.nodes[0].config;
        let text = std::fs::read_to_string(config).unwrap();
        let rewritten = text.replacen(&format!("@{host}/"), &format!("@{proxy}/"), 1);
        assert_ne!(
            text, rewritten,
            "the state store URL goes through the proxy"
        );
        std::fs::write(config, rewritten).unwrap();
    }
    let env = &cluster.env;
    let mut nodes: Vec<Daemon> = vec![cluster.start(0).await];
    let v1_lines = [env.share_line("alice", 1), env.share_line("bob", 1)];

    // kh-a alone is up and unsealed: a sealed node never takes the lease.
    env.unseal_with(&[
        ("alice", vec![v1_lines[0].clone()]),
        ("bob", vec![v1_lines[1].clone()]),
    ])
    .await;
    wait_on(&cluster, 0, "kh-a to lead", |s| {
        leader_of(s) == Some("kh-a")
    })
    .await;
    // The others start later and take the keyring from kh-a (no ceremony).
    for i in 1..3 {
        nodes.push(cluster.start(i).await);
        wait_on(&cluster, i, "the node to unseal from a peer", |s| !s.sealed).await;
    }
    let v1 = env.rebuild_key(1, &[&v1_lines[0], &v1_lines[1]]).await;
    table.seed(&v1, v(1), RECORDS);

    // A follower refuses a rotation command and names the leader (once
    // its own lease round saw it).
    wait_on(&cluster, 1, "kh-b to see kh-a lead", |s| {
        leader_of(s) == Some("kh-a")
    })
    .await;
    let refused = cluster
        .client(1, OPERATOR)
        .post("/v1/rotation/prepare", &json!({}))
        .await;
    assert_eq!(refused.status, 421, "{}", refused.body);
    let error: ApiError = refused.error();
    assert_eq!(error.code, "not_leader");
    assert_eq!(error.leader, Some(cluster.nodes[0].addr.to_string()));

    // The CLI, given every node, follows to the leader by itself.
    let output = cluster
        .keyholder_cli(OPERATOR)
        .env(
            "KEYHOLDER_ADDR",
            format!("{},{}", cluster.nodes[1].addr, cluster.nodes[0].addr),
        )
        .args(["rotate", "prepare"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let v2_lines = [
        env.fetch_new_share("alice", 2).await,
        env.fetch_new_share("bob", 2).await,
    ];
    for (name, line) in ["alice", "bob"].iter().zip(&v2_lines) {
        env.verify_new_share(name, line).await;
    }
    let v2 = env.rebuild_key(2, &[&v2_lines[0], &v2_lines[1]]).await;
    env.operate("/v1/rotation/activate", json!({})).await;

    // The followers follow the stored rotation (both versions live) and
    // took v2's key from the leader, proven, without a ceremony.
    for i in 1..3 {
        wait_on(&cluster, i, "the follower to see dual read", |s| {
            s.rotation
                .as_ref()
                .is_some_and(|r| r.state == RotationState::DualRead)
        })
        .await;
        wait_on(&cluster, i, "the follower to hold v2 from a peer", |s| {
            s.versions.iter().all(|v| v.loaded)
        })
        .await;
    }

    // db1 fetches from a follower: the leader counts it from the store.
    let ring = db1_keyring(&cluster, 1).await;
    assert_eq!(
        ring.versions().map(|v| v.number()).collect::<Vec<_>>(),
        [1, 2]
    );
    wait_on(&cluster, 0, "db1's acknowledgement via the store", |s| {
        rotation(s).waiting_for.is_empty()
    })
    .await;
    env.operate("/v1/rotation/switch", json!({})).await;

    let keys = BTreeMap::from([(1, v1.clone()), (2, v2.clone())]);
    let writer = Writer::start(table.clone(), keys);
    // The application takes the keyring writing v2 from the other
    // follower, once that follower read the switch from the store.
    wait_on(&cluster, 2, "the follower to see the switch", |s| {
        rotation(s).state == RotationState::Reencrypting
    })
    .await;
    let ring = db1_keyring(&cluster, 2).await;
    assert_eq!(ring.write_version().number(), 2);
    writer.version.store(2, Ordering::SeqCst);

    World {
        cluster,
        schema,
        table,
        nodes,
        writer,
        v1,
        v2,
        _data: data,
    }
}

impl World {
    /// Waits for the drain on node `i`, stops the application and checks
    /// every record: at v2, holding what was last written.
    async fn drained_without_a_lost_update(self, i: usize) -> (ClusterEnv, Vec<Daemon>, Schema) {
        wait_on(&self.cluster, i, "the job to drain", |s| {
            rotation(s).state == RotationState::Drained
        })
        .await;
        let written = self.writer.finish();
        assert!(!written.is_empty());
        assert_eq!(self.table.count_at(1), 0, "{:?}", self.table.counts());
        let keys = BTreeMap::from([(v(1), self.v1), (v(2), self.v2)]);
        if self.table.digest(&keys) != expected_digest(&written) {
            // Name the records that differ (test data, no secret).
            let differ: Vec<String> = self
                .table
                .plaintexts(&keys)
                .into_iter()
                .filter_map(|(id, version, found)| {
                    let expected = written.get(&id).cloned().unwrap_or_else(|| plaintext(id));
                    (found != expected)
                        .then(|| format!("{id} at v{version}: {found:?}, expected {expected:?}"))
                })
                .take(20)
                .collect();
            panic!("records differ from what was last written: {differ:#?}");
        }
        (self.cluster, self.nodes, self.schema)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_and_the_job_finishes_without_a_lost_update() {
    let Some(url) = pg::url() else { return };
    let mut world = reencrypting(&url, None).await;
    let cluster = &world.cluster;
    let before = wait_on(cluster, 0, "the job to be under way", |s| {
        rotation(s).rows_done >= 300
    })
    .await;
    assert_eq!(rotation(&before).state, RotationState::Reencrypting);
    let moved_at_kill = rotation(&before).rows_done;
    let epoch_before = before.cluster.as_ref().unwrap().epoch;
    world.nodes[0].kill();
    let killed = Instant::now();

    // Another node takes the lease and goes on from the shared checkpoint.
    let new_leader = {
        let deadline = Instant::now() + WAIT;
        loop {
            let mut found = None;
            for i in 1..3 {
                if let Some(s) = status(cluster, i).await
                    && leader_of(&s) == Some(cluster.nodes[i].name.as_str())
                {
                    found = Some(i);
                }
            }
            if let Some(i) = found {
                break i;
            }
            assert!(Instant::now() < deadline, "no node took the lease");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let took = killed.elapsed();
    let after = wait_on(cluster, new_leader, "the new leader to move records", |s| {
        rotation(s).rows_done > moved_at_kill
    })
    .await;
    let writing = killed.elapsed();
    assert!(after.cluster.as_ref().unwrap().epoch > epoch_before);
    println!(
        "failover: lease taken by {} {:.1}s after the SIGKILL, its first records moved {:.1}s after the SIGKILL (lease 3s)",
        cluster.nodes[new_leader].name,
        took.as_secs_f64(),
        writing.as_secs_f64()
    );

    let (_cluster, mut nodes, schema) = world.drained_without_a_lost_update(new_leader).await;
    for node in &mut nodes[1..] {
        node.stop();
    }
    schema.drop_it().await;
}

/// The first node's leadership as its status shows it: whether it leads.
fn leads(status: &Status) -> bool {
    status
        .cluster
        .as_ref()
        .is_some_and(|c| c.leader.as_deref() == Some(c.node.as_str()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_postgres_steps_down_and_a_new_epoch_takes_over() {
    let Some(url) = pg::url() else { return };
    let upstream: std::net::SocketAddr = url
        .split('@')
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .and_then(|host| host.replace("localhost", "127.0.0.1").parse().ok())
        .expect("KEYHOLDER_TEST_PG names an ip:port");
    let proxy = Proxy::start(upstream).await;
    let world = reencrypting(&url, Some(proxy.addr)).await;
    let cluster = &world.cluster;
    let before = wait_on(cluster, 0, "the job to be under way", |s| {
        rotation(s).rows_done >= 300
    })
    .await;
    let epoch_before = before.cluster.as_ref().unwrap().epoch;

    // kh-a loses PostgreSQL: its connections drop, new ones are closed.
    proxy.cut();
    let cut = Instant::now();
    let deadline = cut + WAIT;
    while !cluster
        .log_text(0)
        .contains("lease not renewed in time; stepping down")
    {
        assert!(
            Instant::now() < deadline,
            "kh-a never stepped down:\n{}",
            cluster.log_text(0)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stepped_down = cut.elapsed();
    // Its status (served from memory) says it no longer leads.
    let own = status(cluster, 0).await.expect("kh-a still answers");
    assert!(!leads(&own), "{:?}", own.cluster);

    let new_leader = loop {
        let mut found = None;
        for i in 1..3 {
            if let Some(s) = status(cluster, i).await
                && leads(&s)
            {
                found = Some((i, s));
            }
        }
        if let Some(found) = found {
            break found;
        }
        assert!(Instant::now() < deadline, "no node took the lease");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let took_over = cut.elapsed();
    let (new_leader, seen) = new_leader;
    println!(
        "partition: kh-a stepped down {:.1}s after the cut (lease 3s, its margin a third of it); {} led at epoch {} {:.1}s after the cut",
        stepped_down.as_secs_f64(),
        cluster.nodes[new_leader].name,
        seen.cluster.as_ref().unwrap().epoch,
        took_over.as_secs_f64()
    );
    // It stepped down before the store could give the lease away.
    assert!(stepped_down < took_over, "{stepped_down:?} {took_over:?}");

    // The store holds the new epoch only: the lease row names the new
    // leader at a higher epoch, so a write carrying kh-a's epoch fails the
    // check every leader-only write makes in its transaction.
    let row = world
        .schema
        .client
        .query_one(
            &format!(
                "SELECT holder, epoch FROM \"{}\".lease WHERE id = 1",
                world.schema.name
            ),
            &[],
        )
        .await
        .unwrap();
    let (holder, epoch): (Option<String>, i64) = (row.get(0), row.get(1));
    assert_eq!(
        holder.as_deref(),
        Some(cluster.nodes[new_leader].name.as_str())
    );
    assert!(u64::try_from(epoch).unwrap() > epoch_before);

    // Healed, kh-a follows the new leader instead of taking the lease back.
    proxy.heal();
    let leader_name = cluster.nodes[new_leader].name.clone();
    wait_on(cluster, 0, "kh-a to follow the new leader", |s| {
        leader_of(s) == Some(leader_name.as_str()) && !leads(s)
    })
    .await;

    let (_cluster, mut nodes, schema) = world.drained_without_a_lost_update(new_leader).await;
    for node in &mut nodes {
        node.stop();
    }
    schema.drop_it().await;
}

/// The real `keyholder hook` of db1, given every node's address, run again
/// and again until stopped: the keyring a database start would get.
struct Hooks {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(u32, Vec<String>)>,
}

impl Hooks {
    fn start(cluster: &ClusterEnv) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let files = cluster.env.pki.client(DATABASE);
        let (addrs, ca) = (cluster.addrs(), cluster.env.pki.ca_pem.clone());
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let (mut runs, mut failures) = (0, Vec::new());
                while !stop.load(Ordering::SeqCst) {
                    let out =
                        std::process::Command::new(keyholder_tests::daemon::binary("keyholder"))
                            .env("KEYHOLDER_ADDR", &addrs)
                            .env("KEYHOLDER_CACERT", &ca)
                            .env("KEYHOLDER_CLIENT_CERT", &files.cert)
                            .env("KEYHOLDER_CLIENT_KEY", &files.key)
                            .args(["hook", "--wait", "30s", "--format", "json"])
                            .stdin(std::process::Stdio::null())
                            .output()
                            .unwrap();
                    runs += 1;
                    // Never printed: the hook's output holds the keys.
                    let ring = std::str::from_utf8(&out.stdout)
                        .map_err(|e| e.to_string())
                        .and_then(|text| {
                            Keyring::from_handover_json(text.trim()).map_err(|e| e.to_string())
                        });
                    let wrong = match &ring {
                        Ok(r) if r.write_version() == v(2) => None,
                        Ok(r) => Some(format!("writes {}", r.write_version())),
                        Err(e) => {
                            Some(format!("{} bytes that do not parse: {e}", out.stdout.len()))
                        }
                    };
                    if !out.status.success() || wrong.is_some() {
                        failures.push(format!(
                            "{}: {}: {}",
                            out.status,
                            wrong.unwrap_or_default(),
                            String::from_utf8_lossy(&out.stderr)
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                (runs, failures)
            })
        };
        Self { stop, thread }
    }

    fn finish(self) -> (u32, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_every_node_during_the_rotation_needs_no_ceremony_and_fails_no_hook() {
    let Some(url) = pg::url() else { return };
    let mut world = reencrypting(&url, None).await;
    // Slow enough that the job outlasts three restarts and a failover.
    let throttled = world
        .cluster
        .client(0, OPERATOR)
        .post("/v1/rotation/throttle", &json!({"rows_per_sec": 60}))
        .await;
    assert_eq!(throttled.status, 200, "{}", throttled.body);
    wait_on(&world.cluster, 0, "the job to be under way", |s| {
        rotation(s).rows_done >= 100
    })
    .await;
    let hooks = Hooks::start(&world.cluster);
    for i in 0..3 {
        assert!(
            world.nodes[i].stop(),
            "{} stopped cleanly",
            world.cluster.nodes[i].name
        );
        let restarted = Instant::now();
        world.nodes[i] = world.cluster.start(i).await;
        // Back from a peer with every key, no share submitted.
        wait_on(&world.cluster, i, "the node to hold every key again", |s| {
            !s.sealed && s.versions.iter().all(|v| v.loaded)
        })
        .await;
        let status = status(&world.cluster, i).await.unwrap();
        println!(
            "rolling restart: {} back unsealed {:.2}s after its start; job at {} rows, state {}",
            world.cluster.nodes[i].name,
            restarted.elapsed().as_secs_f64(),
            rotation(&status).rows_done,
            rotation(&status).state
        );
        assert_eq!(
            rotation(&status).state,
            RotationState::Reencrypting,
            "the restarts happen during the job"
        );
        // The job goes on (after a failover when the leader restarted)
        // before the next node restarts.
        let moved = rotation(&status).rows_done;
        wait_on(&world.cluster, i, "the job to move on", |s| {
            rotation(s).rows_done >= moved + 60
        })
        .await;
    }
    let (runs, failures) = hooks.finish();
    println!(
        "rolling restart: {runs} hook runs, {} failed",
        failures.len()
    );
    assert!(failures.is_empty(), "hooks failed: {failures:#?}");
    assert!(runs >= 3, "{runs} hook runs");

    // No ceremony: after the first one, no share was ever submitted again.
    let answer = world
        .cluster
        .client(1, OPERATOR)
        .get("/v1/audit?limit=1000")
        .await;
    let log: keyholder_api::AuditLog = answer.json();
    let submitted = log
        .entries
        .iter()
        .filter(|e| e.action == "unseal_share_accepted")
        .count();
    assert_eq!(submitted, 2, "alice and bob once, at the start");
    assert!(log.entries.iter().any(|e| e.action == "unsealed_from_peer"));

    let (_cluster, mut nodes, schema) = world.drained_without_a_lost_update(1).await;
    for node in &mut nodes {
        node.stop();
    }
    schema.drop_it().await;
}
