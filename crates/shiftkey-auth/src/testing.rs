//! Test helpers: a scripted strategy. Behind the `test-util` feature; not for production.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::{AuthError, AuthStrategy, Clock, TokenSet, TokioClock};

/// One scripted answer of [`ScriptedStrategy`].
#[derive(Debug, Clone)]
pub enum Step {
    /// Succeed with a token of this lifetime.
    Token(Duration),
    /// Fail with this error.
    Fail(AuthError),
}

/// A strategy that answers from a script, then with `Step::Token(default)` forever.
///
/// It counts calls, records when each started, and the most calls that ever ran at once (single
/// flight means 1). Tokens are named `tok-<n>` and carry refresh token `rt-<n>`.
#[derive(Debug, Clone)]
pub struct ScriptedStrategy {
    inner: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    script: Mutex<VecDeque<Step>>,
    default: Duration,
    latency: Duration,
    clock: Arc<dyn Clock>,
    calls: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    starts: Mutex<Vec<Instant>>,
}

impl ScriptedStrategy {
    /// A strategy that issues tokens of `default` lifetime after `latency`, on tokio's clock.
    #[must_use]
    pub fn new(default: Duration, latency: Duration) -> Self {
        Self::with_clock(default, latency, Arc::new(TokioClock::new()))
    }

    /// The same on another clock.
    #[must_use]
    pub fn with_clock(default: Duration, latency: Duration, clock: Arc<dyn Clock>) -> Self {
        Self {
            inner: Arc::new(Shared {
                script: Mutex::new(VecDeque::new()),
                default,
                latency,
                clock,
                calls: AtomicUsize::new(0),
                in_flight: AtomicUsize::new(0),
                max_in_flight: AtomicUsize::new(0),
                starts: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Appends answers to the script.
    pub fn push(&self, steps: impl IntoIterator<Item = Step>) {
        self.inner
            .script
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(steps);
    }

    /// Calls so far.
    #[must_use]
    pub fn calls(&self) -> usize {
        self.inner.calls.load(Ordering::SeqCst)
    }

    /// The most calls that ran at the same time.
    #[must_use]
    pub fn max_in_flight(&self) -> usize {
        self.inner.max_in_flight.load(Ordering::SeqCst)
    }

    /// When each call started.
    #[must_use]
    pub fn starts(&self) -> Vec<Instant> {
        self.inner
            .starts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[async_trait]
impl AuthStrategy for ScriptedStrategy {
    async fn acquire(&self, _previous: Option<&TokenSet>) -> Result<TokenSet, AuthError> {
        let s = &self.inner;
        let n = s.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let now_in_flight = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        s.max_in_flight.fetch_max(now_in_flight, Ordering::SeqCst);
        s.starts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(s.clock.now());
        let step = s
            .script
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front();
        if !s.latency.is_zero() {
            s.clock.sleep(s.latency).await;
        }
        s.in_flight.fetch_sub(1, Ordering::SeqCst);
        match step.unwrap_or(Step::Token(s.default)) {
            Step::Token(lifetime) => {
                let mut t =
                    TokenSet::new(format!("tok-{n}"), lifetime, s.clock.now(), s.clock.wall());
                t.refresh_token = Some(format!("rt-{n}").into());
                Ok(t)
            }
            Step::Fail(e) => Err(e),
        }
    }

    fn name(&self) -> &str {
        "scripted"
    }
}
