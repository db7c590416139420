//! The benchmark's tables: `customers (id, ssn, visits)` in SQLite or
//! PostgreSQL, `ssn` a sealed 200-character record, `visits` what the
//! application updates.

use std::path::Path;

use crypto_core::{Key, KeyVersion};
use rusqlite::{Connection, params};

use crate::world::seal_all;

/// Rows sealed and inserted at once.
const CHUNK: i64 = 100_000;

/// Creates the SQLite file with the empty table, in WAL mode.
pub fn create_sqlite(path: &Path) {
    let _ = std::fs::remove_file(path);
    let conn = Connection::open(path).unwrap();
    conn.pragma_update(None, "journal_mode", "wal").unwrap();
    conn.execute_batch(
        "CREATE TABLE customers (id INTEGER PRIMARY KEY, ssn TEXT NOT NULL, visits INTEGER NOT NULL DEFAULT 0)",
    )
    .unwrap();
}

/// Inserts records `from..=to`, record `id` sealed under `keys[pick(id)]`,
/// and checkpoints the WAL so the file can be copied.
pub fn seed_sqlite(
    path: &Path,
    from: i64,
    to: i64,
    keys: &[(KeyVersion, Key)],
    pick: fn(i64) -> usize,
) {
    let mut conn = Connection::open(path).unwrap();
    conn.busy_timeout(std::time::Duration::from_secs(30))
        .unwrap();
    let mut start = from;
    while start <= to {
        let end = (start + CHUNK - 1).min(to);
        let records = seal_all(start..=end, keys, pick);
        let tx = conn.transaction().unwrap();
        {
            let mut insert = tx
                .prepare("INSERT INTO customers (id, ssn) VALUES (?1, ?2)")
                .unwrap();
            for (id, record) in (start..=end).zip(&records) {
                insert.execute(params![id, record]).unwrap();
            }
        }
        tx.commit().unwrap();
        start = end + 1;
    }
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
}

/// A connection to PostgreSQL, driven on the current runtime.
pub async fn pg_connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at the --pg URL does not answer: {e}"));
    tokio::spawn(connection);
    client
}

/// Creates the empty table (dropping one of that name).
pub async fn create_pg(client: &tokio_postgres::Client, table: &str) {
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id BIGINT PRIMARY KEY, ssn TEXT NOT NULL, visits BIGINT NOT NULL DEFAULT 0)"
        ))
        .await
        .unwrap();
}

/// Inserts records `from..=to` as [`seed_sqlite`] does, then `VACUUM
/// ANALYZE`s the table.
pub async fn seed_pg(
    client: &tokio_postgres::Client,
    table: &str,
    from: i64,
    to: i64,
    keys: &[(KeyVersion, Key)],
    pick: fn(i64) -> usize,
) {
    let insert = client
        .prepare(&format!(
            "INSERT INTO {table} (id, ssn) SELECT * FROM unnest($1::bigint[], $2::text[])"
        ))
        .await
        .unwrap();
    let mut start = from;
    while start <= to {
        let end = (start + CHUNK - 1).min(to);
        let records = seal_all(start..=end, keys, pick);
        let ids: Vec<i64> = (start..=end).collect();
        client.execute(&insert, &[&ids, &records]).await.unwrap();
        start = end + 1;
    }
    client
        .batch_execute(&format!("VACUUM ANALYZE {table}"))
        .await
        .unwrap();
}
