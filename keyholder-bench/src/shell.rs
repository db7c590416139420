//! The baselines: the same work done by code that is not keyholder's, the
//! `sqlite3` shell and `psql`, on a copy of the same table, in the same run.
//!
//! Both do what keyholder's pass does minus the crypto: records move from
//! `V9:` to `V10:` (the new value is computed from the old one by SQL), in
//! key order.
//! - batched: batches of the pass's size, each one transaction committing
//!   on its own, each updating only rows still at v9 (the compare of the
//!   compare-and-swap) — set-based within the batch, so at least as fast as
//!   a loop of single-row compare-and-swaps;
//! - ceiling: one `UPDATE` of the whole table in one transaction.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

/// The SQL that moves one record's value: no crypto, the same length.
const MOVE: &str = "'V10:' || substr(ssn, 4)";
/// The compare: the row is still at v9.
const STILL_AT_V9: &str = "substr(ssn, 1, 3) = 'V9:'";

/// Runs `program args` with `script` on its stdin; the wall time in seconds.
fn timed(program: &str, args: &[&str], script: &str) -> f64 {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program} is needed for the baselines: {e}"));
    let started = Instant::now();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let seconds = started.elapsed().as_secs_f64();
    assert!(
        output.status.success() && output.stderr.is_empty(),
        "{program} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    seconds
}

/// The batched baseline in the `sqlite3` shell on `path` (a copy of the
/// seeded file): `rows` rows with ids `1..=rows`, batches of `batch`, with
/// keyholder's journal mode and synchronous setting on the writer.
pub fn sqlite_batched(path: &Path, rows: i64, batch: i64, synchronous: &str) -> f64 {
    let mut script = format!("PRAGMA journal_mode=WAL;\nPRAGMA synchronous={synchronous};\n");
    let mut low = 0;
    while low < rows {
        let high = (low + batch).min(rows);
        script.push_str(&format!(
            "BEGIN IMMEDIATE;\nUPDATE customers SET ssn = {MOVE} WHERE id > {low} AND id <= {high} AND {STILL_AT_V9};\nCOMMIT;\n"
        ));
        low = high;
    }
    timed("sqlite3", &[&path.display().to_string()], &script)
}

/// The ceiling in the `sqlite3` shell: one `UPDATE` of the whole table.
pub fn sqlite_one_statement(path: &Path, synchronous: &str) -> f64 {
    let script = format!(
        "PRAGMA journal_mode=WAL;\nPRAGMA synchronous={synchronous};\nUPDATE customers SET ssn = {MOVE} WHERE {STILL_AT_V9};\n"
    );
    timed("sqlite3", &[&path.display().to_string()], &script)
}

/// Makes `copy` a fresh copy of `table` (primary key, vacuumed, analysed).
pub async fn pg_copy(client: &tokio_postgres::Client, table: &str, copy: &str) {
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {copy}; CREATE TABLE {copy} AS SELECT * FROM {table}; ALTER TABLE {copy} ADD PRIMARY KEY (id)"
        ))
        .await
        .unwrap();
    client
        .batch_execute(&format!("VACUUM ANALYZE {copy}"))
        .await
        .unwrap();
}

fn psql(url: &str, script: &str) -> f64 {
    timed(
        "psql",
        &["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url],
        script,
    )
}

/// The batched baseline in `psql` (autocommit: one transaction per batch).
pub fn psql_batched(url: &str, table: &str, rows: i64, batch: i64) -> f64 {
    let mut script = String::new();
    let mut low = 0;
    while low < rows {
        let high = (low + batch).min(rows);
        script.push_str(&format!(
            "UPDATE {table} SET ssn = {MOVE} WHERE id > {low} AND id <= {high} AND {STILL_AT_V9};\n"
        ));
        low = high;
    }
    psql(url, &script)
}

/// The ceiling in `psql`: one `UPDATE` of the whole table.
pub fn psql_one_statement(url: &str, table: &str) -> f64 {
    psql(
        url,
        &format!("UPDATE {table} SET ssn = {MOVE} WHERE {STILL_AT_V9};\n"),
    )
}
