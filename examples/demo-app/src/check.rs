//! `check`: decrypt every row, count values per version, digest the plaintexts.
//!
//! The digest covers (id, column, plaintext) of every value in id order, so two
//! checks agree exactly when every record still decrypts to what it held,
//! whatever key versions the ciphertexts are under.

use std::collections::BTreeMap;
use std::fmt;

use crypto_core::{KeyVersion, Keyring, envelope};
use sha2::{Digest, Sha256};

use crate::db::Db;
use crate::error::Error;
use crate::records::{self, COLUMNS};

/// Failures reported one by one on stderr before only counting them.
const REPORTED_FAILURES: u64 = 20;

/// The result of a full scan.
pub struct Report {
    rows: u64,
    values: u64,
    per_version: BTreeMap<KeyVersion, u64>,
    /// Values that did not decrypt to the expected plaintext.
    pub failures: u64,
    digest: String,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let versions: Vec<String> = self
            .per_version
            .iter()
            .map(|(version, count)| format!("{version}:{count}"))
            .collect();
        write!(
            f,
            "check: rows={} values={} versions={} failures={} digest=sha256:{}",
            self.rows,
            self.values,
            versions.join(","),
            self.failures,
            self.digest
        )
    }
}

/// Scans the whole table.
pub fn run(db: &str, keyring: &Keyring) -> Result<Report, Error> {
    let mut db = Db::open(db)?;
    let mut digest = Sha256::new();
    let mut report = Report {
        rows: 0,
        values: 0,
        per_version: BTreeMap::new(),
        failures: 0,
        digest: String::new(),
    };
    db.scan(|id, ssn, card| {
        report.rows += 1;
        for (column, record) in COLUMNS.iter().zip([ssn, card]) {
            report.values += 1;
            let outcome = envelope::peek_version(&record).and_then(|version| {
                keyring
                    .decrypt(&record, records::aad(column, id).as_bytes())
                    .map(|plain| (version, plain))
            });
            let failure = match outcome {
                Ok((version, plain)) => {
                    *report.per_version.entry(version).or_default() += 1;
                    digest.update(id.to_be_bytes());
                    digest.update(column.as_bytes());
                    digest.update([0]);
                    digest.update((plain.len() as u64).to_be_bytes());
                    digest.update(plain.as_slice());
                    (plain.as_slice() != records::plaintext(column, id).as_bytes())
                        .then(|| "decrypted to an unexpected value".to_owned())
                }
                Err(error) => Some(error.to_string()),
            };
            if let Some(failure) = failure {
                report.failures += 1;
                if report.failures <= REPORTED_FAILURES {
                    eprintln!("check: id={id} column={column}: {failure}");
                }
            }
        }
    })?;
    report.digest = hex::encode(digest.finalize());
    Ok(report)
}
