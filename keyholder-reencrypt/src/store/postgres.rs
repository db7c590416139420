//! The PostgreSQL data store (tokio-postgres, prepared statements).
//!
//! Owns three connections, a reader and two writers, and the statements
//! prepared on them when the store opens. A batch of compare-and-swaps is one
//! statement (`WITH ... FOR UPDATE SKIP LOCKED ... UPDATE ... FROM
//! unnest(...)`), so one round trip and one implicit transaction of its own;
//! a large batch is split in two halves of disjoint keys written at once on
//! the two writers, so the server updates on two cores (a profile showed the
//! server's update, not the engine, bounding a pass); throttled, a page is
//! read and written in statements of [`GENTLE_ROWS`] rows on one connection
//! instead, so the application's queries never wait long behind one of
//! ours ([`DataStore::set_gentle`]). SQL text is built only
//! from checked [`SqlIdent`]s; every value is bound. It must never write
//! outside a compare-and-swap, and never wait on a row lock an application
//! holds: a batch locks the rows it can without waiting, swaps only those,
//! and reports the rows it skipped as conflicts (the pass revisits them), so
//! it can never be part of a deadlock. `lock_timeout` and
//! `statement_timeout` on both sessions are the backstop for the locks it
//! does wait on (a table lock taken by DDL).
//!
//! Errors carry the server's own words ([`DatabaseError`]). A connection
//! that failed is not reopened here: the caller opens a fresh store after a
//! transient error ([`Error::is_transient`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crypto_core::KeyVersion;
use futures::FutureExt as _;
use futures::future::BoxFuture;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

use super::{
    DataStore, Pk, PkKind, RowSwap, SampleRecord, StoredRow, SwapOutcome, key_may_be_null,
    key_not_unique, sample, version_prefix,
};
use crate::error::{DatabaseError, Error, Result};
use crate::inventory::{self, Inventory};
use crate::pg_connect::PgConnect;
use crate::target::{SqlIdent, StoreLocation, Target};

/// How long a statement of the store waits for a lock (the batch takes row
/// locks without waiting; this bounds the wait for a table lock held by DDL).
const LOCK_TIMEOUT: &str = "5s";
/// Batches of at least this many rows are split over the two writers.
const SPLIT_ROWS: usize = 256;
/// Rows per statement of a throttled batch ([`DataStore::set_gentle`]).
const GENTLE_ROWS: usize = 100;
/// The longest batch (one statement).
const WRITE_STATEMENT_TIMEOUT: &str = "60s";
/// The longest read: the inventory is a full scan of the table.
const READ_STATEMENT_TIMEOUT: &str = "30min";

/// A target's table in PostgreSQL.
pub struct PostgresStore {
    target: Arc<Target>,
    kind: PkKind,
    reader: Client,
    writer: Client,
    /// The second writer: the other half of a large batch.
    writer2: Client,
    /// Throttled: a batch keeps to one writer, in short statements
    /// ([`DataStore::set_gentle`]).
    gentle: AtomicBool,
    read_first: Statement,
    read_after: Statement,
    /// `read_first` and `read_after` up to a key, included: a worker's
    /// range ([`DataStore::read_range`]; integer keys only).
    read_first_upto: Statement,
    read_after_upto: Statement,
    swap: Statement,
    swap2: Statement,
    inventory: Statement,
    count: Statement,
    bounds: Statement,
    probe_from: Statement,
    probe_before: Statement,
    lag: Statement,
}

