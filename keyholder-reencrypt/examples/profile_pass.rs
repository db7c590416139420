//! One whole pass over a seeded table, timed phase by phase, for profiling
//! (`perf record`, `valgrind --tool=callgrind`). Not a test and not the
//! bench: `keyholder-bench` is the measure; this is the thing to profile.
//!
//! `cargo run --release -p keyholder-reencrypt --example profile_pass -- ROWS [PG_URL]`
//! (SQLite in a temporary directory unless a PostgreSQL URL is given;
//! checkpoints in a SQLite file as the daemon's state store keeps them).

use std::sync::Arc;
use std::time::Instant;

use crypto_core::{Key, KeyVersion, Keyring};
use keyholder_reencrypt::*;

fn v(n: u32) -> KeyVersion {
    KeyVersion::new(n).unwrap()
}

fn keyring(write: u32) -> Arc<Keyring> {
    let keys = [9u8, 10].map(|n| (v(u32::from(n)), Key::from_slice(&[n; 32]).unwrap()));
    Arc::new(Keyring::new("bench".parse().unwrap(), v(write), keys).unwrap())
}

fn records(rows: i64) -> impl Iterator<Item = (i64, String)> {
    let keyring = keyring(9);
    (1..=rows).map(move |id| {
        let mut plaintext = format!("record-{id}-").into_bytes();
        plaintext.resize(200, b'x');
        (id, keyring.encrypt(&plaintext, b"").unwrap())
    })
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let rows: i64 = args.next().map_or(100_000, |n| n.parse().expect("ROWS"));
    let pg = args.next();
    let dir = tempfile::tempdir().unwrap();
    let store = match &pg {
        None if std::env::var_os("PROFILE_FROM").is_some() => {
            // A file seeded before (PROFILE_DB), so a profile sees the pass only.
            let path = dir.path().join("target.db");
            std::fs::copy(std::env::var_os("PROFILE_FROM").unwrap(), &path).unwrap();
            format!("sqlite://{}", path.display())
        }
        None => {
            // PROFILE_DB keeps the seeded file (before the pass) for a baseline.
            let path = dir.path().join("target.db");
            let mut connection = rusqlite::Connection::open(&path).unwrap();
            connection
                .execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (id INTEGER PRIMARY KEY, payload TEXT);")
                .unwrap();
            let transaction = connection.transaction().unwrap();
            {
                let mut insert = transaction
                    .prepare("INSERT INTO t VALUES (?1, ?2)")
                    .unwrap();
                for (id, payload) in records(rows) {
                    insert.execute(rusqlite::params![id, payload]).unwrap();
                }
            }
            transaction.commit().unwrap();
            drop(connection);
            if let Some(keep) = std::env::var_os("PROFILE_DB") {
                std::fs::copy(&path, keep).unwrap();
            }
            format!("sqlite://{}", path.display())
        }
        Some(url) => {
            let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            client
                .batch_execute("DROP TABLE IF EXISTS kh_profile_pass; CREATE TABLE kh_profile_pass (id BIGINT PRIMARY KEY, payload TEXT);")
                .await
                .unwrap();
            let all: Vec<(i64, String)> = records(rows).collect();
            for chunk in all.chunks(10_000) {
                let ids: Vec<i64> = chunk.iter().map(|row| row.0).collect();
                let payloads: Vec<&str> = chunk.iter().map(|row| row.1.as_str()).collect();
                client
                    .execute("INSERT INTO kh_profile_pass SELECT * FROM unnest($1::bigint[], $2::text[])", &[&ids, &payloads])
                    .await
                    .unwrap();
            }
            client
                .batch_execute("VACUUM ANALYZE kh_profile_pass")
                .await
                .unwrap();
            url.clone()
        }
    };
    let target = TargetConfig {
        name: "profile".into(),
        store,
        table: if pg.is_some() { "kh_profile_pass" } else { "t" }.into(),
        primary_key: "id".into(),
        columns: vec!["payload".into()],
        aad: AadRule::None,
    }
    .validate("profile")
    .unwrap();
    // The engine alone: the daemon's state store is measured by the bench.
    let checkpoints = Arc::new(MemoryCheckpoints::new());
    let data = open_store(&target).await.unwrap();
    if std::env::var_os("PROFILE_PHASES").is_some() {
        let started = Instant::now();
        data.inventory().await.unwrap();
        println!("inventory {:.3} s", started.elapsed().as_secs_f64());
        let started = Instant::now();
        data.counted_inventory().await.unwrap();
        println!(
            "inventory and count in one snapshot {:.3} s",
            started.elapsed().as_secs_f64()
        );
    }
    if std::env::var_os("PROFILE_STORE_ONLY").is_some() {
        // The store's reads and compare-and-swaps alone, timed apart.
        let (mut reading, mut writing) = (0.0, 0.0);
        let mut after: Option<Pk> = None;
        loop {
            let started = Instant::now();
            let page = data.read_page(v(9), after.as_ref(), 1000).await.unwrap();
            reading += started.elapsed().as_secs_f64();
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
            let started = Instant::now();
            data.swap_batch(swaps).await.unwrap();
            writing += started.elapsed().as_secs_f64();
        }
        println!("store only: reading {reading:.3} s, writing {writing:.3} s");
        return;
    }
    let started = Instant::now();
    let control = ControlHandle::new(Throttle {
        batch_size: 1000,
        ..Throttle::default()
    })
    .unwrap();
    let outcome = Reencryptor::new(target, data, keyring(10), v(9), checkpoints, &control)
        .unwrap()
        .run()
        .await
        .unwrap();
    let seconds = started.elapsed().as_secs_f64();
    assert!(matches!(outcome, PassOutcome::Drained(_)));
    println!(
        "{rows} rows in {seconds:.3} s = {:.0} rows/s",
        rows as f64 / seconds
    );
}
