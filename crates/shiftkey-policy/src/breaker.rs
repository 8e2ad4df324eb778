//! A circuit breaker: stop calling a server that keeps failing, probe it now and then.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// When the breaker opens.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Trip {
    /// After this many consecutive failures (default 5).
    Consecutive(u32),
    /// When the failure rate over the last `window` calls exceeds `rate`, once at least
    /// `min_calls` have been seen.
    FailureRate {
        /// Failure fraction that trips (e.g. 0.5).
        rate: f64,
        /// Calls remembered.
        window: usize,
        /// Calls needed before the rate counts.
        min_calls: usize,
    },
}

/// Breaker settings (design §5 defaults, `docs/design.md`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    /// When to open.
    pub trip: Trip,
    /// First cool-down (60 s).
    pub open_for: Duration,
    /// Cool-downs double while probes fail, up to this (15 min).
    pub max_open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            trip: Trip::Consecutive(5),
            open_for: Duration::from_secs(60),
            max_open_for: Duration::from_secs(15 * 60),
        }
    }
}

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Calls flow.
    Closed,
    /// Calls are refused until the cool-down ends.
    Open,
    /// One probe is allowed through; its result decides.
    HalfOpen,
}

/// What `allow` grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A normal call (the breaker is closed).
    Call,
    /// The single half-open probe: report its result with `record`.
    Probe,
}

/// The breaker refused the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("circuit open; next probe in {retry_in:?}")]
pub struct Refused {
    /// When a probe will be let through.
    pub retry_in: Duration,
}

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

#[derive(Debug)]
struct Slow {
    opened_at: Option<Instant>,
    open_for: Duration,
    probe_out: bool,
    /// When the outstanding probe was granted: a probe whose outcome never comes back (its
    /// request was cancelled, or failed before it could report) expires after `open_for`.
    probe_at: Option<Instant>,
    recent: VecDeque<bool>,
}

/// A thread-safe circuit breaker over an injected clock (`now` is passed in).
///
/// # Contract
/// - **Closed**: `allow` is one atomic load. In `Consecutive` mode a success or failure is one
///   atomic operation unless it trips the breaker.
/// - **Open**: `allow` refuses until the cool-down (`open_for`, doubling after each failed probe up
///   to `max_open_for`) has passed.
/// - **Half-open**: exactly one caller gets [`Admission::Probe`]; everyone else is refused until
///   that probe is recorded. A successful probe closes the breaker (and resets the cool-down); a
///   failed one opens it again for twice as long.
///
/// # Example
/// ```
/// use std::time::{Duration, Instant};
/// use shiftkey_policy::{Admission, CircuitBreaker, State};
///
/// let breaker = CircuitBreaker::default();
/// let t0 = Instant::now();
/// for _ in 0..5 {
///     breaker.allow(t0).unwrap();
///     breaker.record(t0, false);
/// }
/// assert_eq!(breaker.state(), State::Open);
/// assert!(breaker.allow(t0).is_err());
/// let later = t0 + Duration::from_secs(60);
/// assert_eq!(breaker.allow(later), Ok(Admission::Probe));
/// breaker.record(later, true);
/// assert_eq!(breaker.state(), State::Closed);
/// ```
#[derive(Debug)]
pub struct CircuitBreaker {
    cfg: BreakerConfig,
    state: AtomicU8,
    consecutive: AtomicU32,
    slow: Mutex<Slow>,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        Self::new(BreakerConfig::default())
    }
}

impl CircuitBreaker {
    /// A closed breaker.
    #[must_use]
    pub fn new(cfg: BreakerConfig) -> Self {
        Self {
            cfg,
            state: AtomicU8::new(CLOSED),
            consecutive: AtomicU32::new(0),
            slow: Mutex::new(Slow {
                opened_at: None,
                open_for: cfg.open_for,
                probe_out: false,
                probe_at: None,
                recent: VecDeque::new(),
            }),
        }
    }

