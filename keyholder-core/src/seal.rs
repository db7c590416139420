//! The seal state machine: gathering shares until every live key version can
//! be rebuilt. Pure: no I/O, no HTTP, the clock is passed in.
//!
//! Owns the rules of DESIGN.md "Seal state": a share is checked on arrival
//! ([`crate::admission`]) against the fingerprint recorded for its index and
//! the principal it was dealt to, so a bad share is refused at once, by name,
//! and the good shares already in are kept; one identity counts once per version and an index
//! once; progress expires after the TTL. Versions are keyed by [`KeyVersion`],
//! so "v10" and "v9" are ordered as numbers whatever order they arrive in.
//!
//! It never logs, stores or shows share data; refusal reasons name the
//! principal, version and index only.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crypto_core::{Key, KeyVersion, KeyringId, Share};
use keyholder_api::{ShareLine, ShareOutcome, UnsealProgress};

use crate::admission::{self, Scope};
use crate::facts::VersionFacts;

struct Gathering {
    started: Instant,
    /// Share index -> (principal, share).
    shares: BTreeMap<u8, (String, Share)>,
}

impl Gathering {
    fn principals(&self) -> Vec<String> {
        let names: BTreeSet<&str> = self.shares.values().map(|(p, _)| p.as_str()).collect();
        names.into_iter().map(str::to_owned).collect()
    }
}

/// The keys rebuilt once every required version reached its threshold.
/// Dropping it zeroizes them.
pub struct Rebuilt {
    /// Every rebuilt key, in numeric order of version.
    pub keys: BTreeMap<KeyVersion, Key>,
}

impl core::fmt::Debug for Rebuilt {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Rebuilt")
            .field("versions", &self.keys.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// A version whose shares were all in but did not rebuild its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RebuildFailure {
    /// The version.
    pub version: KeyVersion,
    /// Why (no share data).
    pub reason: String,
}

/// What one submission did.
#[derive(Debug)]
pub struct Submission {
    /// One outcome per submitted line, in request order.
    pub outcomes: Vec<ShareOutcome>,
    /// The keys, when this submission completed every required version.
    pub rebuilt: Option<Rebuilt>,
    /// Versions that had their shares but failed to rebuild; their progress
    /// was cleared.
    pub failures: Vec<RebuildFailure>,
}

/// Gathers shares while the daemon is sealed.
pub struct SealMachine {
    keyring: KeyringId,
    versions: BTreeMap<KeyVersion, VersionFacts>,
    ttl: Duration,
    gathering: BTreeMap<KeyVersion, Gathering>,
}

impl SealMachine {
    /// A machine for `keyring`'s `versions`, keeping partial progress `ttl`.
    pub fn new(
        keyring: KeyringId,
        versions: BTreeMap<KeyVersion, VersionFacts>,
        ttl: Duration,
    ) -> Self {
        Self {
            keyring,
            versions,
            ttl,
            gathering: BTreeMap::new(),
        }
    }

    /// The versions unsealing needs, in numeric order.
    pub fn required(&self) -> Vec<KeyVersion> {
        self.versions
            .iter()
            .filter(|(_, f)| f.required)
            .map(|(v, _)| *v)
            .collect()
    }

    /// Drops progress older than the TTL; returns the versions dropped.
    pub fn expire(&mut self, now: Instant) -> Vec<KeyVersion> {
        let ttl = self.ttl;
        let expired: Vec<KeyVersion> = self
            .gathering
            .iter()
            .filter(|(_, g)| now.saturating_duration_since(g.started) >= ttl)
            .map(|(v, _)| *v)
            .collect();
        for version in &expired {
            self.gathering.remove(version);
        }
        expired
    }

    /// Takes new facts of the versions (a rotation step, another node's
    /// step read from the store): the shares in for a version whose facts
    /// admit them alike are kept, whatever the plan now requires; a version
    /// that changed or is gone loses its progress. Returns the versions
    /// whose progress was dropped.
    pub fn set_versions(
        &mut self,
        versions: BTreeMap<KeyVersion, VersionFacts>,
    ) -> Vec<KeyVersion> {
        let dropped: Vec<KeyVersion> = self
            .gathering
            .keys()
            .filter(|v| match (self.versions.get(*v), versions.get(*v)) {
                (Some(old), Some(new)) => !new.admits_alike(old),
                _ => true,
            })
            .copied()
            .collect();
        for version in &dropped {
            self.gathering.remove(version);
        }
        self.versions = versions;
        dropped
    }

