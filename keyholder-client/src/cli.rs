//! The command line, as clap types. Parsing only; [`crate::run`] acts on it.
//!
//! The connection flags (`--addr`, `--ca`, `--cert`, `--key`) belong to the
//! commands that talk to the daemon, under their own help heading, and are
//! absent from the offline ones (`pki`, `recover`, `completions`, `man`):
//! [`Cli::command_with_connection`] adds them, [`Cli::parse_args`] reads them.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

/// keyholder: unseal, watch and rotate a keyholderd keyring; hand its keys to
/// the database.
#[derive(Debug, Parser)]
#[command(name = "keyholder", version, about, long_about = None)]
pub struct Cli {
    /// Connection to keyholderd (the flags of the command that talks to it).
    #[arg(skip)]
    pub connect: ConnectArgs,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands that never talk to the daemon.
const OFFLINE: [&str; 4] = ["pki", "recover", "completions", "man"];

impl Cli {
    /// The whole command line, the connection flags on every command that
    /// talks to the daemon (what `--help`, completions and man pages show).
    pub fn command_with_connection() -> clap::Command {
        fn attach(command: clap::Command) -> clap::Command {
            if command.has_subcommands() {
                let names: Vec<String> = command
                    .get_subcommands()
                    .map(|c| c.get_name().to_owned())
                    .filter(|name| !OFFLINE.contains(&name.as_str()))
                    .collect();
                names.iter().fold(command, |command, name| {
                    command.mut_subcommand(name, attach)
                })
            } else {
                // The flags' struct brings its own doc as `about`: keep the command's.
                let about = command.get_about().cloned().unwrap_or_default();
                let long_about = command.get_long_about().cloned();
                let command = ConnectArgs::augment_args(command).about(about);
                match long_about {
                    Some(text) => command.long_about(text),
                    None => command.long_about(None),
                }
            }
        }
        attach(Self::command())
    }

    /// Parses `args` (the program name first), exiting with clap's usage
    /// error and code 2 on a bad command line.
    pub fn parse_args(args: impl IntoIterator<Item = impl Into<OsString> + Clone>) -> Self {
        let matches = Self::command_with_connection().get_matches_from(args);
        Self::from_matches(&matches).unwrap_or_else(|e| e.exit())
    }

    fn from_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut cli = Self::from_arg_matches(matches)?;
        let mut leaf = matches;
        while let Some((_, sub)) = leaf.subcommand() {
            leaf = sub;
        }
        if leaf.try_contains_id("addr").unwrap_or(false) {
            cli.connect = ConnectArgs::from_arg_matches(leaf)?;
        }
        Ok(cli)
    }
}

/// Where the daemon is and who we are.
#[derive(Debug, Args)]
#[command(next_help_heading = "Connection")]
pub struct ConnectArgs {
    /// The daemon's address (`host:port` or `https://host:port`).
    #[arg(long, env = "KEYHOLDER_ADDR", default_value = DEFAULT_ADDR)]
    pub addr: String,
    /// The CA certificate that signed the daemon's certificate (PEM).
    #[arg(long, env = "KEYHOLDER_CACERT", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Your client certificate (PEM).
    #[arg(long, env = "KEYHOLDER_CLIENT_CERT", value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// Your client certificate's private key (PEM, mode 0600).
    #[arg(long, env = "KEYHOLDER_CLIENT_KEY", value_name = "FILE")]
    pub key: Option<PathBuf>,
}

/// Where `--addr` points by default.
const DEFAULT_ADDR: &str = "127.0.0.1:8443";

impl Default for ConnectArgs {
    fn default() -> Self {
        Self {
            addr: DEFAULT_ADDR.to_owned(),
            ca: None,
            cert: None,
            key: None,
        }
    }
}

/// Text for people, JSON for programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Lines for people.
    Text,
    /// The API's JSON documents.
    Json,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Seal state, versions in order, the write version, unseal and rotation progress.
    Status,
    /// Submit your shares (every version in the files, any order) to unseal the daemon.
    Unseal(UnsealArgs),
    /// Make the daemon forget every key (operator).
    Seal,
    /// Fetch or prove your new share during a rotation (keyholder).
    #[command(subcommand)]
    Share(ShareCommand),
    /// Drive a key rotation (operator).
    #[command(subcommand)]
    Rotate(RotateCommand),
    /// Wait for the daemon, then hand the keyring to the database (database role).
    Hook(HookArgs),
    /// Print the audit log; --verify checks its hash chain (operator).
    Audit(AuditArgs),
    /// Run the daemon without sealing it (operator).
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Development/test PKI: certificates, age identities and a keyholder.toml.
    #[command(subcommand)]
    Pki(PkiCommand),
    /// Offline break-glass: rebuild one version's key from share files, without the daemon.
    Recover(RecoverArgs),
    /// Print a shell completion script (bash, zsh or fish) to stdout.
    Completions(CompletionsArgs),
    /// Write the man pages of keyholder and each of its commands into a directory.
    Man(ManArgs),
}

