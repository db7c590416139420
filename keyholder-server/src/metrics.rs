//! Prometheus metrics: seal state, loaded versions, unseal submissions,
//! keyring fetches, each version's encryptions and usage level, the rotation's state and re-encryption progress, and what
//! the limits refused (connections, handshakes, rate-limited submissions).
//! Served on the optional loopback plain port.
//!
//! Owns the registry. Metrics carry counts and version numbers only, never a
//! key, a share or a record.

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The label of the rotation state gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    /// The snake_case rotation state.
    pub state: &'static str,
}

/// The re-encryption progress gauges.
#[derive(Default)]
pub struct RotationGauges {
    /// 1 for the state the rotation is in, 0 for the others.
    pub state: Family<StateLabel, Gauge>,
    /// Records moved in the current direction.
    pub rows_done: Gauge,
    /// Records still at the version being moved away from.
    pub rows_remaining: Gauge,
    /// Compare-and-swap conflicts with application writes.
    pub conflicts: Gauge,
    /// The recent rate, records per second.
    pub rows_per_sec: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// 1 while an operator paused the worker.
    pub paused: Gauge,
    /// Seconds the workers' batches held their locks in the targets.
    pub locked_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Transient database failures the running worker retried.
    pub retries: Gauge,
    /// 1 while the worker waits to try again after one.
    pub retrying: Gauge,
    /// 1 for the kind of the latest transient failure: its SQLSTATE, or
    /// `connection` when the server did not answer.
    pub last_transient_error: Family<CodeLabel, Gauge>,
}

/// The label of the latest transient failure.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    /// A SQLSTATE (`57P01`) or `connection`.
    pub code: String,
}

/// The label of a version's encryption count.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabel {
    /// The version number.
    pub version: u32,
}

/// The labels of a version's usage level gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UsageLabel {
    /// The version number.
    pub version: u32,
    /// `ok`, `warning` or `exhausted`.
    pub level: &'static str,
}

/// The label of an unseal submission counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `accepted` or `refused`.
    pub outcome: &'static str,
}

/// The label of a credential's expiry gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CredentialLabel {
    /// `server_cert`, `client_ca` or `crl_next_update`.
    pub credential: &'static str,
}

/// The TLS credentials' dates: a gauge per credential and the status
/// document's copy.
#[derive(Default)]
pub struct CertificateDates {
    /// Unix seconds of each end of validity (or the CRL's next update).
    pub expiry: Family<CredentialLabel, Gauge>,
    current: Mutex<Option<keyholder_api::CertificateExpiry>>,
}

/// The label of a failed TLS handshake counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabel {
    /// `timed_out` or `refused`.
    pub reason: &'static str,
}

