//! Re-encryption rows/s beside the store's own limit, measured in the same run.
//!
//! `pass`: a full [`Reencryptor`] pass (keyset pages, decrypt, encrypt, prove,
//! compare-and-swap, checkpoints) over `KEYHOLDER_BENCH_ROWS` rows (default
//! 20,000) of 200-byte plaintexts in one column. `store_only`: the same pages
//! read and the same rows compare-and-swapped through the same store, with the
//! crypto replaced by a prefix rewrite. The ratio pass / store_only is printed
//! at the end. SQLite always; PostgreSQL too when `KEYHOLDER_TEST_PG` is set;
//! MySQL/MariaDB too when `KEYHOLDER_TEST_MYSQL` is set, beside an independent
//! baseline: the `mariadb` (or `mysql`) shell running one set-based `UPDATE`
//! of the same table (no crypto, no batches, no compare-and-swap).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use crypto_core::{Key, KeyVersion, Keyring};
use keyholder_reencrypt::*;
use mysql_async::prelude::Queryable as _;

const PLAINTEXT_BYTES: usize = 200;

fn rows() -> i64 {
    std::env::var("KEYHOLDER_BENCH_ROWS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(20_000)
}

fn v(n: u32) -> KeyVersion {
    KeyVersion::new(n).unwrap()
}

fn keyring(write: u32) -> Arc<Keyring> {
    let keys = [9u8, 10].map(|n| (v(u32::from(n)), Key::from_slice(&[n; 32]).unwrap()));
    Arc::new(Keyring::new("bench".parse().unwrap(), v(write), keys).unwrap())
}

fn records(rows: i64) -> Vec<(i64, String)> {
    let keyring = keyring(9);
    (1..=rows)
        .map(|id| {
            let mut plaintext = format!("record-{id}-").into_bytes();
            plaintext.resize(PLAINTEXT_BYTES, b'x');
            (id, keyring.encrypt(&plaintext, b"").unwrap())
        })
        .collect()
}

/// One database the bench resets before each measured pass.
enum Bench {
    Sqlite { template: PathBuf, live: PathBuf },
    Postgres { url: String, table: String },
    Mysql { url: String, table: String },
}

impl Bench {
    fn target(&self) -> Target {
        let (store, table) = match self {
            Bench::Sqlite { live, .. } => (format!("sqlite://{}", live.display()), "bench"),
            Bench::Postgres { url, table } | Bench::Mysql { url, table } => {
                (url.clone(), table.as_str())
            }
        };
        TargetConfig {
            name: "bench".into(),
            store,
            table: table.into(),
            primary_key: "id".into(),
            columns: vec!["payload".into()],
            aad: AadRule::None,
        }
        .validate("bench")
        .unwrap()
    }

    async fn reset(&self) {
        match self {
            Bench::Sqlite { template, live } => {
                for suffix in ["-wal", "-shm"] {
                    let _ = std::fs::remove_file(with_suffix(live, suffix));
                }
                std::fs::copy(template, live).unwrap();
            }
            Bench::Postgres { url, table } => {
                pg(url)
                    .await
                    .batch_execute(&format!(
                        "TRUNCATE {table}; INSERT INTO {table} SELECT * FROM {table}_template; ANALYZE {table}"
                    ))
                    .await
                    .unwrap();
            }
            Bench::Mysql { url, table } => {
                let mut conn = mysql(url).await;
                conn.query_drop(format!("TRUNCATE {table}")).await.unwrap();
                conn.query_drop(format!(
                    "INSERT INTO {table} SELECT * FROM {table}_template"
                ))
                .await
                .unwrap();
                conn.query_drop(format!("ANALYZE TABLE {table}"))
                    .await
                    .unwrap();
            }
        }
    }
}

async fn mysql(url: &str) -> mysql_async::Conn {
    mysql_async::Conn::new(mysql_async::Opts::from_url(url).unwrap())
        .await
        .expect("KEYHOLDER_TEST_MYSQL is set but MySQL/MariaDB is unreachable")
}

async fn mysql_bench(url: String, rows: i64) -> Bench {
    let table = format!("kh_bench_{}", std::process::id());
    let mut conn = mysql(&url).await;
    for sql in [
        format!("DROP TABLE IF EXISTS {table}"),
        format!("DROP TABLE IF EXISTS {table}_template"),
        format!("CREATE TABLE {table} (id BIGINT PRIMARY KEY, payload TEXT) CHARACTER SET utf8mb4"),
        format!("CREATE TABLE {table}_template LIKE {table}"),
    ] {
        conn.query_drop(sql).await.unwrap();
    }
    for chunk in records(rows).chunks(2_000) {
        let values = vec!["(?, ?)"; chunk.len()].join(", ");
        let params: Vec<mysql_async::Value> = chunk
            .iter()
            .flat_map(|(id, payload)| [(*id).into(), payload.as_str().into()])
            .collect();
        conn.exec_drop(
            format!("INSERT INTO {table}_template (id, payload) VALUES {values}"),
            params,
        )
        .await
        .unwrap();
    }
    Bench::Mysql { url, table }
}

/// The independent baseline: the server's own shell client runs one
/// set-based UPDATE of every row (the prefix rewrite of `store_only`). Returns
/// the rows/s over `runs` runs, each on a fresh copy of the table.
fn mysql_shell_baseline(runtime: &tokio::runtime::Runtime, bench: &Bench, runs: u32) -> f64 {
    let Bench::Mysql { url, table } = bench else {
        unreachable!("a mysql bench")
    };
    let opts = mysql_async::Opts::from_url(url).unwrap();
    let shell = ["mariadb", "mysql"]
        .into_iter()
        .find(|shell| {
            std::process::Command::new(shell)
                .arg("--version")
                .output()
                .is_ok_and(|out| out.status.success())
        })
        .expect("the mariadb or mysql shell client for the baseline");
    let mut elapsed = Duration::ZERO;
    for _ in 0..runs {
        runtime.block_on(bench.reset());
        let started = Instant::now();
        let status = std::process::Command::new(shell)
            .args([
                "--host",
                opts.ip_or_hostname(),
                "--port",
                &opts.tcp_port().to_string(),
                "--user",
                opts.user().unwrap_or("root"),
                opts.db_name().unwrap_or("test"),
                "--execute",
                &format!("UPDATE {table} SET payload = CONCAT('V10:', SUBSTRING(payload, 4))"),
            ])
            .status()
            .unwrap();
        elapsed += started.elapsed();
        assert!(status.success(), "the {shell} shell's UPDATE failed");
    }
    (rows() as f64 * f64::from(runs)) / elapsed.as_secs_f64()
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

async fn pg(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("KEYHOLDER_TEST_PG is set but PostgreSQL is unreachable");
    tokio::spawn(connection);
    client
}

fn sqlite_bench(dir: &Path, rows: i64) -> Bench {
    let template = dir.join("template.db");
    let mut connection = rusqlite::Connection::open(&template).unwrap();
    connection
        .execute_batch(
            "PRAGMA journal_mode = WAL; CREATE TABLE bench (id INTEGER PRIMARY KEY, payload TEXT);",
        )
        .unwrap();
    let transaction = connection.transaction().unwrap();
    {
        let mut insert = transaction
            .prepare("INSERT INTO bench (id, payload) VALUES (?1, ?2)")
            .unwrap();
        for (id, payload) in records(rows) {
            insert.execute(rusqlite::params![id, payload]).unwrap();
        }
    }
    transaction.commit().unwrap();
    drop(connection);
    Bench::Sqlite {
        template,
        live: dir.join("live.db"),
    }
}

async fn postgres_bench(url: String, rows: i64) -> Bench {
    let table = format!("kh_bench_{}", std::process::id());
    let client = pg(&url).await;
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {table}; DROP TABLE IF EXISTS {table}_template;
             CREATE TABLE {table} (id BIGINT PRIMARY KEY, payload TEXT);
             CREATE TABLE {table}_template (id BIGINT PRIMARY KEY, payload TEXT);"
        ))
        .await
        .unwrap();
    for chunk in records(rows).chunks(10_000) {
        let ids: Vec<i64> = chunk.iter().map(|row| row.0).collect();
        let payloads: Vec<&str> = chunk.iter().map(|row| row.1.as_str()).collect();
        client
            .execute(
                &format!(
                    "INSERT INTO {table}_template SELECT * FROM unnest($1::bigint[], $2::text[])"
                ),
                &[&ids, &payloads],
            )
            .await
            .unwrap();
    }
    Bench::Postgres { url, table }
}

