//! Key rotation: the persisted state machine ([`machine`]) and, around it,
//! the daemon's driver that performs the checks needing I/O and runs the
//! re-encryption worker for the current [`Job`].

mod machine;

pub use machine::{Job, RETIRE_APPROVALS, RetireOutcome, Rotation, TransitionError};
