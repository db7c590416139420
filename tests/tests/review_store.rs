//! A state store edited or damaged by hand: each value the daemon reads
//! from it is refused by name ("state store is corrupt: ..."), never a
//! panic.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use keyholder_api::{RotationState, RotationStatus};
use keyholder_tests::{Env, EnvOptions};
use serde_json::json;

/// A daemon at v1, unsealed, its rotation to v2 in dual read; then stopped.
async fn dual_read() -> Env {
    let env = Env::new(EnvOptions::default());
    let mut daemon = env.start().await;
    env.unseal_with(&[
        ("alice", vec![env.share_line("alice", 1)]),
        ("bob", vec![env.share_line("bob", 1)]),
    ])
    .await;
    env.operate("/v1/rotation/prepare", json!({})).await;
    for name in ["alice", "bob"] {
        let line = env.fetch_new_share(name, 2).await;
        env.verify_new_share(name, &line).await;
    }
    let active: RotationStatus = env.operate("/v1/rotation/activate", json!({})).await.json();
    assert_eq!(active.state, RotationState::DualRead);
    assert!(daemon.stop());
    env
}

fn edit_state(env: &Env, sql: &str) {
    let conn = rusqlite::Connection::open(env.state_dir.join("state.db")).unwrap();
    assert_eq!(conn.execute(sql, []).unwrap(), 1, "{sql}");
}

#[tokio::test]
async fn a_rotation_row_that_lost_its_next_version_is_refused_at_start_by_name_not_a_panic() {
    let env = dual_read().await;
    // The JSON still parses: only what it says is impossible (dual read
    // of which new version?).
    for (edit, named) in [
        (
            "UPDATE rotation SET state = json_set(state, '$.next', json('null'))",
            "rotation state: dual_read names no next version",
        ),
        (
            "UPDATE rotation SET state = json_set(state, '$.next', 1)",
            "rotation state: its next version v1 is not above its current v1",
        ),
    ] {
        edit_state(&env, edit);
        let out = env.keyholderd(&["run"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        // The old daemon panicked ('every state past idle and retired has a
        // next version'), exit 101, or ran a rotation from v1 to v1.
        assert!(!stderr.contains("panicked"), "{edit}: {stderr}");
        assert_eq!(out.status.code(), Some(65), "{edit}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "state store is corrupt: {named}; restore it from a backup"
            )),
            "{edit}: {stderr}"
        );
    }

    // Put back, the daemon starts and the rotation is where it was.
    edit_state(
        &env,
        "UPDATE rotation SET state = json_set(state, '$.next', 2)",
    );
    let _daemon = env.start().await;
    let status = env.status().await;
    assert_eq!(
        status.rotation.map(|r| r.state),
        Some(RotationState::DualRead)
    );
}
