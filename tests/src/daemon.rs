//! A test environment: a temp dir with a PKI, a config, the share files of
//! `keyholderd init`, and the real daemon as a child process.

use std::fs;
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::client::Client;
use crate::pki::{ClientFiles, Pki};

/// The keyholders of every environment, in config order (share index 1, 2, 3).
pub const KEYHOLDERS: [&str; 3] = ["alice", "bob", "carol"];
/// The operator.
pub const OPERATOR: &str = "olivia";
/// A second operator, for what needs two (retiring a version).
pub const SECOND_OPERATOR: &str = "oscar";
/// The database principal.
pub const DATABASE: &str = "db1";

/// A `[[targets]]` entry.
#[derive(Clone, Debug)]
pub struct TargetSpec {
    /// Its name.
    pub name: String,
    /// The SQLite file.
    pub db: PathBuf,
    /// Table, primary key, encrypted column.
    pub table: String,
    /// Primary key column.
    pub primary_key: String,
    /// Encrypted column.
    pub column: String,
}

/// What to put in the config and give `keyholderd init`.
#[derive(Clone, Debug, Default)]
pub struct EnvOptions {
    /// Targets.
    pub targets: Vec<TargetSpec>,
    /// `state_store` (a `postgres://` URL) in place of `state_dir`; the
    /// state dir is made either way.
    pub state_store: Option<String>,
    /// The version `init` makes (`--first-version`); v1 when `None`.
    pub first_version: Option<u32>,
    /// `reencrypt.consumers`.
    pub consumers: Vec<String>,
    /// `reencrypt.batch_size`.
    pub batch_size: Option<u32>,
    /// `reencrypt.rows_per_sec`.
    pub rows_per_sec: Option<u64>,
    /// `reencrypt.workers`.
    pub workers: Option<u32>,
    /// A principal whose second certificate (`<name>-revoked.pem`) the CA
    /// revokes; the daemon is configured with that CRL (`listen.crl`).
    pub revoked: Option<String>,
    /// More TOML, appended verbatim after the targets (e.g. a PostgreSQL
    /// `[[targets]]` entry).
    pub extra_toml: String,
    /// More `[listen]` lines (limits and timeouts).
    pub listen_toml: String,
}

/// One test's world.
pub struct Env {
    /// The temp dir (removed on drop).
    pub tmp: tempfile::TempDir,
    /// The PKI.
    pub pki: Pki,
    /// The config file.
    pub config: PathBuf,
    /// The state dir.
    pub state_dir: PathBuf,
    /// Where init wrote the share files.
    pub shares_dir: PathBuf,
    /// The daemon's stderr log (appended across restarts).
    pub log: PathBuf,
    /// The API address.
    pub addr: SocketAddr,
    /// The version `init` made.
    pub first_version: u32,
}

/// The `keyholderd` binary next to the test executable.
pub fn keyholderd() -> PathBuf {
    binary("keyholderd")
}

/// A binary of the workspace: beside the running executable (a binary such
/// as keyholder-bench, in `target/<profile>`) or in its parent directory (a
/// test executable, in `target/<profile>/deps`).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let mut dirs = exe.ancestors().skip(1).take(2);
    let found = dirs
        .clone()
        .map(|dir| dir.join(name))
        .find(|bin| bin.exists());
    found.unwrap_or_else(|| {
        let dir = dirs.nth(1).unwrap_or(Path::new("target/debug"));
        panic!(
            "{} is missing: build it first with `cargo build --workspace --bins` (deploy/test.sh does)",
            dir.join(name).display()
        )
    })
}

/// A free loopback port.
pub fn free_addr() -> SocketAddr {
    // Never the same port twice in one test: a port released here may be
    // handed out again at once, and two daemons of one test (cluster
    // nodes, a metrics port) would then share it.
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        if !given.contains(&addr.port()) {
            given.push(addr.port());
            return addr;
        }
    }
}

