//! Proving rebuilt keys before the daemon unseals: the KCV, the version's
//! canary, and sample records of every configured target.
//!
//! Owns the decision "these keys may be loaded". A failure names the version,
//! the target and the record ids that did not decrypt; it never carries a
//! record's content or a key. Sampling goes through [`RecordSampler`]
//! (the re-encryption engine's stores, SQLite and PostgreSQL), so this logic
//! never touches a database itself.

pub mod engine;

use std::collections::BTreeMap;
use std::fmt;

use crypto_core::{Key, KeyVersion, KeyringId};

use crate::store::VersionRecord;

/// One sampled record: where it is and what to decrypt.
pub struct SampledRecord {
    /// Its id as shown to operators (`customers.ssn id=17`).
    pub id: String,
    /// The stored envelope text.
    pub record: String,
    /// Its associated data.
    pub aad: Vec<u8>,
}

/// A source of random records of one version.
pub trait RecordSampler: Send + Sync {
    /// The target's name.
    fn name(&self) -> &str;
    /// Up to `n` random records of `version`.
    fn sample(&self, version: KeyVersion, n: u32) -> Result<Vec<SampledRecord>, String>;
}

/// Builds the sampler of a configured target (SQLite or PostgreSQL).
pub fn sampler_for(target: &keyholder_reencrypt::Target) -> Box<dyn RecordSampler> {
    Box::new(engine::EngineSampler::new(target.clone()))
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

/// Checks every rebuilt key: KCV, canary, then up to `sample_size` records of
/// its version from each target. Returns every failure found.
pub fn verify(
    keyring: &KeyringId,
    keys: &BTreeMap<KeyVersion, Key>,
    versions: &BTreeMap<KeyVersion, VersionRecord>,
    samplers: &[Box<dyn RecordSampler>],
    sample_size: u32,
) -> Result<Report, Vec<Failure>> {
    let mut failures = Vec::new();
    let mut report = Report::default();
    for (version, key) in keys {
        let fail = |check: &str, reason: String, record_ids: Vec<String>| Failure {
            version: *version,
            check: check.to_owned(),
            record_ids,
            reason,
        };
        let Some(record) = versions.get(version) else {
            failures.push(fail(
                "kcv",
                "the version is not in the state store".into(),
                vec![],
            ));
            continue;
        };
        if !record.kcv.matches(key, keyring, *version) {
            failures.push(fail(
                "kcv",
                "the rebuilt key does not match its key check value".into(),
                vec![],
            ));
            continue;
        }
        if crypto_core::envelope::open(
            key,
            *version,
            &record.canary.record,
            record.canary.aad.as_bytes(),
        )
        .is_err()
        {
            failures.push(fail(
                "canary",
                "the canary record made with this version does not decrypt".into(),
                vec![],
            ));
            continue;
        }
        let mut sampled = 0;
        for sampler in samplers {
            let check = format!("target {}", sampler.name());
            let records = match sampler.sample(*version, sample_size) {
                Ok(records) => records,
                Err(reason) => {
                    failures.push(fail(&check, format!("sampling failed: {reason}"), vec![]));
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
                    &check,
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
