//! Property tests of the refresh timing law (DESIGN §3.2).
//!
//! `cargo test` runs each property with proptest's default case count; `cargo xtask proptest
//! --cases N` sets `PROPTEST_CASES` for the long run.

use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use shiftkey_auth::timing::{Planner, RefreshConfig, backoff_delay, margins, schedule};
use shiftkey_auth::{AuthError, PermanentKind, TransientKind};
use tokio::time::Instant;

const DAY: u64 = 86_400;

/// Lifetimes from 1 s to 30 days, in milliseconds, biased towards the short and the round.
fn lifetime() -> impl Strategy<Value = Duration> {
    prop_oneof![
        (1_000u64..=120_000).prop_map(Duration::from_millis),
        (1_000u64..=30 * DAY * 1_000).prop_map(Duration::from_millis),
        prop::sample::select(vec![
            1u64,
            2,
            4,
            60,
            119,
            120,
            300,
            3_600,
            8 * 3_600,
            36_000,
            DAY,
            30 * DAY
        ])
        .prop_map(Duration::from_secs),
    ]
}

/// One answer of the token server in a simulated run.
#[derive(Debug, Clone)]
enum Answer {
    Ok {
        latency_ms: u64,
    },
    Transient {
        latency_ms: u64,
        retry_after_s: Option<u64>,
    },
    Permanent,
}

fn answer() -> impl Strategy<Value = Answer> {
    prop_oneof![
        6 => (0u64..3_000).prop_map(|latency_ms| Answer::Ok { latency_ms }),
        3 => ((0u64..3_000), proptest::option::of(0u64..10_000)).prop_map(|(latency_ms, retry_after_s)| Answer::Transient { latency_ms, retry_after_s }),
        1 => Just(Answer::Permanent),
    ]
}

#[derive(Debug, Clone, PartialEq)]
struct Attempt {
    start: Instant,
    /// The servable token's (expiry, min_interval) at the start, if there was one.
    holding: Option<(Instant, Instant, Duration)>,
    ok: bool,
    backoff: Duration,
    end: Instant,
}

/// Runs the planner against a scripted server in virtual time, as the manager's refresher does.
fn simulate(t0: Instant, lifetime: Duration, seed: u64, answers: &[Answer]) -> Vec<Attempt> {
    let cfg = RefreshConfig {
        seed: Some(seed),
        ..RefreshConfig::default()
    };
    let mut planner = Planner::new(cfg).unwrap();
    let mut now = t0;
    let mut out = Vec::new();
    // An answer slower than the token's lifetime would be dead on arrival; keep latency below L/2.
    let latency = |ms: u64| Duration::from_millis(ms).min(lifetime / 2);
    for a in answers {
        let Some(at) = planner.next_attempt(now) else {
            break;
        };
        // A refresh point already passed (a slow answer) means "at once".
        now = at.max(now);
        let holding = planner
            .current()
            .filter(|s| now < s.hard_at)
            .map(|s| (s.hard_at, s.expires_at, s.margins.min_interval));
        planner.on_start(now);
        let start = now;
        let (ok, backoff) = match a {
            Answer::Ok { latency_ms } => {
                now += latency(*latency_ms);
                planner.on_success(now, start, lifetime);
                (true, Duration::ZERO)
            }
            Answer::Transient {
                latency_ms,
                retry_after_s,
            } => {
                now += latency(*latency_ms);
                let err = AuthError::Transient {
                    kind: TransientKind::ServerError(503),
                    detail: "down".into(),
                    retry_after: retry_after_s.map(Duration::from_secs),
                };
                (false, planner.on_failure(now, &err))
            }
            Answer::Permanent => (
                false,
                planner.on_failure(
                    now,
                    &AuthError::permanent(PermanentKind::InvalidGrant, "gone"),
                ),
            ),
        };
        out.push(Attempt {
            start,
            holding,
            ok,
            backoff,
            end: now,
        });
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("proptest-regressions/timing_props.txt"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn margins_are_ordered_for_every_lifetime(l in lifetime()) {
        let m = margins(&RefreshConfig::default(), l);
        prop_assert!(Duration::ZERO < m.hard, "hard {:?}", m.hard);
        prop_assert!(m.hard < m.soft, "hard {:?} soft {:?}", m.hard, m.soft);
        prop_assert!(m.soft < l, "soft {:?} L {:?}", m.soft, l);
        prop_assert!(Duration::ZERO < m.min_interval && m.min_interval <= l / 2);
    }

    #[test]
    fn refresh_point_is_inside_the_soft_window(l in lifetime(), draw in 0.0f64..1.0) {
        let cfg = RefreshConfig::default();
        let t0 = Instant::now();
        let s = schedule(&cfg, t0, l, draw);
        let m = s.margins;
        let latest = t0 + l - m.soft;
        let earliest = t0 + l - m.soft - m.soft.mul_f64(cfg.jitter_fraction);
        prop_assert!(earliest <= s.refresh_at && s.refresh_at <= latest);
        prop_assert!(s.refresh_at < s.hard_at && s.hard_at < s.expires_at);
    }

    #[test]
    fn backoff_never_exceeds_its_cap(failures in 1u32..200, draw in 0.0f64..=1.0, ra in proptest::option::of(0u64..1_000_000)) {
        let cfg = RefreshConfig::default();
        let d = backoff_delay(&cfg, failures, draw, None);
        prop_assert!(d <= cfg.backoff_cap);
        let with_ra = backoff_delay(&cfg, failures, draw, ra.map(Duration::from_secs));
        prop_assert!(with_ra <= cfg.backoff_cap.max(cfg.retry_after_max));
        // Non-decreasing in expectation: the jitter ceiling (draw = 1) never shrinks.
        prop_assert!(backoff_delay(&cfg, failures, 1.0, None) <= backoff_delay(&cfg, failures + 1, 1.0, None));
    }

    #[test]
    fn planner_holds_the_law_under_any_failure_sequence(
        l in lifetime(),
        seed in any::<u64>(),
        answers in prop::collection::vec(answer(), 1..60),
    ) {
        let cfg = RefreshConfig::default();
        let t0 = Instant::now();
        let run = simulate(t0, l, seed, &answers);
        // Same seed, same schedule.
        prop_assert_eq!(&run, &simulate(t0, l, seed, &answers));
        for pair in run.windows(2) {
            let (prev, next) = (&pair[0], &pair[1]);
            // Proactive refreshes (a servable token in hand) start at least min_interval apart.
            if let Some((_, _, min_interval)) = next.holding {
                prop_assert!(next.start - prev.start >= min_interval,
                    "refreshes {:?} apart, min_interval {:?}", next.start - prev.start, min_interval);
            }
            // Whenever the server answered, the next refresh starts before that token expires.
            if prev.ok {
                let expires = prev.start + l;
                prop_assert!(next.start < expires, "next refresh {:?} after expiry", next.start - expires);
            }
            // After a failure the wait is the backoff (or Retry-After), stretched at most to min_interval.
            if !prev.ok {
                let gap = next.start - prev.end;
                let held = prev.holding.or(next.holding);
                let bound = prev.backoff.max(held.map_or(Duration::ZERO, |h| h.2));
                prop_assert!(gap <= bound + Duration::from_millis(1), "gap {gap:?} > {bound:?}");
                prop_assert!(prev.backoff <= cfg.backoff_cap.max(cfg.retry_after_max));
            }
        }
        // A permanent error stops the planner: nothing follows it.
        if let Some(i) = answers.iter().position(|a| matches!(a, Answer::Permanent)) {
            prop_assert!(run.len() <= i + 1);
        }
    }
}
