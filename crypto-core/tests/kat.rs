//! Known answers: NIST AES-256-GCM vectors through our envelope wrapper, and
//! envelopes written by another implementation (Python `cryptography`).

use crypto_core::{Error, Key, KeyVersion, Keyring, envelope};

fn hex_or_empty(field: &str) -> Vec<u8> {
    if field == "-" {
        Vec::new()
    } else {
        hex::decode(field).expect("vector file holds hex")
    }
}

fn data_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
}

#[test]
fn nist_gcm_vectors_pass_through_the_envelope() {
    let text = include_str!("data/gcm_kat.txt");
    let mut seen = 0;
    for line in data_lines(text) {
        let f: Vec<&str> = line.split(' ').collect();
        let [name, key, nonce, pt, aad, ct, tag] = f[..] else {
            panic!("bad vector line {line}")
        };
        let key = Key::from_slice(&hex::decode(key).unwrap()).unwrap();
        let nonce: [u8; 12] = hex::decode(nonce).unwrap().try_into().unwrap();
        let (pt, aad) = (hex_or_empty(pt), hex_or_empty(aad));
        let version = KeyVersion::new(9).unwrap();
        let record = envelope::seal_with_nonce_for_tests(&key, version, &nonce, &pt, &aad);
        let mut expected = nonce.to_vec();
        expected.extend(hex_or_empty(ct));
        expected.extend(hex::decode(tag).unwrap());
        use base64::Engine as _;
        let want = format!(
            "V9:{}",
            base64::engine::general_purpose::STANDARD.encode(&expected)
        );
        assert_eq!(record, want, "{name}");
        assert_eq!(
            *envelope::open(&key, version, &record, &aad).unwrap(),
            pt,
            "{name}"
        );
        seen += 1;
    }
    assert_eq!(seen, 4);
}

#[test]
fn envelopes_from_python_cryptography_decrypt() {
    let text = include_str!("data/python_envelopes.txt");
    let mut seen = 0;
    for line in data_lines(text) {
        let mut head = line.splitn(4, ' ');
        let (version, key, aad, rest) = (
            head.next().unwrap(),
            head.next().unwrap(),
            head.next().unwrap(),
            head.next().unwrap(),
        );
        let (plaintext, record) = rest.rsplit_once(' ').unwrap();
        let version: KeyVersion = version.parse().unwrap();
        let aad = if aad == "-" { "" } else { aad };
        let plaintext = if plaintext == "-" { "" } else { plaintext };
        let keyring = Keyring::new(
            "orders".parse().unwrap(),
            version,
            [(version, Key::from_base64(key).unwrap())],
        )
        .unwrap();
        assert_eq!(
            *keyring.decrypt(record, aad.as_bytes()).unwrap(),
            plaintext.as_bytes()
        );
        if !aad.is_empty() {
            assert_eq!(
                keyring.decrypt(record, b"customers/ssn/43").unwrap_err(),
                Error::Decrypt { version }
            );
        }
        seen += 1;
    }
    assert_eq!(seen, 3);
}
