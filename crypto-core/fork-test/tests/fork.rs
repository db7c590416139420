//! Nonces stay unique across `fork`: a process that encrypted once (so any
//! generator kept in the process is seeded) forks two workers, each writes
//! one record, and no two of the three nonces may be equal. A generator
//! kept in the process is copied into each child and repeats itself there
//! (rand's `ThreadRng` did): the same nonce under the same key.

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
