//! Property tests of the policy state machines.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use shiftkey_policy::*;

fn jitter() -> impl Strategy<Value = Jitter> {
    prop_oneof![
        Just(Jitter::Full),
        Just(Jitter::Equal),
        Just(Jitter::Decorrelated),
        Just(Jitter::None)
    ]
}

fn class() -> impl Strategy<Value = Class> {
    prop_oneof![
        Just(Class::Success),
        Just(Class::Unauthorized),
        Just(Class::ServerFailure),
        Just(Class::RateLimited),
        Just(Class::ClientError)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("proptest-regressions/props.txt"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn backoff_never_exceeds_its_cap_and_its_ceiling_never_shrinks(
        base_ms in 1u64..10_000, factor in 1.0f64..10.0, cap_ms in 1u64..600_000,
        attempt in 1u32..500, prev_ms in 0u64..10_000_000, draw in 0.0f64..=1.0, j in jitter(),
    ) {
        let b = Backoff { base: Duration::from_millis(base_ms), factor, cap: Duration::from_millis(cap_ms), max_attempts: u32::MAX, jitter: j };
        prop_assert!(b.delay(attempt, Duration::from_millis(prev_ms), draw) <= b.cap);
        prop_assert!(b.ceiling(attempt) <= b.ceiling(attempt + 1));
    }

    #[test]
    fn budget_stays_within_zero_and_quota(ops in prop::collection::vec(0u8..3, 0..2_000), quota in 0u32..600) {
        let budget = RetryBudget::new(quota, 5, 10, 1);
        for op in ops {
            match op {
                0 => { budget.try_spend(RetryCost::Normal); }
                1 => { budget.try_spend(RetryCost::Timeout); }
                _ => budget.refund(),
            }
            prop_assert!(budget.level() <= quota);
        }
    }

    #[test]
    fn half_open_admits_exactly_one_probe(callers in 2usize..50, fail_first in any::<bool>()) {
        let b = CircuitBreaker::default();
        let t0 = Instant::now();
        for _ in 0..5 { b.record(t0, false); }
        let t1 = t0 + Duration::from_secs(60);
        let probes = (0..callers).filter(|_| b.allow(t1) == Ok(Admission::Probe)).count();
        prop_assert_eq!(probes, 1);
        b.record(t1, !fail_first);
        prop_assert_eq!(b.state(), if fail_first { State::Open } else { State::Closed });
    }

    #[test]
    fn n_failures_then_successes_return_the_breaker_to_closed(failures in 0u32..50, gaps in prop::collection::vec(1u64..2_000, 1..30)) {
        let b = CircuitBreaker::default();
        let mut t = Instant::now();
        for _ in 0..failures { if b.allow(t).is_ok() { b.record(t, false); } }
        // Keep calling (successfully) whenever allowed, with time passing; it must close.
        for g in gaps.iter().cycle().take(200) {
            t += Duration::from_secs(*g);
            if b.allow(t).is_ok() { b.record(t, true); }
            if b.state() == State::Closed { break; }
        }
        prop_assert_eq!(b.state(), State::Closed);
    }

    #[test]
    fn monitor_rate_equals_a_brute_force_count(events in prop::collection::vec((0u64..3_600_000, class()), 1..300), probe_ms in 0u64..4_000_000) {
        let t0 = Instant::now();
        let cfg = MonitorConfig::default();
        let m = ErrorRateMonitor::new(cfg, t0);
        let mut sorted = events.clone();
        sorted.sort_by_key(|e| e.0);
        for (ms, c) in &sorted { m.record(t0 + Duration::from_millis(*ms), Event::Request(*c)); }
        let probe = sorted.last().map_or(0, |e| e.0).max(probe_ms);
        let width = (cfg.window / cfg.buckets).as_millis() as u64;
        let current = probe / width;
        let oldest = current.saturating_sub(u64::from(cfg.buckets) - 1);
        let in_window: Vec<_> = sorted.iter().filter(|(ms, _)| ms / width >= oldest).collect();
        for c in [Class::Success, Class::Unauthorized, Class::ServerFailure] {
            let want = (!in_window.is_empty()).then(|| in_window.iter().filter(|e| e.1 == c).count() as f64 / in_window.len() as f64);
            prop_assert_eq!(m.rate(t0 + Duration::from_millis(probe), c), want);
        }
    }
}
