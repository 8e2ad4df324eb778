//! The middleware's behaviours, one test each.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use shiftkey_auth::TokenManager;
use shiftkey_auth::testing::ScriptedStrategy;
use shiftkey_auth::timing::RefreshConfig;
use shiftkey_http::{AuthMiddleware, HttpError};
use shiftkey_policy::{BreakerConfig, RetryBudget, Trip};
use tokio::time::{Instant, sleep};

use crate::resource::{self, Scripted};

const H: u64 = 3600;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

struct Rig {
    strategy: ScriptedStrategy,
    middleware: AuthMiddleware,
    client: ClientWithMiddleware,
    server: Arc<resource::Server>,
    base: url::Url,
}

async fn rig(
    lifetime: Duration,
    f: impl FnOnce(shiftkey_http::AuthMiddlewareBuilder) -> shiftkey_http::AuthMiddlewareBuilder,
) -> Rig {
    let (server, base) = resource::start().await;
    let strategy = ScriptedStrategy::new(lifetime, Duration::from_millis(20));
    let manager = TokenManager::builder(strategy.clone())
        .config(RefreshConfig {
            seed: Some(3),
            ..RefreshConfig::default()
        })
        .build()
        .unwrap();
    let middleware = f(AuthMiddleware::builder(manager)).build();
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(middleware.clone())
        .build();
    Rig {
        strategy,
        middleware,
        client,
        server,
        base,
    }
}

impl Rig {
    async fn get(&self, path: &str) -> reqwest_middleware::Result<reqwest::Response> {
        self.client.get(self.base.join(path).unwrap()).send().await
    }
}

fn http_error(e: &reqwest_middleware::Error) -> HttpError {
    HttpError::from_middleware(e)
        .cloned()
        .unwrap_or_else(|| panic!("not an HttpError: {e}"))
}

