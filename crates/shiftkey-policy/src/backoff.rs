//! Exponential backoff with jitter (full, equal or decorrelated).

use std::time::Duration;

/// How the jitter is drawn (see the AWS architecture blog's "Exponential Backoff and Jitter").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Jitter {
    /// Uniform in `[0, ceiling]` (default: spreads retries the most).
    #[default]
    Full,
    /// `ceiling / 2` plus uniform in `[0, ceiling / 2]`.
    Equal,
    /// Uniform in `[base, 3 × previous delay]`, capped.
    Decorrelated,
    /// Exactly the ceiling (for tests and for servers that ask for it).
    None,
}

/// Exponential backoff: the ceiling of attempt `n` (1-based) is `min(cap, base × factor^(n-1))`.
///
/// Pure: the random draw comes in as an argument in `[0, 1)`.
///
/// # Example
/// ```
/// use std::time::Duration;
/// use shiftkey_policy::Backoff;
///
/// let b = Backoff::api();
/// assert_eq!(b.max_attempts, 3);
/// assert!(b.delay(1, Duration::ZERO, 0.999) < Duration::from_millis(500));
/// assert_eq!(b.ceiling(30), b.cap);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The first ceiling.
    pub base: Duration,
    /// Growth per attempt (at least 1).
    pub factor: f64,
    /// No delay exceeds this.
    pub cap: Duration,
    /// Attempts in all, the first included (`u32::MAX` for "until the budget or the caller stops").
    pub max_attempts: u32,
    /// The jitter.
    pub jitter: Jitter,
}

impl Backoff {
    /// API calls (design §5, `docs/design.md`): 500 ms, ×2, full jitter, cap 10 s, 3 attempts.
    #[must_use]
    pub fn api() -> Self {
        Self {
            base: Duration::from_millis(500),
            factor: 2.0,
            cap: Duration::from_secs(10),
            max_attempts: 3,
            jitter: Jitter::Full,
        }
    }

    /// Token refresh (design §3.2): 1 s, ×2, full jitter, cap 60 s, no attempt limit.
    #[must_use]
    pub fn refresh() -> Self {
        Self {
            base: Duration::from_secs(1),
            factor: 2.0,
            cap: Duration::from_secs(60),
            max_attempts: u32::MAX,
            jitter: Jitter::Full,
        }
    }

    /// The ceiling of retry `attempt` (1 for the first retry).
    #[must_use]
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(1_000) as i32;
        let factor = if self.factor.is_finite() {
            self.factor.max(1.0)
        } else {
            1.0
        };
        let secs = self.base.as_secs_f64() * factor.powi(exponent);
        if !secs.is_finite() || secs >= self.cap.as_secs_f64() {
            self.cap
        } else {
            Duration::from_secs_f64(secs)
        }
    }

    /// The delay before retry `attempt` (1-based), given the previous delay (for decorrelated
    /// jitter) and a random `draw` in `[0, 1)`. Never exceeds `cap`.
    #[must_use]
    pub fn delay(&self, attempt: u32, previous: Duration, draw: f64) -> Duration {
        let draw = if draw.is_finite() {
            draw.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let ceiling = self.ceiling(attempt);
        let d = match self.jitter {
            Jitter::Full => ceiling.mul_f64(draw),
            Jitter::Equal => ceiling / 2 + (ceiling / 2).mul_f64(draw),
            Jitter::Decorrelated => {
                let hi = previous.max(self.base).saturating_mul(3);
                self.base + hi.saturating_sub(self.base).mul_f64(draw)
            }
            Jitter::None => ceiling,
        };
        d.min(self.cap)
    }
}
