//! Property tests of the refresh timing law (design §3.2, `docs/design.md`).
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

/// The margins of design §3.2 computed here from the lifetime and the config, not with the
/// library's `margins`: the properties below check the planner against an independent reading of
/// the law. (soft, hard, min_interval) in seconds.
fn law(cfg: &RefreshConfig, l: Duration) -> (f64, f64, f64) {
    let l = l.as_secs_f64();
    let clamp = |x: f64, lo: Duration, hi: Duration| x.max(lo.as_secs_f64()).min(hi.as_secs_f64());
    let soft =
        clamp(cfg.soft_fraction * l, cfg.soft_min, cfg.soft_max).min(cfg.soft_cap_fraction * l);
    let hard =
        clamp(cfg.hard_fraction * l, cfg.hard_min, cfg.hard_max).min(cfg.hard_cap_fraction * l);
    let min_interval = cfg
        .min_interval
        .as_secs_f64()
        .min(cfg.min_interval_fraction * l);
    (soft, hard, min_interval)
}

/// Configurations other than the default that `validate` accepts.
fn config() -> impl Strategy<Value = RefreshConfig> {
    (
        (0.05f64..0.45, 0.0f64..0.3, 0.3f64..0.9),
        (0.005f64..0.05, 0.05f64..0.29),
        (1u64..=300, 1u64..=120, 1u64..=600),
        (0.1f64..0.9, 1u64..=600),
        (100u64..=5_000, 1.0f64..4.0, 1u64..=600, 1u64..=7_200),
        any::<u64>(),
    )
        .prop_filter_map(
            "a configuration validate accepts",
            |(
                (soft_f, jitter, soft_cap),
                (hard_f, hard_cap),
                (soft_min, hard_min, hard_max),
                (mi_f, mi),
                (base_ms, factor, cap_s, ra_max),
                seed,
            )| {
                let cfg = RefreshConfig {
                    soft_fraction: soft_f,
                    jitter_fraction: jitter,
                    soft_cap_fraction: soft_cap,
                    hard_fraction: hard_f,
                    hard_cap_fraction: hard_cap,
                    soft_min: Duration::from_secs(soft_min + hard_min),
                    hard_min: Duration::from_secs(hard_min),
                    hard_max: Duration::from_secs(hard_max),
                    soft_max: Duration::from_secs(hard_max + 3_600),
                    min_interval_fraction: mi_f,
                    min_interval: Duration::from_secs(mi),
                    backoff_base: Duration::from_millis(base_ms),
                    backoff_factor: factor,
                    backoff_cap: Duration::from_secs(cap_s).max(Duration::from_millis(base_ms)),
                    retry_after_max: Duration::from_secs(ra_max),
                    seed: Some(seed),
                    ..RefreshConfig::default()
                };
                cfg.validate().ok().map(|()| cfg)
            },
        )
}

/// What can happen between attempts, besides the attempts themselves.
#[derive(Debug, Clone)]
enum Event {
    /// The next attempt, and the server's answer to it.
    Attempt(Answer),
    /// After this long, a server rejects the current token (a reactive refresh).
    Invalidate { after_ms: u64 },
    /// After this long, an operator forces a refresh.
    Forced { after_ms: u64 },
    /// A lifetime cap is learned: the current token lives this fraction of its lifetime.
    Reschedule { fraction: f64 },
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        8 => answer().prop_map(Event::Attempt),
        1 => (0u64..600_000).prop_map(|after_ms| Event::Invalidate { after_ms }),
        1 => (0u64..600_000).prop_map(|after_ms| Event::Forced { after_ms }),
        1 => (0.05f64..1.0).prop_map(|fraction| Event::Reschedule { fraction }),
    ]
}

