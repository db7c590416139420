//! The MySQL and MariaDB data store (mysql_async over rustls).
//!
//! Owns a small connection pool to the target's server (and one to each
//! replica named for throttling) and the SQL of every operation. A batch is
//! one transaction: `SELECT ... FOR UPDATE SKIP LOCKED` takes the batch's rows
//! that no application transaction holds (so the engine never waits on the
//! application's locks, and never deadlocks with it), then one `UPDATE`
//! compare-and-swaps them. Every comparison of a stored value is binary, so a
//! case-insensitive collation cannot match a value that differs in case.
//! Deadlocks, lock wait timeouts and lost connections are retried with
//! backoff on a fresh connection. SQL text is built only from checked
//! [`SqlIdent`]s; every value is bound. It must never write outside a
//! compare-and-swap, and never put a stored value or the password in an error.

mod connect;
mod lag;
mod sql;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crypto_core::KeyVersion;
use futures::FutureExt as _;
use futures::future::BoxFuture;
use mysql_async::prelude::Queryable as _;
use mysql_async::{Conn, IsolationLevel, Pool, TxOpts, Value};

use super::sample::random_key;
use super::{DataStore, Pk, PkKind, RowSwap, SampleRecord, StoredRow, SwapOutcome, version_prefix};
use crate::error::{Error, Result};
use crate::inventory::{self, Inventory};
use crate::target::{SqlIdent, StoreLocation, Target};

use connect::{mysql_error, options, passes, password, server_code};
use sql::Statements;

/// Attempts of one operation when its errors pass (deadlock, lock wait
/// timeout, lost connection, server restarting).
const ATTEMPTS: u32 = 8;
/// The first wait between attempts; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Rows in a random-sample probe, read in key order from a random key.
const PROBE_ROWS: u64 = 64;
/// Probes per sample.
const PROBES: usize = 16;

/// A target's table in MySQL or MariaDB.
pub struct MysqlStore {
    target: Arc<Target>,
    kind: PkKind,
    pool: Pool,
    replicas: Vec<(String, Pool)>,
    sql: Statements,
}

impl MysqlStore {
    /// Connects to the target's server (TLS as its `ssl-mode` says), checks
    /// the table and builds the statements.
    pub async fn open(target: &Target) -> Result<Self> {
        let StoreLocation::Mysql(location) = target.store() else {
            return Err(Error::Schema {
                target: target.name().to_owned(),
                reason: "not a mysql store".to_owned(),
            });
        };
        let password = password(target, location).await?;
        let pool = Pool::new(options(location, &location.host, location.port, &password));
        let replicas = location
            .replicas
            .iter()
            .map(|(host, port)| {
                (
                    format!("{host}:{port}"),
                    Pool::new(options(location, host, *port, &password)),
                )
            })
            .collect();
        drop(password);
        let mut store = Self {
            target: Arc::new(target.clone()),
            kind: PkKind::Int,
            pool,
            replicas,
            sql: Statements::default(),
        };
        store.kind = store.check_schema().await?;
        store.sql = Statements::new(target);
        Ok(store)
    }

    fn error(&self, operation: &'static str) -> impl FnOnce(mysql_async::Error) -> Error + use<> {
        mysql_error(&self.target, operation)
    }

