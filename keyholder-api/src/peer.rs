//! Node to node on the wire (`[cluster]`): shares relayed from the node a
//! keyholder submitted them to, the keyring handed to a sealed peer, and a
//! cluster seal. Only a principal with the `node` role of the same cluster
//! may send these.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ShareLine;

/// `POST /v1/cluster/shares`: share lines a keyholder submitted to the
/// relaying node, which admitted them there first. The receiving node
/// admits them as that keyholder's and never relays them again.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RelayedShares {
    /// The keyholder who submitted them (a principal name).
    pub keyholder: String,
    /// The lines that node accepted (at most 16).
    #[schema(value_type = Vec<String>, min_items = 1, max_items = 16)]
    pub shares: Vec<ShareLine>,
    /// The cluster seal generation the relaying node had seen when it
    /// admitted them. A node that has seen a later one (the cluster was
    /// sealed since) refuses them: a seal drops every node's progress,
    /// also a relay still in flight.
    pub generation: u64,
}

/// `POST /v1/cluster/withdrawal`: `DELETE /v1/unseal` by `principal` on
/// the relaying node. The receiving node drops what that principal's own
/// `DELETE` drops there (a keyholder's shares, or, for an operator, all
/// progress), whichever node the shares came from, and never relays it
/// again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RelayedWithdrawal {
    /// Who withdrew (a principal name).
    pub principal: String,
}

/// `POST /v1/cluster/keyring`: a sealed node asks an unsealed peer for the
/// keys, giving a fresh age X25519 recipient made for this one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PeerKeyringRequest {
    /// The requester's ephemeral age recipient (`age1...`); the keys come
    /// back encrypted to it.
    pub recipient: String,
}

/// The answer to [`PeerKeyringRequest`]: every key the serving node holds,
/// as the hook hand-over JSON, age-encrypted to the requester's recipient.
/// The keys are never plaintext in the body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PeerKeyring {
    /// The serving node's name.
    pub node: String,
    /// The cluster seal generation its keys belong to; the requester
    /// refuses keys of a generation the cluster has sealed since.
    pub generation: u64,
    /// The armored age file holding the hand-over JSON.
    pub age_armored: String,
}

/// `POST /v1/cluster/seal`: a node sealed the cluster; every node holding
/// keys of an older generation drops them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterSeal {
    /// The cluster seal generation the seal made.
    pub generation: u64,
}