/// Runs the planner over `events`, checking after every attempt that it kept both bounds.
fn check_both_bounds(
    cfg: &RefreshConfig,
    lifetime: Duration,
    events: &[Event],
) -> Result<(), TestCaseError> {
    let mut planner = Planner::new(cfg.clone()).unwrap();
    let t0 = Instant::now();
    let mut now = t0;
    // The token in hand: when it was issued and the lifetime it is scheduled by.
    let mut held: Option<(Instant, Duration)> = None;
    // Did a rejection or an operator ask for a refresh? The request stands until a success.
    let mut asked = false;
    // Did an operator force a refresh since the last attempt (it drops the backoff)?
    let mut forced = false;
    // The previous attempt's failure: when it ended, the backoff it asked, its Retry-After.
    let mut failed: Option<(Instant, Duration, Option<Duration>)> = None;
    let mut previous_start: Option<Instant> = None;
    let latency = |ms: u64| Duration::from_millis(ms).min(lifetime / 4);
    let eps = Duration::from_millis(1);
    for e in events {
        match e {
            Event::Invalidate { after_ms } => {
                now += Duration::from_millis(*after_ms);
                if planner.current().is_some() {
                    planner.on_invalidated();
                    held = None;
                    asked = true;
                }
            }
            Event::Forced { after_ms } => {
                now += Duration::from_millis(*after_ms);
                planner.on_forced();
                forced = true;
                asked = true;
            }
            Event::Reschedule { fraction } => {
                if let Some((issued, l)) = held {
                    let capped = l.mul_f64(*fraction).max(Duration::from_secs(1));
                    let s = planner.reschedule(issued, capped);
                    held = Some((issued, capped));
                    // The new schedule keeps the law for the capped lifetime.
                    let (_, hard, _) = law(cfg, capped);
                    let want = issued + capped - Duration::from_secs_f64(hard);
                    prop_assert!(s.hard_at.max(want) - s.hard_at.min(want) <= eps);
                }
            }
            Event::Attempt(answer) => {
                let Some(at) = planner.next_attempt(now) else {
                    // Halted by a permanent error: only a rejection or an operator resumes it.
                    continue;
                };
                now = at.max(now);
                let start = now;
                let servable = planner.current().filter(|s| start < s.hard_at).copied();
                // Lower bound 1: a proactive refresh (a servable token, nobody asked) starts no
                // sooner than the planned point minus its jitter, nor min_interval after the last.
                if let (Some(s), Some((issued, l)), false) = (servable, held, asked) {
                    let (soft, _, min_interval) = law(cfg, l);
                    let earliest =
                        issued + l - Duration::from_secs_f64(soft * (1.0 + cfg.jitter_fraction));
                    prop_assert!(
                        start + eps >= earliest.min(s.hard_at),
                        "proactive refresh {:?} before the planned point",
                        earliest - start
                    );
                    if let Some(p) = previous_start
                        && start < s.hard_at
                    {
                        prop_assert!(
                            start + eps
                                >= p + Duration::from_secs_f64(min_interval).min(s.hard_at - p),
                            "refreshes closer than min_interval"
                        );
                    }
                }
                // Lower bound 2: no attempt sooner than the backoff or Retry-After allows
                // (an operator's forced refresh drops the backoff; nothing else does).
                if let (Some((end, backoff, retry_after)), false) = (failed, forced) {
                    prop_assert!(start + eps >= end + backoff, "attempt inside the backoff");
                    if let Some(ra) = retry_after {
                        prop_assert!(
                            backoff + eps >= ra.min(cfg.retry_after_max),
                            "Retry-After not honoured"
                        );
                    }
                }
                planner.on_start(start);
                previous_start = Some(start);
                forced = false;
                match answer {
                    Answer::Ok { latency_ms } => {
                        now += latency(*latency_ms);
                        let s = planner.on_success(now, start, lifetime);
                        held = Some((start, lifetime));
                        failed = None;
                        asked = false;
                        // The hard margin, computed independently: no token is served past it.
                        let (_, hard, _) = law(cfg, lifetime);
                        let want = start + lifetime - Duration::from_secs_f64(hard);
                        prop_assert!(
                            s.hard_at.max(want) - s.hard_at.min(want) <= eps,
                            "hard deadline {:?} vs the law's {:?}",
                            s.hard_at - start,
                            want - start
                        );
                        prop_assert!(s.hard_at < s.expires_at);
                    }
                    Answer::Transient {
                        latency_ms,
                        retry_after_s,
                    } => {
                        now += latency(*latency_ms);
                        let ra = retry_after_s.map(Duration::from_secs);
                        let err = AuthError::Transient {
                            kind: TransientKind::ServerError(503),
                            detail: "down".into(),
                            retry_after: ra,
                        };
                        let backoff = planner.on_failure(now, &err);
                        prop_assert!(backoff <= cfg.backoff_cap.max(cfg.retry_after_max));
                        failed = Some((now, backoff, ra));
                    }
                    Answer::Permanent => {
                        planner.on_failure(
                            now,
                            &AuthError::permanent(PermanentKind::InvalidGrant, "gone"),
                        );
                        prop_assert!(
                            planner.next_attempt(now).is_none(),
                            "a permanent error halts"
                        );
                        failed = None;
                    }
                }
            }
        }
    }
    Ok(())
}

/// A week of a working server: how many refreshes the planner makes against the fewest the law
/// allows (one per L − soft margin).
fn week_of_refreshes(cfg: &RefreshConfig, lifetime: Duration) -> (u64, f64) {
    let week = Duration::from_secs(7 * DAY);
    let mut planner = Planner::new(cfg.clone()).unwrap();
    let t0 = Instant::now();
    let mut now = t0;
    let mut count = 0u64;
    while let Some(at) = planner.next_attempt(now) {
        now = at.max(now);
        if now - t0 >= week {
            break;
        }
        planner.on_start(now);
        planner.on_success(now, now, lifetime);
        count += 1;
    }
    let (soft, _, min_interval) = law(cfg, lifetime);
    let period = (lifetime.as_secs_f64() - soft).max(min_interval);
    (count, week.as_secs_f64() / period)
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("proptest-regressions/timing_props.txt"))),
        ..ProptestConfig::default()
    })]

    /// Both bounds, for generated configurations and generated event sequences (rejections,
    /// forced refreshes, learned caps, Retry-After, permanent errors).
    #[test]
    fn the_planner_keeps_both_bounds_over_any_config_and_events(
        cfg in prop_oneof![Just(RefreshConfig { seed: Some(7), ..RefreshConfig::default() }), config()],
        l in lifetime(),
        events in prop::collection::vec(event(), 1..80),
    ) {
        check_both_bounds(&cfg, l, &events)?;
    }

    /// Over a simulated week with a working server, the default law refreshes at most 5 % more
    /// often than its minimum (the jitter is the difference), and never less.
    #[test]
    fn a_week_costs_at_most_five_percent_over_the_laws_minimum(
        l in (60u64..=30 * DAY).prop_map(Duration::from_secs),
        seed in any::<u64>(),
    ) {
        let cfg = RefreshConfig { seed: Some(seed), ..RefreshConfig::default() };
        let (count, minimum) = week_of_refreshes(&cfg, l);
        prop_assert!((count as f64) <= minimum * 1.05 + 1.0, "{count} refreshes, law minimum {minimum:.1}");
        prop_assert!((count as f64) + 1.0 >= minimum, "{count} refreshes, law minimum {minimum:.1}");
    }
}
