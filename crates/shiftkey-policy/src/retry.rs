//! The retry decision: whether and when to try a call again.

use std::time::Duration;

use crate::{Backoff, Outcome, RetryBudget, RetryCost};

/// Whether the request may be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// Idempotent, or the body can be re-sent: retry is safe.
    Safe,
    /// Not replay-safe (a non-idempotent POST, a streamed body): retried only if it was never sent.
    Unsafe {
        /// Whether any byte reached the server.
        sent: bool,
    },
}

/// What to do after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Try again after this delay.
    Retry(Duration),
    /// Stop and report the outcome.
    GiveUp(GiveUp),
}

/// Why no retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GiveUp {
    /// The call succeeded.
    Succeeded,
    /// The outcome is not retryable (4xx, auth rejection).
    NotRetryable,
    /// The request is not replay-safe and was sent.
    NotReplaySafe,
    /// `max_attempts` reached.
    AttemptsExhausted,
    /// The retry budget is empty.
    BudgetExhausted,
}

/// Retry policy of design §5 (`docs/design.md`): 429 waits `Retry-After` (or backs off), 5xx /
/// connect / timeout back off, everything else is final; unsafe requests are retried only if never
/// sent; each retry spends from the budget when there is one.
///
/// # Example
/// ```
/// use shiftkey_policy::{Decision, Outcome, Replay, RetryPolicy};
///
/// let policy = RetryPolicy::default();
/// let d = policy.decide(&Outcome::Status(503), 1, Replay::Safe, None, 0.5);
/// assert!(matches!(d, Decision::Retry(_)));
/// let d = policy.decide(&Outcome::Status(404), 1, Replay::Safe, None, 0.5);
/// assert!(matches!(d, Decision::GiveUp(_)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// The backoff.
    pub backoff: Backoff,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            backoff: Backoff::api(),
        }
    }
}

impl RetryPolicy {
    /// Decides after attempt number `attempt` (1 for the first call) ended with `outcome`.
    ///
    /// `draw` is a random number in `[0, 1)` for the jitter. With a `budget`, a retry is only
    /// granted if its cost can be spent, and a success refunds it.
    pub fn decide(
        &self,
        outcome: &Outcome,
        attempt: u32,
        replay: Replay,
        budget: Option<&RetryBudget>,
        draw: f64,
    ) -> Decision {
        let (retry_after, cost) = match outcome {
            Outcome::Success => {
                if let Some(b) = budget {
                    b.refund();
                }
                return Decision::GiveUp(GiveUp::Succeeded);
            }
            Outcome::RateLimited { retry_after } => (*retry_after, RetryCost::Normal),
            Outcome::Status(429) => (None, RetryCost::Normal),
            Outcome::Status(500..=599) | Outcome::Connect => (None, RetryCost::Normal),
            Outcome::Timeout => (None, RetryCost::Timeout),
            Outcome::Status(_) | Outcome::AuthRejected => {
                return Decision::GiveUp(GiveUp::NotRetryable);
            }
        };
        // A connect error never reached the server, so even an unsafe request may go again.
        if let Replay::Unsafe { sent: true } = replay
            && *outcome != Outcome::Connect
        {
            return Decision::GiveUp(GiveUp::NotReplaySafe);
        }
        if attempt >= self.backoff.max_attempts {
            return Decision::GiveUp(GiveUp::AttemptsExhausted);
        }
        if let Some(b) = budget
            && !b.try_spend(cost)
        {
            return Decision::GiveUp(GiveUp::BudgetExhausted);
        }
        let backoff = self.backoff.delay(attempt, Duration::ZERO, draw);
        Decision::Retry(retry_after.map_or(backoff, |ra| ra.max(backoff)))
    }
}
