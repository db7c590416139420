//! `keyholder-demo-app`: a small application that plays the database side of
//! keyholder.
//!
//! It is started through `keyholder hook --exec`, reads its keyring from the
//! pipe named by `KEYHOLDER_KEYRING_FD`, and stores synthetic customer records
//! (`customers(id, ssn, card)`) in a SQLite file or a MySQL/MariaDB database, each value encrypted with
//! `crypto-core` under the associated data `customers/<column>/<id>` (the
//! daemon's `aad = "row"` rule). It never prints a plaintext or a key: the
//! demo and the tests compare SHA-256 digests and counts only.
#![forbid(unsafe_code)]

mod check;
mod db;
mod error;
mod handover;
mod records;
mod seed;
mod serve;
mod stop;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::error::Error;

#[derive(Parser)]
#[command(name = "keyholder-demo-app", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the empty `customers` table (needs no key); the daemon can then
    /// sample the target before the first record exists.
    Schema {
        /// The SQLite file, or a `mysql://user@host:port/db` URL (password
        /// from MYSQL_PWD).
        #[arg(long)]
        db: String,
        /// Drop the table first, with every row in it (a fresh demo run).
        #[arg(long)]
        replace: bool,
    },
    /// Create the table and fill it with N synthetic rows, encrypted with the
    /// keyring handed over by the hook.
    Seed {
        /// The SQLite file, or a `mysql://user@host:port/db` URL (password
        /// from MYSQL_PWD).
        #[arg(long)]
        db: String,
        /// Rows to insert (ids 1..=N); the table must be empty.
        #[arg(long)]
        rows: u64,
    },
    /// Read and rewrite random rows at a steady rate, checking every read
    /// decrypts to the expected value; print a one-line summary at the end
    /// (after --duration, or on SIGTERM / Ctrl-C). Exit 1 if any read failed.
    Serve {
        /// The SQLite file, or a `mysql://user@host:port/db` URL (password
        /// from MYSQL_PWD).
        #[arg(long)]
        db: String,
        /// How long to serve, e.g. `30s`, `10m`; without it, until SIGTERM or
        /// Ctrl-C.
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        /// Target operations (row reads) per second.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        ops_per_sec: u32,
        /// Share of operations that also rewrite the row (re-encrypt with the
        /// write version, compare-and-swap), 0.0 to 1.0.
        #[arg(long, default_value_t = 0.2, value_parser = parse_ratio)]
        write_ratio: f64,
        /// Fetch a fresh keyring this often by running the command after `--`
        /// (e.g. `-- keyholder hook --wait 5s --format json`); without it the
        /// keyring from the start is kept.
        #[arg(long, value_parser = humantime::parse_duration, requires = "refresh_command")]
        refresh_every: Option<Duration>,
        /// The command printing a hand-over JSON on stdout.
        #[arg(last = true)]
        refresh_command: Vec<String>,
    },
    /// Decrypt every row; print the count per version and a SHA-256 digest of
    /// all plaintexts. Exit 1 on any failure.
    Check {
        /// The SQLite file, or a `mysql://user@host:port/db` URL (password
        /// from MYSQL_PWD).
        #[arg(long)]
        db: String,
    },
}

fn parse_ratio(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(ratio),
        _ => Err(format!("expected a number from 0.0 to 1.0, got {text:?}")),
    }
}

fn run(cli: Cli) -> Result<bool, Error> {
    match cli.command {
        Command::Schema { db, replace } => {
            let mut opened = db::Db::open(&db)?;
            if replace {
                opened.drop_table()?;
            }
            opened.create_schema()?;
            println!("schema: table customers ready in {db}");
            Ok(true)
        }
        Command::Seed { db, rows } => {
            let keyring = handover::keyring_from_env()?;
            seed::run(&db, rows, &keyring)?;
            Ok(true)
        }
        Command::Serve {
            db,
            duration,
            ops_per_sec,
            write_ratio,
            refresh_every,
            refresh_command,
        } => {
            let keyring = handover::keyring_from_env()?;
            let refresh = refresh_every.map(|every| handover::Refresh::new(every, refresh_command));
            let options = serve::Options {
                duration,
                ops_per_sec,
                write_ratio,
            };
            let summary = serve::run(&db, keyring, refresh, &options, &stop::on_signal()?)?;
            println!("{summary}");
            Ok(summary.failures == 0)
        }
        Command::Check { db } => {
            let keyring = handover::keyring_from_env()?;
            let report = check::run(&db, &keyring)?;
            println!("{report}");
            Ok(report.failures == 0)
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("keyholder-demo-app: {error}");
            ExitCode::FAILURE
        }
    }
}