    /// Drops all progress; returns the versions that had some.
    pub fn reset(&mut self) -> Vec<KeyVersion> {
        let versions = self.gathering.keys().copied().collect();
        self.gathering.clear();
        versions
    }

    /// Drops the shares `principal` submitted, keeping everyone else's;
    /// returns the versions it had a share in.
    pub fn withdraw(&mut self, principal: &str) -> Vec<KeyVersion> {
        let mut withdrawn = Vec::new();
        for (version, gathering) in &mut self.gathering {
            let before = gathering.shares.len();
            gathering.shares.retain(|_, (p, _)| p != principal);
            if gathering.shares.len() < before {
                withdrawn.push(*version);
            }
        }
        self.gathering.retain(|_, g| !g.shares.is_empty());
        withdrawn
    }

    /// Drops the shares at `(version, index)` that `principal` submitted
    /// (a submission whose audit entry could not be written), keeping
    /// everything else.
    pub fn forget(&mut self, principal: &str, shares: &[(KeyVersion, u8)]) {
        for (version, index) in shares {
            if let Some(gathering) = self.gathering.get_mut(version)
                && gathering
                    .shares
                    .get(index)
                    .is_some_and(|(p, _)| p == principal)
            {
                gathering.shares.remove(index);
            }
        }
        self.gathering.retain(|_, g| !g.shares.is_empty());
    }

    /// Progress of versions with shares in, in numeric order.
    pub fn progress(&self) -> Vec<UnsealProgress> {
        self.gathering
            .iter()
            .map(|(version, g)| UnsealProgress {
                version: *version,
                have: u8::try_from(g.principals().len()).unwrap_or(u8::MAX),
                need: self.versions[version].threshold,
                from: g.principals(),
            })
            .collect()
    }

    /// Takes the shares `principal` submitted, checking each on arrival, and
    /// rebuilds every key once every required version has its threshold.
    pub fn submit(&mut self, principal: &str, lines: &[ShareLine], now: Instant) -> Submission {
        self.expire(now);
        let mut outcomes = Vec::with_capacity(lines.len());
        for (i, line) in lines.iter().enumerate() {
            let verdict = admission::admit(
                line.expose(),
                principal,
                &self.keyring,
                &self.versions,
                Scope::Unseal,
                |version, index, principal| {
                    self.gathering.get(&version).is_some_and(|g| {
                        g.shares.contains_key(&index)
                            || g.shares.values().any(|(p, _)| p == principal)
                    })
                },
            );
            outcomes.push(admission::outcome(i + 1, principal, &verdict));
            if let Ok(share) = verdict {
                self.gathering
                    .entry(share.version())
                    .or_insert_with(|| Gathering {
                        started: now,
                        shares: BTreeMap::new(),
                    })
                    .shares
                    .insert(share.index(), (principal.to_owned(), share));
            }
        }
        let (rebuilt, failures) = self.rebuild_when_complete();
        Submission {
            outcomes,
            rebuilt,
            failures,
        }
    }

