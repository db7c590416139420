//! Shared test fixture: a table `records(id, a, b)` in a real SQLite file, a
//! real PostgreSQL database or a real MySQL/MariaDB database, seeded with records at v8 and v9, plus the
//! scenarios both backends must pass. No database is mocked.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crypto_core::{Key, KeyVersion, Keyring};
use keyholder_reencrypt::*;
use mysql_async::prelude::Queryable as _;
use sha2::{Digest as _, Sha256};

pub fn v(n: u32) -> KeyVersion {
    KeyVersion::new(n).unwrap()
}

/// A keyring holding v8, v9 and v10 (fixed test keys), writing `write`.
pub fn keyring(write: u32) -> Arc<Keyring> {
    let keys = [8u8, 9, 10].map(|n| (v(u32::from(n)), Key::from_slice(&[n; 32]).unwrap()));
    Arc::new(Keyring::new("orders".parse().unwrap(), v(write), keys).unwrap())
}

/// The last plaintext an application wrote per (id, column).
pub type LastWrites = HashMap<(i64, &'static str), String>;

/// Where the test table lives.
#[derive(Clone)]
pub enum Db {
    Sqlite(PathBuf),
    Postgres {
        url: String,
        table: String,
    },
    /// `url` as the test names it (`mysql://root@127.0.0.1:3306/test`).
    Mysql {
        url: String,
        table: String,
    },
}

pub const TABLE_SQLITE: &str = "records";

/// How the test table's record columns compare.
#[derive(Clone, Copy)]
pub enum Columns {
    /// The stores' default collations (on MySQL the fixture's usual
    /// `utf8mb4_general_ci`).
    Plain,
    /// Not byte for byte: on SQLite `a` `COLLATE NOCASE` and `b` `COLLATE
    /// RTRIM`; on PostgreSQL both under a nondeterministic ICU collation
    /// that ignores case; on MySQL `utf8mb4_general_ci` (case and trailing
    /// spaces).
    IgnoringCase,
}

impl Db {
    pub fn table(&self) -> &str {
        match self {
            Db::Sqlite(_) => TABLE_SQLITE,
            Db::Postgres { table, .. } | Db::Mysql { table, .. } => table,
        }
    }

    pub fn target(&self) -> Target {
        let store = match self {
            Db::Sqlite(path) => format!("sqlite://{}", path.display()),
            Db::Postgres { url, .. } | Db::Mysql { url, .. } => url.clone(),
        };
        TargetConfig {
            name: "records".into(),
            store,
            table: self.table().into(),
            primary_key: "id".into(),
            columns: vec!["a".into(), "b".into()],
            aad: AadRule::Row,
        }
        .validate("targets[0]")
        .unwrap()
    }

    pub fn aad(&self, column: &str, id: i64) -> Vec<u8> {
        format!("{}/{column}/{id}", self.table()).into_bytes()
    }

    /// Creates the table with `rows` rows: `a` at v9 (every 10th at v8),
    /// `b` at v9 (every 7th NULL).
    pub async fn seed(&self, rows: i64) {
        let keyring = keyring(9);
        let old = keyring_v8();
        let mut data = Vec::with_capacity(rows as usize);
        for id in 1..=rows {
            let a_plain = format!("secret-{id}-a-0123456789abcdef");
            let a = if id % 10 == 0 {
                old.encrypt(a_plain.as_bytes(), &self.aad("a", id)).unwrap()
            } else {
                keyring
                    .encrypt(a_plain.as_bytes(), &self.aad("a", id))
                    .unwrap()
            };
            let b = (id % 7 != 0).then(|| {
                keyring
                    .encrypt(format!("secret-{id}-b").as_bytes(), &self.aad("b", id))
                    .unwrap()
            });
            data.push((id, Some(a), b));
        }
        self.create(Columns::Plain, data).await;
    }

    /// Creates the table with `rows` rows, `a` and `b` both at v9, in
    /// columns whose own comparison is not byte for byte
    /// ([`Columns::IgnoringCase`]).
    pub async fn seed_case_insensitive(&self, rows: i64) {
        let keyring = keyring(9);
        let data = (1..=rows)
            .map(|id| {
                let seal = |column: &str| {
                    let plaintext = format!("secret-{id}-{column}");
                    keyring
                        .encrypt(plaintext.as_bytes(), &self.aad(column, id))
                        .unwrap()
                };
                (id, Some(seal("a")), Some(seal("b")))
            })
            .collect();
        self.create(Columns::IgnoringCase, data).await;
    }

    /// Creates the table with `columns` and inserts `data` (id, a, b).
    async fn create(&self, columns: Columns, data: Vec<(i64, Option<String>, Option<String>)>) {
        match self {
            Db::Sqlite(path) => {
                let path = path.clone();
                let ddl = match columns {
                    Columns::Plain => "a TEXT, b TEXT",
                    Columns::IgnoringCase => "a TEXT COLLATE NOCASE, b TEXT COLLATE RTRIM",
                };
                tokio::task::spawn_blocking(move || {
                    let mut connection = rusqlite::Connection::open(&path).unwrap();
                    connection
                        .execute_batch(&format!(
                            "PRAGMA journal_mode = WAL;
                             CREATE TABLE records (id INTEGER PRIMARY KEY, {ddl});"
                        ))
                        .unwrap();
                    let transaction = connection.transaction().unwrap();
                    {
                        let mut insert = transaction
                            .prepare("INSERT INTO records (id, a, b) VALUES (?1, ?2, ?3)")
                            .unwrap();
                        for (id, a, b) in data {
                            insert.execute(rusqlite::params![id, a, b]).unwrap();
                        }
                    }
                    transaction.commit().unwrap();
                })
                .await
                .unwrap();
            }
            Db::Postgres { url, table } => {
                let client = pg_connect(url).await;
                let ddl = match columns {
                    Columns::Plain => "a TEXT, b TEXT",
                    Columns::IgnoringCase => {
                        client
                            .batch_execute(
                                "CREATE COLLATION IF NOT EXISTS kh_test_ignore_case \
                                 (provider = icu, locale = 'und-u-ks-level2', deterministic = false)",
                            )
                            .await
                            .unwrap();
                        "a TEXT COLLATE kh_test_ignore_case, b TEXT COLLATE kh_test_ignore_case"
                    }
                };
                client
                    .batch_execute(&format!(
                        "CREATE TABLE {table} (id BIGINT PRIMARY KEY, {ddl})"
                    ))
                    .await
                    .unwrap();
                for chunk in data.chunks(10_000) {
                    let ids: Vec<i64> = chunk.iter().map(|row| row.0).collect();
                    let a: Vec<Option<String>> = chunk.iter().map(|row| row.1.clone()).collect();
                    let b: Vec<Option<String>> = chunk.iter().map(|row| row.2.clone()).collect();
                    client
                        .execute(
                            &format!(
                                "INSERT INTO {table} (id, a, b) SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[])"
                            ),
                            &[&ids, &a, &b],
                        )
                        .await
                        .unwrap();
                }
            }
            Db::Mysql { url, table } => {
                // utf8mb4_general_ci ignores case and trailing spaces: the
                // same table serves both kinds of columns.
                let mut conn = mysql_connect(url).await;
                conn.query_drop(format!(
                    "CREATE TABLE {table} (id BIGINT PRIMARY KEY, a TEXT, b TEXT) \
                     CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci"
                ))
                .await
                .unwrap();
                for chunk in data.chunks(2_000) {
                    let values = vec!["(?, ?, ?)"; chunk.len()].join(", ");
                    let params: Vec<mysql_async::Value> = chunk
                        .iter()
                        .flat_map(|(id, a, b)| [(*id).into(), a.clone().into(), b.clone().into()])
                        .collect();
                    conn.exec_drop(
                        format!("INSERT INTO {table} (id, a, b) VALUES {values}"),
                        params,
                    )
                    .await
                    .unwrap();
                }
            }
        }
    }

    /// Every row, in key order.
    pub async fn rows(&self) -> Vec<(i64, Option<String>, Option<String>)> {
        match self {
            Db::Sqlite(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || {
                    let connection = rusqlite::Connection::open(&path).unwrap();
                    let mut select = connection
                        .prepare("SELECT id, a, b FROM records ORDER BY id")
                        .unwrap();
                    select
                        .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
                        .unwrap()
                        .collect::<rusqlite::Result<Vec<_>>>()
                        .unwrap()
                })
                .await
                .unwrap()
            }
            Db::Postgres { url, table } => pg_connect(url)
                .await
                .query(&format!("SELECT id, a, b FROM {table} ORDER BY id"), &[])
                .await
                .unwrap()
                .iter()
                .map(|row| (row.get(0), row.get(1), row.get(2)))
                .collect(),
            Db::Mysql { url, table } => mysql_connect(url)
                .await
                .query(format!("SELECT id, a, b FROM {table} ORDER BY id"))
                .await
                .unwrap(),
        }
    }

    /// Sets one column of one row, as an application would.
    pub async fn set(&self, id: i64, column: &str, value: &str) {
        match self {
            Db::Sqlite(path) => {
                let (path, column, value) = (path.clone(), column.to_owned(), value.to_owned());
                tokio::task::spawn_blocking(move || {
                    let connection = rusqlite::Connection::open(&path).unwrap();
                    connection
                        .execute(
                            &format!("UPDATE records SET {column} = ?1 WHERE id = ?2"),
                            rusqlite::params![value, id],
                        )
                        .unwrap();
                })
                .await
                .unwrap();
            }
            Db::Postgres { url, table } => {
                pg_connect(url)
                    .await
                    .execute(
                        &format!("UPDATE {table} SET {column} = $1 WHERE id = $2"),
                        &[&value, &id],
                    )
                    .await
                    .unwrap();
            }
            Db::Mysql { url, table } => {
                mysql_connect(url)
                    .await
                    .exec_drop(
                        format!("UPDATE {table} SET {column} = ? WHERE id = ?"),
                        (value, id),
                    )
                    .await
                    .unwrap();
            }
        }
    }

    /// A digest of every plaintext (id, column, plaintext) and the records
    /// per version, read by the test itself.
    pub async fn digest(&self) -> (String, BTreeMap<KeyVersion, u64>) {
        self.digest_except(&[]).await
    }

    /// [`Db::digest`] over every record but the `(column, id)` listed.
    pub async fn digest_except(&self, skip: &[(&str, i64)]) -> (String, BTreeMap<KeyVersion, u64>) {
        let keyring = keyring(10);
        let mut hash = Sha256::new();
        let mut versions = BTreeMap::new();
        for (id, a, b) in self.rows().await {
            for (column, value) in [("a", a), ("b", b)] {
                let Some(value) = value else { continue };
                if skip.contains(&(column, id)) {
                    continue;
                }
                let version = crypto_core::envelope::peek_version(&value).unwrap();
                *versions.entry(version).or_insert(0) += 1;
                let plaintext = keyring
                    .decrypt(&value, &self.aad(column, id))
                    .unwrap_or_else(|_| panic!("record {column}/{id} does not decrypt"));
                assert!(
                    !plaintext.starts_with(b"V"),
                    "record {column}/{id} is double-encrypted"
                );
                hash.update(id.to_le_bytes());
                hash.update(column.as_bytes());
                hash.update((plaintext.len() as u64).to_le_bytes());
                hash.update(&plaintext);
            }
        }
        (format!("{:x}", hash.finalize()), versions)
    }

    /// One application connection to the store, as the writers below use
    /// it: exactly one of the three is `Some`.
    async fn app_connections(
        &self,
    ) -> (
        Option<tokio_postgres::Client>,
        Option<mysql_async::Conn>,
        Option<Arc<std::sync::Mutex<rusqlite::Connection>>>,
    ) {
        match self {
            Db::Postgres { url, .. } => (Some(pg_connect(url).await), None, None),
            Db::Mysql { url, .. } => (None, Some(mysql_connect(url).await), None),
            Db::Sqlite(path) => {
                let connection = rusqlite::Connection::open(path).unwrap();
                connection
                    .busy_timeout(std::time::Duration::from_secs(10))
                    .unwrap();
                (
                    None,
                    None,
                    Some(Arc::new(std::sync::Mutex::new(connection))),
                )
            }
        }
    }

    /// An application writing fresh values (at v9 or v10) into random rows
    /// until `stop`; returns the last plaintexts it wrote per (id, column).
    pub fn spawn_writer(
        &self,
        rows: i64,
        stop: Arc<AtomicBool>,
        writes: Arc<AtomicU64>,
    ) -> tokio::task::JoinHandle<HashMap<(i64, &'static str), String>> {
        let db = self.clone();
        tokio::spawn(async move {
            let old = keyring(9);
            let new = keyring(10);
            let mut last = HashMap::new();
            let (client, mut mysql, sqlite) = db.app_connections().await;
            let mut counter = 0u64;
            while !stop.load(Ordering::SeqCst) {
                counter += 1;
                let id = rand::random_range(1..=rows);
                let column: &'static str = if rand::random_bool(0.5) { "a" } else { "b" };
                let plaintext = format!("app-{id}-{column}-{counter}");
                let keyring = if rand::random_bool(0.5) { &old } else { &new };
                let value = keyring
                    .encrypt(plaintext.as_bytes(), &db.aad(column, id))
                    .unwrap();
                match (&client, &sqlite, &db) {
                    (_, _, Db::Mysql { table, .. }) => {
                        mysql
                            .as_mut()
                            .unwrap()
                            .exec_drop(
                                format!("UPDATE {table} SET {column} = ? WHERE id = ?"),
                                (value, id),
                            )
                            .await
                            .unwrap();
                    }
                    (Some(client), _, Db::Postgres { table, .. }) => {
                        client
                            .execute(
                                &format!("UPDATE {table} SET {column} = $1 WHERE id = $2"),
                                &[&value, &id],
                            )
                            .await
                            .unwrap();
                    }
                    (_, Some(connection), _) => {
                        let connection = connection.clone();
                        tokio::task::spawn_blocking(move || {
                            connection
                                .lock()
                                .unwrap()
                                .execute(
                                    &format!("UPDATE records SET {column} = ?1 WHERE id = ?2"),
                                    rusqlite::params![value, id],
                                )
                                .unwrap();
                        })
                        .await
                        .unwrap();
                    }
                    _ => unreachable!(),
                }
                last.insert((id, column), plaintext);
                writes.fetch_add(1, Ordering::SeqCst);
                tokio::task::yield_now().await;
            }
            last
        })
    }

    /// An application inserting new rows (ids from `first`, both columns
    /// written at v10, as after the switch) and deleting random rows of the
    /// seed (ids below `first`), one statement each, as fast as it can,
    /// until `stop`; returns how many rows it inserted and deleted.
    pub fn spawn_inserter(
        &self,
        first: i64,
        stop: Arc<AtomicBool>,
    ) -> tokio::task::JoinHandle<(i64, i64)> {
        let db = self.clone();
        tokio::spawn(async move {
            let new = keyring(10);
            let mut deleted = 0;
            let (client, mut mysql, sqlite) = db.app_connections().await;
            let mut id = first;
            while !stop.load(Ordering::SeqCst) {
                let [a, b] = ["a", "b"].map(|column| {
                    new.encrypt(
                        format!("inserted-{id}-{column}").as_bytes(),
                        &db.aad(column, id),
                    )
                    .unwrap()
                });
                let victim = rand::random_range(1..first);
                deleted += match (&client, &sqlite, &db) {
                    (_, _, Db::Mysql { table, .. }) => {
                        let mysql = mysql.as_mut().unwrap();
                        mysql
                            .exec_drop(
                                format!("INSERT INTO {table} (id, a, b) VALUES (?, ?, ?)"),
                                (id, a, b),
                            )
                            .await
                            .unwrap();
                        mysql
                            .exec_drop(format!("DELETE FROM {table} WHERE id = ?"), (victim,))
                            .await
                            .unwrap();
                        mysql.affected_rows() as i64
                    }
                    (Some(client), _, Db::Postgres { table, .. }) => {
                        client
                            .execute(
                                &format!("INSERT INTO {table} (id, a, b) VALUES ($1, $2, $3)"),
                                &[&id, &a, &b],
                            )
                            .await
                            .unwrap();
                        client
                            .execute(&format!("DELETE FROM {table} WHERE id = $1"), &[&victim])
                            .await
                            .unwrap() as i64
                    }
                    (_, Some(connection), _) => {
                        let connection = connection.clone();
                        tokio::task::spawn_blocking(move || {
                            let connection = connection.lock().unwrap();
                            connection
                                .execute(
                                    "INSERT INTO records (id, a, b) VALUES (?1, ?2, ?3)",
                                    rusqlite::params![id, a, b],
                                )
                                .unwrap();
                            connection
                                .execute("DELETE FROM records WHERE id = ?1", [victim])
                                .unwrap() as i64
                        })
                        .await
                        .unwrap()
                    }
                    _ => unreachable!(),
                };
                id += 1;
                tokio::task::yield_now().await;
            }
            (id - first, deleted)
        })
    }

    /// An application that updates `per_transaction` random rows (in random
    /// order, both columns) in each transaction, as fast as it can, until
    /// `stop`. Returns the last plaintexts it wrote and how many transactions
    /// committed; a transaction that fails panics the task (the scenario
    /// wants none).
    pub fn spawn_multi_row_writer(
        &self,
        rows: i64,
        per_transaction: usize,
        stop: Arc<AtomicBool>,
    ) -> tokio::task::JoinHandle<(LastWrites, u64)> {
        let db = self.clone();
        tokio::spawn(async move {
            let Db::Mysql { url, table } = &db else {
                panic!("the multi-row writer speaks MySQL only")
            };
            let ring = keyring(10);
            let mut conn = mysql_connect(url).await;
            let mut last = HashMap::new();
            let mut committed = 0u64;
            let mut counter = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let mut transaction = conn
                    .start_transaction(mysql_async::TxOpts::default())
                    .await
                    .unwrap_or_else(|error| panic!("begin failed: {error}"));
                let mut written = Vec::new();
                for _ in 0..per_transaction {
                    counter += 1;
                    let id = rand::random_range(1..=rows);
                    let column: &'static str = if rand::random_bool(0.5) { "a" } else { "b" };
                    let plaintext = format!("multi-{id}-{column}-{counter}");
                    let value = ring
                        .encrypt(plaintext.as_bytes(), &db.aad(column, id))
                        .unwrap();
                    transaction
                        .exec_drop(
                            format!("UPDATE {table} SET {column} = ? WHERE id = ?"),
                            (value, id),
                        )
                        .await
                        .unwrap_or_else(|error| {
                            panic!("transaction {} failed: {error}", committed + 1)
                        });
                    written.push(((id, column), plaintext));
                }
                transaction
                    .commit()
                    .await
                    .unwrap_or_else(|error| panic!("commit {} failed: {error}", committed + 1));
                committed += 1;
                last.extend(written);
            }
            (last, committed)
        })
    }
}

