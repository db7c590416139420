//! `foreground`: what the application feels. The example application
//! ([`crate::app`]) at a fixed open-loop rate, alone; then the pass runs
//! alone for a short window (its rate measured there); then the application
//! while the pass runs throttled to 25% (`--share`) of the rate it had
//! alone, then unthrottled; then the application alone again with the pass
//! paused; p50 / p99 / p99.9 / max of each operation. The throttled phase,
//! the one with a target, comes first, so a pass that drains before the end
//! cuts only the unthrottled window short. The ratios are against the lower
//! of the two alone phases' p99, so a stall while the application ran alone
//! cannot pass a target.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::app::{self, Latencies, Load};
use crate::report::{Table, ms, ratio, verdict};
use crate::world::{Store, Tuning, World};
use crate::{Options, seed};

/// The application's load (the issue's: 2,000 ops/s, 80/20, 8 connections).
fn load(options: &Options, rows: i64) -> Load {
    Load {
        ops_per_sec: 2000,
        connections: 8,
        write_share: 0.2,
        seconds: options.seconds,
        rows,
    }
}

/// The last phase's name: the application alone again, the pass paused.
const ALONE_AGAIN: &str = "alone, paused";

/// The longest window the pass runs alone to measure its rate.
const PASS_ALONE: Duration = Duration::from_secs(1);

struct Phase {
    name: String,
    latencies: Latencies,
    reencrypt_rows_per_sec: f64,
    /// The share of the phase the pass's batches held their locks in the
    /// target (`RotationStatus.locked_seconds`), 0 to 1.
    locked_share: f64,
}

/// Runs the scenario on SQLite and, with a URL, PostgreSQL.
pub async fn run(options: &Options) -> (serde_json::Value, u64) {
    let dir = tempfile::tempdir().unwrap();
    let mut figures = Vec::new();
    let mut peak = 0;
    let rows = options.rows * 2;
    let path = dir.path().join("app.db");
    seed::create_sqlite(&path);
    let mut stores = vec![Store::Sqlite(path)];
    if let Some(url) = &options.pg {
        let table = "kh_bench_foreground".to_owned();
        seed::create_pg(&seed::pg_connect(url).await, &table).await;
        stores.push(Store::Postgres {
            url: url.clone(),
            table,
        });
    }
    let mut summary = Vec::new();
    for store in stores {
        let (phases, rss) = phases(options, store.clone(), rows).await;
        peak = peak.max(rss);
        let mut table = Table::new(
            &format!(
                "foreground {}: {} rows, 2000 ops/s open loop (80% reads, 20% updates), 8 connections, {} s per phase (ms)",
                store.kind(),
                rows,
                options.seconds
            ),
            &[
                "phase",
                "reencrypt rows/s",
                "locked %",
                "op",
                "ops",
                "p50",
                "p99",
                "p99.9",
                "max",
                "errors",
            ],
        );
        let mut json_phases = Vec::new();
        let mut p99 = Vec::new();
        for mut phase in phases {
            let mut ops = Vec::new();
            for (op, values) in [
                ("read", &mut phase.latencies.reads),
                ("write", &mut phase.latencies.writes),
            ] {
                let count = values.len();
                let [p50, p99_, p999, max] = app::percentiles(values);
                table.row(vec![
                    phase.name.clone(),
                    format!("{:.0}", phase.reencrypt_rows_per_sec),
                    format!("{:.1}", 100.0 * phase.locked_share),
                    op.to_owned(),
                    count.to_string(),
                    ms(p50),
                    ms(p99_),
                    ms(p999),
                    ms(max),
                    phase.latencies.errors.to_string(),
                ]);
                ops.push(json!({"op": op, "count": count, "p50_ms": p50, "p99_ms": p99_, "p99_9_ms": p999, "max_ms": max}));
            }
            let mut all: Vec<u64> = phase
                .latencies
                .reads
                .iter()
                .chain(&phase.latencies.writes)
                .copied()
                .collect();
            let [_, all_p99, _, _] = app::percentiles(&mut all);
            p99.push((phase.name.clone(), all_p99, phase.latencies.errors));
            json_phases.push(json!({
                "phase": phase.name,
                "reencrypt_rows_per_sec": phase.reencrypt_rows_per_sec,
                "locked_share": phase.locked_share,
                "seconds": phase.latencies.seconds,
                "errors": phase.latencies.errors,
                "first_error": phase.latencies.first_error,
                "p99_all_ms": all_p99,
                "ops": ops,
            }));
        }
        table.print();
        let alone = p99[0].1;
        let alone_again = p99
            .iter()
            .find(|p| p.0 == ALONE_AGAIN)
            .map_or(alone, |p| p.1);
        // The stricter baseline: a stall in one alone phase cannot make a
        // loaded phase look good.
        let baseline = alone.min(alone_again);
        let throttled = p99
            .iter()
            .find(|p| p.0.starts_with("throttled"))
            .map_or(0.0, |p| p.1);
        let unthrottled = p99
            .iter()
            .find(|p| p.0 == "unthrottled")
            .map_or(0.0, |p| p.1);
        let errors: u64 = p99.iter().map(|p| p.2).sum();
        let held = throttled <= 1.25 * baseline && errors == 0;
        summary.push(format!(
            "{} p99 alone {:.2} ms (again, paused: {:.2} ms{}), throttled {}% {:.2} ms ({}), unthrottled {:.2} ms ({}), {} errors (target <= 1.25x at 25%, 0 errors: {})",
            store.kind(),
            alone,
            alone_again,
            if alone.max(alone_again) > 2.0 * baseline {
                "; the application alone varied more than 2x on this machine, the lower is the baseline"
            } else {
                ""
            },
            options.share,
            throttled,
            ratio(throttled / baseline),
            unthrottled,
            ratio(unthrottled / baseline),
            errors,
            if options.share == 25 {
                verdict(held)
            } else {
                "not judged at another share"
            }
        ));
        figures.push(json!({"store": store.kind(), "rows": rows, "phases": json_phases}));
    }
    println!("foreground: {}", summary.join("; "));
    (json!(figures), peak)
}

