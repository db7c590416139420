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

/// A rotation row with a field this build does not know is what a newer
/// keyholderd sharing the store (a rolling upgrade of a cluster) writes: the
/// node says to upgrade, not to restore the store from a backup (which
/// would undo the rotation's steps).
#[tokio::test]
async fn a_rotation_row_written_by_a_newer_keyholderd_says_to_upgrade_not_to_restore() {
    let env = dual_read().await;
    edit_state(
        &env,
        "UPDATE rotation SET state = json_set(state, '$.from_the_future', 1)",
    );
    let out = env.keyholderd(&["run"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(65), "{stderr}");
    assert!(
        stderr.contains(
            "the state store's rotation state has a field this keyholderd does not know (`from_the_future`): a newer keyholderd sharing the store wrote it; upgrade this node"
        ),
        "{stderr}"
    );
    // The old daemon said the store was corrupt and to restore a backup.
    assert!(!stderr.contains("restore it from a backup"), "{stderr}");

    edit_state(
        &env,
        "UPDATE rotation SET state = json_remove(state, '$.from_the_future')",
    );
    let _daemon = env.start().await;
    assert_eq!(
        env.status().await.rotation.map(|r| r.state),
        Some(RotationState::DualRead)
    );
}

/// Runs `keyholderd run` and waits up to 20 s for it to exit: its exit code
/// and stderr, or `None` (killed) when it was still running.
fn run_until_exit(env: &Env) -> Option<(Option<i32>, String)> {
    let mut child = std::process::Command::new(keyholder_tests::daemon::keyholderd())
        .arg("run")
        .arg("--config")
        .arg(&env.config)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
            return Some((status.code(), stderr));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    None
}

#[tokio::test]
async fn a_version_whose_canary_row_is_gone_is_named_not_dropped_from_the_keyring() {
    let env = Env::new(EnvOptions::default());
    // A partial restore (or a hand edit) left v1 without its canary.
    edit_state(&env, "DELETE FROM canaries WHERE version = 1");
    // The old daemon read the versions through a join on the canaries: v1
    // was not there at all, and the daemon started on an empty keyring,
    // telling the keyholders to run `keyholderd init` (which a v1 made with
    // another --first-version would have obeyed, beside the real v1).
    let Some((code, stderr)) = run_until_exit(&env) else {
        panic!("keyholderd started on a store whose v1 has no canary");
    };
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(code, Some(65), "{stderr}");
    assert!(
        stderr.contains("state store is corrupt: v1 has no canary; restore it from a backup"),
        "{stderr}"
    );
}
