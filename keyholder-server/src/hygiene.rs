//! Process hygiene at start: no core dumps, no ptrace attach, key pages
//! locked in memory where the system allows, and thread stacks scrubbed
//! once keys have left.
//!
//! Owns the process-wide protections of DESIGN.md "Process hygiene". The
//! checks that refuse a config or state directory readable by others are
//! part of config validation.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Why hardening failed.
#[derive(Debug, thiserror::Error)]
pub enum HygieneError {
    /// The process could not be made non-dumpable.
    #[error("cannot disable core dumps and ptrace attach (prctl PR_SET_DUMPABLE): {0}")]
    Dumpable(nix::Error),
    /// The core size limit could not be set to 0.
    #[error("cannot set RLIMIT_CORE to 0: {0}")]
    CoreLimit(nix::Error),
}

/// Disables core dumps and ptrace attach (required). Keys are locked in RAM
/// page by page where they are allocated (crypto-core), so the process does
/// not need `mlockall` or a high `RLIMIT_MEMLOCK`; the limit is logged.
pub fn harden() -> Result<(), HygieneError> {
    nix::sys::prctl::set_dumpable(false).map_err(HygieneError::Dumpable)?;
    setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(HygieneError::CoreLimit)?;
    match getrlimit(Resource::RLIMIT_MEMLOCK) {
        Ok((soft, _)) => tracing::info!(
            memlock_limit = soft,
            "core dumps off; key pages are locked in RAM as they are allocated"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot read RLIMIT_MEMLOCK"),
    }
    Ok(())
}

/// How much stack a scrub overwrites below its caller: deeper than the
/// frames of any request or batch (debug builds included).
const SCRUB_BYTES: usize = 512 * 1024;

/// Bumped each time keys leave the vault; a thread whose last scrub is older
/// scrubs its stack when it next idles.
static KEYS_LEFT: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static SCRUBBED_AT: Cell<u64> = const { Cell::new(0) };
}

/// Overwrites the stack below the caller's frame with zeros: key bytes a
/// finished computation left in dead frames (AES key schedules, share
/// arithmetic, base64 of the hand-over) go with them. The zeroizing types
/// clear the values they own; the copies the compiler made on the way are
/// only reachable this way.
#[inline(never)]
pub fn scrub_stack() {
    let area = [0u8; SCRUB_BYTES];
    std::hint::black_box(&area);
}

/// The runtime's hook for a worker thread about to idle (and for a thread
/// about to exit): scrubs its stack if keys left the vault since it last did.
pub fn on_idle() {
    let now = KEYS_LEFT.load(Ordering::Acquire);
    SCRUBBED_AT.with(|at| {
        if at.get() != now {
            scrub_stack();
            at.set(now);
        }
    });
}

/// Called when keys leave the vault (seal, retire, rollback), or shares
/// their handler (a verified new share): every worker
/// thread scrubs its stack when it next idles, and each is woken now so that
/// one idle since before is not left holding copies. Blocking-pool threads
/// scrub when they exit (the runtime keeps them alive only briefly).
pub fn keys_left() {
    KEYS_LEFT.fetch_add(1, Ordering::AcqRel);
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        // A task that holds its worker a moment makes the others steal the
        // rest, so each worker runs one and idles (and scrubs) after it.
        for _ in 0..handle.metrics().num_workers() {
            handle.spawn(async { std::thread::sleep(WAKE_HOLD) });
        }
    }
}

/// How long each wake-up task holds its worker.
const WAKE_HOLD: Duration = Duration::from_millis(20);
