//! The rotation machine, path by path.

use super::*;
use RotationState::*;

fn v(n: u32) -> KeyVersion {
    KeyVersion::new(n).unwrap()
}

fn consumers() -> Vec<String> {
    vec!["db1".to_owned()]
}

/// alice, bob and carol; two verifications suffice.
fn two_of_three() -> VerifyQuorum {
    VerifyQuorum {
        min_verified: 2,
        keyholders: ["alice", "bob", "carol"].map(str::to_owned).to_vec(),
    }
}

/// Both operators approve a rollback.
fn roll_back(r: &mut Rotation) -> Outcome {
    assert_eq!(
        r.rollback("olga", true).unwrap(),
        Outcome::Approved { approvals: 1 }
    );
    r.rollback("omar", true).unwrap()
}

fn at_reencrypting() -> Rotation {
    let mut r = Rotation::idle(v(9));
    r.prepare(None).unwrap();
    r.share_verified("alice", 2).unwrap();
    r.share_verified("bob", 2).unwrap();
    r.activate().unwrap();
    r.acknowledge("db1");
    r.switch(&consumers()).unwrap();
    r
}

#[test]
fn the_forward_path_sets_versions_explicitly() {
    let mut r = Rotation::idle(v(9));
    assert_eq!(r.live_versions(), vec![v(9)]);
    assert_eq!(r.prepare(None).unwrap(), v(10));
    assert_eq!((r.state(), r.write_version()), (Prepared, v(9)));
    assert_eq!(r.optional_version(), Some(v(10)));
    assert!(!r.share_verified("alice", 2).unwrap());
    assert!(
        !r.share_verified("alice", 2).unwrap(),
        "one keyholder counts once"
    );
    assert!(r.share_verified("bob", 2).unwrap());
    r.activate().unwrap();
    assert_eq!(r.live_versions(), vec![v(9), v(10)]);
    assert_eq!(
        r.write_version(),
        v(9),
        "dual read writes the lower version"
    );
    assert_eq!(
        r.check_switch(&consumers()).unwrap_err().to_string(),
        "a consumer must fetch the keyring with both versions before the switch (their `keyholder hook` acknowledges it); waiting for: db1"
    );
    assert!(r.acknowledge("db1"));
    r.switch(&consumers()).unwrap();
    assert_eq!((r.state(), r.write_version()), (Reencrypting, v(10)));
    assert_eq!(
        r.job(),
        Some(Job {
            from: v(9),
            to: v(10)
        })
    );
    r.acknowledge("db1");
    r.drained(&consumers()).unwrap();
    assert_eq!(r.job(), None);
    assert_eq!(
        r.retire(v(9), "olga", 0, false, &two_of_three()).unwrap(),
        Outcome::Planned
    );
    assert_eq!(
        r.retire(v(9), "olga", 0, true, &two_of_three()).unwrap(),
        Outcome::Approved { approvals: 1 }
    );
    assert_eq!(
        r.retire(v(9), "olga", 0, true, &two_of_three())
            .unwrap_err()
            .to_string(),
        "olga already approved retiring v9; a second, different operator must run the same command"
    );
    assert_eq!(
        r.retire(v(9), "omar", 0, true, &two_of_three()).unwrap(),
        Outcome::Executed
    );
    assert_eq!(r.live_versions(), vec![v(10)]);
    assert_eq!(r.write_version(), v(10));
    assert_eq!(r.prepare(None).unwrap(), v(11));
}

#[test]
fn v10_stays_above_v9_whatever_the_spelling() {
    let mut r = Rotation::idle("v9".parse().unwrap());
    r.prepare(Some("10".parse().unwrap())).unwrap();
    assert_eq!(r.next(), Some(v(10)));
    let mut r = Rotation::idle(v(10));
    assert_eq!(
        r.prepare(Some(v(9))).unwrap_err().to_string(),
        "the new version must be above v10; v9 is not"
    );
}

#[test]
fn retire_refuses_records_another_version_and_early_states() {
    let mut r = at_reencrypting();
    assert!(matches!(
        r.retire(v(9), "olga", 0, true, &two_of_three())
            .unwrap_err(),
        TransitionError::WrongState {
            actual: Reencrypting,
            ..
        }
    ));
    r.acknowledge("db1");
    r.drained(&consumers()).unwrap();
    assert_eq!(
        r.retire(v(9), "olga", 3, true, &two_of_three())
            .unwrap_err()
            .to_string(),
        "v9 still encrypts 3 record(s); it cannot be retired until a full scan finds none"
    );
    assert_eq!(
        r.retire(v(10), "olga", 0, true, &two_of_three())
            .unwrap_err()
            .to_string(),
        "only v9 can be retired now (it is the version this rotation replaced); v10 is not"
    );
    assert_eq!(r.state(), Drained, "refusals change nothing");
}