    fn rebuild_when_complete(&mut self) -> (Option<Rebuilt>, Vec<RebuildFailure>) {
        let required = self.required();
        let complete = |v: &KeyVersion, this: &Self| {
            this.gathering
                .get(v)
                .is_some_and(|g| g.shares.len() >= usize::from(this.versions[v].threshold))
        };
        if required.is_empty() || !required.iter().all(|v| complete(v, self)) {
            return (None, Vec::new());
        }
        let ready: Vec<KeyVersion> = self
            .gathering
            .keys()
            .filter(|v| complete(v, self))
            .copied()
            .collect();
        let mut keys = BTreeMap::new();
        let mut failures = Vec::new();
        for version in ready {
            let gathering = self.gathering.remove(&version).expect("listed above");
            let facts = &self.versions[&version];
            let shares: Vec<Share> = gathering
                .shares
                .into_values()
                .take(usize::from(facts.threshold))
                .map(|(_, share)| share)
                .collect();
            match crypto_core::combine(&shares, &facts.kcv) {
                Ok(key) => {
                    keys.insert(version, key);
                }
                Err(e) => failures.push(RebuildFailure {
                    version,
                    reason: e.to_string(),
                }),
            }
        }
        if failures.iter().any(|f| self.versions[&f.version].required) {
            // Not every live version rebuilt: nothing is loaded and the rest
            // is zeroized as `keys` drops.
            self.gathering.clear();
            return (None, failures);
        }
        self.gathering.clear();
        (Some(Rebuilt { keys }), failures)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::DealtShare;
    use keyholder_api::VersionState;
    use zeroize::Zeroizing;

    const KEYHOLDERS: [&str; 3] = ["alice", "bob", "carol"];

    fn v(n: u32) -> KeyVersion {
        KeyVersion::new(n).unwrap()
    }

    struct Fixture {
        machine: SealMachine,
        /// version -> shares in index order (alice, bob, carol).
        shares: BTreeMap<KeyVersion, Vec<Share>>,
        keys: BTreeMap<KeyVersion, Key>,
        now: Instant,
    }

    fn fixture(live: &[u32], optional: &[u32]) -> Fixture {
        let keyring: KeyringId = "orders".parse().unwrap();
        let mut facts = BTreeMap::new();
        let mut shares = BTreeMap::new();
        let mut keys = BTreeMap::new();
        for (n, required) in live
            .iter()
            .map(|n| (n, true))
            .chain(optional.iter().map(|n| (n, false)))
        {
            let key = Key::generate();
            let split = crypto_core::split(&key, &keyring, v(*n), 2, 3).unwrap();
            let dealt = split
                .fingerprints
                .iter()
                .zip(KEYHOLDERS)
                .enumerate()
                .map(|(i, (fp, name))| {
                    (
                        i as u8 + 1,
                        DealtShare {
                            fingerprint: *fp,
                            principal: name.to_owned(),
                        },
                    )
                })
                .collect();
            facts.insert(
                v(*n),
                VersionFacts {
                    set: split.set,
                    threshold: 2,
                    count: 3,
                    kcv: split.kcv,
                    dealt,
                    state: if required {
                        VersionState::Active
                    } else {
                        VersionState::Prepared
                    },
                    required,
                },
            );
            shares.insert(v(*n), split.shares);
            keys.insert(v(*n), key);
        }
        Fixture {
            machine: SealMachine::new(keyring, facts, Duration::from_secs(900)),
            shares,
            keys,
            now: Instant::now(),
        }
    }

    fn line(share: &Share) -> ShareLine {
        ShareLine::new(Zeroizing::new(share.to_line().to_string()))
    }

    impl Fixture {
        fn share(&self, n: u32, who: usize) -> ShareLine {
            line(&self.shares[&v(n)][who])
        }

        fn submit(&mut self, who: usize, lines: &[ShareLine]) -> Submission {
            self.machine.submit(KEYHOLDERS[who], lines, self.now)
        }

        fn assert_rebuilt(&self, rebuilt: &Rebuilt, versions: &[u32]) {
            let got: Vec<u32> = rebuilt.keys.keys().map(|k| k.number()).collect();
            assert_eq!(got, versions);
            for (version, key) in &rebuilt.keys {
                let kcv = crypto_core::Kcv::compute(
                    &self.keys[version],
                    &"orders".parse().unwrap(),
                    *version,
                );
                assert!(kcv.matches(key, &"orders".parse().unwrap(), *version));
            }
        }
    }

    #[test]
    fn v9_and_v10_in_both_orders_in_one_request_each() {
        for order in [[9, 10], [10, 9]] {
            let mut f = fixture(&[9, 10], &[]);
            let first = f.submit(0, &[f.share(order[0], 0), f.share(order[1], 0)]);
            assert!(
                first.outcomes.iter().all(|o| o.accepted),
                "{:?}",
                first.outcomes
            );
            assert!(first.rebuilt.is_none());
            let progress: Vec<u32> = f
                .machine
                .progress()
                .iter()
                .map(|p| p.version.number())
                .collect();
            assert_eq!(progress, [9, 10]);
            let second = f.submit(1, &[f.share(order[1], 1), f.share(order[0], 1)]);
            let rebuilt = second.rebuilt.expect("both versions complete");
            f.assert_rebuilt(&rebuilt, &[9, 10]);
        }
    }

    #[test]
    fn versions_split_across_requests_are_all_rebuilt() {
        let mut f = fixture(&[9, 10], &[]);
        assert!(f.submit(1, &[f.share(10, 1)]).rebuilt.is_none());
        assert!(
            f.submit(0, &[f.share(10, 0)]).rebuilt.is_none(),
            "v9 is still missing"
        );
        assert!(f.submit(2, &[f.share(9, 2)]).rebuilt.is_none());
        let done = f.submit(0, &[f.share(9, 0)]);
        f.assert_rebuilt(&done.rebuilt.unwrap(), &[9, 10]);
    }

    #[test]
    fn the_same_keyholder_counts_once() {
        let mut f = fixture(&[9], &[]);
        f.submit(0, &[f.share(9, 0)]);
        let again = f.submit(0, &[f.share(9, 0)]);
        assert!(again.outcomes[0].accepted);
        assert_eq!(
            again.outcomes[0].reason.as_deref(),
            Some("alice's share of v9 is already counted; a keyholder counts once per version")
        );
        assert!(again.rebuilt.is_none());
        assert_eq!(f.machine.progress()[0].have, 1);
        assert_eq!(f.machine.progress()[0].from, ["alice"]);
    }

    #[test]
    fn a_share_of_another_keyholder_is_refused() {
        let mut f = fixture(&[9], &[]);
        let out = f.submit(1, &[f.share(9, 0)]);
        assert!(!out.outcomes[0].accepted);
        assert_eq!(
            out.outcomes[0].reason.as_deref(),
            Some(
                "share of v9 index 1 was dealt to alice, not bob; each keyholder submits only their own share with their own certificate"
            )
        );
        assert!(f.machine.progress().is_empty());
    }

    #[test]
    fn a_forged_share_is_refused_and_the_good_ones_stay() {
        let mut f = fixture(&[9], &[]);
        f.submit(0, &[f.share(9, 0)]);
        // Same parameters, other data, valid checksum: only the fingerprint
        // can tell.
        let other =
            crypto_core::split(&Key::generate(), &"orders".parse().unwrap(), v(9), 2, 3).unwrap();
        let forged = other.shares[2]
            .to_line()
            .replace(&other.set.to_hex(), &f.machine.versions[&v(9)].set.to_hex());
        let body = forged.rsplit_once(" check=").unwrap().0.to_owned();
        let check = hex::encode(&<sha2::Sha256 as sha2::Digest>::digest(body.as_bytes())[..4]);
        let forged = ShareLine::new(Zeroizing::new(format!("{body} check={check}")));
        let out = f.submit(2, &[forged]);
        assert!(!out.outcomes[0].accepted);
        assert_eq!(
            out.outcomes[0].reason.as_deref(),
            Some(
                "carol's share of v9 index 3 does not match the fingerprint recorded when it was dealt: it is corrupted or forged; decrypt the share file again (the shares already in are kept)"
            )
        );
        assert_eq!(f.machine.progress()[0].from, ["alice"]);
        let done = f.submit(1, &[f.share(9, 1)]);
        f.assert_rebuilt(&done.rebuilt.unwrap(), &[9]);
    }

    #[test]
    fn unknown_versions_and_other_keyrings_are_refused_by_name() {
        let mut f = fixture(&[9], &[]);
        let stranger = fixture(&[11], &[]);
        let out = f.submit(0, &[stranger.share(11, 0)]);
        assert_eq!(
            out.outcomes[0].reason.as_deref(),
            Some(
                "v11 is not a version of keyring orders (known: v9); it was refused, nothing else changed"
            )
        );
        assert_eq!(out.outcomes[0].version, Some(v(11)));
        let resplit = fixture(&[9], &[]);
        let out = f.submit(0, &[resplit.share(9, 0)]);
        assert!(
            out.outcomes[0]
                .reason
                .as_deref()
                .unwrap()
                .contains("older or newer split of v9")
        );
        let garbage = ShareLine::new(Zeroizing::new("khs1 nonsense".to_owned()));
        let out = f.submit(0, &[garbage]);
        assert!(!out.outcomes[0].accepted);
        assert_eq!(out.outcomes[0].version, None);
    }

    #[test]
    fn progress_expires_after_the_ttl_and_on_reset() {
        let mut f = fixture(&[9], &[]);
        f.submit(0, &[f.share(9, 0)]);
        f.now += Duration::from_secs(899);
        assert!(f.machine.expire(f.now).is_empty());
        f.now += Duration::from_secs(1);
        assert_eq!(f.machine.expire(f.now), [v(9)]);
        let out = f.submit(1, &[f.share(9, 1)]);
        assert!(
            out.rebuilt.is_none(),
            "alice's expired share no longer counts"
        );
        assert_eq!(f.machine.reset(), [v(9)]);
        assert!(f.machine.progress().is_empty());
    }

    #[test]
    fn a_keyholder_withdraws_only_its_own_shares() {
        let mut f = fixture(&[9, 10], &[]);
        f.submit(0, &[f.share(9, 0), f.share(10, 0)]);
        f.submit(1, &[f.share(9, 1)]);
        assert_eq!(f.machine.withdraw("carol"), []);
        assert_eq!(f.machine.withdraw("alice"), [v(9), v(10)]);
        let progress = f.machine.progress();
        assert_eq!(progress.len(), 1, "v10 had only alice's share");
        assert_eq!(progress[0].version, v(9));
        assert_eq!(progress[0].from, ["bob"]);
        // Alice may submit again; with bob's share v9 is complete.
        f.submit(0, &[f.share(10, 0)]);
        assert!(
            f.submit(2, &[f.share(10, 2)]).rebuilt.is_none(),
            "v9 waits for a second share"
        );
        let done = f.submit(0, &[f.share(9, 0)]);
        f.assert_rebuilt(&done.rebuilt.unwrap(), &[9, 10]);
    }

    #[test]
    fn new_facts_keep_the_progress_of_every_version_they_admit_alike() {
        let mut f = fixture(&[9], &[10]);
        f.submit(0, &[f.share(9, 0), f.share(10, 0)]);
        // The same facts again (a cluster node's poll of the stored
        // rotation), then a plan that makes v10 required too.
        assert_eq!(f.machine.set_versions(f.machine.versions.clone()), []);
        let mut facts = f.machine.versions.clone();
        facts.get_mut(&v(10)).unwrap().required = true;
        assert_eq!(f.machine.set_versions(facts.clone()), []);
        assert_eq!(f.machine.required(), [v(9), v(10)]);
        let progress = f.machine.progress();
        assert_eq!(progress.len(), 2);
        assert!(progress.iter().all(|p| p.from == ["alice"]), "{progress:?}");
        // v10's stored state changed: its shares go, v9's stay.
        facts.get_mut(&v(10)).unwrap().state = VersionState::Active;
        assert_eq!(f.machine.set_versions(facts), [v(10)]);
        assert_eq!(f.machine.progress().len(), 1);
        assert_eq!(f.machine.progress()[0].version, v(9));
        assert!(
            f.submit(1, &[f.share(9, 1)]).rebuilt.is_none(),
            "v10 is required and has no share in"
        );
        f.submit(0, &[f.share(10, 0)]);
        let done = f.submit(1, &[f.share(10, 1)]);
        f.assert_rebuilt(&done.rebuilt.unwrap(), &[9, 10]);
    }

    #[test]
    fn optional_versions_are_taken_when_given_and_never_awaited() {
        let mut f = fixture(&[9], &[10]);
        f.submit(0, &[f.share(10, 0), f.share(9, 0)]);
        let done = f.submit(1, &[f.share(9, 1), f.share(10, 1)]);
        f.assert_rebuilt(&done.rebuilt.unwrap(), &[9, 10]);
        let mut g = fixture(&[9], &[10]);
        g.submit(0, &[g.share(9, 0)]);
        let done = g.submit(1, &[g.share(9, 1)]);
        g.assert_rebuilt(&done.rebuilt.unwrap(), &[9]);
    }
}
