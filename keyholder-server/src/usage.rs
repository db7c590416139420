//! Encryption usage: the reports database processes send with their keyring
//! fetch, and how close each version is to its usage limit.
//!
//! Owns checking a report (the versions it names, its size, its counts),
//! the level of a count against the configured limits and the sentence
//! that tells an operator what to do. Pure: the daemon stores the counts
//! and logs, audits and shows the levels. A version at its limit is still
//! served: refusing the keyring would stop the database, the outage this
//! project exists to prevent; each process's `Keyring` refuses to encrypt
//! past 2^32 on its own.

use std::collections::BTreeSet;

use crypto_core::{KeyVersion, NONCE_HARD_LIMIT};

pub use crate::config::UsageLimits as Limits;
use crate::store::UsageChange as Change;
use keyholder_api::{
    KeyringRequest, MAX_PROCESS_ID_LEN, MAX_USAGE_VERSIONS, UsageLevel, VersionState,
};

impl Limits {
    /// The level of a version that has done `count` encryptions.
    pub fn level(&self, count: u64) -> UsageLevel {
        if count >= self.limit {
            UsageLevel::Exhausted
        } else if count >= self.warn_at {
            UsageLevel::Warning
        } else {
            UsageLevel::Ok
        }
    }

    /// The level of `version` in `state`: a retired version encrypts no
    /// more, so it is never warned about.
    pub fn level_in(&self, state: VersionState, count: u64) -> UsageLevel {
        if state == VersionState::Retired {
            UsageLevel::Ok
        } else {
            self.level(count)
        }
    }

    /// What to do about `version` at `level`, for the status, the log and
    /// the audit log.
    pub fn message(&self, version: KeyVersion, count: u64, level: UsageLevel) -> Option<String> {
        match level {
            UsageLevel::Ok => None,
            UsageLevel::Warning => Some(format!(
                "{version} has done {count} encryptions, past the warning limit of {}: rotate now (keyholder rotate prepare)",
                self.warn_at
            )),
            UsageLevel::Exhausted => Some(format!(
                "{version} has done {count} encryptions and reached its limit of {}: rotate to a new version now (keyholder rotate prepare); the keyring is still served, and each database process refuses to encrypt with {version} past 2^32",
                self.limit
            )),
        }
    }
}

impl Change {
    /// The level this change reached, when it crossed into it (once per
    /// crossing: a later change already at that level returns `None`).
    pub fn crossed(&self, limits: &Limits) -> Option<UsageLevel> {
        let (was, is) = (limits.level(self.before), limits.level(self.after));
        (is != was && is != UsageLevel::Ok).then_some(is)
    }
}

/// A checked usage report: a process id and at most
/// [`MAX_USAGE_VERSIONS`] counts of distinct known versions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// The reporting process.
    pub process: String,
    /// Its cumulative count per version, in numeric order.
    pub counts: Vec<(KeyVersion, u64)>,
}

/// Why a usage report was refused (400, nothing recorded).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    /// The process id breaks its rule.
    #[error(
        "process: a process id is 1 to {MAX_PROCESS_ID_LEN} characters of A-Z a-z 0-9 - _; choose a random one when the process starts"
    )]
    BadProcess,
    /// More versions than a report may carry.
    #[error("encryptions: {count} versions reported, at most {MAX_USAGE_VERSIONS} are taken")]
    TooMany {
        /// How many were sent.
        count: usize,
    },
    /// A version reported twice.
    #[error("encryptions: {version} is reported twice; report each version once")]
    Duplicate {
        /// The version.
        version: KeyVersion,
    },
    /// A version the daemon does not know.
    #[error("encryptions: {version} is not a version of this keyring")]
    UnknownVersion {
        /// The version.
        version: KeyVersion,
    },
    /// A count no keyring can reach.
    #[error(
        "encryptions: the count of {version} is above 2^32 ({NONCE_HARD_LIMIT}), which no keyring reaches"
    )]
    Absurd {
        /// The version.
        version: KeyVersion,
    },
}

