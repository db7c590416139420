//! The application's database: a SQLite file or a MySQL/MariaDB database.
//!
//! `--db` is a file path (SQLite, in WAL mode) or a `mysql://user@host:port/db`
//! URL (the password, if any, from `MYSQL_PWD`). Both hold the same
//! `customers(id, ssn, card)` table and answer the same few statements; a
//! row is rewritten only by a compare-and-swap on both stored values.

use std::path::Path;
use std::time::Duration;

use mysql_async::prelude::Queryable as _;
use rusqlite::{Connection, OptionalExtension};

use crate::error::Error;

/// One open database.
pub enum Db {
    /// A SQLite file.
    Sqlite(Connection),
    /// A MySQL or MariaDB connection, driven by its own small runtime.
    Mysql {
        /// The runtime the connection's futures run on.
        runtime: tokio::runtime::Runtime,
        /// The connection.
        conn: mysql_async::Conn,
    },
}

impl Db {
    /// Opens `spec`: a `mysql://` URL, else a SQLite file path.
    pub fn open(spec: &str) -> Result<Self, Error> {
        if spec.starts_with("mysql://") {
            let wrap = |source: mysql_async::Error| Error::Mysql {
                url: spec.to_owned(),
                source,
            };
            let mut opts = mysql_async::OptsBuilder::from_opts(
                mysql_async::Opts::from_url(spec).map_err(|e| wrap(e.into()))?,
            );
            if let Ok(password) = std::env::var("MYSQL_PWD") {
                opts = opts.pass(Some(password));
            }
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(Error::Runtime)?;
            let conn = runtime
                .block_on(mysql_async::Conn::new(opts))
                .map_err(wrap)?;
            return Ok(Self::Mysql { runtime, conn });
        }
        let path = Path::new(spec);
        let wrap = |source| Error::Open {
            path: path.to_owned(),
            source,
        };
        let connection = Connection::open(path).map_err(wrap)?;
        connection
            .busy_timeout(Duration::from_secs(10))
            .map_err(wrap)?;
        connection
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(wrap)?;
        connection
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(wrap)?;
        Ok(Self::Sqlite(connection))
    }