#[tokio::test(start_paused = true)]
async fn paused_time_does_not_jump_during_a_request() {
    let r = rig(secs(8 * H), |b| b).await;
    tokio::spawn(sleep(secs(H))); // a far timer auto-advance could jump to
    let start = Instant::now();
    for _ in 0..20 {
        assert_eq!(r.get("data").await.unwrap().status(), 200);
    }
    assert!(
        start.elapsed() < secs(5),
        "virtual time jumped by {:?} during loopback requests",
        start.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn a_401_is_healed_by_one_refresh_and_never_seen() {
    let r = rig(secs(8 * H), |b| b).await;
    assert_eq!(r.get("data").await.unwrap().status(), 200);
    r.server.kill("tok-1");
    let resp = r.get("data").await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "ok");
    assert_eq!(r.strategy.calls(), 2);
    let stats = r.middleware.stats();
    assert_eq!((stats.recovered, stats.surfaced), (1, 0));
    assert_eq!((stats.rejections_healed, stats.rejections_surfaced), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn a_session_bound_request_is_not_resent_under_a_new_session() {
    let r = rig(secs(8 * H), |b| b).await;
    let first = r.get("data").await.unwrap();
    assert_eq!(
        first.extensions().get::<shiftkey_http::AnsweredUnder>(),
        Some(&shiftkey_http::AnsweredUnder(1)),
        "the answer says which generation it was answered under"
    );
    r.server.kill("tok-1");
    let hits = r.server.hits.load(Ordering::Relaxed);
    let err = r
        .client
        .get(r.base.join("data").unwrap())
        .with_extension(shiftkey_http::SessionBound)
        .send()
        .await
        .unwrap_err();
    assert_eq!(http_error(&err), HttpError::SessionLost { generation: 1 });
    assert_eq!(
        r.server.hits.load(Ordering::Relaxed) - hits,
        1,
        "sent once, not again under the new token"
    );
    // The replacement is on its way: the next request carries it, without a second refresh.
    let next = r.get("data").await.unwrap();
    assert_eq!(next.status(), 200);
    assert_eq!(
        next.extensions().get::<shiftkey_http::AnsweredUnder>(),
        Some(&shiftkey_http::AnsweredUnder(2))
    );
    assert_eq!(r.strategy.calls(), 2);
    let stats = r.middleware.stats();
    assert_eq!(
        (stats.surfaced, stats.session_lost),
        (0, 1),
        "not a surfaced 401: the caller starts over"
    );
}

#[tokio::test(start_paused = true)]
async fn a_token_that_served_and_then_died_soon_after_a_reactive_refresh_is_replaced() {
    // Two kills 10 s apart (two restarts): the second hits a reactive replacement inside its
    // min_interval, but one the server had accepted, so refreshing again does help.
    let r = rig(secs(8 * H), |b| b).await;
    assert_eq!(r.get("data").await.unwrap().status(), 200);
    r.server.kill("tok-1");
    assert_eq!(r.get("data").await.unwrap().status(), 200);
    sleep(secs(10)).await;
    r.server.kill("tok-2");
    let resp = r.get("data").await.unwrap();
    assert_eq!(resp.status(), 200, "healed, not surfaced");
    assert_eq!(r.strategy.calls(), 3);
    let stats = r.middleware.stats();
    assert_eq!((stats.recovered, stats.surfaced), (2, 0));
}

// Real time: 50 concurrent loopback connections are exactly where paused time's auto-advance can
// jump while replies are in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_requests_with_one_dead_token_cause_one_refresh() {
    let r = Arc::new(rig(secs(8 * H), |b| b).await);
    assert_eq!(r.get("data").await.unwrap().status(), 200);
    r.server.kill("tok-1");
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let r = Arc::clone(&r);
            tokio::spawn(async move { r.get("data").await.map(|x| x.status().as_u16()) })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), 200);
    }
    assert_eq!(
        r.strategy.calls(),
        2,
        "one refresh for 50 rejected requests"
    );
    assert_eq!(r.middleware.stats().surfaced, 0);
    assert_eq!(
        r.middleware.stats().premature_deaths,
        1,
        "one token died once, not 50 times"
    );
    assert_eq!(r.middleware.learned_limits().lifetime_cap, None);
}

#[tokio::test(start_paused = true)]
async fn a_fresh_token_rejected_again_is_rejected_and_the_auth_circuit_opens() {
    let auth = BreakerConfig {
        trip: Trip::Consecutive(3),
        ..BreakerConfig::default()
    };
    let r = rig(secs(8 * H), |b| b.breakers(auth, BreakerConfig::default())).await;
    *r.server.reject_all.lock().unwrap() = true;
    let err = r.get("data").await.unwrap_err();
    assert_eq!(http_error(&err), HttpError::Rejected { generation: 2 });
    assert_eq!(r.strategy.calls(), 2, "exactly one refresh");
    // The replacement is young and was itself a reactive refresh: no refresh again.
    for _ in 0..2 {
        assert!(matches!(
            http_error(&r.get("data").await.unwrap_err()),
            HttpError::Rejected { .. }
        ));
    }
    assert_eq!(r.strategy.calls(), 2);
    let hits = r.server.hits.load(Ordering::SeqCst);
    let err = r.get("data").await.unwrap_err();
    assert!(
        matches!(http_error(&err), HttpError::AuthCircuitOpen { .. }),
        "{err}"
    );
    assert_eq!(
        r.server.hits.load(Ordering::SeqCst),
        hits,
        "an open circuit fails fast without a request"
    );
    assert_eq!(r.middleware.stats().surfaced, 3);
    // Every rejection the server sent is accounted for: the first request saw two (the dead
    // token's and its replacement's), the next two one each; none healed.
    assert_eq!(r.server.unauthorized.load(Ordering::SeqCst), 4);
    let st = r.middleware.stats();
    assert_eq!((st.rejections_healed, st.rejections_surfaced), (0, 4));
}

