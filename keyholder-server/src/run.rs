//! `keyholderd run`: harden the process, build TLS, open the state, listen,
//! serve until SIGTERM/SIGINT, drain and drop every key.
//!
//! Everything that can be wrong with the config is found before a port is
//! bound.

use std::sync::Arc;

use crate::config::Config;
use crate::daemon::{Daemon, DaemonError};
use crate::hygiene::{self, HygieneError};
use crate::transport::{self, tls};

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Process hardening failed.
    #[error(transparent)]
    Hygiene(#[from] HygieneError),
    /// The TLS configuration is unusable.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The daemon's state could not be opened.
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    /// A listener could not be bound.
    #[error("{0}")]
    Bind(std::io::Error),
    /// The rotation state could not be loaded.
    #[error(transparent)]
    Rotation(#[from] crate::rotation::RotationError),
}

/// Runs the daemon with `extra` routes (the rotation's) until a shutdown signal.
pub async fn run(config: Config) -> Result<(), RunError> {
    hygiene::harden()?;
    // From here a SIGHUP reloads (once the daemon runs) instead of ending
    // the process.
    let hangup = crate::reload::hangup().map_err(|e| {
        RunError::Bind(std::io::Error::new(
            e.kind(),
            format!("cannot install the SIGHUP handler: {e}"),
        ))
    })?;
    let credentials = crate::reload::credentials(&config)?;
    // The peers' client is read with the other TLS files, before a port is bound.
    let peer_client = config
        .cluster
        .as_ref()
        .map(crate::cluster::peers::PeerClient::new)
        .transpose()?;
    let dates = transport::expiry::read(&config.listen)?;
    dates.log(std::time::SystemTime::now());
    let listen = config.listen.clone();
    crate::check::warn_plaintext_postgres(&config);
    let daemon = Daemon::open(config).await?;
    daemon.metrics().set_certificates(&dates);
    // A reload publishes new dates and credentials on these.
    let (dates_tx, mut dates_rx) = tokio::sync::watch::channel(dates);
    let (credentials_tx, credentials_rx) = tokio::sync::watch::channel(credentials);
    tokio::spawn(async move {
        // A daemon runs for months: the warning comes back daily, with the
        // dates of the files last loaded.
        let mut daily = tokio::time::interval(std::time::Duration::from_secs(24 * 3600));
        daily.tick().await;
        loop {
            tokio::select! {
                _ = daily.tick() => {}
                changed = dates_rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    continue;
                }
            }
            let dates = *dates_rx.borrow_and_update();
            dates.warn(std::time::SystemTime::now());
        }
    });
    let (rotation, orchestrator) = crate::rotation::Rotator::start(Arc::clone(&daemon)).await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let lease = daemon.config().cluster.clone().map(|cluster| {
        tokio::spawn(crate::cluster::lease::run(
            Arc::clone(&daemon),
            cluster,
            stop_rx.clone(),
        ))
    });
    let listener = transport::bind(listen.addr).await.map_err(RunError::Bind)?;
    let bound = listener.local_addr().map_err(RunError::Bind)?;
    let reloader = Arc::new(crate::reload::Reloader::new(
        Arc::clone(&daemon),
        rotation.clone(),
        credentials_tx,
        dates_tx,
        peer_client.clone(),
    ));
    tokio::spawn(Arc::clone(&reloader).on_sighup(hangup, stop_rx.clone()));
    if let Some(addr) = listen.metrics_addr {
        let metrics = transport::bind(addr).await.map_err(RunError::Bind)?;
        tracing::info!(addr = %metrics.local_addr().map_err(RunError::Bind)?, "metrics listening (plain HTTP, loopback)");
        let mut stop = stop_rx.clone();
        tokio::spawn(transport::serve_plain(
            metrics,
            crate::api::metrics_app(Arc::clone(&daemon), rotation.clone()),
            async move {
                let _ = stop.wait_for(|s| *s).await;
            },
        ));
    }
    // A cluster node keeps its seal in step with its peers; a peer that is
    // down never holds up the start.
    let cluster = match (daemon.config().cluster.as_ref(), peer_client) {
        (Some(cluster), Some(client)) => {
            let sync = crate::cluster::sync::PeerSync::new(Arc::clone(&daemon), cluster, client);
            tokio::spawn(Arc::clone(&sync).run(stop_rx.clone()));
            Some(sync)
        }
        _ => None,
    };
    tracing::info!(addr = %bound, "listening (mutual TLS 1.3)");
    let app = crate::api::app(Arc::clone(&daemon), rotation.clone(), reloader, cluster);
    let summaries = tokio::spawn(crate::daemon::write_refusal_summaries(
        Arc::clone(&daemon),
        stop_rx.clone(),
    ));
    tokio::spawn(crate::daemon::expire_unseal_progress(
        Arc::clone(&daemon),
        stop_rx.clone(),
    ));
    transport::serve_tls(
        listener,
        credentials_rx,
        app,
        transport::Limits::from_listen(&listen),
        daemon.metrics().connections.clone(),
        transport::shutdown_signal(),
    )
    .await;
    let _ = stop_tx.send(true);
    let _ = summaries.await;
    if let Some(lease) = lease {
        let _ = lease.await;
    }
    rotation.stop().await;
    let _ = orchestrator.await;
    daemon.vault().seal();
    daemon
        .audit(crate::audit::DAEMON, "stopped", serde_json::json!({}))
        .await?;
    tracing::info!("stopped; every key dropped");
    Ok(())
}
