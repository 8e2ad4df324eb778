//! Table tests of every part.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use shiftkey_policy::*;

const HOUR: Duration = Duration::from_secs(3600);

#[test]
fn retry_after_forms() {
    let now = UNIX_EPOCH + Duration::from_secs(1_795_000_000);
    let date = |s: &str| httpdate_parse(s);
    let server = date("Wed, 25 Nov 2026 20:00:00 GMT");
    let check = |value: &str, server_date: Option<SystemTime>, want: Option<u64>| {
        assert_eq!(
            parse_retry_after(value, server_date, now, HOUR),
            want.map(Duration::from_secs),
            "{value:?}"
        );
    };
    check("0", None, Some(0));
    check("120", None, Some(120));
    check(" 7 ", None, Some(7));
    check("86400", None, Some(3600)); // huge: clamped
    check("99999999999999999999999", None, Some(3600)); // beyond u64: clamped, not ignored
    check("-5", None, None); // negative: ignored
    check("1.5", None, None); // fractional: ignored
    check("soon", None, None);
    check("", None, None);
    check("Wed, 25 Nov 2026 20:02:00 GMT", server, Some(120)); // counts from the server's Date
    check("Wed, 25 Nov 2026 19:00:00 GMT", server, Some(0)); // in the past: now
    check("Wed, 25 Nov 2026 23:00:00 GMT", server, Some(3600)); // far: clamped
    check("Thu, 01 Jan 2099 00:00:00 GMT", None, Some(3600));
    check("Wed, 32 Nov 2026 20:02:00 GMT", server, None); // malformed date
}

fn httpdate_parse(s: &str) -> Option<SystemTime> {
    httpdate::parse_http_date(s).ok()
}

#[test]
fn retry_decisions() {
    let p = RetryPolicy::default();
    let retry = |o: Outcome, attempt: u32, replay: Replay| {
        matches!(p.decide(&o, attempt, replay, None, 0.5), Decision::Retry(_))
    };
    assert!(retry(Outcome::Status(503), 1, Replay::Safe));
    assert!(retry(Outcome::Status(500), 2, Replay::Safe));
    assert!(
        !retry(Outcome::Status(503), 3, Replay::Safe),
        "3 attempts in all"
    );
    assert!(retry(Outcome::Connect, 1, Replay::Safe));
    assert!(retry(Outcome::Timeout, 1, Replay::Safe));
    assert!(retry(Outcome::Status(429), 1, Replay::Safe));
    for s in [400, 401, 403, 404, 409, 422] {
        assert!(!retry(Outcome::Status(s), 1, Replay::Safe), "{s}");
    }
    assert!(!retry(Outcome::AuthRejected, 1, Replay::Safe));
    assert!(!retry(Outcome::Success, 1, Replay::Safe));
    // Not replay-safe: only a request that never left may go again.
    assert!(!retry(
        Outcome::Status(503),
        1,
        Replay::Unsafe { sent: true }
    ));
    assert!(!retry(Outcome::Timeout, 1, Replay::Unsafe { sent: true }));
    assert!(retry(Outcome::Connect, 1, Replay::Unsafe { sent: true }));
    assert!(retry(
        Outcome::Status(503),
        1,
        Replay::Unsafe { sent: false }
    ));
    // 429 waits at least Retry-After.
    let d = p.decide(
        &Outcome::RateLimited {
            retry_after: Some(Duration::from_secs(30)),
        },
        1,
        Replay::Safe,
        None,
        0.9,
    );
    assert_eq!(d, Decision::Retry(Duration::from_secs(30)));
}

#[test]
fn budget_stops_retries_when_empty_and_refunds_on_success() {
    let budget = RetryBudget::new(20, 5, 10, 1);
    let p = RetryPolicy::default();
    assert!(matches!(
        p.decide(&Outcome::Timeout, 1, Replay::Safe, Some(&budget), 0.0),
        Decision::Retry(_)
    ));
    assert_eq!(budget.level(), 10);
    assert!(matches!(
        p.decide(&Outcome::Status(502), 1, Replay::Safe, Some(&budget), 0.0),
        Decision::Retry(_)
    ));
    assert!(matches!(
        p.decide(&Outcome::Status(502), 1, Replay::Safe, Some(&budget), 0.0),
        Decision::Retry(_)
    ));
    assert_eq!(budget.level(), 0);
    assert_eq!(
        p.decide(&Outcome::Status(502), 1, Replay::Safe, Some(&budget), 0.0),
        Decision::GiveUp(GiveUp::BudgetExhausted)
    );
    p.decide(&Outcome::Success, 1, Replay::Safe, Some(&budget), 0.0);
    assert_eq!(budget.level(), 1);
}

