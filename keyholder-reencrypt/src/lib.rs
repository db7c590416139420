//! The re-encryption engine of keyholder.
//!
//! Moves every record of a target (a table's encrypted columns, in SQLite,
//! PostgreSQL or MySQL/MariaDB) from one key version to the keyring's write version, in
//! throttled batches while the database keeps serving:
//!
//! - keyset pagination on the primary key, never OFFSET ([`DataStore::read_page`]),
//!   so the key must be unique and never NULL: [`open_store`] refuses a table
//!   whose schema does not say so;
//! - compare-and-swap writes, one transaction per batch, so an application
//!   write made meanwhile is never overwritten ([`DataStore::swap_batch`]);
//! - a [`Checkpoint`] after each committed batch, through a [`CheckpointStore`]
//!   the daemon implements; a pass resumes from it and redoing a batch is
//!   harmless;
//! - throttling, pause, resume and abort through a [`ControlHandle`];
//! - on PostgreSQL with an integer key, optionally several workers on
//!   disjoint key ranges ([`Reencryptor::with_workers`]), each range with its
//!   own position in the checkpoint;
//! - [`Progress`] snapshots on a watch channel;
//! - a record that does not decrypt is left untouched and named by column and
//!   primary key; the pass moves every other record, then fails with
//!   [`Error::UndecryptableRecords`] instead of reaching Drained;
//! - invariants after each batch (every new record decrypts to the old
//!   plaintext; written + conflicts + left undecryptable = read) and at the
//!   end (no record left at the old version in a full scan but the
//!   undecryptable ones; counts per version add up per column to a
//!   `count(column)` read in the same snapshot, so the application's
//!   inserts and deletes meanwhile cannot fail it).
//!
//! Rollback is the same pass with a keyring whose write version is the older
//! version.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use keyholder_reencrypt::*;
//! # async fn example(target: Target, keyring: Arc<crypto_core::Keyring>, from: crypto_core::KeyVersion,
//! #     checkpoints: Arc<dyn CheckpointStore>) -> Result<()> {
//! let store = open_store(&target).await?;
//! let control = ControlHandle::new(Throttle::default())?;
//! let pass = Reencryptor::new(target, store, keyring, from, checkpoints, &control)?;
//! let progress = pass.progress(); // for status and metrics
//! let running = tokio::spawn(pass.run());
//! control.pause(); // from the API handlers
//! control.resume();
//! match running.await.expect("task")? {
//!     PassOutcome::Drained(report) => println!("{:?}", report.after.by_version()),
//!     PassOutcome::Aborted(checkpoint) => println!("stopped at {:?}", checkpoint.last_pk),
//! }
//! # let _ = progress; Ok(()) }
//! ```
//!
//! PostgreSQL connections use TLS (rustls) as libpq's `sslmode` says
//! ([`PgConnect`], shared with the daemon's state store): `verify-full`
//! unless the host is loopback. MySQL connections use TLS (rustls) as the
//! target's `ssl-mode` says: `VERIFY_IDENTITY` unless the host is loopback.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod batch;
mod checkpoint;
mod error;
mod inventory;
mod pg_connect;
mod progress;
mod store;
mod target;
mod throttle;
mod worker;

pub use checkpoint::{
    Checkpoint, CheckpointStore, KeyRange, MemoryCheckpoints, ScanTotals, SqliteCheckpoints,
};
pub use error::{
    BoxError, DatabaseError, Error, Result, UNDECRYPTABLE_REMEMBERED, sqlstate_is_transient,
};
pub use inventory::Inventory;
pub use pg_connect::{PgConnect, PgSslMode};
pub use progress::{Phase, Progress, VersionCount};
pub use store::mysql::MysqlStore;
pub use store::postgres::PostgresStore;
pub use store::sqlite::SqliteStore;
pub use store::{
    CellSwap, DataStore, Pk, PkKind, RowSwap, SampleRecord, StoredRow, SwapOutcome, open_store,
};
pub use target::{AadRule, MysqlLocation, SqlIdent, SslMode, StoreLocation, Target, TargetConfig};
pub use throttle::{
    AdaptiveBatch, Control, ControlHandle, MAX_BATCH_SIZE, RunState, Throttle, ThrottleConfig,
    TokenBucket,
};
pub use worker::{DEFAULT_MAX_SWEEPS, MAX_WORKERS, PassOutcome, PassReport, Reencryptor};