/// `keyholder admin`.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Make keyholderd re-read its config and every file it names (server certificate, client
    /// CA, CRL, principals) and put it in force without sealing; a wrong config or a change that
    /// needs a restart is refused by name and nothing changes (same as SIGHUP).
    Reload,
}

/// `keyholder completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// The shells `keyholder completions` writes for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    /// `source <(keyholder completions bash)`, or into /usr/share/bash-completion/completions/keyholder.
    Bash,
    /// Into a directory of `$fpath` as `_keyholder`.
    Zsh,
    /// Into ~/.config/fish/completions/keyholder.fish.
    Fish,
}

/// `keyholder man`.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// The directory for keyholder.1, keyholder-status.1, ... (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// Parses `v10`, `V10` or `10`.
pub fn parse_version(text: &str) -> Result<crypto_core::KeyVersion, String> {
    text.parse().map_err(|e: crypto_core::Error| e.to_string())
}

/// Parses `30s`, `2m`, `1h30m`.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (write it like 30s, 2m or 1h)"))
}

/// `keyholder unseal`.
#[derive(Debug, Args)]
pub struct UnsealArgs {
    /// Your age-encrypted share files (`-` reads plaintext share lines from stdin).
    #[arg(
        long,
        num_args = 1..,
        value_name = "FILE",
        required_unless_present = "reset",
        conflicts_with = "reset"
    )]
    pub shares: Vec<PathBuf>,
    /// The age identity your share files are encrypted to (mode 0600; may be passphrase-protected).
    #[arg(long, value_name = "AGE_IDENTITY_FILE", env = "KEYHOLDER_IDENTITY")]
    pub identity: Vec<PathBuf>,
    /// Discard the unseal progress gathered so far instead of submitting.
    #[arg(long)]
    pub reset: bool,
}

/// `keyholder share ...`.
#[derive(Debug, Subcommand)]
pub enum ShareCommand {
    /// Fetch your new share; it stays age-encrypted on disk.
    Fetch(ShareFetchArgs),
    /// Prove you can decrypt your new share by submitting it back.
    Verify(ShareVerifyArgs),
}

/// `keyholder share fetch`.
#[derive(Debug, Args)]
pub struct ShareFetchArgs {
    /// The new version (vN).
    #[arg(long, value_parser = parse_version, value_name = "VERSION")]
    pub version: crypto_core::KeyVersion,
    /// Your age identity (checks the share decrypts before writing it).
    #[arg(long, value_name = "AGE_IDENTITY_FILE", env = "KEYHOLDER_IDENTITY")]
    pub identity: PathBuf,
    /// Where to write the share file (must not exist; written mode 0600).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

/// `keyholder share verify`.
#[derive(Debug, Args)]
pub struct ShareVerifyArgs {
    /// The share file `share fetch` wrote.
    #[arg(long, num_args = 1.., required = true, value_name = "FILE")]
    pub shares: Vec<PathBuf>,
    /// Your age identity.
    #[arg(long, value_name = "AGE_IDENTITY_FILE", env = "KEYHOLDER_IDENTITY")]
    pub identity: PathBuf,
}

/// `keyholder rotate ...`.
#[derive(Debug, Subcommand)]
pub enum RotateCommand {
    /// Make the next version, split it and deal one share per keyholder.
    Prepare {
        /// The new version (default: the highest version + 1).
        #[arg(long, value_parser = parse_version, value_name = "VERSION")]
        version: Option<crypto_core::KeyVersion>,
    },
    /// SharesVerified -> DualRead: consumers read both versions, still write the old one.
    Activate,
    /// DualRead -> DualWrite -> Reencrypting: write the new version, start re-encrypting.
    Switch,
    /// The rotation's state and progress; --watch follows it with a progress bar.
    Status {
        /// Poll every second until drained, retired or idle (Ctrl-C stops
        /// watching); while records move, also the share of the time since
        /// the last poll the pass held its locks in the targets. Exits 1 if
        /// the rotation it followed ends idle (rolled back) instead.
        #[arg(long)]
        watch: bool,
    },
    /// Pause the re-encryption worker.
    Pause,
    /// Resume the re-encryption worker.
    Resume,
    /// Change the re-encryption throttle while it runs.
    Throttle {
        /// Target rows per second (0 = unlimited).
        #[arg(long, value_name = "N")]
        rows_per_sec: Option<u64>,
        /// Rows per batch.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000))]
        batch_size: Option<u32>,
    },
    /// Retire the old version: prints the plan; --execute records your approval.
    Retire {
        /// The one version to retire, by name (v9).
        #[arg(value_parser = parse_version, value_name = "VERSION")]
        version: crypto_core::KeyVersion,
        /// Act instead of printing the plan.
        #[arg(long)]
        execute: bool,
    },
    /// Roll the rotation back to the old version: prints the plan; --execute records your approval (the second operator's starts it).
    Rollback {
        /// Act instead of printing the plan.
        #[arg(long)]
        execute: bool,
    },
}

/// How the hook prints the keyring without `--exec`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HookFormat {
    /// The hand-over JSON.
    Json,
    /// `KEYHOLDER_KEYRING='<json>'`, for eval.
    Env,
}

