//! What a node tells its peers of the unseal ceremony: the share lines a
//! keyholder submitted here, and a withdrawal (`DELETE /v1/unseal`) of
//! shares that were relayed, so a withdrawn share never unseals a peer.
//!
//! Owns [`Relays`]: the order of both. A principal's shares never reach a
//! peer after that principal's withdrawal: shares admitted before a
//! withdrawal and not yet sent are not sent at all, and a withdrawal waits
//! for the relays in flight. A withdrawal a peer did not get is kept for
//! that peer, in order, and sent before anything else to it: again every
//! [`super::sync::PeerSync`] tick until `unseal.progress_ttl` has passed,
//! when whatever that peer held from before it has expired. It sends share
//! lines only inside mTLS bodies and logs names, never a share.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use keyholder_api::ShareLine;

use super::peers::{PeerClient, PeerError};
use crate::config::Node;

/// A withdrawal not yet delivered to one peer.
struct Withdrawn {
    principal: String,
    at: Instant,
    /// Whether its failure was logged: a peer that stays down is logged
    /// once, not every second.
    warned: bool,
}

/// How many withdrawals this node made or received, per principal and
/// everyone's (an operator's clears every keyholder's shares).
#[derive(Default)]
struct Withdrawals {
    of: HashMap<String, u64>,
    everyone: u64,
}

impl Withdrawals {
    fn of(&self, principal: &str) -> u64 {
        self.of.get(principal).copied().unwrap_or(0) + self.everyone
    }
}

/// Taken before a principal's shares are admitted here: the withdrawals
/// of theirs seen by then (the shares are relayed only while no withdrawal
/// followed) and the cluster seal generation they are admitted at (a peer
/// that knows of a later seal refuses them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticket {
    withdrawals: u64,
    generation: u64,
}

/// This node's relays to its peers, in the order it made them.
pub struct Relays {
    node: String,
    client: PeerClient,
    withdrawals: Mutex<Withdrawals>,
    /// Held while relaying, so that relays leave in the order they were
    /// made; per peer, the withdrawals it has not acknowledged yet, oldest
    /// first.
    outbox: tokio::sync::Mutex<HashMap<String, Vec<Withdrawn>>>,
}

