//! Every [`Refusal`] variant, reached from the exact input that causes it,
//! and the one input that passes every rule.

use std::collections::BTreeMap;

use crypto_core::{Key, KeyVersion, KeyringId, Share};
use keyholder_api::VersionState;
use sha2::Digest as _;

use super::*;
use crate::facts::DealtShare;

const HOLDERS: [&str; 3] = ["alice", "bob", "carol"];

fn v(n: u32) -> KeyVersion {
    KeyVersion::new(n).unwrap()
}

fn orders() -> KeyringId {
    "orders".parse().unwrap()
}

/// A 2-of-3 split of a fresh key of `version` in `keyring`, dealt to
/// alice, bob and carol in index order.
fn split(keyring: &KeyringId, version: KeyVersion) -> (VersionFacts, Vec<Share>) {
    let outcome = crypto_core::split(&Key::generate(), keyring, version, 2, 3).unwrap();
    let dealt = outcome
        .fingerprints
        .iter()
        .zip(HOLDERS)
        .enumerate()
        .map(|(i, (fp, name))| {
            (
                u8::try_from(i + 1).unwrap(),
                DealtShare {
                    fingerprint: *fp,
                    principal: name.to_owned(),
                },
            )
        })
        .collect();
    let facts = VersionFacts {
        set: outcome.set,
        threshold: 2,
        count: 3,
        kcv: outcome.kcv,
        dealt,
        state: VersionState::Active,
        required: true,
    };
    (facts, outcome.shares)
}

/// `line` with `from` replaced by `to` and its checksum made right again:
/// a line only the rules after parsing can refuse.
fn rewrite(line: &str, from: &str, to: &str) -> String {
    let body = line.rsplit_once(" check=").unwrap().0.replace(from, to);
    let check = hex::encode(&sha2::Sha256::digest(body.as_bytes())[..4]);
    format!("{body} check={check}")
}

struct Fixture {
    versions: BTreeMap<KeyVersion, VersionFacts>,
    shares: Vec<Share>,
}

fn fixture() -> Fixture {
    let (facts, shares) = split(&orders(), v(9));
    Fixture {
        versions: BTreeMap::from([(v(9), facts)]),
        shares,
    }
}

impl Fixture {
    fn line(&self, who: usize) -> String {
        self.shares[who].to_line().to_string()
    }

    fn admit(&self, line: &str, principal: &str, scope: Scope) -> Result<Share, Refusal> {
        admit(
            line,
            principal,
            &orders(),
            &self.versions,
            scope,
            |_, _, _| false,
        )
    }
}

#[test]
fn the_dealt_share_from_its_holder_is_admitted() {
    let f = fixture();
    let share = f.admit(&f.line(1), "bob", Scope::Unseal).unwrap();
    assert_eq!((share.version(), share.index()), (v(9), 2));
    let share = f.admit(&f.line(1), "bob", Scope::NewVersion(v(9))).unwrap();
    assert_eq!(share.index(), 2);
}

#[test]
fn a_typo_is_a_bad_checksum() {
    let f = fixture();
    let mut line = f.line(0);
    let at = line.find("data=").unwrap() + 5;
    let flipped = if &line[at..=at] == "A" { "B" } else { "A" };
    line.replace_range(at..=at, flipped);
    let refusal = f.admit(&line, "alice", Scope::Unseal).unwrap_err();
    assert_eq!(refusal, Refusal::BadChecksum);
    assert_eq!(refusal.share(), None);
    assert!(refusal.to_string().contains("checksum does not match"));
}

#[test]
fn a_line_that_is_no_share_line_is_malformed() {
    let f = fixture();
    let refusal = f
        .admit("khs1 nonsense", "alice", Scope::Unseal)
        .unwrap_err();
    assert!(
        matches!(&refusal, Refusal::Malformed { reason } if reason.contains("check")),
        "{refusal:?}"
    );
    assert_eq!(refusal.code(), "malformed");
}

#[test]
fn a_share_of_another_keyring_is_refused() {
    let f = fixture();
    let (_, other) = split(&"billing".parse().unwrap(), v(9));
    let refusal = f
        .admit(&other[0].to_line(), "alice", Scope::Unseal)
        .unwrap_err();
    assert_eq!(
        refusal.to_string(),
        "alice's share is for keyring `billing`, this daemon serves `orders`; submit the share file of this keyring"
    );
    assert_eq!(refusal.share(), Some((v(9), 1)));
}

#[test]
fn a_share_of_a_version_the_keyring_lacks_is_refused() {
    let f = fixture();
    let (_, v11) = split(&orders(), v(11));
    let refusal = f
        .admit(&v11[0].to_line(), "alice", Scope::Unseal)
        .unwrap_err();
    assert_eq!(
        refusal.to_string(),
        "v11 is not a version of keyring orders (known: v9); it was refused, nothing else changed"
    );
    assert_eq!(refusal.code(), "unknown_version");
}

