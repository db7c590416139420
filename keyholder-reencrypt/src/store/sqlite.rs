//! The SQLite data store (rusqlite, WAL, `BEGIN IMMEDIATE`).
//!
//! Owns two connections to the target's file, a reader and a writer, each used
//! on tokio's blocking pool so the async engine never blocks on disk. SQL text
//! is built only from checked [`SqlIdent`]s; every value is bound. It must
//! never create the database file, and never write outside a compare-and-swap.
//!
//! A batch cannot be part of a deadlock here: SQLite has one write lock per
//! database file, and `BEGIN IMMEDIATE` takes it before the batch reads or
//! writes anything, so the batch waits (up to [`BUSY_TIMEOUT`]) holding no
//! lock, then holds the only one. The PostgreSQL store needs
//! `FOR UPDATE SKIP LOCKED` for the same guarantee. A busy timeout that
//! runs out is transient ([`Error::is_transient`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crypto_core::KeyVersion;
use futures::FutureExt as _;
use futures::future::BoxFuture;
use rusqlite::types::{ToSqlOutput, Value};
use rusqlite::{Connection, OpenFlags, StatementStatus, TransactionBehavior, params};

mod wal;

use self::wal::Checkpointer;
use super::{
    DataStore, Pk, PkKind, RowSwap, SampleRecord, StoredRow, SwapOutcome, key_not_unique, sample,
    version_prefix,
};
use crate::error::{Error, Result};
use crate::inventory::{self, Inventory};
use crate::target::{SqlIdent, StoreLocation, Target};

/// How long a statement waits for the application's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// The pause between two tries for a lock the application holds.
const BUSY_STEP: Duration = Duration::from_micros(250);

/// A target's table in a SQLite file.
pub struct SqliteStore {
    target: Arc<Target>,
    /// WAL checkpoints off the writer's path; `None` when the file is not
    /// in WAL mode.
    checkpointer: Option<Checkpointer>,
    path: std::path::PathBuf,
    kind: PkKind,
    reader: Arc<Mutex<Connection>>,
    writer: Arc<Mutex<Connection>>,
}

impl rusqlite::ToSql for Pk {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Pk::Int(value) => ToSqlOutput::Owned(Value::Integer(*value)),
            Pk::Text(value) => ToSqlOutput::Borrowed(value.as_str().into()),
        })
    }
}

impl SqliteStore {
    /// Opens the file of `target` (which must exist), switches it to WAL and
    /// checks the table.
    pub async fn open(target: &Target) -> Result<Self> {
        let StoreLocation::Sqlite(path) = target.store() else {
            return Err(Error::Schema {
                target: target.name().to_owned(),
                reason: "not a sqlite store".to_owned(),
            });
        };
        let target = Arc::new(target.clone());
        let path = path.clone();
        let store_path = path.clone();
        let task_target = target.clone();
        let (kind, reader, writer, checkpointer) = tokio::task::spawn_blocking(move || {
            let sql = |operation| {
                let name = task_target.name().to_owned();
                move |source| Error::Sqlite {
                    target: name,
                    operation,
                    source: Box::new(source),
                }
            };
            let writer = connect(&path).map_err(sql("open"))?;
            let mode: String = writer
                .pragma_query_value(None, "journal_mode", |row| row.get(0))
                .map_err(sql("read journal mode"))?;
            if !mode.eq_ignore_ascii_case("wal") {
                // WAL lets the application read while a batch commits. The
                // switch needs a moment without other connections; when the
                // application is busy, go on in its mode rather than fail.
                if let Err(error) = writer.pragma_update(None, "journal_mode", "wal") {
                    tracing::warn!(
                        target = %task_target.name(), %mode, %error,
                        "could not switch the database to WAL; batches will block readers while they commit"
                    );
                }
            }
            let wal = writer
                .pragma_query_value(None, "journal_mode", |row| row.get::<_, String>(0))
                .map_err(sql("read journal mode"))?
                .eq_ignore_ascii_case("wal");
            if wal {
                // In WAL mode NORMAL never corrupts, it only may lose the
                // last commits in a power cut: a batch lost so left its
                // records at the old version, and `make_durable` syncs
                // before the inventory that may call the pass drained. The
                // application's connections keep their own setting.
                writer
                    .pragma_update(None, "synchronous", "NORMAL")
                    .map_err(sql("set synchronous"))?;
                // The checkpointer thread copies the WAL instead (wal.rs).
                writer
                    .pragma_update(None, "wal_autocheckpoint", 0)
                    .map_err(sql("set wal_autocheckpoint"))?;
            }
            let checkpointer = wal
                .then(|| Checkpointer::start(&path, task_target.name()))
                .transpose()?;
            let reader = connect(&path).map_err(sql("open"))?;
            let kind = check_schema(&reader, &task_target)?;
            Ok::<_, Error>((kind, reader, writer, checkpointer))
        })
        .await
        .map_err(|error| task_error(&target, error))??;
        Ok(Self {
            target,
            checkpointer,
            path: store_path,
            kind,
            reader: Arc::new(Mutex::new(reader)),
            writer: Arc::new(Mutex::new(writer)),
        })
    }