impl PostgresStore {
    /// Connects to the target's database (no TLS: see the crate docs), checks
    /// the table and prepares the statements.
    pub async fn open(target: &Target) -> Result<Self> {
        let StoreLocation::Postgres(at) = target.store() else {
            return Err(Error::Schema {
                target: target.name().to_owned(),
                reason: "not a postgres store".to_owned(),
            });
        };
        let pg = |operation| pg_error(target, operation);
        let reader = connect(target, at, READ_STATEMENT_TIMEOUT).await?;
        let writer = connect(target, at, WRITE_STATEMENT_TIMEOUT).await?;
        let writer2 = connect(target, at, WRITE_STATEMENT_TIMEOUT).await?;
        // A batch need not wait for the WAL flush: one lost in a crash left
        // its records at the old version, and `make_durable` flushes before
        // the inventory that may call the pass drained.
        writer
            .batch_execute("SET synchronous_commit = off")
            .await
            .map_err(pg("connect"))?;
        writer2
            .batch_execute("SET synchronous_commit = off")
            .await
            .map_err(pg("connect"))?;
        let kind = check_schema(&reader, target).await?;

        let table = target.table();
        let pk = target.primary_key();
        let columns = target.columns();
        let (pk_type, pk_cast) = match kind {
            PkKind::Int => ("bigint", "::bigint"),
            PkKind::Text => ("text", "::text"),
        };
        let list = columns
            .iter()
            .map(|column| format!("{column}::text"))
            .collect::<Vec<_>>()
            .join(", ");
        let filter = columns
            .iter()
            .map(|column| format!("substr({column} COLLATE \"C\", 1, $2::int) = $1::text"))
            .collect::<Vec<_>>()
            .join(" OR ");
        let read_first = format!(
            "SELECT {pk}{pk_cast}, {list} FROM {table} WHERE ({filter}) ORDER BY {pk} LIMIT $3::bigint"
        );
        let read_after = format!(
            "SELECT {pk}{pk_cast}, {list} FROM {table} WHERE {pk} > $4::{pk_type} AND ({filter}) ORDER BY {pk} LIMIT $3::bigint"
        );
        let read_first_upto = format!(
            "SELECT {pk}{pk_cast}, {list} FROM {table} WHERE {pk} <= $4::{pk_type} AND ({filter}) ORDER BY {pk} LIMIT $3::bigint"
        );
        let read_after_upto = format!(
            "SELECT {pk}{pk_cast}, {list} FROM {table} WHERE {pk} > $4::{pk_type} AND {pk} <= $5::{pk_type} AND ({filter}) ORDER BY {pk} LIMIT $3::bigint"
        );

        let mut sets = Vec::new();
        let mut arrays = vec![format!("$1::{pk_type}[]")];
        let mut names = vec!["pk".to_owned()];
        let mut matches = Vec::new();
        let mut returned = Vec::new();
        // Every comparison of a stored value is byte for byte (`COLLATE
        // "C"`): under a nondeterministic collation the column's own `=`
        // would match a value the application changed since it was read.
        for (index, column) in columns.iter().enumerate() {
            sets.push(format!(
                "{column} = CASE WHEN kh_row.{column} = kh_new.o{index} COLLATE \"C\" THEN kh_new.n{index} ELSE kh_row.{column} END"
            ));
            arrays.push(format!("${}::text[]", 2 + 2 * index));
            arrays.push(format!("${}::text[]", 3 + 2 * index));
            names.push(format!("o{index}"));
            names.push(format!("n{index}"));
            matches.push(format!("kh_row.{column} = kh_new.o{index} COLLATE \"C\""));
            returned.push(format!("kh_row.{column} = kh_new.n{index} COLLATE \"C\""));
        }
        // The rows are locked first, without waiting: a row an application
        // holds is skipped (a conflict, revisited by a later sweep), so the
        // batch never waits on the application and no lock cycle can form.
        // MATERIALIZED keeps the locking scan one step of its own. The
        // locked keys are one array (an InitPlan), not a join: joined, the
        // planner (estimating one row) rescanned the locked set for every
        // row, 1000 x 1000 comparisons and ~190 ms of a 1000-row batch; as an
        // array the batch is a hash join of ~12 ms.
        let swap = format!(
            "WITH kh_locked AS MATERIALIZED (SELECT {pk} AS pk FROM {table} WHERE {pk} = ANY($1::{pk_type}[]) FOR UPDATE SKIP LOCKED) \
             UPDATE {table} AS kh_row SET {sets} FROM unnest({arrays}) AS kh_new({names}) \
             WHERE kh_row.{pk} = kh_new.pk AND kh_row.{pk} = ANY (ARRAY(SELECT pk FROM kh_locked)) AND ({matches}) RETURNING kh_new.pk, {returned}",
            sets = sets.join(", "),
            arrays = arrays.join(", "),
            names = names.join(", "),
            matches = matches.join(" OR "),
            returned = returned.join(", "),
        );
        let inventory = columns
            .iter()
            .enumerate()
            .map(|(index, column)| {
                format!(
                    "SELECT {index}::int8, {prefix}, count(*)::int8 FROM {table} WHERE {column} IS NOT NULL GROUP BY 2",
                    prefix = prefix_expr(column)
                )
            })
            .collect::<Vec<_>>()
            .join(" UNION ALL ");
        let count = format!(
            "SELECT {} FROM {table}",
            columns
                .iter()
                .map(|column| format!("count({column})::int8"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        // Sampling probes the primary key's index from random keys
        // (store::sample): a seek and a short run of rows, never a scan.
        let bounds = format!("SELECT min({pk}){pk_cast}, max({pk}){pk_cast} FROM {table}");
        let probe_from = format!(
            "SELECT {pk}{pk_cast}, {list} FROM {table} WHERE {pk} >= $1::{pk_type} ORDER BY {pk} LIMIT $2::bigint"
        );
        let probe_before = format!(
            "SELECT {pk}{pk_cast}, {list} FROM {table} WHERE {pk} < $1::{pk_type} ORDER BY {pk} LIMIT $2::bigint"
        );
        let lag = "SELECT COALESCE(MAX(EXTRACT(EPOCH FROM replay_lag)), 0)::float8 FROM pg_stat_replication";

        let prepare = pg("prepare");
        Ok(Self {
            read_first: reader.prepare(&read_first).await.map_err(pg("prepare"))?,
            read_after: reader.prepare(&read_after).await.map_err(pg("prepare"))?,
            read_first_upto: reader
                .prepare(&read_first_upto)
                .await
                .map_err(pg("prepare"))?,
            read_after_upto: reader
                .prepare(&read_after_upto)
                .await
                .map_err(pg("prepare"))?,
            inventory: reader.prepare(&inventory).await.map_err(pg("prepare"))?,
            count: reader.prepare(&count).await.map_err(pg("prepare"))?,
            bounds: reader.prepare(&bounds).await.map_err(pg("prepare"))?,
            probe_from: reader.prepare(&probe_from).await.map_err(pg("prepare"))?,
            probe_before: reader.prepare(&probe_before).await.map_err(pg("prepare"))?,
            lag: reader.prepare(lag).await.map_err(pg("prepare"))?,
            swap: writer.prepare(&swap).await.map_err(pg("prepare"))?,
            swap2: writer2.prepare(&swap).await.map_err(prepare)?,
            target: Arc::new(target.clone()),
            kind,
            reader,
            writer,
            writer2,
            gentle: AtomicBool::new(false),
        })
    }

    /// Awaits one call of the driver, turning its error into the engine's.
    async fn checked<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T> {
        match call.await {
            Ok(value) => Ok(value),
            Err(error) => Err(self.error(operation, error).await),
        }
    }

    /// The error of a failed call; a persistent server error is followed
    /// by a fresh look at the table, so a column whose type changed under
    /// the pass is named.
    async fn error(&self, operation: &'static str, error: tokio_postgres::Error) -> Error {
        let mut error = pg_error(&self.target, operation)(error);
        if let Error::Postgres {
            source, finding, ..
        } = &mut error
            && !source.transient
            && source.sqlstate.is_some()
            && !self.reader.is_closed()
        {
            match check_schema(&self.reader, &self.target).await {
                Err(Error::Schema { reason, .. }) => *finding = Some(reason),
                Ok(kind) if kind != self.kind => {
                    *finding = Some(format!(
                        "the primary key `{}.{}` changed its type",
                        self.target.table(),
                        self.target.primary_key()
                    ))
                }
                _ => {}
            }
        }
        error
    }
}

impl PostgresStore {
    /// One statement of compare-and-swaps on `writer`.
    async fn swap_part(
        &self,
        writer: &Client,
        swap: &Statement,
        swaps: &[RowSwap],
    ) -> Result<SwapOutcome> {
        {
            let columns = self.target.columns().len();
            let mut int_keys = Vec::new();
            let mut text_keys = Vec::new();
            let mut cells: Vec<Vec<Option<&str>>> =
                vec![Vec::with_capacity(swaps.len()); 2 * columns];
            for row in swaps {
                match &row.pk {
                    Pk::Int(value) => int_keys.push(*value),
                    Pk::Text(value) => text_keys.push(value.as_str()),
                }
                for index in 0..columns {
                    let cell = row.cells.get(index).and_then(Option::as_ref);
                    cells[2 * index].push(cell.map(|cell| cell.old.as_str()));
                    cells[2 * index + 1].push(cell.map(|cell| cell.new.as_str()));
                }
            }
            let mut params: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(1 + 2 * columns);
            match self.kind {
                PkKind::Int => params.push(&int_keys),
                PkKind::Text => params.push(&text_keys),
            }
            params.extend(cells.iter().map(|array| array as &(dyn ToSql + Sync)));
            // One statement, committed on its own: its rows stay locked
            // until its answer.
            let started = Instant::now();
            let rows = self
                .checked("write batch", writer.query(swap, &params))
                .await?;
            let locked = started.elapsed();

            let mut written: BTreeMap<Pk, Vec<bool>> = BTreeMap::new();
            for row in &rows {
                let pk = read_pk(row, self.kind);
                let flags = (0..columns)
                    .map(|index| row.get::<_, Option<bool>>(index + 1) == Some(true))
                    .collect();
                written.insert(pk, flags);
            }
            let mut outcome = SwapOutcome {
                locked,
                ..SwapOutcome::default()
            };
            for row in swaps {
                let flags = written.get(&row.pk);
                for (index, cell) in row.cells.iter().enumerate() {
                    if cell.is_none() {
                        continue;
                    }
                    if flags.is_some_and(|flags| flags[index]) {
                        outcome.applied += 1;
                    } else {
                        outcome.conflicts.push((row.pk.clone(), index));
                    }
                }
            }
            Ok(outcome)
        }
    }

    /// Up to `limit` rows after `after` (and up to `upto`, included)
    /// holding a record at `version`, in one statement.
    async fn read_part(
        &self,
        version: KeyVersion,
        after: Option<&Pk>,
        upto: Option<&Pk>,
        limit: u32,
    ) -> Result<Vec<StoredRow>> {
        let prefix = version_prefix(version);
        let length = prefix.len() as i32;
        let limit = i64::from(limit);
        let (int_after, text_after, int_upto);
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&prefix, &length, &limit];
        let statement = match (after, upto) {
            (_, Some(Pk::Text(_))) => {
                return Err(Error::Task {
                    target: self.target.name().to_owned(),
                    reason: "a range of text keys was asked for; only integer keys are split"
                        .to_owned(),
                });
            }
            (None, Some(Pk::Int(upto))) => {
                int_upto = *upto;
                params.push(&int_upto);
                &self.read_first_upto
            }
            (Some(Pk::Int(value)), Some(Pk::Int(upto))) => {
                int_after = *value;
                int_upto = *upto;
                params.push(&int_after);
                params.push(&int_upto);
                &self.read_after_upto
            }
            (None, None) => &self.read_first,
            (Some(Pk::Int(value)), None) => {
                int_after = *value;
                params.push(&int_after);
                &self.read_after
            }
            (Some(Pk::Text(value)), _) => {
                text_after = value.as_str();
                params.push(&text_after);
                &self.read_after
            }
        };
        let rows = self
            .checked("read page", self.reader.query(statement, &params))
            .await?;
        let columns = self.target.columns().len();
        Ok(rows
            .iter()
            .map(|row| StoredRow {
                pk: read_pk(row, self.kind),
                values: (1..=columns).map(|index| row.get(index)).collect(),
            })
            .collect())
    }

    /// The inventory, in one statement on the reader.
    async fn inventory_now(&self) -> Result<Inventory> {
        let rows = self
            .checked("inventory", self.reader.query(&self.inventory, &[]))
            .await?;
        let groups = rows
            .iter()
            .map(|row| {
                (
                    row.get::<_, i64>(0) as usize,
                    row.get::<_, String>(1),
                    row.get::<_, i64>(2) as u64,
                )
            })
            .collect();
        match inventory::tally(self.target.columns(), groups) {
            Ok(inventory) => Ok(inventory),
            Err(bad) => {
                let column = &self.target.columns()[bad.column];
                let pk = self.target.primary_key();
                let cast = match self.kind {
                    PkKind::Int => "::bigint",
                    PkKind::Text => "::text",
                };
                let sql = format!(
                    "SELECT {pk}{cast} FROM {table} WHERE {column} IS NOT NULL AND {prefix} = $1::text ORDER BY {pk} LIMIT 1",
                    table = self.target.table(),
                    prefix = prefix_expr(column)
                );
                let row = self
                    .checked("inventory", self.reader.query_opt(&sql, &[&bad.prefix]))
                    .await?;
                Err(Error::MalformedRecord {
                    table: self.target.table().to_string(),
                    column: column.to_string(),
                    pk: row.map_or_else(
                        || "?".to_owned(),
                        |row| read_pk(&row, self.kind).to_string(),
                    ),
                })
            }
        }
    }

    /// `count(column)` of every column, in one statement on the reader.
    async fn count_now(&self) -> Result<BTreeMap<SqlIdent, u64>> {
        let row = self
            .checked("count records", self.reader.query_one(&self.count, &[]))
            .await?;
        Ok(self
            .target
            .columns()
            .iter()
            .enumerate()
            .map(|(index, column)| (column.clone(), row.get::<_, i64>(index) as u64))
            .collect())
    }

    /// One sampling probe: up to `limit` rows of `statement` from `start`.
    async fn probe(&self, statement: &Statement, start: &Pk, limit: u32) -> Result<Vec<StoredRow>> {
        let limit = i64::from(limit);
        let start: &(dyn ToSql + Sync) = match start {
            Pk::Int(value) => value,
            Pk::Text(value) => value,
        };
        let rows = self
            .checked("sample", self.reader.query(statement, &[start, &limit]))
            .await?;
        Ok(rows
            .iter()
            .map(|row| StoredRow {
                pk: read_pk(row, self.kind),
                values: (1..row.len()).map(|index| row.get(index)).collect(),
            })
            .collect())
    }
}

async fn connect(target: &Target, at: &PgConnect, statement_timeout: &str) -> Result<Client> {
    let client = at
        .connect("re-encryption store")
        .await
        .map_err(|source| Error::Postgres {
            target: target.name().to_owned(),
            operation: "connect",
            source: Box::new(source),
            finding: None,
        })?;
    // Generic plans: left to choose, the server kept planning the batch's
    // statement afresh for each batch (custom plans over 1,000-element
    // arrays, 8-14 ms of planning per batch in `EXPLAIN ANALYZE`); the
    // generic plan is the same index lookups and hash join.
    client
        .batch_execute(&format!(
            "SET lock_timeout = '{LOCK_TIMEOUT}'; SET statement_timeout = '{statement_timeout}'; \
             SET plan_cache_mode = force_generic_plan"
        ))
        .await
        .map_err(pg_error(target, "connect"))?;
    Ok(client)
}

impl From<&tokio_postgres::Error> for DatabaseError {
    /// The server's fields when it answered; otherwise the driver's words,
    /// transient for a closed connection or an I/O failure (refused, reset).
    fn from(error: &tokio_postgres::Error) -> Self {
        if let Some(db) = error.as_db_error() {
            return DatabaseError::server(db.code().code(), db.message())
                .with_detail(db.detail(), db.hint())
                .with_names(db.table(), db.column(), db.constraint());
        }
        let mut message = error.to_string();
        let mut io = false;
        let mut tls = None;
        let mut next = std::error::Error::source(error);
        while let Some(cause) = next {
            tls = tls.or_else(|| crate::pg_connect::tls_cause(cause));
            io |= cause.is::<std::io::Error>() && tls.is_none();
            message.push_str(": ");
            message.push_str(&cause.to_string());
            next = cause.source();
        }
        if let Some(tls) = tls {
            // A certificate refused is not a network failure: retrying
            // cannot help until the settings or the certificate change.
            message = format!("{tls} ({message})");
        }
        let transient = error.is_closed() || io || message.starts_with("timeout");
        DatabaseError::connection(message, transient)
    }
}

/// The engine's error for a failed call on `target`'s table: the server's
/// words, with the table named when the server refused a statement without
/// naming one (every statement of the store touches that one table).
fn pg_error(
    target: &Target,
    operation: &'static str,
) -> impl FnOnce(tokio_postgres::Error) -> Error + use<> {
    let name = target.name().to_owned();
    let table = target.table().to_string();
    move |error| {
        let mut source = DatabaseError::from(&error);
        if !source.transient && source.sqlstate.is_some() && source.table.is_none() {
            source.table = Some(table);
        }
        Error::Postgres {
            target: name,
            operation,
            source: Box::new(source),
            finding: None,
        }
    }
}

/// Finds the primary key's kind and checks that the columns exist as text
/// and that the key is unique and never NULL.
async fn check_schema(client: &Client, target: &Target) -> Result<PkKind> {
    let schema = |reason: String| Error::Schema {
        target: target.name().to_owned(),
        reason,
    };
    let rows = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
             WHERE a.attrelid = to_regclass($1::text) AND a.attnum > 0 AND NOT a.attisdropped",
            &[&target.table().as_str()],
        )
        .await
        .map_err(pg_error(target, "read schema"))?;
    let declared: BTreeMap<String, String> =
        rows.iter().map(|row| (row.get(0), row.get(1))).collect();
    if declared.is_empty() {
        return Err(schema(format!("table `{}` does not exist", target.table())));
    }
    let is_text = |sql_type: &str| sql_type == "text" || sql_type.starts_with("character");
    for column in target.columns() {
        match declared.get(column.as_str()) {
            None => {
                return Err(schema(format!(
                    "column `{}.{column}` does not exist",
                    target.table()
                )));
            }
            Some(sql_type) if !is_text(sql_type) => {
                return Err(schema(format!(
                    "column `{}.{column}` has type `{sql_type}`; records are stored as text",
                    target.table()
                )));
            }
            Some(_) => {}
        }
    }
    let kind = match declared
        .get(target.primary_key().as_str())
        .map(String::as_str)
    {
        None => {
            return Err(schema(format!(
                "primary key column `{}.{}` does not exist",
                target.table(),
                target.primary_key()
            )));
        }
        Some("smallint" | "integer" | "bigint") => PkKind::Int,
        Some(sql_type) if is_text(sql_type) => PkKind::Text,
        Some(sql_type) => {
            return Err(schema(format!(
                "primary key `{}.{}` has type `{sql_type}`; only integer and text keys are supported",
                target.table(),
                target.primary_key()
            )));
        }
    };
    check_key(client, target).await?;
    Ok(kind)
}

/// Checks that the key is unique and never NULL, as keyset pages need: the
/// one column of the primary key, or of a valid unique index without WHERE
/// or expressions (INCLUDE columns aside) over a NOT NULL column.
async fn check_key(client: &Client, target: &Target) -> Result<()> {
    let not_null: Option<bool> = client
        .query_opt(
            "SELECT bool_or(a.attnotnull) FROM pg_index i \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] \
             WHERE i.indrelid = to_regclass($1::text) AND a.attname = $2::text \
             AND i.indisunique AND i.indisvalid AND i.indnkeyatts = 1 \
             AND i.indpred IS NULL AND i.indexprs IS NULL",
            &[&target.table().as_str(), &target.primary_key().as_str()],
        )
        .await
        .map_err(pg_error(target, "read schema"))?
        .and_then(|row| row.get(0));
    match not_null {
        None => Err(key_not_unique(target)),
        Some(false) => Err(key_may_be_null(target)),
        Some(true) => Ok(()),
    }
}

/// A value's version prefix, compared byte for byte (`COLLATE "C"`): under a
/// nondeterministic collation `v9:` would group with `V9:`, and PostgreSQL
/// before 18 refuses `strpos` outright.
fn prefix_expr(column: &SqlIdent) -> String {
    format!(
        "CASE WHEN strpos({column} COLLATE \"C\", ':') BETWEEN 2 AND 12 THEN substr({column} COLLATE \"C\", 1, strpos({column} COLLATE \"C\", ':')) ELSE '' END"
    )
}

fn read_pk(row: &tokio_postgres::Row, kind: PkKind) -> Pk {
    match kind {
        PkKind::Int => Pk::Int(row.get(0)),
        PkKind::Text => Pk::Text(row.get(0)),
    }
}

impl DataStore for PostgresStore {
    fn pk_kind(&self) -> PkKind {
        self.kind
    }

