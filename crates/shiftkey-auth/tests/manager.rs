//! TokenManager behaviour in paused time: hours of tokens in milliseconds.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use shiftkey_auth::testing::{ScriptedStrategy, Step};
use shiftkey_auth::timing::RefreshConfig;
use shiftkey_auth::{
    AuthError, AuthStrategy, Invalidation, PermanentKind, TokenManager, TokenSet, TransientKind,
};
use tokio::time::{Instant, sleep};

const H: u64 = 3600;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn seeded() -> RefreshConfig {
    RefreshConfig {
        seed: Some(7),
        ..RefreshConfig::default()
    }
}

fn transient(retry_after: Option<Duration>) -> Step {
    Step::Fail(AuthError::Transient {
        kind: TransientKind::ServerError(503),
        detail: "down".into(),
        retry_after,
    })
}

fn permanent() -> Step {
    Step::Fail(AuthError::permanent(PermanentKind::InvalidGrant, "revoked"))
}

#[tokio::test(start_paused = true)]
async fn eight_hour_token_is_refreshed_proactively_between_6_24_and_6_4_hours() {
    let strategy = ScriptedStrategy::new(secs(8 * H), Duration::ZERO);
    let t0 = Instant::now();
    let m = TokenManager::builder(strategy.clone())
        .config(seeded())
        .build()
        .unwrap();
    assert_eq!(m.token().await.unwrap().generation(), 1);
    sleep(secs(7 * H)).await;
    let starts = strategy.starts();
    assert_eq!(
        starts.len(),
        2,
        "one initial acquire and one proactive refresh"
    );
    let at = (starts[1] - t0).as_secs_f64() / 3600.0;
    assert!((6.24..=6.4).contains(&at), "refreshed at {at} h");
    assert_eq!(m.stats().proactive, 1);
    assert_eq!(m.try_token().unwrap().generation(), 2);
}

