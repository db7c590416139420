//! One benchmark's world: the real `keyholderd` (release) over real mTLS
//! with one target, driven through a rotation v9 -> v10 the way people do it
//! (the tests crate's environment and steps), and the table it moves.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crypto_core::{Key, KeyVersion, envelope};
use keyholder_api::{RotationState, RotationStatus};
pub use keyholder_tests::rotation::v;
use keyholder_tests::{Client, Daemon, Env, EnvOptions};
use serde_json::json;

/// Where the target's table lives.
#[derive(Clone, Debug)]
pub enum Store {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL database and a table name of this run.
    Postgres { url: String, table: String },
}

impl Store {
    /// The table's name.
    pub fn table(&self) -> &str {
        match self {
            Self::Sqlite(_) => "customers",
            Self::Postgres { table, .. } => table,
        }
    }

    /// `sqlite` or `postgres`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::Postgres { .. } => "postgres",
        }
    }

    fn location(&self) -> String {
        match self {
            Self::Sqlite(path) => format!("sqlite://{}", path.display()),
            Self::Postgres { url, .. } => url.clone(),
        }
    }
}

/// The plaintext of record `id`: distinct, 122 bytes, so a sealed record
/// is 200 characters (as in the figures).
pub fn plaintext(id: i64) -> String {
    let head = format!(
        "customer {id:010} ssn {:09} ",
        id.wrapping_mul(7919) % 1_000_000_000
    );
    format!("{head}{}", "x".repeat(122 - head.len()))
}

/// Seals records `ids`, split over the cores: record `id` under
/// `keys[pick(id)]`.
pub fn seal_all(
    ids: std::ops::RangeInclusive<i64>,
    keys: &[(KeyVersion, Key)],
    pick: fn(i64) -> usize,
) -> Vec<String> {
    let ids: Vec<i64> = ids.collect();
    let parts = std::thread::available_parallelism().map_or(1, usize::from);
    let chunk = ids.len().div_ceil(parts).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = ids
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|&id| {
                            let (version, key) = &keys[pick(id)];
                            envelope::seal(key, *version, plaintext(id).as_bytes(), b"")
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|handle| handle.join().expect("sealing thread"))
            .collect()
    })
}

/// The throttle the daemon starts with.
#[derive(Clone, Copy, Debug)]
pub struct Tuning {
    pub rows_per_sec: u64,
    pub batch_size: u32,
    /// `reencrypt.workers`; 1 leaves the setting out of the config.
    pub workers: u32,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            rows_per_sec: 0,
            batch_size: 1000,
            workers: 1,
        }
    }
}

/// A daemon with one target, unsealed at v9.
pub struct World {
    pub env: Env,
    pub daemon: Option<Daemon>,
    pub v9: Key,
    v9_lines: [String; 2],
    v10: Option<(Key, [String; 2])>,
    peak_rss_kib: u64,
    /// The operator's client for status polls, kept so its connection is
    /// reused: a new client per poll cost a TLS handshake every 10 ms on
    /// both sides, taken from the pass being measured.
    status: Client,
}

/// When a pass was seen to reach each step (status polled every 10 ms).
pub struct Milestones {
    /// The first record moved: the inventory before it is over.
    pub first_write: Instant,
    /// The moved count reached every record: the final scans begin.
    pub all_moved: Instant,
    /// Drained: the final scans found nothing left.
    pub drained: Instant,
}

impl World {
    /// Makes the environment (PKI, config, `keyholderd init` at v9) for a
    /// target whose table already exists, starts the daemon and unseals it.
    pub async fn start(store: Store, tuning: Tuning) -> Self {
        let target = format!(
            "\n[[targets]]\nname = \"bench\"\nstore = \"{}\"\ntable = \"{}\"\nprimary_key = \"id\"\ncolumns = [\"ssn\"]\naad = \"none\"\n\n[rotation]\nmin_verified = 2\n",
            store.location(),
            store.table()
        );
        let env = Env::new(EnvOptions {
            first_version: Some(9),
            consumers: vec![keyholder_tests::daemon::DATABASE.to_owned()],
            batch_size: Some(tuning.batch_size),
            rows_per_sec: Some(tuning.rows_per_sec),
            workers: (tuning.workers > 1).then_some(tuning.workers),
            extra_toml: target,
            ..EnvOptions::default()
        });
        let daemon = env.start().await;
        let v9_lines = [env.share_line("alice", 9), env.share_line("bob", 9)];
        let v9 = env.rebuild_key(9, &[&v9_lines[0], &v9_lines[1]]).await;
        let status = env.client(keyholder_tests::daemon::OPERATOR);
        let mut world = Self {
            status,
            env,
            daemon: Some(daemon),
            v9,
            v9_lines,
            v10: None,
            peak_rss_kib: 0,
        };
        world.unseal().await;
        world
    }

