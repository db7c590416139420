//! libpq's password file (`passfile`, `PGPASSFILE`, `~/.pgpass`): lines of
//! `host:port:database:user:password`, `*` matching anything, `\:` and `\\`
//! escaped. Read on connect when the URL carries no password; a file the
//! group or others may read is ignored with a warning, as libpq does. It
//! must never log a line of it.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use tokio_postgres::config::Host;

/// The password for the first host of `config`, when the file has one.
pub(super) fn lookup(file: &Path, config: &tokio_postgres::Config) -> Option<String> {
    let meta = std::fs::metadata(file).ok()?;
    if !meta.is_file() {
        return None;
    }
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            file = %file.display(),
            "password file has group or world access and is ignored; permissions should be 0600 or less"
        );
        return None;
    }
    let text = std::fs::read_to_string(file).ok()?;
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(host)) => host.clone(),
        Some(Host::Unix(_)) | None => "localhost".to_owned(),
    };
    let port = config
        .get_ports()
        .first()
        .copied()
        .unwrap_or(5432)
        .to_string();
    let user = config.get_user()?;
    let database = config.get_dbname().unwrap_or(user);
    find(&text, [host.as_str(), port.as_str(), database, user])
}

fn find(text: &str, wanted: [&str; 4]) -> Option<String> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(fields)
        .find(|fields| {
            fields[..4]
                .iter()
                .zip(wanted)
                .all(|(field, want)| field == "*" || field == want)
        })
        .map(|mut fields| fields.swap_remove(4))
}

/// The five fields of a line, unescaped; `None` for a line with fewer.
fn fields(line: &str) -> Option<Vec<String>> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => fields.last_mut()?.push(chars.next().unwrap_or('\\')),
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => fields.last_mut()?.push(c),
        }
    }
    (fields.len() == 5).then_some(fields)
}

#[cfg(test)]
mod tests {
    use super::find;

    #[test]
    fn first_matching_line_wins_with_wildcards_and_escapes() {
        let text = "# comment\n\
                    db.internal:5432:other:kh:wrong\n\
                    db.internal:*:state:kh:pa\\:ss\\\\word\n\
                    *:*:*:*:fallback\n";
        assert_eq!(
            find(text, ["db.internal", "5432", "state", "kh"]).as_deref(),
            Some("pa:ss\\word")
        );
        assert_eq!(
            find(text, ["elsewhere", "5433", "x", "y"]).as_deref(),
            Some("fallback")
        );
        assert_eq!(find("short:line\n", ["a", "b", "c", "d"]), None);
    }
}
