//! Key rotation: the persisted state machine ([`keyholder_core::rotation`]),
//! the orchestrator task that owns it and performs each step's I/O around it
//! ([`Rotator`], reached through a [`RotationHandle`]), the re-encryption
//! worker for the current [`Job`] and the `/v1/rotation/*` handlers.

pub mod api;
mod driver;
mod worker;

pub use driver::{RotationError, RotationHandle, Rotator};
pub use keyholder_core::rotation::{
    APPROVALS_NEEDED, Job, Outcome, Rotation, TransitionError, VerifyQuorum,
};
