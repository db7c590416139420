//! `keyholder pki`: the dev PKI's own files (`ca.pem`/`ca.key`,
//! `server.pem`/`server.key`) share one directory with the principals'
//! `NAME.pem`/`NAME.key`, so a principal may not be named `ca` or
//! `server`, and `pki renew` never re-issues the CA as if it were a
//! principal.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::path::Path;
use std::process::{Command, Output};

use keyholder_tests::daemon::binary;

fn keyholder(args: &[&str], dir: &Path) -> Output {
    Command::new(binary("keyholder"))
        .args(args)
        .arg("--dir")
        .arg(dir)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn pki_renew_refuses_the_ca_and_leaves_ca_pem_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pki");
    let init = [
        "pki",
        "init",
        "--keyholders",
        "alice,bob",
        "--operators",
        "olga",
        "--databases",
        "db1",
    ];
    let out = keyholder(&init, &dir);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let ca_before = std::fs::read(dir.join("ca.pem")).unwrap();
    let files_before = names_in(&dir);

    let out = keyholder(&["pki", "renew", "ca"], &dir);
    assert_eq!(
        text(&out.stderr),
        "error: `ca` is the dev CA, not a principal: pki renew re-issues the server's certificate (--server) or a principal's (NAME); a new CA is made by a new `keyholder pki init`\n"
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    assert_eq!(std::fs::read(dir.join("ca.pem")).unwrap(), ca_before);
    assert_eq!(names_in(&dir), files_before);

    // A principal's renewal still works, and leaves the CA as it was.
    let out = keyholder(&["pki", "renew", "alice"], &dir);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(std::fs::read(dir.join("ca.pem")).unwrap(), ca_before);
}

#[test]
fn pki_init_refuses_a_principal_named_ca_or_server_and_writes_nothing() {
    for (flag, names, taken) in [
        ("--keyholders", "ca,bob", "ca"),
        ("--keyholders", "alice,server", "server"),
        ("--operators", "server", "server"),
        ("--databases", "ca", "ca"),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("pki");
        let mut args = vec![
            "pki",
            "init",
            "--keyholders",
            "alice,bob",
            "--operators",
            "olga",
            "--databases",
            "db1",
        ];
        let at = args.iter().position(|a| *a == flag).unwrap();
        args[at + 1] = names;
        let out = keyholder(&args, &dir);
        let owner = if taken == "ca" {
            "the dev CA"
        } else {
            "keyholderd's server certificate"
        };
        assert_eq!(
            text(&out.stderr),
            format!(
                "error: principal name `{taken}` in {flag} is taken: {taken}.pem and {taken}.key are {owner}'s; choose another name\n"
            ),
            "{flag} {names}"
        );
        assert_eq!(out.status.code(), Some(2), "{flag} {names}");
        assert_eq!(names_in(&dir), Vec::<String>::new(), "{flag} {names}");
    }
}

/// `--keyring` and `--listen` go into the config `pki init` writes; one
/// its own daemon refuses is refused before anything is written (the
/// directory cannot be made again while its files are there).
#[test]
fn pki_init_refuses_a_keyring_or_listen_address_its_config_could_not_hold() {
    for (flag, value, error) in [
        (
            "--keyring",
            "Orders Prod",
            "error: --keyring `Orders Prod` is not a keyring name: may hold only a-z, 0-9 and -\n",
        ),
        (
            "--keyring",
            "",
            "error: --keyring `` is not a keyring name: is empty\n",
        ),
        (
            "--listen",
            "localhost:99999",
            "error: --listen `localhost:99999` is not an address; write it like 127.0.0.1:8443\n",
        ),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("pki");
        let out = keyholder(
            &[
                "pki",
                "init",
                "--keyholders",
                "alice,bob",
                "--operators",
                "olga",
                "--databases",
                "db1",
                flag,
                value,
            ],
            &dir,
        );
        assert_eq!(text(&out.stderr), error, "{flag} {value}");
        assert_eq!(out.status.code(), Some(2), "{flag} {value}");
        assert_eq!(names_in(&dir), Vec::<String>::new(), "{flag} {value}");
    }

    // What it accepts, its daemon accepts.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pki");
    let out = keyholder(
        &[
            "pki",
            "init",
            "--keyholders",
            "alice,bob",
            "--operators",
            "olga",
            "--databases",
            "db1",
            "--keyring",
            "orders-eu",
            "--listen",
            "[::1]:8443",
        ],
        &dir,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = Command::new(binary("keyholderd"))
        .arg("check-config")
        .arg("--config")
        .arg(dir.join("keyholder.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}