    /// Runs `work` on a pooled connection; an error that passes is retried
    /// with backoff on a fresh connection, up to [`ATTEMPTS`] times. (The
    /// pool discards a connection that broke.)
    async fn run<T, F>(
        &self,
        pool: &Pool,
        operation: &'static str,
        mut work: impl FnMut(Conn) -> F,
    ) -> Result<T>
    where
        F: Future<Output = Result<T, mysql_async::Error>>,
    {
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 1;
        loop {
            let result = match pool.get_conn().await {
                Ok(conn) => work(conn).await,
                Err(error) => Err(error),
            };
            match result {
                Ok(value) => return Ok(value),
                Err(error) if attempt < ATTEMPTS && passes(&error) => {
                    tracing::warn!(
                        target = %self.target.name(),
                        operation,
                        attempt,
                        code = server_code(&error),
                        backoff_ms = backoff.as_millis() as u64,
                        "mysql error that passes; retrying on a fresh connection"
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    attempt += 1;
                }
                Err(error) => return Err(self.error(operation)(error)),
            }
        }
    }

    /// Finds the primary key's kind; checks that it is the table's whole
    /// primary key and that the columns exist as text.
    async fn check_schema(&self) -> Result<PkKind> {
        let target = &self.target;
        let schema = |reason: String| Error::Schema {
            target: target.name().to_owned(),
            reason,
        };
        let table = target.table().as_str();
        let (declared, primary): (BTreeMap<String, String>, Vec<String>) = self
            .run(&self.pool, "read schema", |mut conn: Conn| async move {
                let declared = conn
                    .exec(
                        "SELECT COLUMN_NAME, DATA_TYPE FROM information_schema.COLUMNS \
                         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?",
                        (table,),
                    )
                    .await?;
                let primary = conn
                    .exec(
                        "SELECT COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE \
                         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? \
                         AND CONSTRAINT_NAME = 'PRIMARY' ORDER BY ORDINAL_POSITION",
                        (table,),
                    )
                    .await?;
                Ok((declared.into_iter().collect(), primary))
            })
            .await?;
        if declared.is_empty() {
            return Err(schema(format!("table `{table}` does not exist")));
        }
        let is_text = |sql_type: &str| {
            matches!(
                sql_type,
                "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext"
            )
        };
        for column in target.columns() {
            match declared.get(column.as_str()) {
                None => {
                    return Err(schema(format!("column `{table}.{column}` does not exist")));
                }
                Some(sql_type) if !is_text(sql_type) => {
                    return Err(schema(format!(
                        "column `{table}.{column}` has type `{sql_type}`; records are stored as text"
                    )));
                }
                Some(_) => {}
            }
        }
        let pk = target.primary_key().as_str();
        let kind = match declared.get(pk).map(String::as_str) {
            None => {
                return Err(schema(format!(
                    "primary key column `{table}.{pk}` does not exist"
                )));
            }
            Some("tinyint" | "smallint" | "mediumint" | "int" | "bigint") => PkKind::Int,
            Some(sql_type) if is_text(sql_type) => PkKind::Text,
            Some(sql_type) => {
                return Err(schema(format!(
                    "primary key `{table}.{pk}` has type `{sql_type}`; only integer and text keys are supported"
                )));
            }
        };
        // Keyset pages and the batch's row locks rely on the key being the
        // table's (clustered) primary key.
        if primary != [pk] {
            return Err(schema(format!(
                "`{table}.{pk}` is not the table's primary key (it is `({})`); name the one-column primary key",
                primary.join(", ")
            )));
        }
        Ok(kind)
    }

    fn pk_value(&self, pk: &Pk) -> Value {
        match pk {
            Pk::Int(value) => Value::Int(*value),
            Pk::Text(value) => Value::Bytes(value.as_bytes().to_vec()),
        }
    }

    /// A row's key and values from a result row laid out as `pk, columns...`.
    fn stored_row(&self, row: mysql_async::Row) -> Result<StoredRow> {
        let mut values = row.unwrap().into_iter();
        let pk = read_pk(&self.target, self.kind, values.next())?;
        let values = values
            .zip(self.target.columns())
            .map(|(value, column)| read_text(&self.target, column, &pk, value))
            .collect::<Result<_>>()?;
        Ok(StoredRow { pk, values })
    }

    /// Random rows by index probes: from random keys, [`PROBE_ROWS`] rows each
    /// in key order (wrapping to the table's start), never a scan of the table.
    async fn probe(&self) -> Result<Vec<StoredRow>> {
        let sql = &self.sql;
        let bounds: Option<(Value, Value)> = self
            .run(&self.pool, "sample", |mut conn: Conn| async move {
                conn.query_first(&sql.bounds).await
            })
            .await?;
        let Some((low, high)) = bounds else {
            return Ok(Vec::new());
        };
        if low == Value::NULL {
            return Ok(Vec::new());
        }
        let low = read_pk(&self.target, self.kind, Some(low))?;
        let high = read_pk(&self.target, self.kind, Some(high))?;
        let mut seen = BTreeMap::new();
        for _ in 0..PROBES {
            let start = &self.pk_value(&random_key(&low, &high));
            let rows: Vec<mysql_async::Row> = self
                .run(&self.pool, "sample", |mut conn: Conn| async move {
                    let mut rows: Vec<mysql_async::Row> = conn
                        .exec(&sql.probe_from, (start.clone(), PROBE_ROWS))
                        .await?;
                    let missing = PROBE_ROWS - rows.len() as u64;
                    if missing > 0 {
                        let wrapped: Vec<mysql_async::Row> = conn
                            .exec(&sql.probe_before, (start.clone(), missing))
                            .await?;
                        rows.extend(wrapped);
                    }
                    Ok(rows)
                })
                .await?;
            for row in rows {
                let row = self.stored_row(row)?;
                seen.insert(row.pk.clone(), row);
            }
            if (seen.len() as u64) < PROBE_ROWS {
                // The probe wrapped around a table this small: it read it all.
                break;
            }
        }
        Ok(seen.into_values().collect())
    }
}

fn read_pk(target: &Target, kind: PkKind, value: Option<Value>) -> Result<Pk> {
    let bad = |what: &str| Error::Schema {
        target: target.name().to_owned(),
        reason: format!(
            "a primary key of `{}.{}` is {what}",
            target.table(),
            target.primary_key()
        ),
    };
    match (kind, value) {
        (PkKind::Int, Some(Value::Int(value))) => Ok(Pk::Int(value)),
        (PkKind::Int, Some(Value::UInt(value))) => i64::try_from(value)
            .map(Pk::Int)
            .map_err(|_| bad("larger than a signed 64-bit integer")),
        (PkKind::Int, Some(Value::Bytes(text))) => std::str::from_utf8(&text)
            .ok()
            .and_then(|text| text.parse().ok())
            .map(Pk::Int)
            .ok_or_else(|| bad("not an integer")),
        (PkKind::Text, Some(Value::Bytes(text))) => String::from_utf8(text)
            .map(Pk::Text)
            .map_err(|_| bad("not UTF-8")),
        _ => Err(bad("of an unexpected type")),
    }
}

fn read_text(target: &Target, column: &SqlIdent, pk: &Pk, value: Value) -> Result<Option<String>> {
    match value {
        Value::NULL => Some(None),
        Value::Bytes(bytes) => String::from_utf8(bytes).ok().map(Some),
        _ => None,
    }
    .ok_or_else(|| Error::MalformedRecord {
        table: target.table().to_string(),
        column: column.to_string(),
        pk: pk.to_string(),
    })
}

/// The length and text of `version`'s prefix, as bound values.
fn prefix_params(version: KeyVersion) -> (Value, Value) {
    let prefix = version_prefix(version);
    (
        Value::Int(prefix.len() as i64),
        Value::Bytes(prefix.into_bytes()),
    )
}

impl MysqlStore {
    /// The inventory and, with `count`, `count(column)` of every column, in
    /// one consistent snapshot (a read-only REPEATABLE READ transaction
    /// started WITH CONSISTENT SNAPSHOT).
    async fn scan(&self, count: bool) -> Result<(Inventory, Option<BTreeMap<SqlIdent, u64>>)> {
        let sql = &self.sql;
        let columns = self.target.columns().len();
        let (groups, counted) = self
            .run(&self.pool, "inventory", |mut conn: Conn| async move {
                let mut options = TxOpts::default();
                options
                    .with_isolation_level(IsolationLevel::RepeatableRead)
                    .with_consistent_snapshot(true)
                    .with_readonly(true);
                let mut transaction = conn.start_transaction(options).await?;
                let mut groups = inventory::RowTally::default();
                let mut stream = transaction.exec_iter(&sql.inventory, ()).await?;
                stream
                    .for_each(|row| {
                        let mut values = row.unwrap().into_iter();
                        let pk = values.next();
                        for (index, value) in values.enumerate().take(columns) {
                            let key = match &value {
                                Value::NULL => continue,
                                Value::Bytes(bytes) => match std::str::from_utf8(bytes) {
                                    Ok(text) => inventory::group_key(text),
                                    Err(_) => "\u{fffd}",
                                },
                                _ => "",
                            };
                            let Ok(()) = groups.add(index, key, || {
                                Ok::<_, std::convert::Infallible>(
                                    read_pk(&self.target, self.kind, pk.clone())
                                        .map_or_else(|_| "?".to_owned(), |pk| pk.to_string()),
                                )
                            });
                        }
                    })
                    .await?;
                drop(stream);
                let counted: Option<mysql_async::Row> = if count {
                    transaction.query_first(&sql.count).await?
                } else {
                    None
                };
                transaction.commit().await?;
                Ok((groups, counted))
            })
            .await?;
        let inventory = groups.finish(&self.target)?;
        let counts = count.then(|| {
            let values = counted.map(mysql_async::Row::unwrap).unwrap_or_default();
            self.target
                .columns()
                .iter()
                .zip(values)
                .map(|(column, value)| {
                    let count = match value {
                        Value::Int(count) => count as u64,
                        Value::UInt(count) => count,
                        Value::Bytes(text) => String::from_utf8_lossy(&text).parse().unwrap_or(0),
                        _ => 0,
                    };
                    (column.clone(), count)
                })
                .collect()
        });
        Ok((inventory, counts))
    }
}

impl DataStore for MysqlStore {
    fn pk_kind(&self) -> PkKind {
        self.kind
    }

