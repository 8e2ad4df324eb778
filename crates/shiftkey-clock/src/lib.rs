//! Injected time for the shiftkey crates: the one place that reads a real clock.
//!
//! Every scheduling decision in shiftkey goes through a [`Clock`], so tests pause or compress time
//! and a day of token refreshes runs in milliseconds. [`TokioClock`] follows tokio's clock, which
//! `tokio::time::pause` freezes and auto-advances; a scaled clock (the emulator's) implements the
//! same trait. A crate of its own, so that the emulator and other users of the clock alone compile
//! nothing of the token machinery (`shiftkey-auth` re-exports it).
//!
//! # Example
//! ```
//! use std::time::Duration;
//! use shiftkey_clock::{Clock, TokioClock};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let clock = TokioClock::new();
//! let (start, wall) = (clock.now(), clock.wall());
//! clock.sleep(Duration::from_secs(3600)).await; // an hour, at once under paused time
//! assert_eq!(clock.now() - start, Duration::from_secs(3600));
//! assert_eq!(clock.wall().duration_since(wall).unwrap(), Duration::from_secs(3600));
//! # }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

/// A boxed future returned by [`Clock::sleep`].
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// A monotonic clock, a wall clock, and a way to wait.
///
/// `now` must never go backwards. `wall` is only used for things that are wall-clock by nature
/// (a JWT `exp`, an HTTP `Date`), never to schedule.
pub trait Clock: Debug + Send + Sync + 'static {
    /// The monotonic instant now.
    fn now(&self) -> tokio::time::Instant;
    /// The wall-clock time now.
    fn wall(&self) -> SystemTime;
    /// A future that completes after `duration` of this clock's time.
    fn sleep(&self, duration: Duration) -> Sleep;
}

/// tokio's clock: real time in production, paused and auto-advanced time in tests.
///
/// The wall clock is anchored once at construction and then follows tokio's monotonic clock, so
/// under `tokio::time::pause` both advance together.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    origin: tokio::time::Instant,
    origin_wall: SystemTime,
}

impl TokioClock {
    /// A clock anchored at the current instant and wall time.
    #[must_use]
    pub fn new() -> Self {
        #[allow(clippy::disallowed_methods, reason = "the one real clock")]
        let origin_wall = SystemTime::now();
        Self {
            origin: tokio::time::Instant::now(),
            origin_wall,
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> tokio::time::Instant {
        tokio::time::Instant::now()
    }

    fn wall(&self) -> SystemTime {
        self.origin_wall + self.now().saturating_duration_since(self.origin)
    }

    fn sleep(&self, duration: Duration) -> Sleep {
        Box::pin(tokio::time::sleep(duration))
    }
}

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
