//! The wire types of keyholder: every API body, the status document and the
//! audit chain, defined once and used by both `keyholderd` and `keyholder`.
//!
//! This crate holds no logic beyond parsing, the version check and the audit
//! hash. It never holds a key: the one body that carries a secret (a share
//! line) wraps it in [`ShareLine`], which zeroizes and never prints.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod admin;
mod audit;
pub mod openapi;
pub mod paths;
mod peer;
mod rotation;
mod seal;
mod usage;
mod version;

pub use admin::ReloadResponse;
pub use audit::{
    AUDIT_PAGE_MAX, AuditEntry, AuditLog, ChainError, ChainVerifier, GENESIS_HASH, verify_chain,
};
pub use peer::{ClusterSeal, PeerKeyring, PeerKeyringRequest, RelayedShares, RelayedWithdrawal};
pub use rotation::{
    PrepareRequest, RetirePlan, RetireRequest, RollbackPlan, RollbackRequest, RotationState,
    RotationStatus, ShareEnvelope, ThrottleRequest,
};
pub use seal::{
    CertificateExpiry, ClusterNode, ClusterStatus, Health, MAX_SHARE_LINES, ShareLine,
    ShareOutcome, Status, UnsealProgress, UnsealRequest, UnsealResponse, VersionState,
    VersionStatus,
};
pub use usage::{
    KeyringRequest, MAX_PROCESS_ID_LEN, MAX_USAGE_VERSIONS, UsageLevel, VersionEncryptions,
};
pub use version::{API_VERSION, API_VERSION_HEADER, IncompatibleVersion, check_compatible};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Every non-2xx answer of the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ApiError {
    /// A lowercase sentence saying what was wrong and what to do.
    pub error: String,
    /// A stable snake_case code (`sealed`, `forbidden`, `bad_request`, ...).
    pub code: String,
    /// With `not_leader` (HTTP 421, API 1.3): the API address of the
    /// cluster node that leads (`host:port`), when one is known; send the
    /// request there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
}

/// Parses a request or response body, naming the field that was wrong but
/// never echoing a value from the body (it may hold a share). Request types
/// refuse unknown fields; response types ignore them, so a client reads the
/// answer of a daemon one minor version ahead (see [`API_VERSION`]).
pub fn from_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    // Every body is an object; serde would also read a struct from an array
    // of its fields in order (`[null, null]`), which no client sends.
    if let Some(&first) = body.iter().find(|b| !b.is_ascii_whitespace())
        && first != b'{'
    {
        return Err("the body is not a JSON object (it must start with `{`)".to_owned());
    }
    serde_json::from_slice(body).map_err(|e| {
        let what = match e.classify() {
            serde_json::error::Category::Io => "could not be read",
            serde_json::error::Category::Syntax => "is not valid JSON",
            serde_json::error::Category::Data => "does not have the expected fields",
            serde_json::error::Category::Eof => "ends early",
        };
        // serde_json's data errors name the field ("unknown field `x`",
        // "missing field `y`", "invalid type: ..."); the value itself is only
        // quoted for strings, which is why only the first clause is kept.
        let detail = e.to_string();
        let detail = detail.split(" at line").next().unwrap_or_default();
        let detail = if detail.contains("invalid value") || detail.contains("invalid type") {
            detail.split(':').next().unwrap_or_default().to_owned()
        } else {
            detail.to_owned()
        };
        format!(
            "the body {what} ({detail}, line {} column {})",
            e.line(),
            e.column()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_daemons_answer_parses_and_an_unknown_request_field_is_refused() {
        let answer = br#"{"status":"ok","sealed":true,"field_of_a_newer_minor":1}"#;
        let health: Health = from_json(answer).unwrap();
        assert!(health.sealed);
        let request = br#"{"version":11,"field_of_a_newer_minor":1}"#;
        let refused = from_json::<PrepareRequest>(request).unwrap_err();
        assert!(
            refused.contains("unknown field `field_of_a_newer_minor`"),
            "{refused}"
        );
    }

    #[test]
    fn a_body_that_is_not_an_object_is_refused_without_echoing_it() {
        for body in [&b"[null, null]"[..], b" [11]", b"\"x\"", b"11", b"null"] {
            assert_eq!(
                from_json::<ThrottleRequest>(body).unwrap_err(),
                "the body is not a JSON object (it must start with `{`)"
            );
        }
        assert!(from_json::<ThrottleRequest>(b" {}").is_ok());
    }
}