    fn read_page<'a>(
        &'a self,
        version: KeyVersion,
        after: Option<&'a Pk>,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<StoredRow>>> {
        async move {
            let (length, prefix) = prefix_params(version);
            let mut params = Vec::new();
            let statement = match after {
                Some(after) => {
                    params.push(self.pk_value(after));
                    &self.sql.read_after
                }
                None => &self.sql.read_first,
            };
            for _ in self.target.columns() {
                params.extend([length.clone(), prefix.clone()]);
            }
            params.push(Value::UInt(u64::from(limit)));
            let params = &params;
            let rows: Vec<mysql_async::Row> = self
                .run(&self.pool, "read page", |mut conn: Conn| async move {
                    conn.exec(statement, params.clone()).await
                })
                .await?;
            rows.into_iter().map(|row| self.stored_row(row)).collect()
        }
        .boxed()
    }

    fn swap_batch(&self, swaps: Vec<RowSwap>) -> BoxFuture<'_, Result<SwapOutcome>> {
        async move {
            let columns = self.target.columns().len();
            let keys: Vec<Value> = swaps.iter().map(|swap| self.pk_value(&swap.pk)).collect();
            let sql = &self.sql;
            let (keys, swaps) = (&keys, &swaps);
            let outcome = self
                .run(&self.pool, "write batch", |mut conn: Conn| async move {
                    let mut options = TxOpts::default();
                    options.with_isolation_level(IsolationLevel::ReadCommitted);
                    let mut transaction = conn.start_transaction(options).await?;
                    let started = Instant::now();
                    // The rows no application transaction holds, locked for
                    // this batch; the others are conflicts, read again by the
                    // next sweep.
                    let mut locked: HashMap<Pk, Vec<Option<String>>> = HashMap::new();
                    for chunk in keys.chunks(sql.chunk_rows) {
                        let rows: Vec<mysql_async::Row> = transaction
                            .exec(sql.lock(chunk.len()), chunk.to_vec())
                            .await?;
                        for row in rows {
                            let Ok(row) = self.stored_row(row) else {
                                continue;
                            };
                            locked.insert(row.pk, row.values);
                        }
                    }
                    // Held rows cannot change before the commit: the exact
                    // (byte) comparison here is what the UPDATE finds.
                    let mut outcome = SwapOutcome::default();
                    let mut writes: Vec<(&RowSwap, Vec<bool>)> = Vec::new();
                    for swap in swaps {
                        let stored = locked.get(&swap.pk);
                        let mut flags = vec![false; columns];
                        for (index, cell) in swap.cells.iter().enumerate() {
                            let Some(cell) = cell else { continue };
                            let current = stored.and_then(|values| values[index].as_deref());
                            if current == Some(cell.old.as_str()) {
                                flags[index] = true;
                                outcome.applied += 1;
                            } else {
                                outcome.conflicts.push((swap.pk.clone(), index));
                            }
                        }
                        if flags.contains(&true) {
                            writes.push((swap, flags));
                        }
                    }
                    let mut changed = 0;
                    for chunk in writes.chunks(sql.chunk_rows) {
                        let (statement, params) = sql.swap(chunk, |pk| self.pk_value(pk));
                        transaction.exec_drop(statement, params).await?;
                        changed += transaction.affected_rows();
                    }
                    if changed != writes.len() as u64 {
                        // Dropped uncommitted: the transaction rolls back.
                        return Ok(Err(writes.len() as u64 - changed));
                    }
                    transaction.commit().await?;
                    outcome.locked = started.elapsed();
                    Ok(Ok(outcome))
                })
                .await?;
            outcome.map_err(|missing| Error::Invariant {
                target: self.target.name().to_owned(),
                detail: format!(
                    "{missing} row(s) of a batch held by its own locks did not change; the batch was rolled back"
                ),
            })
        }
        .boxed()
    }

    fn inventory(&self) -> BoxFuture<'_, Result<Inventory>> {
        async move { Ok(self.scan(false).await?.0) }.boxed()
    }

    fn counted_inventory(&self) -> BoxFuture<'_, Result<(Inventory, BTreeMap<SqlIdent, u64>)>> {
        async move {
            let (inventory, counts) = self.scan(true).await?;
            Ok((inventory, counts.unwrap_or_default()))
        }
        .boxed()
    }

    fn sample(&self, version: KeyVersion, n: u32) -> BoxFuture<'_, Result<Vec<SampleRecord>>> {
        async move {
            let prefix = version_prefix(version);
            let mut records: Vec<SampleRecord> = self
                .probe()
                .await?
                .into_iter()
                .flat_map(|row| {
                    let pk = row.pk;
                    let prefix = &prefix;
                    row.values
                        .into_iter()
                        .zip(self.target.columns())
                        .filter_map(move |(value, column)| {
                            value
                                .filter(|value| value.starts_with(prefix.as_str()))
                                .map(|ciphertext| SampleRecord {
                                    pk: pk.clone(),
                                    column: column.clone(),
                                    ciphertext,
                                })
                        })
                        .collect::<Vec<_>>()
                })
                .collect();
            // Partial Fisher-Yates: the first n are a uniform choice.
            let n = (n as usize).min(records.len());
            for at in 0..n {
                let pick = rand::random_range(at..records.len());
                records.swap(at, pick);
            }
            records.truncate(n);
            Ok(records)
        }
        .boxed()
    }

    fn make_durable(&self) -> BoxFuture<'_, Result<()>> {
        // Every batch commits under the server's own durability settings.
        futures::future::ready(Ok(())).boxed()
    }

    fn replica_lag(&self) -> BoxFuture<'_, Result<Option<Duration>>> {
        async move {
            if self.replicas.is_empty() {
                let state = self.replica_state(&self.pool, None).await?;
                return Ok(Some(state.lag()));
            }
            let mut largest = Duration::ZERO;
            for (name, pool) in &self.replicas {
                let state = self.replica_state(pool, Some(name)).await?;
                if state == lag::ReplicaState::NotAReplica {
                    return Err(Error::Schema {
                        target: self.target.name().to_owned(),
                        reason: format!(
                            "replica {name} replicates from no source (its replica status is empty); name the target's replicas in `replica=`"
                        ),
                    });
                }
                largest = largest.max(state.lag());
            }
            Ok(Some(largest))
        }
        .boxed()
    }
}

