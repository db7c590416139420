//! Retire and the targets a rotation moved: a target (or a column of one)
//! taken out of the config after the switch (a restart with a shorter
//! `[[targets]]` list) still holds records the old key encrypted, so the old
//! key must not be retired until it is scanned again.
//!
//! Build the daemon first: `cargo build -p keyholder-server`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use crypto_core::envelope;
use keyholder_api::{RetirePlan, RotationState, Status};
use keyholder_tests::daemon::{DATABASE, OPERATOR, SECOND_OPERATOR};
use keyholder_tests::records::Table;
use keyholder_tests::rotation::v;
use keyholder_tests::{Env, EnvOptions};
use serde_json::json;

/// Generous: a debug build on two shared cores.
const DRAIN: Duration = Duration::from_secs(150);

/// The `[[targets]]` entry `Env` writes for `table`.
fn target_toml(table: &Table) -> String {
    let t = &table.spec;
    format!(
        "\n[[targets]]\nname = \"{}\"\nstore = \"sqlite://{}\"\ntable = \"{}\"\nprimary_key = \"{}\"\ncolumns = [\"{}\"]\naad = \"none\"\n",
        t.name,
        t.db.display(),
        t.table,
        t.primary_key,
        t.column
    )
}

/// Rewrites the config without `table`'s `[[targets]]` entry (or with it
/// again, at the end), as an operator editing it between two runs would.
fn remove_target(config: &Path, table: &Table) {
    let text = std::fs::read_to_string(config).unwrap();
    let entry = target_toml(table);
    assert!(text.contains(&entry), "{text}");
    std::fs::write(config, text.replace(&entry, "")).unwrap();
}

fn put_back_target(config: &Path, table: &Table) {
    let mut text = std::fs::read_to_string(config).unwrap();
    // Before the first section after the targets.
    let at = text.find("\n[rotation]").unwrap();
    text.insert_str(at, &target_toml(table));
    std::fs::write(config, text).unwrap();
}

fn retire(execute: bool) -> serde_json::Value {
    json!({"version": 9, "execute": execute})
}

#[tokio::test]
async fn a_target_taken_out_of_the_config_after_the_switch_keeps_v9_from_being_retired() {
    let data = tempfile::tempdir().unwrap();
    let customers = Table::create(&data.path().join("app.db"));
    let mut orders = Table::create(&data.path().join("orders.db"));
    orders.spec.name = "orders-ssn".into();
    let env = Env::new(EnvOptions {
        targets: vec![customers.spec.clone(), orders.spec.clone()],
        first_version: Some(9),
        consumers: vec![DATABASE.to_owned()],
        extra_toml: "\n[rotation]\nmin_verified = 2\n".to_owned(),
        ..EnvOptions::default()
    });
    let mut daemon = env.start().await;
    let v9_lines = [env.share_line("alice", 9), env.share_line("bob", 9)];
    let v9 = env.rebuild_key(9, &[&v9_lines[0], &v9_lines[1]]).await;
    customers.seed(&v9, v(9), 200);
    orders.seed(&v9, v(9), 100);
    let unsealed = env
        .unseal_with(&[
            ("alice", vec![v9_lines[0].clone()]),
            ("bob", vec![v9_lines[1].clone()]),
        ])
        .await;
    assert!(!unsealed.sealed, "{unsealed:?}");

    env.operate("/v1/rotation/prepare", json!({})).await;
    let mut v10_lines = Vec::new();
    for name in ["alice", "bob"] {
        let line = env.fetch_new_share(name, 10).await;
        env.verify_new_share(name, &line).await;
        v10_lines.push(line);
    }
    env.operate("/v1/rotation/activate", json!({})).await;
    env.database_keyring().await;
    env.operate("/v1/rotation/switch", json!({})).await;
    assert_eq!(env.database_keyring().await.write_version(), v(10));
    env.wait_rotation(RotationState::Drained, DRAIN).await;
    assert_eq!(customers.counts(), BTreeMap::from([(10, 200)]));
    assert_eq!(orders.counts(), BTreeMap::from([(10, 100)]));

    // A lagging writer puts one more record at v9 into orders, and the
    // daemon is restarted with orders taken out of its config.
    orders.put(101, &v9, v(9), "late");
    daemon.kill();
    remove_target(&env.config, &orders);
    daemon = env.start().await;
    let lines = |i: usize| vec![v9_lines[i].clone(), v10_lines[i].clone()];
    let unsealed = env
        .unseal_with(&[("alice", lines(0)), ("bob", lines(1))])
        .await;
    assert!(!unsealed.sealed, "{unsealed:?}");
    let status: Status = env.status().await;
    assert_eq!(
        status.rotation.as_ref().map(|r| r.state),
        Some(RotationState::Drained)
    );

    let refusal = "v9 cannot be retired: target orders-ssn was part of this rotation and is no longer in the config, so no scan can show it holds no record at v9; put it back in [[targets]] and restart keyholderd (if its data is gone for good, an empty table or column of that name will do)";
    for (operator, execute) in [(OPERATOR, false), (OPERATOR, true), (SECOND_OPERATOR, true)] {
        let answer = env
            .post_as(operator, "/v1/rotation/retire", retire(execute))
            .await;
        assert_eq!(answer.status, 409, "{operator} {execute}: {}", answer.body);
        assert_eq!(answer.error().error, refusal);
    }
    let status = env.status().await;
    assert_eq!(
        status.rotation.as_ref().map(|r| r.state),
        Some(RotationState::Drained)
    );
    assert_eq!(orders.count_at(9), 1, "the late record still needs v9");

    // `resume` scans again, but only customers: the job is not called
    // drained either.
    env.operate("/v1/rotation/resume", json!({})).await;
    let stopped = env
        .wait_for("the job to stop", DRAIN, |s| {
            s.rotation.as_ref().is_some_and(|r| r.last_error.is_some())
        })
        .await;
    let rotation = stopped.rotation.unwrap();
    assert_eq!(rotation.state, RotationState::Reencrypting);
    assert_eq!(
        rotation.last_error.as_deref(),
        Some(
            "v9 cannot be called drained: target orders-ssn was part of this rotation and is no longer in the config, so no scan can show it holds no record at v9; put it back in [[targets]] and restart keyholderd (if its data is gone for good, an empty table or column of that name will do)"
        )
    );

    // With orders back, the job goes on after the unseal, finds the late
    // record, moves it, and v9 retires.
    daemon.stop();
    put_back_target(&env.config, &orders);
    let _daemon = env.start().await;
    let unsealed = env
        .unseal_with(&[("alice", lines(0)), ("bob", lines(1))])
        .await;
    assert!(!unsealed.sealed, "{unsealed:?}");
    env.wait_rotation(RotationState::Drained, DRAIN).await;
    assert_eq!(orders.counts(), BTreeMap::from([(10, 101)]));
    assert_eq!(customers.counts(), BTreeMap::from([(10, 200)]));
    env.operate("/v1/rotation/retire", retire(true)).await;
    let plan: RetirePlan = env
        .post_as(SECOND_OPERATOR, "/v1/rotation/retire", retire(true))
        .await
        .json();
    assert!(plan.executed, "{plan:?}");
}

