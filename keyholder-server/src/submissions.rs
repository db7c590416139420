//! The per-identity budget of failed share submissions (`POST /v1/unseal`,
//! `POST /v1/rotation/verify`) and the tally of what it refused.
//!
//! Owns one rule: once a principal's submission failed, each further
//! submission of theirs spends one cell of a [`governor`] budget
//! ([`FAILURE_BURST`] cells, one back every [`FAILURE_REFILL`]); with the
//! budget empty the request is refused before it is processed, with the time
//! until a cell is back. A successful submission ends the streak, so a
//! keyholder who mistyped once is not slowed down afterwards. Refusals are
//! tallied per principal in windows of [`SUMMARY_WINDOW`]: each window
//! becomes one audit entry with a count, never one entry per refused request.
//!
//! Pure: no I/O, the clock is a governor clock (a fake one in tests). It sees
//! principal names only, never a share.

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use governor::clock::{Clock, MonotonicClock, Reference as _};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter};

/// Failed submissions in a row a principal may make before being refused.
pub const FAILURE_BURST: u32 = 5;
/// After the burst, one more submission every this often.
pub const FAILURE_REFILL: Duration = Duration::from_secs(10);
/// Refusals of one principal are summarized once per this window.
pub const SUMMARY_WINDOW: Duration = Duration::from_secs(60);

/// A submission refused without being processed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    /// When the next submission will be processed again (whole seconds,
    /// rounded up, for `Retry-After`).
    pub retry_after_secs: u64,
    /// Whether this is the first refusal of its window (log it; the rest are
    /// only counted).
    pub first_in_window: bool,
}

/// One window of refusals of one principal: one audit entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// Who was refused.
    pub principal: String,
    /// How many submissions were refused in the window.
    pub refused: u64,
    /// The first refusal (wall clock).
    pub first: SystemTime,
    /// The last refusal (wall clock).
    pub last: SystemTime,
}

struct Window<I> {
    opened: I,
    refused: u64,
    first: SystemTime,
    last: SystemTime,
}

struct Tally<I> {
    /// Principals whose last processed submission failed.
    failing: BTreeSet<String>,
    windows: BTreeMap<String, Window<I>>,
}

/// The budget of failed submissions of every principal.
pub struct SubmissionLimiter<C: Clock = MonotonicClock> {
    clock: C,
    budget: RateLimiter<String, HashMapStateStore<String>, C, NoOpMiddleware<C::Instant>>,
    tally: Mutex<Tally<C::Instant>>,
}

impl Default for SubmissionLimiter {
    fn default() -> Self {
        Self::with_clock(MonotonicClock)
    }
}

