//! Property tests for the invariants the 2023 outage broke: numeric version
//! order, no version silently dropped, shares that rebuild or are refused.

use std::collections::BTreeSet;

use crypto_core::{Error, Key, KeyVersion, Keyring, Share, combine, split};
use proptest::prelude::*;
use sha2::{Digest, Sha256};

fn v(n: u32) -> KeyVersion {
    KeyVersion::new(n).unwrap()
}

/// Builds a keyring from versions given as text in arrival order; the write
/// version is chosen by the caller, as the rotation state does.
fn keyring_from(texts: &[String], write: KeyVersion) -> Result<Keyring, Error> {
    let keys: Vec<(KeyVersion, Key)> = texts
        .iter()
        .map(|t| (t.parse::<KeyVersion>().unwrap(), Key::generate()))
        .collect();
    Keyring::new("orders".parse().unwrap(), write, keys)
}

fn check_numeric(arrival: Vec<u32>, write_pick: usize) {
    let texts: Vec<String> = arrival.iter().map(|n| format!("v{n}")).collect();
    let write = v(arrival[write_pick % arrival.len()]);
    let ring = keyring_from(&texts, write).unwrap();
    let got: Vec<u32> = ring.versions().map(KeyVersion::number).collect();
    let mut want = arrival.clone();
    want.sort_unstable();
    assert_eq!(got, want, "order must be numeric and nothing dropped");
    assert_eq!(ring.write_version(), write);
}

#[test]
fn the_expensify_pairs_order_numerically() {
    check_numeric(vec![10, 9], 1);
    check_numeric(vec![100, 99], 1);
    assert!("v10".parse::<KeyVersion>().unwrap() > "v9".parse().unwrap());
    assert!("V100".parse::<KeyVersion>().unwrap() > "99".parse().unwrap());
}

proptest! {
    #[test]
    fn keyring_order_is_numeric_whatever_the_arrival(
        arrival in Just((1..=200u32).collect::<Vec<_>>()).prop_shuffle(),
        pick in any::<usize>(),
    ) {
        check_numeric(arrival, pick);
    }

    #[test]
    fn every_version_is_kept_or_refused(
        arrival in proptest::collection::vec(1..=300u32, 1..40),
        pick in any::<usize>(),
    ) {
        let texts: Vec<String> = arrival.iter().map(|n| format!("v{n}")).collect();
        let write = v(arrival[pick % arrival.len()]);
        let distinct: BTreeSet<u32> = arrival.iter().copied().collect();
        match keyring_from(&texts, write) {
            Ok(ring) => {
                prop_assert_eq!(distinct.len(), arrival.len());
                let got: Vec<u32> = ring.versions().map(KeyVersion::number).collect();
                prop_assert_eq!(got, distinct.into_iter().collect::<Vec<_>>());
            }
            Err(Error::DuplicateVersion { version }) => {
                prop_assert!(arrival.iter().filter(|n| **n == version.number()).count() > 1);
            }
            Err(other) => prop_assert!(false, "unexpected error {}", other),
        }
    }

    #[test]
    fn handover_json_in_any_order_loads_numerically(
        arrival in Just(vec![9u32, 10, 11, 99, 100, 101]).prop_shuffle(),
    ) {
        let keys: Vec<String> = arrival
            .iter()
            .map(|n| format!(r#"{{"version": {n}, "key": "{}"}}"#, *Key::generate().expose_base64_for_handover()))
            .collect();
        let json = format!(r#"{{"keyring": "orders", "write_version": 10, "keys": [{}]}}"#, keys.join(","));
        let ring = Keyring::from_handover_json(&json).unwrap();
        let got: Vec<u32> = ring.versions().map(KeyVersion::number).collect();
        prop_assert_eq!(got, vec![9, 10, 11, 99, 100, 101]);
        prop_assert_eq!(ring.write_version(), v(10));
    }

    #[test]
    fn version_text_round_trips(n in 1..=(1u32 << 31)) {
        let version = v(n);
        prop_assert_eq!(version.to_string().parse::<KeyVersion>().unwrap(), version);
        prop_assert_eq!(n.to_string().parse::<KeyVersion>().unwrap(), version);
    }

    #[test]
    fn envelope_round_trips(plaintext in proptest::collection::vec(any::<u8>(), 0..512),
                            aad in proptest::collection::vec(any::<u8>(), 0..64),
                            write in 1..=3u32) {
        let ring = Keyring::new(
            "orders".parse().unwrap(),
            v(write),
            (1..=3).map(|n| (v(n), Key::generate())),
        ).unwrap();
        let record = ring.encrypt(&plaintext, &aad).unwrap();
        let prefix = format!("V{write}:");
        prop_assert!(record.starts_with(&prefix));
        prop_assert_eq!(&**ring.decrypt(&record, &aad).unwrap(), &plaintext[..]);
    }

    #[test]
    fn any_threshold_of_count_rebuilds(
        (threshold, count, picks) in (2u8..=6).prop_flat_map(|t| (Just(t), t..=8u8))
            .prop_flat_map(|(t, c)| (Just(t), Just(c), Just((0..c as usize).collect::<Vec<_>>()).prop_shuffle())),
    ) {
        let key = Key::generate();
        let out = split(&key, &"orders".parse().unwrap(), v(10), threshold, count).unwrap();
        let chosen: Vec<Share> = picks[..threshold as usize].iter().map(|i| out.shares[*i].clone()).collect();
        let rebuilt = combine(&chosen, &out.kcv).unwrap();
        prop_assert_eq!(rebuilt.expose_base64_for_handover(), key.expose_base64_for_handover());
    }

    #[test]
    fn a_flipped_bit_is_a_checksum_error(position in any::<prop::sample::Index>(), bit in 0..7u8) {
        let key = Key::generate();
        let out = split(&key, &"orders".parse().unwrap(), v(10), 2, 3).unwrap();
        let line = out.shares[0].to_line();
        let mut bytes = line.as_bytes().to_vec();
        let at = position.index(bytes.len());
        bytes[at] ^= 1 << bit;
        let Ok(text) = String::from_utf8(bytes) else { return Ok(()) };
        let err = Share::parse(&text).unwrap_err();
        let marker = line.rfind(" check=").unwrap();
        if at >= marker {
            // Inside ` check=<hex>` itself: the checksum field is what is wrong.
            prop_assert!(matches!(err, Error::ShareChecksum | Error::MalformedShare { field: "check", .. }), "{}", err);
        } else {
            prop_assert_eq!(err, Error::ShareChecksum);
        }
    }

    #[test]
    fn altered_data_with_a_fixed_checksum_never_becomes_a_key(byte in 0..32usize, flip in 1..=255u8) {
        use base64::Engine as _;
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let key = Key::generate();
        let out = split(&key, &"orders".parse().unwrap(), v(10), 2, 3).unwrap();
        let line = out.shares[1].to_line();
        let body = line.rsplit_once(" check=").unwrap().0;
        let (head, data) = body.rsplit_once(" data=").unwrap();
        let mut raw = engine.decode(data).unwrap();
        raw[byte] ^= flip;
        let body = format!("{head} data={}", engine.encode(&raw));
        let forged = format!("{body} check={}", hex::encode(&Sha256::digest(body.as_bytes())[..4]));
        let forged = Share::parse(&forged).unwrap();
        prop_assert_eq!(out.fingerprints[1].verify(&forged).unwrap_err(), Error::FingerprintMismatch { index: 2 });
        prop_assert_eq!(
            combine(&[out.shares[0].clone(), forged], &out.kcv).unwrap_err(),
            Error::KcvMismatch { version: v(10) }
        );
    }
}
