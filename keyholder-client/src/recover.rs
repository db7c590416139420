//! `keyholder recover`: the offline break-glass path. It rebuilds a key from
//! share files without the daemon, proves it against the version's KCV and
//! writes it (base64, mode 0600) to a new file. It never prints the key.
//!
//! The KCV belongs to one version. Share files may hold several versions, so
//! recover rebuilds every version present (or only `--version`) and keeps the
//! one whose KCV matches; when one version has more shares than its
//! threshold, every combination is tried, so one bad share cannot block it.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crypto_core::{Kcv, Key, KeyVersion, Share};

use crate::error::CliError;
use crate::identity::ShareInput;

/// A rebuilt key, the version it is, and which shares made it.
pub struct Recovered {
    /// The key (never printed).
    pub key: Key,
    /// Its keyring.
    pub keyring: String,
    /// Its version.
    pub version: KeyVersion,
    /// The share indices used, ascending.
    pub indices: Vec<u8>,
}

/// Parses `--kcv`, as a usage error when it is not 32 lowercase hex.
pub fn parse_kcv(text: &str) -> Result<Kcv, CliError> {
    text.parse().map_err(|_| CliError::BadKcv {
        text: text.chars().take(64).collect(),
    })
}

/// Every `k`-subset of `0..n`, in lexicographic order.
fn combinations(n: usize, k: usize) -> Vec<Vec<usize>> {
    fn go(start: usize, n: usize, k: usize, current: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
        if current.len() == k {
            out.push(current.clone());
            return;
        }
        for i in start..n {
            current.push(i);
            go(i + 1, n, k, current, out);
            current.pop();
        }
    }
    let mut out = Vec::new();
    if k <= n {
        go(0, n, k, &mut Vec::with_capacity(k), &mut out);
    }
    out
}

