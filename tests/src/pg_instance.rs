//! A PostgreSQL server owned by one test: `initdb` in a temp dir, `pg_ctl`
//! on a free loopback port, so the test may stop, start and restart it
//! freely (the shared `KEYHOLDER_TEST_PG` server must never be restarted).
//!
//! The binaries come from `KEYHOLDER_PG_BIN`, else
//! `/usr/lib/postgresql/15/bin`; a missing `initdb` fails the test, saying
//! where it looked. PostgreSQL refuses to run as root, so as root (CI) every
//! command runs as the `postgres` OS user (`runuser`) in a directory that
//! user owns. The server is stopped when the instance is dropped, also when
//! the test panics.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the server binaries are unless `KEYHOLDER_PG_BIN` says otherwise.
pub const DEFAULT_PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// The OS user the server runs as when the tests run as root.
const SERVER_USER: &str = "postgres";

/// A running (or stopped) test-owned server; stopped on drop.
pub struct PgInstance {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    as_root: bool,
}

impl PgInstance {
    /// Creates a cluster (trust authentication, user `postgres`, fsync off)
    /// and starts it on a free loopback port.
    pub fn start() -> Self {
        let bin = std::env::var_os("KEYHOLDER_PG_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PG_BIN));
        assert!(
            bin.join("initdb").exists(),
            "{} is missing: install the PostgreSQL 15 server binaries (apt-get install postgresql-15) or point KEYHOLDER_PG_BIN at their directory",
            bin.join("initdb").display()
        );
        let as_root = nix::unistd::geteuid().is_root();
        let dir = tempfile::Builder::new().prefix("kh-pg-").tempdir().unwrap();
        if as_root {
            let status = Command::new("chown")
                .arg(format!("{SERVER_USER}:{SERVER_USER}"))
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(status.success(), "chown of {} failed", dir.path().display());
        }
        let port = crate::daemon::free_addr().port();
        let instance = Self {
            dir,
            bin,
            port,
            as_root,
        };
        std::fs::create_dir(instance.socket_dir())
            .and_then(|()| {
                if as_root {
                    Command::new("chown")
                        .arg(format!("{SERVER_USER}:{SERVER_USER}"))
                        .arg(instance.socket_dir())
                        .status()
                        .map(drop)
                } else {
                    Ok(())
                }
            })
            .unwrap();
        instance.run(
            "initdb",
            &[
                "-D".as_ref(),
                instance.data_dir().as_os_str(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "-A".as_ref(),
                "trust".as_ref(),
                "-E".as_ref(),
                "UTF8".as_ref(),
                "--no-sync".as_ref(),
            ],
        );
        instance.start_again();
        instance
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A key=value connection string over the server's Unix socket (which
    /// `pg_hba.conf` may trust when TCP needs TLS).
    pub fn socket_conninfo(&self) -> String {
        format!(
            "host={} port={} user=postgres dbname=postgres",
            self.socket_dir().display(),
            self.port
        )
    }

    /// Turns TLS on (`ssl=on`, the server certificate and key, `ca` to
    /// verify client certificates with), replaces `pg_hba.conf` with
    /// `local all all trust` followed by `hba`, and restarts the server.
    pub fn enable_tls(&self, cert: &Path, key: &Path, ca: &Path, hba: &str) {
        let data = self.data_dir();
        for (from, to) in [(cert, "server.crt"), (key, "server.key"), (ca, "root.crt")] {
            std::fs::copy(from, data.join(to)).unwrap();
            self.own(&data.join(to));
        }
        let mut conf = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
        conf.push_str(
            "\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\nssl_ca_file = 'root.crt'\n",
        );
        std::fs::write(data.join("postgresql.conf"), conf).unwrap();
        std::fs::write(
            data.join("pg_hba.conf"),
            format!("local all all trust\n{hba}\n"),
        )
        .unwrap();
        self.restart();
    }

    /// Mode 0600, owned by the server's user: PostgreSQL refuses a key
    /// file others may read.
    fn own(&self, path: &Path) {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
        if self.as_root {
            let status = Command::new("chown")
                .arg(format!("{SERVER_USER}:{SERVER_USER}"))
                .arg(path)
                .status()
                .unwrap();
            assert!(status.success(), "chown of {} failed", path.display());
        }
    }

    /// Starts the stopped server and waits until it accepts connections.
    pub fn start_again(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.socket_dir().display()
        );
        self.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                self.data_dir().as_os_str(),
                "-l".as_ref(),
                self.log_file().as_os_str(),
                "-o".as_ref(),
                options.as_ref(),
                "-w".as_ref(),
                "start".as_ref(),
            ],
        );
    }

    /// Stops the server (fast shutdown: sessions are terminated with
    /// SQLSTATE 57P01, as in `pg_ctlcluster ... restart`) and waits for it.
    pub fn stop(&self) {
        self.pg_ctl_stop("fast");
    }

    /// Stops and starts it again.
    pub fn restart(&self) {
        self.stop();
        self.start_again();
    }

    /// The server's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log_file()).unwrap_or_default()
    }

    fn pg_ctl_stop(&self, mode: &str) {
        self.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                self.data_dir().as_os_str(),
                "-m".as_ref(),
                mode.as_ref(),
                "-w".as_ref(),
                "stop".as_ref(),
            ],
        );
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    fn log_file(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// Runs one server binary (as `postgres` when root); panics with its
    /// output when it fails.
    fn run(&self, program: &str, args: &[&std::ffi::OsStr]) {
        let output = self
            .command(&self.bin.join(program), args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{program} {args:?} failed ({}):\n{}{}\nserver log:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.log_text()
        );
    }

    fn command(&self, program: &Path, args: &[&std::ffi::OsStr]) -> Command {
        let mut command = if self.as_root {
            let mut command = Command::new("runuser");
            command.args(["-u", SERVER_USER, "--"]).arg(program);
            command
        } else {
            Command::new(program)
        };
        command.args(args).current_dir(self.dir.path());
        command
    }

    fn is_running(&self) -> bool {
        self.data_dir().join("postmaster.pid").exists()
    }
}

impl Drop for PgInstance {
    fn drop(&mut self) {
        if self.is_running() {
            // Immediate: the test is over, nothing needs to be flushed, and
            // a panicking drop must not panic again.
            let _ = self
                .command(
                    &self.bin.join("pg_ctl"),
                    &[
                        "-D".as_ref(),
                        self.data_dir().as_os_str(),
                        "-m".as_ref(),
                        "immediate".as_ref(),
                        "-w".as_ref(),
                        "stop".as_ref(),
                    ],
                )
                .output();
        }
    }
}
