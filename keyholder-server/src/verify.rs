//! Fetching the records that prove rebuilt keys: up to `sample_size` random
//! records of each version from every configured target, through the
//! re-encryption engine's stores (SQLite, PostgreSQL, MySQL), on the async
//! runtime.
//!
//! The decision over them is pure and lives in
//! [`keyholder_core::verification`]; this module only reads.

pub mod engine;

use std::collections::BTreeMap;

use crypto_core::KeyVersion;
use futures::future::BoxFuture;
pub use keyholder_core::verification::{Failure, Report, SampledRecord, TargetSample};

/// A source of random records of one version.
pub trait RecordSampler: Send + Sync {
    /// The target's name.
    fn name(&self) -> &str;
    /// Up to `n` random records of `version`, or why none could be read.
    fn sample(
        &self,
        version: KeyVersion,
        n: u32,
    ) -> BoxFuture<'_, Result<Vec<SampledRecord>, String>>;
}

/// Builds the sampler of a configured target.
pub fn sampler_for(target: &keyholder_reencrypt::Target) -> Box<dyn RecordSampler> {
    Box::new(engine::EngineSampler::new(target.clone()))
}

/// Samples every target for each of `versions`.
pub async fn fetch(
    samplers: &[Box<dyn RecordSampler>],
    versions: impl IntoIterator<Item = KeyVersion>,
    sample_size: u32,
) -> BTreeMap<KeyVersion, Vec<TargetSample>> {
    let mut out = BTreeMap::new();
    for version in versions {
        let mut samples = Vec::with_capacity(samplers.len());
        for sampler in samplers {
            samples.push(TargetSample {
                target: sampler.name().to_owned(),
                records: sampler.sample(version, sample_size).await,
            });
        }
        out.insert(version, samples);
    }
    out
}

/// Records a sample of each probed version for, to name them.
const STRAY_SAMPLE: u32 = 3;

/// Records the keyring about to be loaded (`live`) could not read: at a
/// stored version the rotation keeps out of it (prepared or verified, not
/// retired), or at the version after the highest the store ever made. None
/// exists unless the state store is older than the data: restored from a
/// backup taken before a rotation moved records to a version the backup
/// does not hold live. One failure per target holding such records.
pub async fn stray_records(
    samplers: &[Box<dyn RecordSampler>],
    versions: &[keyholder_core::VersionRecord],
    live: &std::collections::BTreeSet<KeyVersion>,
) -> Vec<Failure> {
    use keyholder_api::VersionState;
    let mut probes: BTreeMap<KeyVersion, Option<VersionState>> = versions
        .iter()
        .filter(|r| r.state != VersionState::Retired && !live.contains(&r.version))
        .map(|r| (r.version, Some(r.state)))
        .collect();
    if let Some(next) = versions
        .iter()
        .map(|r| r.version)
        .max()
        .and_then(|highest| highest.next().ok())
    {
        probes.insert(next, None);
    }
    let samples = fetch(samplers, probes.keys().copied(), STRAY_SAMPLE).await;
    let mut failures = Vec::new();
    for (version, samples) in samples {
        let known = match probes.get(&version).copied().flatten() {
            Some(state) => format!(
                "which the stored rotation keeps out of the keyring ({version} is {})",
                crate::store::state_name(state)
            ),
            None => "a version this state store never made".to_owned(),
        };
        for sample in samples {
            let (reason, record_ids) = match sample.records {
                Ok(records) if records.is_empty() => continue,
                Ok(records) => (
                    format!(
                        "records at {version}, {known}: the state store is older than the data (restored from a backup taken before the rotation to {version} went live?); restore the state store from a backup taken after that, then unseal; no keyring without {version} is handed out meanwhile"
                    ),
                    records.into_iter().map(|r| r.id).collect(),
                ),
                Err(reason) => (
                    format!("sampling for records at {version}, {known}, failed: {reason}"),
                    Vec::new(),
                ),
            };
            failures.push(Failure {
                version,
                check: format!("target {}", sample.target),
                record_ids,
                reason,
            });
        }
    }
    failures
}
