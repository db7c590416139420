//! Golden tests of whole `keyholder` command lines (trycmd): the help, usage
//! errors (exit 2) and the refusals a user meets without a daemon (exit 1) —
//! unreachable daemon, missing or too-open identity and key files, a wrong
//! identity or passphrase, `recover` with a wrong KCV, `pki init` refusing to
//! overwrite. Each case is a `tests/cmd/*.toml` file; its expected stdout and
//! stderr are pinned there. `TRYCMD=overwrite cargo test -p keyholder-client
//! --test golden` rewrites them after a deliberate change of wording.
//!
//! The fixtures in `tests/cmd/fixtures` are test-only keys made by the
//! ignored `regenerate_fixtures` below.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cmd/fixtures")
}

/// Git keeps only 0644/0755: give private fixtures their 0600 back, and the
/// deliberately open ones their 0644.
fn fix_modes() {
    for entry in fs::read_dir(fixtures()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let mode = if name.starts_with("open.") {
            0o644
        } else if name.ends_with(".key") || name.ends_with(".id") {
            0o600
        } else {
            continue;
        };
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    }
}

#[test]
fn cli_golden() {
    fix_modes();
    trycmd::TestCases::new()
        .env("NO_COLOR", "1")
        .case("tests/cmd/*.toml");
}

/// Rewrites the fixtures (new keys: the KCVs pinned in recover cases change).
#[test]
#[ignore = "run by hand to regenerate the fixtures"]
fn regenerate_fixtures() {
    use crypto_core::{Key, KeyVersion};
    use keyholder_client::identity::{encrypt_armored, encrypt_with_passphrase, recipient_of};

    let dir = fixtures();
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let pki = tmp.path().join("pki");
    keyholder_client::pki::PkiPlan {
        dir: pki.clone(),
        keyring: "orders".into(),
        keyholders: vec!["alice".into(), "bob".into()],
        operators: vec!["olga".into()],
        databases: vec!["db1".into()],
        server_name: None,
        listen: "127.0.0.1:8443".into(),
    }
    .run()
    .unwrap();
    let copy = |from: &str, to: &str| {
        fs::copy(pki.join(from), dir.join(to)).unwrap();
    };
    copy("ca.pem", "ca.pem");
    copy("alice.pem", "alice.pem");
    copy("alice.key", "alice.key");
    copy("alice.key", "open.key");
    copy("alice.age", "alice.id");
    copy("alice.age", "open.id");
    copy("bob.age", "bob.id");
    let identity_line = |name: &str| {
        fs::read_to_string(pki.join(format!("{name}.age")))
            .unwrap()
            .lines()
            .last()
            .unwrap()
            .to_owned()
    };
    fs::write(
        dir.join("protected.id"),
        encrypt_with_passphrase("correct horse", &identity_line("alice")).unwrap(),
    )
    .unwrap();

    let orders = "orders".parse().unwrap();
    let mut lines: Vec<Vec<String>> = vec![Vec::new(), Vec::new()];
    let mut kcvs = String::new();
    // v10 before v9 in every file: order must not matter.
    for version in [10, 9] {
        let outcome = crypto_core::split(
            &Key::generate(),
            &orders,
            KeyVersion::new(version).unwrap(),
            2,
            2,
        )
        .unwrap();
        kcvs.push_str(&format!("v{version} {}\n", outcome.kcv.to_hex()));
        for (holder, share) in outcome.shares.iter().enumerate() {
            lines[holder].push(share.to_line().to_string());
        }
    }
    fs::write(dir.join("kcv.txt"), kcvs).unwrap();
    for (holder, name) in ["alice", "bob"].iter().enumerate() {
        let recipient = recipient_of(&identity_line(name)).unwrap();
        let text = format!("# {name}\n{}\n", lines[holder].join("\n"));
        fs::write(
            dir.join(format!("{name}.shares.age")),
            encrypt_armored(&recipient, &text).unwrap(),
        )
        .unwrap();
    }
    // bob's shares encrypted to alice's recipient: what a config giving two
    // keyholders one age_recipient makes; `recover` must refuse it.
    fs::write(
        dir.join("bob-to-alice.shares.age"),
        encrypt_armored(
            &recipient_of(&identity_line("alice")).unwrap(),
            &format!("# bob\n{}\n", lines[1].join("\n")),
        )
        .unwrap(),
    )
    .unwrap();
    fs::write(dir.join("plain.shares"), format!("{}\n", lines[0][0])).unwrap();
    fs::write(dir.join("existing.key"), "not a key\n").unwrap();
    fix_modes();
}