#[tokio::test]
async fn a_column_taken_out_of_the_config_after_the_switch_keeps_v9_from_being_retired() {
    let data = tempfile::tempdir().unwrap();
    let mut customers = Table::create(&data.path().join("app.db"));
    rusqlite::Connection::open(&customers.spec.db)
        .unwrap()
        .execute_batch("ALTER TABLE customers ADD COLUMN dob TEXT")
        .unwrap();
    // Env writes `columns = ["<column>"]`: two columns.
    customers.spec.column = "ssn\", \"dob".into();
    let env = Env::new(EnvOptions {
        targets: vec![customers.spec.clone()],
        first_version: Some(9),
        consumers: vec![DATABASE.to_owned()],
        extra_toml: "\n[rotation]\nmin_verified = 2\n".to_owned(),
        ..EnvOptions::default()
    });
    let mut daemon = env.start().await;
    let v9_lines = [env.share_line("alice", 9), env.share_line("bob", 9)];
    let v9 = env.rebuild_key(9, &[&v9_lines[0], &v9_lines[1]]).await;
    customers.seed(&v9, v(9), 100);
    let set_dob = |id: i64, version: u32, key: &crypto_core::Key| {
        let record = envelope::seal(key, v(version), b"1970-01-01", b"");
        rusqlite::Connection::open(&customers.spec.db)
            .unwrap()
            .execute(
                "UPDATE customers SET dob = ?1 WHERE id = ?2",
                rusqlite::params![record, id],
            )
            .unwrap();
    };
    for id in 1..=20 {
        set_dob(id, 9, &v9);
    }
    let unsealed = env
        .unseal_with(&[
            ("alice", vec![v9_lines[0].clone()]),
            ("bob", vec![v9_lines[1].clone()]),
        ])
        .await;
    assert!(!unsealed.sealed, "{unsealed:?}");

    env.operate("/v1/rotation/prepare", json!({})).await;
    let mut v10_lines = Vec::new();
    for name in ["alice", "bob"] {
        let line = env.fetch_new_share(name, 10).await;
        env.verify_new_share(name, &line).await;
        v10_lines.push(line);
    }
    env.operate("/v1/rotation/activate", json!({})).await;
    env.database_keyring().await;
    env.operate("/v1/rotation/switch", json!({})).await;
    assert_eq!(env.database_keyring().await.write_version(), v(10));
    env.wait_rotation(RotationState::Drained, DRAIN).await;
    assert_eq!(customers.counts(), BTreeMap::from([(10, 100)]));

    // A lagging writer puts a dob at v9, and the daemon is restarted with
    // dob taken out of the target's columns.
    set_dob(1, 9, &v9);
    daemon.kill();
    let text = std::fs::read_to_string(&env.config).unwrap();
    let both = "columns = [\"ssn\", \"dob\"]";
    assert!(text.contains(both), "{text}");
    std::fs::write(&env.config, text.replace(both, "columns = [\"ssn\"]")).unwrap();
    let _daemon = env.start().await;
    let lines = |i: usize| vec![v9_lines[i].clone(), v10_lines[i].clone()];
    let unsealed = env
        .unseal_with(&[("alice", lines(0)), ("bob", lines(1))])
        .await;
    assert!(!unsealed.sealed, "{unsealed:?}");

    for (operator, execute) in [(OPERATOR, false), (OPERATOR, true), (SECOND_OPERATOR, true)] {
        let answer = env
            .post_as(operator, "/v1/rotation/retire", retire(execute))
            .await;
        assert_eq!(answer.status, 409, "{operator} {execute}: {}", answer.body);
        assert_eq!(
            answer.error().error,
            "v9 cannot be retired: column dob of target customers-ssn was part of this rotation and is no longer in the config, so no scan can show it holds no record at v9; put it back in [[targets]] and restart keyholderd (if its data is gone for good, an empty table or column of that name will do)"
        );
    }
    let status: Status = env.status().await;
    assert_eq!(
        status.rotation.as_ref().map(|r| r.state),
        Some(RotationState::Drained)
    );
}
