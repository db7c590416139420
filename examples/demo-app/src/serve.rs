//! `serve`: a steady load of reads and writes while keys rotate underneath.
//!
//! Every read decrypts both columns and compares them with the expected
//! synthetic value; a failure is counted and reported by row id and column,
//! never by value. A write re-encrypts the same values with the current write
//! version and stores them with compare-and-swap, like the daemon's worker, so
//! neither overwrites the other: a lost race is a conflict, not a failure.

use std::fmt;
use std::time::{Duration, Instant};

use crypto_core::Keyring;
use rand::RngExt;

use crate::db::Db;
use crate::error::Error;
use crate::handover::{Refresh, describe};
use crate::records::{self, COLUMNS};
use crate::stop::StopFlag;

/// Failures reported one by one on stderr before only counting them.
const REPORTED_FAILURES: u64 = 20;

/// The load to apply.
pub struct Options {
    /// How long to serve; `None` until stopped.
    pub duration: Option<Duration>,
    /// Row reads per second.
    pub ops_per_sec: u32,
    /// Share of reads followed by a rewrite.
    pub write_ratio: f64,
}

/// What `serve` did, printed as one line.
#[derive(Default)]
pub struct Summary {
    seconds: f64,
    rows_read: u64,
    rows_written: u64,
    conflicts: u64,
    /// Reads that did not decrypt to the expected value.
    pub failures: u64,
    db_errors: u64,
    refreshes: u64,
    refresh_errors: u64,
    keyring: String,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "serve: seconds={:.1} rows_read={} rows_written={} conflicts={} failures={} \
             db_errors={} refreshes={} refresh_errors={} keyring=\"{}\"",
            self.seconds,
            self.rows_read,
            self.rows_written,
            self.conflicts,
            self.failures,
            self.db_errors,
            self.refreshes,
            self.refresh_errors,
            self.keyring
        )
    }
}

/// Serves until `options.duration` has passed or `stop` is raised.
pub fn run(
    db: &str,
    mut keyring: Keyring,
    mut refresh: Option<Refresh>,
    options: &Options,
    stop: &StopFlag,
) -> Result<Summary, Error> {
    let mut db = Db::open(db)?;
    let max_id = db.max_id()?.ok_or(Error::Empty)?;
    eprintln!("serve: keyring {}", describe(&keyring));

    let mut summary = Summary::default();
    let mut rng = rand::rng();
    let interval = Duration::from_secs_f64(1.0 / f64::from(options.ops_per_sec));
    let started = Instant::now();
    let mut next = started;
    let running = || !stop.raised() && options.duration.is_none_or(|d| started.elapsed() < d);
    while running() {
        if let Some(refresh) = refresh.as_mut().filter(|refresh| refresh.due()) {
            match refresh.fetch(&keyring) {
                Ok(fresh) => {
                    summary.refreshes += 1;
                    let (before, after) = (describe(&keyring), describe(&fresh));
                    if before != after {
                        eprintln!("serve: keyring changed from {before} to {after}");
                    }
                    keyring = fresh;
                }
                Err(error) => {
                    summary.refresh_errors += 1;
                    eprintln!("serve: keeping the current keyring: {error}");
                }
            }
        }

        let id = rng.random_range(1..=max_id);
        let write = rng.random_bool(options.write_ratio);
        if let Err(error) = operate(&mut db, &keyring, id, write, &mut summary) {
            summary.db_errors += 1;
            eprintln!("serve: row {id}: {error}");
        }

        next += interval;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else if now - next > Duration::from_secs(1) {
            // Fell behind (a long lock wait): do not burst to catch up.
            next = now;
        }
    }
    summary.seconds = started.elapsed().as_secs_f64();
    summary.keyring = describe(&keyring);
    Ok(summary)
}

/// Reads one row, checks it, and rewrites it when `write`.
fn operate(
    db: &mut Db,
    keyring: &Keyring,
    id: i64,
    write: bool,
    summary: &mut Summary,
) -> Result<(), Error> {
    let Some((ssn, card)) = db.read(id)? else {
        return Ok(());
    };
    summary.rows_read += 1;
    let stored = [ssn, card];
    let mut intact = true;
    for (column, record) in COLUMNS.iter().zip(&stored) {
        let failure = match keyring.decrypt(record, records::aad(column, id).as_bytes()) {
            Ok(plain) if plain.as_slice() == records::plaintext(column, id).as_bytes() => None,
            Ok(_) => Some("decrypted to an unexpected value".to_owned()),
            Err(error) => Some(error.to_string()),
        };
        if let Some(failure) = failure {
            intact = false;
            summary.failures += 1;
            if summary.failures <= REPORTED_FAILURES {
                eprintln!("serve: read failed: id={id} column={column}: {failure}");
            }
        }
    }
    if !(write && intact) {
        return Ok(());
    }
    let [ssn, card] = COLUMNS.map(|column| {
        keyring.encrypt(
            records::plaintext(column, id).as_bytes(),
            records::aad(column, id).as_bytes(),
        )
    });
    if db.swap(id, &stored, &[ssn?, card?])? {
        summary.rows_written += 1;
    } else {
        summary.conflicts += 1;
    }
    Ok(())
}
