//! Audit entries as the daemon writes them: who did what, when, with details
//! as JSON.
//!
//! Owns the shape of an entry before the store chains it. Details name
//! principals, versions, indices and reasons; they must never hold a key, a
//! share or a record's plaintext.

use std::time::SystemTime;

use serde_json::Value;

use crate::store::AuditDraft;

/// The actor of entries the daemon writes on its own.
pub const DAEMON: &str = "keyholderd";

/// A draft entry by `actor`, timestamped now.
pub fn draft(actor: &str, action: &str, detail: Value) -> AuditDraft {
    AuditDraft {
        time: now_rfc3339(),
        actor: actor.to_owned(),
        action: action.to_owned(),
        detail: detail.to_string(),
    }
}

/// The current time, RFC 3339 UTC with milliseconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}