#[tokio::test(start_paused = true)]
async fn old_token_is_served_while_refresh_fails_until_the_hard_margin() {
    let strategy = ScriptedStrategy::new(secs(H), Duration::ZERO);
    // First token, then the server is down for good (transient).
    strategy.push([Step::Token(secs(H))]);
    strategy.push((0..10_000).map(|_| transient(None)));
    let t0 = Instant::now();
    let m = TokenManager::builder(strategy.clone())
        .config(seeded())
        .build()
        .unwrap();
    let first = m.token().await.unwrap();
    // Soft margin of 1 h is 12 min; hard margin 3 min. At 55 min refreshes have been failing.
    sleep(secs(55 * 60)).await;
    assert!(strategy.calls() > 2, "refresh was retried");
    let served = m.token().await.unwrap();
    assert_eq!(served.generation(), first.generation());
    // Past the hard margin (57 min) it is no longer served: the caller gets the failure.
    sleep(secs(3 * 60)).await;
    assert!(Instant::now() - t0 > secs(57 * 60));
    assert!(m.try_token().is_none());
    let err = m.token().await.unwrap_err();
    assert!(err.is_transient(), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_token_endpoint_down_past_expiry_recovers_when_it_returns() {
    let strategy = ScriptedStrategy::new(secs(H), Duration::ZERO);
    // The endpoint fails from the first refresh (48 min) for about half an hour of backoff,
    // well past the token's expiry, then answers again (the script's default token).
    strategy.push([Step::Token(secs(H))]);
    strategy.push((0..60).map(|_| transient(None)));
    let m = TokenManager::builder(strategy.clone())
        .config(seeded())
        .build()
        .unwrap();
    let first = m.token().await.unwrap();
    sleep(secs(55 * 60)).await;
    assert_eq!(m.token().await.unwrap().generation(), first.generation());
    sleep(secs(6 * 60)).await;
    let down = m.token().await.unwrap_err();
    assert!(
        down.is_transient(),
        "past expiry with the endpoint down: {down}"
    );
    let waited = Duration::from_micros(m.stats().max_wait_us);
    assert!(
        waited > Duration::ZERO && waited <= secs(30),
        "the caller waited, at most wait_timeout: {waited:?}"
    );
    // Back: the next attempt (backoff capped at 60 s) succeeds and callers are served again.
    sleep(secs(60 * 60)).await;
    let back = m.token().await.unwrap();
    assert!(back.generation() > first.generation());
    assert!(
        m.status().halted.is_none(),
        "a transient outage never halts"
    );
    assert_eq!(strategy.calls(), 62, "60 failures, then one success");
}

#[tokio::test(start_paused = true)]
async fn proactive_retries_keep_min_interval_and_honour_retry_after() {
    let strategy = ScriptedStrategy::new(secs(8 * H), Duration::ZERO);
    strategy.push([
        Step::Token(secs(8 * H)),
        transient(Some(secs(600))),
        transient(None),
    ]);
    let m = TokenManager::builder(strategy.clone())
        .config(seeded())
        .build()
        .unwrap();
    m.token().await.unwrap();
    sleep(secs(7 * H)).await;
    let s = strategy.starts();
    assert!(s.len() >= 4, "{s:?}");
    assert!(
        s[2] - s[1] >= secs(600),
        "Retry-After honoured: {:?}",
        s[2] - s[1]
    );
    assert!(
        s[3] - s[2] >= secs(60),
        "min_interval kept: {:?}",
        s[3] - s[2]
    );
    assert_eq!(m.try_token().unwrap().generation(), 2);
}

#[tokio::test(start_paused = true)]
async fn permanent_error_stops_retries_until_an_operator_acts() {
    let strategy = ScriptedStrategy::new(secs(H), Duration::ZERO);
    strategy.push([Step::Token(secs(H)), permanent()]);
    let m = TokenManager::builder(strategy.clone())
        .config(seeded())
        .build()
        .unwrap();
    m.token().await.unwrap();
    sleep(secs(10 * H)).await;
    assert_eq!(strategy.calls(), 2, "no retry after a permanent error");
    let err = m.token().await.unwrap_err();
    assert!(
        matches!(
            err,
            AuthError::Permanent {
                kind: PermanentKind::InvalidGrant,
                ..
            }
        ),
        "{err}"
    );
    assert!(m.status().halted.is_some());
    m.refresh_now();
    assert_eq!(m.token().await.unwrap().generation(), 2);
    assert!(m.status().halted.is_none());
}

#[tokio::test(start_paused = true)]
async fn many_callers_at_expiry_cause_exactly_one_acquire() {
    let strategy = ScriptedStrategy::new(secs(H), Duration::from_millis(250));
    let m = TokenManager::builder(strategy.clone())
        .config(seeded())
        .build()
        .unwrap();
    m.token().await.unwrap();
    assert_eq!(strategy.calls(), 1);
    let tasks: Vec<_> = (0..1_000)
        .map(|_| {
            let m = m.clone();
            tokio::spawn(async move { m.token().await.map(|t| t.generation()) })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), 1);
    }
    assert_eq!(strategy.calls(), 1, "fresh token: no acquire at all");

    // Invalidate: everyone who saw generation 1 die reports it; one refresh.
    let tasks: Vec<_> = (0..1_000)
        .map(|_| {
            let m = m.clone();
            tokio::spawn(async move {
                sleep(secs(120)).await;
                let outcome = m.invalidate(1);
                (outcome, m.token().await.map(|t| t.generation()))
            })
        })
        .collect();
    let mut refreshing = 0;
    for t in tasks {
        let (outcome, generation) = t.await.unwrap();
        refreshing += usize::from(outcome == Invalidation::Refreshing);
        assert_eq!(generation.unwrap(), 2);
    }
    assert!(refreshing >= 1);
    assert_eq!(strategy.calls(), 2, "one reactive refresh for 1000 reports");
    assert_eq!(strategy.max_in_flight(), 1);
    assert_eq!(m.stats().reactive, 1);
}

#[tokio::test(start_paused = true)]
async fn invalidating_an_old_or_brand_new_generation_does_not_refresh() {
    let strategy = ScriptedStrategy::new(secs(H), Duration::ZERO);
    let m = TokenManager::builder(strategy.clone())
        .config(seeded())
        .build()
        .unwrap();
    m.token().await.unwrap();
    // A first rejection of a young token (a server restart) is refreshed.
    assert_eq!(m.invalidate(1), Invalidation::Refreshing);
    assert_eq!(m.token().await.unwrap().generation(), 2);
    assert_eq!(m.invalidate(1), Invalidation::AlreadyReplaced);
    // Its replacement rejected within min_interval (60 s): refreshing again would not help.
    assert_eq!(m.invalidate(2), Invalidation::TooSoon);
    sleep(secs(61)).await;
    assert_eq!(m.invalidate(2), Invalidation::Refreshing);
    assert_eq!(m.token().await.unwrap().generation(), 3);
    sleep(secs(1)).await;
    assert_eq!(strategy.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn waiting_callers_get_the_error_of_the_attempt_they_waited_for() {
    let strategy = ScriptedStrategy::new(secs(H), Duration::from_millis(100));
    strategy.push([Step::Fail(AuthError::permanent(
        PermanentKind::BadCredentials,
        "wrong password",
    ))]);
    let m = TokenManager::builder(strategy.clone())
        .config(seeded())
        .build()
        .unwrap();
    let err = m.token().await.unwrap_err();
    assert!(
        matches!(
            err,
            AuthError::Permanent {
                kind: PermanentKind::BadCredentials,
                ..
            }
        ),
        "{err}"
    );
    // Once halted, callers are answered at once and nothing is retried.
    let started = Instant::now();
    assert!(m.token().await.is_err());
    assert_eq!(Instant::now(), started);
    assert_eq!(strategy.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_wait_beyond_the_next_attempt_returns_the_last_error_at_once() {
    let strategy = ScriptedStrategy::new(secs(H), Duration::ZERO);
    strategy.push([transient(Some(secs(900)))]);
    let m = TokenManager::builder(strategy.clone())
        .config(seeded())
        .build()
        .unwrap();
    let err = m.token().await.unwrap_err();
    assert_eq!(err.retry_after(), Some(secs(900)));
    let started = Instant::now();
    let err = m.token().await.unwrap_err();
    assert!(err.is_transient());
    assert!(
        Instant::now() - started < secs(1),
        "did not sit out a 15-minute Retry-After"
    );
    sleep(secs(901)).await;
    assert_eq!(m.token().await.unwrap().generation(), 1);
}

#[tokio::test(start_paused = true)]
async fn shutdown_and_drop_stop_the_refresher() {
    let strategy = ScriptedStrategy::new(secs(4), Duration::ZERO);
    let m = TokenManager::builder(strategy.clone())
        .config(seeded())
        .build()
        .unwrap();
    m.token().await.unwrap();
    m.shutdown().await;
    let calls = strategy.calls();
    sleep(secs(60)).await;
    assert_eq!(strategy.calls(), calls);
    assert!(matches!(m.token().await, Err(AuthError::Shutdown)));

    let strategy = ScriptedStrategy::new(secs(4), Duration::ZERO);
    let m = TokenManager::builder(strategy.clone())
        .config(seeded())
        .build()
        .unwrap();
    m.token().await.unwrap();
    drop(m);
    sleep(secs(1)).await;
    let calls = strategy.calls();
    sleep(secs(60)).await;
    assert_eq!(
        strategy.calls(),
        calls,
        "dropping the last handle stops refreshing"
    );
}

#[tokio::test(start_paused = true)]
async fn a_hung_acquire_times_out_and_is_retried() {
    let strategy = ScriptedStrategy::new(secs(H), secs(3 * H));
    let cfg = RefreshConfig {
        acquire_timeout: secs(5),
        ..seeded()
    };
    let m = TokenManager::builder(strategy.clone())
        .config(cfg)
        .build()
        .unwrap();
    let err = m.token().await.unwrap_err();
    assert!(
        matches!(
            err,
            AuthError::Transient {
                kind: TransientKind::Timeout,
                ..
            }
        ),
        "{err}"
    );
    sleep(secs(30)).await;
    assert!(strategy.calls() >= 2);
}

#[tokio::test(start_paused = true)]
async fn a_lifetime_cap_reschedules_the_current_and_later_tokens() {
    let strategy = ScriptedStrategy::new(secs(8 * H), Duration::ZERO);
    let t0 = Instant::now();
    let m = TokenManager::builder(strategy.clone())
        .config(seeded())
        .build()
        .unwrap();
    m.token().await.unwrap();
    sleep(secs(60)).await;
    // The server really kills tokens at 4 h: refresh must happen before that, not at 6.3 h.
    m.set_lifetime_cap(Some(secs(4 * H)));
    sleep(secs(4 * H)).await;
    let starts = strategy.starts();
    assert_eq!(starts.len(), 2, "{starts:?}");
    let at = (starts[1] - t0).as_secs_f64() / 3600.0;
    assert!((3.1..=3.2).contains(&at), "refreshed at {at} h");
    let t = m.token().await.unwrap();
    assert_eq!(
        (t.lifetime, t.lifetime_source),
        (secs(4 * H), shiftkey_auth::LifetimeSource::Learned)
    );
    assert_eq!(m.lifetime_cap(), Some(secs(4 * H)));
}

#[tokio::test]
async fn bad_config_is_refused_with_the_field_named() {
    let strategy = ScriptedStrategy::new(secs(H), Duration::ZERO);
    let cfg = RefreshConfig {
        hard_max: secs(3 * H),
        ..RefreshConfig::default()
    };
    let err = TokenManager::builder(strategy)
        .config(cfg)
        .build()
        .unwrap_err();
    assert_eq!(err.field, "hard_max");
}

#[derive(Debug)]
struct Skewed;

#[async_trait::async_trait]
impl AuthStrategy for Skewed {
    async fn acquire(&self, _previous: Option<&TokenSet>) -> Result<TokenSet, AuthError> {
        let clock = shiftkey_auth::TokioClock::new();
        let mut t = TokenSet::new(
            "x",
            secs(H),
            tokio::time::Instant::now(),
            SystemTime::UNIX_EPOCH,
        );
        t.server_date = Some(shiftkey_auth::Clock::wall(&clock) + secs(600));
        Ok(t)
    }
    fn name(&self) -> &str {
        "skewed"
    }
}

#[tokio::test(start_paused = true)]
async fn clock_skew_is_estimated_from_the_server_date() {
    let m = TokenManager::builder(Skewed).build().unwrap();
    m.token().await.unwrap();
    let skew = m.status().skew_secs.unwrap();
    assert!((skew - 600.0).abs() < 2.0, "{skew}");
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse::<u32>().ok()).map_or(24, |c| (c / 1_000).max(24)),
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("proptest-regressions/manager.txt"))),
        ..ProptestConfig::default()
    })]

    /// Model test: callers at random times, a server that fails at random; no caller ever gets a
    /// token past its hard margin and the strategy never runs twice at once.
    #[test]
    fn no_caller_ever_gets_a_token_past_its_hard_margin(
        lifetime_s in prop_oneof![1u64..30, 30u64..3_600, 3_600u64..(2 * 86_400)],
        failures in prop::collection::vec(prop::bool::weighted(0.3), 1..40),
        gaps in prop::collection::vec(0u64..10_000, 1..60),
        seed in any::<u64>(),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        rt.block_on(async move {
            let lifetime = secs(lifetime_s);
            let strategy = ScriptedStrategy::new(lifetime, Duration::from_millis(50));
            strategy.push(failures.iter().map(|f| if *f { transient(None) } else { Step::Token(lifetime) }));
            let cfg = RefreshConfig { seed: Some(seed), ..RefreshConfig::default() };
            let m = Arc::new(TokenManager::builder(strategy.clone()).config(cfg).build().unwrap());
            let callers: Vec<_> = (0..4).map(|k| {
                let m = Arc::clone(&m);
                let gaps = gaps.clone();
                tokio::spawn(async move {
                    for g in gaps.iter().skip(k) {
                        sleep(Duration::from_millis(g * lifetime_s / 3 + 1)).await;
                        if let Ok(t) = m.token().await {
                            // The hard margin as the law states it, not as the code filters.
                            let l = t.lifetime.as_secs_f64();
                            let hard = (0.05 * l).clamp(10.0, 300.0).min(0.25 * l);
                            let hard_at = t.issued_at + t.lifetime - Duration::from_secs_f64(hard);
                            assert!(Instant::now() < hard_at, "served a token past its hard margin");
                            assert!(Instant::now() < t.expires_at());
                        }
                    }
                })
            }).collect();
            for c in callers {
                c.await.unwrap();
            }
            assert_eq!(strategy.max_in_flight(), 1);
        });
    }

    /// Liveness: with a server that always answers, every caller gets a token at once — within
    /// the one acquire its first call may wait for — whatever the lifetime and the call times.
    #[test]
    fn with_a_working_server_every_caller_gets_a_token(
        lifetime_s in prop_oneof![1u64..30, 30u64..3_600, 3_600u64..(2 * 86_400)],
        gaps in prop::collection::vec(0u64..10_000, 1..40),
        seed in any::<u64>(),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        rt.block_on(async move {
            let lifetime = secs(lifetime_s);
            let latency = Duration::from_millis(50);
            let strategy = ScriptedStrategy::new(lifetime, latency);
            let cfg = RefreshConfig { seed: Some(seed), ..RefreshConfig::default() };
            let m = TokenManager::builder(strategy.clone()).config(cfg).build().unwrap();
            let mut served = 0;
            for g in &gaps {
                sleep(Duration::from_millis(g * lifetime_s / 3 + 1)).await;
                let asked = Instant::now();
                let t = m.token().await.expect("a working server always gives a token");
                assert!(Instant::now() - asked <= latency * 2, "waited longer than one acquire");
                assert!(Instant::now() < t.hard_deadline());
                served += 1;
            }
            assert_eq!(served, gaps.len());
            assert_eq!(strategy.max_in_flight(), 1);
        });
    }
}