/// `keyholder hook`.
#[derive(Debug, Args)]
pub struct HookArgs {
    /// How long to wait for the daemon to be reachable and unsealed (30s, 2m).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub wait: std::time::Duration,
    /// Output format when printing (default json); not used with --exec.
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub format: Option<HookFormat>,
    /// Start the command after `--` with the keyring on an inherited pipe (fd in KEYHOLDER_KEYRING_FD).
    #[arg(long)]
    pub exec: bool,
    /// Report the calling process's encryption counts with the fetch: the JSON of POST /v1/keyring,
    /// `{"process": ID, "encryptions": [{"version": N, "count": N}]}`. A database process that
    /// refreshes its keyring through the hook sets it.
    #[arg(long, env = "KEYHOLDER_USAGE", value_name = "JSON")]
    pub usage: Option<String>,
    /// The command and its arguments, after `--`.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<std::ffi::OsString>,
}

/// `keyholder audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Check the whole hash chain (read page by page) instead of printing entries.
    #[arg(long, conflicts_with_all = ["since", "limit", "follow"])]
    pub verify: bool,
    /// Print only the entries after this one (its seq; 0 is the start).
    #[arg(long, value_name = "SEQ")]
    pub since: Option<u64>,
    /// Print at most this many entries.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,
    /// Then keep printing new entries as they are written (polls every 2s; Ctrl-C stops).
    #[arg(long, conflicts_with = "limit")]
    pub follow: bool,
}

/// `keyholder recover`.
#[derive(Debug, Args)]
pub struct RecoverArgs {
    /// Age-encrypted share files of the keyholders present (threshold of them).
    #[arg(long, num_args = 1.., required = true, value_name = "FILE")]
    pub shares: Vec<PathBuf>,
    /// The keyholders' age identities (each share file is opened with the one it was made for).
    #[arg(long, num_args = 1.., required = true, value_name = "AGE_IDENTITY_FILE")]
    pub identity: Vec<PathBuf>,
    /// The key check value of the version to rebuild (32 hex characters).
    #[arg(long, value_name = "HEX")]
    pub kcv: String,
    /// Only rebuild this version (default: every version in the files, keeping the one matching --kcv).
    #[arg(long, value_parser = parse_version, value_name = "VERSION")]
    pub version: Option<crypto_core::KeyVersion>,
    /// Where to write the key (base64, mode 0600; must not exist).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

/// `keyholder pki ...`.
#[derive(Debug, Subcommand)]
pub enum PkiCommand {
    /// Make a CA, a server certificate, one client certificate per principal,
    /// one age identity per keyholder and a ready keyholder.toml in DIR.
    Init(PkiInitArgs),
    /// Re-issue the server's (--server) or one principal's certificate from
    /// the dev CA in DIR, for a year from now; the key stays.
    Renew(PkiRenewArgs),
}

/// `keyholder pki renew`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("subject").required(true).args(["server", "principal"])))]
pub struct PkiRenewArgs {
    /// The directory `keyholder pki init` wrote (ca.pem and ca.key in it).
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// Renew the daemon's server certificate (server.pem).
    #[arg(long)]
    pub server: bool,
    /// Renew this principal's client certificate (NAME.pem).
    #[arg(value_name = "NAME")]
    pub principal: Option<String>,
}

/// `keyholder pki init`.
#[derive(Debug, Args)]
pub struct PkiInitArgs {
    /// The directory to write into (created if missing; nothing in it is overwritten).
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// Keyholder principals, comma-separated (at least 2).
    #[arg(long, value_delimiter = ',', required = true, value_name = "NAMES")]
    pub keyholders: Vec<String>,
    /// Operator principals, comma-separated.
    #[arg(long, value_delimiter = ',', required = true, value_name = "NAMES")]
    pub operators: Vec<String>,
    /// Database principals (the hook's identities), comma-separated.
    #[arg(long, value_delimiter = ',', required = true, value_name = "NAMES")]
    pub databases: Vec<String>,
    /// An extra DNS name for the server certificate (besides localhost and 127.0.0.1).
    #[arg(long, value_name = "NAME")]
    pub server_name: Option<String>,
    /// The keyring name in the config.
    #[arg(long, default_value = "orders", value_name = "NAME")]
    pub keyring: String,
    /// The daemon's listen address in the config.
    #[arg(long, default_value = "127.0.0.1:8443", value_name = "ADDR")]
    pub listen: String,
}
