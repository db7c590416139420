//! The command line, as clap types. Parsing only; [`crate::run`] acts on it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// keyholder: unseal, watch and rotate a keyholderd keyring; hand its keys to
/// the database.
#[derive(Debug, Parser)]
#[command(name = "keyholder", version, about, long_about = None)]
pub struct Cli {
    /// Connection to keyholderd.
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Where the daemon is and who we are.
#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// The daemon's address (`host:port` or `https://host:port`).
    #[arg(
        long,
        global = true,
        env = "KEYHOLDER_ADDR",
        default_value = "127.0.0.1:8443"
    )]
    pub addr: String,
    /// The CA certificate that signed the daemon's certificate (PEM).
    #[arg(long, global = true, env = "KEYHOLDER_CACERT", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Your client certificate (PEM).
    #[arg(
        long,
        global = true,
        env = "KEYHOLDER_CLIENT_CERT",
        value_name = "FILE"
    )]
    pub cert: Option<PathBuf>,
    /// Your client certificate's private key (PEM, mode 0600).
    #[arg(long, global = true, env = "KEYHOLDER_CLIENT_KEY", value_name = "FILE")]
    pub key: Option<PathBuf>,
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
    /// Development/test PKI: certificates, age identities and a keyholder.toml.
    #[command(subcommand)]
    Pki(PkiCommand),
}

/// `keyholder pki ...`.
#[derive(Debug, Subcommand)]
pub enum PkiCommand {
    /// Make a CA, a server certificate, one client certificate per principal,
    /// one age identity per keyholder and a ready keyholder.toml in DIR.
    Init(PkiInitArgs),
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
