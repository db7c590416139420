//! One batch made ready to write: a page read and its records re-encrypted.
//!
//! Owns the crypto of a batch, run on tokio's blocking pool so it overlaps the
//! store's I/O: decrypt each record at `from` with the associated-data rule,
//! encrypt it with the write version, and prove the new ciphertext decrypts to
//! the same plaintext before it may be written. A record that does not decrypt
//! is left out of the batch and named by column and key, so the rest of the
//! batch still moves. Plaintexts live only inside
//! [`reencrypt_rows`], in zeroizing buffers; this module must never return,
//! log or put into an error a plaintext or a stored value.

use std::sync::Arc;

use crypto_core::{KeyVersion, Keyring, envelope};

use crate::error::{Error, Result};
use crate::store::{CellSwap, Pk, RowSwap, StoredRow};
use crate::target::{SqlIdent, Target};

/// Below this many rows per thread, splitting the crypto costs more than it saves.
const MIN_ROWS_PER_WORKER: usize = 64;

/// A batch ready to be written.
#[derive(Debug)]
pub(crate) struct PreparedBatch {
    /// Rows read (each holds at least one record at `from` when read).
    pub(crate) rows_read: usize,
    /// The last primary key read: the checkpoint after this batch commits.
    pub(crate) last_pk: Option<Pk>,
    /// The swaps to apply.
    pub(crate) swaps: Vec<RowSwap>,
    /// Records in `swaps`.
    pub(crate) records: u64,
    /// Records at `from` that did not decrypt, in key order: left out of
    /// `swaps`, so never written.
    pub(crate) undecryptable: Vec<(SqlIdent, Pk)>,
    /// Records at `from` in the page, counted apart from the two above so
    /// the worker can check that every one was written, conflicted or left.
    pub(crate) at_from: u64,
}

/// The crypto's result for some rows.
#[derive(Debug, Default)]
pub(crate) struct Reencrypted {
    /// The swaps of the rows with at least one record that decrypted.
    pub(crate) swaps: Vec<RowSwap>,
    /// Records at `from` that did not decrypt (column, key).
    pub(crate) undecryptable: Vec<(SqlIdent, Pk)>,
    /// Records at `from` seen.
    pub(crate) at_from: u64,
}

/// Re-encrypts a page read in key order on the blocking pool, split over
/// up to `cores` threads.
pub(crate) async fn prepare(
    target: Arc<Target>,
    keyring: Arc<Keyring>,
    from: KeyVersion,
    rows: Vec<StoredRow>,
    cores: usize,
) -> Result<PreparedBatch> {
    let rows_read = rows.len();
    let last_pk = rows.last().map(|row| row.pk.clone());
    let workers = cores.min(rows_read.div_ceil(MIN_ROWS_PER_WORKER)).max(1);
    let chunk = rows_read.div_ceil(workers).max(1);
    let mut rows = rows.into_iter();
    let mut tasks = Vec::with_capacity(workers);
    loop {
        let part: Vec<StoredRow> = rows.by_ref().take(chunk).collect();
        if part.is_empty() {
            break;
        }
        let (target, keyring) = (target.clone(), keyring.clone());
        tasks.push(tokio::task::spawn_blocking(move || {
            reencrypt_rows(&target, &keyring, from, part)
        }));
    }
    let mut done = Reencrypted {
        swaps: Vec::with_capacity(rows_read),
        ..Reencrypted::default()
    };
    // Join every task before looking at results, so an error never leaves
    // a sibling running unobserved; the first error in key order wins.
    let mut results = Vec::with_capacity(tasks.len());
    for task in tasks {
        results.push(task.await.map_err(|error| Error::Task {
            target: target.name().to_owned(),
            reason: error.to_string(),
        }));
    }
    for result in results {
        let part = result??;
        done.swaps.extend(part.swaps);
        done.undecryptable.extend(part.undecryptable);
        done.at_from += part.at_from;
    }
    let records = done
        .swaps
        .iter()
        .map(|swap| swap.cells.iter().flatten().count() as u64)
        .sum();
    Ok(PreparedBatch {
        rows_read,
        last_pk,
        swaps: done.swaps,
        records,
        undecryptable: done.undecryptable,
        at_from: done.at_from,
    })
}

/// Re-encrypts every record at `from` in `rows` with the keyring's write
/// version. A record that does not decrypt (wrong key, altered value, a value
/// copied from another row under the `row` rule, or a body that is not an
/// envelope) is only named in the result; the other records still move. A
/// failure to encrypt, or a new record that does not prove itself, fails the
/// whole batch, so nothing of it is written.
pub(crate) fn reencrypt_rows(
    target: &Target,
    keyring: &Keyring,
    from: KeyVersion,
    rows: Vec<StoredRow>,
) -> Result<Reencrypted> {
    let to = keyring.write_version();
    let mut done = Reencrypted {
        swaps: Vec::with_capacity(rows.len()),
        ..Reencrypted::default()
    };
    for row in rows {
        let mut cells = Vec::with_capacity(row.values.len());
        let mut any = false;
        for (column, value) in target.columns().iter().zip(row.values) {
            let Some(old) = value else {
                cells.push(None);
                continue;
            };
            // Records at other versions, and values that are not records,
            // are not this pass's business: the inventory reports the latter.
            if envelope::peek_version(&old).ok() != Some(from) {
                cells.push(None);
                continue;
            }
            done.at_from += 1;
            let names = || {
                (
                    target.table().to_string(),
                    column.to_string(),
                    row.pk.to_string(),
                )
            };
            let aad = target.aad_for(column, &row.pk);
            let Ok(plaintext) = keyring.decrypt(&old, &aad) else {
                done.undecryptable.push((column.clone(), row.pk.clone()));
                cells.push(None);
                continue;
            };
            let new = keyring.encrypt(&plaintext, &aad).map_err(|source| {
                let (table, column, pk) = names();
                Error::Encrypt {
                    table,
                    column,
                    pk,
                    version: to,
                    source: Box::new(source),
                }
            })?;
            let proven = envelope::peek_version(&new).ok() == Some(to)
                && keyring
                    .decrypt(&new, &aad)
                    .is_ok_and(|again| again.as_slice() == plaintext.as_slice());
            if !proven {
                let (table, column, pk) = names();
                return Err(Error::Invariant {
                    target: target.name().to_owned(),
                    detail: format!(
                        "the new record for {table}.{column} at primary key {pk} does not decrypt with {to} to the old plaintext"
                    ),
                });
            }
            cells.push(Some(CellSwap { old, new }));
            any = true;
        }
        if any {
            done.swaps.push(RowSwap { pk: row.pk, cells });
        }
    }
    Ok(done)
}