#[test]
fn rollback_before_dual_write_drops_the_new_version_at_once() {
    for steps in 1..=3 {
        let mut r = Rotation::idle(v(9));
        r.prepare(None).unwrap();
        if steps >= 2 {
            r.share_verified("alice", 2).unwrap();
            r.share_verified("bob", 2).unwrap();
        }
        if steps >= 3 {
            r.activate().unwrap();
        }
        assert_eq!(roll_back(&mut r), Outcome::Executed);
        assert_eq!(r, Rotation::idle(v(9)));
    }
}

#[test]
fn rollback_after_the_switch_moves_records_back_first() {
    let mut r = at_reencrypting();
    r.set_paused(true).unwrap();
    assert_eq!(roll_back(&mut r), Outcome::Executed);
    assert_eq!(r.state(), RollingBack);
    assert!(r.paused(), "a pause stays in force through the rollback");
    r.set_paused(false).unwrap();
    assert_eq!(r.write_version(), v(9));
    assert_eq!(r.live_versions(), vec![v(9), v(10)]);
    assert_eq!(
        r.job(),
        Some(Job {
            from: v(10),
            to: v(9)
        })
    );
    r.acknowledge("db1");
    r.drained(&consumers()).unwrap();
    assert_eq!(r, Rotation::idle(v(9)));
    assert!(Rotation::idle(v(9)).rollback("olga", false).is_err());
}

#[test]
fn resume_after_the_drain_scans_again_and_forgets_approvals() {
    let mut r = at_reencrypting();
    r.acknowledge("db1");
    r.drained(&consumers()).unwrap();
    r.retire(v(9), "olga", 0, true, &two_of_three()).unwrap();
    assert!(r.set_paused(true).is_err(), "nothing to pause once drained");
    r.set_paused(false).unwrap();
    assert_eq!(r.state(), Reencrypting);
    assert_eq!(
        r.job(),
        Some(Job {
            from: v(9),
            to: v(10)
        })
    );
    assert_eq!(r.retire_approvals().count(), 0);
}

#[test]
fn a_retired_version_cannot_be_rolled_back_to() {
    let mut r = at_reencrypting();
    r.acknowledge("db1");
    r.drained(&consumers()).unwrap();
    r.retire(v(9), "olga", 0, true, &two_of_three()).unwrap();
    r.retire(v(9), "omar", 0, true, &two_of_three()).unwrap();
    assert!(matches!(
        r.rollback("olga", true).unwrap_err(),
        TransitionError::WrongState {
            actual: Retired,
            ..
        }
    ));
}

#[test]
fn every_state_round_trips_through_json() {
    let mut r = at_reencrypting();
    r.set_paused(true).unwrap();
    let text = serde_json::to_string(&r).unwrap();
    assert!(text.contains("\"state\":\"reencrypting\""));
    assert_eq!(serde_json::from_str::<Rotation>(&text).unwrap(), r);
    assert!(serde_json::from_str::<Rotation>(&text.replace("paused", "pawsed")).is_err());
}

#[test]
fn out_of_order_commands_say_what_to_do() {
    let mut r = Rotation::idle(v(9));
    assert_eq!(
        r.activate().unwrap_err().to_string(),
        "`activate` needs the rotation in shares_verified; it is in idle; at least `threshold` keyholders must run `keyholder share verify` first"
    );
    r.prepare(None).unwrap();
    assert_eq!(
        r.prepare(None).unwrap_err().to_string(),
        "`prepare` needs the rotation in idle or retired; it is in prepared; finish or roll back the rotation under way first"
    );
    assert!(r.set_paused(true).is_err());
}