    /// The current state.
    #[must_use]
    pub fn state(&self) -> State {
        match self.state.load(Ordering::Acquire) {
            CLOSED => State::Closed,
            OPEN => State::Open,
            _ => State::HalfOpen,
        }
    }

    fn slow(&self) -> std::sync::MutexGuard<'_, Slow> {
        self.slow.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// May a call go out at `now`?
    pub fn allow(&self, now: Instant) -> Result<Admission, Refused> {
        if self.state.load(Ordering::Acquire) == CLOSED {
            return Ok(Admission::Call);
        }
        let mut s = self.slow();
        match self.state.load(Ordering::Acquire) {
            CLOSED => Ok(Admission::Call),
            OPEN => {
                let until = s.opened_at.map_or(now, |t| t + s.open_for);
                if now >= until {
                    self.state.store(HALF_OPEN, Ordering::Release);
                    s.probe_out = true;
                    s.probe_at = Some(now);
                    Ok(Admission::Probe)
                } else {
                    Err(Refused {
                        retry_in: until - now,
                    })
                }
            }
            _ => {
                let lost = s.probe_at.is_some_and(|t| now >= t + s.open_for);
                if s.probe_out && !lost {
                    Err(Refused {
                        retry_in: Duration::ZERO,
                    })
                } else {
                    s.probe_out = true;
                    s.probe_at = Some(now);
                    Ok(Admission::Probe)
                }
            }
        }
    }

    /// Records the result of a call that `allow` admitted.
    pub fn record(&self, now: Instant, success: bool) {
        let state = self.state.load(Ordering::Acquire);
        if state == CLOSED {
            match self.cfg.trip {
                Trip::Consecutive(n) => {
                    if success {
                        if self.consecutive.load(Ordering::Relaxed) != 0 {
                            self.consecutive.store(0, Ordering::Relaxed);
                        }
                        return;
                    }
                    let failures = self.consecutive.fetch_add(1, Ordering::AcqRel) + 1;
                    if failures >= n.max(1) {
                        let mut s = self.slow();
                        if self.state.load(Ordering::Acquire) == CLOSED {
                            self.open(&mut s, now, false);
                        }
                    }
                }
                Trip::FailureRate {
                    rate,
                    window,
                    min_calls,
                } => {
                    let mut s = self.slow();
                    if self.state.load(Ordering::Acquire) != CLOSED {
                        return;
                    }
                    s.recent.push_back(!success);
                    while s.recent.len() > window.max(1) {
                        s.recent.pop_front();
                    }
                    let failures = s.recent.iter().filter(|f| **f).count();
                    if s.recent.len() >= min_calls && failures as f64 > rate * s.recent.len() as f64
                    {
                        self.open(&mut s, now, false);
                    }
                }
            }
            return;
        }
        let mut s = self.slow();
        if self.state.load(Ordering::Acquire) != HALF_OPEN || !s.probe_out {
            // A straggler admitted before the breaker opened: its result changes nothing.
            return;
        }
        s.probe_out = false;
        if success {
            s.open_for = self.cfg.open_for;
            s.opened_at = None;
            s.recent.clear();
            self.consecutive.store(0, Ordering::Relaxed);
            self.state.store(CLOSED, Ordering::Release);
            tracing::info!("circuit closed after a successful probe");
        } else {
            self.open(&mut s, now, true);
        }
    }

    fn open(&self, s: &mut Slow, now: Instant, after_probe: bool) {
        if after_probe {
            s.open_for = s.open_for.saturating_mul(2).min(self.cfg.max_open_for);
        }
        s.opened_at = Some(now);
        s.recent.clear();
        self.consecutive.store(0, Ordering::Relaxed);
        self.state.store(OPEN, Ordering::Release);
        tracing::warn!(open_for_s = s.open_for.as_secs_f64(), "circuit opened");
    }
}