/// The engine's pass.
async fn pass(target: Target) {
    let store = open_store(&target).await.unwrap();
    let control = ControlHandle::new(Throttle {
        batch_size: 1000,
        ..Throttle::default()
    })
    .unwrap();
    let outcome = Reencryptor::new(
        target,
        store,
        keyring(10),
        v(9),
        Arc::new(MemoryCheckpoints::new()),
        &control,
    )
    .unwrap()
    .run()
    .await
    .unwrap();
    assert!(matches!(outcome, PassOutcome::Drained(_)));
}

/// The same pages and compare-and-swaps with no crypto: the store's limit.
async fn store_only(target: Target) {
    let store = open_store(&target).await.unwrap();
    let mut after: Option<Pk> = None;
    loop {
        let page = store.read_page(v(9), after.as_ref(), 1000).await.unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.pk.clone());
        let swaps = page
            .into_iter()
            .map(|row| RowSwap {
                pk: row.pk,
                cells: row
                    .values
                    .into_iter()
                    .map(|value| {
                        value.map(|old| CellSwap {
                            new: format!("V10:{}", &old[3..]),
                            old,
                        })
                    })
                    .collect(),
            })
            .collect();
        store.swap_batch(swaps).await.unwrap();
    }
}

type Totals = Arc<Mutex<Vec<(String, Duration, u64)>>>;