#[tokio::test(start_paused = true)]
async fn insufficient_scope_is_not_refreshed() {
    let r = rig(secs(8 * H), |b| b).await;
    let resp = r.get("scope").await.unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(r.strategy.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_streaming_body_is_not_retried_after_a_rejection() {
    let r = rig(secs(8 * H), |b| b).await;
    assert_eq!(r.get("data").await.unwrap().status(), 200);
    r.server.kill("tok-1");
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> =
        vec![Ok(bytes::Bytes::from_static(b"part"))];
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let err = r
        .client
        .post(r.base.join("upload").unwrap())
        .body(body)
        .send()
        .await
        .unwrap_err();
    assert_eq!(http_error(&err), HttpError::NotReplayable);
    assert!(err.to_string().contains("not replayable"), "{err}");
    // The dead token was still reported: the next request uses a fresh one.
    assert_eq!(r.get("data").await.unwrap().status(), 200);
    assert_eq!(r.strategy.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn retry_after_in_seconds_and_as_a_date_is_waited() {
    let r = rig(secs(8 * H), |b| b).await;
    r.server.push([Scripted::TooMany {
        retry_after: "2".into(),
        date: None,
    }]);
    let start = Instant::now();
    assert_eq!(r.get("data").await.unwrap().status(), 200);
    assert!(start.elapsed() >= secs(2), "{:?}", start.elapsed());

    let now_date = resource::http_date(Duration::ZERO);
    let later = resource::http_date(secs(3));
    r.server.push([Scripted::TooMany {
        retry_after: later,
        date: Some(now_date),
    }]);
    let start = Instant::now();
    assert_eq!(r.get("data").await.unwrap().status(), 200);
    assert!(start.elapsed() >= secs(3), "{:?}", start.elapsed());
    assert!(start.elapsed() < secs(5), "{:?}", start.elapsed());
}

#[tokio::test(start_paused = true)]
async fn a_5xx_burst_gets_at_most_three_attempts_and_the_budget_stops_retries() {
    let r = rig(secs(8 * H), |b| b).await;
    r.server.push((0..5).map(|_| Scripted::Status(503)));
    let start = Instant::now();
    let resp = r.get("data").await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(r.server.hits.load(Ordering::SeqCst), 3);
    assert_eq!(r.middleware.stats().retries, 2);
    assert!(
        start.elapsed() > Duration::ZERO,
        "backed off between attempts"
    );

    let r = rig(secs(8 * H), |b| b.budget(RetryBudget::new(5, 5, 10, 1))).await;
    r.server.push((0..5).map(|_| Scripted::Status(502)));
    assert_eq!(r.get("data").await.unwrap().status(), 502);
    assert_eq!(
        r.server.hits.load(Ordering::SeqCst),
        2,
        "one retry, then the budget is empty"
    );
}

#[tokio::test(start_paused = true)]
async fn a_post_that_gets_a_503_is_sent_once_and_a_marked_one_is_retried() {
    let r = rig(secs(8 * H), |b| b).await;
    r.server.push((0..2).map(|_| Scripted::Status(503)));
    let url = r.base.join("data").unwrap();
    let resp = r.client.post(url.clone()).body("x").send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(
        r.server.hits.load(Ordering::SeqCst),
        1,
        "a POST is never re-sent"
    );
    assert_eq!(r.middleware.stats().retries, 0);

    let resp = r
        .client
        .post(url)
        .with_extension(shiftkey_http::Idempotent)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        200,
        "the marked POST was retried past the 503"
    );
    assert_eq!(r.server.hits.load(Ordering::SeqCst), 3);
    assert_eq!(r.middleware.stats().retries, 1);
}

#[tokio::test(start_paused = true)]
async fn a_rejected_post_is_healed_and_sent_again() {
    let r = rig(secs(8 * H), |b| b).await;
    assert_eq!(r.get("data").await.unwrap().status(), 200);
    r.server.kill("tok-1");
    let url = r.base.join("data").unwrap();
    let resp = r.client.post(url).body("x").send().await.unwrap();
    assert_eq!(
        resp.status(),
        200,
        "the server refused before acting: one retry"
    );
    assert_eq!(r.middleware.stats().recovered, 1);
}

#[tokio::test]
async fn redirects_never_take_the_credential_to_another_origin() {
    let (other, other_base) = resource::start().await;
    let (server, base) = resource::start().await;
    let strategy = ScriptedStrategy::new(secs(8 * H), Duration::from_millis(1));
    let manager = TokenManager::builder(strategy).build().unwrap();
    let middleware = AuthMiddleware::builder(manager)
        .injector(shiftkey_http::Injector::Header {
            name: http::HeaderName::from_static("x-api-key"),
            prefix: String::new(),
        })
        .build();
    let http = shiftkey_http::resource_client(secs(10)).build().unwrap();
    let client = ClientBuilder::new(http).with(middleware).build();
    // Within the origin: followed.
    let mut url = base.join("moved").unwrap();
    url.query_pairs_mut()
        .append_pair("to", base.join("scope").unwrap().as_str());
    assert_eq!(client.get(url).send().await.unwrap().status(), 403);
    assert_eq!(server.hits.load(Ordering::SeqCst), 2);
    // To another origin: the 307 reaches the caller; nothing reaches the other server.
    let mut url = base.join("moved").unwrap();
    url.query_pairs_mut()
        .append_pair("to", other_base.join("scope").unwrap().as_str());
    assert_eq!(client.get(url).send().await.unwrap().status(), 307);
    assert_eq!(other.hits.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn a_hung_server_fails_each_attempt_at_its_deadline() {
    let r = rig(secs(8 * H), |b| b.attempt_timeout(secs(5))).await;
    let err = r.get("hang").await.unwrap_err();
    assert!(
        matches!(&err, reqwest_middleware::Error::Reqwest(e) if e.is_timeout()),
        "{err}"
    );
    assert_eq!(r.server.hits.load(Ordering::SeqCst), 3, "a GET is retried");
    let err = r
        .client
        .post(r.base.join("hang").unwrap())
        .body("x")
        .send()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, reqwest_middleware::Error::Reqwest(e) if e.is_timeout()),
        "{err}"
    );
    assert_eq!(r.server.hits.load(Ordering::SeqCst), 4, "a POST is not");
    // A request's own deadline wins over the middleware's.
    let err = r
        .client
        .get(r.base.join("hang").unwrap())
        .timeout(secs(1))
        .send()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, reqwest_middleware::Error::Reqwest(e) if e.is_timeout()),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_lifetime_cap_below_expires_in_is_learned_and_then_never_hit() {
    let r = rig(secs(8 * H), |b| b).await;
    *r.server.lifetime_cap.lock().unwrap() = Some(secs(4 * H));
    // The seed's scripts: a request every 15 minutes, around the clock, for two days.
    for _ in 0..(48 * 4) {
        assert_eq!(r.get("data").await.unwrap().status(), 200);
        sleep(secs(15 * 60)).await;
    }
    let deaths = r.server.unauthorized.load(Ordering::SeqCst);
    assert_eq!(deaths, 2, "two deaths teach the cap; none after");
    let cap = r.middleware.learned_limits().lifetime_cap.unwrap();
    // Deaths are seen at the first request after the cap: within one 15-minute period of it.
    assert!(
        cap >= secs(4 * H) && cap <= secs(4 * H + 16 * 60),
        "{cap:?}"
    );
    assert_eq!(r.middleware.manager().lifetime_cap(), Some(cap));
    assert_eq!(r.middleware.stats().surfaced, 0);
}

// Real time: a keepalive that spins would starve a paused runtime instead of failing the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_keepalive_waits_before_trying_again() {
    let one_failure_opens = BreakerConfig {
        trip: Trip::Consecutive(1),
        ..BreakerConfig::default()
    };
    let r = rig(secs(8 * H), |b| {
        b.learned(shiftkey_http::limits::LearnedLimits {
            lifetime_cap: None,
            idle_limit: Some(secs(2)),
        })
        .breakers(BreakerConfig::default(), one_failure_opens)
    })
    .await;
    // Nothing listens on port 9: the first keepalive fails and opens the server circuit, after
    // which every keepalive is refused at once, without a request that would count as activity.
    let _keepalive = r
        .middleware
        .keepalive(r.client.clone(), |c| c.get("http://127.0.0.1:9/"));
    // The first keepalive is due after a second of quiet: wait for it, however busy the machine.
    let deadline = Instant::now() + secs(30);
    while r.middleware.stats().keepalives == 0 {
        assert!(Instant::now() < deadline, "no keepalive in 30 s");
        sleep(Duration::from_millis(10)).await;
    }
    // Then a bound on the rate, against the time that really passed: about one try a second,
    // where a spinning keepalive makes thousands.
    let (start, first) = (Instant::now(), r.middleware.stats().keepalives);
    sleep(secs(3)).await;
    let more = r.middleware.stats().keepalives - first;
    let waited = start.elapsed();
    assert!(
        more <= waited.as_secs() + 2,
        "{more} more keepalives in {waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_idle_limit_is_learned_and_keepalive_holds_the_session() {
    let r = rig(secs(8 * H), |b| b).await;
    *r.server.idle_limit.lock().unwrap() = Some(secs(20 * 60));
    let url = r.base.join("data").unwrap();
    let _keepalive = r
        .middleware
        .keepalive(r.client.clone(), move |c| c.get(url.clone()));
    // A script that works hourly: every gap is longer than the server's 20-minute idle limit.
    let mut statuses = Vec::new();
    for _ in 0..24 {
        statuses.push(r.get("data").await.unwrap().status().as_u16());
        sleep(secs(H)).await;
    }
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let learned = r.middleware.learned_limits().idle_limit.unwrap();
    assert!(learned <= secs(40 * 60), "{learned:?}");
    // Once learned, the keepalive keeps tokens alive: no 401 in the last 12 hours.
    let before = r.server.unauthorized.load(Ordering::SeqCst);
    for _ in 0..12 {
        assert_eq!(r.get("data").await.unwrap().status(), 200);
        sleep(secs(H)).await;
    }
    assert_eq!(r.server.unauthorized.load(Ordering::SeqCst), before);
    assert!(r.middleware.stats().keepalives > 10);
}

/// Collects everything `tracing` prints.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn no_token_ever_appears_in_logs() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let r = rig(secs(4), |b| b).await;
    *r.server.lifetime_cap.lock().unwrap() = Some(secs(3));
    r.server.push([
        Scripted::Status(503),
        Scripted::TooMany {
            retry_after: "1".into(),
            date: None,
        },
    ]);
    for _ in 0..40 {
        let _ = r.get("data").await;
        sleep(Duration::from_millis(700)).await;
    }
    *r.server.reject_all.lock().unwrap() = true;
    let _ = r.get("data").await;
    let _ = r.get("data").await;
    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("token"),
        "the test captured the middleware's logs"
    );
    let seen = r.server.tokens_seen.lock().unwrap().clone();
    assert!(seen.len() > 10);
    for t in seen.iter().filter(|t| !t.is_empty()) {
        assert!(!logs.contains(t.as_str()), "token {t} leaked into the logs");
    }
    assert!(
        !logs.contains("rt-"),
        "a refresh token leaked into the logs"
    );
}

#[tokio::test(start_paused = true)]
async fn server_failures_open_the_server_circuit() {
    let r = rig(secs(8 * H), |b| b).await;
    r.server.push((0..6).map(|_| Scripted::Status(500)));
    assert_eq!(r.get("data").await.unwrap().status(), 500); // 3 attempts
    // 2 more make 5 in a row: the circuit opens and the caller gets the real 500, not a retry.
    assert_eq!(r.get("data").await.unwrap().status(), 500);
    assert_eq!(r.server.hits.load(Ordering::SeqCst), 5);
    let hits = r.server.hits.load(Ordering::SeqCst);
    let err = r.get("data").await.unwrap_err();
    assert!(
        matches!(http_error(&err), HttpError::ServerCircuitOpen { .. }),
        "{err}"
    );
    assert_eq!(r.server.hits.load(Ordering::SeqCst), hits);
    // After the cool-down one probe goes through; it fails (the sixth 500), so the circuit opens
    // again for twice as long; the next probe succeeds and closes it.
    sleep(secs(61)).await;
    assert_eq!(r.get("data").await.unwrap().status(), 500);
    assert!(matches!(
        http_error(&r.get("data").await.unwrap_err()),
        HttpError::ServerCircuitOpen { .. }
    ));
    sleep(secs(121)).await;
    assert_eq!(r.get("data").await.unwrap().status(), 200);
    assert_eq!(r.get("data").await.unwrap().status(), 200);
}

#[tokio::test(start_paused = true)]
async fn outcomes_reach_the_error_rate_monitor() {
    let monitor = Arc::new(shiftkey_policy::ErrorRateMonitor::new(
        shiftkey_policy::MonitorConfig::default(),
        Instant::now().into_std(),
    ));
    let r = rig(secs(8 * H), |b| b.monitor(Arc::clone(&monitor))).await;
    for _ in 0..10 {
        assert_eq!(r.get("data").await.unwrap().status(), 200);
    }
    sleep(secs(120)).await;
    r.server.kill("tok-1");
    assert_eq!(r.get("data").await.unwrap().status(), 200);
    let counts = monitor.counts(Instant::now().into_std());
    assert_eq!(counts.requests[0], 11, "successes");
    assert_eq!(
        counts.requests[1], 1,
        "the one 401, even though it was recovered"
    );
}

/// A server that reads the request and closes the connection without an answer: the request
/// may have been acted on. A POST is sent once; a GET is retried.
#[tokio::test]
async fn a_connection_cut_after_sending_resends_only_what_is_idempotent() {
    let r = rig(secs(8 * H), |b| b).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            // Read the request, then close without an answer.
            let _ = s.readable().await;
            let _ = s.try_read(&mut buf);
            drop(s);
        }
    });
    let url = format!("http://{addr}/cut");
    assert!(r.client.post(&url).body("x").send().await.is_err());
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "a POST that may have arrived is sent once"
    );
    assert!(r.client.get(&url).send().await.is_err());
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        4,
        "a GET is tried three times"
    );
}

