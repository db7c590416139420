//! Shell completions and man pages, generated from the clap command line
//! (`keyholder completions SHELL`, `keyholder man --out DIR`). Offline: it
//! never reads a config, a share or a key.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::cli::{Cli, Shell};

/// Writes the completion script of `shell` to `out`.
pub fn completions(shell: Shell, out: &mut dyn Write) {
    let shell = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(shell, &mut Cli::command_with_connection(), "keyholder", out);
}

/// Writes `keyholder.1` and one page per command (`keyholder-rotate-prepare.1`)
/// into `dir`, creating it; answers the files written, in order.
pub fn man_pages(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    write_man_pages(Cli::command_with_connection(), dir)
}

/// The pages of `command` and each of its subcommands, named
/// `parent-child.1`, hidden ones and `help` left out.
pub fn write_man_pages(mut command: clap::Command, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    command.build();
    let mut written = Vec::new();
    let name = command.get_name().to_owned();
    page(&command, &name, dir, &mut written)?;
    Ok(written)
}

fn page(
    command: &clap::Command,
    name: &str,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> std::io::Result<()> {
    let titled = command.clone().name(name.to_owned());
    let mut text = Vec::new();
    clap_mangen::Man::new(titled).render(&mut text)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn man_pages_put_the_connection_flags_only_on_commands_that_talk_to_the_daemon() {
        let dir = tempfile::tempdir().unwrap();
        let written = man_pages(dir.path()).unwrap();
        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
        assert!(written.len() > 20, "{written:?}");
        let status = read("keyholder-status.1");
        assert!(status.contains("CONNECTION"), "{status}");
        assert!(status.contains("Seal state, versions in order"), "{status}");
        assert!(read("keyholder-rotate-prepare.1").contains("\\-\\-cert"));
        for offline in [
            "keyholder-recover.1",
            "keyholder-pki-init.1",
            "keyholder-man.1",
        ] {
            let page = read(offline);
            assert!(!page.contains("\\-\\-addr"), "{offline}: {page}");
            assert!(!page.contains("CONNECTION"), "{offline}: {page}");
        }
    }

    #[test]
    fn completions_offer_the_connection_flags_of_status() {
        for (shell, flag) in [
            (Shell::Bash, "--addr"),
            (Shell::Zsh, "--addr"),
            (Shell::Fish, "-l addr"),
        ] {
            let mut script = Vec::new();
            completions(shell, &mut script);
            let script = String::from_utf8(script).unwrap();
            assert!(script.contains(flag), "{shell:?}");
            assert!(script.contains("prepare"), "{shell:?}");
        }
    }
}
