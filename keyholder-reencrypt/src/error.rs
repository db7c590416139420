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
    /// the engine cannot handle, or the table's schema does not make the key
    /// unique and never NULL (keyset pages would skip rows).
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

    /// Syncing a SQLite target's files to disk failed.
    #[error("target `{target}`: syncing {} to disk failed: {source}", .path.display())]
    Sync {
        /// The target's name.
        target: String,
        /// The file or directory.
        path: std::path::PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// PostgreSQL failed. [`Error::is_transient`] tells whether trying
    /// again on a fresh connection may succeed.
    #[error("target `{target}`: postgres {operation} failed: {source}{}", finding_text(.finding))]
    Postgres {
        /// The target's name (or the store location for connecting).
        target: String,
        /// What the engine was doing.
        operation: &'static str,
        /// The database's own account of it.
        #[source]
        source: Box<DatabaseError>,
        /// What a fresh look at the table's schema found wrong, when the
        /// error was persistent and the schema no longer fits the target
        /// (`column `t.a` has type `bytea`; records are stored as text`).
        finding: Option<String>,
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
        /// Whether it is one the store retries itself (deadlock, lock wait
        /// timeout, lost connection, server restarting): still failing after
        /// those retries, it is retried again from the checkpoint.
        transient: bool,
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

impl Error {
    /// Whether the error may go away by itself: a deadlock, a serialization
    /// failure, a lock or statement timeout, a lost connection, a server
    /// restarting or in recovery (here or in the checkpoint store, found in
    /// its error's [`std::error::Error::source`] chain as a transient
    /// [`DatabaseError`]). The caller retries on a fresh store
    /// ([`crate::open_store`]) with backoff; the pass resumes from its
    /// checkpoint. Every other error needs a fix first.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Postgres { source, .. } => source.transient,
            Self::Mysql { transient, .. } => *transient,
            Self::Sqlite { source, .. } => sqlite_is_transient(source),
            Self::Checkpoint { source, .. } => chain_is_transient(source.as_ref()),
            _ => false,
        }
    }
}

/// A database's own account of a failed call: its SQLSTATE, message,
/// detail, hint, and the table, column and constraint it names, without the
/// driver's wrapper (whose text is only `db error`).
///
/// Built so it can be logged and shown: every envelope-shaped token
/// (`V10:...`) in its text is cut to its prefix, and the detail of data and
/// integrity errors (SQLSTATE classes 22 and 23, whose details quote row
/// values) is left out.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render())]
#[non_exhaustive]
pub struct DatabaseError {
    /// Whether trying again may succeed (see [`Error::is_transient`]).
    pub transient: bool,
    /// The five-character SQLSTATE, when the server answered with one
    /// (`None` for a lost connection or a refused connect).
    pub sqlstate: Option<String>,
    /// The primary message (the server's, or the driver's for I/O).
    pub message: String,
    /// The server's detail.
    pub detail: Option<String>,
    /// The server's hint.
    pub hint: Option<String>,
    /// The table the error is about.
    pub table: Option<String>,
    /// The column the error is about.
    pub column: Option<String>,
    /// The constraint the error is about.
    pub constraint: Option<String>,
}

impl DatabaseError {
    /// An error without a server's answer (a lost or refused connection).
    pub fn connection(message: impl Into<String>, transient: bool) -> Self {
        Self {
            transient,
            sqlstate: None,
            message: redact(&message.into()),
            detail: None,
            hint: None,
            table: None,
            column: None,
            constraint: None,
        }
    }

    /// An error the server answered with SQLSTATE `sqlstate`; detail and
    /// hint are set with [`DatabaseError::with_detail`].
    pub fn server(sqlstate: &str, message: &str) -> Self {
        Self {
            transient: sqlstate_is_transient(sqlstate),
            sqlstate: Some(sqlstate.to_owned()),
            message: redact(message),
            detail: None,
            hint: None,
            table: None,
            column: None,
            constraint: None,
        }
    }

    /// Adds the server's detail and hint (the detail is dropped for data
    /// and integrity errors: it quotes row values).
    pub fn with_detail(mut self, detail: Option<&str>, hint: Option<&str>) -> Self {
        let quotes_values = self
            .sqlstate
            .as_deref()
            .is_some_and(|code| code.starts_with("22") || code.starts_with("23"));
        self.detail = detail.filter(|_| !quotes_values).map(redact);
        self.hint = hint.map(redact);
        self
    }

    /// Adds the table, column and constraint the error names.
    pub fn with_names(
        mut self,
        table: Option<&str>,
        column: Option<&str>,
        constraint: Option<&str>,
    ) -> Self {
        self.table = table.map(str::to_owned);
        self.column = column.map(str::to_owned);
        self.constraint = constraint.map(str::to_owned);
        self
    }

