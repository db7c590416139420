//! `keyholderd init` run while a daemon that started before it is running:
//! the daemon read the empty state store at start and does not see the key
//! init made, so the keyholders are told to restart it, not to run the
//! `init` that already ran (and now refuses to run again).
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use keyholder_tests::{Env, EnvOptions};

#[tokio::test]
async fn an_unseal_after_init_ran_behind_the_running_daemon_says_to_restart_it() {
    let env = Env::new(EnvOptions::default());
    // The state as before any init: the daemon starts on an empty store.
    for entry in std::fs::read_dir(&env.state_dir).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    std::fs::remove_dir_all(&env.shares_dir).unwrap();
    let mut daemon = env.start().await;

    let out = env.keyholderd(&[
        "init",
        "--out",
        &env.shares_dir.display().to_string(),
        "--first-version",
        "v1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let alice = env.share_line("alice", 1);
    let answer = env.client("alice").unseal(&[&alice]).await;
    assert_eq!(answer.status, 503, "{}", answer.body);
    let error = answer.error();
    assert_eq!(error.code, "not_initialized");
    assert_eq!(
        error.error,
        "keyholderd init made v1 after this daemon started, and a running daemon does not load it: restart keyholderd, then unseal"
    );
    // What the old answer asked for cannot be done.
    let again = env.keyholderd(&["init", "--out", "elsewhere"]);
    assert!(!again.status.success());

    // Restarted, the daemon unseals with the shares init made.
    assert!(daemon.stop());
    let _daemon = env.start().await;
    let unsealed = env
        .unseal_with(&[
            ("alice", vec![alice.clone()]),
            ("bob", vec![env.share_line("bob", 1)]),
        ])
        .await;
    assert!(!unsealed.sealed, "{unsealed:?}");
}
