//! Reloading the config without sealing (SIGHUP, `POST /v1/admin/reload`).
//!
//! A reload re-reads the config file and every file it names, validates all
//! of it exactly as start-up does ([`Config::load`], the TLS config, the
//! certificate dates), refuses by name a change that cannot apply while the
//! daemon runs, and only then swaps it in: the config the daemon and the
//! orchestrator read per request and per step, the principals (recorded in
//! the state store), the TLS config and principals connections are served
//! with (new ones from their handshake, open ones from their next request:
//! see `transport`), and a cluster node's client certificate, key and peer
//! CA its calls to the peers present and trust. The keys stay in memory, the
//! daemon stays unsealed, a rotation keeps running. A refused reload changes
//! nothing. Each reload, done or refused, is an audit entry.

use std::fmt::Debug;
use std::sync::Arc;

use serde_json::json;
use tokio::sync::watch;

use crate::cluster::peers::PeerClient;
use crate::config::{Config, ConfigError};
use crate::daemon::{Daemon, DaemonError};
use crate::rotation::RotationHandle;
use crate::transport::expiry::{self, CredentialDates};
use crate::transport::{Credentials, identity, tls};

/// Why a reload was refused; nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The config file cannot be read, does not parse or has wrong values.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A TLS file it names is unusable.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// Settings that cannot change while keyholderd runs were changed.
    #[error(
        "the new config changes {} which cannot change while keyholderd runs; put the old value back to reload the rest, or restart keyholderd (and unseal) to change it",
        .0.join(", ")
    )]
    NeedsRestart(Vec<&'static str>),
    /// The new principals could not be recorded in the state store.
    #[error(transparent)]
    Daemon(#[from] DaemonError),
}

/// What a reload changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reloaded {
    /// The config fields whose values changed (the TLS files are re-read
    /// whether or not their paths changed).
    pub changed: Vec<&'static str>,
}

/// Installs the SIGHUP handler (before anything else can take time).
pub fn hangup() -> std::io::Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
}

/// Who asked for a reload.
#[derive(Clone, Copy, Debug)]
pub enum Trigger<'a> {
    /// SIGHUP.
    Signal,
    /// `POST /v1/admin/reload` by this operator.
    Api(&'a str),
}

/// Owns what a reload publishes. One per daemon; reloads run one at a time.
pub struct Reloader {
    daemon: Arc<Daemon>,
    rotation: RotationHandle,
    credentials: watch::Sender<Credentials>,
    dates: watch::Sender<CredentialDates>,
    peers: Option<PeerClient>,
    one_at_a_time: tokio::sync::Mutex<()>,
}

fn differs<T: Debug + ?Sized>(old: &T, new: &T) -> bool {
    // Compared, never shown: a PostgreSQL location's Debug may hold its
    // password.
    format!("{old:?}") != format!("{new:?}")
}

/// The settings whose change a running daemon refuses: what the state, the
/// shares, the listeners and the open unseal depend on.
fn fixed(old: &Config, new: &Config) -> Vec<&'static str> {
    let keyholders = |c: &Config| {
        c.keyholders()
            .map(|p| (p.name.clone(), p.age_recipient.clone()))
            .collect::<Vec<_>>()
    };
    let checks: [(&'static str, bool); 13] = [
        ("keyring", old.keyring != new.keyring),
        ("state_dir/state_store", differs(&old.state, &new.state)),
        ("listen.addr", old.listen.addr != new.listen.addr),
        (
            "listen.metrics_addr",
            old.listen.metrics_addr != new.listen.metrics_addr,
        ),
        (
            "listen.handshake_timeout",
            old.listen.handshake_timeout != new.listen.handshake_timeout,
        ),
        (
            "listen.header_read_timeout",
            old.listen.header_read_timeout != new.listen.header_read_timeout,
        ),
        (
            "listen.max_connections",
            old.listen.max_connections != new.listen.max_connections,
        ),
        (
            "listen.max_connections_per_principal",
            old.listen.max_connections_per_principal != new.listen.max_connections_per_principal,
        ),
        ("shamir.threshold", old.threshold != new.threshold),
        ("unseal.progress_ttl", old.progress_ttl != new.progress_ttl),
        ("targets", differs(&old.targets, &new.targets)),
        ("cluster", old.cluster != new.cluster),
        (
            "principals (the keyholders: their names, order or age_recipient)",
            keyholders(old) != keyholders(new),
        ),
    ];
    checks
        .into_iter()
        .filter_map(|(field, changed)| changed.then_some(field))
        .collect()
}

/// The settings a reload applies, when they changed.
fn live(old: &Config, new: &Config) -> Vec<&'static str> {
    let checks: [(&'static str, bool); 10] = [
        ("listen.cert", old.listen.cert != new.listen.cert),
        ("listen.key", old.listen.key != new.listen.key),
        (
            "listen.client_ca",
            old.listen.client_ca != new.listen.client_ca,
        ),
        ("listen.crl", old.listen.crl != new.listen.crl),
        (
            "listen.identity_field",
            old.listen.identity_field != new.listen.identity_field,
        ),
        ("principals", old.principals != new.principals),
        ("verify.sample_size", old.sample_size != new.sample_size),
        ("reencrypt", differs(&old.reencrypt, &new.reencrypt)),
        ("rotation", differs(&old.rotation, &new.rotation)),
        ("usage", old.usage != new.usage),
    ];
    checks
        .into_iter()
        .filter_map(|(field, changed)| changed.then_some(field))
        .collect()
}