    fn render(&self) -> String {
        let mut text = String::new();
        if let Some(code) = &self.sqlstate {
            let _ = write!(text, "SQLSTATE {code}: ");
        }
        text.push_str(&self.message);
        if let Some(detail) = &self.detail {
            let _ = write!(text, "; detail: {detail}");
        }
        if let Some(hint) = &self.hint {
            let _ = write!(text, "; hint: {hint}");
        }
        if let Some(table) = &self.table {
            let _ = write!(text, "; table `{table}`");
        }
        if let Some(column) = &self.column {
            let _ = write!(text, "; column `{column}`");
        }
        if let Some(constraint) = &self.constraint {
            let _ = write!(text, "; constraint `{constraint}`");
        }
        text
    }
}

/// SQLSTATEs that may succeed when tried again: serialization failure and
/// deadlock (class 40), lock not available (55P03, `lock_timeout`), query
/// canceled (57014, `statement_timeout`), the server shutting down, crashed
/// or starting (57P01..57P03), connection exceptions (class 08) and too
/// many connections (53300).
pub fn sqlstate_is_transient(code: &str) -> bool {
    code.starts_with("40")
        || code.starts_with("08")
        || matches!(
            code,
            "55P03" | "57014" | "57P01" | "57P02" | "57P03" | "53300"
        )
}

/// SQLite's writer lock held past the busy timeout: another writer, which
/// finishes by itself.
fn sqlite_is_transient(error: &rusqlite::Error) -> bool {
    matches!(
        error.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

fn chain_is_transient(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(database) = error.downcast_ref::<DatabaseError>() {
            return database.transient;
        }
        if let Some(database) = error.downcast_ref::<Box<DatabaseError>>() {
            return database.transient;
        }
        next = error.source();
    }
    false
}

/// Cuts every envelope-shaped token (`V<digits>:<body>`) to its prefix, so
/// a server message quoting a stored value shows no ciphertext.
fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('V') {
        out.push_str(&rest[..at]);
        let tail = &rest[at + 1..];
        let digits = tail.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 && tail[digits..].starts_with(':') {
            let body = &tail[digits + 1..];
            let skipped = body
                .find(|c: char| !(c.is_ascii_alphanumeric() || "+/=_-.:".contains(c)))
                .unwrap_or(body.len());
            out.push_str(&rest[at..at + 1 + digits + 1]);
            if skipped > 0 {
                out.push_str("...");
            }
            rest = &body[skipped..];
        } else {
            out.push('V');
            rest = tail;
        }
    }
    out.push_str(rest);
    out
}

fn finding_text(finding: &Option<String>) -> String {
    finding
        .as_ref()
        .map(|finding| format!("; the table now: {finding}"))
        .unwrap_or_default()
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
    fn a_database_error_keeps_the_servers_words_and_no_record() {
        let error = DatabaseError::server("42883", "operator does not exist: bytea = text")
            .with_detail(
                None,
                Some("No operator matches the given name and argument types."),
            )
            .with_names(Some("orders"), None, None);
        assert!(!error.transient);
        assert_eq!(
            error.to_string(),
            "SQLSTATE 42883: operator does not exist: bytea = text; hint: No operator matches the given name and argument types.; table `orders`"
        );
        let quoted = DatabaseError::server(
            "23514",
            "new row for relation \"orders\" violates check constraint \"short\"",
        )
        .with_detail(Some("Failing row contains (7, V10:AAECAwQF, alice)."), None);
        assert_eq!(quoted.detail, None);
        let cast = DatabaseError::server("22P02", "invalid input syntax: \"V9:AAEC/+x=\" here");
        assert_eq!(cast.message, "invalid input syntax: \"V9:...\" here");
        assert!(DatabaseError::server("40P01", "deadlock detected").transient);
        assert!(DatabaseError::server("57P01", "terminating connection").transient);
        assert!(
            DatabaseError::server("55P03", "canceling statement due to lock timeout").transient
        );
        assert!(!DatabaseError::server("42P01", "relation does not exist").transient);
    }

    #[test]
    fn a_transient_database_error_is_found_behind_a_checkpoint_store_error() {
        #[derive(Debug, thiserror::Error)]
        #[error("state store: write checkpoint failed: {0}")]
        struct StoreError(#[source] DatabaseError);
        let checkpoint = |transient| Error::Checkpoint {
            target: "orders".to_owned(),
            operation: "save",
            source: Box::new(StoreError(DatabaseError::connection(
                "connection closed",
                transient,
            ))),
        };
        assert!(checkpoint(true).is_transient());
        assert!(!checkpoint(false).is_transient());
    }

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
