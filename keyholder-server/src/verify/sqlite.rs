//! Sampling records of one version from a SQLite target, read-only.

use crypto_core::KeyVersion;
use rand::seq::SliceRandom as _;
use rusqlite::{Connection, OpenFlags};

use super::{RecordSampler, SampledRecord};
use crate::config::{AadRule, TargetConfig};

/// Reads random records of a version from a SQLite target.
pub struct SqliteSampler {
    target: TargetConfig,
}

impl SqliteSampler {
    /// A sampler of `target` (its store is `sqlite:///...`).
    pub fn new(target: TargetConfig) -> Self {
        Self { target }
    }
}

impl RecordSampler for SqliteSampler {
    fn name(&self) -> &str {
        &self.target.name
    }

    fn sample(&self, version: KeyVersion, n: u32) -> Result<Vec<SampledRecord>, String> {
        let t = &self.target;
        let path = t.store.strip_prefix("sqlite://").unwrap_or(&t.store);
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| format!("cannot open {path}: {e}"))?;
        let prefix = format!("V{}:", version.number());
        let mut records = Vec::new();
        for column in &t.columns {
            // Identifiers were checked against ^[a-z_][a-z0-9_]{0,62}$ by the
            // config, so they are safe in SQL text.
            let query = format!(
                "SELECT CAST({pk} AS TEXT), {column} FROM {table}
                 WHERE substr({column}, 1, ?2) = ?1 ORDER BY random() LIMIT ?3",
                pk = t.primary_key,
                table = t.table,
            );
            let mut stmt = conn
                .prepare(&query)
                .map_err(|e| format!("cannot read {}.{column}: {e}", t.table))?;
            let rows = stmt
                .query_map(
                    rusqlite::params![prefix, prefix.len() as i64, i64::from(n)],
                    |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
                )
                .map_err(|e| format!("cannot read {}.{column}: {e}", t.table))?;
            for row in rows {
                let (pk, record) =
                    row.map_err(|e| format!("cannot read {}.{column}: {e}", t.table))?;
                let aad = match t.aad {
                    AadRule::None => Vec::new(),
                    AadRule::Row => format!("{}/{column}/{pk}", t.table).into_bytes(),
                };
                records.push(SampledRecord {
                    id: format!("{}.{column} {}={pk}", t.table, t.primary_key),
                    record,
                    aad,
                });
            }
        }
        records.shuffle(&mut rand::rng());
        records.truncate(n as usize);
        Ok(records)
    }
}
