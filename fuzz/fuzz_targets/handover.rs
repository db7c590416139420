//! The hook hand-over: loaded as a keyring or refused.
#![no_main]
use crypto_core::Keyring;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(ring) = Keyring::from_handover_json(text) {
        assert!(ring.contains(ring.write_version()));
    }
});