    /// Runs `work` on the blocking pool with one of the connections.
    fn with<T: Send + 'static>(
        &self,
        connection: &Arc<Mutex<Connection>>,
        work: impl FnOnce(&mut Connection, &Target) -> Result<T> + Send + 'static,
    ) -> BoxFuture<'static, Result<T>> {
        let connection = connection.clone();
        let target = self.target.clone();
        async move {
            let task_target = target.clone();
            tokio::task::spawn_blocking(move || {
                let mut guard = connection
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner());
                work(&mut guard, &task_target)
            })
            .await
            .map_err(|error| task_error(&target, error))?
        }
        .boxed()
    }
}

fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let connection = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    connection.busy_handler(Some(busy))?;
    Ok(connection)
}

/// The busy handler: `true` to try again. SQLite's own (`busy_timeout`)
/// sleeps in growing steps, up to 100 ms each; under the bench's application
/// (400 single-row writes a second) a batch that found the lock taken a few
/// times slept tens of milliseconds while the application's writers took
/// the lock again and again, and the unthrottled pass fell from ~200k to
/// ~10k rows/s. Short even steps take the lock soon after it is free.
fn busy(tries: i32) -> bool {
    let slept = BUSY_STEP.saturating_mul(u32::try_from(tries).unwrap_or(u32::MAX));
    if slept >= BUSY_TIMEOUT {
        return false;
    }
    std::thread::sleep(BUSY_STEP);
    true
}

fn task_error(target: &Target, error: tokio::task::JoinError) -> Error {
    Error::Task {
        target: target.name().to_owned(),
        reason: error.to_string(),
    }
}

fn sqlite_error(target: &Target, operation: &'static str) -> impl FnOnce(rusqlite::Error) -> Error {
    let name = target.name().to_owned();
    move |source| Error::Sqlite {
        target: name,
        operation,
        source: Box::new(source),
    }
}

/// Finds the primary key's kind and checks that every column exists and that
/// the key is unique (a NULL key is refused by the inventory: `check_key`).
fn check_schema(connection: &Connection, target: &Target) -> Result<PkKind> {
    let schema = |reason: String| Error::Schema {
        target: target.name().to_owned(),
        reason,
    };
    let mut statement = connection
        .prepare("SELECT name, type, pk FROM pragma_table_info(?1)")
        .map_err(sqlite_error(target, "read schema"))?;
    let declared: BTreeMap<String, Column> = statement
        .query_map([target.table().as_str()], |row| {
            let column = Column {
                sql_type: row.get(1)?,
                in_primary_key: row.get::<_, i64>(2)? > 0,
            };
            Ok((row.get(0)?, column))
        })
        .and_then(|rows| rows.collect())
        .map_err(sqlite_error(target, "read schema"))?;
    if declared.is_empty() {
        return Err(schema(format!("table `{}` does not exist", target.table())));
    }
    for column in target.columns() {
        if !declared.contains_key(column.as_str()) {
            return Err(schema(format!(
                "column `{}.{column}` does not exist",
                target.table()
            )));
        }
    }
    let key = declared.get(target.primary_key().as_str()).ok_or_else(|| {
        schema(format!(
            "primary key column `{}.{}` does not exist",
            target.table(),
            target.primary_key()
        ))
    })?;
    let pk_type = key.sql_type.to_ascii_uppercase();
    let kind = if pk_type.contains("INT") {
        PkKind::Int
    } else if pk_type.contains("CHAR") || pk_type.contains("TEXT") || pk_type.contains("CLOB") {
        PkKind::Text
    } else {
        return Err(schema(format!(
            "primary key `{}.{}` has type `{pk_type}`; only integer and text keys are supported",
            target.table(),
            target.primary_key()
        )));
    };
    let is_primary_key = declared
        .iter()
        .all(|(name, column)| column.in_primary_key == (name == target.primary_key().as_str()));
    check_key(connection, target, is_primary_key)?;
    Ok(kind)
}

