//! WAL checkpoints of a SQLite target, off the writer's path.
//!
//! Owns the checkpointer thread of a [`SqliteStore`](super::SqliteStore). By
//! default the connection whose commit crosses SQLite's 1,000-page mark copies
//! the WAL into the database inside that commit: a profile of a pass showed
//! that copy taking about a tenth of the run, all of it on the writer's path,
//! while the next batch waited. The writer now commits with
//! `wal_autocheckpoint` off and wakes this thread, which runs a `PASSIVE`
//! checkpoint on its own connection on the other core. `PASSIVE` never waits
//! for a lock and never blocks the application's readers or writers. The
//! checkpoint syncs as the application's own would (`synchronous` is left at
//! SQLite's default on this connection), so the application's committed data
//! is never less durable than before.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, sync_channel};

use rusqlite::Connection;

use crate::error::{Error, Result};

/// Bytes of new values committed between checkpoints: about 256 pages of
/// 4 KiB, a quarter of the 1,000 after which the application's connections
/// would run SQLite's automatic checkpoint inside their own commits.
const CHECKPOINT_BYTES: u64 = 1 << 20;

/// A handle on the checkpointer thread; the thread ends when the last
/// handle is dropped.
#[derive(Clone, Debug)]
pub(super) struct Checkpointer {
    pending: Arc<AtomicU64>,
    wake: SyncSender<()>,
}

impl Checkpointer {
    /// Opens the thread's connection to `path` and starts it.
    pub(super) fn start(path: &Path, target: &str) -> Result<Self> {
        let connection = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| Error::Sqlite {
            target: target.to_owned(),
            operation: "open",
            source: Box::new(source),
        })?;
        let pending = Arc::new(AtomicU64::new(0));
        // One slot: wake-ups while a checkpoint runs fold into one.
        let (wake, woken) = sync_channel::<()>(1);
        let target_name = target;
        let (thread_pending, target) = (pending.clone(), target.to_owned());
        std::thread::Builder::new()
            .name("keyholder-wal".to_owned())
            .spawn(move || {
                while woken.recv().is_ok() {
                    thread_pending.store(0, Ordering::Relaxed);
                    let checkpoint =
                        connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
                    if let Err(error) = checkpoint {
                        // The next commit wakes the thread again; meanwhile
                        // the WAL only grows, as with a busy application.
                        tracing::warn!(%target, %error, "WAL checkpoint failed");
                    }
                }
            })
            .map_err(|error| Error::Task {
                target: target_name.to_owned(),
                reason: format!("could not start the WAL checkpoint thread: {error}"),
            })?;
        Ok(Self { pending, wake })
    }

    /// Tells the thread a batch of `bytes` of new values committed.
    pub(super) fn committed(&self, bytes: u64) {
        let total = self.pending.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if total >= CHECKPOINT_BYTES {
            // Full: a wake-up is already pending, which is all it takes.
            let _ = self.wake.try_send(());
        }
    }
}
