//! Any config file: loaded and validated, or refused with every problem
//! named; never a panic, and a refusal names the file.
#![no_main]
use std::os::unix::fs::PermissionsExt as _;
use std::sync::OnceLock;

use keyholder_server::config::Config;
use libfuzzer_sys::fuzz_target;

fn dir() -> &'static tempfile::TempDir {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        dir
    })
}

fuzz_target!(|text: &[u8]| {
    let path = dir().path().join("keyholder.toml");
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    if let Err(e) = Config::load(&path) {
        assert!(e.to_string().contains("keyholder.toml"), "{e}");
    }
});