#[test]
fn backoff_defaults_and_jitter_kinds() {
    let api = Backoff::api();
    assert_eq!(
        (api.base, api.factor, api.max_attempts),
        (Duration::from_millis(500), 2.0, 3)
    );
    let r = Backoff::refresh();
    assert_eq!(
        (r.base, r.cap),
        (Duration::from_secs(1), Duration::from_secs(60))
    );
    assert_eq!(r.ceiling(1), Duration::from_secs(1));
    assert_eq!(r.ceiling(4), Duration::from_secs(8));
    assert_eq!(r.ceiling(100), Duration::from_secs(60));
    let none = Backoff {
        jitter: Jitter::None,
        ..r
    };
    assert_eq!(none.delay(3, Duration::ZERO, 0.1), Duration::from_secs(4));
    let equal = Backoff {
        jitter: Jitter::Equal,
        ..r
    };
    assert_eq!(equal.delay(3, Duration::ZERO, 0.0), Duration::from_secs(2));
    let dec = Backoff {
        jitter: Jitter::Decorrelated,
        ..r
    };
    assert_eq!(
        dec.delay(1, Duration::from_secs(10), 1.0),
        Duration::from_secs(30)
    );
    assert_eq!(
        dec.delay(1, Duration::from_secs(100), 1.0),
        Duration::from_secs(60),
        "capped"
    );
}

#[test]
fn breaker_opens_probes_once_and_doubles_its_cool_down() {
    let b = CircuitBreaker::default();
    let t0 = Instant::now();
    for _ in 0..4 {
        b.record(t0, false);
    }
    b.record(t0, true); // a success resets the run
    for _ in 0..4 {
        b.record(t0, false);
    }
    assert_eq!(b.state(), State::Closed);
    b.record(t0, false);
    assert_eq!(b.state(), State::Open);
    assert_eq!(
        b.allow(t0 + Duration::from_secs(59)).unwrap_err().retry_in,
        Duration::from_secs(1)
    );
    let t1 = t0 + Duration::from_secs(60);
    assert_eq!(b.allow(t1), Ok(Admission::Probe));
    assert!(b.allow(t1).is_err(), "only one probe");
    b.record(t1, false);
    assert_eq!(b.state(), State::Open);
    assert!(
        b.allow(t1 + Duration::from_secs(119)).is_err(),
        "cool-down doubled to 120 s"
    );
    let t2 = t1 + Duration::from_secs(120);
    assert_eq!(b.allow(t2), Ok(Admission::Probe));
    b.record(t2, true);
    assert_eq!(b.state(), State::Closed);
    assert_eq!(b.allow(t2), Ok(Admission::Call));

    // Doubling stops at 15 minutes.
    let b = CircuitBreaker::default();
    let mut t = t0;
    for _ in 0..5 {
        b.record(t, false);
    }
    for _ in 0..10 {
        t += Duration::from_secs(15 * 60);
        assert_eq!(b.allow(t), Ok(Admission::Probe));
        b.record(t, false);
    }
    assert!(b.allow(t + Duration::from_secs(15 * 60 - 1)).is_err());
    assert_eq!(
        b.allow(t + Duration::from_secs(15 * 60)),
        Ok(Admission::Probe)
    );
}

#[test]
fn a_probe_that_never_reports_expires_instead_of_closing_the_door_for_good() {
    let b = CircuitBreaker::default();
    let t0 = Instant::now();
    for _ in 0..5 {
        b.record(t0, false);
    }
    let t1 = t0 + Duration::from_secs(60);
    assert_eq!(b.allow(t1), Ok(Admission::Probe));
    // The probe's request is cancelled (or fails before reporting): no `record` ever comes.
    assert!(
        b.allow(t1 + Duration::from_secs(59)).is_err(),
        "still one probe"
    );
    assert_eq!(
        b.allow(t1 + Duration::from_secs(60)),
        Ok(Admission::Probe),
        "a lost probe expires after the cool-down"
    );
    b.record(t1 + Duration::from_secs(61), true);
    assert_eq!(b.state(), State::Closed);
}

