//! A version either parses and displays back to its canonical form, or is refused.
#![no_main]
use crypto_core::KeyVersion;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(version) = text.parse::<KeyVersion>() {
        let shown = version.to_string();
        assert_eq!(shown.parse::<KeyVersion>().unwrap(), version);
        assert!(text.trim_start_matches(['v', 'V']) == &shown[1..]);
    }
});