impl Env {
    /// PKI, config and `keyholderd init` (first version v1 unless the
    /// options say otherwise).
    pub fn new(options: EnvOptions) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_owned();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o700)).unwrap();
        let pki = Pki::generate(&root.join("pki"));
        let state_dir = root.join("state");
        fs::create_dir(&state_dir).unwrap();
        fs::set_permissions(&state_dir, fs::Permissions::from_mode(0o700)).unwrap();
        let addr = free_addr();
        let state = match &options.state_store {
            Some(url) => format!("state_store = \"{url}\""),
            None => format!("state_dir = \"{}\"", state_dir.display()),
        };
        let crl = match &options.revoked {
            Some(name) => format!("crl = \"{}\"\n", pki.revoked(name).1.display()),
            None => String::new(),
        };
        let mut config = format!(
            "keyring = \"orders\"\n{state}\n\n[listen]\naddr = \"{addr}\"\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\nhandshake_timeout = \"3s\"\n{crl}{}\n[shamir]\nthreshold = 2\n\n[unseal]\nprogress_ttl = \"15m\"\n\n[verify]\nsample_size = 64\n",
            pki.server.cert.display(),
            pki.server.key.display(),
            pki.ca_pem.display(),
            options.listen_toml,
        );
        for name in KEYHOLDERS {
            pki.client(name);
            let recipient = pki.age_identity(name);
            config.push_str(&format!(
                "\n[[principals]]\nname = \"{name}\"\nroles = [\"keyholder\"]\ncert_identity = \"{name}\"\nage_recipient = \"{recipient}\"\n"
            ));
        }
        for (name, role) in [
            (OPERATOR, "operator"),
            (SECOND_OPERATOR, "operator"),
            (DATABASE, "database"),
        ] {
            pki.client(name);
            config.push_str(&format!(
                "\n[[principals]]\nname = \"{name}\"\nroles = [\"{role}\"]\ncert_identity = \"{name}\"\n"
            ));
        }
        for t in &options.targets {
            config.push_str(&format!(
                "\n[[targets]]\nname = \"{}\"\nstore = \"sqlite://{}\"\ntable = \"{}\"\nprimary_key = \"{}\"\ncolumns = [\"{}\"]\naad = \"none\"\n",
                t.name,
                t.db.display(),
                t.table,
                t.primary_key,
                t.column
            ));
        }
        config.push_str(&options.extra_toml);
        let mut reencrypt = String::new();
        if let Some(size) = options.batch_size {
            reencrypt.push_str(&format!("batch_size = {size}\n"));
        }
        if let Some(rate) = options.rows_per_sec {
            reencrypt.push_str(&format!("rows_per_sec = {rate}\n"));
        }
        if let Some(workers) = options.workers {
            reencrypt.push_str(&format!("workers = {workers}\n"));
        }
        if !options.consumers.is_empty() {
            let names: Vec<String> = options
                .consumers
                .iter()
                .map(|c| format!("\"{c}\""))
                .collect();
            reencrypt.push_str(&format!("consumers = [{}]\n", names.join(", ")));
        }
        if !reencrypt.is_empty() {
            config.push_str(&format!("\n[reencrypt]\n{reencrypt}"));
        }
        let config_path = root.join("keyholder.toml");
        let mut file = fs::File::create(&config_path).unwrap();
        file.write_all(config.as_bytes()).unwrap();
        fs::set_permissions(&config_path, fs::Permissions::from_mode(0o600)).unwrap();
        let env = Self {
            shares_dir: root.join("shares"),
            log: root.join("keyholderd.log"),
            tmp,
            pki,
            config: config_path,
            state_dir,
            addr,
            first_version: options.first_version.unwrap_or(1),
        };
        let out = env.shares_dir.display().to_string();
        let first = format!("v{}", env.first_version);
        let init = env.keyholderd(&["init", "--out", &out, "--first-version", &first]);
        assert!(
            init.status.success(),
            "init failed: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        env
    }

    /// Runs `keyholderd <args> --config <config>` to completion, logging its
    /// stderr to the log file too.
    pub fn keyholderd(&self, args: &[&str]) -> Output {
        let output = Command::new(keyholderd())
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .output()
            .unwrap();
        let mut log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        log.write_all(&output.stdout).unwrap();
        log.write_all(&output.stderr).unwrap();
        output
    }

    /// The share line of `name` for version `version`, decrypted with their
    /// age identity.
    pub fn share_line(&self, name: &str, version: u32) -> String {
        let armored = fs::read(self.shares_dir.join(format!("{name}.v{version}.age"))).unwrap();
        let identity = self.pki.load_age_identity(name);
        let plain = age::decrypt(&identity, &armored).unwrap();
        String::from_utf8(plain).unwrap().trim().to_owned()
    }

    /// A client with principal `name`'s certificate.
    pub fn client(&self, name: &str) -> Client {
        Client::new(self.addr, &self.pki.ca_pem, Some(&self.pki.client(name)))
    }

    /// The real `keyholder` CLI as principal `name`, connected through the
    /// environment variables.
    pub fn keyholder_cli(&self, name: &str) -> Command {
        let files = self.pki.client(name);
        let mut command = Command::new(binary("keyholder"));
        command
            .env("KEYHOLDER_ADDR", self.addr.to_string())
            .env("KEYHOLDER_CACERT", &self.pki.ca_pem)
            .env("KEYHOLDER_CLIENT_CERT", &files.cert)
            .env("KEYHOLDER_CLIENT_KEY", &files.key)
            .env_remove("KEYHOLDER_IDENTITY")
            .stdin(Stdio::null());
        command
    }

    /// A client with the given certificate files (or none).
    pub fn client_with(&self, files: Option<&ClientFiles>) -> Client {
        Client::new(self.addr, &self.pki.ca_pem, files)
    }

    /// Starts `keyholderd run` and waits until it answers.
    pub async fn start(&self) -> Daemon {
        self.start_node(&self.config, self.addr, &self.log).await
    }

    /// Starts `keyholderd run --config config`, logging to `log`, and
    /// waits until it answers on `addr` (a cluster node's own config).
    pub async fn start_node(&self, config: &Path, addr: SocketAddr, log: &Path) -> Daemon {
        let log_text = || strip_ansi(&fs::read_to_string(log).unwrap_or_default());
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(keyholderd())
            .arg("run")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        let mut daemon = Daemon { child: Some(child) };
        let operator = Client::new(addr, &self.pki.ca_pem, Some(&self.pki.client(OPERATOR)));
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(answer) = operator
                .send(reqwest::Method::GET, "/v1/health", None)
                .await
            {
                assert_eq!(answer.status, 200, "{}", answer.body);
                return daemon;
            }
            if let Some(status) = daemon.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("keyholderd exited with {status}:\n{}", log_text());
            }
            assert!(
                Instant::now() < deadline,
                "keyholderd did not answer in time:\n{}",
                log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Everything the daemon logged so far, without the terminal colour
    /// codes it writes even to a file, so fields read `name=value`.
    pub fn log_text(&self) -> String {
        strip_ansi(&fs::read_to_string(&self.log).unwrap_or_default())
    }

    /// Waits (up to 10 s) until the daemon's log contains `needle`: the
    /// daemon logs after the client already saw the effect (a refused
    /// handshake), so a log line is awaited, never assumed.
    pub async fn log_contains(&self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.log_text().contains(needle) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// `text` without ANSI escape sequences (`ESC [ ... letter`).
pub(crate) fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A running `keyholderd`; stopped with SIGTERM on drop.
pub struct Daemon {
    child: Option<Child>,
}

impl Daemon {
    /// Its process id (while it runs).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills it with SIGKILL (no drain, no cleanup: a crash) and reaps it.
    pub fn kill(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).expect("SIGKILL");
        child.wait().expect("reaping the killed daemon");
    }

    /// Sends SIGTERM and waits for the exit; returns whether it exited 0.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}
