//! Issue 5's "Must show" (and issue 6's crash-and-resume): whole rotations
//! v9 -> v10 driven through the real `keyholderd` over real mTLS, on a real
//! SQLite target whose records the test sealed itself under a key it rebuilt
//! from the init share files. Every end state is checked against the table
//! (records per version, a digest of every plaintext), the database's own
//! keyring and the hash-chained audit log, never against the daemon's word
//! alone.
//!
//! Build the daemon first: `cargo build -p keyholder-server`.

use std::collections::BTreeMap;
use std::time::Duration;

use crypto_core::{Key, KeyVersion};
use keyholder_api::{
    AuditLog, RetirePlan, RollbackPlan, RotationState, RotationStatus, UnsealResponse, VersionState,
};
use keyholder_tests::daemon::{DATABASE, OPERATOR, SECOND_OPERATOR};
use keyholder_tests::records::Table;
use keyholder_tests::rotation::v;
use keyholder_tests::secrets::{
    assert_absent, assert_memory_clean, can_read_memory, encodings, files_under, key_bytes,
    share_data,
};
use keyholder_tests::{Daemon, Env, EnvOptions};
use rand::RngExt as _;
use serde_json::json;

/// Generous: a debug build on two shared cores.
const DRAIN: Duration = Duration::from_secs(150);

/// The daemon's log line once a pass has parked on a pause.
const PAUSED: &str = "re-encryption paused";

/// An environment at v9 with one SQLite target of `records` records, `db1`
/// as the consumer that must acknowledge, the daemon running and unsealed.
struct World {
    env: Env,
    table: Table,
    daemon: Daemon,
    /// Records seeded.
    records: i64,
    /// alice's and bob's v9 share lines, from the init files.
    v9_lines: [String; 2],
    v9: Key,
    _data: tempfile::TempDir,
}

async fn world(records: i64, tune: impl FnOnce(&mut EnvOptions)) -> World {
    let data = tempfile::tempdir().unwrap();
    let table = Table::create(&data.path().join("app.db"));
    let mut options = EnvOptions {
        targets: vec![table.spec.clone()],
        first_version: Some(9),
        consumers: vec![DATABASE.to_owned()],
        // alice and bob verify their new shares in these tests; the default
        // (threshold + 1, all three) is what `retire_waits_for_...` checks.
        extra_toml: "\n[rotation]\nmin_verified = 2\n".to_owned(),
        ..EnvOptions::default()
    };
    tune(&mut options);
    let env = Env::new(options);
    let daemon = env.start().await;
    let v9_lines = [env.share_line("alice", 9), env.share_line("bob", 9)];
    let v9 = env.rebuild_key(9, &[&v9_lines[0], &v9_lines[1]]).await;
    table.seed(&v9, v(9), records);
    let unsealed = env
        .unseal_with(&[
            ("alice", vec![v9_lines[0].clone()]),
            ("bob", vec![v9_lines[1].clone()]),
        ])
        .await;
    assert!(!unsealed.sealed, "{unsealed:?}");
    World {
        env,
        table,
        daemon,
        records,
        v9_lines,
        v9,
        _data: data,
    }
}

/// alice's and bob's new share lines and the new key, as the test rebuilt it.
struct NewShares {
    lines: [String; 2],
    key: Key,
}

impl World {
    fn rotation_of(status: &keyholder_api::Status) -> &RotationStatus {
        status.rotation.as_ref().expect("the status has a rotation")
    }

    async fn rotation(&self) -> RotationStatus {
        Self::rotation_of(&self.env.status().await).clone()
    }

    /// `rotate prepare`, then alice and bob fetch, decrypt and verify their
    /// share of v10.
    async fn prepare_and_verify(&self) -> NewShares {
        let prepared: RotationStatus = self
            .env
            .operate("/v1/rotation/prepare", json!({}))
            .await
            .json();
        assert_eq!(
            (prepared.state, prepared.from, prepared.to),
            (RotationState::Prepared, Some(v(9)), Some(v(10)))
        );
        let lines = self.verify_shares().await;
        assert_eq!(self.rotation().await.state, RotationState::SharesVerified);
        let key = self.env.rebuild_key(10, &[&lines[0], &lines[1]]).await;
        NewShares { lines, key }
    }

    /// alice and bob fetch, decrypt and verify their share of v10.
    async fn verify_shares(&self) -> [String; 2] {
        let mut lines = Vec::new();
        for name in ["alice", "bob"] {
            let line = self.env.fetch_new_share(name, 10).await;
            self.env.verify_new_share(name, &line).await;
            lines.push(line);
        }
        let rotation = self.rotation().await;
        assert_eq!(rotation.verified_by, ["alice", "bob"]);
        [lines[0].clone(), lines[1].clone()]
    }

    async fn activate(&self) {
        let active: RotationStatus = self
            .env
            .operate("/v1/rotation/activate", json!({}))
            .await
            .json();
        assert_eq!(active.state, RotationState::DualRead);
        assert_eq!(active.waiting_for, [DATABASE]);
    }

    /// db1 fetches its keyring and must get exactly `versions`, writing
    /// `write`.
    async fn db1_gets(&self, versions: &[u32], write: u32) {
        let ring = self.env.database_keyring().await;
        let got: Vec<u32> = ring.versions().map(KeyVersion::number).collect();
        assert_eq!(
            (got.as_slice(), ring.write_version().number()),
            (versions, write)
        );
    }

    async fn switch(&self) {
        let switched: RotationStatus = self
            .env
            .operate("/v1/rotation/switch", json!({}))
            .await
            .json();
        assert!(
            matches!(
                switched.state,
                RotationState::Reencrypting | RotationState::Drained
            ),
            "{switched:?}"
        );
        // The hook of a consumer picks up the keyring that writes v10.
        self.db1_gets(&[9, 10], 10).await;
    }