/// Checks `request` against the versions the daemon knows.
pub fn check(request: KeyringRequest, known: &[KeyVersion]) -> Result<Report, ReportError> {
    let process_ok = (1..=MAX_PROCESS_ID_LEN).contains(&request.process.len())
        && request
            .process
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !process_ok {
        return Err(ReportError::BadProcess);
    }
    if request.encryptions.len() > MAX_USAGE_VERSIONS {
        return Err(ReportError::TooMany {
            count: request.encryptions.len(),
        });
    }
    let mut seen = BTreeSet::new();
    let mut counts = Vec::with_capacity(request.encryptions.len());
    for entry in &request.encryptions {
        if !seen.insert(entry.version) {
            return Err(ReportError::Duplicate {
                version: entry.version,
            });
        }
        if !known.contains(&entry.version) {
            return Err(ReportError::UnknownVersion {
                version: entry.version,
            });
        }
        if entry.count > NONCE_HARD_LIMIT {
            return Err(ReportError::Absurd {
                version: entry.version,
            });
        }
        counts.push((entry.version, entry.count));
    }
    counts.sort_unstable();
    Ok(Report {
        process: request.process,
        counts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crypto_core::NONCE_WARN_LIMIT;
    use keyholder_api::VersionEncryptions;

    fn v(n: u32) -> KeyVersion {
        KeyVersion::new(n).unwrap()
    }

    fn request(process: &str, counts: &[(u32, u64)]) -> KeyringRequest {
        KeyringRequest {
            process: process.to_owned(),
            encryptions: counts
                .iter()
                .map(|&(n, count)| VersionEncryptions {
                    version: v(n),
                    count,
                })
                .collect(),
        }
    }

    #[test]
    fn a_report_is_refused_naming_what_is_wrong() {
        let known = [v(9), v(10)];
        let cases = [
            (request("", &[]), ReportError::BadProcess),
            (request("a b", &[]), ReportError::BadProcess),
            (request(&"a".repeat(65), &[]), ReportError::BadProcess),
            (
                request("p", &[(10, 1), (10, 2)]),
                ReportError::Duplicate { version: v(10) },
            ),
            (
                request("p", &[(11, 1)]),
                ReportError::UnknownVersion { version: v(11) },
            ),
            (
                request("p", &[(9, NONCE_HARD_LIMIT + 1)]),
                ReportError::Absurd { version: v(9) },
            ),
        ];
        for (request, expected) in cases {
            assert_eq!(check(request, &known).unwrap_err(), expected);
        }
        let many: Vec<(u32, u64)> = (1..=33).map(|n| (n, 1)).collect();
        let known: Vec<KeyVersion> = (1..=33).map(v).collect();
        assert_eq!(
            check(request("p", &many), &known).unwrap_err().to_string(),
            "encryptions: 33 versions reported, at most 32 are taken"
        );
    }

    #[test]
    fn a_good_report_is_kept_in_version_order() {
        let report = check(
            request("f00d-1_x", &[(10, 3), (9, NONCE_HARD_LIMIT)]),
            &[v(9), v(10)],
        )
        .unwrap();
        assert_eq!(report.counts, [(v(9), NONCE_HARD_LIMIT), (v(10), 3)]);
    }

    #[test]
    fn each_level_is_crossed_once() {
        let limits = Limits {
            warn_at: 10,
            limit: 20,
        };
        let change = |before, after| Change {
            version: v(1),
            before,
            after,
        };
        assert_eq!(change(0, 9).crossed(&limits), None);
        assert_eq!(change(9, 10).crossed(&limits), Some(UsageLevel::Warning));
        assert_eq!(change(10, 19).crossed(&limits), None);
        assert_eq!(change(19, 25).crossed(&limits), Some(UsageLevel::Exhausted));
        assert_eq!(change(0, 25).crossed(&limits), Some(UsageLevel::Exhausted));
        assert_eq!(change(25, 26).crossed(&limits), None);
        assert_eq!(limits.level_in(VersionState::Retired, 30), UsageLevel::Ok);
        assert_eq!(
            Limits::default().level(NONCE_WARN_LIMIT),
            UsageLevel::Warning
        );
        assert_eq!(
            Limits::default().level(NONCE_HARD_LIMIT),
            UsageLevel::Exhausted
        );
    }
}
