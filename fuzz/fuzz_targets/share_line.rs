//! A share line parses and prints back to the same line, or is refused; a
//! share file is parsed line by line with the failing line named.
#![no_main]
use crypto_core::{Share, parse_share_file};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(share) = Share::parse(text) {
        let again = Share::parse(&share.to_line()).unwrap();
        assert_eq!(again.fingerprint().to_hex(), share.fingerprint().to_hex());
    }
    if let Err((line, _)) = parse_share_file(text) {
        assert!(line >= 1);
    }
});
