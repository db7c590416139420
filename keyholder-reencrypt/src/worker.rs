//! The re-encryption worker: one pass of one target from one version to the
//! keyring's write version.
//!
//! Owns the pass: the main keyset scan, the sweeps over records still at the
//! source version, throttling, pause / abort, checkpoints after each committed
//! batch, the invariants after each batch and at the end, and the progress
//! snapshots. The same code serves rollback (a keyring whose write version is
//! the older one). It must never log a stored value, a plaintext or a key,
//! never write a record that was not proven to decrypt, and never report a
//! pass drained while a record it could not decrypt is left at the source
//! version.

use std::sync::Arc;

use crypto_core::{KeyVersion, Keyring};
use tokio::sync::watch;

use crate::checkpoint::{Checkpoint, CheckpointStore};
use crate::error::{Error, Result};
use crate::inventory::Inventory;
use crate::progress::Progress;
use crate::store::DataStore;
use crate::target::Target;
use crate::throttle::{Control, ControlHandle};

mod pass;

use pass::Pass;

/// How many sweeps after the main scan before a pass gives up on records an
/// application keeps writing at the old version.
pub const DEFAULT_MAX_SWEEPS: u32 = 20;

/// The most workers one pass runs ([`Reencryptor::with_workers`]); each
/// holds its own three connections to the target.
pub const MAX_WORKERS: u32 = 16;

/// How a pass ended.
#[derive(Debug)]
pub enum PassOutcome {
    /// No record is left at `from`; the end invariants held. A pass that
    /// left undecryptable records fails with [`Error::UndecryptableRecords`]
    /// instead.
    Drained(PassReport),
    /// The operator aborted; run the pass again to resume from this checkpoint.
    Aborted(Checkpoint),
}

/// The account of a drained pass.
#[derive(Debug)]
pub struct PassReport {
    /// The final checkpoint (`drained` set).
    pub checkpoint: Checkpoint,
    /// Records per version when this run started.
    pub before: Inventory,
    /// Records per version at the end (none at `from`).
    pub after: Inventory,
}

/// One re-encryption pass of one target. Build it, take [`Reencryptor::progress`],
/// then [`Reencryptor::run`] it (typically in its own task).
pub struct Reencryptor {
    target: Arc<Target>,
    store: Arc<dyn DataStore>,
    keyring: Arc<Keyring>,
    from: KeyVersion,
    checkpoints: Arc<dyn CheckpointStore>,
    control: watch::Receiver<Control>,
    progress: watch::Sender<Progress>,
    max_sweeps: u32,
    workers: u32,
}

impl Reencryptor {
    /// A pass moving every record of `target` at `from` to the keyring's
    /// write version. Refuses a keyring without `from`, and `from` equal to
    /// the write version.
    pub fn new(
        target: Target,
        store: Arc<dyn DataStore>,
        keyring: Arc<Keyring>,
        from: KeyVersion,
        checkpoints: Arc<dyn CheckpointStore>,
        control: &ControlHandle,
    ) -> Result<Self> {
        let to = keyring.write_version();
        let refuse = |reason: String| Error::Keyring {
            target: target.name().to_owned(),
            reason,
        };
        if from == to {
            return Err(refuse(format!(
                "the keyring already writes {from}; nothing to move"
            )));
        }
        if !keyring.contains(from) {
            return Err(refuse(format!(
                "the keyring lacks {from}, so its records cannot be read"
            )));
        }
        let control = control.subscribe();
        let batch_size = control.borrow().throttle.batch_size;
        let (progress, _) = watch::channel(Progress::starting(target.name(), from, to, batch_size));
        Ok(Self {
            target: Arc::new(target),
            store,
            keyring,
            from,
            checkpoints,
            control,
            progress,
            max_sweeps: DEFAULT_MAX_SWEEPS,
            workers: 1,
        })
    }

    /// Changes how many sweeps run before the pass fails with
    /// [`Error::NotDrained`].
    pub fn with_max_sweeps(mut self, max_sweeps: u32) -> Self {
        self.max_sweeps = max_sweeps.max(1);
        self
    }

    /// Runs the main scan as `workers` (1 to [`MAX_WORKERS`]) workers on
    /// disjoint ranges of the primary key, each with its own connections,
    /// read-ahead and crypto, and its own position in the checkpoint; the
    /// throttle counts their records together, and a pause stops each
    /// within its batch under way. Only where the store can
    /// ([`crate::DataStore::split_bounds`]: PostgreSQL with an integer key);
    /// elsewhere, and for the sweeps after the main scan, one worker. 1, the
    /// default, is the one worker in key order. A pass resumed from a split
    /// checkpoint keeps its ranges, whatever this says.
    pub fn with_workers(mut self, workers: u32) -> Self {
        self.workers = workers.clamp(1, MAX_WORKERS);
        self
    }

    /// The progress snapshots, readable at any time (also after the pass).
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    /// The version records move to.
    pub fn to(&self) -> KeyVersion {
        self.keyring.write_version()
    }

    /// Runs the pass to the end, resuming from its checkpoint if there is one.
    /// Dropping the future mid-pass is safe: the next run resumes from the
    /// last saved checkpoint and redoing a batch is harmless.
    pub async fn run(self) -> Result<PassOutcome> {
        Pass::new(self).run().await
    }
}
