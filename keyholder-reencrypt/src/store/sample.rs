//! Random records of one version by primary-key probes, in time that does
//! not grow with the table.
//!
//! Owns the sampling plan the SQLite and PostgreSQL stores follow: from
//! random keys between the table's smallest and largest, read a short run
//! of rows in key order through the primary key's index (wrapping to the
//! table's start), keep the records at the version, and choose among them.
//! Every probe is an index seek plus a bounded number of rows, so a sample
//! of a 10M-row table costs what one of a 10k-row table does. A version
//! that is rare gets wider probes, up to [`MAX_ROWS_VISITED`] rows; one that
//! is absent costs that bound, never a scan. Uniform enough to catch a key
//! that does not fit: a wrong key fails every record of its version, so
//! one sampled record already shows it. It must never read more than
//! [`MAX_ROWS_VISITED`] rows, and never hold a stored value beyond the
//! sample it returns.

use std::collections::BTreeMap;

use super::{Pk, SampleRecord, StoredRow};
use crate::target::SqlIdent;

/// Rows read by one probe at first.
const PROBE_ROWS: u32 = 64;
/// Probes before the sample may stop.
const PROBES: usize = 16;
/// The most rows one sample reads, whatever the table's size.
pub(crate) const MAX_ROWS_VISITED: u64 = 32_768;

/// A random key between `low` and `high`: uniform for integer keys; for text
/// keys, the common prefix, a random byte between theirs where they first
/// differ (kept to printable ASCII), and random printable characters.
pub(crate) fn random_key(low: &Pk, high: &Pk) -> Pk {
    match (low, high) {
        (Pk::Int(low), Pk::Int(high)) => Pk::Int(rand::random_range(*low..=*high)),
        (Pk::Text(low), Pk::Text(high)) => {
            let (low, high) = (low.as_bytes(), high.as_bytes());
            let common = low.iter().zip(high).take_while(|(a, b)| a == b).count();
            let mut key = low[..common].to_vec();
            // Printable ASCII both: a UTF-8 letter's bytes lie above `~`
            // (`Á` is `C3 81`), and a start outside the keys' range only
            // wraps the probe to the table's start.
            let from = low.get(common).copied().unwrap_or(b' ').clamp(b' ', b'~');
            let to = high.get(common).copied().unwrap_or(b'~').clamp(from, b'~');
            key.push(rand::random_range(from..=to));
            key.extend((0..8).map(|_| rand::random_range(b'0'..=b'z')));
            Pk::Text(String::from_utf8_lossy(&key).into_owned())
        }
        _ => low.clone(),
    }
}

/// One probe to run: read up to `rows` rows with `pk >= start` in key
/// order, then, if fewer came, the missing ones from the table's start.
#[derive(Debug)]
pub(crate) struct Probe {
    pub(crate) start: Pk,
    pub(crate) rows: u32,
}

/// The state of one sample: the bounds, the records found, the rows read.
pub(crate) struct Probes<'a> {
    low: Pk,
    high: Pk,
    prefix: &'a str,
    columns: &'a [SqlIdent],
    wanted: usize,
    window: u32,
    probes: usize,
    visited: u64,
    whole_table: bool,
    /// Records at the version by (key, column index), so overlapping
    /// probes count a record once.
    found: BTreeMap<(Pk, usize), String>,
}

impl<'a> Probes<'a> {
    /// A sample of `wanted` records whose values start with `prefix`, in a
    /// table whose keys run from `low` to `high`.
    pub(crate) fn new(
        low: Pk,
        high: Pk,
        prefix: &'a str,
        columns: &'a [SqlIdent],
        wanted: usize,
    ) -> Self {
        Self {
            low,
            high,
            prefix,
            columns,
            wanted,
            window: PROBE_ROWS,
            probes: 0,
            visited: 0,
            whole_table: false,
            found: BTreeMap::new(),
        }
    }