#[test]
fn share_verify_takes_only_the_new_version() {
    let f = fixture();
    let refusal = f
        .admit(&f.line(0), "alice", Scope::NewVersion(v(10)))
        .unwrap_err();
    assert_eq!(
        refusal,
        Refusal::NotTheNewVersion {
            principal: "alice".into(),
            version: v(9),
            index: 1,
            expected: v(10),
        }
    );
}

#[test]
fn a_share_of_a_retired_version_is_refused() {
    let mut f = fixture();
    f.versions.get_mut(&v(9)).unwrap().state = VersionState::Retired;
    let refusal = f.admit(&f.line(0), "alice", Scope::Unseal).unwrap_err();
    assert_eq!(
        refusal.to_string(),
        "v9 is retired; its shares are no longer used"
    );
}

#[test]
fn a_share_of_another_split_of_the_version_is_refused() {
    let f = fixture();
    let (_, resplit) = split(&orders(), v(9));
    let refusal = f
        .admit(&resplit[0].to_line(), "alice", Scope::Unseal)
        .unwrap_err();
    assert!(matches!(refusal, Refusal::OtherSplit { index: 1, .. }));
    assert!(
        refusal
            .to_string()
            .ends_with("it belongs to an older or newer split of v9")
    );
}

#[test]
fn a_share_claiming_other_parameters_is_refused() {
    let f = fixture();
    let line = rewrite(&f.line(0), "threshold=2 count=3", "threshold=3 count=3");
    let refusal = f.admit(&line, "alice", Scope::Unseal).unwrap_err();
    assert_eq!(
        refusal.to_string(),
        "alice's share of v9 index 1 says 3 of 3, but v9 was split 2 of 3"
    );
}

#[test]
fn an_index_never_dealt_is_refused() {
    let mut f = fixture();
    f.versions.get_mut(&v(9)).unwrap().dealt.remove(&3);
    let refusal = f.admit(&f.line(2), "carol", Scope::Unseal).unwrap_err();
    assert_eq!(
        refusal,
        Refusal::UnknownIndex {
            version: v(9),
            index: 3
        }
    );
    assert_eq!(
        refusal.to_string(),
        "v9 has no share index 3; it was refused"
    );
}

#[test]
fn a_forged_share_is_a_fingerprint_mismatch() {
    let f = fixture();
    // Same keyring, version, set and parameters, other data, a valid
    // checksum: only the fingerprint can tell.
    let (_, other) = split(&orders(), v(9));
    let forged = rewrite(
        &other[2].to_line(),
        &other[2].set().to_hex(),
        &f.versions[&v(9)].set.to_hex(),
    );
    let refusal = f.admit(&forged, "carol", Scope::Unseal).unwrap_err();
    assert_eq!(
        refusal.to_string(),
        "carol's share of v9 index 3 does not match the fingerprint recorded when it was dealt: it is corrupted or forged; decrypt the share file again (the shares already in are kept)"
    );
}

#[test]
fn a_share_sent_by_another_principal_is_the_wrong_holder() {
    let f = fixture();
    let refusal = f.admit(&f.line(0), "bob", Scope::Unseal).unwrap_err();
    assert_eq!(
        refusal.to_string(),
        "share of v9 index 1 was dealt to alice, not bob; each keyholder submits only their own share with their own certificate"
    );
    assert_eq!(refusal.code(), "wrong_holder");
}

#[test]
fn a_share_already_in_is_already_counted_and_reported_accepted() {
    let f = fixture();
    let verdict = admit(
        &f.line(0),
        "alice",
        &orders(),
        &f.versions,
        Scope::Unseal,
        |version, index, principal| (version, index, principal) == (v(9), 1, "alice"),
    );
    let refusal = verdict.as_ref().unwrap_err();
    assert_eq!(
        refusal.to_string(),
        "alice's share of v9 is already counted; a keyholder counts once per version"
    );
    let outcome = outcome(2, "alice", &verdict);
    assert!(outcome.accepted, "a repeat is not a failure");
    assert_eq!(outcome.refusal.as_deref(), Some("already_counted"));
    assert_eq!((outcome.position, outcome.index), (2, Some(1)));
}

#[test]
fn an_outcome_of_a_line_that_did_not_parse_names_its_position_only() {
    let f = fixture();
    let verdict = f.admit("khs1 nonsense", "alice", Scope::Unseal);
    let outcome = outcome(3, "alice", &verdict);
    assert!(!outcome.accepted);
    assert_eq!((outcome.version, outcome.index), (None, None));
    assert_eq!(outcome.refusal.as_deref(), Some("malformed"));
    assert!(
        outcome
            .reason
            .unwrap()
            .starts_with("share 3 from alice was refused: ")
    );
}
