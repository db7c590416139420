//! `keyholder rotate status --watch` as an operator sees it: a progress bar
//! on a real terminal (a tmux pane: send-keys, capture-pane) that moves while
//! the daemon re-encrypts, and one plain line per poll when stdout is a pipe.
//!
//! tmux must be installed; without it the terminal test prints a notice and
//! passes, unless `CI=true` (.ci/run installs it), where it fails.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use keyholder_api::RotationState;
use keyholder_tests::daemon::{DATABASE, OPERATOR, SECOND_OPERATOR};
use keyholder_tests::rotation::v;
use keyholder_tests::{Daemon, Env, EnvOptions, Table};
use serde_json::json;

/// Generous: a debug build on two shared cores.
const WAIT: Duration = Duration::from_secs(120);

/// A daemon re-encrypting 600 records v9 -> v10 slowly (30 rows/s in
/// batches of 10), so a watch sees the count move.
struct World {
    env: Env,
    _daemon: Daemon,
    _data: tempfile::TempDir,
}

async fn reencrypting() -> World {
    let data = tempfile::tempdir().unwrap();
    let table = Table::create(&data.path().join("app.db"));
    let env = Env::new(EnvOptions {
        targets: vec![table.spec.clone()],
        first_version: Some(9),
        consumers: vec![DATABASE.to_owned()],
        batch_size: Some(10),
        rows_per_sec: Some(30),
        extra_toml: "\n[rotation]\nmin_verified = 2\n".to_owned(),
        ..EnvOptions::default()
    });
    let daemon = env.start().await;
    let lines = [env.share_line("alice", 9), env.share_line("bob", 9)];
    let v9 = env.rebuild_key(9, &[&lines[0], &lines[1]]).await;
    table.seed(&v9, v(9), 600);
    env.unseal_with(&[
        ("alice", vec![lines[0].clone()]),
        ("bob", vec![lines[1].clone()]),
    ])
    .await;
    env.operate("/v1/rotation/prepare", json!({})).await;
    for name in ["alice", "bob"] {
        let line = env.fetch_new_share(name, 10).await;
        env.verify_new_share(name, &line).await;
    }
    env.operate("/v1/rotation/activate", json!({})).await;
    env.database_keyring().await;
    env.operate("/v1/rotation/switch", json!({})).await;
    env.database_keyring().await;
    env.wait_for("rows moving", WAIT, |s| {
        s.rotation
            .as_ref()
            .is_some_and(|r| r.state == RotationState::Reencrypting && r.rows_done > 0)
    })
    .await;
    World {
        env,
        _daemon: daemon,
        _data: data,
    }
}

/// `tmux -S socket args...`, panicking unless it succeeds; its stdout.
fn tmux(socket: &Path, args: &[&str]) -> String {
    let out = Command::new("tmux")
        .arg("-S")
        .arg(socket)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("tmux runs");
    assert!(
        out.status.success(),
        "tmux {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `done/total` of the bar in a captured pane, if one is drawn.
fn bar_position(pane: &str) -> Option<(u64, u64)> {
    let line = pane
        .lines()
        .find(|l| l.starts_with("reencrypting [") && l.contains(" rows  "))?;
    let counts = line.split("] ").nth(1)?.split(' ').next()?;
    let (done, total) = counts.split_once('/')?;
    Some((done.parse().ok()?, total.parse().ok()?))
}

/// Kills the test's own tmux server (its private socket) when dropped.
struct TmuxServer<'a>(&'a Path);

impl Drop for TmuxServer<'_> {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-S")
            .arg(self.0)
            .arg("kill-server")
            .output();
    }
}

