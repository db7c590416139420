//! The state store a cluster node's orchestrator and worker write through:
//! every leader-only write (rotation transitions with their audit entries,
//! runtime settings, re-encryption checkpoints, encryption counts) carries
//! this node's lease epoch, and is refused here when the node does not lead
//! now, and by the store when a newer epoch exists.
//!
//! Reads, and the writes any node makes (principals, fetches, the audit of
//! an unseal), pass through unfenced. Outside a cluster it is never made.

use std::sync::Arc;

use crypto_core::KeyVersion;
use keyholder_api::AuditEntry;
use tokio::sync::watch;

use super::lease::Leadership;
use crate::principal::Principal;
use crate::store::{
    AuditDraft, ClusterSealAudit, FetchRecord, Heartbeat, LeaseBid, LeaseRecord, StateStore,
    StoreFuture, StoredEnvelope, Transition, UsageChange, VersionRecord,
};

/// A store whose leader-only writes carry the lease's epoch.
pub struct FencedStore {
    inner: Arc<dyn StateStore>,
    node: String,
    leadership: watch::Receiver<Leadership>,
}

impl FencedStore {
    /// Fences `inner`'s leader-only writes with `node`'s leadership.
    pub fn new(
        inner: Arc<dyn StateStore>,
        node: String,
        leadership: watch::Receiver<Leadership>,
    ) -> Self {
        Self {
            inner,
            node,
            leadership,
        }
    }

    fn fence(&self) -> Result<Option<crate::store::Fence>, crate::store::StoreError> {
        self.leadership.borrow().fence(&self.node)
    }
}

fn refused<T: Send + 'static>(e: crate::store::StoreError) -> StoreFuture<'static, T> {
    Box::pin(futures::future::ready(Err(e)))
}

impl StateStore for FencedStore {
    fn sync_principals(&self, principals: &[Principal]) -> StoreFuture<'_, ()> {
        self.inner.sync_principals(principals)
    }
    fn versions(&self) -> StoreFuture<'_, Vec<VersionRecord>> {
        self.inner.versions()
    }
    fn apply(&self, transition: Transition) -> StoreFuture<'_, AuditEntry> {
        match self.fence() {
            Ok(Some(fence)) => self.inner.apply_fenced(fence, transition),
            Ok(None) => self.inner.apply(transition),
            Err(e) => refused(e),
        }
    }
    fn append_audit(&self, audit: AuditDraft) -> StoreFuture<'_, AuditEntry> {
        self.inner.append_audit(audit)
    }
    fn audit_page(&self, since: u64, limit: u32) -> StoreFuture<'_, Vec<AuditEntry>> {
        self.inner.audit_page(since, limit)
    }
    fn add_encryptions(&self, version: KeyVersion, n: u64) -> StoreFuture<'_, UsageChange> {
        match self.fence() {
            Ok(Some(fence)) => self.inner.add_encryptions_fenced(fence, version, n),
            Ok(None) => self.inner.add_encryptions(version, n),
            Err(e) => refused(e),
        }
    }
    fn share_envelope(
        &self,
        version: KeyVersion,
        principal: &str,
    ) -> StoreFuture<'_, Option<StoredEnvelope>> {
        self.inner.share_envelope(version, principal)
    }
    fn load_rotation(&self) -> StoreFuture<'_, Option<String>> {
        self.inner.load_rotation()
    }
    fn runtime_settings(&self) -> StoreFuture<'_, Option<String>> {
        self.inner.runtime_settings()
    }
    fn checkpoint(&self, target: &str, direction: &str) -> StoreFuture<'_, Option<String>> {
        self.inner.checkpoint(target, direction)
    }
    fn checkpoint_targets(&self, direction: &str) -> StoreFuture<'_, Vec<String>> {
        self.inner.checkpoint_targets(direction)
    }
    fn put_checkpoint(&self, target: &str, direction: &str, json: String) -> StoreFuture<'_, ()> {
        match self.fence() {
            Ok(Some(fence)) => self
                .inner
                .put_checkpoint_fenced(fence, target, direction, json),
            Ok(None) => self.inner.put_checkpoint(target, direction, json),
            Err(e) => refused(e),
        }
    }
    fn record_fetch_audited(
        &self,
        fetch: FetchRecord,
        audit: AuditDraft,
    ) -> StoreFuture<'_, AuditEntry> {
        self.inner.record_fetch_audited(fetch, audit)
    }
    fn record_fetch(
        &self,
        principal: &str,
        versions: &[KeyVersion],
        time: &str,
    ) -> StoreFuture<'_, ()> {
        self.inner.record_fetch(principal, versions, time)
    }
    // Any node records what a database process reports, and seals the
    // cluster: neither is a leader-only write.
    fn record_usage(
        &self,
        consumer: &str,
        process: &str,
        counts: &[(KeyVersion, u64)],
    ) -> StoreFuture<'_, Vec<UsageChange>> {
        self.inner.record_usage(consumer, process, counts)
    }
    fn cluster_seal_generation(&self) -> StoreFuture<'_, u64> {
        self.inner.cluster_seal_generation()
    }
    fn seal_cluster(&self, seen: u64, audit: ClusterSealAudit) -> StoreFuture<'_, u64> {
        self.inner.seal_cluster(seen, audit)
    }
    fn snapshot(&self, label: &str, keep: u32) -> StoreFuture<'_, Option<String>> {
        self.inner.snapshot(label, keep)
    }
    fn lease_round(&self, bid: LeaseBid) -> StoreFuture<'_, LeaseRecord> {
        self.inner.lease_round(bid)
    }
    fn cluster_state(&self) -> StoreFuture<'_, (LeaseRecord, Vec<Heartbeat>)> {
        self.inner.cluster_state()
    }
    fn fetches_of(&self, version: KeyVersion) -> StoreFuture<'_, Vec<(String, String)>> {
        self.inner.fetches_of(version)
    }
    fn last_audit_time(&self, action: &str) -> StoreFuture<'_, Option<String>> {
        self.inner.last_audit_time(action)
    }
}
