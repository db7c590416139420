//! Runs a parsed command line: the CLI's side of every command.

use std::io::Write as _;

use crate::cli::{Cli, Command, Output, PkiCommand, PkiInitArgs};
use crate::error::CliError;
use crate::pki::PkiPlan;

/// Runs `cli`, printing to stdout; errors go back to `main`.
pub fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Pki(PkiCommand::Init(args)) => pki_init(args, cli.output),
    }
}

fn pki_init(args: PkiInitArgs, output: Output) -> Result<(), CliError> {
    let plan = PkiPlan {
        dir: args.dir.clone(),
        keyring: args.keyring,
        keyholders: args.keyholders,
        operators: args.operators,
        databases: args.databases,
        server_name: args.server_name,
        listen: args.listen,
    };
    if args.dir.exists() && !args.dir.is_dir() {
        return Err(CliError::NotADirectory { path: args.dir });
    }
    let written = plan.run()?;
    let mut out = std::io::stdout().lock();
    let result = match output {
        Output::Json => {
            let files: Vec<_> = written
                .iter()
                .map(|w| serde_json::json!({"path": w.path, "what": w.what}))
                .collect();
            writeln!(out, "{}", serde_json::json!({ "written": files }))
        }
        Output::Text => {
            let dir = args.dir.display();
            let mut text = format!("wrote {} files to {dir}:\n", written.len());
            for w in &written {
                let name = w.path.file_name().unwrap_or_default().to_string_lossy();
                text.push_str(&format!("  {name:<16} {}\n", w.what));
            }
            let first = &plan.keyholders[0];
            text.push_str(&format!(
                "next: keyholderd init --config {dir}/keyholder.toml --out {dir}/shares\n\
                 then, as {first}: export KEYHOLDER_CACERT={dir}/ca.pem KEYHOLDER_CLIENT_CERT={dir}/{first}.pem KEYHOLDER_CLIENT_KEY={dir}/{first}.key\n"
            ));
            out.write_all(text.as_bytes())
        }
    };
    result.map_err(CliError::Output)
}
