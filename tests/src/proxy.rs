//! A TCP proxy between one node and PostgreSQL (or a peer node) that the
//! test can cut: a partition for real (connections dropped, new ones closed
//! at once), without network namespaces; or hold: new connections wait,
//! unanswered, until released, so a call arrives when the test says.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A running proxy to `upstream`.
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    generation: Arc<watch::Sender<u64>>,
    holding: Arc<watch::Sender<bool>>,
    held: Arc<AtomicUsize>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let generation = Arc::new(watch::Sender::new(0u64));
        let (cut_flag, cuts) = (Arc::clone(&cut), Arc::clone(&generation));
        let holding = Arc::new(watch::Sender::new(false));
        let held = Arc::new(AtomicUsize::new(0));
        let (hold, count) = (Arc::clone(&holding), Arc::clone(&held));
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if cut_flag.load(Ordering::SeqCst) {
                    // Partitioned: the connection closes at once.
                    drop(client);
                    continue;
                }
                let mut dropped = cuts.subscribe();
                let mut release = hold.subscribe();
                let count = Arc::clone(&count);
                tokio::spawn(async move {
                    if *release.borrow_and_update() {
                        count.fetch_add(1, Ordering::SeqCst);
                        if release.wait_for(|holding| !holding).await.is_err() {
                            return;
                        }
                    }
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut client, mut server) = (client, server);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = dropped.changed() => {}
                    }
                });
            }
        });
        Self {
            addr,
            cut,
            generation,
            holding,
            held,
        }
    }

    /// New connections wait, unforwarded, until [`Proxy::release`].
    pub fn hold(&self) {
        self.holding.send_replace(true);
    }

    /// How many connections waited since [`Proxy::start`].
    pub fn held(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }

    /// Forwards the connections held, and new ones at once.
    pub fn release(&self) {
        self.holding.send_replace(false);
    }

    /// Cuts the link: every open connection is dropped and new ones are
    /// closed until [`Proxy::heal`].
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Forwards again.
    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}