/// A keepalive the server refuses (here 405) is counted as failed, not as a kept session; and a
/// keepalive never creates a session: once the manager released its token, none is sent and
/// nobody logs in, for hours.
#[tokio::test(start_paused = true)]
async fn a_refused_keepalive_counts_as_failed_and_none_is_sent_without_a_session() {
    let r = rig(secs(8 * H), |b| {
        b.learned(shiftkey_auth::ServerLimits {
            lifetime_cap: None,
            idle_limit: Some(secs(20 * 60)),
        })
    })
    .await;
    assert_eq!(r.get("data").await.unwrap().status(), 200);
    let url = r.base.join("upload").unwrap();
    let _keepalive = r
        .middleware
        .keepalive(r.client.clone(), move |c| c.get(url.clone()));
    sleep(secs(H)).await;
    let stats = r.middleware.stats();
    assert!(stats.keepalives >= 3, "{stats:?}");
    assert_eq!(stats.keepalives_failed, stats.keepalives, "{stats:?}");

    let logins = r.strategy.calls();
    assert!(r.middleware.manager().release().await.is_some());
    let sent = r.middleware.stats().keepalives;
    sleep(secs(5 * H)).await;
    assert_eq!(
        r.middleware.stats().keepalives,
        sent,
        "no keepalive without a session"
    );
    assert_eq!(r.strategy.calls(), logins, "no login for a keepalive");
}
