//! The cluster (`[cluster]`, issue #15): several keyholderd nodes on one
//! PostgreSQL state store.
//!
//! `peers` is the node-to-node side: the mTLS client a node calls its
//! peers with, the share relay (one ceremony for the cluster), the keyring
//! taken from an unsealed peer, and the cluster seal. It never stores a
//! share or a key, and never sends either in plaintext inside a body it
//! does not have to (the keyring travels age-encrypted to the requester).

pub(crate) mod handover;
pub(crate) mod peer_api;
pub(crate) mod peers;
pub(crate) mod sync;
