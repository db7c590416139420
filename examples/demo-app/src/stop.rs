//! A stop flag raised by SIGTERM or SIGINT, so `serve` can end its loop and
//! still print its summary.
//!
//! The signal streams are registered before this returns (a signal arriving
//! after that is never the default "terminate"); a small current-thread tokio
//! runtime on its own thread waits on them. Nothing here blocks signals, so
//! child processes (the keyring refresh) keep the default dispositions.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::signal::unix::{SignalKind, signal};

use crate::error::Error;

/// Raised once SIGTERM or SIGINT arrived.
#[derive(Clone)]
pub struct StopFlag(Arc<AtomicBool>);

impl StopFlag {
    /// Whether a stop was asked for.
    pub fn raised(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Starts watching SIGTERM and SIGINT.
pub fn on_signal() -> Result<StopFlag, Error> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(Error::Signal)?;
    let (mut terminate, mut interrupt) = {
        let _context = runtime.enter();
        (
            signal(SignalKind::terminate()).map_err(Error::Signal)?,
            signal(SignalKind::interrupt()).map_err(Error::Signal)?,
        )
    };
    let flag = StopFlag(Arc::new(AtomicBool::new(false)));
    let raised = flag.clone();
    std::thread::spawn(move || {
        runtime.block_on(async {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
        });
        raised.0.store(true, Ordering::Relaxed);
    });
    Ok(flag)
}