mod shared_store {
    use super::*;
    use shiftkey_auth::{MemoryStore, ServerLimits, TokenStore};

    #[tokio::test(start_paused = true)]
    async fn a_restarted_process_adopts_the_stored_token_without_a_server_call() {
        let store = MemoryStore::default();
        let strategy = ScriptedStrategy::new(secs(8 * H), Duration::ZERO);
        // One wall clock for both "processes" (separate TokioClocks anchor their wall time at
        // creation, which paused time would make disagree).
        let clock: Arc<dyn shiftkey_auth::Clock> = Arc::new(shiftkey_auth::TokioClock::new());
        let first = TokenManager::builder(strategy.clone())
            .config(seeded())
            .clock(Arc::clone(&clock))
            .store(Arc::new(store.clone()))
            .build()
            .unwrap();
        let t = first.token().await.unwrap();
        first.set_server_limits(ServerLimits {
            lifetime_cap: None,
            idle_limit: Some(secs(1200)),
        });
        first.shutdown().await;
        sleep(secs(H)).await;
        let second = TokenManager::builder(strategy.clone())
            .config(seeded())
            .clock(clock)
            .store(Arc::new(store.clone()))
            .build()
            .unwrap();
        let adopted = second.token().await.unwrap();
        assert_eq!(adopted.access_token, t.access_token);
        assert_eq!(adopted.generation(), 1);
        assert_eq!(strategy.calls(), 1, "no server call on restart");
        assert_eq!(second.stats().adopted, 1);
        // Age carried over: refreshed at 6.24-6.4 h after the *original* issue, not after restart.
        assert!(adopted.refresh_at() < Instant::now() + secs(5 * H + 30 * 60));
        assert_eq!(
            second.server_limits().idle_limit,
            Some(secs(1200)),
            "learned limits restored"
        );
        let stored = store.load().await.unwrap().unwrap();
        assert_eq!(stored.generation, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_during_a_refresh_lets_it_finish_and_save_the_rotated_token() {
        // The server rotates when it answers; a process stopping mid-request must still save
        // what it got, or a sibling presents the consumed refresh token again.
        let store = MemoryStore::default();
        let strategy = ScriptedStrategy::new(secs(H), secs(5));
        let m = TokenManager::builder(strategy.clone())
            .config(seeded())
            .store(Arc::new(store.clone()))
            .build()
            .unwrap();
        m.token().await.unwrap();
        m.refresh_now();
        sleep(secs(1)).await;
        assert_eq!(strategy.calls(), 2, "the refresh is in flight");
        m.shutdown().await;
        assert_eq!(
            store.load().await.unwrap().unwrap().generation,
            2,
            "the in-flight refresh finished and was saved before the stop"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn processes_sharing_a_store_refresh_once_per_rotation() {
        let store = Arc::new(MemoryStore::default());
        let strategy = ScriptedStrategy::new(secs(H), Duration::from_millis(200));
        let managers: Vec<_> = (0..4)
            .map(|i| {
                let cfg = RefreshConfig {
                    seed: Some(i),
                    ..RefreshConfig::default()
                };
                TokenManager::builder(strategy.clone())
                    .config(cfg)
                    .store(Arc::clone(&store) as Arc<dyn TokenStore>)
                    .build()
                    .unwrap()
            })
            .collect();
        for m in &managers {
            m.token().await.unwrap();
        }
        sleep(secs(24 * H)).await;
        // One token per ~0.8 h for a day: about 30 rotations, and only one process did each.
        let calls = strategy.calls();
        let generation = store.load().await.unwrap().unwrap().generation as usize;
        assert_eq!(
            calls, generation,
            "every server call produced the next generation: no duplicate refresh"
        );
        assert!((25..=35).contains(&calls), "{calls}");
        let adopted: u64 = managers.iter().map(|m| m.stats().adopted).sum();
        assert!(adopted >= 3 * 25, "the others adopted: {adopted}");
        for m in &managers {
            let t = m.token().await.unwrap();
            assert!(Instant::now() < t.hard_deadline());
        }
    }
}

/// A strategy with a bug: it panics.
#[derive(Debug)]
struct Panics;

#[async_trait::async_trait]
impl shiftkey_auth::AuthStrategy for Panics {
    async fn acquire(
        &self,
        _previous: Option<&shiftkey_auth::TokenSet>,
    ) -> Result<shiftkey_auth::TokenSet, shiftkey_auth::AuthError> {
        panic!("a bug in a strategy")
    }

    fn name(&self) -> &str {
        "panics"
    }
}

#[tokio::test(start_paused = true)]
async fn a_refresher_that_dies_fails_waiting_callers_at_once_and_shutdown_still_returns() {
    let m = TokenManager::builder(Panics).build().unwrap();
    let err = m.token().await.unwrap_err();
    assert!(
        matches!(err, shiftkey_auth::AuthError::TaskDied),
        "a caller is told the refresher died, not left to time out: {err:?}"
    );
    assert!(m.refresher_died());
    m.died().await;
    m.shutdown().await;
    assert!(matches!(
        m.token().await,
        Err(shiftkey_auth::AuthError::TaskDied)
    ));
}

/// An on-demand manager acquires nothing until asked, however long it waits; a released one
/// drops its token, stops refreshing (no proactive refresh for days), and acquires again on the
/// next ask with a higher generation.
#[tokio::test(start_paused = true)]
async fn an_on_demand_manager_acquires_only_when_asked_and_a_released_one_holds_nothing() {
    let strategy = ScriptedStrategy::new(secs(8 * H), Duration::ZERO);
    let m = TokenManager::builder(strategy.clone())
        .config(seeded())
        .on_demand()
        .build()
        .unwrap();
    sleep(secs(24 * H)).await;
    assert_eq!(
        strategy.calls(),
        0,
        "nothing acquired before it was asked for"
    );
    assert!(m.try_token().is_none());
    assert!(m.status().dormant);
    let first = m.token().await.unwrap().generation();
    assert_eq!(strategy.calls(), 1);

    let dropped = m.release().await.expect("the held token is handed back");
    assert_eq!(dropped.generation, first);
    assert!(m.try_token().is_none());
    assert!(m.status().next_attempt.is_none(), "no attempt planned");
    assert!(m.status().dormant);
    sleep(secs(3 * 24 * H)).await;
    assert_eq!(strategy.calls(), 1, "no refresh while released");
    assert!(
        m.release().await.is_none(),
        "nothing held, nothing handed back"
    );

    let again = m.token().await.unwrap().generation();
    assert!(again > first, "{again} after {first}");
    assert!(!m.status().dormant);
    assert_eq!(strategy.calls(), 2);
    // Awake again, it refreshes proactively as before.
    sleep(secs(7 * H)).await;
    assert_eq!(strategy.calls(), 3);
    m.shutdown().await;
    // After a shutdown there is no refresher to answer: the token is dropped all the same.
    assert!(m.release().await.is_some());
    assert!(m.try_token().is_none());
}

/// A release that arrives while an attempt is in flight hands back what that attempt got, so
/// a caller logging sessions out never misses one.
#[tokio::test(start_paused = true)]
async fn a_release_during_an_attempt_hands_back_what_it_got() {
    let strategy = ScriptedStrategy::new(secs(8 * H), secs(5));
    let m = TokenManager::builder(strategy.clone())
        .config(seeded())
        .build()
        .unwrap();
    tokio::task::yield_now().await;
    assert_eq!(
        strategy.max_in_flight(),
        1,
        "the first attempt is under way"
    );
    let dropped = m.release().await.expect("the attempt's token");
    assert_eq!(dropped.generation, 1);
    assert!(m.try_token().is_none());
    assert_eq!(strategy.calls(), 1);
}
