//! Throttling and run control: the operator's levers on a running pass.
//!
//! Owns the [`Throttle`] values, the [`ControlHandle`] that publishes them and
//! pause / resume / abort to a running pass through `tokio::sync::watch`, the
//! [`TokenBucket`] on records per second and the [`AdaptiveBatch`] size. Pure
//! logic over `tokio::time`: it must never touch a store or a key.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::{Error, Result};

/// The largest batch a pass reads and writes at once.
pub const MAX_BATCH_SIZE: u32 = 100_000;

/// The highest rate a throttle takes, in records per second (as the
/// `[reencrypt]` config does): far above what a store writes, low enough
/// that a mistyped number is an error.
pub const MAX_ROWS_PER_SEC: u64 = 10_000_000;

/// The throttle of a pass. Every value can change while it runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Throttle {
    /// Records (one encrypted value of one row) per second; 0 = as fast as the
    /// store allows.
    pub rows_per_sec: u64,
    /// The largest number of rows read and written per batch.
    pub batch_size: u32,
    /// Sleep after each committed batch.
    pub pause_between_batches: Duration,
    /// Batches slower than this halve the batch size; faster than half of it,
    /// the size grows back slowly up to `batch_size`.
    pub max_batch_latency: Duration,
    /// PostgreSQL: no batch is written while a replica lags more than this.
    pub max_replica_lag: Duration,
}

impl Default for Throttle {
    fn default() -> Self {
        Self {
            rows_per_sec: 0,
            batch_size: 1000,
            pause_between_batches: Duration::ZERO,
            max_batch_latency: Duration::from_millis(250),
            max_replica_lag: Duration::from_secs(5),
        }
    }
}

impl Throttle {
    /// Checks every value's range; errors name the `[reencrypt]` field.
    pub fn validate(&self) -> Result<()> {
        if self.batch_size == 0 || self.batch_size > MAX_BATCH_SIZE {
            return Err(Error::InvalidThrottle {
                field: "batch_size",
                reason: "must be between 1 and 100000",
            });
        }
        if self.rows_per_sec > MAX_ROWS_PER_SEC {
            return Err(Error::InvalidThrottle {
                field: "rows_per_sec",
                reason: "must be between 0 (unlimited) and 10000000",
            });
        }
        if self.max_batch_latency.is_zero() {
            return Err(Error::InvalidThrottle {
                field: "max_batch_latency",
                reason: "must be more than 0",
            });
        }
        if self.max_replica_lag.is_zero() {
            return Err(Error::InvalidThrottle {
                field: "max_replica_lag",
                reason: "must be more than 0",
            });
        }
        Ok(())
    }
}

/// The TOML form of the throttle keys of `[reencrypt]` (durations as
/// `"250ms"`, `"5s"`). The daemon's own `[reencrypt]` table adds its keys
/// (such as `consumers`) and converts with [`ThrottleConfig::validate`].
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThrottleConfig {
    /// See [`Throttle::batch_size`].
    pub batch_size: Option<u32>,
    /// See [`Throttle::rows_per_sec`].
    pub rows_per_sec: Option<u64>,
    /// See [`Throttle::pause_between_batches`].
    pub pause_between_batches: Option<String>,
    /// See [`Throttle::max_batch_latency`].
    pub max_batch_latency: Option<String>,
    /// See [`Throttle::max_replica_lag`].
    pub max_replica_lag: Option<String>,
}

impl ThrottleConfig {
    /// Fills defaults, parses durations and checks ranges.
    pub fn validate(&self) -> Result<Throttle> {
        let duration = |value: &Option<String>, field, default| match value {
            None => Ok(default),
            Some(text) => humantime::parse_duration(text).map_err(|_| Error::InvalidThrottle {
                field,
                reason: "must be a duration such as 250ms or 5s",
            }),
        };
        let defaults = Throttle::default();
        let throttle = Throttle {
            rows_per_sec: self.rows_per_sec.unwrap_or(defaults.rows_per_sec),
            batch_size: self.batch_size.unwrap_or(defaults.batch_size),
            pause_between_batches: duration(
                &self.pause_between_batches,
                "pause_between_batches",
                defaults.pause_between_batches,
            )?,
            max_batch_latency: duration(
                &self.max_batch_latency,
                "max_batch_latency",
                defaults.max_batch_latency,
            )?,
            max_replica_lag: duration(
                &self.max_replica_lag,
                "max_replica_lag",
                defaults.max_replica_lag,
            )?,
        };
        throttle.validate()?;
        Ok(throttle)
    }
}

/// Whether a pass should run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    /// Work.
    Running,
    /// Finish the batch in flight (at most one), then write nothing until resumed.
    Paused,
    /// Stop after the batch in flight; the checkpoint stays for a later run.
    Aborted,
}

/// What the control handle publishes to a pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Control {
    /// Run, pause or abort.
    pub state: RunState,
    /// The current throttle.
    pub throttle: Throttle,
}