    fn read_page<'a>(
        &'a self,
        version: KeyVersion,
        after: Option<&'a Pk>,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<StoredRow>>> {
        self.read_range(version, after, None, limit)
    }

    fn split_bounds(&self) -> BoxFuture<'_, Result<Option<(i64, i64)>>> {
        async move {
            if self.kind != PkKind::Int {
                return Ok(None);
            }
            let bounds = self
                .checked("read key bounds", self.reader.query_one(&self.bounds, &[]))
                .await?;
            Ok(bounds
                .get::<_, Option<i64>>(0)
                .zip(bounds.get::<_, Option<i64>>(1)))
        }
        .boxed()
    }

    fn read_range<'a>(
        &'a self,
        version: KeyVersion,
        after: Option<&'a Pk>,
        upto: Option<&'a Pk>,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<StoredRow>>> {
        async move {
            if !self.gentle.load(Ordering::Relaxed) {
                return self.read_part(version, after, upto, limit).await;
            }
            // Throttled: the page in short reads, as its write.
            let mut rows: Vec<StoredRow> = Vec::with_capacity(limit as usize);
            while rows.len() < limit as usize {
                let want = (limit as usize - rows.len()).min(GENTLE_ROWS) as u32;
                let from = rows.last().map(|row| &row.pk).or(after);
                let part = self.read_part(version, from, upto, want).await?;
                let short = part.len() < want as usize;
                rows.extend(part);
                if short {
                    break;
                }
            }
            Ok(rows)
        }
        .boxed()
    }

    fn swap_batch(&self, swaps: Vec<RowSwap>) -> BoxFuture<'_, Result<SwapOutcome>> {
        async move {
            if self.gentle.load(Ordering::Relaxed) {
                // Throttled: one connection, and short statements one after
                // the other, so the server is never busy with the pass for
                // long at a stretch (`foreground` in keyholder-bench, p99 of
                // the application beside a 25% throttle: 2.95 ms with
                // 1,000-row statements, 1.63 ms with 100-row writes, 1.48-1.50
                // ms with 100-row reads too; 0.55-0.67 ms alone).
                let mut outcome = SwapOutcome::default();
                for part in swaps.chunks(GENTLE_ROWS) {
                    let done = self.swap_part(&self.writer, &self.swap, part).await?;
                    outcome.applied += done.applied;
                    outcome.conflicts.extend(done.conflicts);
                    outcome.locked += done.locked;
                }
                return Ok(outcome);
            }
            if swaps.len() < SPLIT_ROWS {
                return self.swap_part(&self.writer, &self.swap, &swaps).await;
            }
            // Disjoint keys, locked without waiting: the halves never wait
            // on each other. A half that committed before the other failed
            // is harmless to redo (its records no longer hold the old value).
            let (first, second) = swaps.split_at(swaps.len() / 2);
            let (mut outcome, rest) = futures::try_join!(
                self.swap_part(&self.writer, &self.swap, first),
                self.swap_part(&self.writer2, &self.swap2, second)
            )?;
            outcome.applied += rest.applied;
            outcome.conflicts.extend(rest.conflicts);
            // The halves run at the same time.
            outcome.locked = outcome.locked.max(rest.locked);
            Ok(outcome)
        }
        .boxed()
    }

    fn set_gentle(&self, gentle: bool) {
        self.gentle.store(gentle, Ordering::Relaxed);
    }

    fn inventory(&self) -> BoxFuture<'_, Result<Inventory>> {
        self.inventory_now().boxed()
    }

    fn counted_inventory(&self) -> BoxFuture<'_, Result<(Inventory, BTreeMap<SqlIdent, u64>)>> {
        async move {
            // Both statements in one snapshot: a REPEATABLE READ transaction
            // takes it at its first statement.
            self.checked(
                "inventory",
                self.reader
                    .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY"),
            )
            .await?;
            let read = async { Ok((self.inventory_now().await?, self.count_now().await?)) }.await;
            let end = if read.is_ok() { "COMMIT" } else { "ROLLBACK" };
            let ended = self
                .checked("inventory", self.reader.batch_execute(end))
                .await;
            let both = read?;
            ended?;
            Ok(both)
        }
        .boxed()
    }

    fn sample(&self, version: KeyVersion, n: u32) -> BoxFuture<'_, Result<Vec<SampleRecord>>> {
        async move {
            let bounds = self
                .checked("sample", self.reader.query_one(&self.bounds, &[]))
                .await?;
            let read_bound = |index| match self.kind {
                PkKind::Int => bounds.get::<_, Option<i64>>(index).map(Pk::Int),
                PkKind::Text => bounds.get::<_, Option<String>>(index).map(Pk::Text),
            };
            let (Some(low), Some(high)) = (read_bound(0), read_bound(1)) else {
                return Ok(Vec::new());
            };
            let prefix = version_prefix(version);
            let mut probes =
                sample::Probes::new(low, high, &prefix, self.target.columns(), n as usize);
            while let Some(probe) = probes.next() {
                let mut rows = self
                    .probe(&self.probe_from, &probe.start, probe.rows)
                    .await?;
                let missing = probe.rows - rows.len() as u32;
                if missing > 0 {
                    rows.extend(
                        self.probe(&self.probe_before, &probe.start, missing)
                            .await?,
                    );
                }
                probes.add(probe.rows, rows);
            }
            Ok(probes.finish())
        }
        .boxed()
    }

    fn make_durable(&self) -> BoxFuture<'_, Result<()>> {
        async move {
            // A synchronous commit flushes the WAL up to its own record, so
            // every earlier asynchronous commit of a batch with it. Only a
            // transaction that wrote WAL commits synchronously: one that
            // only took an xid (`txid_current()`) commits asynchronously
            // whatever `synchronous_commit` says (xact.c,
            // RecordTransactionCommit), and the batches stayed unflushed.
            // So it writes a transactional logical-decoding message: no
            // table, no lock, EXECUTE granted to PUBLIC by default; a
            // decoder that passes messages on sees prefix `keyholder`.
            self.checked(
                "make batches durable",
                self.writer.batch_execute(
                    "BEGIN; SET LOCAL synchronous_commit = on; \
                     SELECT pg_logical_emit_message(true, 'keyholder', 'durable'); COMMIT",
                ),
            )
            .await
        }
        .boxed()
    }

    fn replica_lag(&self) -> BoxFuture<'_, Result<Option<Duration>>> {
        async move {
            let row = self
                .checked("read replica lag", self.reader.query_one(&self.lag, &[]))
                .await?;
            let seconds: f64 = row.get(0);
            Ok(Some(Duration::from_secs_f64(seconds.max(0.0))))
        }
        .boxed()
    }
}
