//! The crate's one error type.
//!
//! Owns every way a target, a store, a checkpoint or a pass can fail. A
//! message names the target, table, column and primary key involved, and what
//! to do; it must never carry a plaintext, a key, or a stored ciphertext.

use std::fmt::Write as _;

use crypto_core::KeyVersion;

use crate::store::Pk;
use crate::target::SqlIdent;

/// How many undecryptable records a pass remembers by column and key (it
/// counts them all).
pub const UNDECRYPTABLE_REMEMBERED: usize = 1000;

/// How many of them an error message names.
const UNDECRYPTABLE_LISTED: usize = 20;

/// An error boxed by a [`crate::CheckpointStore`] implementation (the daemon's
/// state store wraps its own errors in this).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong in the re-encryption engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A field of a target's configuration is invalid.
    #[error("target field `{field}`: {reason}")]
    InvalidTarget {
        /// The configuration field, e.g. `targets[0].table`.
        field: String,
        /// Why it was refused.
        reason: String,
    },

    /// A throttle value is out of range.
    #[error("reencrypt field `{field}`: {reason}")]
    InvalidThrottle {
        /// The configuration field.
        field: &'static str,
        /// Why it was refused.
        reason: &'static str,
    },

    /// The table, a column or the primary key does not exist or has a type
    /// the engine cannot handle.
    #[error("target `{target}`: {reason}")]
    Schema {
        /// The target's name.
        target: String,
        /// What is wrong with the table.
        reason: String,
    },

    /// SQLite failed.
    #[error("target `{target}`: sqlite {operation} failed: {source}")]
    Sqlite {
        /// The target's name (or the store location for opening).
        target: String,
        /// What the engine was doing.
        operation: &'static str,
        /// The driver's error.
        #[source]
        source: Box<rusqlite::Error>,
    },

    /// PostgreSQL failed.
    #[error("target `{target}`: postgres {operation} failed: {source}")]
    Postgres {
        /// The target's name (or the store location for connecting).
        target: String,
        /// What the engine was doing.
        operation: &'static str,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },

    /// MySQL or MariaDB failed (after the store's retries, for an error that
    /// passes: a deadlock, a lock wait timeout, a lost connection).
    #[error("target `{target}`: mysql {operation} failed: {reason}")]
    Mysql {
        /// The target's name.
        target: String,
        /// What the engine was doing.
        operation: &'static str,
        /// The server's error code (`1213` for a deadlock), when it sent one.
        code: Option<u16>,
        /// The driver's message. Kept as text: the driver's error values can
        /// carry a row, and a row must never reach a log.
        reason: String,
    },

    /// A stored value is not a keyholder envelope (no `V<n>:` prefix).
    #[error(
        "{table}.{column} at primary key {pk} is not a keyholder record; fix or clear that value, the pass stopped before writing its batch"
    )]
    MalformedRecord {
        /// The table.
        table: String,
        /// The column.
        column: String,
        /// The row's primary key.
        pk: String,
    },

    /// Records at the source version did not decrypt (wrong key, altered
    /// value, a value copied from another row under the `row` associated-data
    /// rule, or a body that is not an envelope). The pass moved every other
    /// record and left these untouched; it is not drained while one remains.
    #[error(
        "target `{target}`: {total} record(s) of {table} at {version} do not decrypt and were left untouched: {list}; every other record was moved; restore or clear those values, then run the pass again",
        list = listed(.records, *.total)
    )]
    UndecryptableRecords {
        /// The target's name.
        target: String,
        /// The table.
        table: String,
        /// The version their prefix names.
        version: KeyVersion,
        /// Their column and primary key, in key order (the first
        /// [`UNDECRYPTABLE_REMEMBERED`] of them).
        records: Vec<(SqlIdent, Pk)>,
        /// How many there are.
        total: u64,
    },

    /// Encrypting with the write version was refused (nonce limit).
    #[error(
        "{table}.{column} at primary key {pk}: encrypting with {version} was refused: {source}"
    )]
    Encrypt {
        /// The table.
        table: String,
        /// The column.
        column: String,
        /// The row's primary key.
        pk: String,
        /// The write version.
        version: KeyVersion,
        /// Why.
        #[source]
        source: Box<crypto_core::Error>,
    },

    /// The keyring cannot serve this pass.
    #[error("target `{target}`: {reason}")]
    Keyring {
        /// The target's name.
        target: String,
        /// What is missing.
        reason: String,
    },

    /// Loading or saving a checkpoint failed.
    #[error("target `{target}`: checkpoint {operation} failed: {source}")]
    Checkpoint {
        /// The target's name.
        target: String,
        /// `load`, `save` or `clear`.
        operation: &'static str,
        /// The checkpoint store's error.
        #[source]
        source: BoxError,
    },

    /// An invariant the engine checks after each batch or at the end failed.
    /// Nothing was written for the batch in which it was found.
    #[error("target `{target}`: invariant violated: {detail}")]
    Invariant {
        /// The target's name.
        target: String,
        /// Which invariant, with counts and record ids (never data).
        detail: String,
    },

    /// Records are still at the source version after the final sweeps
    /// (an application keeps writing it).
    #[error(
        "target `{target}`: {remaining} records still at {version} after {sweeps} sweeps; check that every application writes with the new version, then run the pass again"
    )]
    NotDrained {
        /// The target's name.
        target: String,
        /// The version being drained.
        version: KeyVersion,
        /// How many records are still at it.
        remaining: u64,
        /// How many sweeps ran.
        sweeps: u32,
    },

    /// A worker thread or task of the engine died.
    #[error("target `{target}`: engine task failed: {reason}")]
    Task {
        /// The target's name.
        target: String,
        /// The join error.
        reason: String,
    },
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `a pk=7, b pk=9 and 3 more`: ids only, never a value.
fn listed(records: &[(SqlIdent, Pk)], total: u64) -> String {
    let mut text = String::new();
    for (index, (column, pk)) in records.iter().take(UNDECRYPTABLE_LISTED).enumerate() {
        if index > 0 {
            text.push_str(", ");
        }
        let _ = write!(text, "{column} pk={pk}");
    }
    let named = records.len().min(UNDECRYPTABLE_LISTED) as u64;
    if total > named {
        let _ = write!(text, " and {} more", total - named);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undecryptable_records_are_named_by_id_up_to_twenty() {
        let column = SqlIdent::parse("secret", "column").unwrap();
        let records: Vec<_> = (1..=UNDECRYPTABLE_LISTED as i64 + 5)
            .map(|id| (column.clone(), Pk::Int(id)))
            .collect();
        let error = Error::UndecryptableRecords {
            target: "orders".to_owned(),
            table: "orders".to_owned(),
            version: KeyVersion::new(9).unwrap(),
            records,
            total: 1234,
        };
        let ids = (1..=20)
            .map(|id| format!("secret pk={id}"))
            .collect::<Vec<_>>()
            .join(", ");
        assert_eq!(
            error.to_string(),
            format!(
                "target `orders`: 1234 record(s) of orders at v9 do not decrypt and were left untouched: {ids} and 1214 more; every other record was moved; restore or clear those values, then run the pass again"
            )
        );
    }
}