/// The operator's handle on a pass: cheap to clone, usable from any task.
#[derive(Clone, Debug)]
pub struct ControlHandle {
    sender: Arc<watch::Sender<Control>>,
}

impl ControlHandle {
    /// A handle with a validated throttle, in the running state.
    pub fn new(throttle: Throttle) -> Result<Self> {
        throttle.validate()?;
        let (sender, _) = watch::channel(Control {
            state: RunState::Running,
            throttle,
        });
        Ok(Self {
            sender: Arc::new(sender),
        })
    }

    /// What a pass reads its control from.
    pub fn subscribe(&self) -> watch::Receiver<Control> {
        self.sender.subscribe()
    }

    /// The current control values.
    pub fn current(&self) -> Control {
        self.sender.borrow().clone()
    }

    /// Pauses: at most the batch in flight is still written.
    pub fn pause(&self) {
        self.set_state(RunState::Paused);
    }

    /// Resumes a paused pass (an aborted one stays aborted).
    pub fn resume(&self) {
        self.sender.send_if_modified(|control| {
            let resume = control.state == RunState::Paused;
            if resume {
                control.state = RunState::Running;
            }
            resume
        });
    }

    /// Aborts: the pass stops after the batch in flight, keeping its checkpoint.
    pub fn abort(&self) {
        self.set_state(RunState::Aborted);
    }

    /// Replaces the throttle after checking it; the pass uses it from its
    /// next batch on.
    pub fn set_throttle(&self, throttle: Throttle) -> Result<()> {
        throttle.validate()?;
        self.sender
            .send_modify(|control| control.throttle = throttle);
        Ok(())
    }

    fn set_state(&self, state: RunState) {
        self.sender.send_if_modified(|control| {
            let changed = control.state != state && control.state != RunState::Aborted;
            if changed {
                control.state = state;
            }
            changed
        });
    }
}

/// A token bucket on records per second that paces batches evenly.
///
/// It holds at most the batch about to be written, never a second's worth:
/// a full bucket at the start of a throttled phase or after a resume would
/// let a second of batches through back to back, and the application's
/// writers would queue behind them. So the first batch goes at once and
/// each next one starts `records / rate` after the one before, spread over
/// the second. Tokens go into debt, so a batch larger than a second's
/// records still passes, at the average rate; time overslept is credited
/// to the next batch, so the average holds.
#[derive(Debug)]
pub struct TokenBucket {
    rate: u64,
    /// Credit in records; capped at the batch being reserved.
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A bucket whose first batch goes at once; `rate` 0 = unlimited.
    pub fn new(rate: u64, now: Instant) -> Self {
        Self {
            rate,
            tokens: f64::MAX,
            last: now,
        }
    }

    /// Changes the rate from `now` on; the debt of the batches already
    /// reserved is kept.
    pub fn set_rate(&mut self, rate: u64, now: Instant) {
        self.refill(now);
        self.rate = rate;
    }

    /// Takes `n` tokens and says how long to wait before using them.
    pub fn reserve(&mut self, n: u64, now: Instant) -> Duration {
        if self.rate == 0 {
            return Duration::ZERO;
        }
        self.refill(now);
        // No credit beyond this batch: no burst after an idle spell.
        self.tokens = self.tokens.min(n as f64) - n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate as f64)
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens += elapsed * self.rate as f64;
    }
}

/// The batch size, halved when a batch is slower than the latency target and
/// grown back by a sixteenth of the ceiling when one is faster than half of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdaptiveBatch {
    ceiling: u32,
    current: u32,
}

impl AdaptiveBatch {
    /// Starts at the configured size.
    pub fn new(ceiling: u32) -> Self {
        let ceiling = ceiling.max(1);
        Self {
            ceiling,
            current: ceiling,
        }
    }

    /// The size of the next batch.
    pub fn current(&self) -> u32 {
        self.current
    }

    /// The operator set a new batch size: use it at once.
    pub fn set_ceiling(&mut self, ceiling: u32) {
        if ceiling != self.ceiling {
            *self = Self::new(ceiling);
        }
    }