#[test]
fn breaker_failure_rate_mode() {
    let cfg = BreakerConfig {
        trip: Trip::FailureRate {
            rate: 0.5,
            window: 10,
            min_calls: 10,
        },
        ..BreakerConfig::default()
    };
    let b = CircuitBreaker::new(cfg);
    let t0 = Instant::now();
    for i in 0..9 {
        b.record(t0, i % 2 == 0); // 4 failures of 9: too few calls yet
    }
    assert_eq!(b.state(), State::Closed);
    b.record(t0, false); // 5 of 10: not above 50 %
    assert_eq!(b.state(), State::Closed);
    b.record(t0, false); // 6 of the last 10
    assert_eq!(b.state(), State::Open);
}

#[derive(Debug, Default, Clone)]
struct Collect(Arc<Mutex<Vec<Alert>>>);

impl AlertSink for Collect {
    fn alert(&self, a: &Alert) {
        self.0.lock().unwrap().push(a.clone());
    }
}

#[test]
fn monitor_alerts_once_on_start_and_once_on_clear() {
    let sink = Collect::default();
    let t0 = Instant::now();
    let m = ErrorRateMonitor::new(MonitorConfig::default(), t0).with_sink(sink.clone());
    let req = |t, c| m.record(t, Event::Request(c));
    for _ in 0..98 {
        req(t0, Class::Success);
    }
    req(t0, Class::Unauthorized);
    req(t0, Class::Unauthorized); // 2 % → warning
    for _ in 0..10 {
        req(t0, Class::Success); // still > 1 %: no repeat
    }
    for _ in 0..5 {
        req(t0, Class::Unauthorized); // 7 of 115 → critical
    }
    let alerts = sink.0.lock().unwrap().clone();
    let kinds: Vec<_> = alerts.iter().map(|a| (a.rule, a.severity)).collect();
    assert_eq!(
        kinds,
        vec![
            (Rule::UnauthorizedRate, Some(Severity::Warning)),
            (Rule::UnauthorizedRate, Some(Severity::Critical))
        ]
    );
    // 16 minutes later the window has slid past them: cleared, once.
    let later = t0 + Duration::from_secs(16 * 60);
    for _ in 0..30 {
        req(later, Class::Success);
    }
    let alerts = sink.0.lock().unwrap().clone();
    assert_eq!(alerts.len(), 3);
    assert_eq!(
        (alerts[2].rule, alerts[2].severity),
        (Rule::UnauthorizedRate, None)
    );
}

#[test]
fn monitor_refresh_rules() {
    let sink = Collect::default();
    let t0 = Instant::now();
    // Every refresh counts for the success rate here (no minimum sample).
    let cfg = MonitorConfig {
        min_refreshes: 1,
        ..MonitorConfig::default()
    };
    let m = ErrorRateMonitor::new(cfg, t0).with_sink(sink.clone());
    let refresh = |ok, ms| {
        m.record(
            t0,
            Event::Refresh {
                ok,
                latency: Duration::from_millis(ms),
            },
        )
    };
    refresh(true, 100);
    refresh(true, 2_500); // slow
    refresh(false, 100);
    refresh(false, 100);
    refresh(false, 100); // third in a row
    let rules: Vec<_> = sink
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|a| (a.rule, a.severity))
        .collect();
    assert!(
        rules.contains(&(Rule::RefreshLatency, Some(Severity::Warning))),
        "{rules:?}"
    );
    assert!(
        rules.contains(&(Rule::RefreshSuccessRate, Some(Severity::Warning))),
        "{rules:?}"
    );
    assert!(
        rules.contains(&(Rule::ConsecutiveRefreshFailures, Some(Severity::Critical))),
        "{rules:?}"
    );
    refresh(true, 100);
    let last = sink.0.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        (last.rule, last.severity),
        (Rule::ConsecutiveRefreshFailures, None)
    );
}

#[test]
fn monitor_needs_a_minimum_of_requests() {
    let sink = Collect::default();
    let t0 = Instant::now();
    let m = ErrorRateMonitor::new(MonitorConfig::default(), t0).with_sink(sink.clone());
    m.record(t0, Event::Request(Class::Success));
    m.record(t0, Event::Request(Class::Unauthorized));
    assert!(sink.0.lock().unwrap().is_empty(), "1 of 2 is no alert");
    assert_eq!(m.rate(t0, Class::Unauthorized), Some(0.5));
}
