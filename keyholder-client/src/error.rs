//! The CLI's one error enum: a variant per situation, each message saying
//! what happened and what to do next, and the exit code that goes with it
//! (1 for a refused operation, 2 for bad usage). No message ever holds a
//! share, a key or a passphrase.

use std::path::PathBuf;

use crypto_core::KeyVersion;

use crate::client::ClientError;
use crate::files::FileError;
use crate::pki::PkiError;

/// Everything `keyholder` can refuse.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// `pki init` refused.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// `pki renew` refused.
    #[error(transparent)]
    Renew(#[from] crate::pki::RenewError),
    /// A file could not be read or written.
    #[error(transparent)]
    File(#[from] FileError),
    /// The daemon refused, or could not be reached.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The output could not be written (a closed pipe).
    #[error("cannot write the output: {0}")]
    Output(std::io::Error),
    /// The async runtime could not start.
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    /// `pki init --dir` names a file.
    #[error("{} exists and is not a directory; choose a directory for --dir", path.display())]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// A connection flag is missing for a command that talks to the daemon.
    #[error("{flag} is needed to reach keyholderd: give {flag} FILE or set {env}")]
    MissingConnectionFlag {
        /// The flag.
        flag: &'static str,
        /// Its environment variable.
        env: &'static str,
    },
    /// A share file is age-encrypted but no identity was given.
    #[error(
        "{} is age-encrypted; give the identity it was encrypted to with --identity FILE",
        path.display()
    )]
    IdentityNeeded {
        /// The share file.
        path: PathBuf,
    },
    /// An identity file does not hold an age identity.
    #[error(
        "{} is not an age identity file ({reason}); --identity takes the file `keyholder pki init` or age-keygen wrote",
        path.display()
    )]
    NotAnIdentity {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The passphrase of a protected identity is wrong.
    #[error("the passphrase for {} is wrong; run the command again and retype it", path.display())]
    WrongPassphrase {
        /// The identity file.
        path: PathBuf,
    },
    /// No passphrase could be read.
    #[error(
        "{} is passphrase-protected and no passphrase could be read ({reason}); run in a terminal or pipe the passphrase on stdin",
        path.display()
    )]
    PassphraseUnavailable {
        /// The identity file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Stdin cannot carry both the shares and a passphrase.
    #[error(
        "{} is passphrase-protected but stdin carries the shares (--shares -); give the shares as files, or run in a terminal to be prompted",
        path.display()
    )]
    PassphraseAndSharesOnStdin {
        /// The identity file.
        path: PathBuf,
    },
    /// A share file was not encrypted to the given identity.
    #[error(
        "{} was not encrypted to the identity in {identity} — is it your file? Use the share file made for you, or the identity it was made for",
        path.display()
    )]
    WrongIdentity {
        /// The share file.
        path: PathBuf,
        /// The identity files tried.
        identity: String,
    },
    /// Two share files open with one identity: one person holds two shares.
    #[error(
        "{} and {} both decrypt with the identity in {} — one person must not hold two shares; each keyholder opens their own file with their own identity (if the config gave two keyholders one age_recipient, fix it and deal new shares)",
        first.display(),
        second.display(),
        identity.display()
    )]
    OneIdentityForTwoFiles {
        /// The identity file.
        identity: PathBuf,
        /// The first share file it opened.
        first: PathBuf,
        /// The second.
        second: PathBuf,
    },
    /// A file is not age-encrypted (or is damaged).
    #[error("{} is not a readable age-encrypted share file: {reason}", path.display())]
    NotAgeFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A share file on disk is in the clear.
    #[error(
        "{} holds plaintext shares; shares rest on disk only age-encrypted: encrypt it to your age recipient, or pipe the lines in with --shares -",
        path.display()
    )]
    PlaintextShareFile {
        /// The file.
        path: PathBuf,
    },
    /// A share file is encrypted with a passphrase instead of a recipient.
    #[error(
        "{} is encrypted with a passphrase, not to an age identity; keyholder share files are encrypted to a keyholder's age recipient",
        path.display()
    )]
    PassphraseShareFile {
        /// The file.
        path: PathBuf,
    },
    /// A share line in a decrypted file does not parse.
    #[error("{} line {line}: {source}", path.display())]
    ShareFile {
        /// The file.
        path: PathBuf,
        /// The line number.
        line: usize,
        /// What crypto-core said.
        source: crypto_core::Error,
    },
    /// A decrypted share file holds no share line.
    #[error("{} holds no share line; is it a keyholder share file?", path.display())]
    NoShares {
        /// The file.
        path: PathBuf,
    },
    /// The same version is in two inputs of one keyholder.
    #[error(
        "{version} is in both {first} and {second}; submit each version's share once (one file per keyholder)"
    )]
    VersionTwice {
        /// The version.
        version: KeyVersion,
        /// The first input.
        first: String,
        /// The second input.
        second: String,
    },
    /// The daemon refused some of the submitted shares.
    #[error(
        "{refused} of {total} shares were refused (see above); check those share files with their keyholder and submit again"
    )]
    SharesRefused {
        /// How many were refused.
        refused: usize,
        /// How many were sent.
        total: usize,
    },
    /// A fetched share is not the one asked for.
    #[error(
        "the daemon sent a share of {found} for {expected}; do not use it, and report this to the operators"
    )]
    UnexpectedShare {
        /// The version asked for.
        expected: KeyVersion,
        /// What the file holds.
        found: String,
    },
    /// `--kcv` does not parse.
    #[error(
        "--kcv `{text}` is not a key check value: it is 32 lowercase hex characters, as `keyholder status --output json` shows"
    )]
    BadKcv {
        /// What was given (a public value).
        text: String,
    },
    /// The shares do not hold the version asked for.
    #[error("the share files hold no share of {version} (they hold {found}); check --version")]
    VersionNotInShares {
        /// The version asked for.
        version: KeyVersion,
        /// What the files hold.
        found: String,
    },
    /// The shares are of more than one keyring.
    #[error("the share files belong to keyrings {found}; recover one keyring at a time")]
    SeveralKeyrings {
        /// The keyrings.
        found: String,
    },
    /// No version rebuilt from the shares matches the KCV.
    #[error(
        "no key rebuilt from these shares matches KCV {kcv} ({tried}); check the KCV of the version you need and that the files are shares of the same split"
    )]
    NoMatchingKey {
        /// The KCV given.
        kcv: String,
        /// What was tried, per version.
        tried: String,
    },
    /// The audit chain does not verify.
    #[error(
        "the audit chain is broken: {0}; keep a copy of the log (keyholder --output json audit) and investigate"
    )]
    AuditChainBroken(keyholder_api::ChainError),
    /// `throttle` with nothing to change.
    #[error("rotate throttle changes nothing without --rows-per-sec or --batch-size")]
    ThrottleNothing,
    /// `--exec` without a command, or a command without `--exec`.
    #[error("{0}")]
    ExecUsage(&'static str),
    /// `--usage` (`KEYHOLDER_USAGE`) does not hold a usage report.
    #[error(
        "--usage (KEYHOLDER_USAGE) is not a usage report: {reason}; it is the JSON body of POST /v1/keyring (docs/protocol.md), {{\"process\": ID, \"encryptions\": [{{\"version\": N, \"count\": N}}]}}"
    )]
    BadUsage {
        /// What was wrong (never the value).
        reason: String,
    },
    /// The hook gave up waiting.
    #[error("gave up after {waited}: {last}; raise --wait, or see `keyholder status`")]
    HookTimedOut {
        /// How long it waited.
        waited: String,
        /// The last reason it could not fetch the keyring.
        last: Box<ClientError>,
    },
    /// The pipe for the child could not be made.
    #[error("cannot create the keyring pipe: {0}")]
    Pipe(nix::Error),
    /// The child could not be started.
    #[error("cannot start {program}: {source}; check the command after --exec --")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// `keyholder man` could not write its pages.
    #[error(
        "cannot write the man pages into {dir}: {source}; give --out a directory you can write"
    )]
    ManPages {
        /// The directory.
        dir: String,
        /// Why.
        source: std::io::Error,
    },
    /// `rotate status --watch` followed a rotation that ended idle instead
    /// of drained.
    #[error(
        "the rotation{rotation} ended without draining: it was rolled back (or cancelled), and the old version is the only live one; `keyholder audit` says who did it"
    )]
    RotationUndone {
        /// ` v9 -> v10`, or empty when the daemon did not say.
        rotation: String,
    },
    /// Signal handling could not be set up.
    #[error("cannot watch for signals: {0}")]
    Signals(std::io::Error),
}

impl CliError {
    /// 2 for bad usage, 1 for everything refused.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Pki(e) if e.is_usage() => 2,
            Self::Client(ClientError::BadAddress { .. })
            | Self::MissingConnectionFlag { .. }
            | Self::IdentityNeeded { .. }
            | Self::PassphraseAndSharesOnStdin { .. }
            | Self::BadKcv { .. }
            | Self::ThrottleNothing
            | Self::BadUsage { .. }
            | Self::ExecUsage(_) => 2,
            _ => 1,
        }
    }
}
