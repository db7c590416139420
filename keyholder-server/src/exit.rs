//! How `keyholderd` exits: one status per kind of failure, from
//! `sysexits.h`, so a supervisor (systemd, an orchestrator) can tell a
//! config to fix from a disk to look at from a database that is down,
//! without parsing the message.
//!
//! | status | name | when |
//! |---|---|---|
//! | 0 | | success |
//! | 64 | `EX_USAGE` | the config (or a TLS file it names) is wrong: fix it and start again |
//! | 65 | `EX_DATAERR` | the state store's content refuses the command: corrupt, another format, already initialised, versions that do not fit |
//! | 69 | `EX_UNAVAILABLE` | a database (PostgreSQL state store, a target) cannot be reached or used |
//! | 70 | `EX_SOFTWARE` | a bug: a task panicked, a key could not be split or encrypted |
//! | 71 | `EX_OSERR` | the system refused: hardening (core dumps, ptrace), a port cannot be bound, the runtime cannot start |
//! | 73 | `EX_CANTCREAT` | `init` cannot write a share file (it exists, or the directory is not writable) |
//! | 74 | `EX_IOERR` | the SQLite state store's file or directory failed (a disk error, a lock held past the busy timeout, permissions) |

use crate::config::ConfigError;
use crate::daemon::DaemonError;
use crate::hygiene::HygieneError;
use crate::init::InitError;
use crate::rotation::RotationError;
use crate::run::RunError;
use crate::store::StoreError;
use crate::transport::tls::TlsError;

/// An exit status of `keyholderd` (see the module's table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// 64: the config is wrong.
    Usage = 64,
    /// 65: the stored state refuses the command.
    Data = 65,
    /// 69: a database cannot be reached or used.
    Unavailable = 69,
    /// 70: a bug.
    Software = 70,
    /// 71: the operating system refused.
    Os = 71,
    /// 73: a file cannot be created.
    CantCreate = 73,
    /// 74: an I/O error on the state store.
    Io = 74,
}

impl Exit {
    /// The status as the process returns it.
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// A failure that knows the status `keyholderd` exits with.
pub trait ExitStatus {
    /// The status to exit with.
    fn exit(&self) -> Exit;
}

impl ExitStatus for ConfigError {
    fn exit(&self) -> Exit {
        Exit::Usage
    }
}

impl ExitStatus for TlsError {
    fn exit(&self) -> Exit {
        Exit::Usage
    }
}

impl ExitStatus for HygieneError {
    fn exit(&self) -> Exit {
        Exit::Os
    }
}

impl ExitStatus for StoreError {
    fn exit(&self) -> Exit {
        match self {
            Self::Sqlite { .. } | Self::Io { .. } => Exit::Io,
            Self::Postgres { .. } | Self::Fenced { .. } | Self::NotLeader => Exit::Unavailable,
            Self::Format { .. }
            | Self::Corrupt { .. }
            | Self::WrittenByNewer { .. }
            | Self::VersionExists { .. }
            | Self::UnknownVersion { .. } => Exit::Data,
            Self::Task { .. } => Exit::Software,
            Self::NoCluster => Exit::Usage,
        }
    }
}

impl ExitStatus for DaemonError {
    fn exit(&self) -> Exit {
        match self {
            Self::Store(e) => e.exit(),
            Self::Sealed
            | Self::SealedMeanwhile
            | Self::NotInitialized
            | Self::InitializedAfterStart { .. }
            | Self::VersionsNotHeld { .. } => Exit::Data,
            Self::Plan(_) | Self::Vault(_) => Exit::Data,
            Self::Verification { .. } | Self::Usage(_) => Exit::Data,
        }
    }
}

impl ExitStatus for RotationError {
    fn exit(&self) -> Exit {
        match self {
            Self::Daemon(e) => e.exit(),
            Self::Store(e) => e.exit(),
            Self::Transition(_)
            | Self::VersionReused { .. }
            | Self::KeyNotHeld { .. }
            | Self::ShareRetired { .. }
            | Self::NoShareDealt { .. }
            | Self::Rebuild { .. }
            | Self::RecordsRemain { .. }
            | Self::TargetsGone { .. } => Exit::Data,
            Self::Throttle(_) => Exit::Usage,
            Self::Init(e) => e.exit(),
            Self::Worker(_) | Self::NotLeader { .. } => Exit::Unavailable,
            Self::Stopped => Exit::Software,
        }
    }
}

impl ExitStatus for RunError {
    fn exit(&self) -> Exit {
        match self {
            Self::Hygiene(e) => e.exit(),
            Self::Tls(e) => e.exit(),
            Self::Daemon(e) => e.exit(),
            Self::Bind(_) => Exit::Os,
            Self::Rotation(e) => e.exit(),
        }
    }
}

impl ExitStatus for InitError {
    fn exit(&self) -> Exit {
        match self {
            Self::AlreadyInitialized { .. } => Exit::Data,
            Self::FileExists { .. } | Self::Write { .. } => Exit::CantCreate,
            Self::Recipient { .. } => Exit::Usage,
            Self::Encrypt { .. } | Self::Split(_) => Exit::Software,
            Self::Store(e) => e.exit(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_statuses_are_the_sysexits_numbers() {
        let codes: Vec<u8> = [
            Exit::Usage,
            Exit::Data,
            Exit::Unavailable,
            Exit::Software,
            Exit::Os,
            Exit::CantCreate,
            Exit::Io,
        ]
        .iter()
        .map(|e| e.code())
        .collect();
        assert_eq!(codes, [64, 65, 69, 70, 71, 73, 74]);
    }

    #[test]
    fn a_config_error_is_a_usage_error_and_a_store_file_error_an_io_error() {
        let config = ConfigError::Parse {
            path: "k.toml".into(),
            at: None,
            kind: "duplicate key".into(),
        };
        assert_eq!(config.exit(), Exit::Usage);
        let io = StoreError::Io {
            path: "/var/lib/keyholder/state.db".into(),
            operation: "create the file",
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        };
        assert_eq!(RunError::Daemon(DaemonError::Store(io)).exit(), Exit::Io);
        let corrupt = StoreError::Corrupt { what: "kcv".into() };
        assert_eq!(corrupt.exit(), Exit::Data);
    }
}