pub async fn mysql_connect(url: &str) -> mysql_async::Conn {
    let opts = mysql_async::Opts::from_url(url).expect("KEYHOLDER_TEST_MYSQL is a mysql:// URL");
    mysql_async::Conn::new(opts).await.unwrap_or_else(|error| {
        panic!("KEYHOLDER_TEST_MYSQL is set but MySQL/MariaDB is unreachable: {error}")
    })
}

fn keyring_v8() -> Arc<Keyring> {
    keyring(8)
}

/// A keyring writing v9 with a key that is not the test keyring's v9: its
/// records carry the right prefix and do not decrypt.
pub fn foreign_v9() -> Arc<Keyring> {
    let key = Key::from_slice(&[0x55; 32]).unwrap();
    Arc::new(Keyring::new("orders".parse().unwrap(), v(9), [(v(9), key)]).unwrap())
}

pub async fn pg_connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|error| {
            panic!("KEYHOLDER_TEST_PG is set but PostgreSQL is unreachable: {error}")
        });
    tokio::spawn(connection);
    client
}

/// The test database, with a fresh table name; `None` (and a notice) when
/// `KEYHOLDER_TEST_PG` is not set.
pub async fn postgres(test: &str) -> Option<Db> {
    let Ok(url) = std::env::var("KEYHOLDER_TEST_PG") else {
        eprintln!("skipping: KEYHOLDER_TEST_PG not set");
        return None;
    };
    let table = format!(
        "kh_{test}_{}_{}",
        std::process::id(),
        rand::random_range(0..1_000_000u32)
    );
    // Fails the test (never skips) when the server is unreachable.
    pg_connect(&url)
        .await
        .batch_execute(&format!("DROP TABLE IF EXISTS {table}"))
        .await
        .unwrap();
    Some(Db::Postgres { url, table })
}

/// Drops the PostgreSQL test table of `db`.
pub async fn drop_pg_table(db: &Db) {
    if let Db::Postgres { url, table } = db {
        pg_connect(url)
            .await
            .batch_execute(&format!("DROP TABLE IF EXISTS {table}"))
            .await
            .unwrap();
    }
}

pub fn throttle(batch_size: u32) -> ControlHandle {
    ControlHandle::new(Throttle {
        batch_size,
        ..Throttle::default()
    })
    .unwrap()
}

/// Runs a pass to its end.
pub async fn run_pass(
    db: &Db,
    write: u32,
    from: u32,
    checkpoints: Arc<dyn CheckpointStore>,
    control: &ControlHandle,
) -> Result<PassOutcome> {
    let target = db.target();
    let store = open_store(&target).await?;
    Reencryptor::new(target, store, keyring(write), v(from), checkpoints, control)?
        .run()
        .await
}
