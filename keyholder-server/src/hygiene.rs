//! Process hygiene at start: no core dumps, no ptrace attach, key pages
//! locked in memory where the system allows.
//!
//! Owns the process-wide protections of DESIGN.md "Process hygiene". The
//! checks that refuse a config or state directory readable by others are
//! part of config validation.

use nix::sys::mman::{MlockAllFlags, mlockall};
use nix::sys::resource::{RLIM_INFINITY, Resource, getrlimit, setrlimit};

/// Below this memlock limit `mlockall(MCL_FUTURE)` would make later
/// allocations (thread stacks, buffers) fail, so locking is skipped.
const MIN_MEMLOCK: u64 = 512 * 1024 * 1024;

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

/// Disables core dumps and ptrace attach (required), then locks memory when
/// allowed (best effort, with a warning when not).
pub fn harden() -> Result<(), HygieneError> {
    nix::sys::prctl::set_dumpable(false).map_err(HygieneError::Dumpable)?;
    setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(HygieneError::CoreLimit)?;
    match getrlimit(Resource::RLIMIT_MEMLOCK) {
        Ok((soft, _)) if soft == RLIM_INFINITY || soft >= MIN_MEMLOCK => {
            match mlockall(MlockAllFlags::MCL_CURRENT | MlockAllFlags::MCL_FUTURE) {
                Ok(()) => tracing::info!("memory locked: keys are never swapped out"),
                Err(e) => {
                    tracing::warn!(error = %e, "mlockall failed; keys may be swapped out (use encrypted swap or raise LimitMEMLOCK)")
                }
            }
        }
        Ok((soft, _)) => tracing::warn!(
            memlock_limit = soft,
            "RLIMIT_MEMLOCK is too low to lock memory; keys may be swapped out (set LimitMEMLOCK=infinity or use encrypted swap)"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot read RLIMIT_MEMLOCK; memory not locked"),
    }
    Ok(())
}
