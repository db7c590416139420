//! The SQL text of the MySQL store, built once per target from checked
//! [`SqlIdent`]s; every value is a bound parameter.
//!
//! Every comparison with a stored value casts both sides to `BINARY`: a
//! column with a case-insensitive collation (`utf8mb4_general_ci`) must not
//! match `v9:` for `V9:`, nor an old value that differs only in case. The
//! stored side is converted to utf8mb4 first, the character set the bound
//! values are sent in: cast as stored, a `utf16` (or `ucs2`, `utf32`)
//! column's `V9:` is six bytes, never equal to the bound three, so its
//! records were never read and the pass failed after its sweeps.

use mysql_async::Value;

use crate::store::{Pk, RowSwap};
use crate::target::Target;

/// Bound parameters one statement may carry: the protocol's limit is 65,535.
const MAX_PARAMS: usize = 60_000;

/// A value of a version prefix's length, in a stored column, compared with a
/// bound prefix byte for byte.
fn prefix_filter(column: &str) -> String {
    format!(
        "{} = CAST(? AS BINARY)",
        stored_bytes(&format!("SUBSTRING({column}, 1, ?)"))
    )
}

/// The bytes of a stored value (or part of one) in utf8mb4, the character
/// set of the values the store binds (`SET NAMES utf8mb4`).
fn stored_bytes(value: &str) -> String {
    format!("CAST(CONVERT({value} USING utf8mb4) AS BINARY)")
}

#[derive(Default)]
pub(super) struct Statements {
    pk: String,
    table: String,
    list: String,
    columns: Vec<String>,
    /// Rows per lock or update statement, so that one stays under
    /// [`MAX_PARAMS`]; a batch of the default size is one statement.
    pub(super) chunk_rows: usize,
    pub(super) read_first: String,
    pub(super) read_after: String,
    pub(super) inventory: String,
    pub(super) count: String,
    pub(super) bounds: String,
    pub(super) probe_from: String,
    pub(super) probe_before: String,
}

impl Statements {
    pub(super) fn new(target: &Target) -> Self {
        let pk = target.primary_key().to_string();
        let table = target.table().to_string();
        let columns: Vec<String> = target.columns().iter().map(ToString::to_string).collect();
        let list = columns.join(", ");
        let filter = columns
            .iter()
            .map(|column| prefix_filter(column))
            .collect::<Vec<_>>()
            .join(" OR ");
        let prefixes = columns
            .iter()
            .map(|column| format!(", SUBSTRING({column}, 1, 12)"))
            .collect::<String>();
        Self {
            read_first: format!(
                "SELECT {pk}, {list} FROM {table} WHERE ({filter}) ORDER BY {pk} LIMIT ?"
            ),
            read_after: format!(
                "SELECT {pk}, {list} FROM {table} WHERE {pk} > ? AND ({filter}) ORDER BY {pk} LIMIT ?"
            ),
            inventory: format!("SELECT {pk}{prefixes} FROM {table}"),
            count: format!(
                "SELECT {} FROM {table}",
                columns
                    .iter()
                    .map(|column| format!("COUNT({column})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            bounds: format!("SELECT MIN({pk}), MAX({pk}) FROM {table}"),
            probe_from: format!(
                "SELECT {pk}, {list} FROM {table} WHERE {pk} >= ? ORDER BY {pk} LIMIT ?"
            ),
            probe_before: format!(
                "SELECT {pk}, {list} FROM {table} WHERE {pk} < ? ORDER BY {pk} LIMIT ?"
            ),
            chunk_rows: MAX_PARAMS / (1 + 3 * columns.len()),
            pk,
            table,
            list,
            columns,
        }
    }

    /// Locks the rows of `rows` keys that no other transaction holds, and
    /// reads them; never waits for a lock.
    pub(super) fn lock(&self, rows: usize) -> String {
        let (pk, table, list) = (&self.pk, &self.table, &self.list);
        format!(
            "SELECT {pk}, {list} FROM {table} WHERE {pk} IN ({}) FOR UPDATE SKIP LOCKED",
            placeholders(rows)
        )
    }

    /// One UPDATE of the rows in `writes`: each flagged column is set to its
    /// new value only where its stored value is, byte for byte, the old one.
    pub(super) fn swap(
        &self,
        writes: &[(&RowSwap, Vec<bool>)],
        pk_value: impl Fn(&Pk) -> Value,
    ) -> (String, Vec<Value>) {
        let pk = &self.pk;
        let mut params = Vec::new();
        let mut sets = Vec::new();
        for (index, column) in self.columns.iter().enumerate() {
            let mut branches = String::new();
            for (swap, flags) in writes {
                let Some(cell) = swap.cells[index].as_ref().filter(|_| flags[index]) else {
                    continue;
                };
                branches.push_str(&format!(
                    " WHEN {pk} = ? AND {} = CAST(? AS BINARY) THEN ?",
                    stored_bytes(column)
                ));
                params.push(pk_value(&swap.pk));
                params.push(Value::Bytes(cell.old.as_bytes().to_vec()));
                params.push(Value::Bytes(cell.new.as_bytes().to_vec()));
            }
            if !branches.is_empty() {
                sets.push(format!("{column} = CASE{branches} ELSE {column} END"));
            }
        }
        params.extend(writes.iter().map(|(swap, _)| pk_value(&swap.pk)));
        let sql = format!(
            "UPDATE {table} SET {sets} WHERE {pk} IN ({keys})",
            table = self.table,
            sets = sets.join(", "),
            keys = placeholders(writes.len())
        );
        (sql, params)
    }
}

fn placeholders(n: usize) -> String {
    let mut text = "?, ".repeat(n);
    text.truncate(text.len().saturating_sub(2));
    text
}