    /// Records the latency of a full batch.
    pub fn observe(&mut self, latency: Duration, target: Duration) {
        if latency > target {
            self.current = (self.current / 2).max(1);
        } else if latency <= target / 2 {
            self.current = self
                .current
                .saturating_add((self.ceiling / 16).max(1))
                .min(self.ceiling);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn token_bucket_holds_its_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(100, start);
        let mut sent = 0u64;
        // 30 batches of 50 records at 100/s: the first goes at once, each
        // next one half a second after it.
        for _ in 0..30 {
            let wait = bucket.reserve(50, Instant::now());
            tokio::time::sleep(wait).await;
            sent += 50;
        }
        assert_eq!(sent, 1500);
        assert_eq!(start.elapsed(), Duration::from_millis(14_500));

        bucket.set_rate(1000, Instant::now());
        let before = Instant::now();
        for _ in 0..10 {
            let wait = bucket.reserve(500, Instant::now());
            tokio::time::sleep(wait).await;
        }
        // 5000 records at 1000/s, the debt of the last batch at 100/s paid.
        assert_eq!(before.elapsed(), Duration::from_secs(5));
    }

    /// The start of a throttled phase and a resume after a long pause let
    /// one batch through, not a second's worth: the batches of every second
    /// are spread evenly over it.
    #[tokio::test(start_paused = true)]
    async fn token_bucket_never_bursts() {
        let mut bucket = TokenBucket::new(10_000, Instant::now());
        let mut starts = Vec::new();
        for round in 0..2 {
            for _ in 0..20 {
                let wait = bucket.reserve(1000, Instant::now());
                tokio::time::sleep(wait).await;
                starts.push(Instant::now());
            }
            if round == 0 {
                // Paused for a minute: no credit piles up meanwhile.
                tokio::time::sleep(Duration::from_secs(60)).await;
                bucket.set_rate(10_000, Instant::now());
            }
        }
        let gaps: Vec<Duration> = starts.windows(2).map(|w| w[1] - w[0]).collect();
        let paced = Duration::from_millis(100);
        assert!(gaps[..19].iter().all(|gap| *gap == paced), "{gaps:?}");
        assert_eq!(
            gaps[19],
            Duration::from_secs(60),
            "after the pause, at once"
        );
        assert!(gaps[20..].iter().all(|gap| *gap == paced), "{gaps:?}");

        // Work that takes part of the pace is part of it, and a late start
        // (an oversleep) is credited to the next batch.
        let mut bucket = TokenBucket::new(1000, Instant::now());
        let start = Instant::now();
        for _ in 0..10 {
            let wait = bucket.reserve(100, Instant::now());
            tokio::time::sleep(wait + Duration::from_millis(3)).await;
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        assert_eq!(start.elapsed(), Duration::from_millis(900 + 43));
    }

    #[tokio::test(start_paused = true)]
    async fn unlimited_bucket_never_waits() {
        let mut bucket = TokenBucket::new(0, Instant::now());
        assert_eq!(bucket.reserve(1_000_000, Instant::now()), Duration::ZERO);
    }

    #[test]
    fn adaptive_batch_halves_and_grows_back_slowly() {
        let target = Duration::from_millis(250);
        let mut batch = AdaptiveBatch::new(1600);
        batch.observe(Duration::from_millis(400), target);
        assert_eq!(batch.current(), 800);
        batch.observe(Duration::from_millis(400), target);
        assert_eq!(batch.current(), 400);
        batch.observe(Duration::from_millis(200), target);
        assert_eq!(batch.current(), 400, "between half and the target: hold");
        batch.observe(Duration::from_millis(10), target);
        assert_eq!(batch.current(), 500);
        for _ in 0..100 {
            batch.observe(Duration::from_millis(10), target);
        }
        assert_eq!(batch.current(), 1600, "never above the configured size");
        for _ in 0..20 {
            batch.observe(Duration::from_secs(1), target);
        }
        assert_eq!(batch.current(), 1, "never below one row");
        batch.set_ceiling(300);
        assert_eq!(batch.current(), 300);
    }

    #[test]
    fn control_handle_publishes_and_validates() {
        let handle = ControlHandle::new(Throttle::default()).unwrap();
        let receiver = handle.subscribe();
        handle.pause();
        assert_eq!(receiver.borrow().state, RunState::Paused);
        handle.resume();
        assert_eq!(receiver.borrow().state, RunState::Running);
        let error = handle
            .set_throttle(Throttle {
                batch_size: 0,
                ..Throttle::default()
            })
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "reencrypt field `batch_size`: must be between 1 and 100000"
        );
        let error = handle
            .set_throttle(Throttle {
                rows_per_sec: MAX_ROWS_PER_SEC + 1,
                ..Throttle::default()
            })
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "reencrypt field `rows_per_sec`: must be between 0 (unlimited) and 10000000"
        );
        handle.abort();
        handle.resume();
        assert_eq!(receiver.borrow().state, RunState::Aborted, "abort is final");
    }

    #[test]
    fn config_parses_durations_and_names_fields() {
        let config: ThrottleConfig =
            toml::from_str("batch_size = 500\nmax_batch_latency = \"100ms\"").unwrap();
        let throttle = config.validate().unwrap();
        assert_eq!(throttle.batch_size, 500);
        assert_eq!(throttle.max_batch_latency, Duration::from_millis(100));
        let config: ThrottleConfig = toml::from_str("max_replica_lag = \"soon\"").unwrap();
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            "reencrypt field `max_replica_lag`: must be a duration such as 250ms or 5s"
        );
    }
}
