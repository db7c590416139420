//! Splitting a key into shares and rebuilding it, through vsss-rs.
//!
//! The Shamir engine is called only here, behind guards the engine does not
//! give: threshold and count in range, one keyring/version/set across the
//! shares, exactly `threshold` distinct non-zero indices, and the result
//! checked against the key check value before it is returned. vsss-rs returns
//! a wrong secret (not an error) for an altered share, so the KCV check is what
//! keeps a forged share from choosing the key.

use vsss_rs::Gf256;
use zeroize::Zeroizing;

use crate::{Error, Kcv, Key, KeyVersion, KeyringId, SetId, Share, ShareFingerprint};

/// What a split produces: the shares (index `i + 1` at position `i`) and the
/// public facts the daemon stores about them.
pub struct SplitOutcome {
    /// The new split's set id.
    pub set: SetId,
    /// One share per index, in index order.
    pub shares: Vec<Share>,
    /// The key's check value.
    pub kcv: Kcv,
    /// One fingerprint per share, in index order.
    pub fingerprints: Vec<ShareFingerprint>,
}

fn check_parameters(threshold: u8, count: u8) -> Result<(), Error> {
    if threshold < 2 || threshold > count {
        return Err(Error::InvalidThreshold { threshold, count });
    }
    Ok(())
}

/// Splits `key` (version `version` of `keyring`) into `count` shares of which
/// any `threshold` rebuild it, under a fresh set id.
pub fn split(
    key: &Key,
    keyring: &KeyringId,
    version: KeyVersion,
    threshold: u8,
    count: u8,
) -> Result<SplitOutcome, Error> {
    check_parameters(threshold, count)?;
    let raw = Gf256::split_bytes(
        usize::from(threshold),
        usize::from(count),
        key.expose(),
        // Never a generator kept in the process (see `random`): the
        // coefficients of two splits made by forked copies of one process
        // would be the same, and one share of each would give away the XOR
        // of the two keys.
        crate::random::os_rng(),
    )
    .map_err(|e| Error::Shamir {
        reason: e.to_string(),
    })?;
    let raw: Vec<Zeroizing<Vec<u8>>> = raw.into_iter().map(Zeroizing::new).collect();
    let set = SetId::generate();
    let mut shares = Vec::with_capacity(raw.len());
    for (position, bytes) in raw.iter().enumerate() {
        let expected_index = u8::try_from(position + 1).expect("count <= 255");
        // The engine numbers shares 1..=count; anything else would break the
        // index-to-keyholder mapping the daemon records.
        if bytes.len() != 33 || bytes[0] != expected_index {
            return Err(Error::Shamir {
                reason: "the engine returned a share of an unexpected layout".to_owned(),
            });
        }
        let mut data = Zeroizing::new([0u8; 32]);
        data.copy_from_slice(&bytes[1..]);
        shares.push(Share::new(
            keyring.clone(),
            version,
            set,
            threshold,
            count,
            expected_index,
            data,
        ));
    }
    let fingerprints = shares.iter().map(Share::fingerprint).collect();
    Ok(SplitOutcome {
        set,
        shares,
        kcv: Kcv::compute(key, keyring, version),
        fingerprints,
    })
}

