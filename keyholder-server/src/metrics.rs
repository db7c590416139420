//! Prometheus metrics: seal state, loaded versions, unseal submissions,
//! keyring fetches. Served on the optional loopback plain port.
//!
//! Owns the registry. Metrics carry counts and version numbers only, never a
//! key, a share or a record. The rotation adds its own (rows, conflicts) by
//! registering them in [`Metrics::registry`] at start.

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The label of an unseal submission counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `accepted` or `refused`.
    pub outcome: &'static str,
}

/// The daemon's metrics.
pub struct Metrics {
    /// 1 while sealed.
    pub sealed: Gauge,
    /// Versions in the loaded keyring.
    pub versions_loaded: Gauge,
    /// Shares submitted, by outcome.
    pub unseal_shares: Family<OutcomeLabel, Counter>,
    /// Keyring fetches by database principals.
    pub keyring_fetches: Counter,
    /// The registry; add more metrics before serving.
    pub registry: Mutex<Registry>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("keyholder");
        let sealed = Gauge::default();
        let versions_loaded = Gauge::default();
        let unseal_shares = Family::<OutcomeLabel, Counter>::default();
        let keyring_fetches = Counter::default();
        registry.register("sealed", "1 while the daemon holds no key", sealed.clone());
        registry.register(
            "versions_loaded",
            "Key versions in the loaded keyring",
            versions_loaded.clone(),
        );
        registry.register(
            "unseal_shares",
            "Shares submitted for unsealing, by outcome",
            unseal_shares.clone(),
        );
        registry.register(
            "keyring_fetches",
            "Keyring fetches by database principals",
            keyring_fetches.clone(),
        );
        sealed.set(1);
        Self {
            sealed,
            versions_loaded,
            unseal_shares,
            keyring_fetches,
            registry: Mutex::new(registry),
        }
    }
}

impl Metrics {
    /// Counts one submitted share.
    pub fn share(&self, accepted: bool) {
        let outcome = if accepted { "accepted" } else { "refused" };
        self.unseal_shares
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// Records the seal state.
    pub fn set_loaded(&self, versions: usize) {
        self.sealed.set(i64::from(versions == 0));
        self.versions_loaded.set(versions as i64);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("writing to a String cannot fail");
        out
    }
}
