//! `seed`: fill an empty table with N encrypted rows.

use std::time::Instant;

use crypto_core::Keyring;

use crate::db::Db;
use crate::error::Error;
use crate::handover::describe;
use crate::records::{self, COLUMNS};

/// Rows per transaction: large enough to be fast, small enough that the
/// daemon is never locked out for long.
const CHUNK: u64 = 10_000;

/// Creates the table and inserts rows `1..=rows`.
pub fn run(db: &str, rows: u64, keyring: &Keyring) -> Result<(), Error> {
    let started = Instant::now();
    let mut db = Db::open(db)?;
    db.create_schema()?;
    let existing = db.count()?;
    if existing > 0 {
        return Err(Error::NotEmpty { rows: existing });
    }
    let mut next: u64 = 1;
    while next <= rows {
        let last = rows.min(next + CHUNK - 1);
        let mut chunk = Vec::with_capacity((last - next + 1) as usize);
        for id in next..=last {
            let id = i64::try_from(id).expect("row ids stay far below 2^63");
            let [ssn, card] = COLUMNS.map(|column| {
                keyring.encrypt(
                    records::plaintext(column, id).as_bytes(),
                    records::aad(column, id).as_bytes(),
                )
            });
            chunk.push((id, ssn?, card?));
        }
        db.insert(&chunk)?;
        next = last + 1;
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "seed: rows={rows} seconds={seconds:.1} rate={:.0} keyring={}",
        rows as f64 / seconds.max(1e-9),
        describe(keyring)
    );
    Ok(())
}
