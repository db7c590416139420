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
