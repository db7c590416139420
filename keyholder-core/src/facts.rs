//! What the state store knows about one key version: its public facts, never
//! a key or a share. The store reads and writes these; the machines decide
//! over them.

use std::collections::BTreeMap;

use crypto_core::{Kcv, KeyVersion, SetId, ShareFingerprint};
use keyholder_api::VersionState;

/// Who received one share index, and its fingerprint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DealtShare {
    /// The fingerprint taken when the share was dealt.
    pub fingerprint: ShareFingerprint,
    /// The principal it was dealt to.
    pub principal: String,
}

/// A record the daemon encrypted under a version when it made the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Canary {
    /// The envelope text (`V<n>:...`).
    pub record: String,
    /// Its associated data: `keyholder canary/<keyring>/<version>`.
    pub aad: String,
}

/// One key version as stored (no key, no share).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionRecord {
    /// The version.
    pub version: KeyVersion,
    /// Its key check value.
    pub kcv: Kcv,
    /// The split set its shares belong to.
    pub set: SetId,
    /// Shares needed.
    pub threshold: u8,
    /// Shares dealt.
    pub count: u8,
    /// Its lifecycle state.
    pub state: VersionState,
    /// Encryptions counted under it.
    pub encryptions: u64,
    /// Per share index: fingerprint and recipient.
    pub dealt: BTreeMap<u8, DealtShare>,
    /// Its canary.
    pub canary: Canary,
}

/// What share admission and the seal machine know about one version.
#[derive(Clone, Debug)]
pub struct VersionFacts {
    /// The split set its shares belong to.
    pub set: SetId,
    /// Shares needed.
    pub threshold: u8,
    /// Shares dealt.
    pub count: u8,
    /// Its key check value.
    pub kcv: Kcv,
    /// Per index: fingerprint and recipient.
    pub dealt: BTreeMap<u8, DealtShare>,
    /// Its lifecycle state.
    pub state: VersionState,
    /// Whether unsealing needs it (a live version) or takes it when given.
    pub required: bool,
}

impl VersionFacts {
    /// The facts of a stored version; `live` says whether unsealing needs it.
    pub fn from_record(record: &VersionRecord, live: bool) -> Self {
        Self {
            set: record.set,
            threshold: record.threshold,
            count: record.count,
            kcv: record.kcv,
            dealt: record.dealt.clone(),
            state: record.state,
            required: live,
        }
    }

    /// Whether a share admitted under `other` is admitted alike under these
    /// facts: everything but `required` (which versions the plan makes live)
    /// is the same.
    pub fn admits_alike(&self, other: &Self) -> bool {
        self.set == other.set
            && self.threshold == other.threshold
            && self.count == other.count
            && self.kcv == other.kcv
            && self.dealt == other.dealt
            && self.state == other.state
    }
}
