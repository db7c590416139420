//! `keyholder-bench`: keyholder's re-encryption and unseal measured through
//! the real daemon, each figure beside baselines measured in the same run by
//! code that is not keyholder's (the `sqlite3` shell and `psql`).
//!
//! Build and run it in release: `cargo run --release -p keyholder-bench --
//! all` (the daemon is the release `keyholderd` beside this binary). Each
//! scenario prints a table and a one-line summary; `--json FILE` writes every
//! figure. It asserts nothing about speed: it reports.
#![forbid(unsafe_code)]

mod app;
mod foreground;
mod reencrypt;
mod report;
mod seed;
mod shell;
mod throttle;
mod unseal;
mod world;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, ValueEnum};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// A whole pass (switch -> drained) beside the shell's batched updates
    /// and its one-statement ceiling; SQLite and PostgreSQL.
    Reencrypt,
    /// Application latencies alone, with the pass unthrottled and
    /// throttled to 25% of that rate; SQLite and PostgreSQL.
    Foreground,
    /// Achieved rate at 1k / 10k / 100k rows/s; pause and resume.
    Throttle,
    /// The last share's request -> unsealed, as the table grows.
    Unseal,
    /// Every scenario, in this order.
    All,
}

#[derive(Parser)]
#[command(name = "keyholder-bench", version, about)]
struct Cli {
    /// What to measure.
    scenario: Scenario,
    /// Records of the reencrypt and throttle tables; foreground uses twice
    /// as many, unseal 10,000, this many and ten times as many.
    #[arg(long, default_value_t = 1_000_000)]
    rows: i64,
    /// Seconds of each measured window (foreground phases, throttle rates).
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// PostgreSQL for the PostgreSQL runs (default: KEYHOLDER_TEST_PG;
    /// without either they are skipped, saying so).
    #[arg(long, env = "KEYHOLDER_TEST_PG")]
    pg: Option<String>,
    /// Percent of the pass's own rate that foreground's throttled phase
    /// runs it at (the target, p99 <= 1.25x alone, is set at 25).
    #[arg(long, default_value_t = 25, value_parser = clap::value_parser!(u32).range(1..=100))]
    share: u32,
    /// `[reencrypt] workers` of reencrypt's second PostgreSQL pass, run
    /// after one with a single worker on a fresh table (1: that one only).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=16))]
    pg_workers: u32,
    /// Write every figure to this file as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// What every scenario reads.
pub struct Options {
    pub rows: i64,
    pub seconds: f64,
    pub pg: Option<String>,
    /// Percent of the pass's own rate for foreground's throttled phase.
    pub share: u32,
    /// Workers of reencrypt's second PostgreSQL pass (1: no second pass).
    pub pg_workers: u32,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.rows < 10_000 || cli.seconds <= 0.0 {
        eprintln!("error: --rows must be at least 10000 and --seconds more than 0");
        return ExitCode::from(64);
    }
    let options = Options {
        rows: cli.rows,
        seconds: cli.seconds,
        pg: cli.pg.filter(|url| !url.is_empty()),
        share: cli.share,
        pg_workers: cli.pg_workers,
    };
    if options.pg.is_none() {
        println!("PostgreSQL runs skipped: no --pg URL and KEYHOLDER_TEST_PG is not set");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let mut figures = report::Figures::default();
    let mut peak_rss = 0;
    let wanted = |s: Scenario| cli.scenario == s || cli.scenario == Scenario::All;
    runtime.block_on(async {
        if wanted(Scenario::Reencrypt) {
            let (value, _, rss) = reencrypt::run(&options).await;
            figures.put("reencrypt", value);
            peak_rss = peak_rss.max(rss);
        }
        if wanted(Scenario::Foreground) {
            let (value, rss) = foreground::run(&options).await;
            figures.put("foreground", value);
            peak_rss = peak_rss.max(rss);
        }
        if wanted(Scenario::Throttle) {
            let (value, rss) = throttle::run(&options).await;
            figures.put("throttle", value);
            peak_rss = peak_rss.max(rss);
        }
        if wanted(Scenario::Unseal) {
            let (value, rss) = unseal::run(&options).await;
            figures.put("unseal", value);
            peak_rss = peak_rss.max(rss);
        }
    });
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "\nkeyholderd peak RSS across the runs: {:.1} MiB (target < 64 MiB: {}); bench took {seconds:.0} s",
        peak_rss as f64 / 1024.0,
        report::verdict(peak_rss < 64 * 1024)
    );
    figures.put("peak_rss_kib", serde_json::json!(peak_rss));
    figures.put("seconds", serde_json::json!(seconds));
    if let Some(path) = cli.json {
        let text = serde_json::to_string_pretty(&serde_json::Value::Object(figures.0)).unwrap();
        if let Err(error) = std::fs::write(&path, text) {
            eprintln!("error: cannot write {}: {error}", path.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
