//! The leader lease: one row in the state store (holder, epoch, expiry by
//! the database's clock), taken when expired at the next epoch and renewed
//! by the process that holds it, at its epoch, and each node's heartbeat,
//! both written in one round every `lease / 3`. A process renews only the
//! epoch it took: another process running the same node's config (a
//! replacement started before the old one is gone) finds the lease held and
//! follows until it expires.
//!
//! Owns this node's [`Leadership`], published through a `watch`: the
//! orchestrator runs transitions and the worker only while it says
//! `Leader`, and the [`fence`](super::fence) stamps leader-only writes with
//! its epoch. A leader that cannot renew (the store unreachable) steps down
//! by its own monotonic clock, `lease - lease / 3` after the start of its
//! last successful renewal, before the lease can run out in the database;
//! it never compares its clock with another host's. The database's
//! fencing is the guarantee; stepping down keeps a stale worker from even
//! trying.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::Cluster;
use crate::daemon::Daemon;
use crate::store::{Fence, LeaseBid, LeaseRecord, StateStore, StoreError};

/// What this node knows of the cluster's leadership.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Leadership {
    /// No cluster: this daemon runs its rotation alone, unfenced.
    Single,
    /// This node holds the lease at `epoch` until `until` by its own clock.
    Leader {
        /// The lease's epoch.
        epoch: u64,
        /// When it steps down unless renewed (before the database's expiry).
        until: Instant,
    },
    /// Another node (or none) leads.
    Follower {
        /// The leader's node name, when one holds an unexpired lease.
        leader: Option<String>,
    },
}

impl Leadership {
    /// Whether this node runs the rotation now.
    pub fn leads(&self) -> bool {
        match self {
            Self::Single => true,
            Self::Leader { until, .. } => Instant::now() < *until,
            Self::Follower { .. } => false,
        }
    }

    /// The fence a leader-only write carries: `None` outside a cluster,
    /// [`StoreError::NotLeader`] on a node that does not lead now.
    pub fn fence(&self, node: &str) -> Result<Option<Fence>, StoreError> {
        match self {
            Self::Single => Ok(None),
            Self::Leader { epoch, until } if Instant::now() < *until => Ok(Some(Fence {
                node: node.to_owned(),
                epoch: *epoch,
            })),
            _ => Err(StoreError::NotLeader),
        }
    }

    /// The leader's node name, when known (this node's own when it leads).
    pub fn leader<'a>(&'a self, me: &'a str) -> Option<&'a str> {
        match self {
            Self::Single => Some(me),
            Self::Leader { .. } => Some(me),
            Self::Follower { leader } => leader.as_deref(),
        }
    }
}

/// How often a node runs its lease round.
pub fn round_every(lease: Duration) -> Duration {
    lease / 3
}

/// How long after the start of its last renewal a leader steps down
/// without a newer one: the lease less one round, so a renewal that hangs
/// for a whole round still leaves the leader a round's margin.
pub fn step_down_after(lease: Duration) -> Duration {
    lease.saturating_sub(round_every(lease))
}

/// Runs this node's lease rounds until `stop`, publishing its leadership.
pub async fn run(daemon: Arc<Daemon>, cluster: Cluster, mut stop: watch::Receiver<bool>) {
    let store = Arc::clone(daemon.store());
    let leadership = daemon.leadership_sender();
    let seal = daemon.seal_state();
    let me = cluster.node.clone();
    let addr = cluster
        .node_named(&me)
        .map(|n| n.addr.clone())
        .unwrap_or_default();
    let every = round_every(cluster.lease);
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // A deadline already past fires at once: a leader whose renewal
        // failed steps down before its next round.
        let deadline = match *leadership.borrow() {
            Leadership::Leader { until, .. } => Some(until),
            _ => None,
        };
        tokio::select! {
            biased;
            () = sleep_until_opt(deadline) => {
                step_down(leadership, None, "lease not renewed in time; stepping down");
                daemon.forget_cluster_leader();
                continue;
            }
            _ = ticks.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let sealed = seal.borrow().sealed;
        let held = match *leadership.borrow() {
            Leadership::Leader { epoch, .. } => Some(epoch),
            _ => None,
        };
        let bid = LeaseBid {
            node: me.clone(),
            addr: addr.clone(),
            sealed,
            // A sealed node cannot run the worker: it lets the lease go.
            want: !sealed,
            lease: cluster.lease,
            held,
        };
        let started = Instant::now();
        let round = tokio::time::timeout(every, store.lease_round(bid)).await;
        match round {
            Ok(Ok(record)) => {
                // Taken or renewed by this process: another one with this
                // node's name holding it is not this one.
                if record.ours && !record.expired && !sealed {
                    let until = started + step_down_after(cluster.lease);
                    let next = Leadership::Leader {
                        epoch: record.epoch,
                        until,
                    };
                    leadership.send_if_modified(|now| {
                        let changed = !matches!(now, Leadership::Leader { epoch, .. } if *epoch == record.epoch);
                        if changed {
                            tracing::info!(node = %me, epoch = record.epoch, "took the cluster lease; leading");
                        }
                        *now = next;
                        changed
                    });
                } else {
                    let leader = record.holder.clone().filter(|_| !record.expired);
                    step_down(leadership, leader, "following");
                }
                publish_status(&daemon, &store, &cluster, &record).await;
            }
            Ok(Err(e)) => {
                tracing::warn!(node = %me, error = %e, "lease round failed");
            }
            Err(_) => {
                tracing::warn!(node = %me, after_ms = every.as_millis() as u64, "lease round timed out");
            }
        }
    }
}

/// Reads every node's heartbeat and publishes the cluster for status and
/// metrics; a failed read keeps the last one.
async fn publish_status(
    daemon: &Daemon,
    store: &Arc<dyn StateStore>,
    cluster: &Cluster,
    record: &LeaseRecord,
) {
    let beats = match store.cluster_state().await {
        Ok((_, beats)) => beats,
        Err(e) => {
            tracing::warn!(error = %e, "reading the cluster's heartbeats failed");
            return;
        }
    };
    let leader = record.holder.clone().filter(|_| !record.expired);
    let nodes = cluster
        .nodes
        .iter()
        .map(|node| {
            let beat = beats.iter().find(|b| b.node == node.name);
            keyholder_api::ClusterNode {
                name: node.name.clone(),
                addr: node.addr.clone(),
                sealed: beat.map(|b| b.sealed),
                heartbeat_age_ms: beat.map(|b| b.age_ms),
            }
        })
        .collect();
    daemon.set_cluster_status(keyholder_api::ClusterStatus {
        node: cluster.node.clone(),
        lease_age_ms: leader.as_ref().map(|_| record.held_ms),
        leader,
        epoch: record.epoch,
        nodes,
    });
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn step_down(leadership: &watch::Sender<Leadership>, leader: Option<String>, why: &str) {
    leadership.send_if_modified(|now| {
        let next = Leadership::Follower { leader };
        if *now == next {
            return false;
        }
        if matches!(now, Leadership::Leader { .. }) {
            tracing::warn!(epoch = ?match now { Leadership::Leader { epoch, .. } => Some(*epoch), _ => None }, "{why}");
        } else {
            tracing::info!(leader = ?match &next { Leadership::Follower { leader } => leader.clone(), _ => None }, "cluster leader changed");
        }
        *now = next;
        true
    });
}
