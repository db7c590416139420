//! Keeps this node's seal in step with the cluster: the shares a keyholder
//! submits here go to every peer, a sealed node takes the keyring from an
//! unsealed peer, and a seal of the cluster (a new cluster seal generation
//! in the state store) seals every node.
//!
//! Owns [`PeerSync`]: the peer client, the generation the held keys belong
//! to, and the task that checks both every second. It proves keys taken
//! from a peer exactly as an unseal does (`Daemon::prove`) before loading
//! them, and never hands keys out at an older generation than the store's.
//! It logs and audits node names, versions and generations, never a key or
//! a share.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crypto_core::{Key, KeyVersion};
use keyholder_api::{PeerKeyring, ShareLine, Status, UnsealResponse, VersionState};
use serde_json::json;

use super::handover::{self, HandoverError};
use super::peers::{PeerClient, PeerError};
use super::relay::{Relays, Ticket};
use crate::audit::DAEMON;
use crate::config::{Cluster, Node};
use crate::daemon::{Daemon, DaemonError};
use crate::principal::{Principal, Role};

/// How often a node checks the cluster seal generation and, while sealed,
/// asks its peers for the keyring.
const TICK: Duration = Duration::from_secs(1);

/// Why a node call was refused; its message is the 403's and the audit's.
#[derive(Debug, thiserror::Error)]
pub enum NodeRefusal {
    /// The caller is not a `node` principal.
    #[error("this is for the nodes of this cluster only; {name} has {roles}, not the node role")]
    NotANode {
        /// The caller.
        name: String,
        /// Its roles.
        roles: String,
    },
    /// A `node` principal that `[cluster] nodes` does not list.
    #[error(
        "{name} has the node role but is not a node of this cluster ([cluster] nodes: {nodes})"
    )]
    NotInCluster {
        /// The caller.
        name: String,
        /// The cluster's nodes.
        nodes: String,
    },
    /// This node's own certificate.
    #[error("{name} is this node; a node never calls itself")]
    Itself {
        /// The caller.
        name: String,
    },
}

/// Why a sealed node could not take the keyring from a peer.
#[derive(Debug, thiserror::Error)]
enum TakeError {
    #[error(transparent)]
    Peer(#[from] PeerError),
    #[error(transparent)]
    Handover(#[from] HandoverError),
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    #[error(
        "node {peer} holds keys of cluster seal generation {theirs}, the cluster is at {ours}; keys the cluster sealed are never taken"
    )]
    Generation {
        peer: String,
        theirs: u64,
        ours: u64,
    },
    #[error("node {peer}'s keys failed verification and were dropped: {failures}")]
    Unproven { peer: String, failures: String },
}

/// Why relayed shares were not admitted.
#[derive(Debug, thiserror::Error)]
pub enum RelayRefused {
    /// This node knows of a cluster seal after the relaying node admitted
    /// them.
    #[error(
        "{relayed_by} admitted these shares at cluster seal generation {theirs}; the cluster was sealed since (generation {ours}), which dropped them on every node: the keyholder submits them again"
    )]
    SealedSince {
        /// The relaying node.
        relayed_by: String,
        /// The generation they were admitted at.
        theirs: u64,
        /// The generation this node knows of.
        ours: u64,
    },
    /// Admitting them failed.
    #[error(transparent)]
    Daemon(#[from] DaemonError),
}