    /// Creates the table when it is missing.
    pub fn create_schema(&mut self) -> Result<(), Error> {
        match self {
            Self::Sqlite(connection) => connection.execute_batch(
                "CREATE TABLE IF NOT EXISTS customers (
                     id   INTEGER PRIMARY KEY,
                     ssn  TEXT NOT NULL,
                     card TEXT NOT NULL
                 )",
            )?,
            Self::Mysql { runtime, conn } => runtime.block_on(conn.query_drop(
                "CREATE TABLE IF NOT EXISTS customers (
                     id   BIGINT PRIMARY KEY,
                     ssn  TEXT NOT NULL,
                     card TEXT NOT NULL
                 ) CHARACTER SET utf8mb4",
            ))?,
        }
        Ok(())
    }

    /// Drops the table (the demo's fresh start on a shared server).
    pub fn drop_table(&mut self) -> Result<(), Error> {
        match self {
            Self::Sqlite(connection) => {
                connection.execute_batch("DROP TABLE IF EXISTS customers")?
            }
            Self::Mysql { runtime, conn } => {
                runtime.block_on(conn.query_drop("DROP TABLE IF EXISTS customers"))?
            }
        }
        Ok(())
    }

    /// Rows in the table.
    pub fn count(&mut self) -> Result<u64, Error> {
        Ok(match self {
            Self::Sqlite(connection) => connection
                .query_row("SELECT COUNT(*) FROM customers", [], |row| {
                    row.get::<_, i64>(0)
                })?
                .unsigned_abs(),
            Self::Mysql { runtime, conn } => runtime
                .block_on(conn.query_first::<u64, _>("SELECT COUNT(*) FROM customers"))?
                .unwrap_or(0),
        })
    }

    /// The largest id, `None` for an empty table.
    pub fn max_id(&mut self) -> Result<Option<i64>, Error> {
        Ok(match self {
            Self::Sqlite(connection) => {
                connection.query_row("SELECT MAX(id) FROM customers", [], |row| row.get(0))?
            }
            Self::Mysql { runtime, conn } => runtime
                .block_on(conn.query_first::<Option<i64>, _>("SELECT MAX(id) FROM customers"))?
                .flatten(),
        })
    }

    /// Inserts `rows` (id, ssn, card) in one transaction.
    pub fn insert(&mut self, rows: &[(i64, String, String)]) -> Result<(), Error> {
        match self {
            Self::Sqlite(connection) => {
                let transaction = connection.transaction()?;
                {
                    let mut insert = transaction.prepare_cached(
                        "INSERT INTO customers (id, ssn, card) VALUES (?1, ?2, ?3)",
                    )?;
                    for (id, ssn, card) in rows {
                        insert.execute(rusqlite::params![id, ssn, card])?;
                    }
                }
                transaction.commit()?;
            }
            Self::Mysql { runtime, conn } => {
                runtime.block_on(async {
                    for chunk in rows.chunks(2_000) {
                        let values = vec!["(?, ?, ?)"; chunk.len()].join(", ");
                        let params: Vec<mysql_async::Value> = chunk
                            .iter()
                            .flat_map(|(id, ssn, card)| {
                                [(*id).into(), ssn.as_str().into(), card.as_str().into()]
                            })
                            .collect();
                        conn.exec_drop(
                            format!("INSERT INTO customers (id, ssn, card) VALUES {values}"),
                            params,
                        )
                        .await?;
                    }
                    Ok::<_, mysql_async::Error>(())
                })?;
            }
        }
        Ok(())
    }

    /// Every row (id, ssn, card) in id order.
    pub fn scan(&mut self, mut visit: impl FnMut(i64, String, String)) -> Result<(), Error> {
        match self {
            Self::Sqlite(connection) => {
                let mut statement =
                    connection.prepare("SELECT id, ssn, card FROM customers ORDER BY id")?;
                let mut rows = statement.query([])?;
                while let Some(row) = rows.next()? {
                    visit(row.get(0)?, row.get(1)?, row.get(2)?);
                }
            }
            Self::Mysql { runtime, conn } => runtime.block_on(async {
                let mut result = conn
                    .query_iter("SELECT id, ssn, card FROM customers ORDER BY id")
                    .await?;
                result
                    .for_each(|row| {
                        let (id, ssn, card) = mysql_async::from_row(row);
                        visit(id, ssn, card);
                    })
                    .await
            })?,
        }
        Ok(())
    }

    /// The (ssn, card) of one row.
    pub fn read(&mut self, id: i64) -> Result<Option<(String, String)>, Error> {
        Ok(match self {
            Self::Sqlite(connection) => connection
                .prepare_cached("SELECT ssn, card FROM customers WHERE id = ?1")?
                .query_row([id], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()?,
            Self::Mysql { runtime, conn } => runtime
                .block_on(conn.exec_first("SELECT ssn, card FROM customers WHERE id = ?", (id,)))?,
        })
    }

    /// Writes `new` where the row still holds `old` (both columns, compared
    /// byte for byte); whether it did.
    pub fn swap(&mut self, id: i64, old: &[String; 2], new: &[String; 2]) -> Result<bool, Error> {
        Ok(match self {
            Self::Sqlite(connection) => {
                connection
                    .prepare_cached(
                        "UPDATE customers SET ssn = ?1, card = ?2 WHERE id = ?3 AND ssn = ?4 AND card = ?5",
                    )?
                    .execute(rusqlite::params![new[0], new[1], id, old[0], old[1]])?
                    == 1
            }
            Self::Mysql { runtime, conn } => runtime.block_on(async {
                conn.exec_drop(
                    "UPDATE customers SET ssn = ?, card = ? WHERE id = ? \
                     AND CAST(ssn AS BINARY) = CAST(? AS BINARY) \
                     AND CAST(card AS BINARY) = CAST(? AS BINARY)",
                    (&new[0], &new[1], id, &old[0], &old[1]),
                )
                .await?;
                Ok::<_, mysql_async::Error>(conn.affected_rows() == 1)
            })?,
        })
    }
}