/// Rebuilds the key matching `kcv` from `inputs`.
pub fn recover(
    inputs: &[ShareInput],
    kcv: &Kcv,
    only: Option<KeyVersion>,
) -> Result<Recovered, CliError> {
    // Shares rebuild a key only with shares of their own split: grouped by
    // version, split set, threshold and count, so a share of another split
    // (an old file), or one whose threshold or count was edited (the
    // checksum guards against copy errors, not edits), in whatever
    // position, is a group of its own and cannot block the others.
    type Split = (String, u8, u8);
    let mut by_version: BTreeMap<KeyVersion, BTreeMap<Split, Vec<&Share>>> = BTreeMap::new();
    let mut keyrings: Vec<String> = Vec::new();
    for share in inputs.iter().flat_map(|i| i.shares.iter()) {
        let keyring = share.keyring().to_string();
        if !keyrings.contains(&keyring) {
            keyrings.push(keyring);
        }
        by_version
            .entry(share.version())
            .or_default()
            .entry((share.set().to_hex(), share.threshold(), share.count()))
            .or_default()
            .push(share);
    }
    if keyrings.len() > 1 {
        return Err(CliError::SeveralKeyrings {
            found: keyrings.join(", "),
        });
    }
    if let Some(version) = only {
        if !by_version.contains_key(&version) {
            return Err(CliError::VersionNotInShares {
                version,
                found: by_version
                    .keys()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        by_version.retain(|v, _| *v == version);
    }
    let mut tried = Vec::new();
    let groups = by_version
        .iter()
        .flat_map(|(version, sets)| sets.values().map(move |shares| (version, shares)));
    for (version, shares) in groups {
        let need = usize::from(shares[0].threshold());
        if shares.len() < need {
            tried.push(format!(
                "{version}: {} of {need} shares, too few",
                shares.len()
            ));
            continue;
        }
        let mut last_error = None;
        for combo in combinations(shares.len(), need) {
            let chosen: Vec<Share> = combo.iter().map(|&i| shares[i].clone()).collect();
            match crypto_core::combine(&chosen, kcv) {
                Ok(key) => {
                    let mut indices: Vec<u8> = chosen.iter().map(Share::index).collect();
                    indices.sort_unstable();
                    return Ok(Recovered {
                        key,
                        keyring: keyrings[0].clone(),
                        version: *version,
                        indices,
                    });
                }
                Err(e) => last_error = Some(e),
            }
        }
        let mut line = format!("{version}: ");
        match last_error {
            Some(crypto_core::Error::KcvMismatch { .. }) | None => {
                line.push_str("rebuilt, KCV differs");
            }
            Some(other) => {
                let _ = write!(line, "{other}");
            }
        }
        tried.push(line);
    }
    Err(CliError::NoMatchingKey {
        kcv: kcv.to_hex(),
        tried: tried.join("; "),
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use sha2::Digest as _;

    use super::*;

    fn split(version: u32, key: &Key) -> (Vec<Share>, Kcv) {
        let outcome = crypto_core::split(
            key,
            &"orders".parse().unwrap(),
            KeyVersion::new(version).unwrap(),
            2,
            3,
        )
        .unwrap();
        (outcome.shares, outcome.kcv)
    }

    fn input(name: &str, shares: Vec<Share>) -> ShareInput {
        ShareInput {
            source: PathBuf::from(name),
            shares,
            opened_by: None,
        }
    }

    #[test]
    fn picks_the_version_whose_kcv_matches_among_several() {
        let k9 = Key::generate();
        let k10 = Key::generate();
        let (s9, _) = split(9, &k9);
        let (s10, kcv10) = split(10, &k10);
        // Each keyholder's file lists v10 before v9.
        let inputs = [
            input("alice", vec![s10[0].clone(), s9[0].clone()]),
            input("bob", vec![s10[1].clone(), s9[1].clone()]),
        ];
        let got = recover(&inputs, &kcv10, None).unwrap();
        assert_eq!(got.version.number(), 10);
        assert_eq!(got.indices, [1, 2]);
        assert!(kcv10.matches(&got.key, &"orders".parse().unwrap(), got.version));
    }

    #[test]
    fn a_wrong_kcv_names_what_was_tried() {
        let (s9, _) = split(9, &Key::generate());
        let (_, other) = split(9, &Key::generate());
        let inputs = [
            input("a", vec![s9[0].clone()]),
            input("b", vec![s9[2].clone()]),
        ];
        let err = recover(&inputs, &other, None).err().unwrap();
        assert_eq!(
            err.to_string(),
            format!(
                "no key rebuilt from these shares matches KCV {} (v9: rebuilt, KCV differs); check the KCV of the version you need and that the files are shares of the same split",
                other.to_hex()
            )
        );
    }

    #[test]
    fn a_share_of_another_split_given_first_does_not_block() {
        let key = Key::generate();
        let (s, kcv) = split(9, &key);
        // The same version split again, 3 of 5 (an old file, say).
        let other = crypto_core::split(
            &Key::generate(),
            &"orders".parse().unwrap(),
            KeyVersion::new(9).unwrap(),
            3,
            5,
        )
        .unwrap();
        let inputs = [
            input("old", vec![other.shares[0].clone()]),
            input("a", vec![s[0].clone()]),
            input("b", vec![s[1].clone()]),
        ];
        let got = recover(&inputs, &kcv, None).unwrap();
        assert_eq!(got.indices, [1, 2]);
        assert!(kcv.matches(&got.key, &"orders".parse().unwrap(), got.version));
    }

    #[test]
    fn one_bad_share_among_three_does_not_block() {
        let key = Key::generate();
        let (s, kcv) = split(9, &key);
        let (foreign, _) = split(9, &Key::generate());
        let inputs = [
            input("a", vec![foreign[0].clone()]),
            input("b", vec![s[1].clone()]),
            input("c", vec![s[2].clone()]),
        ];
        let got = recover(&inputs, &kcv, Some(KeyVersion::new(9).unwrap())).unwrap();
        assert_eq!(got.indices, [2, 3]);
    }

    /// `line` with one field rewritten and its checksum recomputed: a share
    /// edited on purpose, which the checksum (a copy guard) cannot catch.
    fn edited(share: &Share, from: &str, to: &str) -> Share {
        let line = share.to_line();
        let body = line.rsplit_once(" check=").unwrap().0.replacen(from, to, 1);
        let digest = sha2::Sha256::digest(body.as_bytes());
        let check: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
        Share::parse(&format!("{body} check={check}")).unwrap()
    }

    #[test]
    fn a_share_claiming_another_threshold_given_first_does_not_block() {
        let key = Key::generate();
        let (s, kcv) = split(9, &key);
        for forged in [
            edited(&s[2], "threshold=2", "threshold=3"),
            edited(&s[2], "count=3", "count=4"),
        ] {
            let inputs = [
                input("forged", vec![forged]),
                input("a", vec![s[0].clone()]),
                input("b", vec![s[1].clone()]),
            ];
            let got = recover(&inputs, &kcv, None).unwrap();
            assert_eq!(got.indices, [1, 2]);
        }
    }

    #[test]
    fn too_few_shares_and_missing_version_are_named() {
        let (s, kcv) = split(9, &Key::generate());
        let inputs = [input("a", vec![s[0].clone()])];
        let err = recover(&inputs, &kcv, None).err().unwrap().to_string();
        assert!(err.contains("v9: 1 of 2 shares, too few"), "{err}");
        let err = recover(&inputs, &kcv, Some(KeyVersion::new(10).unwrap()))
            .err()
            .unwrap()
            .to_string();
        assert_eq!(
            err,
            "the share files hold no share of v10 (they hold v9); check --version"
        );
        assert!(matches!(parse_kcv("ABC"), Err(CliError::BadKcv { .. })));
    }
}
