//! The data store of one target: the table the records live in.
//!
//! Owns the [`DataStore`] trait (keyset pages, compare-and-swap batches,
//! inventory, samples, replica lag) and picks the SQLite, PostgreSQL or
//! MySQL implementation from the target's location. A store moves ciphertexts only:
//! it must never decrypt, never see a key, and never overwrite a value that is
//! not the one the engine read (every write is a compare-and-swap).

pub mod mysql;
pub mod postgres;
mod sample;
pub mod sqlite;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crypto_core::KeyVersion;
use futures::FutureExt as _;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::inventory::Inventory;
use crate::target::{SqlIdent, StoreLocation, Target};

/// A primary key value: an integer (`INTEGER`/`BIGINT`) or a text key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pk {
    /// An integer key.
    Int(i64),
    /// A text key.
    Text(String),
}

impl fmt::Display for Pk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Int(value) => write!(f, "{value}"),
            Self::Text(value) => f.write_str(value),
        }
    }
}

/// Which kind of primary key a table has, found from its schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PkKind {
    /// `SMALLINT`, `INTEGER`, `BIGINT` (SQLite: a declared type containing `INT`).
    Int,
    /// `TEXT`, `VARCHAR` and the like.
    Text,
}

/// One row as read: its key and the stored value of each target column, in
/// the target's column order (`None` for SQL NULL).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRow {
    /// The primary key.
    pub pk: Pk,
    /// One value per target column.
    pub values: Vec<Option<String>>,
}

/// One column's compare-and-swap: write `new` only where the value is still `old`.
#[derive(Clone, PartialEq, Eq)]
pub struct CellSwap {
    /// The ciphertext read.
    pub old: String,
    /// The ciphertext to write.
    pub new: String,
}

impl fmt::Debug for CellSwap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CellSwap(..)")
    }
}

/// The swaps of one row, one slot per target column (`None`: leave it alone).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowSwap {
    /// The row's primary key.
    pub pk: Pk,
    /// One slot per target column.
    pub cells: Vec<Option<CellSwap>>,
}

/// What a batch of swaps did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SwapOutcome {
    /// Records (row × column) written.
    pub applied: u64,
    /// Records not written because their value changed since it was read:
    /// the row's key and the column's index.
    pub conflicts: Vec<(Pk, usize)>,
    /// How long the batch held what it locked in the target, waits for a
    /// lock not counted: on SQLite the database's one write lock, from
    /// `BEGIN IMMEDIATE` to the end of the commit; on PostgreSQL and MySQL
    /// its rows' locks, from its first write statement to its commit.
    pub locked: Duration,
}

/// A random record of one version, for test-decrypting a key before unseal
/// or switch.
#[derive(Clone, PartialEq, Eq)]
pub struct SampleRecord {
    /// The row's primary key.
    pub pk: Pk,
    /// The column the record is in.
    pub column: SqlIdent,
    /// The stored ciphertext.
    pub ciphertext: String,
}

impl fmt::Debug for SampleRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SampleRecord")
            .field("pk", &self.pk)
            .field("column", &self.column)
            .finish_non_exhaustive()
    }
}

/// The table of one target, in SQLite or PostgreSQL.
///
/// Obtain one with [`open_store`]. Every method is one short transaction (or
/// one statement); the engine calls them concurrently (a page is read while
/// the previous batch is written), so implementations hold at least a reader
/// and a writer connection. A batch never waits on a row lock an
/// application holds (a row it cannot lock at once is a conflict), so it is
/// never part of a deadlock. A store does not reconnect: after an error
/// that [`crate::Error::is_transient`] calls transient, open a fresh one.
pub trait DataStore: Send + Sync {
    /// The kind of primary key the table has.
    fn pk_kind(&self) -> PkKind;

    /// Up to `limit` rows with `pk > after` (all rows when `after` is `None`)
    /// holding at least one record at `version`, in key order (keyset
    /// pagination; never OFFSET).
    fn read_page<'a>(
        &'a self,
        version: KeyVersion,
        after: Option<&'a Pk>,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<StoredRow>>>;