/// The credentials new connections get under `config`.
pub fn credentials(config: &Config) -> Result<Credentials, tls::TlsError> {
    let server = tls::server_config(&config.listen)?;
    Ok(Credentials {
        tls: server.config,
        verifier: server.verifier,
        principals: Arc::new(identity::Directory {
            field: config.listen.identity_field,
            principals: config.principals.clone().into(),
        }),
    })
}

impl Reloader {
    /// A reloader publishing on `credentials` and `dates` (what the accept
    /// loop and the daily expiry warning read), and re-reading the files of
    /// `peers`, a cluster node's client of its peers.
    pub fn new(
        daemon: Arc<Daemon>,
        rotation: RotationHandle,
        credentials: watch::Sender<Credentials>,
        dates: watch::Sender<CredentialDates>,
        peers: Option<PeerClient>,
    ) -> Self {
        Self {
            daemon,
            rotation,
            credentials,
            dates,
            peers,
            one_at_a_time: tokio::sync::Mutex::new(()),
        }
    }

    /// Re-reads, validates and swaps in the config; audited either way.
    pub async fn reload(&self, trigger: Trigger<'_>) -> Result<Reloaded, ReloadError> {
        let _one = self.one_at_a_time.lock().await;
        let (actor, via) = match trigger {
            Trigger::Signal => (crate::audit::DAEMON, "sighup"),
            Trigger::Api(operator) => (operator, "api"),
        };
        let result = self.swap(actor, via).await;
        // A reload applied was audited by `swap` before anything changed.
        if let Err(e) = &result {
            let detail = json!({"via": via, "error": e.to_string()});
            if let Err(e) = self
                .daemon
                .audit(actor, "config_reload_refused", detail)
                .await
            {
                tracing::error!(error = %e, "the reload's audit entry could not be written");
            }
        }
        match &result {
            Ok(done) => {
                tracing::info!(via, changed = ?done.changed, "config reloaded; still unsealed where it was")
            }
            Err(e) => {
                tracing::warn!(via, error = %e, "config reload refused; nothing changed")
            }
        }
        result
    }

    /// Validates the new config, records its principals, audits the reload
    /// and only then applies it: a reload the audit log cannot record
    /// changes nothing.
    async fn swap(&self, actor: &str, via: &str) -> Result<Reloaded, ReloadError> {
        let old = self.daemon.config();
        let new = Config::load(&old.path)?;
        let credentials = credentials(&new)?;
        let dates = expiry::read(&new.listen)?;
        let peer_credentials = match (&self.peers, &new.cluster) {
            (Some(_), Some(cluster)) => Some(PeerClient::read(cluster)?),
            _ => None,
        };
        let fixed = fixed(&old, &new);
        if !fixed.is_empty() {
            return Err(ReloadError::NeedsRestart(fixed));
        }
        let changed = live(&old, &new);
        self.daemon.sync_principals(&new).await?;
        self.daemon
            .audit(
                actor,
                "config_reloaded",
                json!({"via": via, "changed": changed}),
            )
            .await?;
        self.daemon.publish_config(Arc::new(new));
        self.credentials.send_replace(credentials);
        if let (Some(peers), Some(read)) = (&self.peers, peer_credentials) {
            peers.replace(read);
        }
        self.daemon.metrics().set_certificates(&dates);
        self.dates.send_replace(dates);
        dates.log(std::time::SystemTime::now());
        self.rotation.reloaded().await;
        Ok(Reloaded { changed })
    }

    /// Reloads on every SIGHUP (`hangup`, installed at start-up so an early
    /// one does not end the process) until `stop`; a refusal is logged.
    pub async fn on_sighup(
        self: Arc<Self>,
        mut hangup: tokio::signal::unix::Signal,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                Some(()) = hangup.recv() => {
                    tracing::info!("SIGHUP received: reloading the config");
                    let _ = self.reload(Trigger::Signal).await;
                }
                // The stop flag only ever turns true.
                _ = stop.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{Dir, base, principal};

    fn principals(extra: &str) -> String {
        format!(
            "{}{}{}{extra}",
            principal("alice", "keyholder", "alice"),
            principal("bob", "keyholder", "bob"),
            principal("olivia", "operator", "olivia"),
        )
    }

    #[test]
    fn a_new_operator_applies_live_and_what_the_state_and_the_shares_depend_on_is_refused_by_name()
    {
        let dir = Dir::new();
        let people = principals("");
        let old = dir.load(&base(2, &people)).unwrap();
        let added = format!("{people}{}", principal("olga", "operator", "olga"));
        let new = dir.load(&base(2, &added)).unwrap();
        assert!(fixed(&old, &new).is_empty());
        assert_eq!(live(&old, &new), ["principals"]);

        let text =
            base(2, &people).replacen("addr = \"127.0.0.1:8443\"", "addr = \"127.0.0.1:8444\"", 1);
        let moved = dir
            .load(&text.replacen("keyring = \"orders\"", "keyring = \"payments\"", 1))
            .unwrap();
        assert_eq!(fixed(&old, &moved), ["keyring", "listen.addr"]);

        // A keyholder added changes how shares are dealt.
        let third = format!("{people}{}", principal("carol", "keyholder", "carol"));
        let more = dir.load(&base(2, &third)).unwrap();
        assert_eq!(
            fixed(&old, &more),
            ["principals (the keyholders: their names, order or age_recipient)"]
        );
        let wider = dir.load(&base(2, &third)).unwrap();
        let stricter = dir.load(&base(3, &third)).unwrap();
        assert_eq!(fixed(&wider, &stricter), ["shamir.threshold"]);
    }
}