impl Relays {
    /// The relays of node `node`, calling its peers with `client`.
    pub fn new(node: String, client: PeerClient) -> Self {
        Self {
            node,
            client,
            withdrawals: Mutex::new(Withdrawals::default()),
            outbox: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    fn lock_withdrawals(&self) -> std::sync::MutexGuard<'_, Withdrawals> {
        self.withdrawals.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Taken before `principal`'s shares are admitted here, at cluster
    /// seal generation `generation`.
    pub fn ticket(&self, principal: &str, generation: u64) -> Ticket {
        Ticket {
            withdrawals: self.lock_withdrawals().of(principal),
            generation,
        }
    }

    /// `principal`'s shares were withdrawn here (all of them, when
    /// `everyone`): shares admitted before it and not yet relayed stay
    /// here. Called after the withdrawal, so that a share admitted in
    /// between is either relayed before the withdrawal or not at all.
    pub fn withdrawn(&self, principal: &str, everyone: bool) {
        let mut withdrawals = self.lock_withdrawals();
        if everyone {
            withdrawals.everyone += 1;
        } else {
            *withdrawals.of.entry(principal.to_owned()).or_default() += 1;
        }
    }

    /// Sends `keyholder`'s admitted `lines` to every peer, after the
    /// withdrawals a peer has not had yet; nothing when a withdrawal of
    /// theirs followed `ticket`. A peer that is down costs a warning: it
    /// takes the keyring from an unsealed peer later.
    pub async fn shares(&self, ticket: Ticket, keyholder: &str, lines: &[ShareLine]) {
        let mut outbox = self.outbox.lock().await;
        if self.lock_withdrawals().of(keyholder) != ticket.withdrawals {
            tracing::info!(node = %self.node, keyholder, "cluster: shares withdrawn before they were relayed; not relayed");
            return;
        }
        self.deliver(&mut outbox, |peer| async move {
            match self
                .client
                .relay_shares(peer, keyholder, lines, ticket.generation)
                .await
            {
                Ok(()) => tracing::info!(
                    node = %self.node,
                    peer = %peer.name,
                    keyholder,
                    lines = lines.len(),
                    "cluster: shares relayed"
                ),
                Err(e) => tracing::warn!(
                    node = %self.node,
                    peer = %peer.name,
                    keyholder,
                    error = %e,
                    "cluster: shares could not be relayed; that node takes the keyring from an unsealed peer later"
                ),
            }
        })
        .await;
    }

    /// Tells every peer that `principal` withdrew here, after the relays in
    /// flight; returns once each peer answered or failed. A peer that did
    /// not get it is sent it again at every [`Self::retry`].
    pub async fn withdrawal(&self, principal: &str) {
        let mut outbox = self.outbox.lock().await;
        for peer in self.client.peers() {
            outbox
                .entry(peer.name.clone())
                .or_default()
                .push(Withdrawn {
                    principal: principal.to_owned(),
                    at: Instant::now(),
                    warned: false,
                });
        }
        self.deliver(&mut outbox, |_| async {}).await;
    }

    /// Sends the withdrawals peers have not had yet; `ttl` is
    /// `unseal.progress_ttl`: an older one is dropped, since a peer drops
    /// the progress it held by then.
    pub async fn retry(&self, ttl: std::time::Duration) {
        let mut outbox = self.outbox.lock().await;
        for (peer, pending) in outbox.iter_mut() {
            let before = pending.len();
            pending.retain(|w| w.at.elapsed() < ttl);
            if pending.len() < before {
                tracing::warn!(
                    node = %self.node,
                    peer = %peer,
                    dropped = before - pending.len(),
                    "cluster: withdrawals a peer never acknowledged were dropped: their shares have expired there"
                );
            }
        }
        outbox.retain(|_, pending| !pending.is_empty());
        if !outbox.is_empty() {
            self.deliver(&mut outbox, |_| async {}).await;
        }
    }

    /// For every peer at once: its pending withdrawals in order, then (when
    /// every one of them arrived) `then`.
    async fn deliver<'a, F, Fut>(&'a self, outbox: &mut HashMap<String, Vec<Withdrawn>>, then: F)
    where
        F: Fn(&'a Node) -> Fut,
        Fut: Future<Output = ()>,
    {
        let calls = self.client.peers().iter().map(|peer| {
            let mut pending = outbox.remove(&peer.name).unwrap_or_default();
            let then = &then;
            async move {
                match self.flush(peer, &mut pending).await {
                    Ok(()) => then(peer).await,
                    Err(e) if pending.iter().all(|w| w.warned) => tracing::debug!(
                        node = %self.node,
                        peer = %peer.name,
                        error = %e,
                        "cluster: a peer still did not get a withdrawal of unseal shares"
                    ),
                    Err(e) => {
                        tracing::warn!(
                            node = %self.node,
                            peer = %peer.name,
                            pending = pending.len(),
                            error = %e,
                            "cluster: a peer did not get a withdrawal of unseal shares; nothing else is relayed to it until it does (tried again every second)"
                        );
                        for w in &mut pending {
                            w.warned = true;
                        }
                    }
                }
                (peer.name.clone(), pending)
            }
        });
        for (peer, pending) in futures::future::join_all(calls).await {
            if !pending.is_empty() {
                outbox.insert(peer, pending);
            }
        }
    }

    /// Sends `pending` to `peer` oldest first, removing each it took.
    async fn flush(&self, peer: &Node, pending: &mut Vec<Withdrawn>) -> Result<(), PeerError> {
        while let Some(first) = pending.first() {
            self.client.relay_withdrawal(peer, &first.principal).await?;
            tracing::info!(
                node = %self.node,
                peer = %peer.name,
                principal = %first.principal,
                "cluster: withdrawal of unseal shares relayed"
            );
            pending.remove(0);
        }
        Ok(())
    }
}
