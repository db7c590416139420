//! The audit chain: each entry carries the hash of the one before, so a
//! removed, reordered or edited entry breaks the chain where it happened.
//!
//! The daemon computes the hashes when it appends; `keyholder audit --verify`
//! recomputes them with the same function. Entries never hold key material.

use core::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

/// The `prev_hash` of the first entry.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One audit entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    /// Position in the log, from 1, without gaps.
    pub seq: u64,
    /// When, RFC 3339 UTC.
    pub time: String,
    /// The principal (or `keyholderd` for the daemon itself).
    pub actor: String,
    /// What happened, snake_case (`unseal_share_accepted`, `rotation_prepared`, ...).
    pub action: String,
    /// Details as a JSON text, hashed byte for byte.
    pub detail: String,
    /// The previous entry's `hash` ([`GENESIS_HASH`] for the first).
    pub prev_hash: String,
    /// SHA-256 (hex) over the fields above, see [`AuditEntry::compute_hash`].
    pub hash: String,
}

impl AuditEntry {
    /// The hash of this entry's content and its link to the previous one.
    /// Each field is length-prefixed so no two entries hash the same input.
    pub fn compute_hash(
        seq: u64,
        time: &str,
        actor: &str,
        action: &str,
        detail: &str,
        prev_hash: &str,
    ) -> String {
        let mut hasher = Sha256::new();
        hasher.update(b"keyholder audit v1");
        hasher.update(seq.to_be_bytes());
        for field in [time, actor, action, detail, prev_hash] {
            hasher.update((field.len() as u64).to_be_bytes());
            hasher.update(field.as_bytes());
        }
        hex::encode(hasher.finalize())
    }
}

/// Entries one `GET /v1/audit` answers at most, and without `limit`.
pub const AUDIT_PAGE_MAX: u32 = 1000;

/// `GET /v1/audit?since=SEQ&limit=N`: one page of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditLog {
    /// The entries after `since`, in order, at most `limit`.
    pub entries: Vec<AuditEntry>,
    /// The `since` of the next page: the last entry's seq (the request's
    /// `since` when the page is empty).
    #[serde(default)]
    pub next_since: u64,
    /// Whether entries follow this page.
    #[serde(default)]
    pub more: bool,
}

/// Checks a log page by page, from its first entry: feed every page in
/// order; each is checked against the end of the one before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainVerifier {
    prev: String,
    checked: u64,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        Self {
            prev: GENESIS_HASH.to_owned(),
            checked: 0,
        }
    }
}

impl ChainVerifier {
    /// Checks the next `entries` of the log.
    pub fn push(&mut self, entries: &[AuditEntry]) -> Result<(), ChainError> {
        for entry in entries {
            let fail = |reason| ChainError {
                seq: entry.seq,
                reason,
            };
            if entry.seq != self.checked + 1 {
                return Err(fail(
                    "is out of sequence (an entry was removed or reordered)",
                ));
            }
            if entry.prev_hash != self.prev {
                return Err(fail("does not link to the entry before it"));
            }
            let expected = AuditEntry::compute_hash(
                entry.seq,
                &entry.time,
                &entry.actor,
                &entry.action,
                &entry.detail,
                &entry.prev_hash,
            );
            if entry.hash != expected {
                return Err(fail("was altered (its hash does not match its content)"));
            }
            self.prev.clone_from(&entry.hash);
            self.checked = entry.seq;
        }
        Ok(())
    }

    /// Entries checked so far.
    pub fn checked(&self) -> u64 {
        self.checked
    }
}

/// Where and why the chain is broken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainError {
    /// The first entry that does not check.
    pub seq: u64,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl fmt::Display for ChainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "audit entry {} {}", self.seq, self.reason)
    }
}

impl std::error::Error for ChainError {}

/// Checks every link and every hash of a log read from its beginning.
pub fn verify_chain(entries: &[AuditEntry]) -> Result<(), ChainError> {
    ChainVerifier::default().push(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: u64) -> Vec<AuditEntry> {
        let mut prev = GENESIS_HASH.to_owned();
        (1..=n)
            .map(|seq| {
                let detail = format!("{{\"n\":{seq}}}");
                let hash = AuditEntry::compute_hash(seq, "t", "alice", "a", &detail, &prev);
                let entry = AuditEntry {
                    seq,
                    time: "t".into(),
                    actor: "alice".into(),
                    action: "a".into(),
                    detail,
                    prev_hash: prev.clone(),
                    hash: hash.clone(),
                };
                prev = hash;
                entry
            })
            .collect()
    }

    #[test]
    fn an_intact_chain_verifies() {
        verify_chain(&chain(5)).unwrap();
    }

    #[test]
    fn edits_removals_and_reorders_are_named() {
        let mut edited = chain(5);
        edited[2].actor = "mallory".into();
        assert_eq!(
            verify_chain(&edited).unwrap_err().to_string(),
            "audit entry 3 was altered (its hash does not match its content)"
        );
        let mut removed = chain(5);
        removed.remove(1);
        assert_eq!(verify_chain(&removed).unwrap_err().seq, 3);
        let mut relinked = chain(5);
        relinked[3].prev_hash = relinked[1].hash.clone();
        assert_eq!(
            verify_chain(&relinked).unwrap_err().reason,
            "does not link to the entry before it"
        );
    }

    #[test]
    fn a_chain_checked_page_by_page_finds_what_the_whole_check_finds() {
        let log = chain(10);
        let mut pages = ChainVerifier::default();
        for page in log.chunks(3) {
            pages.push(page).unwrap();
        }
        assert_eq!(pages.checked(), 10);
        let mut edited = chain(10);
        edited[7].detail = "{}".into();
        let mut pages = ChainVerifier::default();
        let err = edited
            .chunks(3)
            .find_map(|page| pages.push(page).err())
            .unwrap();
        assert_eq!(err, verify_chain(&edited).unwrap_err());
        assert_eq!(err.seq, 8);
        // A page that skips entries does not link.
        let mut skipping = ChainVerifier::default();
        skipping.push(&log[..3]).unwrap();
        assert_eq!(skipping.push(&log[4..]).unwrap_err().seq, 5);
    }
}