    fn keys(&self, new: &Key) -> BTreeMap<KeyVersion, Key> {
        BTreeMap::from([(v(9), self.v9.clone()), (v(10), new.clone())])
    }

    /// Kills the daemon with SIGKILL and starts it again, sealed.
    async fn crash_and_restart(&mut self) {
        self.daemon.kill();
        self.daemon = self.env.start().await;
        assert!(self.env.status().await.sealed);
    }

    /// alice and bob unseal with their v9 lines and these v10 lines.
    async fn unseal(&self, v10: Option<&NewShares>) -> UnsealResponse {
        let lines = |i: usize| {
            let mut lines = vec![self.v9_lines[i].clone()];
            if let Some(new) = v10 {
                lines.push(new.lines[i].clone());
            }
            lines
        };
        let answer = self
            .env
            .unseal_with(&[("alice", lines(0)), ("bob", lines(1))])
            .await;
        assert!(!answer.sealed, "{answer:?}");
        answer
    }

    /// `records_moved` of every `target_drained` audit entry, in order.
    async fn drained_moves(&self) -> Vec<u64> {
        self.audit()
            .await
            .entries
            .iter()
            .filter(|e| e.action == "target_drained")
            .map(|e| {
                serde_json::from_str::<serde_json::Value>(&e.detail).unwrap()["records_moved"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    }

    async fn audit(&self) -> AuditLog {
        let answer = self.env.client(OPERATOR).get("/v1/audit").await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let log: AuditLog = answer.json();
        keyholder_api::verify_chain(&log.entries).expect("the audit chain verifies");
        log
    }

    /// Every record is at `version` only, and the plaintexts are the seeded ones.
    fn assert_all_at(&self, version: u32, new: &Key) {
        assert_eq!(
            self.table.counts(),
            BTreeMap::from([(version, self.records as u64)])
        );
        assert_eq!(
            self.table.digest(&self.keys(new)),
            Table::expected_digest(self.records)
        );
    }
}

fn retire(version: u32, execute: bool) -> serde_json::Value {
    json!({"version": version, "execute": execute})
}

fn actions(log: &AuditLog) -> Vec<&str> {
    log.entries.iter().map(|e| e.action.as_str()).collect()
}

/// Whether `wanted` appears in `all` in this order (other entries between).
fn in_order(all: &[&str], wanted: &[&str]) -> bool {
    let mut rest = all.iter();
    wanted.iter().all(|w| rest.any(|a| a == w))
}

#[tokio::test]
async fn a_whole_rotation_moves_50000_records_to_v10_unchanged_and_two_operators_retire_v9() {
    let mut w = world(50_000, |_| {}).await;
    let new = w.prepare_and_verify().await;
    w.activate().await;
    w.db1_gets(&[9, 10], 9).await;
    let rotation = w.rotation().await;
    assert_eq!(
        (
            rotation.acknowledged_by.as_slice(),
            rotation.waiting_for.len()
        ),
        (&[DATABASE.to_owned()][..], 0)
    );
    w.switch().await;
    let drained = w.env.wait_rotation(RotationState::Drained, DRAIN).await;
    assert_eq!(drained.write_version, Some(v(10)));
    w.assert_all_at(10, &new.key);

    let plan: RetirePlan = w
        .env
        .operate("/v1/rotation/retire", retire(9, false))
        .await
        .json();
    assert_eq!(
        (
            plan.records_remaining,
            plan.approvals.len(),
            plan.approvals_needed,
            plan.executed
        ),
        (0, 0, 2, false)
    );
    assert!(
        w.rotation().await.retire_approvals.is_empty(),
        "a plan approves nothing"
    );

    let first: RetirePlan = w
        .env
        .operate("/v1/rotation/retire", retire(9, true))
        .await
        .json();
    assert_eq!(
        (first.approvals.as_slice(), first.executed),
        (&[OPERATOR.to_owned()][..], false)
    );
    assert_eq!(w.rotation().await.state, RotationState::Drained);
    w.db1_gets(&[9, 10], 10).await;

    let again = w
        .env
        .post_as(OPERATOR, "/v1/rotation/retire", retire(9, true))
        .await;
    assert_eq!(again.status, 409, "{}", again.body);
    assert_eq!(
        again.error().error,
        "olivia already approved retiring v9; a second, different operator must run the same command"
    );
    assert_eq!(w.rotation().await.state, RotationState::Drained);

    let second = w
        .env
        .post_as(SECOND_OPERATOR, "/v1/rotation/retire", retire(9, true))
        .await;
    assert_eq!(second.status, 200, "{}", second.body);
    let second: RetirePlan = second.json();
    assert_eq!(
        (second.approvals.as_slice(), second.executed),
        (&[OPERATOR.to_owned(), SECOND_OPERATOR.to_owned()][..], true)
    );
    // The state was copied aside before the destructive step, and only then.
    let snapshots: Vec<String> = std::fs::read_dir(w.env.state_dir.join("snapshots"))
        .expect("a snapshot directory")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(snapshots.len(), 1, "{snapshots:?}");
    assert!(
        snapshots[0].ends_with("-before-retire-v9.db"),
        "{snapshots:?}"
    );

    w.db1_gets(&[10], 10).await;
    let status = w.env.status().await;
    let states: Vec<(u32, VersionState)> = status
        .versions
        .iter()
        .map(|s| (s.version.number(), s.state))
        .collect();
    assert_eq!(
        states,
        [(9, VersionState::Retired), (10, VersionState::Active)]
    );
    assert_eq!(status.write_version, Some(v(10)));
    assert_eq!(World::rotation_of(&status).state, RotationState::Retired);
    w.assert_all_at(10, &new.key);

    // Neither key nor any share of the rotation reached the state directory
    // (store, WAL, snapshot), the daemon's log or the audit log.
    let mut secrets: Vec<(String, Vec<u8>)> = Vec::new();
    for (what, key) in [("v9 key", &w.v9), ("v10 key", &new.key)] {
        secrets.extend(
            encodings(&key_bytes(key))
                .into_iter()
                .map(|e| (what.to_owned(), e)),
        );
    }
    for line in &new.lines {
        secrets.extend(
            encodings(&share_data(line))
                .into_iter()
                .map(|e| ("v10 share".to_owned(), e)),
        );
    }
    let mut places: Vec<(String, Vec<u8>)> = files_under(&w.env.state_dir)
        .into_iter()
        .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
        .collect();
    places.push(("log".into(), w.env.log_text().into_bytes()));
    let audit = serde_json::to_vec(&w.audit().await).unwrap();
    places.push(("audit log".into(), audit));
    assert_absent(&places, &secrets);

    // Nor does the running daemon hold v9's key or shares once it retired v9.
    if can_read_memory() {
        let mut v9: Vec<(String, Vec<u8>)> = encodings(&key_bytes(&w.v9))
            .into_iter()
            .map(|e| ("v9 key".to_owned(), e))
            .collect();
        for line in &w.v9_lines {
            v9.extend(
                encodings(&share_data(line))
                    .into_iter()
                    .map(|e| ("v9 share".to_owned(), e)),
            );
        }
        assert_memory_clean(w.daemon.pid().unwrap(), &v9).await;
    } else {
        println!("skipping the memory scan: reading another process's memory needs root");
    }

    // After a restart v10 alone unseals; a v9 share is refused by name.
    assert!(w.daemon.stop());
    w.daemon = w.env.start().await;
    let alice = w
        .env
        .client("alice")
        .unseal(&[&w.v9_lines[0], &new.lines[0]])
        .await;
    assert_eq!(alice.status, 200, "{}", alice.body);
    let alice: UnsealResponse = alice.json();
    assert_eq!(
        alice.outcomes[0].reason.as_deref(),
        Some("v9 is retired; its shares are no longer used")
    );
    assert_eq!(alice.outcomes[0].refusal.as_deref(), Some("retired"));
    assert!(!alice.outcomes[0].accepted && alice.outcomes[1].accepted);
    let bob = w
        .env
        .unseal_with(&[("bob", vec![new.lines[1].clone()])])
        .await;
    assert_eq!((bob.sealed, bob.loaded.as_slice()), (false, &[v(10)][..]));
    w.db1_gets(&[10], 10).await;

    let log = w.audit().await;
    assert!(
        in_order(
            &actions(&log),
            &[
                "rotation_prepared",
                "share_fetched",
                "share_verified",
                "rotation_shares_verified",
                "rotation_activated",
                "rotation_consumer_acknowledged",
                "rotation_switched",
                "target_drained",
                "rotation_drained",
                "retire_approved",
                "version_retired",
            ]
        ),
        "{:?}",
        actions(&log)
    );
}

#[tokio::test]
async fn switch_waits_for_db1_and_retire_is_refused_while_a_record_is_at_v9_naming_count_and_target()
 {
    let w = world(300, |_| {}).await;
    let new = w.prepare_and_verify().await;
    w.activate().await;

    let early = w
        .env
        .post_as(OPERATOR, "/v1/rotation/switch", json!({}))
        .await;
    assert_eq!(early.status, 409, "{}", early.body);
    assert_eq!(
        early.error().error,
        "a consumer must fetch the keyring with both versions before the switch (their `keyholder hook` acknowledges it); waiting for: db1"
    );
    let rotation = w.rotation().await;
    assert_eq!(
        (rotation.state, rotation.waiting_for.as_slice()),
        (RotationState::DualRead, &[DATABASE.to_owned()][..])
    );
    assert_eq!(w.env.status().await.write_version, Some(v(9)));

    let too_soon = w
        .env
        .post_as(OPERATOR, "/v1/rotation/retire", retire(9, true))
        .await;
    assert_eq!(too_soon.status, 409, "{}", too_soon.body);
    assert_eq!(
        too_soon.error().error,
        "`retire` needs the rotation in drained; it is in dual_read; wait until `keyholder rotate status` shows drained"
    );

    w.db1_gets(&[9, 10], 9).await;
    w.switch().await;
    w.env.wait_rotation(RotationState::Drained, DRAIN).await;
    w.assert_all_at(10, &new.key);

    // A lagging application writes one more record with the old key.
    w.table.put(301, &w.v9, v(9), "late");
    let audit_before = w.audit().await.entries.len();
    for execute in [false, true] {
        let refused = w
            .env
            .post_as(OPERATOR, "/v1/rotation/retire", retire(9, execute))
            .await;
        assert_eq!(refused.status, 409, "{}", refused.body);
        assert_eq!(
            refused.error().error,
            "v9 still encrypts 1 record(s) (target customers-ssn: 1); it cannot be retired until a full scan finds none (`keyholder rotate resume` scans and moves them again)",
            "execute={execute}"
        );
    }
    let rotation = w.rotation().await;
    assert_eq!(rotation.state, RotationState::Drained);
    assert!(rotation.retire_approvals.is_empty());
    w.db1_gets(&[9, 10], 10).await;

    // `resume` from drained scans again and moves it: nothing is left at v9.
    w.env
        .operate("/v1/rotation/resume", serde_json::json!({}))
        .await;
    w.env.wait_rotation(RotationState::Drained, DRAIN).await;
    assert_eq!(w.table.counts(), BTreeMap::from([(10, 301)]));
    // The status counts the whole job; the audit counts each scan once.
    assert_eq!(w.rotation().await.rows_done, 301);
    assert_eq!(w.drained_moves().await, [300, 1]);
    let plan: RetirePlan = w
        .env
        .operate("/v1/rotation/retire", retire(9, false))
        .await
        .json();
    assert_eq!((plan.records_remaining, plan.executed), (0, false));
    assert!(plan.approvals.is_empty());
    assert!(
        plan.steps
            .iter()
            .any(|s| s.contains("two distinct operators")),
        "{plan:?}"
    );
    let log = w.audit().await;
    assert!(
        !actions(&log)[audit_before..]
            .iter()
            .any(|a| a.contains("retire")),
        "refusals and plans record no approval: {:?}",
        actions(&log)
    );

    let one: RetirePlan = w
        .env
        .operate("/v1/rotation/retire", retire(9, true))
        .await
        .json();
    assert_eq!(
        (one.approvals.as_slice(), one.executed),
        (&[OPERATOR.to_owned()][..], false)
    );
    assert_eq!(w.rotation().await.state, RotationState::Drained);
    w.db1_gets(&[9, 10], 10).await;
}

#[tokio::test]
async fn rollback_from_reencrypting_halfway_puts_every_record_back_at_v9_and_drops_v10() {
    let w = world(3000, |o| {
        o.batch_size = Some(50);
        o.rows_per_sec = Some(400);
    })
    .await;
    let new = w.prepare_and_verify().await;
    w.activate().await;
    w.db1_gets(&[9, 10], 9).await;
    w.switch().await;

    // Slow it down through the API once some records moved.
    let deadline = std::time::Instant::now() + DRAIN;
    while w.table.count_at(10) < 300 {
        assert!(std::time::Instant::now() < deadline, "{}", w.env.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pauses_before = w.env.log_text().matches(PAUSED).count();
    let paused: RotationStatus = w.env.operate("/v1/rotation/pause", json!({})).await.json();
    assert!(paused.paused);
    // Pausing stops the writes after the batch in flight.
    await_line_after(&w.env, PAUSED, pauses_before, || false).await;
    let at_pause = w.table.count_at(10);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(w.table.count_at(10), at_pause, "no batch while paused");
    let rotation = w.rotation().await;
    assert!(rotation.paused);
    assert!(
        rotation.rows_done > 0 && rotation.rows_remaining > 0,
        "{rotation:?}"
    );
    let resumed: RotationStatus = w.env.operate("/v1/rotation/resume", json!({})).await.json();
    assert!(!resumed.paused);
    let slow: RotationStatus = w
        .env
        .operate("/v1/rotation/throttle", json!({"rows_per_sec": 20}))
        .await
        .json();
    assert_eq!(slow.rows_per_sec_limit, 20);
    assert_eq!(slow.state, RotationState::Reencrypting);

    let at_v10 = w.table.count_at(10);
    let plan: RollbackPlan = w
        .env
        .operate("/v1/rotation/rollback", json!({"execute": false}))
        .await
        .json();
    assert_eq!((plan.from, plan.to, plan.executed), (v(10), v(9), false));
    assert!(
        plan.records_to_move >= at_v10 && plan.records_to_move < w.records as u64,
        "{plan:?}, {at_v10} at v10 just before"
    );
    assert_eq!(w.rotation().await.state, RotationState::Reencrypting);

    let approved: RollbackPlan = w
        .env
        .operate("/v1/rotation/rollback", json!({"execute": true}))
        .await
        .json();
    assert_eq!(
        (approved.approvals.as_slice(), approved.executed),
        (&[OPERATOR.to_owned()][..], false)
    );
    assert_eq!(w.rotation().await.state, RotationState::Reencrypting);
    let started: RollbackPlan = w
        .env
        .post_as(
            SECOND_OPERATOR,
            "/v1/rotation/rollback",
            json!({"execute": true}),
        )
        .await
        .json();
    assert!(started.executed);
    assert_eq!(started.approvals, [OPERATOR, SECOND_OPERATOR]);
    let counts = w.table.counts();
    assert!(counts[&9] > 0 && counts[&10] > 0, "halfway: {counts:?}");
    // The hook of a consumer picks up the keyring that writes v9 again.
    w.db1_gets(&[9, 10], 9).await;
    // Back to full speed for the way back.
    w.env
        .operate("/v1/rotation/throttle", json!({"rows_per_sec": 0}))
        .await;

    let idle = w.env.wait_rotation(RotationState::Idle, DRAIN).await;
    assert_eq!(idle.write_version, Some(v(9)));
    let rotation = World::rotation_of(&idle);
    assert_eq!((rotation.from, rotation.to), (None, None));
    let states: Vec<(u32, VersionState)> = idle
        .versions
        .iter()
        .map(|s| (s.version.number(), s.state))
        .collect();
    assert_eq!(
        states,
        [(9, VersionState::Active), (10, VersionState::Retired)]
    );
    w.db1_gets(&[9], 9).await;
    w.assert_all_at(9, &new.key);

    // The next rotation never reuses v10: by default it prepares v11.
    let again: RotationStatus = w
        .env
        .operate("/v1/rotation/prepare", json!({}))
        .await
        .json();
    assert_eq!(
        (again.state, again.from, again.to),
        (RotationState::Prepared, Some(v(9)), Some(v(11)))
    );
    assert_eq!(
        again.rows_per_sec_limit, 400,
        "the next rotation starts at the configured throttle, not the last one's"
    );

    let log = w.audit().await;
    assert!(
        in_order(
            &actions(&log),
            &[
                "rotation_switched",
                "rotation_paused",
                "rotation_resumed",
                "rotation_throttled",
                "rollback_approved",
                "rotation_rolled_back",
                "target_drained",
                "rollback_drained"
            ]
        ),
        "{:?}",
        actions(&log)
    );
}

#[tokio::test]
async fn a_rollback_needs_two_operators_and_a_paused_rotation_stays_paused_through_it() {
    let w = world(1000, |o| {
        o.batch_size = Some(50);
        o.rows_per_sec = Some(400);
    })
    .await;
    let new = w.prepare_and_verify().await;
    w.activate().await;
    w.db1_gets(&[9, 10], 9).await;
    w.switch().await;
    let deadline = std::time::Instant::now() + DRAIN;
    while w.table.count_at(10) < 100 {
        assert!(std::time::Instant::now() < deadline, "{}", w.env.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pauses_before = w.env.log_text().matches(PAUSED).count();
    w.env.operate("/v1/rotation/pause", json!({})).await;
    await_line_after(&w.env, PAUSED, pauses_before, || false).await;

    let plan: RollbackPlan = w
        .env
        .operate("/v1/rotation/rollback", json!({"execute": false}))
        .await
        .json();
    assert_eq!(
        (plan.approvals.len(), plan.approvals_needed, plan.executed),
        (0, 2, false)
    );
    assert!(
        plan.steps
            .iter()
            .any(|s| s.contains("two distinct operators"))
            && plan
                .steps
                .iter()
                .any(|s| s.contains("stays paused until `keyholder rotate resume`")),
        "{plan:?}"
    );
    let one: RollbackPlan = w
        .env
        .operate("/v1/rotation/rollback", json!({"execute": true}))
        .await
        .json();
    assert_eq!(
        (one.approvals.as_slice(), one.executed),
        (&[OPERATOR.to_owned()][..], false)
    );
    let again = w
        .env
        .post_as(OPERATOR, "/v1/rotation/rollback", json!({"execute": true}))
        .await;
    assert_eq!(again.status, 409, "{}", again.body);
    assert_eq!(
        again.error().error,
        "olivia already approved rolling back v10; a second, different operator must run the same command"
    );
    let rotation = w.rotation().await;
    assert_eq!(
        (rotation.state, rotation.paused),
        (RotationState::Reencrypting, true)
    );
    w.db1_gets(&[9, 10], 10).await;

    let started: RollbackPlan = w
        .env
        .post_as(
            SECOND_OPERATOR,
            "/v1/rotation/rollback",
            json!({"execute": true}),
        )
        .await
        .json();
    assert!(started.executed, "{started:?}");
    let rotation = w.rotation().await;
    assert_eq!(
        (rotation.state, rotation.paused),
        (RotationState::RollingBack, true),
        "the pause stays in force through the rollback"
    );
    w.db1_gets(&[9, 10], 9).await;
    let at_v9 = w.table.count_at(9);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        w.table.count_at(9),
        at_v9,
        "no record moves back while paused"
    );
    assert!(at_v9 < w.records as u64, "some records were at v10");

    w.env.operate("/v1/rotation/resume", json!({})).await;
    w.env.wait_rotation(RotationState::Idle, DRAIN).await;
    w.assert_all_at(9, &new.key);
    let log = w.audit().await;
    assert!(
        in_order(
            &actions(&log),
            &[
                "rotation_paused",
                "rollback_approved",
                "rotation_rolled_back",
                "rotation_resumed",
                "rollback_drained"
            ]
        ),
        "{:?}",
        actions(&log)
    );
}

#[tokio::test]
async fn retire_waits_for_a_third_verified_keyholder_and_a_retired_versions_share_is_refused() {
    // The default rotation.min_verified: threshold + 1 = all three.
    let w = world(50, |o| o.extra_toml.clear()).await;
    let new = w.prepare_and_verify().await;
    w.activate().await;
    w.db1_gets(&[9, 10], 9).await;
    w.switch().await;
    w.env.wait_rotation(RotationState::Drained, DRAIN).await;
    w.assert_all_at(10, &new.key);

    for execute in [false, true] {
        let refused = w
            .env
            .post_as(OPERATOR, "/v1/rotation/retire", retire(9, execute))
            .await;
        assert_eq!(refused.status, 409, "{}", refused.body);
        assert_eq!(
            refused.error().error,
            "2 keyholder(s) verified their share of v10 (alice, bob); retiring v9 needs 3 (rotation.min_verified), so that one absent keyholder cannot stop an unseal; waiting for: carol (`keyholder share verify`)"
        );
    }
    assert!(w.rotation().await.retire_approvals.is_empty());

    // carol, back from leave, can still prove her share after the drain.
    let line = w.env.fetch_new_share("carol", 10).await;
    w.env.verify_new_share("carol", &line).await;
    assert_eq!(w.rotation().await.verified_by, ["alice", "bob", "carol"]);
    let plan: RetirePlan = w
        .env
        .operate("/v1/rotation/retire", retire(9, false))
        .await
        .json();
    assert!(
        plan.steps.iter().any(|s| s
            == "3 of 3 keyholder(s) verified their share of v10 (3 needed, rotation.min_verified)"),
        "{plan:?}"
    );
    w.env.operate("/v1/rotation/retire", retire(9, true)).await;
    let done: RetirePlan = w
        .env
        .post_as(SECOND_OPERATOR, "/v1/rotation/retire", retire(9, true))
        .await
        .json();
    assert!(done.executed);

    let audit_before = w.audit().await.entries.len();
    let fetch = w
        .env
        .client("alice")
        .get("/v1/rotation/share?version=9")
        .await;
    assert_eq!(fetch.status, 409, "{}", fetch.body);
    assert_eq!(
        fetch.error().error,
        "v9 is retired; its shares are no longer handed out (`keyholder status` shows the live versions)"
    );
    assert_eq!(
        w.audit().await.entries.len(),
        audit_before,
        "nothing was handed out"
    );
    // The live version's share still is.
    w.env.fetch_new_share("alice", 10).await;
}

/// The "keyring loaded" lines of the log since byte `from`.
fn loaded_lines(log: &str, from: usize) -> Vec<String> {
    log[from..]
        .lines()
        .filter(|l| l.contains("keyring loaded"))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn the_expensify_regression_v10_submitted_before_v9_after_a_restart_loads_both_in_order_writing_v9()
 {
    let mut w = world(200, |_| {}).await;
    let new = w.prepare_and_verify().await;
    w.activate().await;
    assert!(w.daemon.stop(), "a clean stop");
    w.daemon = w.env.start().await;
    let log_start = w.env.log_text().len();

    // One request each, the v10 line first.
    let mut last = None;
    for (i, name) in ["alice", "bob"].into_iter().enumerate() {
        let answer = w
            .env
            .client(name)
            .unseal(&[&new.lines[i], &w.v9_lines[i]])
            .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let answer: UnsealResponse = answer.json();
        assert!(answer.all_accepted(), "{answer:?}");
        let versions: Vec<Option<KeyVersion>> = answer.outcomes.iter().map(|o| o.version).collect();
        assert_eq!(
            versions,
            [Some(v(10)), Some(v(9))],
            "outcomes in request order"
        );
        last = Some(answer);
    }
    let last = last.unwrap();
    assert!(!last.sealed);
    assert_eq!(last.loaded, [v(9), v(10)]);

    let status = w.env.status().await;
    let versions: Vec<(u32, VersionState, bool)> = status
        .versions
        .iter()
        .map(|s| (s.version.number(), s.state, s.loaded))
        .collect();
    assert_eq!(
        versions,
        [
            (9, VersionState::Active, true),
            (10, VersionState::Active, true)
        ]
    );
    assert_eq!(status.write_version, Some(v(9)), "the state says v9 writes");
    assert_eq!(World::rotation_of(&status).state, RotationState::DualRead);
    w.db1_gets(&[9, 10], 9).await;

    let log = w.env.log_text();
    let loaded = loaded_lines(&log, log_start);
    assert_eq!(loaded.len(), 1, "{loaded:?}");
    let line = &loaded[0];
    let (at9, at10) = (line.find("v9(kcv").unwrap(), line.find("v10(kcv").unwrap());
    assert!(at9 < at10 && line.contains("write_version=v9"), "{line}");
    let last_share = log[log_start..].rfind("unseal share").unwrap();
    assert!(
        log[log_start..].find("keyring loaded").unwrap() > last_share,
        "the keyring is logged after the shares were processed:\n{}",
        &log[log_start..]
    );
}

#[tokio::test]
async fn before_activate_a_restart_unseals_with_v9_alone_and_takes_v10_shares_when_given() {
    let mut w = world(200, |_| {}).await;
    let new = w.prepare_and_verify().await;

    assert!(w.daemon.stop());
    w.daemon = w.env.start().await;
    let answer = w.unseal(None).await;
    assert_eq!(answer.loaded, [v(9)], "v10 is optional until it is live");
    let status = w.env.status().await;
    assert_eq!(status.write_version, Some(v(9)));
    assert_eq!(
        World::rotation_of(&status).state,
        RotationState::SharesVerified
    );
    let refused = w
        .env
        .post_as(OPERATOR, "/v1/rotation/activate", json!({}))
        .await;
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert_eq!(
        refused.error().error,
        "v10's key is not held (the daemon restarted since prepare); its keyholders must run `keyholder share verify` again"
    );

    assert!(w.daemon.stop());
    w.daemon = w.env.start().await;
    let mut last = None;
    for (i, name) in ["alice", "bob"].into_iter().enumerate() {
        let answer = w
            .env
            .unseal_with(&[(name, vec![new.lines[i].clone(), w.v9_lines[i].clone()])])
            .await;
        last = Some(answer);
    }
    assert_eq!(last.unwrap().loaded, [v(9), v(10)]);
    w.activate().await;
    w.db1_gets(&[9, 10], 9).await;
}

/// The worker's checkpoint of the forward job, read from the state store
/// while the daemon is down: records done so far.
/// Waits until the daemon's log holds more than `before` copies of `line`,
/// or `done()`.
async fn await_line_after(env: &Env, line: &str, before: usize, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + DRAIN;
    while env.log_text().matches(line).count() == before && !done() {
        assert!(std::time::Instant::now() < deadline, "{}", env.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn checkpoint_done(env: &Env) -> u64 {
    let conn = rusqlite::Connection::open_with_flags(
        env.state_dir.join("state.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let text: String = conn
        .query_row(
            "SELECT state FROM checkpoints WHERE target = 'customers-ssn' AND direction = 'v9->v10'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let checkpoint: serde_json::Value = serde_json::from_str(&text).unwrap();
    checkpoint["records_done"].as_u64().unwrap()
}

#[tokio::test]
async fn sigkill_after_every_transition_and_five_times_while_reencrypting_resumes_where_it_was() {
    const RECORDS: i64 = 3000;
    const BATCH: u64 = 50;
    // Slow enough that the crashes land mid-way: each start of the worker
    // writes its first batch at once, then 300 rows/s.
    let mut w = world(RECORDS, |o| {
        o.batch_size = Some(BATCH as u32);
        o.rows_per_sec = Some(300);
    })
    .await;

    // Prepared: the new key was only in memory.
    let prepared: RotationStatus = w
        .env
        .operate("/v1/rotation/prepare", json!({}))
        .await
        .json();
    assert_eq!(prepared.state, RotationState::Prepared);
    w.crash_and_restart().await;
    assert_eq!(w.unseal(None).await.loaded, [v(9)]);
    assert_eq!(w.rotation().await.state, RotationState::Prepared);
    let lines = w.verify_shares().await;
    let key = w.env.rebuild_key(10, &[&lines[0], &lines[1]]).await;
    let new = NewShares { lines, key };
    assert_eq!(w.rotation().await.state, RotationState::SharesVerified);
    let status = w.env.status().await;
    assert!(
        status.versions.iter().all(|s| s.loaded),
        "share verify rebuilt v10: {status:?}"
    );

    // SharesVerified.
    w.crash_and_restart().await;
    assert_eq!(w.unseal(Some(&new)).await.loaded, [v(9), v(10)]);
    assert_eq!(w.rotation().await.state, RotationState::SharesVerified);
    w.activate().await;

    // DualRead: both versions are needed to unseal now.
    w.crash_and_restart().await;
    let partial = w
        .env
        .unseal_with(&[
            ("alice", vec![w.v9_lines[0].clone()]),
            ("bob", vec![w.v9_lines[1].clone()]),
        ])
        .await;
    assert!(partial.sealed, "v10 is live: {partial:?}");
    w.unseal(Some(&new)).await;
    let rotation = w.rotation().await;
    assert_eq!(
        (rotation.state, rotation.waiting_for.as_slice()),
        (RotationState::DualRead, &[DATABASE.to_owned()][..])
    );
    w.db1_gets(&[9, 10], 9).await;
    w.switch().await;

    // Reencrypting: five crashes at random points, each checked while the
    // daemon is down. The last point leaves 40% of the records: after each
    // restart the worker moves a batch at once and keeps going while the test
    // unseals and fetches, and on a loaded machine those requests are slow;
    // the crash must still land before the end.
    let mut rng = rand::rng();
    let mut points: Vec<u64> = (0..5)
        .map(|_| rng.random_range(RECORDS as u64 / 10..RECORDS as u64 * 3 / 5))
        .collect();
    points.sort_unstable();
    let mut last_checkpoint = 0;
    for point in points {
        let deadline = std::time::Instant::now() + DRAIN;
        while w.table.count_at(10) < point {
            assert!(std::time::Instant::now() < deadline, "{}", w.env.log_text());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        w.daemon.kill();
        let counts = w.table.counts();
        assert!(
            counts.get(&9).copied().unwrap_or(0) > 0,
            "killed before the end: {counts:?}\n{}",
            w.env.log_text()
        );
        assert_eq!(counts.values().sum::<u64>(), RECORDS as u64, "{counts:?}");
        assert_eq!(
            w.table.digest(&w.keys(&new.key)),
            Table::expected_digest(RECORDS),
            "nothing lost at the crash"
        );
        let done = checkpoint_done(&w.env);
        assert!(done >= last_checkpoint, "the checkpoint never goes back");
        last_checkpoint = done;
        w.daemon = w.env.start().await;
        w.unseal(Some(&new)).await;
        let rotation = w.rotation().await;
        assert!(
            matches!(
                rotation.state,
                RotationState::Reencrypting | RotationState::Drained
            ),
            "{rotation:?}"
        );
        // The hook of a restarted consumer fetches again.
        w.db1_gets(&[9, 10], 10).await;
    }
    assert!(last_checkpoint > 0, "checkpoints were written");

    // Sealing stops the worker (after its batch in flight); unsealing
    // resumes it.
    const STOPPED: &str = "re-encryption stopped; its checkpoint stays";
    let stops_before = w.env.log_text().matches(STOPPED).count();
    let sealed = w.env.client(OPERATOR).post("/v1/seal", &json!({})).await;
    assert_eq!(sealed.status, 200, "{}", sealed.body);
    // (On a slow machine the pass may have ended before the seal.)
    await_line_after(&w.env, STOPPED, stops_before, || w.table.count_at(9) == 0).await;
    let at_seal = w.table.counts();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(w.table.counts(), at_seal, "no batch while sealed");
    w.unseal(Some(&new)).await;
    w.env.wait_rotation(RotationState::Drained, DRAIN).await;
    w.assert_all_at(10, &new.key);

    // Drained survives a crash too.
    w.crash_and_restart().await;
    w.unseal(Some(&new)).await;
    assert_eq!(w.rotation().await.state, RotationState::Drained);
    w.assert_all_at(10, &new.key);
    let moved: u64 = w.drained_moves().await.iter().sum();
    // A crash between a batch's commit and its checkpoint leaves that batch
    // to be found already moved, so it is not counted twice: at most one
    // batch per crash is missing from the total. Passes that started over
    // would count only what moved after the last crash.
    assert!(
        moved <= RECORDS as u64 && moved >= RECORDS as u64 - 5 * BATCH,
        "the passes resumed from their checkpoints: {moved} moved"
    );
}

#[tokio::test]
async fn a_throttle_set_through_the_api_survives_a_kill_and_the_job_resumes_at_it_showing_its_checkpoint()
 {
    let mut w = world(3000, |o| {
        o.batch_size = Some(50);
        o.rows_per_sec = Some(200);
    })
    .await;
    let new = w.prepare_and_verify().await;
    w.activate().await;
    w.db1_gets(&[9, 10], 9).await;
    w.switch().await;
    let set: RotationStatus = w
        .env
        .operate(
            "/v1/rotation/throttle",
            json!({"rows_per_sec": 1000, "batch_size": 25}),
        )
        .await
        .json();
    assert_eq!((set.rows_per_sec_limit, set.batch_size), (1000, 25));
    let deadline = std::time::Instant::now() + DRAIN;
    while w.table.count_at(10) < 300 {
        assert!(std::time::Instant::now() < deadline, "{}", w.env.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    w.crash_and_restart().await;
    // Sealed, before any key is back: the stored throttle, not the
    // configured 200 rows/s, and the job's figures from its checkpoint.
    let restarted = w.rotation().await;
    assert_eq!(restarted.state, RotationState::Reencrypting);
    let moved = w.table.count_at(10);
    assert!(
        restarted.rows_done > 0 && restarted.rows_done <= moved,
        "{} done by the checkpoint, {moved} at v10",
        restarted.rows_done
    );
    assert_eq!(
        (restarted.rows_per_sec_limit, restarted.batch_size),
        (1000, 25),
        "{}",
        w.env.log_text()
    );
    let unsealed = w.unseal(Some(&new)).await;
    assert!(!unsealed.sealed, "{unsealed:?}");
    let drained = w.env.wait_rotation(RotationState::Drained, DRAIN).await;
    let rotation = World::rotation_of(&drained);
    assert_eq!(
        (rotation.rows_per_sec_limit, rotation.batch_size),
        (1000, 25),
        "the job resumed at the stored throttle"
    );
    assert_eq!(w.table.count_at(9), 0);
}

/// An approval counts only while its operator could give it again: when a
/// reload removes the operator who approved a rollback, a second operator's
/// `--execute` is the first approval again, and the rollback needs a third.
#[tokio::test]
async fn a_rollback_approval_lapses_when_a_reload_removes_its_operator() {
    let env = Env::new(EnvOptions {
        extra_toml:
            "\n[[principals]]\nname = \"omar\"\nroles = [\"operator\"]\ncert_identity = \"omar\"\n"
                .to_owned(),
        ..EnvOptions::default()
    });
    env.pki.client("omar");
    let _daemon = env.start().await;
    env.unseal_with(&[
        ("alice", vec![env.share_line("alice", 1)]),
        ("bob", vec![env.share_line("bob", 1)]),
    ])
    .await;
    env.operate("/v1/rotation/prepare", json!({})).await;
    let approved: RollbackPlan = env
        .operate("/v1/rotation/rollback", json!({"execute": true}))
        .await
        .json();
    assert_eq!(approved.approvals, [OPERATOR]);

    let text = std::fs::read_to_string(&env.config).unwrap();
    let block = format!(
        "\n[[principals]]\nname = \"{OPERATOR}\"\nroles = [\"operator\"]\ncert_identity = \"{OPERATOR}\"\n"
    );
    assert!(text.contains(&block), "{text}");
    std::fs::write(&env.config, text.replacen(&block, "", 1)).unwrap();
    let reloaded = env
        .post_as(SECOND_OPERATOR, "/v1/admin/reload", json!({}))
        .await;
    assert_eq!(reloaded.status, 200, "{}", reloaded.body);

    let second: RollbackPlan = env
        .post_as(
            SECOND_OPERATOR,
            "/v1/rotation/rollback",
            json!({"execute": true}),
        )
        .await
        .json();
    assert_eq!(
        (second.approvals.as_slice(), second.executed),
        (&[SECOND_OPERATOR.to_owned()][..], false),
        "{OPERATOR}'s approval lapsed with her operator role"
    );
    let status: keyholder_api::Status = env.client(SECOND_OPERATOR).get("/v1/status").await.json();
    let state = status.rotation.map(|r| r.state);
    assert_eq!(state, Some(RotationState::Prepared));
    let third: RollbackPlan = env
        .post_as("omar", "/v1/rotation/rollback", json!({"execute": true}))
        .await
        .json();
    assert!(third.executed, "{third:?}");
}

/// A consistent copy of the running daemon's state store (what a nightly
/// backup takes).
fn back_up_state(env: &Env, to: &std::path::Path) {
    let conn = rusqlite::Connection::open_with_flags(
        env.state_dir.join("state.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    conn.execute("VACUUM INTO ?1", [to.display().to_string()])
        .unwrap();
}

/// Puts the backup `from` in place of the (stopped) daemon's state store.
fn restore_state(env: &Env, from: &std::path::Path) {
    let file = env.state_dir.join("state.db");
    for stale in ["state.db-wal", "state.db-shm"] {
        let _ = std::fs::remove_file(env.state_dir.join(stale));
    }
    std::fs::copy(from, &file).unwrap();
}

#[tokio::test]
async fn a_state_store_restored_from_before_prepare_while_records_are_at_v10_keeps_the_daemon_sealed()
 {
    let mut w = world(300, |_| {}).await;
    let backups = tempfile::tempdir().unwrap();
    let before_prepare = backups.path().join("before-prepare.db");
    back_up_state(&w.env, &before_prepare);
    let new = w.prepare_and_verify().await;
    let after_verify = backups.path().join("after-verify.db");
    back_up_state(&w.env, &after_verify);
    w.activate().await;
    w.db1_gets(&[9, 10], 9).await;
    w.switch().await;
    w.env.wait_rotation(RotationState::Drained, DRAIN).await;
    w.assert_all_at(10, &new.key);

    // The state disk is lost; the newest backup is from before prepare (or
    // from before activate): the data is at v10 all the same.
    for (backup, known) in [
        (&before_prepare, "a version this state store never made"),
        (&after_verify, "(v10 is shares_verified)"),
    ] {
        assert!(w.daemon.stop());
        restore_state(&w.env, backup);
        w.daemon = w.env.start().await;
        let mut answer = None;
        for (i, name) in ["alice", "bob"].into_iter().enumerate() {
            answer = Some(w.env.client(name).unseal(&[w.v9_lines[i].as_str()]).await);
        }
        let answer = answer.unwrap();
        // The old daemon unsealed with v9 alone and handed db1 a keyring
        // without v10, the version every record is at.
        assert_eq!(answer.status, 422, "{known}: {}", answer.body);
        let message = answer.error().error;
        assert!(
            message.contains("records at v10")
                && message.contains("customers.ssn id=")
                && message.contains(known)
                && message.contains("restore the state store from a backup taken after"),
            "{known}: {message}"
        );
        assert!(w.env.status().await.sealed, "{known}");
        let fetch = w.env.client(DATABASE).get("/v1/keyring").await;
        assert_eq!(fetch.status, 503, "{known}: {}", fetch.body);
        // The records were left alone.
        w.assert_all_at(10, &new.key);
    }
}