/// This node's part in the cluster's seal.
pub struct PeerSync {
    daemon: Arc<Daemon>,
    client: PeerClient,
    /// The shares and withdrawals told to the peers, in order.
    relays: Relays,
    cluster: Cluster,
    /// The cluster seal generation the held keys belong to; `None` while
    /// sealed, or unsealed by a ceremony not yet stamped by [`Self::tick`]
    /// (whose keys belong to the generation known before it, `seen` until
    /// then).
    generation: Mutex<Option<u64>>,
    /// The latest cluster seal generation this node knows of (read from
    /// the state store, told by a peer, made here); `None` before the
    /// first. A seal while the store is unreachable tells the peers the
    /// one after it. Also the gate of the unseal progress: held while a
    /// seal is made or a newer generation followed, and while a relay is
    /// checked against it and takes the seal epoch it is admitted at, so
    /// shares admitted before a seal never count after it, on any node.
    seen: tokio::sync::Mutex<Option<u64>>,
    /// One take-over from a peer at a time.
    taking: tokio::sync::Mutex<()>,
    /// The last failure logged per peer, so a peer that stays down is
    /// logged once, not every second.
    last_failure: Mutex<HashMap<String, String>>,
    /// Versions no peer held when last asked, and when: asked again only
    /// after [`MISSING_RETRY`], so a key only keyholders can rebuild (a
    /// prepared version after every node restarted) does not cost each
    /// peer a hand-over and an audit entry every second.
    not_found: Mutex<Option<(BTreeSet<KeyVersion>, Instant)>>,
}

/// How long a node waits before asking its peers again for keys none of
/// them held.
const MISSING_RETRY: Duration = Duration::from_secs(60);

impl PeerSync {
    /// The sync of `daemon`, a node of `cluster`, calling its peers with
    /// `client`.
    pub fn new(daemon: Arc<Daemon>, cluster: &Cluster, client: PeerClient) -> Arc<Self> {
        Arc::new(Self {
            relays: Relays::new(cluster.node.clone(), client.clone()),
            client,
            daemon,
            cluster: cluster.clone(),
            generation: Mutex::new(None),
            seen: tokio::sync::Mutex::new(None),
            taking: tokio::sync::Mutex::new(()),
            last_failure: Mutex::new(HashMap::new()),
            not_found: Mutex::new(None),
        })
    }

    /// This node's name.
    pub fn name(&self) -> &str {
        &self.cluster.node
    }

