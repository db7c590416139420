//! The CLI's one error enum: a variant per situation, each message saying
//! what happened and what to do next, and the exit code that goes with it
//! (1 for a refused operation, 2 for bad usage).

use std::path::PathBuf;

use crate::files::FileError;
use crate::pki::PkiError;

/// Everything `keyholder` can refuse.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// `pki init` refused.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// A file could not be read or written.
    #[error(transparent)]
    File(#[from] FileError),
    /// The output could not be written (a closed pipe).
    #[error("cannot write the output: {0}")]
    Output(std::io::Error),
    /// A path was expected to be a directory.
    #[error("{} exists and is not a directory", path.display())]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
}

impl CliError {
    /// 2 for bad usage, 1 for everything refused.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Pki(e) if e.is_usage() => 2,
            _ => 1,
        }
    }
}
