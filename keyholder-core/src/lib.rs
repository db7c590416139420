//! keyholderd's pure core: what the daemon decides, with no I/O.
//!
//! - [`facts`]: what the state store knows about a key version (no key, no
//!   share), as the machines read it.
//! - [`admission`]: the one rule set that admits or refuses a share, for
//!   unseal and for a new version's share verification alike, with every
//!   refusal a documented [`Refusal`] variant.
//! - [`seal`]: gathering shares until every live version can be rebuilt.
//! - [`rotation`]: the persisted rotation state machine.
//! - [`verification`]: the decision "these keys may be loaded" over the KCV,
//!   the canary and sample records already fetched.
//!
//! This crate must never do I/O, read a clock (times are passed in), log,
//! or depend on an async runtime, an HTTP stack or a database driver; the
//! daemon (`keyholder-server`) does the I/O around it.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod admission;
pub mod facts;
pub mod rotation;
pub mod seal;
pub mod verification;

pub use admission::{Refusal, Scope, admit};
pub use facts::{Canary, DealtShare, VersionFacts, VersionRecord};
