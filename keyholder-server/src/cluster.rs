//! A keyholderd cluster on one PostgreSQL state store (#15).
//!
//! `lease` holds the leader lease and this node's view of who leads;
//! `fence` the store wrapper through which every leader-only write carries
//! the lease's epoch.

pub mod fence;
pub mod lease;