    /// The next probe, or `None` when the sample is complete: enough records
    /// after the first [`PROBES`] probes, the whole table read, or
    /// [`MAX_ROWS_VISITED`] reached.
    pub(crate) fn next(&mut self) -> Option<Probe> {
        let enough = self.probes >= PROBES && self.found.len() >= self.wanted;
        if self.wanted == 0 || enough || self.whole_table || self.visited >= MAX_ROWS_VISITED {
            return None;
        }
        if self.probes >= PROBES {
            // A rare version: widen the probes rather than scan.
            self.window = self.window.saturating_mul(2);
        }
        let rows = u64::from(self.window).min(MAX_ROWS_VISITED - self.visited) as u32;
        Some(Probe {
            start: random_key(&self.low, &self.high),
            rows,
        })
    }

    /// Takes the rows a probe read (`asked` of them were asked for).
    pub(crate) fn add(&mut self, asked: u32, rows: Vec<StoredRow>) {
        self.probes += 1;
        self.visited += rows.len() as u64;
        // A probe wraps around, so fewer rows than asked is the whole table.
        self.whole_table |= rows.len() < asked as usize;
        for row in rows {
            for (index, value) in row.values.into_iter().enumerate() {
                if let Some(value) = value.filter(|value| value.starts_with(self.prefix)) {
                    self.found.insert((row.pk.clone(), index), value);
                }
            }
        }
    }

    /// Rows read so far.
    #[cfg(test)]
    pub(crate) fn visited(&self) -> u64 {
        self.visited
    }

    /// Up to `wanted` of the records found, chosen uniformly among them.
    pub(crate) fn finish(self) -> Vec<SampleRecord> {
        let mut records: Vec<SampleRecord> = self
            .found
            .into_iter()
            .map(|((pk, index), ciphertext)| SampleRecord {
                pk,
                column: self.columns[index].clone(),
                ciphertext,
            })
            .collect();
        // Partial Fisher-Yates: the first `wanted` are a uniform choice.
        let n = self.wanted.min(records.len());
        for at in 0..n {
            let pick = rand::random_range(at..records.len());
            records.swap(at, pick);
        }
        records.truncate(n);
        records
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn columns() -> Vec<SqlIdent> {
        vec![SqlIdent::parse("token", "column").unwrap()]
    }

    /// A table of `rows` integer keys where every `every`-th row is at V9.
    fn run(rows: i64, every: i64, wanted: usize) -> (Vec<SampleRecord>, u64) {
        let columns = columns();
        let mut probes = Probes::new(Pk::Int(1), Pk::Int(rows), "V9:", &columns, wanted);
        while let Some(probe) = probes.next() {
            let Pk::Int(start) = probe.start else {
                unreachable!()
            };
            let read: Vec<StoredRow> = (start..=rows)
                .chain(1..start)
                .take(probe.rows as usize)
                .map(|id| StoredRow {
                    pk: Pk::Int(id),
                    values: vec![Some(if id % every == 0 {
                        format!("V9:{id}")
                    } else {
                        format!("V10:{id}")
                    })],
                })
                .collect();
            probes.add(probe.rows, read);
        }
        let visited = probes.visited();
        (probes.finish(), visited)
    }

    #[test]
    fn a_common_version_is_sampled_from_a_bounded_number_of_rows() {
        let (records, visited) = run(10_000_000, 2, 64);
        assert_eq!(records.len(), 64);
        assert!(records.iter().all(|r| r.ciphertext.starts_with("V9:")));
        assert_eq!(visited, u64::from(PROBE_ROWS) * PROBES as u64);
    }

    #[test]
    fn a_rare_version_widens_the_probes_up_to_the_bound() {
        let (records, visited) = run(10_000_000, 5_000, 64);
        assert!(!records.is_empty(), "one in 5000 rows is found");
        assert!(visited <= MAX_ROWS_VISITED);
        let (records, visited) = run(10_000_000, i64::MAX, 64);
        assert!(records.is_empty());
        assert_eq!(
            visited, MAX_ROWS_VISITED,
            "an absent version costs the bound"
        );
    }

    #[test]
    fn a_small_table_is_read_once() {
        let (records, visited) = run(40, 1, 64);
        assert_eq!(records.len(), 40, "every record, each once");
        assert_eq!(visited, 40);
    }
}