impl<C: Clock + Clone> SubmissionLimiter<C> {
    /// A limiter reading time from `clock`.
    pub fn with_clock(clock: C) -> Self {
        let quota = Quota::with_period(FAILURE_REFILL)
            .expect("the refill period is not zero")
            .allow_burst(NonZeroU32::new(FAILURE_BURST).expect("the burst is not zero"));
        Self {
            budget: RateLimiter::new(quota, HashMapStateStore::default(), clock.clone()),
            clock,
            tally: Mutex::new(Tally {
                failing: BTreeSet::new(),
                windows: BTreeMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tally<C::Instant>> {
        self.tally.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `principal`'s submission may be processed now. A refusal is
    /// counted in the principal's current window.
    pub fn admit(&self, principal: &str) -> Result<(), Refused> {
        let mut tally = self.lock();
        if !tally.failing.contains(principal) {
            return Ok(());
        }
        let key = principal.to_owned();
        let Err(not_until) = self.budget.check_key(&key) else {
            return Ok(());
        };
        let now = self.clock.now();
        let wait: Duration = not_until.earliest_possible().duration_since(now).into();
        let wall = SystemTime::now();
        let window = tally.windows.entry(key).or_insert_with(|| Window {
            opened: now,
            refused: 0,
            first: wall,
            last: wall,
        });
        window.refused += 1;
        window.last = wall;
        Err(Refused {
            retry_after_secs: (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1),
            first_in_window: window.refused == 1,
        })
    }

    /// Records how `principal`'s processed submission ended.
    pub fn settled(&self, principal: &str, failed: bool) {
        let mut tally = self.lock();
        if failed {
            tally.failing.insert(principal.to_owned());
        } else {
            tally.failing.remove(principal);
        }
    }

    /// Takes the windows that are over (every open one when `all`, at
    /// shutdown), in principal order.
    pub fn take_summaries(&self, all: bool) -> Vec<Summary> {
        let now = self.clock.now();
        let mut tally = self.lock();
        let due: Vec<String> = tally
            .windows
            .iter()
            .filter(|(_, w)| all || Duration::from(now.duration_since(w.opened)) >= SUMMARY_WINDOW)
            .map(|(p, _)| p.clone())
            .collect();
        due.into_iter()
            .filter_map(|principal| {
                let w = tally.windows.remove(&principal)?;
                Some(Summary {
                    principal,
                    refused: w.refused,
                    first: w.first,
                    last: w.last,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn limiter() -> (SubmissionLimiter<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        (SubmissionLimiter::with_clock(clock.clone()), clock)
    }

    /// Submits and fails `n` times, returning how many were processed.
    fn fail(limiter: &SubmissionLimiter<FakeRelativeClock>, who: &str, n: usize) -> usize {
        (0..n)
            .filter(|_| {
                let admitted = limiter.admit(who).is_ok();
                if admitted {
                    limiter.settled(who, true);
                }
                admitted
            })
            .count()
    }

    #[test]
    fn after_the_burst_one_failed_submission_per_refill_is_processed() {
        let (limiter, clock) = limiter();
        // The first failure is free (nobody is suspect yet), then the burst.
        assert_eq!(fail(&limiter, "mallory", 100), 1 + FAILURE_BURST as usize);
        let refused = limiter.admit("mallory").unwrap_err();
        assert!(!refused.first_in_window);
        assert!(
            (1..=FAILURE_REFILL.as_secs()).contains(&refused.retry_after_secs),
            "{refused:?}"
        );
        for _ in 0..6 {
            clock.advance(FAILURE_REFILL);
            assert_eq!(fail(&limiter, "mallory", 50), 1);
        }
        // Someone else is not affected.
        assert_eq!(fail(&limiter, "alice", 1), 1);
    }

    #[test]
    fn a_successful_submission_ends_the_streak() {
        let (limiter, _clock) = limiter();
        assert_eq!(fail(&limiter, "alice", 3), 3);
        limiter.admit("alice").unwrap();
        limiter.settled("alice", false);
        // Not failing any more: admitted without spending budget.
        for _ in 0..20 {
            limiter.admit("alice").unwrap();
            limiter.settled("alice", false);
        }
    }

    #[test]
    fn refusals_are_one_summary_per_window_with_their_count() {
        let (limiter, clock) = limiter();
        fail(&limiter, "mallory", 1 + FAILURE_BURST as usize);
        let first = limiter.admit("mallory").unwrap_err();
        assert!(first.first_in_window);
        for _ in 0..999 {
            assert!(!limiter.admit("mallory").unwrap_err().first_in_window);
        }
        assert!(
            limiter.take_summaries(false).is_empty(),
            "the window is open"
        );
        clock.advance(SUMMARY_WINDOW);
        let summaries = limiter.take_summaries(false);
        assert_eq!(summaries.len(), 1);
        assert_eq!(summaries[0].principal, "mallory");
        assert_eq!(summaries[0].refused, 1000);
        assert!(limiter.take_summaries(true).is_empty());
        // The budget refilled meanwhile; the next refusals open a new
        // window, taken whole at shutdown.
        assert_eq!(fail(&limiter, "mallory", 100), FAILURE_BURST as usize);
        let last = limiter.take_summaries(true);
        assert_eq!(last.len(), 1);
        assert_eq!(last[0].refused, 100 - u64::from(FAILURE_BURST));
    }
}