/// A column as `pragma_table_info` declares it.
struct Column {
    sql_type: String,
    in_primary_key: bool,
}

/// Checks that the key is unique, as keyset pages need: the rowid (an
/// `INTEGER PRIMARY KEY`), or the one column of the primary key or of a
/// unique index without WHERE or expressions. `is_primary_key`: the key is
/// the table's whole primary key.
///
/// A key SQLite lets be NULL is taken: any `PRIMARY KEY` but the rowid's of a
/// table with a rowid may hold NULL (an old SQLite quirk), and refusing every
/// `id TEXT PRIMARY KEY` would fail the unseal of databases that never store
/// a NULL key. A record whose key is NULL is refused by the inventory
/// instead (before the pass writes, and in its final scans), naming the count.
fn check_key(connection: &Connection, target: &Target, is_primary_key: bool) -> Result<()> {
    // Per index of the table: its origin (`pk` for the primary key's) and
    // whether it makes the key alone unique.
    let mut statement = connection
        .prepare(
            r#"SELECT origin, "unique" AND NOT partial
                   AND (SELECT count(*) FROM pragma_index_info(il.name)) = 1
                   AND (SELECT name FROM pragma_index_info(il.name)) IS ?2
               FROM pragma_index_list(?1) AS il"#,
        )
        .map_err(sqlite_error(target, "read schema"))?;
    let indexes: Vec<(String, bool)> = statement
        .query_map(
            [target.table().as_str(), target.primary_key().as_str()],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .and_then(|rows| rows.collect())
        .map_err(sqlite_error(target, "read schema"))?;
    // A one-column primary key without an index of its own is the rowid.
    if is_primary_key && indexes.iter().all(|(origin, _)| origin != "pk") {
        return Ok(());
    }
    if !indexes.iter().any(|&(_, unique)| unique) {
        return Err(key_not_unique(target));
    }
    Ok(())
}

/// Characters of a value the inventory reads: a version prefix (`V<n>:`, at
/// most 12 characters) is within them.
const PREFIX_CHARS: usize = 12;

/// The inventory's group key of a value's first [`PREFIX_CHARS`] characters:
/// up to and including the first `:` when it is the 2nd to 12th character,
/// else `""` (never a version); `None` for NULL, which is no record.
fn group_key(value: rusqlite::types::ValueRef<'_>) -> Option<&str> {
    use rusqlite::types::ValueRef;
    let bytes = match value {
        ValueRef::Null => return None,
        ValueRef::Text(bytes) | ValueRef::Blob(bytes) => bytes,
        ValueRef::Integer(_) | ValueRef::Real(_) => return Some(""),
    };
    // Not UTF-8 (a blob, say) is not a record whatever its prefix.
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Some("\u{fffd}");
    };
    let key = text
        .char_indices()
        .take(PREFIX_CHARS)
        .enumerate()
        .find(|(_, (_, c))| *c == ':')
        .filter(|(position, _)| *position >= 1)
        .map_or("", |(_, (at, _))| &text[..=at]);
    Some(key)
}

fn read_pk(row: &rusqlite::Row<'_>, kind: PkKind) -> rusqlite::Result<Pk> {
    Ok(match kind {
        PkKind::Int => Pk::Int(row.get(0)?),
        PkKind::Text => Pk::Text(row.get(0)?),
    })
}

