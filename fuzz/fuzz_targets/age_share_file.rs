//! A keyholder's share file as `keyholder unseal` reads it: any bytes as the
//! file (age header, armor, body), or any text sealed to the keyholder's own
//! identity (so the share-file parser behind the decryption is reached too).
//! Read or refused with the file named; never a panic.
#![no_main]
use std::os::unix::fs::PermissionsExt as _;
use std::sync::OnceLock;

use keyholder_client::identity::{Identities, encrypt_armored, read_shares};
use libfuzzer_sys::fuzz_target;

struct World {
    dir: tempfile::TempDir,
    identities: Identities,
    recipient: String,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let identity = age::x25519::Identity::generate();
        let line = identity.to_string();
        let id = dir.path().join("me.id");
        std::fs::write(&id, age::secrecy::ExposeSecret::expose_secret(&line)).unwrap();
        std::fs::set_permissions(&id, std::fs::Permissions::from_mode(0o600)).unwrap();
        World {
            identities: Identities::load(&[id], false).unwrap(),
            recipient: identity.to_public().to_string(),
            dir,
        }
    })
}

fuzz_target!(|input: &[u8]| {
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    let world = world();
    let bytes = if mode % 2 == 0 {
        rest.to_vec()
    } else {
        let Ok(text) = std::str::from_utf8(rest) else {
            return;
        };
        encrypt_armored(&world.recipient, text).unwrap().into_bytes()
    };
    let path = world.dir.path().join("shares.age");
    std::fs::write(&path, &bytes).unwrap();
    if let Err(e) = read_shares(&path, Some(&world.identities)) {
        assert!(e.to_string().contains("shares.age"), "{e}");
    }
});
