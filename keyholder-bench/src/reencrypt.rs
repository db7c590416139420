//! `reencrypt`: a whole pass through the real daemon (switch -> drained,
//! inventories, checkpoints and the final scans included), beside the
//! batched baseline and the one-statement ceiling of the store's own shell.

use std::time::Duration;

use serde_json::json;

use crate::report::{Table, rate, ratio, verdict};
use crate::world::{Store, Tuning, World};
use crate::{Options, seed, shell};

/// The batch size of the pass and of the batched baseline.
pub const BATCH: u32 = 1000;
/// What keyholder's target connection uses on SQLite (WAL).
pub const SQLITE_SYNCHRONOUS: &str = "NORMAL";

/// One store's figures.
pub struct Outcome {
    pub store: &'static str,
    /// `[reencrypt] workers` of the pass.
    pub workers: u32,
    pub keyholder: f64,
    pub batched: f64,
    pub ceiling: f64,
    /// Seconds from switch to the first record moved (the inventory before).
    pub start: f64,
    /// Seconds from then until every record had moved.
    pub moving: f64,
    /// Seconds from then until drained (the final inventory and count).
    pub verifying: f64,
}

impl Outcome {
    /// The store, and the workers when there were several.
    fn label(&self) -> String {
        match self.workers {
            1 => format!("{}, 1 worker", self.store),
            n => format!("{}, {n} workers", self.store),
        }
    }
}

/// Runs the scenario on SQLite and, with a URL, PostgreSQL.
pub async fn run(options: &Options) -> (serde_json::Value, Vec<Outcome>, u64) {
    let mut outcomes = Vec::new();
    let mut peak = 0;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    seed::create_sqlite(&path);
    let (outcome, rss) = pass(options, Store::Sqlite(path.clone()), dir.path(), 1).await;
    outcomes.push(outcome);
    peak = peak.max(rss);
    if let Some(url) = &options.pg {
        // One worker, then (on a fresh table) `--pg-workers`: before and
        // after in one run, each beside its own baselines.
        let mut counts = vec![1];
        if options.pg_workers > 1 {
            counts.push(options.pg_workers);
        }
        for workers in counts {
            let table = "kh_bench_reencrypt".to_owned();
            let client = seed::pg_connect(url).await;
            seed::create_pg(&client, &table).await;
            let store = Store::Postgres {
                url: url.clone(),
                table,
            };
            let (outcome, rss) = pass(options, store, dir.path(), workers).await;
            outcomes.push(outcome);
            peak = peak.max(rss);
        }
    }

    let mut table = Table::new(
        &format!(
            "reencrypt: {} records of 200 characters, batches of {BATCH} (rows/s; higher is better)",
            options.rows
        ),
        &[
            "store",
            "keyholder pass",
            "shell batched",
            "shell one UPDATE",
            "vs batched",
            "vs one UPDATE",
        ],
    );
    let mut figures = Vec::new();
    for o in &outcomes {
        table.row(vec![
            o.label(),
            rate(o.keyholder),
            rate(o.batched),
            rate(o.ceiling),
            ratio(o.keyholder / o.batched),
            ratio(o.keyholder / o.ceiling),
        ]);
        figures.push(json!({
            "store": o.store,
            "workers": o.workers,
            "rows": options.rows,
            "keyholder_rows_per_sec": o.keyholder,
            "batched_baseline_rows_per_sec": o.batched,
            "one_statement_ceiling_rows_per_sec": o.ceiling,
            "vs_batched": o.keyholder / o.batched,
            "vs_ceiling": o.keyholder / o.ceiling,
        }));
    }
    table.print();
    let mut steps = Table::new(
        "reencrypt: where the pass's time went (s; status polled every 10 ms)",
        &[
            "store",
            "switch -> first write",
            "moving",
            "moving rows/s",
            "final scans",
            "baseline batched",
        ],
    );
    for (o, figure) in outcomes.iter().zip(&mut figures) {
        steps.row(vec![
            o.label(),
            format!("{:.2}", o.start),
            format!("{:.2}", o.moving),
            rate(options.rows as f64 / o.moving),
            format!("{:.2}", o.verifying),
            format!("{:.2}", options.rows as f64 / o.batched),
        ]);
        figure["seconds_to_first_write"] = json!(o.start);
        figure["seconds_moving"] = json!(o.moving);
        figure["seconds_final_scans"] = json!(o.verifying);
    }
    steps.print();
    let mut summary = Vec::new();
    for o in &outcomes {
        let (against, wanted, base) = match o.store {
            "sqlite" => ("batched", 0.9, o.batched),
            _ => ("one UPDATE", 0.8, o.ceiling),
        };
        summary.push(format!(
            "{} {:.2}x {against} (target >= {wanted}: {})",
            o.label(),
            o.keyholder / base,
            verdict(o.keyholder / base >= wanted)
        ));
    }
    println!(
        "reencrypt: {}; keyholderd peak RSS {} MiB",
        summary.join("; "),
        peak / 1024
    );
    (json!(figures), outcomes, peak)
}

/// Seeds the table, measures both baselines on copies, then the pass.
async fn pass(
    options: &Options,
    store: Store,
    dir: &std::path::Path,
    workers: u32,
) -> (Outcome, u64) {
    let rows = options.rows;
    let tuning = Tuning {
        workers,
        ..Tuning::default()
    };
    let mut world = World::start(store.clone(), tuning).await;
    let keys = [(crate::world::v(9), world.v9.clone())];
    let (batched, ceiling) = match &store {
        Store::Sqlite(path) => {
            seed::seed_sqlite(path, 1, rows, &keys, |_| 0);
            let copy = dir.join("baseline.db");
            std::fs::copy(path, &copy).unwrap();
            let batched = shell::sqlite_batched(&copy, rows, BATCH.into(), SQLITE_SYNCHRONOUS);
            std::fs::copy(path, &copy).unwrap();
            let ceiling = shell::sqlite_one_statement(&copy, SQLITE_SYNCHRONOUS);
            std::fs::remove_file(&copy).unwrap();
            (batched, ceiling)
        }
        Store::Postgres { url, table } => {
            let client = seed::pg_connect(url).await;
            seed::seed_pg(&client, table, 1, rows, &keys, |_| 0).await;
            let copy = format!("{table}_baseline");
            shell::pg_copy(&client, table, &copy).await;
            let batched = shell::psql_batched(url, &copy, rows, BATCH.into());
            shell::pg_copy(&client, table, &copy).await;
            let ceiling = shell::psql_one_statement(url, &copy);
            client
                .batch_execute(&format!("DROP TABLE {copy}"))
                .await
                .unwrap();
            (batched, ceiling)
        }
    };
    world.prepare_and_activate().await;
    let switched = world.switch().await;
    let steps = world
        .wait_drained(rows as u64, Duration::from_secs(1800))
        .await;
    let seconds = (steps.drained - switched).as_secs_f64();
    let rss = world.peak_rss_kib();
    world.stop();
    if let Store::Postgres { url, table } = &store {
        let client = seed::pg_connect(url).await;
        client
            .batch_execute(&format!("DROP TABLE {table}"))
            .await
            .unwrap();
    }
    let per_sec = |s: f64| rows as f64 / s;
    (
        Outcome {
            store: store.kind(),
            workers,
            keyholder: per_sec(seconds),
            batched: per_sec(batched),
            ceiling: per_sec(ceiling),
            start: (steps.first_write - switched).as_secs_f64(),
            moving: (steps.all_moved - steps.first_write).as_secs_f64(),
            verifying: (steps.drained - steps.all_moved).as_secs_f64(),
        },
        rss,
    )
}
