//! The application's one error type. Messages never hold a key or a plaintext.

use std::path::PathBuf;

/// What can stop a subcommand.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The hook did not hand a keyring over.
    #[error(
        "KEYHOLDER_KEYRING_FD is not set; start this program through `keyholder hook --exec -- ...`"
    )]
    NoHandover,
    /// The variable is set but is not a file descriptor number.
    #[error("KEYHOLDER_KEYRING_FD must be a file descriptor number, got {value:?}")]
    BadHandoverFd {
        /// What the variable held.
        value: String,
    },
    /// The descriptor could not be read.
    #[error("cannot read the keyring from file descriptor {fd}: {source}")]
    ReadHandover {
        /// The descriptor.
        fd: u32,
        /// The cause.
        source: std::io::Error,
    },
    /// The hand-over text is not a keyring.
    #[error("the hook's hand-over is not a valid keyring: {0}")]
    Keyring(#[from] crypto_core::Error),
    /// The refresh command could not run.
    #[error("cannot run the keyring refresh command {program:?}: {source}")]
    RefreshSpawn {
        /// The program.
        program: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The refresh command failed.
    #[error("the keyring refresh command exited with {status}")]
    RefreshFailed {
        /// Its exit status.
        status: std::process::ExitStatus,
    },
    /// The SQLite file could not be used.
    #[error("database {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: rusqlite::Error,
    },
    /// A statement failed.
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    /// The MySQL database could not be reached.
    #[error("database {url}: {source}")]
    Mysql {
        /// The URL (it holds no password: that comes from MYSQL_PWD).
        url: String,
        /// The cause.
        source: mysql_async::Error,
    },
    /// A MySQL statement failed.
    #[error("database: {0}")]
    MysqlSql(#[from] mysql_async::Error),
    /// The MySQL client's runtime could not start.
    #[error("cannot start the database client's runtime: {0}")]
    Runtime(std::io::Error),
    /// `seed` found rows already there.
    #[error("table customers already holds {rows} rows; seed into a fresh --db file or database")]
    NotEmpty {
        /// Rows found.
        rows: u64,
    },
    /// `serve` found nothing to serve.
    #[error("table customers is empty; run `seed` first")]
    Empty,
    /// The signal handler could not be installed.
    #[error("cannot watch for SIGTERM/SIGINT: {0}")]
    Signal(std::io::Error),
}
