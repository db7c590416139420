//! Key rotation: the persisted state machine (`machine`), the driver that
//! performs each step's I/O around it ([`Rotator`]), the re-encryption worker
//! for the current [`Job`] and the `/v1/rotation/*` handlers.

pub mod api;
mod driver;
mod machine;
mod worker;

pub use driver::{RotationError, Rotator};
pub use machine::{
    APPROVALS_NEEDED, Destructive, Job, Outcome, Rotation, TransitionError, VerifyQuorum,
};
