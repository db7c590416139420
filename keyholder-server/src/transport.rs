//! The accept loop: TCP, then TLS in its own task under a timeout, then the
//! caller's principal resolved once, then HTTP/1.1 through hyper-util.
//!
//! Owns connections, their limits and shutdown. At most
//! `listen.max_connections` connections are open; one past the limit is
//! closed at once and counted. At most half of them may still be in their
//! handshake: a new connection beyond that ends the oldest handshake, so
//! clients that connect and say nothing can neither take every slot nor keep
//! a real client from getting through. A handshake has
//! `listen.handshake_timeout`; after it, each request's headers
//! must arrive within `listen.header_read_timeout`, which also ends an idle
//! keep-alive connection. A failed handshake (no certificate, another CA,
//! expired or revoked) is logged at debug and counted; a WARN line says how
//! many failed, at most once a minute, so a flood cannot fill the log.
//!
//! A certificate the CA signed is not yet a principal. A connection whose
//! certificate maps to none never leaves that evictable half: its first
//! request is answered 403 naming why, then it is closed, and any newer
//! connection ends it first, before a handshake still under way. A principal
//! holds at most `listen.max_connections_per_principal` connections; one more
//! stays in the evictable half too once its handshake shows whose it is: its
//! first request is answered 429 `too_many_connections`, then it is closed,
//! and it is counted. Both are
//! logged at most once a minute like failed handshakes. So no single
//! certificate, configured or not, can take every slot. On
//! shutdown the listener closes and open connections drain. The TLS config
//! and the principals come from a `watch` a reload publishes on: each new
//! connection is handshaken with the ones in force at its accept, and an
//! open connection's certificate is checked again against the ones in force
//! at its first request after a reload, or after the certificate's end
//! (`standing`): refused, it gets that answer and is closed. Handlers never
//! see a certificate, only a [`Caller`] request extension.

pub mod expiry;
pub mod identity;
mod standing;
pub mod tls;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

use crate::config::Listen;
use crate::metrics::{ConnectionMetrics, HandshakeLabel};
use crate::principal::Principal;
use identity::IdentityError;
use standing::Standing;

/// How long open connections get to finish after a shutdown signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Who is calling, resolved once per connection from the verified client
/// certificate.
#[derive(Clone, Debug)]
pub struct Caller(pub Arc<Result<Principal, IdentityError>>);

/// How long and how many: what bounds the clients' hold on the daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Time for the TLS handshake.
    pub handshake_timeout: Duration,
    /// Time for each request's headers, and for an idle keep-alive
    /// connection's next request.
    pub header_read_timeout: Duration,
    /// Connections open at once.
    pub max_connections: usize,
    /// Connections one principal may hold open at once (below
    /// `max_connections`).
    pub max_connections_per_principal: usize,
}

impl Limits {
    /// The limits `[listen]` configures.
    pub fn from_listen(listen: &Listen) -> Self {
        Self {
            handshake_timeout: listen.handshake_timeout,
            header_read_timeout: listen.header_read_timeout,
            max_connections: listen.max_connections,
            max_connections_per_principal: listen.max_connections_per_principal,
        }
    }

    /// Connections that may be in their handshake at once.
    fn max_handshaking(&self) -> usize {
        (self.max_connections / 2).max(1)
    }
}

/// A WARN line at most once a minute; the events in between are counted and
/// the next line says how many there were.
struct QuietWarning {
    gate: DefaultDirectRateLimiter,
    suppressed: AtomicU64,
}

