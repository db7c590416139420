//! The cluster (`[cluster]`, issue #15): several keyholderd nodes on one
//! PostgreSQL state store.
//!
//! `lease` holds the leader lease and this node's view of who leads;
//! `fence` the store wrapper through which every leader-only write carries
//! the lease's epoch. `peers` is the node-to-node side: the mTLS client a
//! node calls its peers with, the share relay and its withdrawals (one
//! ceremony for the cluster, `relay`), the keyring taken from an unsealed peer (`sync`, `handover`,
//! `peer_api`), and the cluster seal. It never stores a share or a key, and
//! never sends either in plaintext inside a body it does not have to (the
//! keyring travels age-encrypted to the requester).

pub mod fence;
pub(crate) mod handover;
pub mod lease;
pub(crate) mod peer_api;
pub(crate) mod peers;
pub(crate) mod relay;
pub(crate) mod sync;
