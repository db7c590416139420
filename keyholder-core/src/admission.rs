//! Share admission: the one set of rules a submitted share line meets before
//! it counts, at unseal and when a keyholder proves a new version's share.
//!
//! The checks run in one order, and the first that fails is the refusal:
//! the line parses (its `check=` matches), the share is of this keyring, of
//! a version the caller takes ([`Scope`]), not retired, of the recorded
//! split set and parameters, of an index that was dealt, matching the
//! fingerprint recorded when it was dealt, dealt to the principal who
//! submits it, and not already counted.
//!
//! A refusal names the principal, version and index only; it never carries
//! share data.

use std::collections::BTreeMap;

use crypto_core::{KeyVersion, KeyringId, SetId, Share};
use keyholder_api::{ShareOutcome, VersionState};

use crate::facts::VersionFacts;

/// Which versions a submission may hold a share of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Unseal: any version of the keyring that is not retired.
    Unseal,
    /// `share verify`: only the rotation's new version.
    NewVersion(KeyVersion),
}

/// Why a share line was not admitted. Every variant is a distinct rule; none
/// carries share data.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The line's `check=` does not match the rest of it (a copy error).
    #[error("{}", crypto_core::Error::ShareChecksum)]
    BadChecksum,
    /// The line is not a share line.
    #[error("{reason}")]
    Malformed {
        /// Why, in crypto-core's words (a field name, never a value).
        reason: String,
    },
    /// The share is of another keyring.
    #[error(
        "{principal}'s share is for keyring `{found}`, this daemon serves `{expected}`; submit the share file of this keyring"
    )]
    WrongKeyring {
        /// Who submitted it.
        principal: String,
        /// The keyring served.
        expected: KeyringId,
        /// The keyring the share names.
        found: KeyringId,
        /// The version it names.
        version: KeyVersion,
        /// Its index.
        index: u8,
    },
    /// The share names a version the keyring does not have.
    #[error(
        "{version} is not a version of keyring {keyring} (known: {}); it was refused, nothing else changed",
        .known.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
    )]
    UnknownVersion {
        /// The keyring.
        keyring: KeyringId,
        /// The version the share names.
        version: KeyVersion,
        /// Its index.
        index: u8,
        /// The versions the keyring has.
        known: Vec<KeyVersion>,
    },
    /// `share verify` got a share of another version than the new one.
    #[error(
        "{principal}'s share is of {version}; only shares of the new version {expected} are verified now (`keyholder share fetch` gets it)"
    )]
    NotTheNewVersion {
        /// Who submitted it.
        principal: String,
        /// The version it names.
        version: KeyVersion,
        /// Its index.
        index: u8,
        /// The version being verified.
        expected: KeyVersion,
    },
    /// The version is retired: its shares must never rebuild it again.
    #[error("{version} is retired; its shares are no longer used")]
    Retired {
        /// The version.
        version: KeyVersion,
        /// Its index.
        index: u8,
    },
    /// The share is of an older or newer split of the version.
    #[error(
        "{principal}'s share of {version} index {index} is from split set {found}, the daemon expects set {expected}: it belongs to an older or newer split of {version}"
    )]
    OtherSplit {
        /// Who submitted it.
        principal: String,
        /// The version.
        version: KeyVersion,
        /// Its index.
        index: u8,
        /// The set recorded.
        expected: SetId,
        /// The set the share names.
        found: SetId,
    },
    /// The share's threshold or count differs from the recorded split.
    #[error(
        "{principal}'s share of {version} index {index} says {threshold} of {count}, but {version} was split {expected_threshold} of {expected_count}"
    )]
    WrongParameters {
        /// Who submitted it.
        principal: String,
        /// The version.
        version: KeyVersion,
        /// Its index.
        index: u8,
        /// The threshold the share names.
        threshold: u8,
        /// The count the share names.
        count: u8,
        /// The threshold recorded.
        expected_threshold: u8,
        /// The count recorded.
        expected_count: u8,
    },
    /// No share of that index was dealt.
    #[error("{version} has no share index {index}; it was refused")]
    UnknownIndex {
        /// The version.
        version: KeyVersion,
        /// The index named.
        index: u8,
    },
    /// The share is not the one dealt at its index: corrupted or forged.
    #[error(
        "{principal}'s share of {version} index {index} does not match the fingerprint recorded when it was dealt: it is corrupted or forged; decrypt the share file again (the shares already in are kept)"
    )]
    FingerprintMismatch {
        /// Who submitted it.
        principal: String,
        /// The version.
        version: KeyVersion,
        /// Its index.
        index: u8,
    },
    /// The share was dealt to another principal.
    #[error(
        "share of {version} index {index} was dealt to {dealt_to}, not {principal}; each keyholder submits only their own share with their own certificate"
    )]
    WrongHolder {
        /// Who submitted it.
        principal: String,
        /// The version.
        version: KeyVersion,
        /// Its index.
        index: u8,
        /// Who it was dealt to.
        dealt_to: String,
    },
    /// The principal's share of the version (or this index) is already in.
    /// At unseal this is not a failure: the line is reported accepted with
    /// this note, and nothing changes.
    #[error(
        "{principal}'s share of {version} is already counted; a keyholder counts once per version"
    )]
    AlreadyCounted {
        /// Who submitted it.
        principal: String,
        /// The version.
        version: KeyVersion,
        /// Its index.
        index: u8,
    },
}