impl QuietWarning {
    fn new() -> Self {
        Self {
            gate: RateLimiter::direct(Quota::per_minute(NonZeroU32::MIN)),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Calls `warn` with the number of events not logged since the last
    /// line, or counts this one.
    fn event(&self, warn: impl FnOnce(u64)) {
        if self.gate.check().is_ok() {
            warn(self.suppressed.swap(0, Ordering::Relaxed));
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The noisy events of the accept loop, each with its own quiet warning.
struct Noise {
    over_limit: QuietWarning,
    handshake: QuietWarning,
    no_principal: QuietWarning,
    principal_over_limit: QuietWarning,
}

/// One connection in the evictable half: dropping `end` ends it.
struct Waiting {
    end: tokio::sync::oneshot::Sender<()>,
    /// Its handshake is done and its certificate maps to no principal.
    stranger: Arc<AtomicBool>,
}

/// What a connection in the evictable half holds: ends when another
/// connection needs its place; dropped, it leaves the half.
struct Ticket {
    ended: tokio::sync::oneshot::Receiver<()>,
    stranger: Arc<AtomicBool>,
}

/// The connections still in their handshake, and those whose certificate
/// maps to no principal, oldest first.
struct Handshakes {
    max: usize,
    waiting: Mutex<VecDeque<Waiting>>,
}

impl Handshakes {
    /// Registers a new connection, ending another one when `max` are
    /// waiting: the oldest without a principal, else the oldest handshake.
    /// Returns this one's ticket, and whether another was ended.
    fn begin(&self) -> (Ticket, bool) {
        let (end, ended) = tokio::sync::oneshot::channel();
        let stranger = Arc::new(AtomicBool::new(false));
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        waiting.retain(|w| !w.end.is_closed());
        let evicted = waiting.len() >= self.max && {
            let at = waiting
                .iter()
                .position(|w| w.stranger.load(Ordering::Relaxed))
                .unwrap_or(0);
            waiting.remove(at).is_some()
        };
        waiting.push_back(Waiting {
            end,
            stranger: Arc::clone(&stranger),
        });
        (Ticket { ended, stranger }, evicted)
    }
}

/// The connections each principal holds open.
struct PerPrincipal {
    max: usize,
    open: Mutex<HashMap<String, usize>>,
}

impl PerPrincipal {
    /// A place for one more connection of `name`, or `None` when it holds
    /// `max` already.
    fn take(self: &Arc<Self>, name: &str) -> Option<PrincipalSlot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let held = open.entry(name.to_owned()).or_default();
        if *held >= self.max {
            return None;
        }
        *held += 1;
        Some(PrincipalSlot {
            owner: Arc::clone(self),
            name: name.to_owned(),
        })
    }
}

/// One connection of a principal, given back on drop.
struct PrincipalSlot {
    owner: Arc<PerPrincipal>,
    name: String,
}

impl Drop for PrincipalSlot {
    fn drop(&mut self) {
        let mut open = self.owner.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(held) = open.get_mut(&self.name) {
            *held -= 1;
            if *held == 0 {
                open.remove(&self.name);
            }
        }
    }
}

/// One open connection: its slot and its place in the gauge.
struct Slot {
    _permit: OwnedSemaphorePermit,
    open: Gauge,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// What a connection is served with: the TLS config (server certificate,
/// client CA, CRL) and the principals. A reload publishes a new one on the
/// `watch`; each connection is handshaken with the current one as it is
/// accepted, and its requests after a reload are made by whom the new one
/// says.
#[derive(Clone)]
pub struct Credentials {
    /// The server's rustls config.
    pub tls: Arc<rustls::ServerConfig>,
    /// The client-certificate verifier inside `tls`, to check an open
    /// connection's certificate again.
    pub verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    /// The principals and the field their certificates are read by.
    pub principals: Arc<identity::Directory>,
}

/// Serves `router` over mutual TLS on `listener` until `shutdown` resolves,
/// then drains open connections. Each new connection is served with the
/// [`Credentials`] `credentials` holds at its accept.
pub async fn serve_tls(
    listener: TcpListener,
    credentials: tokio::sync::watch::Receiver<Credentials>,
    router: Router,
    limits: Limits,
    metrics: ConnectionMetrics,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let handshakes = Handshakes {
        max: limits.max_handshaking(),
        waiting: Mutex::default(),
    };
    let per_principal = Arc::new(PerPrincipal {
        max: limits.max_connections_per_principal,
        open: Mutex::default(),
    });
    let noise = Arc::new(Noise {
        over_limit: QuietWarning::new(),
        handshake: QuietWarning::new(),
        no_principal: QuietWarning::new(),
        principal_over_limit: QuietWarning::new(),
    });
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
        let Ok(connection_permit) = Arc::clone(&open).try_acquire_owned() else {
            drop(tcp);
            metrics.refused.inc();
            tracing::debug!(%peer, "connection closed at once: the connection limit is reached");
            noise.over_limit.event(|suppressed| {
                tracing::warn!(
                    %peer,
                    max_connections = limits.max_connections,
                    more_since_last_warning = suppressed,
                    "connections closed at once: the connection limit is reached (counted in keyholder_connections_refused_total)"
                );
            });
            continue;
        };
        let (mut ticket, ended_another) = handshakes.begin();
        if ended_another {
            metrics.refused.inc();
        }
        metrics.open.inc();
        let slot = Slot {
            _permit: connection_permit,
            open: metrics.open.clone(),
        };
        let mut in_force = credentials.clone();
        let current = in_force.borrow_and_update().clone();
        let acceptor = TlsAcceptor::from(current.tls);
        let principals = current.principals;
        let router = router.clone();
        let watcher = graceful.watcher();
        let noise = Arc::clone(&noise);
        let failures = metrics.handshake_failures.clone();
        let refused = metrics.refused.clone();
        let per_principal = Arc::clone(&per_principal);
        tokio::spawn(async move {
            let _slot = slot;
            let handshake = tokio::select! {
                done = tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)) => done,
                _ = &mut ticket.ended => {
                    tracing::debug!(%peer, "tls handshake ended: newer connections need the slot");
                    return;
                }
            };
            let stream = match handshake {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    failures
                        .get_or_create(&HandshakeLabel { reason: "refused" })
                        .inc();
                    tracing::debug!(%peer, error = %e, "tls handshake refused");
                    noise.handshake.event(|suppressed| {
                        tracing::warn!(%peer, error = %e, more_since_last_warning = suppressed, "tls handshake refused (further failures are logged at debug, counted in keyholder_tls_handshake_failures_total)");
                    });
                    return;
                }
                Err(_) => {
                    failures
                        .get_or_create(&HandshakeLabel {
                            reason: "timed_out",
                        })
                        .inc();
                    tracing::debug!(%peer, timeout = ?limits.handshake_timeout, "tls handshake timed out");
                    noise.handshake.event(|suppressed| {
                        tracing::warn!(%peer, timeout = ?limits.handshake_timeout, more_since_last_warning = suppressed, "tls handshake timed out (further failures are logged at debug, counted in keyholder_tls_handshake_failures_total)");
                    });
                    return;
                }
            };
            let chain = stream
                .get_ref()
                .1
                .peer_certificates()
                .map(<[_]>::to_vec)
                .unwrap_or_default();
            let resolved = identity::resolve(chain.first(), &principals);
            // A principal's connection leaves the evictable half (its ticket
            // dropped) and holds one of its places; a stranger's stays, and so
            // does one over its principal's limit: each is answered once
            // (403, 429) and closed, and ends sooner when a newer connection
            // needs its place.
            let (resolved, _held, stranger) = match resolved {
                Ok(p) => match per_principal.take(&p.name) {
                    Some(held) => {
                        tracing::debug!(%peer, principal = %p.name, "connection");
                        drop(ticket);
                        (Ok(p), Some(held), None)
                    }
                    None => {
                        refused.inc();
                        tracing::debug!(%peer, principal = %p.name, "connection over the principal's limit: one 429, then closed");
                        noise.principal_over_limit.event(|suppressed| {
                            tracing::warn!(
                                %peer,
                                principal = %p.name,
                                max_connections_per_principal = limits.max_connections_per_principal,
                                more_since_last_warning = suppressed,
                                "connections over a principal's limit (listen.max_connections_per_principal): the first request of each is answered 429 too_many_connections, then it is closed (counted in keyholder_connections_refused_total)"
                            );
                        });
                        ticket.stranger.store(true, Ordering::Relaxed);
                        let over = IdentityError::OverLimit {
                            principal: p.name.clone(),
                            max: limits.max_connections_per_principal,
                        };
                        (Err(over), None, Some(ticket.ended))
                    }
                },
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "client certificate maps to no principal: one 403, then closed");
                    noise.no_principal.event(|suppressed| {
                        tracing::warn!(%peer, error = %e, more_since_last_warning = suppressed, "client certificate maps to no principal: its first request is answered 403, then the connection is closed");
                    });
                    ticket.stranger.store(true, Ordering::Relaxed);
                    (Err(e), None, Some(ticket.ended))
                }
            };
            let standing = Arc::new(Standing::new(
                peer,
                chain,
                in_force,
                Caller(Arc::new(resolved)),
            ));
            let service = tower::service_fn(move |mut request: hyper::Request<Incoming>| {
                let (caller, closing) = standing.caller();
                request.extensions_mut().insert(caller);
                let answer = router.clone().oneshot(request);
                async move {
                    let mut response = answer.await?;
                    if closing {
                        response.headers_mut().insert(
                            hyper::header::CONNECTION,
                            hyper::header::HeaderValue::from_static("close"),
                        );
                    }
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            let mut builder =
                hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).http1_only();
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .keep_alive(stranger.is_none());
            let connection = builder
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
                .into_owned();
            let ended = async {
                match stranger {
                    Some(ended) => {
                        let _ = ended.await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                served = watcher.watch(connection) => {
                    if let Err(e) = served {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                }
                () = ended => tracing::debug!(%peer, "connection with no principal ended: newer connections need the slot"),
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

#[cfg(test)]
mod tests {
    use tokio::sync::oneshot::error::TryRecvError;

    use super::*;

    fn handshakes(max: usize) -> Handshakes {
        Handshakes {
            max,
            waiting: Mutex::default(),
        }
    }

    #[test]
    fn a_new_connection_ends_the_oldest_stranger_before_any_handshake() {
        let pool = handshakes(3);
        let (mut handshaking, _) = pool.begin();
        let (mut first_stranger, _) = pool.begin();
        let (mut second_stranger, _) = pool.begin();
        first_stranger.stranger.store(true, Ordering::Relaxed);
        second_stranger.stranger.store(true, Ordering::Relaxed);

        let (_newer, ended) = pool.begin();
        assert!(ended);
        assert!(matches!(
            first_stranger.ended.try_recv(),
            Err(TryRecvError::Closed)
        ));
        assert!(matches!(
            second_stranger.ended.try_recv(),
            Err(TryRecvError::Empty)
        ));
        let (_newest, ended) = pool.begin();
        assert!(ended);
        assert!(matches!(
            second_stranger.ended.try_recv(),
            Err(TryRecvError::Closed)
        ));
        // Only handshakes left: the oldest goes.
        let (_last, ended) = pool.begin();
        assert!(ended);
        assert!(matches!(
            handshaking.ended.try_recv(),
            Err(TryRecvError::Closed)
        ));
    }

    #[test]
    fn a_connection_that_left_the_half_ends_nothing() {
        let pool = handshakes(2);
        let (principal, _) = pool.begin();
        let (_waiting, _) = pool.begin();
        drop(principal);
        let (_, ended) = pool.begin();
        assert!(!ended);
    }

    #[test]
    fn a_principal_holds_at_most_its_places_and_gets_them_back() {
        let limit = Arc::new(PerPrincipal {
            max: 2,
            open: Mutex::default(),
        });
        let first = limit.take("db1").unwrap();
        let _second = limit.take("db1").unwrap();
        assert!(limit.take("db1").is_none());
        let _other = limit.take("olivia").unwrap();
        drop(first);
        let _again = limit.take("db1").unwrap();
        assert!(limit.take("db1").is_none());
    }
}