/// What the transport counts; cheap clones of the registered metrics.
#[derive(Clone, Default)]
pub struct ConnectionMetrics {
    /// Connections open now (handshaking or serving).
    pub open: Gauge,
    /// Connections closed at once because a limit (all, or per principal)
    /// was reached.
    pub refused: Counter,
    /// TLS handshakes that failed, by reason.
    pub handshake_failures: Family<HandshakeLabel, Counter>,
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
    /// Rotation and re-encryption progress, refreshed at each scrape.
    pub rotation: RotationGauges,
    /// Pages holding keys that are locked in RAM now.
    pub key_pages_locked: Gauge,
    /// Key page locks the system refused.
    pub key_page_locks_refused: Gauge,
    /// Share submissions refused by the failed-submission budget.
    pub submissions_rate_limited: Counter,
    /// Connection and handshake counts of the transport.
    pub connections: ConnectionMetrics,
    /// When the TLS credentials run out.
    pub certificates: CertificateDates,
    /// Encryptions counted per version (the daemon's and the reported).
    pub version_encryptions: Family<VersionLabel, Gauge>,
    /// 1 for the usage level each version is at, 0 for the others.
    pub version_usage: Family<UsageLabel, Gauge>,
    /// The cluster, as the last lease round read it.
    pub cluster: ClusterGauges,
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
        let rotation = RotationGauges::default();
        registry.register(
            "rotation_state",
            "1 for the rotation state the keyring is in",
            rotation.state.clone(),
        );
        registry.register(
            "reencrypt_rows_done",
            "Records re-encrypted in the current direction",
            rotation.rows_done.clone(),
        );
        registry.register(
            "reencrypt_rows_remaining",
            "Records still at the version being moved away from",
            rotation.rows_remaining.clone(),
        );
        registry.register(
            "reencrypt_conflicts",
            "Compare-and-swap conflicts with application writes (rows revisited)",
            rotation.conflicts.clone(),
        );
        registry.register(
            "reencrypt_rows_per_second",
            "Recent re-encryption rate",
            rotation.rows_per_sec.clone(),
        );
        registry.register(
            "reencrypt_paused",
            "1 while an operator paused the re-encryption worker",
            rotation.paused.clone(),
        );
        registry.register(
            "reencrypt_locked_seconds",
            "Seconds the running workers' batches held their locks in the targets (on SQLite the database's write lock); its rate is the share of the time they did",
            rotation.locked_seconds.clone(),
        );
        let key_pages_locked = Gauge::default();
        let key_page_locks_refused = Gauge::default();
        registry.register(
            "key_pages_locked",
            "Memory pages holding keys that are locked in RAM (mlock)",
            key_pages_locked.clone(),
        );
        registry.register(
            "key_page_locks_refused",
            "Key page locks the system refused since start (raise LimitMEMLOCK)",
            key_page_locks_refused.clone(),
        );
        let submissions_rate_limited = Counter::default();
        registry.register(
            "share_submissions_rate_limited",
            "Share submissions refused (429) because the principal's failed submissions used up its budget",
            submissions_rate_limited.clone(),
        );
        let connections = ConnectionMetrics::default();
        registry.register(
            "connections_open",
            "Client connections open (handshaking or serving)",
            connections.open.clone(),
        );
        registry.register(
            "connections_refused",
            "Client connections closed at once because listen.max_connections, or listen.max_connections_per_principal for their principal, was reached",
            connections.refused.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed, by reason (timed_out or refused)",
            connections.handshake_failures.clone(),
        );
        registry.register(
            "reencrypt_retries",
            "Transient database failures the re-encryption worker retried (deadlock, lost connection, server restart)",
            rotation.retries.clone(),
        );
        registry.register(
            "reencrypt_retrying",
            "1 while the re-encryption worker waits to try again after a transient database failure",
            rotation.retrying.clone(),
        );
        registry.register(
            "reencrypt_last_transient_error",
            "1 for the SQLSTATE (or `connection`) of the latest transient database failure",
            rotation.last_transient_error.clone(),
        );
        let certificates = CertificateDates::default();
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "When each TLS credential runs out, Unix seconds: server_cert and client_ca notAfter, crl_next_update",
            certificates.expiry.clone(),
        );
        let version_encryptions = Family::<VersionLabel, Gauge>::default();
        registry.register(
            "version_encryptions",
            "Encryptions counted under each key version: the daemon's own and those database processes reported with their keyring fetches",
            version_encryptions.clone(),
        );
        let version_usage = Family::<UsageLabel, Gauge>::default();
        registry.register(
            "version_usage",
            "1 for the usage level of each key version (ok; warning from usage.warn_at, 2^31 by default: rotate now; exhausted from usage.limit, 2^32: rotate to a new version now)",
            version_usage.clone(),
        );
        let cluster = ClusterGauges::default();
        registry.register(
            "cluster_leader",
            "1 while this node holds the cluster's lease",
            cluster.leader.clone(),
        );
        registry.register(
            "cluster_epoch",
            "The cluster lease's epoch (one more at every change of leader)",
            cluster.epoch.clone(),
        );
        registry.register(
            "cluster_lease_age_seconds",
            "Seconds since the leader took the lease",
            cluster.lease_age.clone(),
        );
        registry.register(
            "cluster_node_heartbeat_age_seconds",
            "Seconds since each node's last heartbeat, by the state store's clock",
            cluster.heartbeat_age.clone(),
        );
        registry.register(
            "cluster_node_sealed",
            "1 for each node that held no key at its last heartbeat",
            cluster.node_sealed.clone(),
        );
        sealed.set(1);
        Self {
            version_encryptions,
            version_usage,
            cluster,
            certificates,
            key_pages_locked,
            key_page_locks_refused,
            rotation,
            submissions_rate_limited,
            connections,
            sealed,
            versions_loaded,
            unseal_shares,
            keyring_fetches,
            registry: Mutex::new(registry),
        }
    }
}

/// The cluster's gauges (all zero outside a cluster).
#[derive(Default)]
pub struct ClusterGauges {
    /// 1 while this node leads.
    pub leader: Gauge,
    /// The lease's epoch.
    pub epoch: Gauge,
    /// Seconds since the leader took the lease.
    pub lease_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Seconds since each node's heartbeat.
    pub heartbeat_age: Family<NodeLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// 1 for each sealed node.
    pub node_sealed: Family<NodeLabel, Gauge>,
}

/// A cluster node's name, as a metric label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct NodeLabel {
    /// The node's name.
    pub node: String,
}

impl Metrics {
    /// Publishes the cluster as a lease round read it.
    pub fn set_cluster(&self, status: &keyholder_api::ClusterStatus) {
        let c = &self.cluster;
        c.leader.set(i64::from(
            status.leader.as_deref() == Some(status.node.as_str()),
        ));
        c.epoch.set(i64::try_from(status.epoch).unwrap_or(i64::MAX));
        c.lease_age
            .set(status.lease_age_ms.unwrap_or(0) as f64 / 1000.0);
        for node in &status.nodes {
            let label = NodeLabel {
                node: node.name.clone(),
            };
            if let Some(age) = node.heartbeat_age_ms {
                c.heartbeat_age
                    .get_or_create(&label)
                    .set(age as f64 / 1000.0);
            }
            c.node_sealed
                .get_or_create(&label)
                .set(i64::from(node.sealed.unwrap_or(true)));
        }
    }

