//! The verification decision over records already fetched: each check that
//! can fail, from the input that makes it fail.

use std::collections::BTreeMap;

use crypto_core::{Kcv, Key, KeyVersion, KeyringId, SetId};
use keyholder_api::VersionState;

use super::*;
use crate::facts::Canary;

fn v(n: u32) -> KeyVersion {
    KeyVersion::new(n).unwrap()
}

fn orders() -> KeyringId {
    "orders".parse().unwrap()
}

fn record(key: &Key, version: KeyVersion) -> VersionRecord {
    let aad = format!("keyholder canary/orders/{version}");
    VersionRecord {
        version,
        kcv: Kcv::compute(key, &orders(), version),
        set: SetId::generate(),
        threshold: 2,
        count: 3,
        state: VersionState::Active,
        encryptions: 1,
        dealt: BTreeMap::new(),
        canary: Canary {
            record: crypto_core::envelope::seal(key, version, b"canary", aad.as_bytes()),
            aad,
        },
    }
}

fn sampled(key: &Key, version: KeyVersion, id: &str) -> SampledRecord {
    SampledRecord {
        id: id.to_owned(),
        record: crypto_core::envelope::seal(key, version, b"555-12-3456", id.as_bytes()),
        aad: id.as_bytes().to_vec(),
    }
}

struct Case {
    keys: BTreeMap<KeyVersion, Key>,
    versions: BTreeMap<KeyVersion, VersionRecord>,
    samples: BTreeMap<KeyVersion, Vec<TargetSample>>,
}

fn case(key: Key) -> Case {
    let versions = BTreeMap::from([(v(9), record(&key, v(9)))]);
    let samples = BTreeMap::from([(
        v(9),
        vec![TargetSample {
            target: "customers".into(),
            records: Ok(vec![sampled(&key, v(9), "customers.ssn id=1")]),
        }],
    )]);
    Case {
        keys: BTreeMap::from([(v(9), key)]),
        versions,
        samples,
    }
}

impl Case {
    fn decide(&self) -> Result<Report, Vec<Failure>> {
        decide(&orders(), &self.keys, &self.versions, &self.samples)
    }
}

#[test]
fn the_right_key_passes_and_counts_its_samples() {
    let report = case(Key::generate()).decide().unwrap();
    assert_eq!(report.sampled, BTreeMap::from([(v(9), 1)]));
}

#[test]
fn a_version_the_store_lacks_fails_its_kcv_check() {
    let mut c = case(Key::generate());
    c.versions.clear();
    let failures = c.decide().unwrap_err();
    assert_eq!(
        failures[0].to_string(),
        "v9 failed its kcv check: the version is not in the state store"
    );
}

#[test]
fn another_key_fails_its_kcv_check() {
    let mut c = case(Key::generate());
    c.keys.insert(v(9), Key::generate());
    let failures = c.decide().unwrap_err();
    assert_eq!(failures.len(), 1, "the samples are not tried after the kcv");
    assert_eq!(
        failures[0].to_string(),
        "v9 failed its kcv check: the rebuilt key does not match its key check value"
    );
}

#[test]
fn a_canary_of_another_key_fails_the_canary_check() {
    let mut c = case(Key::generate());
    let other = Key::generate();
    c.versions.get_mut(&v(9)).unwrap().canary = record(&other, v(9)).canary;
    let failures = c.decide().unwrap_err();
    assert_eq!(failures[0].check, "canary");
}

#[test]
fn records_that_do_not_decrypt_are_named_by_id() {
    let key = Key::generate();
    let mut c = case(key.clone());
    let stranger = Key::generate();
    c.samples.get_mut(&v(9)).unwrap()[0].records = Ok(vec![
        sampled(&key, v(9), "customers.ssn id=1"),
        sampled(&stranger, v(9), "customers.ssn id=2"),
    ]);
    let failures = c.decide().unwrap_err();
    assert_eq!(
        failures[0].to_string(),
        "v9 failed its target customers check: 1 of 2 sampled records do not decrypt with the rebuilt key (records: customers.ssn id=2)"
    );
}

#[test]
fn a_target_that_could_not_be_sampled_fails_the_decision() {
    let mut c = case(Key::generate());
    c.samples.get_mut(&v(9)).unwrap()[0].records = Err("connection refused".into());
    let failures = c.decide().unwrap_err();
    assert_eq!(
        failures[0].to_string(),
        "v9 failed its target customers check: sampling failed: connection refused"
    );
}