/// A stored value as text: a TEXT, or a BLOB of UTF-8 (a driver binding
/// bytes into a TEXT column stores a BLOB). Anything else is no record of
/// any version (`None`, never swapped; the inventory names it).
fn read_value(row: &rusqlite::Row<'_>, index: usize) -> rusqlite::Result<Option<String>> {
    use rusqlite::types::ValueRef;
    Ok(match row.get_ref(index)? {
        ValueRef::Text(bytes) | ValueRef::Blob(bytes) => {
            std::str::from_utf8(bytes).ok().map(str::to_owned)
        }
        ValueRef::Null | ValueRef::Integer(_) | ValueRef::Real(_) => None,
    })
}

/// Up to `n` random records at `version` by primary-key probes through the
/// index ([`sample::Probes`]), never a scan of the table; also the SQLite VM
/// steps the probes took, which show that.
fn sample_by_probes(
    connection: &Connection,
    target: &Target,
    kind: PkKind,
    version: KeyVersion,
    n: u32,
) -> rusqlite::Result<(Vec<SampleRecord>, u64)> {
    let (pk, table) = (target.primary_key(), target.table());
    let list = target
        .columns()
        .iter()
        .map(SqlIdent::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    // Two subqueries: SQLite answers a lone min() or max() from the index.
    let bounds = format!("SELECT (SELECT min({pk}) FROM {table}), (SELECT max({pk}) FROM {table})");
    let from = format!("SELECT {pk}, {list} FROM {table} WHERE {pk} >= ?1 ORDER BY {pk} LIMIT ?2");
    let before = format!("SELECT {pk}, {list} FROM {table} WHERE {pk} < ?1 ORDER BY {pk} LIMIT ?2");
    let mut steps = 0u64;
    let mut statement = connection.prepare_cached(&bounds)?;
    statement.reset_status(StatementStatus::VmStep);
    let (low, high) = statement.query_row([], |row| {
        let read = |index| match kind {
            PkKind::Int => row.get::<_, Option<i64>>(index).map(|v| v.map(Pk::Int)),
            PkKind::Text => row.get::<_, Option<String>>(index).map(|v| v.map(Pk::Text)),
        };
        Ok((read(0)?, read(1)?))
    })?;
    steps += statement.get_status(StatementStatus::VmStep) as u64;
    let (Some(low), Some(high)) = (low, high) else {
        return Ok((Vec::new(), steps));
    };
    let prefix = version_prefix(version);
    let mut probes = sample::Probes::new(low, high, &prefix, target.columns(), n as usize);
    let map = |row: &rusqlite::Row<'_>| {
        let pk = read_pk(row, kind)?;
        let values = (1..=target.columns().len())
            .map(|index| read_value(row, index))
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(StoredRow { pk, values })
    };
    let mut read = |sql: &str, start: &Pk, limit: u32| -> rusqlite::Result<Vec<StoredRow>> {
        let mut statement = connection.prepare_cached(sql)?;
        statement.reset_status(StatementStatus::VmStep);
        let rows = statement
            .query_map(params![start, limit], map)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        steps += statement.get_status(StatementStatus::VmStep) as u64;
        Ok(rows)
    };
    while let Some(probe) = probes.next() {
        let mut rows = read(&from, &probe.start, probe.rows)?;
        let missing = probe.rows - rows.len() as u32;
        if missing > 0 {
            rows.extend(read(&before, &probe.start, missing)?);
        }
        probes.add(probe.rows, rows);
    }
    Ok((probes.finish(), steps))
}

/// The inventory of `target` in one scan on `connection`.
fn inventory_on(connection: &Connection, target: &Target, kind: PkKind) -> Result<Inventory> {
    let table = target.table();
    // One scan, tallied here: SQLite's GROUP BY on the prefix sorts
    // every row, and took most of a pass's time on a large table.
    let list = target
        .columns()
        .iter()
        .map(|column| format!(", substr({column}, 1, {PREFIX_CHARS})"))
        .collect::<String>();
    let sql = format!("SELECT {pk}{list} FROM {table}", pk = target.primary_key());
    let mut groups = inventory::RowTally::default();
    // Records whose key is NULL: no keyset page holds them (check_key).
    let mut null_keys = 0u64;
    connection
        .prepare_cached(&sql)
        .and_then(|mut statement| {
            let mut rows = statement.query([])?;
            while let Some(row) = rows.next()? {
                if row.get_ref(0)? == rusqlite::types::ValueRef::Null {
                    for index in 0..target.columns().len() {
                        if group_key(row.get_ref(index + 1)?).is_some_and(|key| !key.is_empty()) {
                            null_keys += 1;
                        }
                    }
                    continue;
                }
                for index in 0..target.columns().len() {
                    let Some(key) = group_key(row.get_ref(index + 1)?) else {
                        continue;
                    };
                    groups.add(index, key, || read_pk(row, kind).map(|pk| pk.to_string()))?;
                }
            }
            Ok(())
        })
        .map_err(sqlite_error(target, "inventory"))?;
    if null_keys > 0 {
        return Err(Error::Schema {
            target: target.name().to_owned(),
            reason: format!(
                "{null_keys} record(s) in rows whose key `{}.{}` is NULL, which the pass, paging by key, cannot reach; give those rows a key and declare the column NOT NULL, or set `primary_key` to a column that is never NULL",
                target.table(),
                target.primary_key()
            ),
        });
    }
    groups.finish(target)
}

