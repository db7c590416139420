//! Shell completions and man pages of a clap command line (`keyholderd
//! completions SHELL`, `keyholderd man --out DIR`). Offline: it never reads
//! a config, a share or a key.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes the completion script of `shell` for `command` to `out`. The
/// script is made in memory first: clap_complete panics on a failed write,
/// this answers the error (a closed pipe).
pub fn completions(
    shell: clap_complete::Shell,
    mut command: clap::Command,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let name = command.get_name().to_owned();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, name, &mut script);
    out.write_all(&script).and_then(|()| out.flush())
}

/// Writes `NAME.1` and one page per subcommand (`NAME-run.1`) into `dir`,
/// creating it; answers the files written, in order.
pub fn man_pages(mut command: clap::Command, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    command.build();
    let name = command.get_name().to_owned();
    let mut written = Vec::new();
    page(&command, &name, dir, &mut written)?;
    Ok(written)
}

fn page(
    command: &clap::Command,
    name: &str,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> std::io::Result<()> {
    let mut text = Vec::new();
    clap_mangen::Man::new(command.clone().name(name.to_owned())).render(&mut text)?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, text)?;
    written.push(path);
    for sub in command.get_subcommands() {
        if sub.is_hide_set() || sub.get_name() == "help" {
            continue;
        }
        page(sub, &format!("{name}-{}", sub.get_name()), dir, written)?;
    }
    Ok(())
}
