//! `throttle`: the rate a throttled pass achieves, measured in the target
//! itself (records at v10 counted by the bench, commits seen through
//! SQLite's `data_version`), and how fast `pause` and `resume` act.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::report::{Table, ms, verdict};
use crate::world::{Store, Tuning, World};
use crate::{Options, seed};

/// Targets and the batch size used for each (ten or more batches a second).
const TARGETS: [(u64, u32); 3] = [(1_000, 100), (10_000, 1000), (100_000, 1000)];

/// Commits to the target seen by another connection, as they happen.
struct Commits {
    seen: Arc<Mutex<Vec<Instant>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Commits {
    fn watch(path: &Path) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let conn = rusqlite::Connection::open(path).unwrap();
        let (seen2, stop2) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let version = || -> i64 {
                conn.query_row("PRAGMA data_version", [], |r| r.get(0))
                    .unwrap()
            };
            let mut last = version();
            while !stop2.load(Ordering::Relaxed) {
                let now = version();
                if now != last {
                    last = now;
                    seen2.lock().unwrap().push(Instant::now());
                }
                std::thread::sleep(Duration::from_micros(500));
            }
        });
        Self {
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn after(&self, instant: Instant) -> Vec<Instant> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .copied()
            .filter(|t| *t > instant)
            .collect()
    }

    /// Waits for the next commit after `instant` (up to `timeout`).
    async fn next_after(&self, instant: Instant, timeout: Duration) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(first) = self.after(instant).first() {
                return Some(*first);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
    }
}

impl Drop for Commits {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn at_v10(path: &PathBuf) -> u64 {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.query_row(
        "SELECT count(*) FROM customers WHERE substr(ssn, 1, 4) = 'V10:'",
        [],
        |r| r.get::<_, i64>(0),
    )
    .unwrap() as u64
}

/// Runs the scenario on SQLite.
pub async fn run(options: &Options) -> (serde_json::Value, u64) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    seed::create_sqlite(&path);
    let first = Tuning {
        rows_per_sec: TARGETS[0].0,
        batch_size: TARGETS[0].1,
        ..Tuning::default()
    };
    let mut world = World::start(Store::Sqlite(path.clone()), first).await;
    let keys = [(crate::world::v(9), world.v9.clone())];
    let rows = options.rows;
    seed::seed_sqlite(&path, 1, rows, &keys, |_| 0);
    world.prepare_and_activate().await;
    let commits = Commits::watch(&path);
    world.switch().await;
    while world.rotation().await.rows_done == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let window = Duration::from_secs_f64(options.seconds);
    let mut table = Table::new(
        &format!(
            "throttle sqlite: {rows} rows; achieved rate over {} s, counted in the table",
            options.seconds
        ),
        &["target rows/s", "batch", "achieved rows/s", "deviation"],
    );
    let mut figures = Vec::new();
    let mut worst: f64 = 0.0;
    for (target, batch) in TARGETS {
        world.throttle(target, batch).await;
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let start = commits
            .next_after(Instant::now(), Duration::from_secs(5))
            .await
            .expect("the pass writes");
        let count_start = at_v10(&path);
        tokio::time::sleep(window).await;
        let end = commits
            .next_after(Instant::now(), Duration::from_secs(5))
            .await
            .expect("the pass writes");
        let count_end = at_v10(&path);
        let achieved = (count_end - count_start) as f64 / (end - start).as_secs_f64();
        let deviation = (achieved - target as f64) / target as f64;
        worst = worst.max(deviation.abs());
        table.row(vec![
            target.to_string(),
            batch.to_string(),
            format!("{achieved:.0}"),
            format!("{:+.2}%", deviation * 100.0),
        ]);
        figures.push(json!({"target_rows_per_sec": target, "batch": batch, "achieved_rows_per_sec": achieved, "deviation": deviation}));
    }
    table.print();

    // Pause and resume at 10,000 rows/s in batches of 1000: a commit every
    // 100 ms.
    world.throttle(10_000, 1000).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    world.control("pause").await;
    let paused = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after_pause = commits.after(paused);
    let last_write = after_pause
        .last()
        .map(|t| (*t - paused).as_secs_f64() * 1000.0);
    world.control("resume").await;
    let resumed = Instant::now();
    let next = commits
        .next_after(resumed, Duration::from_secs(10))
        .await
        .map(|t| (t - resumed).as_secs_f64() * 1000.0);
    let mut control = Table::new(
        "pause / resume at 10000 rows/s, batches of 1000 (ms after the daemon answered)",
        &["event", "batches written after", "ms"],
    );
    control.row(vec![
        "pause -> last write".to_owned(),
        after_pause.len().to_string(),
        last_write.map_or("-".to_owned(), ms),
    ]);
    control.row(vec![
        "resume -> next write".to_owned(),
        "-".to_owned(),
        next.map_or("none".to_owned(), ms),
    ]);
    control.print();
    let rss = world.peak_rss_kib();
    drop(commits);
    world.stop();
    println!(
        "throttle: worst deviation {:.2}% (target within 5%: {}); pause let {} batch(es) through (target <= 1: {}); resume -> next write {} ms",
        worst * 100.0,
        verdict(worst <= 0.05),
        after_pause.len(),
        verdict(after_pause.len() <= 1),
        next.map_or("none".to_owned(), |n| format!("{n:.1}"))
    );
    (
        json!({
            "rates": figures,
            "pause_batches_after": after_pause.len(),
            "pause_last_write_ms": last_write,
            "resume_next_write_ms": next,
        }),
        rss,
    )
}
