//! The accept loop: TCP, then TLS in its own task under a timeout, then the
//! caller's principal resolved once, then HTTP/1.1 through hyper-util.
//!
//! Owns connections and shutdown. A slow or silent client only holds its own
//! task; a failed handshake (no certificate, another CA, expired or revoked)
//! is logged and the connection dropped. On shutdown the listener closes and
//! open connections drain. Handlers never see a certificate, only a
//! [`Caller`] request extension.

pub mod identity;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

use crate::principal::Principal;
use identity::IdentityError;

/// How long open connections get to finish after a shutdown signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Who is calling, resolved once per connection from the verified client
/// certificate.
#[derive(Clone, Debug)]
pub struct Caller(pub Arc<Result<Principal, IdentityError>>);

/// Serves `router` over mutual TLS on `listener` until `shutdown` resolves,
/// then drains open connections.
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    principals: Arc<identity::Directory>,
    handshake_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        let principals = Arc::clone(&principals);
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::warn!(%peer, error = %e, "tls handshake refused");
                    return;
                }
                Err(_) => {
                    tracing::warn!(%peer, timeout = ?handshake_timeout, "tls handshake timed out");
                    return;
                }
            };
            let resolved = identity::resolve(
                stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first()),
                &principals,
            );
            match &resolved {
                Ok(p) => tracing::debug!(%peer, principal = %p.name, "connection"),
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "client certificate maps to no principal")
                }
            }
            let caller = Caller(Arc::new(resolved));
            let service = tower::service_fn(move |mut request: hyper::Request<Incoming>| {
                request.extensions_mut().insert(caller.clone());
                router.clone().oneshot(request)
            });
            let builder =
                hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).http1_only();
            let connection = builder
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
                .into_owned();
            if let Err(e) = watcher.watch(connection).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!("shutting down: draining open connections");
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections did not drain in time; closing them");
    }
}

/// Serves `router` as plain HTTP (the loopback metrics port).
pub async fn serve_plain(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    if let Err(e) = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::warn!(error = %e, "metrics listener stopped");
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

/// Binds `addr`, naming it in the error.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, std::io::Error> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}