impl Refusal {
    /// The version and index the refused share names, when the line parsed.
    pub fn share(&self) -> Option<(KeyVersion, u8)> {
        match self {
            Self::BadChecksum | Self::Malformed { .. } => None,
            Self::WrongKeyring { version, index, .. }
            | Self::UnknownVersion { version, index, .. }
            | Self::NotTheNewVersion { version, index, .. }
            | Self::Retired { version, index }
            | Self::OtherSplit { version, index, .. }
            | Self::WrongParameters { version, index, .. }
            | Self::UnknownIndex { version, index }
            | Self::FingerprintMismatch { version, index, .. }
            | Self::WrongHolder { version, index, .. }
            | Self::AlreadyCounted { version, index, .. } => Some((*version, *index)),
        }
    }

    /// A stable snake_case name of the rule, for the audit log and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadChecksum => "bad_checksum",
            Self::Malformed { .. } => "malformed",
            Self::WrongKeyring { .. } => "wrong_keyring",
            Self::UnknownVersion { .. } => "unknown_version",
            Self::NotTheNewVersion { .. } => "not_the_new_version",
            Self::Retired { .. } => "retired",
            Self::OtherSplit { .. } => "other_split",
            Self::WrongParameters { .. } => "wrong_parameters",
            Self::UnknownIndex { .. } => "unknown_index",
            Self::FingerprintMismatch { .. } => "fingerprint_mismatch",
            Self::WrongHolder { .. } => "wrong_holder",
            Self::AlreadyCounted { .. } => "already_counted",
        }
    }
}

/// Admits the share on `line` from `principal` or says which rule refused
/// it. `versions` are the keyring's versions; `counted(version, index,
/// principal)` says whether that principal's share of the version, or that
/// index, is already in.
pub fn admit(
    line: &str,
    principal: &str,
    keyring: &KeyringId,
    versions: &BTreeMap<KeyVersion, VersionFacts>,
    scope: Scope,
    counted: impl Fn(KeyVersion, u8, &str) -> bool,
) -> Result<Share, Refusal> {
    let share = Share::parse(line).map_err(|e| match e {
        crypto_core::Error::ShareChecksum => Refusal::BadChecksum,
        other => Refusal::Malformed {
            reason: other.to_string(),
        },
    })?;
    let (version, index) = (share.version(), share.index());
    let principal_owned = || principal.to_owned();
    if share.keyring() != keyring {
        return Err(Refusal::WrongKeyring {
            principal: principal_owned(),
            expected: keyring.clone(),
            found: share.keyring().clone(),
            version,
            index,
        });
    }
    if let Scope::NewVersion(expected) = scope
        && version != expected
    {
        return Err(Refusal::NotTheNewVersion {
            principal: principal_owned(),
            version,
            index,
            expected,
        });
    }
    let Some(facts) = versions.get(&version) else {
        return Err(Refusal::UnknownVersion {
            keyring: keyring.clone(),
            version,
            index,
            known: versions.keys().copied().collect(),
        });
    };
    if facts.state == VersionState::Retired {
        return Err(Refusal::Retired { version, index });
    }
    if share.set() != facts.set {
        return Err(Refusal::OtherSplit {
            principal: principal_owned(),
            version,
            index,
            expected: facts.set,
            found: share.set(),
        });
    }
    if share.threshold() != facts.threshold || share.count() != facts.count {
        return Err(Refusal::WrongParameters {
            principal: principal_owned(),
            version,
            index,
            threshold: share.threshold(),
            count: share.count(),
            expected_threshold: facts.threshold,
            expected_count: facts.count,
        });
    }
    let Some(dealt) = facts.dealt.get(&index) else {
        return Err(Refusal::UnknownIndex { version, index });
    };
    if !dealt.fingerprint.matches(&share) {
        return Err(Refusal::FingerprintMismatch {
            principal: principal_owned(),
            version,
            index,
        });
    }
    if dealt.principal != principal {
        return Err(Refusal::WrongHolder {
            principal: principal_owned(),
            version,
            index,
            dealt_to: dealt.principal.clone(),
        });
    }
    if counted(version, index, principal) {
        return Err(Refusal::AlreadyCounted {
            principal: principal_owned(),
            version,
            index,
        });
    }
    Ok(share)
}

/// The outcome reported for line `position` (1-based) of a submission:
/// accepted, accepted with a note (already counted), or refused with the
/// refusal's message.
pub fn outcome(position: usize, principal: &str, verdict: &Result<Share, Refusal>) -> ShareOutcome {
    match verdict {
        Ok(share) => ShareOutcome {
            position,
            version: Some(share.version()),
            index: Some(share.index()),
            accepted: true,
            reason: None,
            refusal: None,
        },
        Err(refusal) => {
            let accepted = matches!(refusal, Refusal::AlreadyCounted { .. });
            let reason = match refusal.share() {
                None => format!("share {position} from {principal} was refused: {refusal}"),
                Some(_) => refusal.to_string(),
            };
            ShareOutcome {
                position,
                version: refusal.share().map(|(v, _)| v),
                index: refusal.share().map(|(_, i)| i),
                accepted,
                reason: Some(reason),
                refusal: Some(refusal.code().to_owned()),
            }
        }
    }
}

#[cfg(test)]
mod tests;