    /// Checks every [`TICK`] (and at once on start) until `stop`.
    pub async fn run(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut ticks = tokio::time::interval(TICK);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                changed = stop.changed() => if changed.is_err() || *stop.borrow() {
                    return;
                },
            }
            if *stop.borrow() {
                return;
            }
            self.tick().await;
        }
    }

    /// One check: a node holding keys of an older generation seals; a
    /// sealed node asks its peers for the keyring.
    async fn tick(&self) {
        self.relays.retry(self.daemon.config().progress_ttl).await;
        let current = match self.daemon.store().cluster_seal_generation().await {
            Ok(generation) => generation,
            Err(e) => {
                self.log_failure(
                    "state store",
                    format!("cannot read the cluster seal generation: {e}"),
                );
                return;
            }
        };
        let mut seen = self.seen.lock().await;
        let before = learn(&mut seen, current);
        if self.daemon.vault().is_sealed() {
            *self.lock_generation() = None;
            // A seal this node was not told of (a peer's notice lost):
            // the progress gathered before it goes, as the notice drops it.
            if before.is_some_and(|b| current > b) {
                self.follow_seal(current, DAEMON).await;
            }
            drop(seen);
            if self.daemon.plan().is_some() {
                self.take_from_peers(current).await;
            }
            return;
        }
        // Unsealed by a ceremony since the last check: its keys belong to
        // the generation known before this read. A newer one read now is a
        // seal this node was not told of, perhaps made after the shares
        // were given: the keys go, as the notice would have taken them.
        let held = *self
            .lock_generation()
            .get_or_insert(before.unwrap_or(current));
        if held < current {
            self.follow_seal(current, DAEMON).await;
            return;
        }
        drop(seen);
        self.take_missing(current).await;
    }

    fn lock_generation(&self) -> std::sync::MutexGuard<'_, Option<u64>> {
        self.generation.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Logs `reason` for `peer` when it differs from the last one logged.
    fn log_failure(&self, peer: &str, reason: String) {
        let mut last = self.last_failure.lock().unwrap_or_else(|p| p.into_inner());
        if last.get(peer) != Some(&reason) {
            tracing::warn!(node = %self.cluster.node, peer, %reason, "cluster: a peer call failed");
            last.insert(peer.to_owned(), reason);
        }
    }

    fn clear_failure(&self, peer: &str) {
        self.last_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(peer);
    }

    /// Seals this node because the cluster was sealed at `generation`.
    async fn follow_seal(&self, generation: u64, by: &str) {
        *self.lock_generation() = None;
        // The daemon logs a seal it could not audit.
        self.daemon.seal(by).await;
        tracing::info!(node = %self.cluster.node, generation, by, "cluster: sealed with the cluster");
        if let Err(e) = self
            .daemon
            .audit(
                by,
                "sealed_with_cluster",
                json!({"node": self.cluster.node, "generation": generation}),
            )
            .await
        {
            tracing::error!(error = %e, "cluster: the seal could not be audited");
        }
    }

    /// Asks each peer in turn for the keyring until one gives keys that
    /// prove; every other outcome leaves this node sealed.
    async fn take_from_peers(&self, current: u64) {
        for peer in self.client.peers() {
            let started = Instant::now();
            match self.take_from(peer, current).await {
                Ok(true) => {
                    self.clear_failure(&peer.name);
                    tracing::info!(
                        node = %self.cluster.node,
                        peer = %peer.name,
                        generation = current,
                        elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                        "cluster: unsealed from a peer"
                    );
                    return;
                }
                Ok(false) => return,
                Err(TakeError::Peer(e)) if e.is_sealed() => {
                    tracing::debug!(peer = %peer.name, "cluster: the peer is sealed too");
                }
                Err(e) => self.log_failure(&peer.name, e.to_string()),
            }
        }
    }

    /// Takes and proves `peer`'s keys; `Ok(false)` when this node was
    /// unsealed meanwhile.
    async fn take_from(&self, peer: &Node, current: u64) -> Result<bool, TakeError> {
        let _one = self.taking.lock().await;
        if !self.daemon.vault().is_sealed() {
            return Ok(false);
        }
        // A seal from here on drops the keys this take brings.
        let epoch = self.daemon.seal_epoch();
        let keys = self.fetch(peer, current).await?;
        let plan = self.daemon.plan().ok_or(DaemonError::NotInitialized)?;
        let (keys, report) = self.proven(peer, keys).await?;
        let versions: Vec<u32> = keys.keys().map(|v| v.number()).collect();
        *self.lock_generation() = Some(current);
        if let Err(e) = self.daemon.load_proven(keys, &report, &plan, epoch).await {
            *self.lock_generation() = None;
            return Err(e.into());
        }
        self.daemon
            .audit(
                DAEMON,
                "unsealed_from_peer",
                json!({
                    "node": self.cluster.node,
                    "peer": peer.name,
                    "generation": current,
                    "versions": versions,
                }),
            )
            .await?;
        Ok(true)
    }

    /// An unsealed node that lacks the key of a version the state store
    /// holds (a rotation's new key, made on the leader) takes it from a
    /// peer that has it, proven as unseal proves, so that any node can
    /// take the lease and go on with the rotation.
    async fn take_missing(&self, current: u64) {
        // The stored versions as this node last read them: a follower
        // re-reads them with the rotation every second, the leader with
        // every step.
        let missing: BTreeSet<KeyVersion> = self
            .daemon
            .status()
            .versions
            .iter()
            .filter(|v| v.state != VersionState::Retired && !v.loaded)
            .map(|v| v.version)
            .collect();
        if missing.is_empty() {
            return;
        }
        {
            let not_found = self.not_found.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((versions, at)) = &*not_found
                && *versions == missing
                && at.elapsed() < MISSING_RETRY
            {
                return;
            }
        }
        // A peer that failed may hold them: only "none of them has the
        // keys" waits for the retry.
        let mut every_peer_answered = true;
        for peer in self.client.peers() {
            match self.take_missing_from(peer, current, &missing).await {
                Ok(true) => {
                    self.clear_failure(&peer.name);
                    return;
                }
                Ok(false) => {}
                Err(TakeError::Peer(e)) if e.is_sealed() => {}
                Err(e) => {
                    every_peer_answered = false;
                    self.log_failure(&peer.name, e.to_string());
                }
            }
        }
        if !every_peer_answered {
            return;
        }
        tracing::info!(
            node = %self.cluster.node,
            versions = ?missing.iter().map(|v| v.number()).collect::<Vec<_>>(),
            "cluster: no peer holds these keys; asking again in a minute (or unseal with their shares)"
        );
        *self.not_found.lock().unwrap_or_else(|p| p.into_inner()) = Some((missing, Instant::now()));
    }

    /// Takes from `peer` the keys of `missing` it holds; `Ok(false)` when it
    /// holds none of them.
    async fn take_missing_from(
        &self,
        peer: &Node,
        current: u64,
        missing: &BTreeSet<KeyVersion>,
    ) -> Result<bool, TakeError> {
        let _one = self.taking.lock().await;
        if self.daemon.vault().is_sealed() {
            return Ok(false);
        }
        let mut keys = self.fetch(peer, current).await?;
        keys.retain(|version, _| missing.contains(version));
        if keys.is_empty() {
            return Ok(false);
        }
        let (keys, _) = self.proven(peer, keys).await?;
        let versions: Vec<u32> = keys.keys().map(|v| v.number()).collect();
        self.daemon.hold_proven(keys)?;
        tracing::info!(node = %self.cluster.node, peer = %peer.name, ?versions, "cluster: took the keys of new versions from a peer");
        self.daemon
            .audit(
                DAEMON,
                "keys_from_peer",
                json!({
                    "node": self.cluster.node,
                    "peer": peer.name,
                    "generation": current,
                    "versions": versions,
                }),
            )
            .await?;
        Ok(true)
    }

    /// `peer`'s keys, age-encrypted to a recipient made for this one
    /// request, of the cluster seal generation `current`.
    async fn fetch(
        &self,
        peer: &Node,
        current: u64,
    ) -> Result<BTreeMap<KeyVersion, Key>, TakeError> {
        // Made for this one request; dropped (and zeroized) when it ends.
        let identity = age::x25519::Identity::generate();
        let PeerKeyring {
            node,
            generation,
            age_armored,
        } = self
            .client
            .keyring(peer, identity.to_public().to_string())
            .await?;
        if node != peer.name {
            return Err(PeerError::Malformed {
                peer: peer.name.clone(),
                reason: format!("it answered as node {node}"),
            }
            .into());
        }
        if generation != current {
            return Err(TakeError::Generation {
                peer: peer.name.clone(),
                theirs: generation,
                ours: current,
            });
        }
        Ok(handover::decrypt(
            &identity,
            &age_armored,
            &self.daemon.config().keyring,
        )?)
    }

    /// `keys` proven as unseal proves them (KCV, canaries, sample records);
    /// keys that fail are dropped, logged and audited.
    async fn proven(
        &self,
        peer: &Node,
        keys: BTreeMap<KeyVersion, Key>,
    ) -> Result<(BTreeMap<KeyVersion, Key>, crate::verify::Report), TakeError> {
        let (keys, verdict) = self.daemon.prove(keys).await?;
        match verdict {
            Ok(report) => Ok((keys, report)),
            Err(failures) => {
                drop(keys);
                for failure in &failures {
                    tracing::error!(
                        peer = %peer.name,
                        version = failure.version.number(),
                        check = %failure.check,
                        record_ids = ?failure.record_ids,
                        "cluster: a key from a peer failed verification; it was dropped"
                    );
                }
                let failures: Vec<String> = failures.iter().map(ToString::to_string).collect();
                self.daemon
                    .audit(
                        DAEMON,
                        "unseal_from_peer_refused",
                        json!({"node": self.cluster.node, "peer": peer.name, "failures": failures}),
                    )
                    .await?;
                Err(TakeError::Unproven {
                    peer: peer.name.clone(),
                    failures: failures.join("; "),
                })
            }
        }
    }

    /// Whether `caller` is another node of this cluster.
    pub fn check_node(&self, caller: &Principal) -> Result<(), NodeRefusal> {
        if !caller.has(Role::Node) {
            return Err(NodeRefusal::NotANode {
                name: caller.name.clone(),
                roles: caller.roles_text(),
            });
        }
        if !self.cluster.has_node(&caller.name) {
            return Err(NodeRefusal::NotInCluster {
                name: caller.name.clone(),
                nodes: self
                    .cluster
                    .nodes
                    .iter()
                    .map(|n| n.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        if caller.name == self.cluster.node {
            return Err(NodeRefusal::Itself {
                name: caller.name.clone(),
            });
        }
        Ok(())
    }

    /// The keys this node holds for `node` (checked by the caller),
    /// encrypted to its `recipient`; refused unless this node's keys belong
    /// to the cluster's current seal generation.
    pub async fn keyring_for(
        &self,
        node: &str,
        recipient: &str,
    ) -> Result<Result<PeerKeyring, String>, DaemonError> {
        let current = self.daemon.store().cluster_seal_generation().await?;
        let Some(handover) = handover::held(self.daemon.vault()) else {
            return Err(DaemonError::Sealed);
        };
        let held = *self.lock_generation();
        // Unsealed by a ceremony `tick` has not checked yet: its keys belong
        // to the generation known before (that only grows through a check
        // or a seal notice, which stamps or seals them first), not to the
        // store's of now.
        let generation = match held {
            Some(held) => held,
            None => self.seen.lock().await.unwrap_or(current),
        };
        if generation < current {
            drop(handover);
            self.follow_seal(current, DAEMON).await;
            return Err(DaemonError::Sealed);
        }
        let armored = match handover::encrypt(&handover, recipient) {
            Ok(armored) => armored,
            Err(e) => return Ok(Err(e.to_string())),
        };
        let versions: Vec<u32> = handover.keys.iter().map(|k| k.version.number()).collect();
        let write_version = handover.write_version.number();
        drop(handover);
        self.daemon
            .audit(
                node,
                "keyring_sent_to_node",
                json!({
                    "node": self.cluster.node,
                    "to": node,
                    "generation": generation,
                    "versions": versions,
                    "write_version": write_version,
                }),
            )
            .await?;
        tracing::info!(node = %self.cluster.node, to = node, generation, "cluster: keyring sent to a peer (age-encrypted)");
        Ok(Ok(PeerKeyring {
            node: self.cluster.node.clone(),
            generation,
            age_armored: armored,
        }))
    }

    /// Taken before `principal`'s shares are admitted here, for
    /// [`Self::relay`]: it holds the cluster seal generation they are
    /// admitted at.
    pub async fn ticket(&self, principal: &str) -> Ticket {
        let generation = self.seen.lock().await.unwrap_or(0);
        self.relays.ticket(principal, generation)
    }

    /// Admits `keyholder`'s `lines`, relayed by node `by`, which admitted
    /// them at cluster seal generation `generation`. Refused when this node
    /// knows of a later seal: that seal dropped every node's progress, the
    /// shares in flight to a peer too. A later generation than this node
    /// knows is a seal it has not read yet: admitted, and dropped with the
    /// rest when this node reads it (within a second).
    pub async fn admit_relayed(
        &self,
        keyholder: &Principal,
        lines: &[ShareLine],
        by: &str,
        generation: u64,
    ) -> Result<UnsealResponse, RelayRefused> {
        let refused = |ours: u64| RelayRefused::SealedSince {
            relayed_by: by.to_owned(),
            theirs: generation,
            ours,
        };
        // The gate makes the check and the epoch one step against a seal
        // (which bumps the epoch, then records the generation, under it);
        // it is not held while the shares are admitted and perhaps proven,
        // so a seal never waits on a proof.
        let epoch = {
            let seen = self.seen.lock().await;
            if let Some(ours) = *seen
                && generation < ours
            {
                return Err(refused(ours));
            }
            self.daemon.seal_epoch()
        };
        match self
            .daemon
            .unseal_relayed(keyholder, lines, by, epoch)
            .await?
        {
            Some(admitted) => Ok(admitted),
            None => Err(refused(self.seen.lock().await.unwrap_or(generation))),
        }
    }

    /// Relays the share lines `keyholder` submitted here (those admitted)
    /// to every peer, in the background, unless `keyholder` withdrew them
    /// since `ticket`: a peer that is down costs it a warning, never the
    /// keyholder's request.
    pub fn relay(self: &Arc<Self>, ticket: Ticket, keyholder: String, lines: Vec<ShareLine>) {
        if lines.is_empty() {
            return;
        }
        let this = Arc::clone(self);
        tokio::spawn(async move { this.relays.shares(ticket, &keyholder, &lines).await });
    }

    /// `principal` withdrew its shares here (an operator: everyone's):
    /// shares of theirs not yet relayed never are, and every peer is told,
    /// after the relays in flight. Returns once every peer answered or
    /// failed; one that failed is told again every second.
    pub async fn relay_withdrawal(&self, principal: &Principal) {
        self.relays
            .withdrawn(&principal.name, principal.has(Role::Operator));
        self.relays.withdrawal(&principal.name).await;
    }

    /// A peer relayed `principal`'s withdrawal (already done here): shares
    /// of theirs this node has not relayed yet never are.
    pub fn withdrawn_elsewhere(&self, principal: &Principal) {
        self.relays
            .withdrawn(&principal.name, principal.has(Role::Operator));
    }

    /// Records a seal of the whole cluster by `actor` (this node already
    /// sealed) and tells every peer at once; the peers' own checks notice
    /// it within a second anyway. When the state store cannot record it,
    /// the peers are still told (the generation after the last one seen,
    /// which seals every node holding keys) and the status's `unaudited`
    /// says what could not be recorded: a peer that was not reached stays
    /// unsealed.
    pub async fn seal_cluster(self: &Arc<Self>, actor: &str) -> Status {
        // Sealed and recorded under the gate: a relay admitted here from
        // now on was admitted at the new generation.
        let mut seen = self.seen.lock().await;
        *self.lock_generation() = None;
        let mut sealed = self.daemon.seal(actor).await;
        let node = self.cluster.node.clone();
        let by = actor.to_owned();
        let recorded = self
            .daemon
            .store()
            .seal_cluster(
                seen.unwrap_or(0),
                Box::new(move |generation| {
                    crate::audit::draft(
                        &by,
                        "cluster_sealed",
                        json!({"node": node, "generation": generation}),
                    )
                }),
            )
            .await;
        let generation = match &recorded {
            Ok(generation) => *generation,
            Err(e) => {
                tracing::error!(error = %e, "cluster: the cluster seal could not be recorded in the state store; telling the peers anyway");
                seen.unwrap_or(0) + 1
            }
        };
        learn(&mut seen, generation);
        drop(seen);
        tracing::info!(node = %self.cluster.node, generation, "cluster: sealed the cluster");
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let calls = this.client.peers().iter().map(|peer| {
                let this = &this;
                async move {
                    if let Err(e) = this.client.seal(peer, generation).await {
                        tracing::warn!(peer = %peer.name, error = %e, "cluster: a peer was not told of the seal; it seals at its next check");
                    }
                }
            });
            futures::future::join_all(calls).await;
        });
        if let Err(e) = recorded
            && sealed.unaudited.is_none()
        {
            sealed.unaudited = Some(format!(
                "the cluster seal (generation {generation}, told to the peers) could not be recorded: {e}"
            ));
        }
        sealed
    }

    /// A peer (`by`) sealed the cluster at `generation`: seals here unless
    /// the keys held belong to a newer generation; a sealed node drops its
    /// progress (whether or not it read the generation itself first: a
    /// generation told while the state store was down may be one the store
    /// records only at the next seal).
    pub async fn notice_seal(&self, by: &str, generation: u64) {
        let mut seen = self.seen.lock().await;
        learn(&mut seen, generation);
        let held = *self.lock_generation();
        if held.is_some_and(|h| h >= generation) {
            return;
        }
        self.follow_seal(generation, by).await;
    }
}

/// Records that the cluster seal generation `generation` exists in `seen`
/// (the latest known only grows); returns the one known before.
fn learn(seen: &mut Option<u64>, generation: u64) -> Option<u64> {
    seen.replace(seen.map_or(generation, |known| known.max(generation)))
}
