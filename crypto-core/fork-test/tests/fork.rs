//! Randomness stays unique across `fork`: a process that encrypted (or
//! split) once, so any generator kept in the process is seeded, forks two
//! workers, and what they draw may not repeat. A generator kept in the
//! process is copied into each child and repeats itself there (rand's
//! `ThreadRng` did): the same nonce under the same key, the same Shamir
//! coefficients for two keys.

#![deny(unsafe_code)]

use std::io::{Read as _, Write as _};

use base64::Engine as _;
use crypto_core::Keyring;
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, fork, pipe};

const HANDOVER: &str = r#"{"keyring":"orders","write_version":9,"keys":[{"version":9,"key":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="}]}"#;

fn nonce(record: &str) -> Vec<u8> {
    let body = record.split_once(':').unwrap().1;
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()[..12]
        .to_vec()
}

#[test]
#[allow(unsafe_code)]
fn workers_forked_after_an_encryption_draw_different_nonces() {
    let keyring = Keyring::from_handover_json(HANDOVER).unwrap();
    let first = keyring.encrypt(b"written before the fork", b"").unwrap();
    let mut records = vec![first];
    for _ in 0..2 {
        let (read, write) = pipe().unwrap();
        // SAFETY: the child only encrypts, writes to the pipe and exits
        // without running destructors or returning into the test harness.
        match unsafe { fork() }.unwrap() {
            ForkResult::Child => {
                drop(read);
                let record = keyring.encrypt(b"written by a worker", b"").unwrap();
                let mut out = std::fs::File::from(write);
                let code = i32::from(out.write_all(record.as_bytes()).is_err());
                // SAFETY: `_exit` ends the child at once, as a forked
                // child of a threaded process must.
                unsafe { nix::libc::_exit(code) };
            }
            ForkResult::Parent { child } => {
                drop(write);
                let mut record = String::new();
                std::fs::File::from(read)
                    .read_to_string(&mut record)
                    .unwrap();
                waitpid(child, None).unwrap();
                records.push(record);
            }
        }
    }
    let nonces: Vec<Vec<u8>> = records.iter().map(|r| nonce(r)).collect();
    assert_ne!(nonces[0], nonces[1], "a worker repeated its parent's nonce");
    assert_ne!(nonces[1], nonces[2], "two workers drew the same nonce");
    assert_ne!(nonces[0], nonces[2], "a worker repeated its parent's nonce");
}

/// The share data at index 1 of a 2-of-2 split made in a forked child.
#[allow(unsafe_code)]
fn split_in_a_child(key: &crypto_core::Key) -> Vec<u8> {
    let (read, write) = pipe().unwrap();
    // SAFETY: the child only splits, writes to the pipe and exits without
    // running destructors or returning into the test harness.
    match unsafe { fork() }.unwrap() {
        ForkResult::Child => {
            drop(read);
            let version = crypto_core::KeyVersion::new(9).unwrap();
            let split = crypto_core::split(key, &"orders".parse().unwrap(), version, 2, 2).unwrap();
            let line = split.shares[0].to_line();
            let mut out = std::fs::File::from(write);
            let code = i32::from(out.write_all(line.as_bytes()).is_err());
            // SAFETY: `_exit` ends the child at once, as a forked child of
            // a threaded process must.
            unsafe { nix::libc::_exit(code) };
        }
        ForkResult::Parent { child } => {
            drop(write);
            let mut line = String::new();
            std::fs::File::from(read).read_to_string(&mut line).unwrap();
            waitpid(child, None).unwrap();
            let data = line
                .split(" data=")
                .nth(1)
                .unwrap()
                .split(' ')
                .next()
                .unwrap();
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(data)
                .unwrap()
        }
    }
}

/// Shamir's polynomials stay unique across `fork`: two workers of a
/// process that split once each split another key. Were their random
/// coefficients the same (a generator copied into each child), share 1 of
/// the one XOR share 1 of the other would be the two keys' XOR: whoever
/// holds index 1 of both splits would learn it, and with one key the other.
#[test]
fn workers_forked_after_a_split_draw_different_polynomials() {
    let (a, b) = ([0x11u8; 32], [0x22u8; 32]);
    let version = crypto_core::KeyVersion::new(9).unwrap();
    let orders = "orders".parse().unwrap();
    crypto_core::split(&crypto_core::Key::generate(), &orders, version, 2, 2).unwrap();
    let share_a = split_in_a_child(&crypto_core::Key::from_slice(&a).unwrap());
    let share_b = split_in_a_child(&crypto_core::Key::from_slice(&b).unwrap());
    let shares_xor: Vec<u8> = share_a.iter().zip(&share_b).map(|(x, y)| x ^ y).collect();
    let keys_xor: Vec<u8> = a.iter().zip(&b).map(|(x, y)| x ^ y).collect();
    assert_ne!(
        shares_xor, keys_xor,
        "two workers split with the same polynomial coefficients"
    );
}