#[tokio::test]
async fn the_progress_bar_moves_on_a_real_terminal_and_ends_with_the_summary() {
    if Command::new("tmux").arg("-V").output().is_err() {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "tmux is missing; CI installs it (.ci/run)"
        );
        eprintln!(
            "NOTICE: tmux is not installed; the terminal test of `rotate status --watch` is skipped"
        );
        return;
    }
    let w = reencrypting().await;
    let dir = w.env.tmp.path();
    let socket = dir.join("tmux.sock");
    // The pane runs a script that sets the connection, so the command line
    // typed into the terminal is short and the same in every run.
    let cli = w.env.keyholder_cli(OPERATOR);
    let mut script = String::from("#!/bin/sh\n");
    for (name, value) in cli.get_envs() {
        if let Some(value) = value {
            script.push_str(&format!(
                "export {}='{}'\n",
                name.to_string_lossy(),
                value.to_string_lossy()
            ));
        }
    }
    script.push_str(&format!(
        "'{}' rotate status --watch\n",
        cli.get_program().to_string_lossy()
    ));
    let script_path = dir.join("watch.sh");
    std::fs::write(&script_path, script).unwrap();

    let _server = TmuxServer(&socket);
    tmux(
        &socket,
        &[
            "new-session",
            "-d",
            "-s",
            "watch",
            "-x",
            "160",
            "-y",
            "12",
            "sh",
        ],
    );
    tmux(
        &socket,
        &[
            "send-keys",
            "-t",
            "watch",
            &format!("sh '{}'", script_path.display()),
            "Enter",
        ],
    );

    // The bar is drawn, then its count moves (the worker is still going).
    let deadline = Instant::now() + WAIT;
    let mut first = None;
    let (moved, total) = loop {
        let pane = tmux(&socket, &["capture-pane", "-p", "-t", "watch"]);
        if let Some((done, total)) = bar_position(&pane) {
            assert_eq!(total, 600, "{pane}");
            assert!(pane.contains("rows/s, eta "), "{pane}");
            match first {
                None => first = Some(done),
                // From its second poll on, the bar says how much of the
                // time the pass held the target's write lock.
                Some(start) if done > start && pane.contains(", locks held ") => {
                    break (done, total);
                }
                Some(_) => {}
            }
        }
        assert!(
            Instant::now() < deadline,
            "no moving bar in the pane:\n{pane}\n{}",
            w.env.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(moved <= total);

    // Full speed: the watch ends with the summary, the bar cleared.
    w.env
        .operate("/v1/rotation/throttle", json!({"rows_per_sec": 0}))
        .await;
    let deadline = Instant::now() + WAIT;
    loop {
        let pane = tmux(&socket, &["capture-pane", "-p", "-t", "watch"]);
        if pane.contains("rotation: drained v9 -> v10") {
            assert!(
                pane.contains("rows: 600 done, 0 remaining (100.0%)"),
                "{pane}"
            );
            assert_eq!(bar_position(&pane), None, "the bar is cleared:\n{pane}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the watch did not end:\n{pane}\n{}",
            w.env.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test]
async fn piped_the_watch_prints_one_plain_line_per_poll_even_when_nothing_changes() {
    let w = reencrypting().await;
    let paused = w.env.operate("/v1/rotation/pause", json!({})).await;
    assert!(paused.body.contains("\"paused\":true"), "{}", paused.body);

    let mut child = w
        .env
        .keyholder_cli(OPERATOR)
        .args(["rotate", "status", "--watch"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, lines) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if lines_tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });

    // Paused, nothing changes: still a line per poll, the same line, plain.
    let mut seen = Vec::new();
    let mut same = 0;
    while same < 3 {
        let line = lines
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no line per poll; so far: {seen:#?}"));
        assert!(
            !line.contains('\u{1b}'),
            "no terminal codes in a pipe: {line:?}"
        );
        if line.starts_with("rotation: reencrypting v9 -> v10 (paused) |  rows: ") {
            same = if seen.last() == Some(&line) {
                same + 1
            } else {
                1
            };
        }
        seen.push(line);
        assert!(seen.len() < 20, "the paused line did not repeat: {seen:#?}");
    }
    // Paused, the pass holds no lock (said from the second poll on, once
    // there is an earlier reading to compare with).
    let last = seen.last().unwrap();
    assert!(last.ends_with(" |  locks held 0.0%"), "{last}");

    w.env.operate("/v1/rotation/resume", json!({})).await;
    w.env
        .operate("/v1/rotation/throttle", json!({"rows_per_sec": 0}))
        .await;
    let status = child.wait().unwrap();
    reader.join().unwrap();
    let rest: Vec<String> = lines.try_iter().collect();
    assert!(status.success(), "{rest:#?}");
    let text = rest.join("\n");
    assert!(
        text.contains("rotation: drained v9 -> v10 |  rows: 600 done, 0 remaining (100.0%)"),
        "{text}"
    );
    // The summary after the last line, as without --watch.
    assert!(
        rest.iter().any(|l| l == "rotation: drained v9 -> v10"),
        "{text}"
    );
}

/// A script that waits for the drain with `--watch` must not go on to
/// retire when the rotation it followed was rolled back instead: that
/// watch exits 1, saying so. A watch started on the rollback itself ends
/// idle as it should, exit 0.
#[tokio::test]
async fn a_watch_of_a_rotation_that_is_rolled_back_exits_1() {
    let w = reencrypting().await;
    let watch = || {
        w.env
            .keyholder_cli(OPERATOR)
            .args(["rotate", "status", "--watch"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let forward = watch();
    for operator in [OPERATOR, SECOND_OPERATOR] {
        let approved = w
            .env
            .post_as(operator, "/v1/rotation/rollback", json!({"execute": true}))
            .await;
        assert_eq!(approved.status, 200, "{}", approved.body);
    }
    w.env
        .wait_for("rolling back", WAIT, |s| {
            s.rotation
                .as_ref()
                .is_some_and(|r| r.state == RotationState::RollingBack)
        })
        .await;
    let backward = watch();
    // The consumer takes the keyring that writes v9 again (the rollback
    // drops v10 only after it has), and the records go back at full speed.
    w.env.database_keyring().await;
    w.env
        .operate("/v1/rotation/throttle", json!({"rows_per_sec": 0}))
        .await;

    let forward = forward.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&forward.stderr);
    assert_eq!(forward.status.code(), Some(1), "{said}");
    assert!(
        said.contains("the rotation v9 -> v10 ended without draining: it was rolled back"),
        "{said}"
    );
    let backward = backward.wait_with_output().unwrap();
    assert!(
        backward.status.success(),
        "{}",
        String::from_utf8_lossy(&backward.stderr)
    );
    assert!(
        String::from_utf8_lossy(&backward.stdout).contains("rotation: idle"),
        "{}",
        String::from_utf8_lossy(&backward.stdout)
    );
}
