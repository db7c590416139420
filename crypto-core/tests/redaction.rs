//! Every secret-holding type, formatted every way it can be, shows no byte
//! of the key or of a share's data in any encoding.

use base64::Engine as _;
use crypto_core::{HookHandover, Key, KeyVersion, Keyring, combine, split};

fn encodings(bytes: &[u8]) -> Vec<String> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    vec![
        hex::encode(bytes),
        hex::encode_upper(bytes),
        STANDARD.encode(bytes),
        STANDARD_NO_PAD.encode(bytes),
        URL_SAFE_NO_PAD.encode(bytes),
        format!("{bytes:?}"),
    ]
}

fn assert_hidden(what: &str, shown: &str, secrets: &[String]) {
    for secret in secrets {
        assert!(
            !shown.contains(secret.as_str()),
            "{what} shows {secret}: {shown}"
        );
    }
}

#[test]
fn no_secret_type_prints_its_bytes() {
    let raw: Vec<u8> = (1..=32).collect();
    let key = Key::from_slice(&raw).unwrap();
    let v10 = KeyVersion::new(10).unwrap();
    let id = "orders".parse().unwrap();
    let mut secrets = encodings(&raw);

    let out = split(&key, &id, v10, 2, 3).unwrap();
    for share in &out.shares {
        let line = share.to_line();
        let data = line
            .split(" data=")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap();
        secrets.push(data.to_owned());
        secrets.extend(encodings(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(data)
                .unwrap(),
        ));
    }

    assert_hidden("Key", &format!("{key:?}"), &secrets);
    for share in &out.shares {
        assert_hidden("Share", &format!("{share:?}"), &secrets);
    }
    let keyring = Keyring::new(id.clone(), v10, [(v10, key.clone())]).unwrap();
    assert_hidden("Keyring", &format!("{keyring:?}"), &secrets);
    let handover: HookHandover = keyring.to_handover();
    assert_hidden("HookHandover", &format!("{handover:?}"), &secrets);
    let rebuilt = combine(&out.shares[..2], &out.kcv).unwrap();
    assert_hidden("rebuilt Key", &format!("{rebuilt:?}"), &secrets);

    // Errors about shares and keys name fields, never bytes.
    let wrong_kcv = split(&Key::generate(), &id, v10, 2, 3).unwrap().kcv;
    let error = combine(&out.shares[..2], &wrong_kcv).unwrap_err();
    assert_hidden("Error (Display)", &error.to_string(), &secrets);
    assert_hidden("Error (Debug)", &format!("{error:?}"), &secrets);
    let error = crypto_core::Share::parse(&out.shares[0].to_line().replace("index=1", "index=2"))
        .unwrap_err();
    assert_hidden("parse Error", &format!("{error} {error:?}"), &secrets);
}
