//! An application's table in a SQLite file, as a re-encryption target: seeded
//! with records sealed under a key the test rebuilt itself, counted per
//! version and digested by decrypting every record, so a test can prove that
//! nothing was lost or changed whatever the daemon did in between.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use crypto_core::{Key, KeyVersion, envelope};
use rusqlite::{Connection, params};
use sha2::Digest as _;

use crate::daemon::TargetSpec;

/// The plaintext of record `id`: distinct per record, about 100 bytes.
pub fn plaintext(id: i64) -> String {
    format!(
        "customer {id:08} ssn {:09} {}",
        id * 7919 % 1_000_000_000,
        "x".repeat(60)
    )
}

/// A `customers (id INTEGER PRIMARY KEY, ssn TEXT)` table in its own file.
#[derive(Clone, Debug)]
pub struct Table {
    /// The `[[targets]]` entry for it.
    pub spec: TargetSpec,
}

impl Table {
    /// Creates the file and the empty table.
    pub fn create(path: &Path) -> Self {
        let conn = Connection::open(path).unwrap();
        conn.execute_batch("CREATE TABLE customers (id INTEGER PRIMARY KEY, ssn TEXT NOT NULL)")
            .unwrap();
        Self {
            spec: TargetSpec {
                name: "customers-ssn".into(),
                db: path.to_owned(),
                table: "customers".into(),
                primary_key: "id".into(),
                column: "ssn".into(),
            },
        }
    }

    fn open(&self) -> Connection {
        let conn = Connection::open(&self.spec.db).unwrap();
        // The daemon's worker writes the same file.
        conn.busy_timeout(Duration::from_secs(10)).unwrap();
        conn
    }

    /// Inserts records `1..=count`, each [`plaintext`] sealed under `key` as
    /// `version`, in one transaction.
    pub fn seed(&self, key: &Key, version: KeyVersion, count: i64) {
        let mut conn = self.open();
        let tx = conn.transaction().unwrap();
        {
            let mut insert = tx
                .prepare("INSERT INTO customers (id, ssn) VALUES (?1, ?2)")
                .unwrap();
            for id in 1..=count {
                let record = envelope::seal(key, version, plaintext(id).as_bytes(), b"");
                insert.execute(params![id, record]).unwrap();
            }
        }
        tx.commit().unwrap();
    }

    /// Writes record `id` (insert or replace) as an application would.
    pub fn put(&self, id: i64, key: &Key, version: KeyVersion, plaintext: &str) {
        let record = envelope::seal(key, version, plaintext.as_bytes(), b"");
        self.open()
            .execute(
                "INSERT OR REPLACE INTO customers (id, ssn) VALUES (?1, ?2)",
                params![id, record],
            )
            .unwrap();
    }

    /// Records per version, from each record's own version prefix.
    pub fn counts(&self) -> BTreeMap<u32, u64> {
        let conn = self.open();
        let mut stmt = conn.prepare("SELECT ssn FROM customers").unwrap();
        let mut counts = BTreeMap::new();
        for record in stmt.query_map([], |r| r.get::<_, String>(0)).unwrap() {
            let version = envelope::peek_version(&record.unwrap()).unwrap();
            *counts.entry(version.number()).or_default() += 1;
        }
        counts
    }

    /// Records at `version`.
    pub fn count_at(&self, version: u32) -> u64 {
        self.counts().get(&version).copied().unwrap_or(0)
    }

    /// Every (id, version, plaintext) in id order, decrypting each record
    /// with the key of its own version: what a failed [`Table::digest`]
    /// comparison names the differing records from.
    pub fn plaintexts(&self, keys: &BTreeMap<KeyVersion, Key>) -> Vec<(i64, u32, String)> {
        self.stored()
            .into_iter()
            .map(|(id, version, record)| {
                let plain = keys
                    .get(&version)
                    .and_then(|key| envelope::open(key, version, &record, b"").ok())
                    .map_or_else(
                        || "<does not decrypt>".to_owned(),
                        |plain| String::from_utf8_lossy(&plain).into_owned(),
                    );
                (id, version.number(), plain)
            })
            .collect()
    }

    /// Every (id, version, stored record) in id order.
    fn stored(&self) -> Vec<(i64, KeyVersion, String)> {
        let conn = self.open();
        let mut stmt = conn
            .prepare("SELECT id, ssn FROM customers ORDER BY id")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
            .unwrap()
            .map(|row| {
                let (id, record) = row.unwrap();
                (id, envelope::peek_version(&record).unwrap(), record)
            })
            .collect()
    }

    /// SHA-256 over every (id, plaintext) in id order, decrypting each record
    /// with the key of its own version; panics naming the first record that
    /// does not decrypt.
    pub fn digest(&self, keys: &BTreeMap<KeyVersion, Key>) -> String {
        let mut hash = sha2::Sha256::new();
        for (id, version, record) in self.stored() {
            let key = keys
                .get(&version)
                .unwrap_or_else(|| panic!("record {id} is at {version}, a key the test lacks"));
            let plain = envelope::open(key, version, &record, b"")
                .unwrap_or_else(|e| panic!("record {id} at {version} does not decrypt: {e}"));
            hash.update(id.to_be_bytes());
            hash.update((plain.len() as u64).to_be_bytes());
            hash.update(&plain[..]);
        }
        hex::encode(hash.finalize())
    }

    /// The digest [`Table::digest`] gives for records `1..=count` holding
    /// their [`plaintext`].
    pub fn expected_digest(count: i64) -> String {
        let mut hash = sha2::Sha256::new();
        for id in 1..=count {
            let plain = plaintext(id);
            hash.update(id.to_be_bytes());
            hash.update((plain.len() as u64).to_be_bytes());
            hash.update(plain.as_bytes());
        }
        hex::encode(hash.finalize())
    }
}
