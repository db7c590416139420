//! Proving rebuilt keys before the daemon unseals: the KCV, the version's
//! canary, and sample records of every configured target.
//!
//! Owns the decision "these keys may be loaded", over records the daemon
//! already fetched. A failure names the version, the target and the record
//! ids that did not decrypt; it never carries a record's content or a key.

use std::collections::BTreeMap;
use std::fmt;

use crypto_core::{Key, KeyVersion, KeyringId};

use crate::facts::VersionRecord;

/// One sampled record: where it is and what to decrypt.
pub struct SampledRecord {
    /// Its id as shown to operators (`customers.ssn id=17`).
    pub id: String,
    /// The stored envelope text.
    pub record: String,
    /// Its associated data.
    pub aad: Vec<u8>,
}

/// One check that failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The version whose key failed.
    pub version: KeyVersion,
    /// What failed: `kcv`, `canary` or `target <name>`.
    pub check: String,
    /// Record ids that did not decrypt (none for KCV and canary).
    pub record_ids: Vec<String>,
    /// Why, without data.
    pub reason: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} failed its {} check: {}",
            self.version, self.check, self.reason
        )?;
        if !self.record_ids.is_empty() {
            write!(f, " (records: {})", self.record_ids.join(", "))?;
        }
        Ok(())
    }
}

/// What verification checked, per version.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Version -> records test-decrypted across all targets.
    pub sampled: BTreeMap<KeyVersion, usize>,
}

/// The sampled records of one target for one version, or why sampling
/// failed (a database error in its own words, no data).
pub struct TargetSample {
    /// The target's name.
    pub target: String,
    /// Its records, or why none could be read.
    pub records: Result<Vec<SampledRecord>, String>,
}

/// Checks one rebuilt key against what the store recorded for its version:
/// the key check value, then the canary. `record` is `None` when the store
/// does not know the version.
pub fn check_key(
    keyring: &KeyringId,
    version: KeyVersion,
    key: &Key,
    record: Option<&VersionRecord>,
) -> Result<(), Failure> {
    let fail = |check: &str, reason: &str| Failure {
        version,
        check: check.to_owned(),
        record_ids: Vec::new(),
        reason: reason.to_owned(),
    };
    let Some(record) = record else {
        return Err(fail("kcv", "the version is not in the state store"));
    };
    if !record.kcv.matches(key, keyring, version) {
        return Err(fail(
            "kcv",
            "the rebuilt key does not match its key check value",
        ));
    }
    if crypto_core::envelope::open(
        key,
        version,
        &record.canary.record,
        record.canary.aad.as_bytes(),
    )
    .is_err()
    {
        return Err(fail(
            "canary",
            "the canary record made with this version does not decrypt",
        ));
    }
    Ok(())
}

/// Decides whether `keys` may be loaded: each must pass [`check_key`], then
/// every sampled record of its version (`samples`, fetched by the caller for
/// the keys that passed) must decrypt with it. Returns every failure found.
pub fn decide(
    keyring: &KeyringId,
    keys: &BTreeMap<KeyVersion, Key>,
    versions: &BTreeMap<KeyVersion, VersionRecord>,
    samples: &BTreeMap<KeyVersion, Vec<TargetSample>>,
) -> Result<Report, Vec<Failure>> {
    let mut failures = Vec::new();
    let mut report = Report::default();
    for (version, key) in keys {
        if let Err(failure) = check_key(keyring, *version, key, versions.get(version)) {
            failures.push(failure);
            continue;
        }
        let mut sampled = 0;
        for sample in samples.get(version).map_or(&[][..], Vec::as_slice) {
            let fail = |reason: String, record_ids: Vec<String>| Failure {
                version: *version,
                check: format!("target {}", sample.target),
                record_ids,
                reason,
            };
            let records = match &sample.records {
                Ok(records) => records,
                Err(reason) => {
                    failures.push(fail(format!("sampling failed: {reason}"), vec![]));
                    continue;
                }
            };
            let bad: Vec<String> = records
                .iter()
                .filter(|r| crypto_core::envelope::open(key, *version, &r.record, &r.aad).is_err())
                .map(|r| r.id.clone())
                .collect();
            sampled += records.len();
            if !bad.is_empty() {
                failures.push(fail(
                    format!(
                        "{} of {} sampled records do not decrypt with the rebuilt key",
                        bad.len(),
                        records.len()
                    ),
                    bad,
                ));
            }
        }
        report.sampled.insert(*version, sampled);
    }
    if failures.is_empty() {
        Ok(report)
    } else {
        Err(failures)
    }
}

#[cfg(test)]
mod tests;
