//! Boundaries the mutation run (`cargo xtask mutants`) found untested: each test kills the
//! mutants named in its comment.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shiftkey_policy::*;

/// Kills `is_server_failure -> true/false` and the `(200..400)` guard of `Outcome::class`.
#[test]
fn outcomes_classify_by_status() {
    let cases = [
        (Outcome::Success, false, Class::Success),
        (Outcome::Status(204), false, Class::Success),
        (Outcome::Status(302), false, Class::Success),
        (Outcome::Status(401), false, Class::Unauthorized),
        (Outcome::AuthRejected, false, Class::Unauthorized),
        (Outcome::Status(404), false, Class::ClientError),
        (Outcome::Status(429), false, Class::RateLimited),
        (
            Outcome::RateLimited { retry_after: None },
            false,
            Class::RateLimited,
        ),
        (Outcome::Status(500), true, Class::ServerFailure),
        (Outcome::Status(503), true, Class::ServerFailure),
        (Outcome::Connect, true, Class::ServerFailure),
        (Outcome::Timeout, true, Class::ServerFailure),
        (Outcome::Status(600), false, Class::ClientError),
    ];
    for (outcome, server_failure, class) in cases {
        assert_eq!(outcome.is_server_failure(), server_failure, "{outcome:?}");
        assert_eq!(outcome.class(), class, "{outcome:?}");
    }
}

/// Kills `+ → -` and `/ → *` in the equal-jitter formula: the delay spans the ceiling's upper
/// half.
#[test]
fn equal_jitter_spans_the_upper_half_of_the_ceiling() {
    let b = Backoff {
        base: Duration::from_secs(8),
        factor: 2.0,
        cap: Duration::from_secs(3600),
        max_attempts: 5,
        jitter: Jitter::Equal,
    };
    assert_eq!(b.ceiling(1), Duration::from_secs(8));
    assert_eq!(b.delay(1, Duration::ZERO, 0.0), Duration::from_secs(4));
    assert_eq!(b.delay(1, Duration::ZERO, 0.5), Duration::from_secs(6));
    assert!(b.delay(1, Duration::ZERO, 0.999) < Duration::from_secs(8));
    assert!(b.delay(1, Duration::ZERO, 0.999) > Duration::from_millis(7990));
}

#[derive(Debug, Default, Clone)]
struct Seen(Arc<Mutex<Vec<Alert>>>);

impl AlertSink for Seen {
    fn alert(&self, a: &Alert) {
        self.0.lock().unwrap().push(a.clone());
    }
}

impl Seen {
    fn rules(&self) -> Vec<(Rule, Option<Severity>)> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|a| (a.rule, a.severity))
            .collect()
    }
}

fn monitor() -> (ErrorRateMonitor, Seen, Instant) {
    #[allow(
        clippy::disallowed_methods,
        reason = "an arbitrary origin; `now` is an input"
    )]
    let t0 = Instant::now();
    let seen = Seen::default();
    (
        ErrorRateMonitor::new(MonitorConfig::default(), t0).with_sink(seen.clone()),
        seen,
        t0,
    )
}

fn refresh(m: &ErrorRateMonitor, at: Instant, ok: bool, latency_ms: u64) {
    m.record(
        at,
        Event::Refresh {
            ok,
            latency: Duration::from_millis(latency_ms),
        },
    );
}

/// Kills `+= → *=` on the refresh counters and `-= → +=` when a bucket leaves the window.
#[test]
fn refresh_counts_enter_and_leave_the_window() {
    let (m, _, t0) = monitor();
    refresh(&m, t0, true, 10);
    refresh(&m, t0, false, 10);
    let c = m.counts(t0);
    assert_eq!((c.refresh_ok, c.refresh_failed), (1, 1));
    let later = t0 + MonitorConfig::default().window + Duration::from_secs(30);
    let c = m.counts(later);
    assert_eq!(
        (c.refresh_ok, c.refresh_failed),
        (0, 0),
        "the window slid past them"
    );
}

/// Kills `> → >=` on both 401-rate thresholds: a rate exactly at a threshold is not above it.
#[test]
fn a_401_rate_exactly_at_a_threshold_is_not_above_it() {
    // 1 in 20 = 5 %: the critical threshold, so only a warning.
    let (m, seen, t0) = monitor();
    for _ in 0..19 {
        m.record(t0, Event::Request(Class::Success));
    }
    m.record(t0, Event::Request(Class::Unauthorized));
    assert_eq!(
        seen.rules(),
        [(Rule::UnauthorizedRate, Some(Severity::Warning))]
    );
    // 1 in 100 = 1 %: the warning threshold, so nothing.
    let (m, seen, t0) = monitor();
    for _ in 0..99 {
        m.record(t0, Event::Request(Class::Success));
    }
    m.record(t0, Event::Request(Class::Unauthorized));
    assert_eq!(seen.rules(), []);
}

/// Kills `+ → *` and `/ → %` in the refresh success rate and `< → >` / `< → <=` on its
/// threshold.
#[test]
fn the_refresh_success_rate_warns_below_its_minimum_only() {
    // All refreshes fine: nothing.
    let (m, seen, t0) = monitor();
    refresh(&m, t0, true, 10);
    assert_eq!(seen.rules(), []);
    // 999 of 1 000: exactly the 99.9 % minimum, not below it.
    let (m, seen, t0) = monitor();
    for _ in 0..999 {
        refresh(&m, t0, true, 10);
    }
    refresh(&m, t0, false, 10);
    assert_eq!(seen.rules(), []);
    // One failed of one, and of nine: too few to judge (the minimum sample is 10).
    let (m, seen, t0) = monitor();
    refresh(&m, t0, false, 10);
    for _ in 0..8 {
        refresh(&m, t0, true, 10);
    }
    assert_eq!(seen.rules(), []);
    // The tenth: 9 of 10 succeeded, below.
    refresh(&m, t0, true, 10);
    assert_eq!(
        seen.rules(),
        [(Rule::RefreshSuccessRate, Some(Severity::Warning))]
    );
}

/// Kills `> → <` and `> → >=` on the refresh latency threshold.
#[test]
fn refresh_latency_warns_above_its_maximum_only() {
    let (m, seen, t0) = monitor();
    refresh(&m, t0, true, 1000);
    refresh(&m, t0, true, 2000); // exactly the 2 s maximum
    assert_eq!(seen.rules(), []);
    refresh(&m, t0, true, 2001);
    assert_eq!(
        seen.rules(),
        [(Rule::RefreshLatency, Some(Severity::Warning))]
    );
}