/// Rebuilds a key from exactly `threshold` shares of one split and checks it
/// against `kcv` before returning it.
///
/// The shares must agree on keyring, version, set, threshold and count, carry
/// distinct non-zero indices, and be exactly as many as the threshold.
pub fn combine(shares: &[Share], kcv: &Kcv) -> Result<Key, Error> {
    let first = shares
        .first()
        .ok_or(Error::WrongShareCount { have: 0, need: 2 })?;
    check_parameters(first.threshold(), first.count())?;
    for share in shares {
        share.check_belongs_to(first.keyring(), first.version(), first.set())?;
        for (field, expected, found) in [
            ("threshold", first.threshold(), share.threshold()),
            ("count", first.count(), share.count()),
        ] {
            if expected != found {
                return Err(Error::ShareParametersDiffer {
                    field,
                    expected,
                    found,
                });
            }
        }
        if share.index() == 0 || share.index() > share.count() {
            return Err(Error::MalformedShare {
                field: "index",
                reason: format!(
                    "must be between 1 and count {}, found {}",
                    share.count(),
                    share.index()
                ),
            });
        }
    }
    for (i, share) in shares.iter().enumerate() {
        if shares[..i]
            .iter()
            .any(|earlier| earlier.index() == share.index())
        {
            return Err(Error::DuplicateShareIndex {
                index: share.index(),
            });
        }
    }
    if shares.len() != usize::from(first.threshold()) {
        return Err(Error::WrongShareCount {
            have: shares.len(),
            need: first.threshold(),
        });
    }
    let raw: Vec<Vec<u8>> = shares
        .iter()
        .map(|share| {
            let mut bytes = Vec::with_capacity(33);
            bytes.push(share.index());
            bytes.extend_from_slice(share.data());
            bytes
        })
        .collect();
    let raw = Zeroizing::new(raw);
    let secret = Zeroizing::new(Gf256::combine_bytes(&*raw).map_err(|e| Error::Shamir {
        reason: e.to_string(),
    })?);
    let key = Key::from_slice(&secret).map_err(|_| Error::KcvMismatch {
        version: first.version(),
    })?;
    kcv.verify(&key, first.keyring(), first.version())?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> KeyringId {
        "orders".parse().unwrap()
    }

    fn v(n: u32) -> KeyVersion {
        KeyVersion::new(n).unwrap()
    }

    #[test]
    fn two_of_three_rebuild_and_one_is_not_enough() {
        let key = Key::generate();
        let out = split(&key, &ring(), v(9), 2, 3).unwrap();
        assert_eq!(out.shares.len(), 3);
        let rebuilt = combine(&[out.shares[2].clone(), out.shares[0].clone()], &out.kcv).unwrap();
        assert_eq!(rebuilt.expose(), key.expose());
        assert_eq!(
            combine(&out.shares[..1], &out.kcv).unwrap_err(),
            Error::WrongShareCount { have: 1, need: 2 }
        );
        assert_eq!(
            combine(&out.shares, &out.kcv).unwrap_err(),
            Error::WrongShareCount { have: 3, need: 2 }
        );
    }

    #[test]
    fn refuses_bad_parameters() {
        let key = Key::generate();
        for (t, c) in [(1, 3), (0, 0), (4, 3)] {
            assert_eq!(
                split(&key, &ring(), v(1), t, c)
                    .err()
                    .map(|e| e.to_string()),
                Some(
                    Error::InvalidThreshold {
                        threshold: t,
                        count: c
                    }
                    .to_string()
                )
            );
        }
        assert!(split(&key, &ring(), v(1), 255, 255).is_ok());
    }

    #[test]
    fn refuses_mixed_sets_versions_and_duplicates() {
        let key = Key::generate();
        let a = split(&key, &ring(), v(9), 2, 3).unwrap();
        let b = split(&key, &ring(), v(9), 2, 3).unwrap();
        assert!(matches!(
            combine(&[a.shares[0].clone(), b.shares[1].clone()], &a.kcv),
            Err(Error::ShareFromOtherSet { .. })
        ));
        assert_eq!(
            combine(&[a.shares[1].clone(), a.shares[1].clone()], &a.kcv).unwrap_err(),
            Error::DuplicateShareIndex { index: 2 }
        );
        let c = split(&key, &ring(), v(10), 2, 3).unwrap();
        assert_eq!(
            combine(&[a.shares[0].clone(), c.shares[1].clone()], &a.kcv).unwrap_err(),
            Error::ShareFromOtherVersion {
                expected: v(9),
                found: v(10)
            }
        );
        let d = split(&key, &"billing".parse().unwrap(), v(9), 2, 3).unwrap();
        assert!(matches!(
            combine(&[a.shares[0].clone(), d.shares[1].clone()], &a.kcv),
            Err(Error::ShareFromOtherKeyring { .. })
        ));
    }
}
