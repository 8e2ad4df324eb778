//! Whether and when to try again: retry, backoff, retry budget, circuit breaker and error-rate
//! alerts, as pure state machines over an injected clock and random source.
//!
//! No I/O, no async runtime, no HTTP client types: callers describe what happened with an
//! [`Outcome`] and pass `now` (a `std::time::Instant`) and random draws in, so the same policy
//! serves reqwest, hyper, a database driver or a test in virtual time.
//!
//! # Overview
//! - [`Backoff`]: exponential with full, equal or decorrelated jitter; [`Backoff::api`] and
//!   [`Backoff::refresh`] carry the defaults of design §5 and §3.2 (`docs/design.md`).
//! - [`parse_retry_after`]: both `Retry-After` forms, clamped; garbage ignored with a warning.
//! - [`RetryPolicy`]: 429 / 5xx / connect / timeout retried, everything else final, unsafe
//!   requests never re-sent.
//! - [`RetryBudget`]: a token bucket (AWS standard retry mode) so an outage cannot multiply load.
//! - [`CircuitBreaker`]: closed → open → half-open with exactly one probe.
//! - [`ErrorRateMonitor`]: sliding window by outcome class, alerts on start and clear.
//!
//! # Example: backoff, budget and breaker around a plain async call
//! ```
//! use std::time::{Duration, Instant};
//! use shiftkey_policy::{CircuitBreaker, Decision, Outcome, Replay, RetryBudget, RetryPolicy};
//!
//! async fn call(attempt: u32) -> Outcome {
//!     if attempt < 2 { Outcome::Status(503) } else { Outcome::Success }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (policy, budget, breaker) = (RetryPolicy::default(), RetryBudget::default(), CircuitBreaker::default());
//! let mut attempt = 1;
//! let outcome = loop {
//!     breaker.allow(Instant::now())?;
//!     let outcome = call(attempt).await;
//!     breaker.record(Instant::now(), !outcome.is_server_failure());
//!     match policy.decide(&outcome, attempt, Replay::Safe, Some(&budget), 0.5) {
//!         Decision::Retry(delay) => tokio::time::sleep(delay).await,
//!         Decision::GiveUp(_) => break outcome,
//!     }
//!     attempt += 1;
//! };
//! assert_eq!(outcome, Outcome::Success);
//! assert_eq!(budget.level(), 496); // one retry spent (5), one success refunded (1)
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod backoff;
mod breaker;
mod budget;
mod monitor;
mod outcome;
mod retry;
mod retry_after;

pub use backoff::{Backoff, Jitter};
pub use breaker::{Admission, BreakerConfig, CircuitBreaker, Refused, State, Trip};
pub use budget::{RetryBudget, RetryCost};
pub use monitor::{
    Alert, AlertSink, Counts, ErrorRateMonitor, Event, MonitorConfig, Rule, Severity, TracingSink,
};
pub use outcome::{Class, Outcome};
pub use retry::{Decision, GiveUp, Replay, RetryPolicy};
pub use retry_after::parse_retry_after;

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
