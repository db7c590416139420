//! Sampling records of one version from a target through the re-encryption
//! engine's data store (SQLite or PostgreSQL), so unseal and `switch` read
//! targets exactly as the worker does.

use crypto_core::KeyVersion;
use keyholder_reencrypt::Target;

use super::{RecordSampler, SampledRecord};

/// Reads random records of a version from a target's store.
pub struct EngineSampler {
    target: Target,
}

impl EngineSampler {
    /// A sampler of `target`.
    pub fn new(target: Target) -> Self {
        Self { target }
    }
}

impl RecordSampler for EngineSampler {
    fn name(&self) -> &str {
        self.target.name()
    }

    /// Runs on a blocking thread of the daemon's runtime (verification is
    /// CPU work off the async workers), so it may block on the store.
    fn sample(&self, version: KeyVersion, n: u32) -> Result<Vec<SampledRecord>, String> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "sampling a target needs the daemon's runtime".to_owned())?;
        let target = &self.target;
        runtime.block_on(async {
            let store = keyholder_reencrypt::open_store(target)
                .await
                .map_err(|e| e.to_string())?;
            let records = store.sample(version, n).await.map_err(|e| e.to_string())?;
            Ok(records
                .into_iter()
                .map(|r| SampledRecord {
                    id: format!(
                        "{}.{} {}={}",
                        target.table(),
                        r.column,
                        target.primary_key(),
                        r.pk
                    ),
                    aad: target.aad_for(&r.column, &r.pk),
                    record: r.ciphertext,
                })
                .collect())
        })
    }
}