#[test]
fn a_rollback_needs_two_distinct_operators_and_a_plan_changes_nothing() {
    let mut r = at_reencrypting();
    let before = r.clone();
    assert_eq!(r.rollback("olga", false).unwrap(), Outcome::Planned);
    assert_eq!(r, before, "a plan records nothing");
    assert_eq!(
        r.rollback("olga", true).unwrap(),
        Outcome::Approved { approvals: 1 }
    );
    assert_eq!((r.state(), r.write_version()), (Reencrypting, v(10)));
    assert_eq!(
        r.rollback("olga", true).unwrap_err().to_string(),
        "olga already approved rolling back v10; a second, different operator must run the same command"
    );
    assert_eq!(r.rollback("olga", false).unwrap(), Outcome::Planned);
    assert_eq!(r.rollback_approvals().collect::<Vec<_>>(), ["olga"]);
    assert_eq!(r.rollback("omar", true).unwrap(), Outcome::Executed);
    assert_eq!(r.state(), RollingBack);
    assert_eq!(r.rollback_approvals().count(), 0);
}

#[test]
fn retire_waits_for_min_verified_keyholders_and_names_who_is_missing() {
    let mut r = at_reencrypting();
    r.acknowledge("db1");
    r.drained(&consumers()).unwrap();
    let all_three = VerifyQuorum {
        min_verified: 3,
        ..two_of_three()
    };
    for execute in [false, true] {
        assert_eq!(
            r.retire(v(9), "olga", 0, execute, &all_three)
                .unwrap_err()
                .to_string(),
            "2 keyholder(s) verified their share of v10 (alice, bob); retiring v9 needs 3 (rotation.min_verified), so that one absent keyholder cannot stop an unseal; waiting for: carol (`keyholder share verify`)"
        );
    }
    assert_eq!(r.retire_approvals().count(), 0);
    assert!(
        r.accepts_share_verify(),
        "carol can still verify once drained"
    );
    assert!(!r.share_verified("carol", 2).unwrap());
    assert_eq!(
        r.retire(v(9), "olga", 0, true, &all_three).unwrap(),
        Outcome::Approved { approvals: 1 }
    );
    assert_eq!(
        r.retire(v(9), "omar", 0, true, &all_three).unwrap(),
        Outcome::Executed
    );
    assert!(!r.accepts_share_verify());
}

/// The machine at rest in each state it can be persisted in (DualWrite is
/// passed through inside `switch`), reached by the forward path or a
/// rollback.
fn at(state: RotationState) -> Rotation {
    let mut r = Rotation::idle(v(9));
    let path: &[RotationState] = match state {
        Idle => &[],
        Prepared => &[Prepared],
        SharesVerified => &[Prepared, SharesVerified],
        DualRead => &[Prepared, SharesVerified, DualRead],
        DualWrite | Reencrypting => &[Prepared, SharesVerified, DualRead, Reencrypting],
        Drained => &[Prepared, SharesVerified, DualRead, Reencrypting, Drained],
        Retired => &[
            Prepared,
            SharesVerified,
            DualRead,
            Reencrypting,
            Drained,
            Retired,
        ],
        RollingBack => &[
            Prepared,
            SharesVerified,
            DualRead,
            Reencrypting,
            RollingBack,
        ],
    };
    for step in path {
        match step {
            Prepared => {
                r.prepare(None).unwrap();
            }
            SharesVerified => {
                r.share_verified("alice", 2).unwrap();
                r.share_verified("bob", 2).unwrap();
            }
            DualRead => r.activate().unwrap(),
            Reencrypting => {
                r.acknowledge("db1");
                r.switch(&consumers()).unwrap();
            }
            Drained => {
                r.acknowledge("db1");
                r.drained(&consumers()).unwrap();
            }
            Retired => {
                r.retire(v(9), "olga", 0, true, &two_of_three()).unwrap();
                r.retire(v(9), "omar", 0, true, &two_of_three()).unwrap();
            }
            RollingBack => {
                roll_back(&mut r);
            }
            Idle | DualWrite => unreachable!(),
        }
        assert_eq!(r.state(), *step, "reaching {state}");
    }
    r
}