/// Alone, throttled at `--share` percent (25) of the pass's rate without the
/// application, unthrottled.
async fn phases(options: &Options, store: Store, rows: i64) -> (Vec<Phase>, u64) {
    let mut world = World::start(store.clone(), Tuning::default()).await;
    let keys = [(crate::world::v(9), world.v9.clone())];
    match &store {
        Store::Sqlite(path) => seed::seed_sqlite(path, 1, rows, &keys, |_| 0),
        Store::Postgres { url, table } => {
            seed::seed_pg(&seed::pg_connect(url).await, table, 1, rows, &keys, |_| 0).await;
        }
    }
    world.prepare_and_activate().await;
    let load = load(options, rows);
    let mut phases = vec![Phase {
        name: "alone".to_owned(),
        latencies: apply(&store, load).await,
        reencrypt_rows_per_sec: 0.0,
        locked_share: 0.0,
    }];

    world.switch().await;
    // The pass starts with an inventory of the table: measure once it writes.
    while world.rotation().await.rows_done == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The pass's own rate, with no application: what the share is of.
    let before = (Instant::now(), world.rotation().await.rows_done);
    tokio::time::sleep(PASS_ALONE.min(Duration::from_secs_f64(options.seconds))).await;
    let alone =
        (world.rotation().await.rows_done - before.1) as f64 / before.0.elapsed().as_secs_f64();
    println!(
        "  (foreground {}: the pass alone moved {alone:.0} rows/s)",
        store.kind()
    );
    let throttle = (alone * f64::from(options.share) / 100.0).max(1.0) as u64;
    world.throttle(throttle, crate::reencrypt::BATCH).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (latencies, achieved, locked_share) = with_pass(&world, &store, load).await;
    phases.push(Phase {
        name: format!("throttled {}%", options.share),
        latencies,
        reencrypt_rows_per_sec: achieved,
        locked_share,
    });
    // 0 is unlimited.
    world.throttle(0, crate::reencrypt::BATCH).await;
    let (latencies, unthrottled, locked_share) = with_pass(&world, &store, load).await;
    phases.push(Phase {
        name: "unthrottled".to_owned(),
        latencies,
        reencrypt_rows_per_sec: unthrottled,
        locked_share,
    });
    // The application alone once more, the pass paused (or drained): a
    // machine whose own latency moved during the run shows here, and the
    // verdict takes the lower of the two baselines, never a stalled one.
    if world.rotation().await.state == keyholder_api::RotationState::Reencrypting {
        world.control("pause").await;
    }
    phases.push(Phase {
        name: ALONE_AGAIN.to_owned(),
        latencies: apply(&store, load).await,
        reencrypt_rows_per_sec: 0.0,
        locked_share: 0.0,
    });
    let rss = world.peak_rss_kib();
    world.stop();
    if let Store::Postgres { url, table } = &store {
        seed::pg_connect(url)
            .await
            .batch_execute(&format!("DROP TABLE {table}"))
            .await
            .unwrap();
    }
    (phases, rss)
}

/// The application's load while the pass runs, the pass's rate then
/// (records moved over the phase, from the rotation status) and the share
/// of the phase its batches held their locks.
async fn with_pass(world: &World, store: &Store, load: Load) -> (Latencies, f64, f64) {
    let before = world.rotation().await;
    let started = Instant::now();
    let latencies = apply(store, load).await;
    let after = world.rotation().await;
    if after.state == keyholder_api::RotationState::Drained {
        println!(
            "  (the pass drained during this phase: give foreground more --rows for a full window)"
        );
    }
    let seconds = started.elapsed().as_secs_f64();
    let rate = (after.rows_done - before.rows_done) as f64 / seconds;
    let locked = (after.locked_seconds - before.locked_seconds).max(0.0);
    (latencies, rate, locked / seconds)
}

/// Runs the application's load on its own threads (outside the runtime:
/// a PostgreSQL connection drives a runtime of its own).
async fn apply(store: &Store, load: Load) -> Latencies {
    let store = store.clone();
    let thread = std::thread::spawn(move || match &store {
        Store::Sqlite(path) => app::run(load, || app::SqliteConn::open(path)),
        Store::Postgres { url, table } => app::run(load, || app::PgConn::open(url, table)),
    });
    tokio::task::spawn_blocking(move || thread.join().expect("application"))
        .await
        .unwrap()
}