    /// Counts one submitted share.
    pub fn share(&self, accepted: bool) {
        let outcome = if accepted { "accepted" } else { "refused" };
        self.unseal_shares
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// Publishes the TLS credentials' dates (metric and status).
    pub fn set_certificates(&self, dates: &crate::transport::expiry::CredentialDates) {
        self.certificates.expiry.clear();
        for (credential, at) in dates.labelled() {
            self.certificates
                .expiry
                .get_or_create(&CredentialLabel { credential })
                .set(at);
        }
        *self
            .certificates
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(dates.to_api());
    }

    /// The TLS credentials' dates for the status document.
    pub fn certificates(&self) -> Option<keyholder_api::CertificateExpiry> {
        self.certificates
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Records the seal state.
    pub fn set_loaded(&self, versions: usize) {
        self.sealed.set(i64::from(versions == 0));
        self.versions_loaded.set(versions as i64);
    }

    /// Publishes the rotation part of the status document.
    pub fn set_rotation(&self, status: &keyholder_api::RotationStatus) {
        for state in keyholder_api::RotationState::ALL {
            self.rotation
                .state
                .get_or_create(&StateLabel {
                    state: state.as_str(),
                })
                .set(i64::from(state == status.state));
        }
        let clamp = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.rotation.rows_done.set(clamp(status.rows_done));
        self.rotation
            .rows_remaining
            .set(clamp(status.rows_remaining));
        self.rotation.conflicts.set(clamp(status.conflicts));
        self.rotation.rows_per_sec.set(status.rows_per_sec);
        self.rotation.paused.set(i64::from(status.paused));
        self.rotation.locked_seconds.set(status.locked_seconds);
        self.rotation.retries.set(clamp(status.retries));
        self.rotation.retrying.set(i64::from(status.retrying));
        self.rotation.last_transient_error.clear();
        if let Some(error) = &status.last_transient_error {
            let code = error
                .split_once("SQLSTATE ")
                .and_then(|(_, rest)| rest.get(..5))
                .unwrap_or("connection");
            self.rotation
                .last_transient_error
                .get_or_create(&CodeLabel {
                    code: code.to_owned(),
                })
                .set(1);
        }
    }

    /// Publishes each version's encryption count and usage level.
    pub fn set_usage(&self, versions: &[keyholder_api::VersionStatus]) {
        use keyholder_api::UsageLevel;
        self.version_encryptions.clear();
        self.version_usage.clear();
        for v in versions {
            let version = v.version.number();
            self.version_encryptions
                .get_or_create(&VersionLabel { version })
                .set(i64::try_from(v.encryptions).unwrap_or(i64::MAX));
            for level in [UsageLevel::Ok, UsageLevel::Warning, UsageLevel::Exhausted] {
                self.version_usage
                    .get_or_create(&UsageLabel {
                        version,
                        level: level.as_str(),
                    })
                    .set(i64::from(level == v.usage));
            }
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let locks = crypto_core::memory_lock_report();
        self.key_pages_locked
            .set(i64::try_from(locks.locked_pages).unwrap_or(i64::MAX));
        self.key_page_locks_refused
            .set(i64::try_from(locks.refused).unwrap_or(i64::MAX));
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyholder_api::{RotationState, RotationStatus};

    #[test]
    fn the_rotation_is_exported_with_its_state_and_progress() {
        let metrics = Metrics::default();
        metrics.set_rotation(&RotationStatus {
            state: RotationState::Reencrypting,
            from: crypto_core::KeyVersion::new(9).ok(),
            to: crypto_core::KeyVersion::new(10).ok(),
            rows_done: 120_000,
            rows_remaining: 880_000,
            conflicts: 3,
            rows_per_sec: 41_000.5,
            eta_seconds: Some(21),
            paused: false,
            verified_by: vec![],
            acknowledged_by: vec![],
            waiting_for: vec![],
            retire_approvals: vec![],
            rows_per_sec_limit: 0,
            batch_size: 1000,
            last_error: None,
            retries: 4,
            last_transient_error: Some(
                "target `orders`: postgres write batch failed: SQLSTATE 57P01: terminating connection due to administrator command".to_owned(),
            ),
            retrying: true,
            locked_seconds: 12.25,
        });
        let text = metrics.render();
        for line in [
            "keyholder_rotation_state{state=\"reencrypting\"} 1",
            "keyholder_rotation_state{state=\"drained\"} 0",
            "keyholder_reencrypt_rows_done 120000",
            "keyholder_reencrypt_rows_remaining 880000",
            "keyholder_reencrypt_conflicts 3",
            "keyholder_reencrypt_rows_per_second 41000.5",
            "keyholder_reencrypt_paused 0",
            "keyholder_reencrypt_locked_seconds 12.25",
            "keyholder_reencrypt_retries 4",
            "keyholder_reencrypt_retrying 1",
            "keyholder_reencrypt_last_transient_error{code=\"57P01\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }
}
