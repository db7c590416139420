//! Inventory: how many records each key version holds in a target.
//!
//! Owns the counting of records per version per column from the version
//! prefixes a store groups by. It reads prefixes only: it must never decrypt
//! and never show a stored value, only the row's key when a value is not a
//! record.

use std::collections::BTreeMap;

use crypto_core::KeyVersion;

use crate::error::Error;
use crate::target::{SqlIdent, Target};

/// Records per version, per column, of one target at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inventory {
    columns: BTreeMap<SqlIdent, BTreeMap<KeyVersion, u64>>,
}

impl Inventory {
    /// Records per version of one column.
    pub fn column(&self, column: &SqlIdent) -> Option<&BTreeMap<KeyVersion, u64>> {
        self.columns.get(column)
    }

    /// Records per version over all columns, in numeric version order.
    pub fn by_version(&self) -> BTreeMap<KeyVersion, u64> {
        let mut total = BTreeMap::new();
        for versions in self.columns.values() {
            for (version, count) in versions {
                *total.entry(*version).or_insert(0) += count;
            }
        }
        total
    }

    /// Records at `version` over all columns.
    pub fn at(&self, version: KeyVersion) -> u64 {
        self.columns
            .values()
            .filter_map(|versions| versions.get(&version))
            .sum()
    }

    /// All records (non-NULL values) of the target.
    pub fn total(&self) -> u64 {
        self.columns
            .values()
            .flat_map(|versions| versions.values())
            .sum()
    }

    /// Records per column over all versions.
    pub fn per_column(&self) -> BTreeMap<SqlIdent, u64> {
        self.columns
            .iter()
            .map(|(column, versions)| (column.clone(), versions.values().sum()))
            .collect()
    }
}

/// Characters of a value the inventory reads: a version prefix (`V<n>:`, at
/// most 12 characters) is within them.
pub(crate) const PREFIX_CHARS: usize = 12;

/// The inventory's group key of a value: up to and including the first `:`
/// when it is the 2nd to [`PREFIX_CHARS`]th character, else `""` (never a
/// version).
pub(crate) fn group_key(text: &str) -> &str {
    text.char_indices()
        .take(PREFIX_CHARS)
        .enumerate()
        .find(|(_, (_, c))| *c == ':')
        .filter(|(position, _)| *position >= 1)
        .map_or("", |(_, (at, _))| &text[..=at])
}

/// A prefix group that is not `V<n>:`: the store looks up one row of it to
/// name in the error.
pub(crate) struct MalformedGroup {
    pub(crate) column: usize,
    pub(crate) prefix: String,
    /// Its place among the groups given to [`tally`].
    pub(crate) index: usize,
}

/// The groups of a scan a store tallies row by row itself (SQLite, MySQL),
/// each with the key of the first row seen in it, to name a group that is
/// not a version.
#[derive(Default)]
pub(crate) struct RowTally {
    groups: Vec<(usize, String, u64)>,
    first_rows: Vec<String>,
}

impl RowTally {
    /// Counts one value of column `column` in group `key`; `first_row`
    /// names its row when the group is new.
    pub(crate) fn add<E>(
        &mut self,
        column: usize,
        key: &str,
        first_row: impl FnOnce() -> Result<String, E>,
    ) -> Result<(), E> {
        match self
            .groups
            .iter_mut()
            .find(|(known_column, known, _)| *known_column == column && known == key)
        {
            Some(group) => group.2 += 1,
            None => {
                let row = first_row()?;
                self.groups.push((column, key.to_owned(), 1));
                self.first_rows.push(row);
            }
        }
        Ok(())
    }

    /// The inventory of `target`; a group that is not a version is an
    /// [`Error::MalformedRecord`] naming the first row seen in it.
    pub(crate) fn finish(self, target: &Target) -> Result<Inventory, Error> {
        let first_rows = self.first_rows;
        tally(target.columns(), self.groups).map_err(|bad| Error::MalformedRecord {
            table: target.table().to_string(),
            column: target.columns()[bad.column].to_string(),
            pk: first_rows[bad.index].clone(),
        })
    }
}

/// Builds an inventory from `(column index, prefix, count)` groups, where the
/// prefix is the value up to and including its first `:` (or empty). Every
/// column of the target appears, even with no records.
pub(crate) fn tally(
    columns: &[SqlIdent],
    groups: Vec<(usize, String, u64)>,
) -> Result<Inventory, MalformedGroup> {
    let mut inventory = Inventory {
        columns: columns
            .iter()
            .map(|column| (column.clone(), BTreeMap::new()))
            .collect(),
    };
    for (index, (column, prefix, count)) in groups.into_iter().enumerate() {
        let version = crypto_core::envelope::peek_version(&prefix).map_err(|_| MalformedGroup {
            column,
            prefix,
            index,
        })?;
        *inventory
            .columns
            .get_mut(&columns[column])
            .expect("column index comes from the target")
            .entry(version)
            .or_insert(0) += count;
    }
    Ok(inventory)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_versions_numerically_and_flags_garbage() {
        let columns = vec![
            SqlIdent::parse("a", "c").unwrap(),
            SqlIdent::parse("b", "c").unwrap(),
        ];
        let inventory = tally(
            &columns,
            vec![
                (0, "V9:".into(), 3),
                (0, "V10:".into(), 2),
                (1, "V10:".into(), 5),
            ],
        )
        .ok()
        .unwrap();
        let v = |n| KeyVersion::new(n).unwrap();
        assert_eq!(
            inventory.by_version().into_iter().collect::<Vec<_>>(),
            vec![(v(9), 3), (v(10), 7)]
        );
        assert_eq!(inventory.total(), 10);
        assert_eq!(inventory.at(v(8)), 0);

        for garbage in ["", "v9:", "V09:", "X:"] {
            let error = tally(&columns, vec![(1, garbage.into(), 1)]).err().unwrap();
            assert_eq!(error.column, 1);
        }
    }
}
