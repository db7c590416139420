//! The example application of `foreground`: a fixed open-loop rate of
//! operations on random rows, 80% reads of the record and 20% single-row
//! updates, over several connections of its own.
//!
//! Open loop: operation k is due at `start + k / rate` whatever happened
//! before, and its latency counts from when it was due, so time spent
//! waiting behind a slow operation is counted, not hidden.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::RngExt as _;

/// The load.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    pub ops_per_sec: u32,
    pub connections: usize,
    pub write_share: f64,
    pub seconds: f64,
    pub rows: i64,
}

/// One connection of the application.
pub trait Conn {
    /// Reads or updates row `id`.
    fn op(&mut self, id: i64, write: bool) -> Result<(), String>;
}

/// A SQLite connection with the busy timeout an application would set.
pub struct SqliteConn(rusqlite::Connection);

impl SqliteConn {
    pub fn open(path: &PathBuf) -> Self {
        let conn = rusqlite::Connection::open(path).unwrap();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        Self(conn)
    }
}

impl Conn for SqliteConn {
    fn op(&mut self, id: i64, write: bool) -> Result<(), String> {
        let result = if write {
            self.0
                .prepare_cached("UPDATE customers SET visits = visits + 1 WHERE id = ?1")
                .and_then(|mut s| s.execute([id]))
                .map(drop)
        } else {
            self.0
                .prepare_cached("SELECT ssn FROM customers WHERE id = ?1")
                .and_then(|mut s| s.query_row([id], |row| row.get::<_, String>(0)))
                .map(drop)
        };
        result.map_err(|e| e.to_string())
    }
}

/// A PostgreSQL connection on a runtime of its own thread.
pub struct PgConn {
    runtime: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
    read: tokio_postgres::Statement,
    write: tokio_postgres::Statement,
}

impl PgConn {
    pub fn open(url: &str, table: &str) -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (client, read, write) = runtime.block_on(async {
            let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            let read = client
                .prepare(&format!("SELECT ssn FROM {table} WHERE id = $1"))
                .await
                .unwrap();
            let write = client
                .prepare(&format!(
                    "UPDATE {table} SET visits = visits + 1 WHERE id = $1"
                ))
                .await
                .unwrap();
            (client, read, write)
        });
        Self {
            runtime,
            client,
            read,
            write,
        }
    }
}

impl Conn for PgConn {
    fn op(&mut self, id: i64, write: bool) -> Result<(), String> {
        let statement = if write { &self.write } else { &self.read };
        self.runtime
            .block_on(self.client.execute(statement, &[&id]))
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

/// Latencies of one run, in microseconds.
#[derive(Debug, Default)]
pub struct Latencies {
    pub reads: Vec<u64>,
    pub writes: Vec<u64>,
    pub errors: u64,
    pub first_error: Option<String>,
    pub seconds: f64,
}

/// p50, p99, p99.9 and max of `values` (microseconds), in milliseconds.
pub fn percentiles(values: &mut [u64]) -> [f64; 4] {
    if values.is_empty() {
        return [0.0; 4];
    }
    values.sort_unstable();
    let at = |p: f64| {
        let index = ((p * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1;
        values[index] as f64 / 1000.0
    };
    [
        at(0.5),
        at(0.99),
        at(0.999),
        values[values.len() - 1] as f64 / 1000.0,
    ]
}

/// Runs the load for its seconds on `load.connections` threads, each with
/// a connection from `connect`.
pub fn run<C: Conn + Send>(load: Load, connect: impl Fn() -> C + Sync) -> Latencies {
    let next = AtomicU64::new(0);
    let interval = 1.0 / f64::from(load.ops_per_sec);
    let total = (load.seconds / interval) as u64;
    let connections: Vec<C> = (0..load.connections).map(|_| connect()).collect();
    let start = Instant::now() + Duration::from_millis(20);
    let parts: Vec<Latencies> = std::thread::scope(|scope| {
        let handles: Vec<_> = connections
            .into_iter()
            .map(|mut conn| {
                let next = &next;
                scope.spawn(move || {
                    let mut rng = rand::rng();
                    let mut mine = Latencies::default();
                    loop {
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        if k >= total {
                            return mine;
                        }
                        let due = start + Duration::from_secs_f64(k as f64 * interval);
                        let now = Instant::now();
                        if due > now {
                            std::thread::sleep(due - now);
                        }
                        let id = rng.random_range(1..=load.rows);
                        let write = rng.random_bool(load.write_share);
                        let result = conn.op(id, write);
                        let took = due.elapsed().as_micros() as u64;
                        match result {
                            Ok(()) if write => mine.writes.push(took),
                            Ok(()) => mine.reads.push(took),
                            Err(error) => {
                                mine.errors += 1;
                                mine.first_error.get_or_insert(error);
                            }
                        }
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("application thread"))
            .collect()
    });
    let mut all = Latencies {
        seconds: start.elapsed().as_secs_f64(),
        ..Latencies::default()
    };
    for part in parts {
        all.reads.extend(part.reads);
        all.writes.extend(part.writes);
        all.errors += part.errors;
        if all.first_error.is_none() {
            all.first_error = part.first_error;
        }
    }
    all
}
