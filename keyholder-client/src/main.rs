//! `keyholder`: parse, run, map the error to its exit code.

use std::process::ExitCode;

// Shares, identities and recovered keys pass through buffers this crate
// does not own; every heap block is zeroed when freed.
#[global_allocator]
static ALLOCATOR: zeroizing_alloc::ZeroAlloc<std::alloc::System> =
    zeroizing_alloc::ZeroAlloc(std::alloc::System);

fn main() -> ExitCode {
    let cli = keyholder_client::cli::Cli::parse_args(std::env::args_os());
    match keyholder_client::run::run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