    /// As [`DataStore::read_page`], but only rows whose key is at most
    /// `upto` (all after `after` when `upto` is `None`): one worker's range
    /// of a split scan. The default reads a page and drops the rows beyond
    /// `upto`: correct for any store, efficient for none; a store whose
    /// [`DataStore::split_bounds`] splits reads the range itself.
    fn read_range<'a>(
        &'a self,
        version: KeyVersion,
        after: Option<&'a Pk>,
        upto: Option<&'a Pk>,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<StoredRow>>> {
        async move {
            let mut rows = self.read_page(version, after, limit).await?;
            if let Some(upto) = upto {
                rows.retain(|row| &row.pk <= upto);
            }
            Ok(rows)
        }
        .boxed()
    }

    /// The smallest and largest key of the table, where the store lets
    /// several workers, each on its own connections, write disjoint ranges
    /// of integer keys at once (PostgreSQL); `None` where one worker must do
    /// (SQLite has one writer; text keys are not split; an empty table).
    fn split_bounds(&self) -> BoxFuture<'_, Result<Option<(i64, i64)>>> {
        futures::future::ready(Ok(None)).boxed()
    }

    /// Applies the swaps in one transaction: each record is written only where
    /// its stored value is still the old one. All or nothing on error; a
    /// store that splits a large batch over several connections (PostgreSQL)
    /// is all or nothing per part, and a part that committed before another
    /// failed is harmless to redo: its records no longer hold the old value.
    fn swap_batch(&self, swaps: Vec<RowSwap>) -> BoxFuture<'_, Result<SwapOutcome>>;

    /// Throttled (`true`), a batch keeps to one connection, so one server
    /// core, and a server-side store writes it in short statements: the
    /// application's queries come first. Unthrottled, a store may split a
    /// batch to use more of the server.
    fn set_gentle(&self, _gentle: bool) {}

    /// Counts records per version per column in a full scan; NULL values do
    /// not count. A value that is not an envelope is an error naming
    /// table/column/pk.
    fn inventory(&self) -> BoxFuture<'_, Result<Inventory>>;

    /// The inventory and, read in the same snapshot of the table, the
    /// non-NULL values per column counted independently of it
    /// (`count(column)`), so the two can be checked against each other. One
    /// snapshot, because the application goes on inserting and deleting
    /// rows: read one after the other, a row inserted between the two reads
    /// made them disagree and failed a pass that had moved every record.
    fn counted_inventory(&self) -> BoxFuture<'_, Result<(Inventory, BTreeMap<SqlIdent, u64>)>>;

    /// Up to `n` random records at `version`, across all columns.
    fn sample(&self, version: KeyVersion, n: u32) -> BoxFuture<'_, Result<Vec<SampleRecord>>>;

    /// The largest replay lag of the store's replicas; `None` where the store
    /// has no replicas to wait for (SQLite).
    fn replica_lag(&self) -> BoxFuture<'_, Result<Option<Duration>>>;

    /// Makes every batch this store committed durable. A store may commit
    /// batches without waiting for the disk (a batch lost in a power cut is
    /// harmless: its records are still at the old version, still readable
    /// with the old key, and the final inventory finds them); the pass calls
    /// this before that inventory, so a pass is never called drained on
    /// writes the disk might still lose.
    fn make_durable(&self) -> BoxFuture<'_, Result<()>>;
}

/// Opens the target's store, checks that the table, the primary key and the
/// columns exist with types the engine supports and that the schema makes the
/// key unique and never NULL, and prepares its statements.
pub async fn open_store(target: &Target) -> Result<Arc<dyn DataStore>> {
    match target.store() {
        StoreLocation::Sqlite(_) => Ok(Arc::new(sqlite::SqliteStore::open(target).await?)),
        StoreLocation::Postgres(_) => Ok(Arc::new(postgres::PostgresStore::open(target).await?)),
        StoreLocation::Mysql(_) => Ok(Arc::new(mysql::MysqlStore::open(target).await?)),
    }
}

/// The refusal of a key two rows may share: a keyset page that ends between
/// them (`key > last`) hides the second from every later page.
pub(crate) fn key_not_unique(target: &Target) -> Error {
    Error::Schema {
        target: target.name().to_owned(),
        reason: format!(
            "`{}.{}` is not unique: it is not the one column of the primary key or of a unique index without WHERE or expressions, so two rows may share a key and the pass, which pages by key, would skip one of them; declare it PRIMARY KEY or UNIQUE NOT NULL, or set `primary_key` to a column that is",
            target.table(),
            target.primary_key()
        ),
    }
}

/// The refusal of a key the schema lets be NULL (PostgreSQL): no keyset page
/// holds such a row, and no compare-and-swap can name it.
pub(crate) fn key_may_be_null(target: &Target) -> Error {
    Error::Schema {
        target: target.name().to_owned(),
        reason: format!(
            "`{}.{}` may be NULL, and the pass, which pages by key, would skip a row whose key is NULL; declare it NOT NULL, or set `primary_key` to a column that is",
            target.table(),
            target.primary_key()
        ),
    }
}

/// The text every record of `version` starts with (`V10:`).
pub(crate) fn version_prefix(version: KeyVersion) -> String {
    format!("V{}:", version.number())
}