impl MysqlStore {
    /// `SHOW REPLICA STATUS` on one server, falling back to `SHOW SLAVE
    /// STATUS` where the first is a syntax error (MySQL before 8.0.22,
    /// MariaDB before 10.5).
    async fn replica_state(&self, pool: &Pool, name: Option<&str>) -> Result<lag::ReplicaState> {
        let rows = self
            .run(pool, "read replica lag", |mut conn: Conn| async move {
                let rows: Vec<mysql_async::Row> = match conn.query("SHOW REPLICA STATUS").await {
                    Err(mysql_async::Error::Server(error)) if error.code == 1064 => {
                        conn.query("SHOW SLAVE STATUS").await?
                    }
                    other => other?,
                };
                Ok(rows)
            })
            .await?;
        let rows: Vec<BTreeMap<String, Option<String>>> = rows
            .into_iter()
            .map(|row| {
                let names: Vec<String> = row
                    .columns_ref()
                    .iter()
                    .map(|column| column.name_str().into_owned())
                    .collect();
                names
                    .into_iter()
                    .zip(row.unwrap())
                    .map(|(name, value)| {
                        let text = match value {
                            Value::NULL => None,
                            Value::Bytes(bytes) => {
                                Some(String::from_utf8_lossy(&bytes).into_owned())
                            }
                            Value::Int(n) => Some(n.to_string()),
                            Value::UInt(n) => Some(n.to_string()),
                            _ => Some(String::new()),
                        };
                        (name, text)
                    })
                    .collect()
            })
            .collect();
        lag::parse_status(&rows).map_err(|reason| Error::Schema {
            target: self.target.name().to_owned(),
            reason: match name {
                Some(name) => format!("replica {name}: {reason}"),
                None => reason,
            },
        })
    }
}
