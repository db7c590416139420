//! Envelope and share throughput. Run with `cargo bench -p crypto-core`.
//!
//! `envelope-200B/bare-aes-gcm` is the baseline: the same AES-256-GCM seal
//! and open on the same bytes without our framing (version prefix, base64,
//! counting). The ratio of `keyring` to it is our overhead.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use crypto_core::{Key, KeyVersion, Keyring, combine, split};

fn keyring() -> Keyring {
    let v9 = KeyVersion::new(9).unwrap();
    let v10 = KeyVersion::new(10).unwrap();
    Keyring::new(
        "orders".parse().unwrap(),
        v10,
        [(v9, Key::generate()), (v10, Key::generate())],
    )
    .unwrap()
}

fn envelopes(c: &mut Criterion) {
    let ring = keyring();
    let plaintext = vec![7u8; 64];
    let aad = b"customers/ssn/123456";
    let record = ring.encrypt(&plaintext, aad).unwrap();
    let mut group = c.benchmark_group("envelope-64B");
    group.throughput(Throughput::Elements(1));
    group.bench_function("encrypt", |b| {
        b.iter(|| ring.encrypt(&plaintext, aad).unwrap())
    });
    group.bench_function("decrypt", |b| {
        b.iter(|| ring.decrypt(&record, aad).unwrap())
    });
    // What the re-encryption worker does per column value.
    group.bench_function("reencrypt", |b| {
        b.iter(|| {
            let plain = ring.decrypt(&record, aad).unwrap();
            ring.encrypt(&plain, aad).unwrap()
        })
    });
    group.finish();
}

fn against_bare_aes_gcm(c: &mut Criterion) {
    let ring = keyring();
    let plaintext = vec![7u8; 200];
    let aad = b"customers/ssn/123456";
    let bare = Aes256Gcm::new_from_slice(&[9u8; 32]).unwrap();
    let mut group = c.benchmark_group("envelope-200B");
    group.throughput(Throughput::Bytes(200));
    group.bench_function("bare-aes-gcm", |b| {
        b.iter(|| {
            let mut nonce = [0u8; 12];
            rand::fill(&mut nonce);
            let nonce = Nonce::from_slice(&nonce);
            let sealed = bare
                .encrypt(
                    nonce,
                    Payload {
                        msg: &plaintext,
                        aad,
                    },
                )
                .unwrap();
            bare.decrypt(nonce, Payload { msg: &sealed, aad }).unwrap()
        })
    });
    group.bench_function("keyring", |b| {
        b.iter(|| {
            let record = ring.encrypt(&plaintext, aad).unwrap();
            ring.decrypt(&record, aad).unwrap()
        })
    });
    group.finish();
}

fn shares(c: &mut Criterion) {
    let key = Key::generate();
    let id = "orders".parse().unwrap();
    let v10 = KeyVersion::new(10).unwrap();
    let out = split(&key, &id, v10, 2, 24).unwrap();
    c.bench_function("split-2-of-24", |b| {
        b.iter(|| split(&key, &id, v10, 2, 24).unwrap())
    });
    let pair = [out.shares[3].clone(), out.shares[17].clone()];
    c.bench_function("combine-2-with-kcv", |b| {
        b.iter(|| combine(&pair, &out.kcv).unwrap())
    });
}

criterion_group!(benches, envelopes, against_bare_aes_gcm, shares);
criterion_main!(benches);
