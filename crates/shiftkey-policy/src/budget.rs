//! A retry budget: a token bucket that stops retries from multiplying load during an outage.

use std::sync::atomic::{AtomicU32, Ordering};

/// What a retry is for; timeouts cost more (they hold resources longer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryCost {
    /// An ordinary retry (5xx, connect error, 429).
    Normal,
    /// A retry after a timeout.
    Timeout,
}

/// A retry budget shaped like the AWS SDKs' standard retry mode: a bucket of `quota` tokens (500);
/// a retry takes `retry_cost` (5) or `timeout_cost` (10), a success gives back `refund` (1), never
/// above the quota. An empty bucket means no retry.
///
/// Thread-safe and lock-free; the level never goes below zero or above the quota.
///
/// # Example
/// ```
/// use shiftkey_policy::{RetryBudget, RetryCost};
///
/// let budget = RetryBudget::default();
/// assert!(budget.try_spend(RetryCost::Normal));
/// assert_eq!(budget.level(), 495);
/// budget.refund();
/// assert_eq!(budget.level(), 496);
/// ```
#[derive(Debug)]
pub struct RetryBudget {
    level: AtomicU32,
    quota: u32,
    retry_cost: u32,
    timeout_cost: u32,
    refund: u32,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self::new(500, 5, 10, 1)
    }
}

impl RetryBudget {
    /// A full bucket with these numbers.
    #[must_use]
    pub fn new(quota: u32, retry_cost: u32, timeout_cost: u32, refund: u32) -> Self {
        Self {
            level: AtomicU32::new(quota),
            quota,
            retry_cost,
            timeout_cost,
            refund,
        }
    }

    /// Tokens left.
    #[must_use]
    pub fn level(&self) -> u32 {
        self.level.load(Ordering::Relaxed)
    }

    /// Takes the cost of one retry if the bucket holds it; `false` means do not retry.
    pub fn try_spend(&self, cost: RetryCost) -> bool {
        let cost = match cost {
            RetryCost::Normal => self.retry_cost,
            RetryCost::Timeout => self.timeout_cost,
        };
        self.level
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |l| l.checked_sub(cost))
            .is_ok()
    }

    /// A call succeeded: give back `refund`, up to the quota.
    pub fn refund(&self) {
        let _ = self
            .level
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |l| {
                (l < self.quota).then(|| l.saturating_add(self.refund).min(self.quota))
            });
    }
}