    /// alice then bob submit their lines (v9, and v10 once it exists);
    /// returns how long bob's request, the last share, took to answer.
    pub async fn unseal(&mut self) -> Duration {
        let lines = |i: usize| {
            let mut lines = vec![self.v9_lines[i].clone()];
            if let Some((_, new)) = &self.v10 {
                lines.push(new[i].clone());
            }
            lines
        };
        let (alice, bob) = (lines(0), lines(1));
        let first = self.env.client("alice");
        let answer = first
            .unseal(&alice.iter().map(String::as_str).collect::<Vec<_>>())
            .await;
        assert_eq!(answer.status, 200, "alice: {}", answer.body);
        let last = self.env.client("bob");
        let bob: Vec<&str> = bob.iter().map(String::as_str).collect();
        let started = Instant::now();
        let answer = last.unseal(&bob).await;
        let took = started.elapsed();
        assert_eq!(answer.status, 200, "bob: {}", answer.body);
        let response: keyholder_api::UnsealResponse = answer.json();
        assert!(!response.sealed, "{response:?}");
        took
    }

    /// `prepare`, alice and bob verify their v10 shares, `activate`, db1
    /// fetches its keyring: two live versions. Returns the v10 key.
    pub async fn prepare_and_activate(&mut self) -> Key {
        self.env.operate("/v1/rotation/prepare", json!({})).await;
        let mut lines = Vec::new();
        for name in ["alice", "bob"] {
            let line = self.env.fetch_new_share(name, 10).await;
            self.env.verify_new_share(name, &line).await;
            lines.push(line);
        }
        let key = self.env.rebuild_key(10, &[&lines[0], &lines[1]]).await;
        self.env.operate("/v1/rotation/activate", json!({})).await;
        self.env.database_keyring().await;
        self.v10 = Some((key.clone(), [lines[0].clone(), lines[1].clone()]));
        key
    }

    /// `switch`, and db1 fetches the keyring that writes v10 (the last
    /// acknowledgement the worker waits for). Returns when switch answered.
    pub async fn switch(&self) -> Instant {
        let started = Instant::now();
        self.env.operate("/v1/rotation/switch", json!({})).await;
        self.env.database_keyring().await;
        started
    }

    /// Polls until the rotation is drained; when it was seen to write its
    /// first record, to have moved `records` and to be drained.
    pub async fn wait_drained(&self, records: u64, timeout: Duration) -> Milestones {
        let deadline = Instant::now() + timeout;
        let (mut first_write, mut all_moved) = (None, None);
        loop {
            let status = self.rotation().await;
            let now = Instant::now();
            if status.rows_done > 0 {
                first_write.get_or_insert(now);
            }
            if status.rows_done >= records {
                all_moved.get_or_insert(now);
            }
            if status.state == RotationState::Drained {
                return Milestones {
                    first_write: first_write.unwrap_or(now),
                    all_moved: all_moved.unwrap_or(now),
                    drained: now,
                };
            }
            assert!(
                status.last_error.is_none(),
                "the pass failed: {:?}",
                status.last_error
            );
            assert!(now < deadline, "not drained in {timeout:?}: {status:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The rotation's status, on the kept connection (a fresh one after the
    /// daemon restarted).
    pub async fn rotation(&self) -> RotationStatus {
        let answer = match self.status.try_get("/v1/rotation").await {
            Some(answer) => answer,
            None => {
                self.env
                    .client(keyholder_tests::daemon::OPERATOR)
                    .get("/v1/rotation")
                    .await
            }
        };
        assert_eq!(answer.status, 200, "{}", answer.body);
        answer.json()
    }

    /// Sets the throttle of the running pass.
    pub async fn throttle(&self, rows_per_sec: u64, batch_size: u32) {
        self.env
            .operate(
                "/v1/rotation/throttle",
                json!({"rows_per_sec": rows_per_sec, "batch_size": batch_size}),
            )
            .await;
    }

    /// `pause` or `resume`; returns once the daemon answered.
    pub async fn control(&self, what: &str) {
        self.env
            .operate(&format!("/v1/rotation/{what}"), json!({}))
            .await;
    }

    /// Samples the daemon's peak RSS (VmHWM) into the world's maximum.
    pub fn sample_rss(&mut self) -> u64 {
        if let Some(pid) = self.daemon.as_ref().and_then(Daemon::pid) {
            self.peak_rss_kib = self.peak_rss_kib.max(vm_hwm_kib(pid).unwrap_or(0));
        }
        self.peak_rss_kib
    }

    /// Stops the daemon (SIGTERM); its peak RSS is kept.
    pub fn stop(&mut self) {
        self.sample_rss();
        if let Some(mut daemon) = self.daemon.take() {
            daemon.stop();
        }
    }

    /// Stops and starts the daemon (sealed).
    pub async fn restart(&mut self) {
        self.stop();
        self.daemon = Some(self.env.start().await);
    }

    /// The daemon's peak RSS across its runs, in KiB.
    pub fn peak_rss_kib(&mut self) -> u64 {
        self.sample_rss()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `VmHWM` of process `pid`, in KiB.
pub fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}
