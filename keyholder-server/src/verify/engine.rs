//! Sampling records of one version from a target through the re-encryption
//! engine's data store (SQLite or PostgreSQL), so unseal and `switch` read
//! targets exactly as the worker does.
//!
//! A transient database failure (the server restarting, a lost connection)
//! is retried on a fresh store for up to [`RETRY_FOR`], each retry logged,
//! so a database restart during an unseal does not throw the submitted
//! shares away; a persistent one fails at once.

use std::time::Duration;

use crypto_core::KeyVersion;
use futures::future::BoxFuture;
use keyholder_reencrypt::Target;

/// How long sampling keeps trying through transient failures.
pub const RETRY_FOR: Duration = Duration::from_secs(30);
/// The first wait between two tries; it doubles up to [`MAX_WAIT`].
const FIRST_WAIT: Duration = Duration::from_millis(200);
/// The longest wait between two tries.
const MAX_WAIT: Duration = Duration::from_secs(5);

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

    fn sample(
        &self,
        version: KeyVersion,
        n: u32,
    ) -> BoxFuture<'_, Result<Vec<SampledRecord>, String>> {
        let target = &self.target;
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + RETRY_FOR;
            let mut wait = FIRST_WAIT;
            let mut retries = 0u32;
            let records = loop {
                match sample_once(target, version, n).await {
                    Ok(records) => break records,
                    Err(error) if error.is_transient() => {
                        let now = tokio::time::Instant::now();
                        if now + wait > deadline {
                            return Err(format!(
                                "{error} (transient; still failing after {retries} retries over {}s: try again once the database answers)",
                                RETRY_FOR.as_secs()
                            ));
                        }
                        retries += 1;
                        tracing::warn!(target = %target.name(), retries, wait_ms = wait.as_millis() as u64, %error, "sampling met a transient database failure; trying again on a fresh connection");
                        // Jitter: a uniform draw from the wait's upper half.
                        tokio::time::sleep(wait / 2 + wait.mul_f64(rand::random_range(0.0..0.5)))
                            .await;
                        wait = (wait * 2).min(MAX_WAIT);
                    }
                    Err(error) => return Err(error.to_string()),
                }
            };
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

/// One try: a fresh store, then the sample.
async fn sample_once(
    target: &Target,
    version: KeyVersion,
    n: u32,
) -> keyholder_reencrypt::Result<Vec<keyholder_reencrypt::SampleRecord>> {
    let store = keyholder_reencrypt::open_store(target).await?;
    store.sample(version, n).await
}
