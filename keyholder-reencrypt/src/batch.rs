//! One batch made ready to write: a page read and its records re-encrypted.
//!
//! Owns the crypto of a batch, run on tokio's blocking pool so it overlaps the
//! store's I/O: decrypt each record at `from` with the associated-data rule,
//! encrypt it with the write version, and prove the new ciphertext decrypts to
//! the same plaintext before it may be written. Plaintexts live only inside
//! [`reencrypt_rows`], in zeroizing buffers; this module must never return,
//! log or put into an error a plaintext or a stored value.

use std::sync::Arc;

use crypto_core::{KeyVersion, Keyring, envelope};

use crate::error::{Error, Result};
use crate::store::{CellSwap, DataStore, Pk, RowSwap, StoredRow};
use crate::target::Target;

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
}

/// Reads up to `limit` rows after `after` holding records at `from`, then
/// re-encrypts them on the blocking pool.
pub(crate) async fn prepare(
    store: Arc<dyn DataStore>,
    target: Arc<Target>,
    keyring: Arc<Keyring>,
    from: KeyVersion,
    after: Option<Pk>,
    limit: u32,
) -> Result<PreparedBatch> {
    let rows = store.read_page(from, after.as_ref(), limit).await?;
    let rows_read = rows.len();
    let last_pk = rows.last().map(|row| row.pk.clone());
    let task_target = target.clone();
    let swaps =
        tokio::task::spawn_blocking(move || reencrypt_rows(&task_target, &keyring, from, rows))
            .await
            .map_err(|error| Error::Task {
                target: target.name().to_owned(),
                reason: error.to_string(),
            })??;
    let records = swaps
        .iter()
        .map(|swap| swap.cells.iter().flatten().count() as u64)
        .sum();
    Ok(PreparedBatch {
        rows_read,
        last_pk,
        swaps,
        records,
    })
}

/// Re-encrypts every record at `from` in `rows` with the keyring's write
/// version. Any failure fails the whole batch, so nothing of it is written.
pub(crate) fn reencrypt_rows(
    target: &Target,
    keyring: &Keyring,
    from: KeyVersion,
    rows: Vec<StoredRow>,
) -> Result<Vec<RowSwap>> {
    let to = keyring.write_version();
    let mut swaps = Vec::with_capacity(rows.len());
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
            let names = || {
                (
                    target.table().to_string(),
                    column.to_string(),
                    row.pk.to_string(),
                )
            };
            let aad = target.aad_for(column, &row.pk);
            let plaintext = keyring.decrypt(&old, &aad).map_err(|_| {
                let (table, column, pk) = names();
                Error::Undecryptable {
                    table,
                    column,
                    pk,
                    version: from,
                }
            })?;
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
            swaps.push(RowSwap { pk: row.pk, cells });
        }
    }
    Ok(swaps)
}
