//! `keyholderd`: run the daemon, check a config, make the first key.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use crypto_core::KeyVersion;
use keyholder_server::config::{Config, ConfigError};
use keyholder_server::exit::{Exit, ExitStatus as _};
use keyholder_server::init::InitError;
use keyholder_server::run::RunError;
use keyholder_server::store::StoreError;
use keyholder_server::transport::tls::TlsError;

// Every heap block is zeroed when it is freed, so the copies of keys and
// shares that escape the zeroizing types (hyper's and rustls's buffers, JSON
// serialization, intermediate Vecs) leave memory with the block.
#[global_allocator]
static ALLOCATOR: zeroizing_alloc::ZeroAlloc<std::alloc::System> =
    zeroizing_alloc::ZeroAlloc(std::alloc::System);

/// The sealed key daemon of keyholder.
#[derive(Parser)]
#[command(name = "keyholderd", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start sealed and serve the API until SIGTERM.
    Run {
        /// The config file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Validate the config and print every problem.
    CheckConfig {
        /// The config file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Make the first key: one age-encrypted share file per keyholder.
    Init {
        /// The config file.
        #[arg(long)]
        config: PathBuf,
        /// The first version.
        #[arg(long, default_value = "v1")]
        first_version: KeyVersion,
        /// The directory for the share files.
        #[arg(long)]
        out: PathBuf,
    },
    /// Print a shell completion script to stdout.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages of keyholderd and each of its commands into a directory.
    Man {
        /// The directory for keyholderd.1, keyholderd-run.1, ... (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The offline helpers need neither logging nor a runtime.
    match &cli.command {
        Command::Completions { shell } => {
            let mut out = std::io::stdout().lock();
            return match keyholder_server::manual::completions(*shell, Cli::command(), &mut out) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: cannot write the completion script: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::Man { out } => {
            return match keyholder_server::manual::man_pages(Cli::command(), out) {
                Ok(written) => {
                    println!("wrote {} man pages into {}", written.len(), out.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!(
                        "error: cannot write the man pages into {}: {e}; give --out a directory you can write",
                        out.display()
                    );
                    ExitCode::FAILURE
                }
            };
        }
        _ => {}
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal, never into a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KEYHOLDER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Threads scrub their stacks of key copies when they idle or exit
        // after keys left the vault; blocking threads exit soon after use.
        .on_thread_park(keyholder_server::hygiene::on_idle)
        .on_thread_stop(keyholder_server::hygiene::on_idle)
        .thread_keep_alive(std::time::Duration::from_secs(1))
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(Exit::Os.code());
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {failure}");
            ExitCode::from(failure.exit().code())
        }
    }
}

/// Why a command failed; each kind exits with its own status
/// ([`keyholder_server::exit`]).
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Init(#[from] InitError),
    #[error(
        "config {} is valid but {} store(s) cannot be used; fix each of them:\n{}",
        .config.display(),
        .problems.len(),
        .problems.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n")
    )]
    Unreachable {
        config: PathBuf,
        problems: Vec<keyholder_server::config::Problem>,
    },
}

impl Failure {
    fn exit(&self) -> Exit {
        match self {
            Self::Config(e) => e.exit(),
            Self::Tls(e) => e.exit(),
            Self::Run(e) => e.exit(),
            Self::Store(e) => e.exit(),
            Self::Init(e) => e.exit(),
            Self::Unreachable { .. } => Exit::Unavailable,
        }
    }
}

async fn dispatch(command: Command) -> Result<(), Failure> {
    match command {
        Command::Run { config } => {
            let config = Config::load(&config)?;
            keyholder_server::run::run(config).await?;
            Ok(())
        }
        Command::CheckConfig { config } => {
            let config = Config::load(&config)?;
            keyholder_server::transport::tls::server_config(&config.listen)?;
            let unreachable = keyholder_server::check::stores(&config).await;
            if !unreachable.is_empty() {
                return Err(Failure::Unreachable {
                    config: config.path.clone(),
                    problems: unreachable,
                });
            }
            println!(
                "config {} is valid: keyring {}, {} keyholder(s), threshold {}, {} target(s)",
                config.path.display(),
                config.keyring,
                config.keyholders().count(),
                config.threshold,
                config.targets.len()
            );
            Ok(())
        }
        Command::Init {
            config,
            first_version,
            out,
        } => {
            let config = Config::load(&config)?;
            let store = keyholder_server::store::open(&config.state).await?;
            let report =
                keyholder_server::init::init(&config, &*store, first_version, &out).await?;
            println!("made {} (kcv {}); share files:", report.version, report.kcv);
            for file in &report.files {
                println!("  {}", file.display());
            }
            Ok(())
        }
        Command::Completions { .. } | Command::Man { .. } => {
            unreachable!("the offline helpers return before the runtime starts")
        }
    }
}
