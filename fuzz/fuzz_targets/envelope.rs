//! Any text given as a stored record: parsed or refused, never a panic, and
//! never opened under a key that did not make it.
#![no_main]
use crypto_core::{Key, KeyVersion, Keyring, envelope};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let _ = envelope::peek_version(text);
    if let Ok(parsed) = envelope::Envelope::parse(text) {
        let _ = parsed.version();
    }
    let v9 = KeyVersion::new(9).unwrap();
    let ring = Keyring::new("orders".parse().unwrap(), v9, [(v9, Key::generate())]).unwrap();
    assert!(ring.decrypt(text, b"").is_err());
});