/// Every command against every state: allowed exactly where the design
/// says, and a refusal changes nothing.
#[test]
fn every_transition_is_allowed_or_refused_in_every_state() {
    type Command = fn(&mut Rotation) -> Result<(), TransitionError>;
    let commands: [(&str, Command, &[RotationState]); 10] = [
        ("prepare", |r| r.prepare(None).map(drop), &[Idle, Retired]),
        (
            "share verify",
            |r| r.share_verified("carol", 2).map(drop),
            &[Prepared, SharesVerified, DualRead, Reencrypting, Drained],
        ),
        ("activate", Rotation::activate, &[SharesVerified]),
        (
            "switch",
            |r| {
                r.acknowledge("db1");
                r.switch(&consumers())
            },
            &[DualRead],
        ),
        (
            "drained",
            |r| {
                r.acknowledge("db1");
                r.drained(&consumers())
            },
            &[Reencrypting, RollingBack],
        ),
        (
            "pause",
            |r| r.set_paused(true),
            &[Reencrypting, RollingBack],
        ),
        (
            "resume",
            |r| r.set_paused(false),
            &[Reencrypting, RollingBack, Drained],
        ),
        (
            "retire",
            |r| r.retire(v(9), "olga", 0, true, &two_of_three()).map(drop),
            &[Drained],
        ),
        (
            "retire plan",
            |r| {
                r.retire(v(9), "ophelia", 0, false, &two_of_three())
                    .map(drop)
            },
            &[Drained],
        ),
        (
            "rollback",
            |r| r.rollback("olga", true).map(drop),
            &[Prepared, SharesVerified, DualRead, Reencrypting, Drained],
        ),
    ];
    let states = [
        Idle,
        Prepared,
        SharesVerified,
        DualRead,
        Reencrypting,
        Drained,
        Retired,
        RollingBack,
    ];
    for (name, command, allowed) in commands {
        for state in states {
            let before = at(state);
            let mut after = before.clone();
            let result = command(&mut after);
            if allowed.contains(&state) {
                assert!(result.is_ok(), "`{name}` in {state}: {result:?}");
            } else {
                let refusal = result.expect_err(&format!("`{name}` must be refused in {state}"));
                // Acknowledging a consumer is not a transition; undo it to
                // compare what the refused command itself changed.
                let mut unchanged = before.clone();
                unchanged.acknowledge("db1");
                assert!(
                    after == before || after == unchanged,
                    "refused `{name}` in {state} changed the machine ({refusal})"
                );
                assert!(
                    matches!(refusal, TransitionError::WrongState { actual, .. } if actual == state),
                    "`{name}` in {state}: {refusal:?}"
                );
            }
        }
    }
}

/// An approval holds for the plan it approved: one given while a rollback
/// only dropped the next version lapses at `switch`, after which a rollback
/// moves every record back, and a second operator alone cannot start that.
#[test]
fn a_rollback_approval_lapses_when_switch_changes_what_a_rollback_does() {
    let mut r = Rotation::idle(v(9));
    r.prepare(None).unwrap();
    assert!(
        !r.rollback_moves_records(),
        "in prepared nothing would move"
    );
    assert_eq!(
        r.rollback("olga", true).unwrap(),
        Outcome::Approved { approvals: 1 }
    );
    r.share_verified("alice", 2).unwrap();
    r.share_verified("bob", 2).unwrap();
    r.activate().unwrap();
    assert_eq!(r.rollback_approvals().collect::<Vec<_>>(), ["olga"]);
    r.acknowledge("db1");
    r.switch(&consumers()).unwrap();
    assert!(r.rollback_moves_records(), "now a rollback moves records");
    assert_eq!(r.rollback_approvals().count(), 0, "olga's approval lapsed");
    assert_eq!(
        r.rollback("omar", true).unwrap(),
        Outcome::Approved { approvals: 1 }
    );
    assert_eq!(r.state(), Reencrypting);
    assert_eq!(r.rollback("olga", true).unwrap(), Outcome::Executed);
    assert_eq!(r.state(), RollingBack);
}

/// An approval counts only while its operator could still give it: one
/// whose principal a reload removed (or took the operator role from) lapses
/// before the next approval is counted.
#[test]
fn lapsed_approvals_are_dropped_and_named() {
    let mut r = Rotation::idle(v(9));
    r.prepare(None).unwrap();
    assert_eq!(
        r.rollback("olga", true).unwrap(),
        Outcome::Approved { approvals: 1 }
    );
    assert_eq!(r.drop_lapsed_approvals(|_| true), Vec::<String>::new());
    assert_eq!(r.drop_lapsed_approvals(|name| name != "olga"), ["olga"]);
    assert_eq!(r.rollback_approvals().count(), 0);
    assert_eq!(
        r.rollback("omar", true).unwrap(),
        Outcome::Approved { approvals: 1 }
    );
    assert_eq!(r.state(), Prepared);
}