fn measure(
    criterion: &mut Criterion,
    runtime: &tokio::runtime::Runtime,
    name: &str,
    bench: &Bench,
    totals: &Totals,
) {
    let rows = rows();
    let mut group = criterion.benchmark_group(name);
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(100))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Elements(rows as u64));
    for variant in ["pass", "store_only"] {
        let totals = totals.clone();
        group.bench_function(variant, |bencher| {
            bencher.iter_custom(|iterations| {
                let mut elapsed = Duration::ZERO;
                for _ in 0..iterations {
                    runtime.block_on(bench.reset());
                    let target = bench.target();
                    let started = Instant::now();
                    runtime.block_on(async {
                        match variant {
                            "pass" => pass(target).await,
                            _ => store_only(target).await,
                        }
                    });
                    elapsed += started.elapsed();
                }
                totals
                    .lock()
                    .unwrap()
                    .push((format!("{name}/{variant}"), elapsed, iterations));
                elapsed
            });
        });
    }
    group.finish();
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let totals: Totals = Arc::default();
    let rows = rows();
    let dir = tempfile::tempdir().unwrap();
    let sqlite = sqlite_bench(dir.path(), rows);
    measure(&mut criterion, &runtime, "sqlite", &sqlite, &totals);
    let mut names = vec!["sqlite"];
    if let Ok(url) = std::env::var("KEYHOLDER_TEST_PG") {
        let postgres = runtime.block_on(postgres_bench(url, rows));
        measure(&mut criterion, &runtime, "postgres", &postgres, &totals);
        names.push("postgres");
        if let Bench::Postgres { url, table } = &postgres {
            runtime.block_on(async {
                pg(url)
                    .await
                    .batch_execute(&format!("DROP TABLE {table}; DROP TABLE {table}_template"))
                    .await
                    .unwrap();
            });
        }
    }
    let mut baseline = None;
    if let Ok(url) = std::env::var("KEYHOLDER_TEST_MYSQL") {
        let bench = runtime.block_on(mysql_bench(url, rows));
        measure(&mut criterion, &runtime, "mysql", &bench, &totals);
        names.push("mysql");
        baseline = Some(mysql_shell_baseline(&runtime, &bench, 5));
        if let Bench::Mysql { url, table } = &bench {
            runtime.block_on(async {
                let mut conn = mysql(url).await;
                conn.query_drop(format!("DROP TABLE {table}"))
                    .await
                    .unwrap();
                conn.query_drop(format!("DROP TABLE {table}_template"))
                    .await
                    .unwrap();
            });
        }
    }
    criterion.final_summary();

    let totals = totals.lock().unwrap();
    let rate = |key: &str| {
        let (elapsed, iterations) = totals.iter().filter(|(name, ..)| name == key).fold(
            (Duration::ZERO, 0),
            |(time, count), (_, elapsed, iterations)| (time + *elapsed, count + iterations),
        );
        (rows as f64 * iterations as f64) / elapsed.as_secs_f64()
    };
    println!("\nrows: {rows}, plaintext: {PLAINTEXT_BYTES} bytes, batch: 1000");
    for name in names {
        let pass = rate(&format!("{name}/pass"));
        let store = rate(&format!("{name}/store_only"));
        println!(
            "{name:>8}: re-encryption {pass:>9.0} rows/s, store only {store:>9.0} rows/s, ratio {:.2}",
            pass / store
        );
    }
    if let Some(shell) = baseline {
        let pass = rate("mysql/pass");
        println!(
            "   mysql: one set-based UPDATE in the shell {shell:>9.0} rows/s (no crypto, no CAS); re-encryption / shell {:.2}",
            pass / shell
        );
    }
}