/// `count(column)` of every column of `target` on `connection`.
fn count_on(connection: &Connection, target: &Target) -> Result<BTreeMap<SqlIdent, u64>> {
    let list = target
        .columns()
        .iter()
        .map(|column| format!("count({column})"))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!("SELECT {list} FROM {}", target.table());
    let counts = connection
        .query_row(&sql, [], |row| {
            (0..target.columns().len())
                .map(|index| row.get::<_, i64>(index).map(|count| count as u64))
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(sqlite_error(target, "count records"))?;
    Ok(target.columns().iter().cloned().zip(counts).collect())
}

impl DataStore for SqliteStore {
    fn pk_kind(&self) -> PkKind {
        self.kind
    }

    fn read_page<'a>(
        &'a self,
        version: KeyVersion,
        after: Option<&'a Pk>,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<StoredRow>>> {
        let after = after.cloned();
        let kind = self.kind;
        self.with(&self.reader, move |connection, target| {
            let pk = target.primary_key();
            let columns = target.columns();
            let list = columns
                .iter()
                .map(SqlIdent::as_str)
                .collect::<Vec<_>>()
                .join(", ");
            let filter = columns
                .iter()
                // A BLOB never equals a text: a record stored as a BLOB
                // is compared as one.
                .map(|column| {
                    format!(
                        "(substr({column}, 1, ?2) = ?1 OR (typeof({column}) = 'blob' AND substr({column}, 1, ?2) = CAST(?1 AS BLOB)))"
                    )
                })
                .collect::<Vec<_>>()
                .join(" OR ");
            let range = if after.is_some() {
                format!("{pk} > ?4 AND ")
            } else {
                String::new()
            };
            let sql = format!(
                "SELECT {pk}, {list} FROM {table} WHERE {range}({filter}) ORDER BY {pk} LIMIT ?3",
                table = target.table()
            );
            let prefix = version_prefix(version);
            let mut statement = connection
                .prepare_cached(&sql)
                .map_err(sqlite_error(target, "read page"))?;
            let map = |row: &rusqlite::Row<'_>| {
                let pk = read_pk(row, kind)?;
                let values = (1..=columns.len())
                    .map(|index| read_value(row, index))
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                Ok(StoredRow { pk, values })
            };
            let rows = match &after {
                Some(after) => statement
                    .query_map(params![prefix, prefix.len(), limit, after], map)
                    .and_then(|rows| rows.collect()),
                None => statement
                    .query_map(params![prefix, prefix.len(), limit], map)
                    .and_then(|rows| rows.collect()),
            };
            rows.map_err(sqlite_error(target, "read page"))
        })
    }

    fn swap_batch(&self, swaps: Vec<RowSwap>) -> BoxFuture<'_, Result<SwapOutcome>> {
        let checkpointer = self.checkpointer.clone();
        self.with(&self.writer, move |connection, target| {
            let fail = sqlite_error(target, "write batch");
            let transaction = connection
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sqlite_error(target, "begin batch"))?;
            // The write lock is ours from here to the end of the commit.
            let started = Instant::now();
            let mut outcome = SwapOutcome::default();
            let result = (|| {
                for (index, column) in target.columns().iter().enumerate() {
                    let (table, pk) = (target.table(), target.primary_key());
                    // `COLLATE BINARY`: a column the application declared
                    // `COLLATE NOCASE` or `RTRIM` would otherwise match a
                    // value that differs from the one read. A TEXT never
                    // equals a BLOB, so a record read from a BLOB finds no
                    // row here and is compared, and written, as a BLOB by
                    // the second statement: the common case stays one plain
                    // statement a row.
                    let text = format!(
                        "UPDATE {table} SET {column} = ?1 WHERE {pk} = ?2 AND {column} = ?3 COLLATE BINARY"
                    );
                    let blob = format!(
                        "UPDATE {table} SET {column} = CAST(?1 AS BLOB) \
                         WHERE {pk} = ?2 AND typeof({column}) = 'blob' AND {column} = CAST(?3 AS BLOB)"
                    );
                    let mut text = transaction.prepare_cached(&text)?;
                    let mut blob = transaction.prepare_cached(&blob)?;
                    for swap in &swaps {
                        let Some(Some(cell)) = swap.cells.get(index) else {
                            continue;
                        };
                        let mut written = text.execute(params![cell.new, swap.pk, cell.old])?;
                        if written == 0 {
                            written = blob.execute(params![cell.new, swap.pk, cell.old])?;
                        }
                        match written {
                            0 => outcome.conflicts.push((swap.pk.clone(), index)),
                            _ => outcome.applied += 1,
                        }
                    }
                }
                Ok(())
            })();
            // On error the transaction rolls back when dropped: all or nothing.
            result.map_err(fail)?;
            transaction
                .commit()
                .map_err(sqlite_error(target, "commit batch"))?;
            outcome.locked = started.elapsed();
            if let Some(checkpointer) = &checkpointer {
                let bytes = swaps
                    .iter()
                    .flat_map(|swap| swap.cells.iter().flatten())
                    .map(|cell| cell.new.len() as u64)
                    .sum();
                checkpointer.committed(bytes);
            }
            Ok(outcome)
        })
    }

    fn inventory(&self) -> BoxFuture<'_, Result<Inventory>> {
        let kind = self.kind;
        self.with(&self.reader, move |connection, target| {
            inventory_on(connection, target, kind)
        })
    }

    fn counted_inventory(&self) -> BoxFuture<'_, Result<(Inventory, BTreeMap<SqlIdent, u64>)>> {
        let kind = self.kind;
        self.with(&self.reader, move |connection, target| {
            // A read transaction: in WAL mode both statements see the
            // snapshot its first read took.
            let transaction = connection
                .transaction_with_behavior(TransactionBehavior::Deferred)
                .map_err(sqlite_error(target, "inventory"))?;
            let inventory = inventory_on(&transaction, target, kind)?;
            let counts = count_on(&transaction, target)?;
            transaction
                .commit()
                .map_err(sqlite_error(target, "inventory"))?;
            Ok((inventory, counts))
        })
    }

    fn sample(&self, version: KeyVersion, n: u32) -> BoxFuture<'_, Result<Vec<SampleRecord>>> {
        let kind = self.kind;
        self.with(&self.reader, move |connection, target| {
            sample_by_probes(connection, target, kind, version, n)
                .map(|(records, _)| records)
                .map_err(sqlite_error(target, "sample"))
        })
    }

    fn replica_lag(&self) -> BoxFuture<'_, Result<Option<Duration>>> {
        futures::future::ready(Ok(None)).boxed()
    }

    fn make_durable(&self) -> BoxFuture<'_, Result<()>> {
        let path = self.path.clone();
        self.with(&self.writer, move |_, target| {
            // What the batches committed is in the WAL or, once a checkpoint
            // moved it, in the database file, which the checkpoint synced
            // (the checkpointer's connection keeps SQLite's default
            // `synchronous`; the application's run at its own). Syncing the
            // WAL and the directory that holds it makes every committed
            // batch durable.
            //
            // Never the database file itself: SQLite keeps its locks on it
            // as POSIX advisory locks, which belong to the process, and
            // closing any other descriptor of that file drops them all. A
            // process whose locks were dropped looks gone to the others: one
            // closing its last connection then checkpoints and deletes the
            // WAL under this process's connections, whose later commits go
            // to a file no one else reads (SQLite's "How To Corrupt",
            // 2.2). Nothing here opens the database file but SQLite.
            let wal = path.with_file_name(format!(
                "{}-wal",
                path.file_name().unwrap_or_default().to_string_lossy()
            ));
            let directory = path.parent().map(Path::to_owned).unwrap_or_default();
            for file in [wal.as_path(), directory.as_path()] {
                match std::fs::File::open(file).and_then(|file| file.sync_all()) {
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                    Err(error) => {
                        return Err(Error::Sync {
                            target: target.name().to_owned(),
                            path: file.to_owned(),
                            source: error,
                        });
                    }
                    Ok(()) => {}
                }
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use crypto_core::KeyVersion;
    use rusqlite::types::ValueRef;
    use rusqlite::{Connection, StatementStatus};

    use super::{PkKind, group_key, sample_by_probes};
    use crate::target::{AadRule, TargetConfig};

    /// Sampling a large table takes a small, fixed part of the work of one
    /// scan of it (SQLite's own VM step count): probes through the index, not
    /// the `ORDER BY random()` over every row it replaced.
    #[test]
    fn sampling_a_large_table_does_not_scan_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("large.db");
        let connection = Connection::open(&path).unwrap();
        // 400,000 rows, every other one at V9, the rest at V10.
        connection
            .execute_batch(
                "CREATE TABLE t (id INTEGER PRIMARY KEY, token TEXT);
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 400000)
                 INSERT INTO t SELECT i, CASE i % 2 WHEN 0 THEN 'V9:' ELSE 'V10:' END || hex(randomblob(16)) FROM n;",
            )
            .unwrap();
        let target = TargetConfig {
            name: "large".into(),
            store: format!("sqlite://{}", path.display()),
            table: "t".into(),
            primary_key: "id".into(),
            columns: vec!["token".into()],
            aad: AadRule::None,
        }
        .validate("targets[0]")
        .unwrap();
        let mut scan = connection
            .prepare("SELECT count(*) FROM t WHERE substr(token, 1, 3) = 'V9:'")
            .unwrap();
        let at_v9: i64 = scan.query_row([], |row| row.get(0)).unwrap();
        assert_eq!(at_v9, 200_000);
        let scan_steps = scan.get_status(StatementStatus::VmStep) as u64;

        let version = |n| KeyVersion::new(n).unwrap();
        let (records, steps) =
            sample_by_probes(&connection, &target, PkKind::Int, version(9), 64).unwrap();
        assert_eq!(records.len(), 64);
        assert!(records.iter().all(|r| r.ciphertext.starts_with("V9:")));
        let mut keys: Vec<_> = records.iter().map(|r| r.pk.clone()).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), 64, "64 different records");
        assert!(
            steps * 50 < scan_steps,
            "a sample took {steps} VM steps, a scan {scan_steps}"
        );

        // A version with no record costs the probes' bound, not a scan.
        let (records, steps) =
            sample_by_probes(&connection, &target, PkKind::Int, version(11), 64).unwrap();
        assert!(records.is_empty());
        assert!(
            steps * 4 < scan_steps,
            "an absent version took {steps} VM steps, a scan {scan_steps}"
        );
    }

    #[test]
    fn group_keys_are_the_prefix_up_to_an_early_colon() {
        let text = |s: &'static str| group_key(ValueRef::Text(s.as_bytes()));
        assert_eq!(text("V9:AAAA"), Some("V9:"));
        assert_eq!(text("V10:AAAA"), Some("V10:"));
        assert_eq!(
            text("X:AAAA"),
            Some("X:"),
            "tallied, then refused as no version"
        );
        assert_eq!(text("V1234567890:"), Some("V1234567890:"), "colon 12th");
        assert_eq!(text("V12345678901:"), Some(""), "colon 13th");
        assert_eq!(text(":V9:"), Some(""), "colon first");
        assert_eq!(text("no colon"), Some(""));
        assert_eq!(text("é:"), Some("é:"), "characters, not bytes");
        assert_eq!(group_key(ValueRef::Integer(9)), Some(""));
        assert_eq!(group_key(ValueRef::Null), None);
        assert_eq!(
            group_key(ValueRef::Blob(&[0xff, b':'])),
            Some("\u{fffd}"),
            "not UTF-8"
        );
    }
}
