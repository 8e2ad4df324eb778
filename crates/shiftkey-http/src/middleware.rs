//! [`AuthMiddleware`]: the reqwest-middleware that keeps requests authenticated.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use http::Extensions;
use reqwest::{Request, Response};
use reqwest_middleware::{Middleware, Next};
use shiftkey_auth::{Clock, Invalidation, TokenManager, TokioClock};
use shiftkey_policy::{
    BreakerConfig, CircuitBreaker, Decision, ErrorRateMonitor, Event, Outcome, Replay, RetryBudget,
    RetryPolicy, State as BreakerState, parse_retry_after,
};
use tokio::sync::Notify;

use crate::telemetry;
use tokio::time::Instant;

use crate::HttpError;
use crate::classify::{BearerClassifier, Classifier, Verdict};
use crate::inject::Injector;
use crate::limits::{Death, LearnedLimits, LimitLearner, LimitsConfig, Recorded};

/// Put in a response's extensions by [`AuthMiddleware`]: the generation of the token (or session)
/// the server answered under. Resources bound to a session (Teamcenter's BOM windows) are valid
/// only while later answers carry the same generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnsweredUnder(pub u64);

/// A request extension (`RequestBuilder::with_extension(SessionBound)`): this request names
/// resources that live only in the session it is sent with (Teamcenter's BOM window lines). After
/// a rejection the middleware still replaces the token, but does not resend such a request under
/// the new one; it returns [`HttpError::SessionLost`] and the caller starts over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionBound;

/// A request extension (`RequestBuilder::with_extension(Idempotent)`): sending this request twice
/// has the effect of sending it once, whatever its method. The middleware retries 5xx, 429 and
/// transport failures only for idempotent methods (GET, HEAD, PUT, DELETE, OPTIONS, TRACE) and
/// for requests marked with this; any other `POST` or `PATCH` that reached the server is sent once.
/// (The single retry after a token rejection is for every method: the server refused before
/// acting.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Idempotent;

/// Put in a response's extensions by [`AuthMiddleware`] when the request was sent again after an
/// attempt whose answer was lost (a timeout or a connection cut after the request went out): the
/// server may have acted on it twice. Callers whose requests create things (Teamcenter's windows)
/// use it to clean up what they cannot name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResentAfterLostAnswer;

/// The per-attempt deadline [`AuthMiddleware`] gives a request that has none (60 s).
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(60);

/// Counters since the middleware was built (all monotonic).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Requests handled (each counted once, however many attempts).
    pub requests: u64,
    /// Attempts sent to the server.
    pub attempts: u64,
    /// Rejections healed by one refresh-and-retry: the caller never saw them.
    pub recovered: u64,
    /// Rejections that reached the caller (as an error).
    pub surfaced: u64,
    /// Policy retries (429, 5xx, connect, timeout).
    pub retries: u64,
    /// Premature deaths recorded.
    pub premature_deaths: u64,
    /// Keepalive requests sent.
    pub keepalives: u64,
    /// Of those, the ones that failed or that the server refused (a session not kept).
    pub keepalives_failed: u64,
    /// Rejections of `SessionBound` requests: the token was replaced and the caller told to
    /// start over (not surfaced, not retried).
    pub session_lost: u64,
    /// Every rejection the server sent (401, `InvalidUserException`), counted once each, whose
    /// request did not end in an authentication error (it succeeded, was handed back to start
    /// over, or failed later for a reason of the server's): healed.
    pub rejections_healed: u64,
    /// … and those whose request ended in an authentication error the caller saw. Healed plus
    /// surfaced equals the rejections the server sent, exactly.
    pub rejections_surfaced: u64,
}

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    attempts: AtomicU64,
    recovered: AtomicU64,
    surfaced: AtomicU64,
    retries: AtomicU64,
    premature_deaths: AtomicU64,
    keepalives: AtomicU64,
    keepalives_failed: AtomicU64,
    session_lost: AtomicU64,
    rejections_healed: AtomicU64,
    rejections_surfaced: AtomicU64,
    /// The newest token generation the server accepted at least once.
    accepted_generation: AtomicU64,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) manager: TokenManager,
    injector: Injector,
    /// The injector's header for the current token, built once per token.
    header_cache: crate::inject::HeaderCache,
    classifier: Arc<dyn Classifier>,
    policy: RetryPolicy,
    budget: RetryBudget,
    auth_breaker: CircuitBreaker,
    server_breaker: CircuitBreaker,
    monitor: Option<Arc<ErrorRateMonitor>>,
    pub(crate) learner: LimitLearner,
    pub(crate) clock: Arc<dyn Clock>,
    attempt_timeout: Duration,
    /// The retry jitter's generator: seeded for reproducible runs, else from the OS.
    rng: std::sync::Mutex<rand::rngs::StdRng>,
    origin: Instant,
    last_activity_ms: AtomicU64,
    pub(crate) learned: Notify,
    counters: Counters,
    /// The `client` label of every metric this middleware records.
    client: metrics::SharedString,
}

impl Shared {
    pub(crate) fn touch(&self, now: Instant) {
        let ms = u64::try_from(now.saturating_duration_since(self.origin).as_millis())
            .unwrap_or(u64::MAX);
        self.last_activity_ms.fetch_max(ms, Ordering::AcqRel);
    }

    pub(crate) fn idle(&self, now: Instant) -> Duration {
        let last =
            self.origin + Duration::from_millis(self.last_activity_ms.load(Ordering::Acquire));
        now.saturating_duration_since(last)
    }

    pub(crate) fn count_keepalive(&self) {
        self.counters.keepalives.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(telemetry::KEEPALIVES, "client" => self.client.clone()).increment(1);
    }

    pub(crate) fn count_keepalive_failed(&self) {
        self.counters
            .keepalives_failed
            .fetch_add(1, Ordering::Relaxed);
        metrics::counter!(telemetry::KEEPALIVE_FAILURES, "client" => self.client.clone())
            .increment(1);
    }

    fn apply_limits(&self, limits: LearnedLimits) {
        // The manager schedules by the cap and persists both limits with the token.
        self.manager.set_server_limits(limits);
        if let Some(cap) = limits.lifetime_cap {
            metrics::gauge!(telemetry::LEARNED_LIFETIME, "client" => self.client.clone())
                .set(cap.as_secs_f64());
        }
        if let Some(idle) = limits.idle_limit {
            metrics::gauge!(telemetry::LEARNED_IDLE, "client" => self.client.clone())
                .set(idle.as_secs_f64());
        }
        self.learned.notify_waiters();
    }
}

/// A `reqwest-middleware` middleware that keeps requests authenticated (design §3.3, §3.5 and §5
/// in `docs/design.md`).
///
/// For each request it:
/// 1. checks the auth and server circuit breakers (an open one fails fast, untouched server);
/// 2. puts the manager's current token on the request (read without touching its reference count)
///    and remembers its generation;
/// 3. classifies the response; on a dead-token verdict it reports that generation to the
///    [`TokenManager`] (which refreshes only if it is still current, so N requests failing with
///    one dead token cause one refresh), and retries **once** with the new token when the body is
///    replayable; a fresh token rejected again is [`HttpError::Rejected`];
/// 4. retries 429 (honouring `Retry-After`), 5xx, connect errors and timeouts with backoff, within
///    the retry budget — for idempotent methods and requests marked [`Idempotent`] only (any
///    request that never reached the server, a connect error, may go again), never re-sending a
///    body that cannot be replayed; every attempt has a deadline ([`DEFAULT_ATTEMPT_TIMEOUT`]
///    unless the request sets its own);
/// 5. records premature deaths, learns the server's real lifetime cap and idle limit, and caps the
///    manager's schedule by the learned lifetime;
/// 6. counts outcomes in `metrics` and the optional [`ErrorRateMonitor`]; logs through `tracing`,
///    never a token, cookie or secret header (injected headers are marked sensitive).
///
/// # Example
/// ```no_run
/// use shiftkey_auth::TokenManager;
/// use shiftkey_http::AuthMiddleware;
/// # async fn demo(manager: TokenManager) -> Result<(), Box<dyn std::error::Error>> {
/// let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
///     .with(AuthMiddleware::builder(manager).build())
///     .build();
/// let orders = client.get("https://mes.example.com/api/orders").send().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct AuthMiddleware {
    pub(crate) shared: Arc<Shared>,
}

/// Builds an [`AuthMiddleware`].
#[derive(Debug)]
pub struct AuthMiddlewareBuilder {
    manager: TokenManager,
    injector: Injector,
    classifier: Arc<dyn Classifier>,
    policy: RetryPolicy,
    budget: RetryBudget,
    auth_breaker: BreakerConfig,
    server_breaker: BreakerConfig,
    monitor: Option<Arc<ErrorRateMonitor>>,
    limits: LimitsConfig,
    learned: Option<LearnedLimits>,
    clock: Option<Arc<dyn Clock>>,
    attempt_timeout: Duration,
    seed: Option<u64>,
    name: Option<String>,
}

impl AuthMiddlewareBuilder {
    /// The `client` label of this middleware's metrics ([`crate::telemetry`]; default: the token
    /// manager's name, else `http`), e.g. `teamcenter` or `proxy:mes`: what an alert on them
    /// names.
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Seeds the retry jitter (default: from the OS). Same seed, same backoff delays: for
    /// reproducible soaks and tests.
    #[must_use]
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The deadline of one attempt of a request that sets none itself (default 60 s,
    /// [`DEFAULT_ATTEMPT_TIMEOUT`]): a hung socket fails the attempt instead of the caller
    /// waiting for ever. A request's own `timeout` wins.
    #[must_use]
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = timeout;
        self
    }

    /// How the token travels (default `Authorization: Bearer`).
    #[must_use]
    pub fn injector(mut self, injector: Injector) -> Self {
        self.injector = injector;
        self
    }

    /// Who decides that a response means a dead token (default [`BearerClassifier`]).
    #[must_use]
    pub fn classifier(mut self, classifier: impl Classifier) -> Self {
        self.classifier = Arc::new(classifier);
        self
    }

    /// The retry policy (default: design §5, 3 attempts, 500 ms × 2 full jitter).
    #[must_use]
    pub fn policy(mut self, policy: RetryPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The retry budget (default quota 500, retry 5, timeout 10, refund 1).
    #[must_use]
    pub fn budget(mut self, budget: RetryBudget) -> Self {
        self.budget = budget;
        self
    }

    /// Circuit breaker settings for auth rejections and for server failures (default: 5 in a row,
    /// 60 s doubling to 15 min).
    #[must_use]
    pub fn breakers(mut self, auth: BreakerConfig, server: BreakerConfig) -> Self {
        self.auth_breaker = auth;
        self.server_breaker = server;
        self
    }

    /// Counts every outcome in `monitor` (it raises the 401-rate alerts).
    #[must_use]
    pub fn monitor(mut self, monitor: Arc<ErrorRateMonitor>) -> Self {
        self.monitor = Some(monitor);
        self
    }

    /// Whether and what to learn about the server's limits.
    #[must_use]
    pub fn limits(mut self, limits: LimitsConfig) -> Self {
        self.limits = limits;
        self
    }

    /// Limits learned in an earlier run (persisted with the token).
    #[must_use]
    pub fn learned(mut self, learned: LearnedLimits) -> Self {
        self.learned = Some(learned);
        self
    }

    /// The clock (default [`TokioClock`]); use the manager's.
    #[must_use]
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The middleware. Pinned or restored limits are applied to the manager at once.
    #[must_use]
    pub fn build(self) -> AuthMiddleware {
        let clock = self.clock.unwrap_or_else(|| Arc::new(TokioClock::new()));
        let mut learner = LimitLearner::new(self.limits);
        // Limits given here, else those the manager restored from its store.
        let restored = self.manager.server_limits();
        match self.learned {
            Some(l) => learner = learner.with_learned(l),
            None if restored != LearnedLimits::default() => {
                learner = learner.with_learned(restored)
            }
            None => {}
        }
        let origin = clock.now();
        let client: metrics::SharedString = match self.name {
            Some(n) => n.into(),
            None if !self.manager.name().is_empty() => self.manager.name().to_owned().into(),
            None => "http".into(),
        };
        telemetry::describe();
        telemetry::zero(&client);
        let shared = Arc::new(Shared {
            manager: self.manager,
            injector: self.injector,
            header_cache: crate::inject::HeaderCache::default(),
            classifier: self.classifier,
            policy: self.policy,
            budget: self.budget,
            auth_breaker: CircuitBreaker::new(self.auth_breaker),
            server_breaker: CircuitBreaker::new(self.server_breaker),
            monitor: self.monitor,
            learner,
            clock,
            attempt_timeout: self.attempt_timeout,
            rng: std::sync::Mutex::new(match self.seed {
                Some(seed) => rand::SeedableRng::seed_from_u64(seed),
                None => rand::SeedableRng::from_entropy(),
            }),
            origin,
            last_activity_ms: AtomicU64::new(0),
            learned: Notify::new(),
            counters: Counters::default(),
            client,
        });
        let limits = shared.learner.limits();
        if limits != LearnedLimits::default() {
            shared.apply_limits(limits);
        }
        AuthMiddleware { shared }
    }
}

fn fail(e: HttpError) -> reqwest_middleware::Error {
    reqwest_middleware::Error::middleware(e)
}

fn outcome_of(response: &Response, now_wall: std::time::SystemTime) -> Outcome {
    let status = response.status();
    if status.is_success() || status.is_redirection() || status.is_informational() {
        return Outcome::Success;
    }
    if status == http::StatusCode::TOO_MANY_REQUESTS
        || status == http::StatusCode::SERVICE_UNAVAILABLE
    {
        let headers = response.headers();
        let date = headers
            .get(http::header::DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(httpdate_parse);
        let retry_after = headers
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, date, now_wall, Duration::from_secs(3600)));
        if status == http::StatusCode::TOO_MANY_REQUESTS || retry_after.is_some() {
            return Outcome::RateLimited { retry_after };
        }
    }
    Outcome::Status(status.as_u16())
}

fn httpdate_parse(v: &str) -> Option<std::time::SystemTime> {
    httpdate::parse_http_date(v).ok()
}

impl AuthMiddleware {
    /// A builder around `manager`.
    pub fn builder(manager: TokenManager) -> AuthMiddlewareBuilder {
        AuthMiddlewareBuilder {
            manager,
            injector: Injector::default(),
            classifier: Arc::new(BearerClassifier),
            policy: RetryPolicy::default(),
            budget: RetryBudget::default(),
            auth_breaker: BreakerConfig::default(),
            server_breaker: BreakerConfig::default(),
            monitor: None,
            limits: LimitsConfig::default(),
            learned: None,
            clock: None,
            attempt_timeout: DEFAULT_ATTEMPT_TIMEOUT,
            seed: None,
            name: None,
        }
    }

    /// The token manager behind this middleware.
    #[must_use]
    pub fn manager(&self) -> &TokenManager {
        &self.shared.manager
    }

    /// What has been learned about the server's limits (persist it with the token).
    #[must_use]
    pub fn learned_limits(&self) -> LearnedLimits {
        self.shared.learner.limits()
    }

    /// The states of the auth and the server circuit breakers, in that order (for readiness
    /// checks and metrics).
    #[must_use]
    pub fn circuits(&self) -> (shiftkey_policy::State, shiftkey_policy::State) {
        (
            self.shared.auth_breaker.state(),
            self.shared.server_breaker.state(),
        )
    }

    /// Counters since start.
    #[must_use]
    pub fn stats(&self) -> Stats {
        let c = &self.shared.counters;
        Stats {
            requests: c.requests.load(Ordering::Relaxed),
            attempts: c.attempts.load(Ordering::Relaxed),
            recovered: c.recovered.load(Ordering::Relaxed),
            surfaced: c.surfaced.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            premature_deaths: c.premature_deaths.load(Ordering::Relaxed),
            keepalives: c.keepalives.load(Ordering::Relaxed),
            keepalives_failed: c.keepalives_failed.load(Ordering::Relaxed),
            session_lost: c.session_lost.load(Ordering::Relaxed),
            rejections_healed: c.rejections_healed.load(Ordering::Relaxed),
            rejections_surfaced: c.rejections_surfaced.load(Ordering::Relaxed),
        }
    }

    /// Forces a refresh to replace `generation` and waits (at most the manager's
    /// `wait_timeout`) until a newer token is servable.
    async fn force_refresh(&self, generation: u64) -> bool {
        let s = &self.shared;
        tracing::info!(
            generation,
            "a token the server had accepted died soon after a reactive refresh; refreshing again"
        );
        // A dead token the server had accepted: replaced as a reactive refresh (counted as
        // one, so re-logins reconcile with the server's count), never TooSoon.
        s.manager.invalidate_served(generation);
        let deadline = s.clock.now() + s.manager.config().wait_timeout;
        loop {
            if s.manager
                .try_token()
                .is_some_and(|t| t.generation() > generation)
            {
                return true;
            }
            if s.clock.now() >= deadline {
                return false;
            }
            s.clock.sleep(Duration::from_millis(10)).await;
        }
    }

    fn surfaced(&self, e: HttpError) -> reqwest_middleware::Error {
        self.shared
            .counters
            .surfaced
            .fetch_add(1, Ordering::Relaxed);
        metrics::counter!(telemetry::UNAUTHORIZED, "client" => self.shared.client.clone(), "result" => "surfaced")
            .increment(1);
        tracing::warn!(error = %e, "token rejection surfaced to the caller");
        fail(e)
    }

    /// The policy's verdict on retrying `outcome`: the delay, or `None` to stop — also when the
    /// body cannot be sent again, or when these failures just opened the server circuit (the
    /// caller then gets the real answer, and the next request fails fast).
    fn retry_delay(
        &self,
        outcome: &Outcome,
        attempt: u32,
        replay: Replay,
        replayable: bool,
        reason: &'static str,
    ) -> Option<Duration> {
        let s = &*self.shared;
        let draw = s
            .rng
            .lock()
            .map_or(0.5, |mut r| rand::Rng::r#gen::<f64>(&mut *r));
        match s
            .policy
            .decide(outcome, attempt, replay, Some(&s.budget), draw)
        {
            Decision::Retry(delay)
                if replayable && s.server_breaker.state() != BreakerState::Open =>
            {
                s.counters.retries.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(telemetry::RETRIES, "client" => s.client.clone(), "reason" => reason)
                    .increment(1);
                tracing::debug!(
                    attempt,
                    reason,
                    delay_ms = delay.as_millis() as u64,
                    "retrying"
                );
                Some(delay)
            }
            _ => None,
        }
    }

    fn record(&self, now: Instant, class: shiftkey_policy::Class) {
        if let Some(m) = &self.shared.monitor {
            m.record(now.into_std(), Event::Request(class));
        }
    }
}

#[async_trait]
impl Middleware for AuthMiddleware {
    async fn handle(
        &self,
        req: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        // Each rejection the server sends is accounted for once, by how its request ended.
        let mut rejections = 0u64;
        let result = self.run(req, extensions, next, &mut rejections).await;
        if rejections > 0 {
            let c = &self.shared.counters;
            // Surfaced: the caller got an authentication error. A request that was healed and
            // then failed for another reason (a 503 burst, a cut connection) had its rejection
            // healed: that failure is the server's, not the token's.
            let healed = match &result {
                Ok(_) => true,
                Err(e) => !matches!(
                    HttpError::from_middleware(e),
                    Some(
                        HttpError::Rejected { .. }
                            | HttpError::NotReplayable
                            | HttpError::AuthCircuitOpen { .. }
                            | HttpError::Token(_)
                    )
                ),
            };
            let counter = if healed {
                &c.rejections_healed
            } else {
                &c.rejections_surfaced
            };
            counter.fetch_add(rejections, Ordering::Relaxed);
        }
        result
    }
}

/// One request's state across its attempts.
struct Flow {
    /// Policy retries only for what is safe to send twice.
    idempotent: bool,
    /// The session a `SessionBound` request's resources live in: a policy retry must not carry
    /// them to another one.
    session_bound: bool,
    /// The request to send next (`None` once sent without a spare copy).
    pending: Option<Request>,
    /// Attempts that count against the policy (the auth retry does not).
    attempt: u32,
    /// Whether an attempt whose answer was lost (sent, then timed out or cut) was retried.
    resent_after_loss: bool,
    /// The generation the first attempt of a `SessionBound` request went out under.
    first_generation: Option<u64>,
    /// The generation a rejection replaced, while its one retry is under way.
    refreshed_from: Option<u64>,
}

/// The token one attempt carries.
#[derive(Clone, Copy)]
struct Carried {
    generation: u64,
    issued_at: Instant,
    lifetime: Duration,
}

/// When one attempt went out and came back, and how idle the connection had been before it.
#[derive(Clone, Copy)]
struct Sent {
    at: Instant,
    idle: Duration,
    done: Instant,
}

/// What to do after a step: go again at once (the auth retry), go again after a policy delay,
/// or end with this result.
enum Step<T> {
    Now,
    After(Duration),
    End(T),
}

impl AuthMiddleware {
    /// One request, however many attempts; `rejections` counts the server's rejections of it.
    ///
    /// The healing loop in named steps: [`admit`](Self::admit) (the breakers),
    /// [`inject`](Self::inject) (the token), [`send`](Self::send), then either
    /// [`after_transport_error`](Self::after_transport_error) or the classifier's verdict:
    /// [`heal`](Self::heal) a rejection, hand back a refusal, or [`retry_decision`](Self::retry_decision)
    /// on what the server answered.
    async fn run(
        &self,
        mut req: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
        rejections: &mut u64,
    ) -> reqwest_middleware::Result<Response> {
        let s = &*self.shared;
        s.counters.requests.fetch_add(1, Ordering::Relaxed);
        if req.timeout().is_none() {
            *req.timeout_mut() = Some(s.attempt_timeout);
        }
        let mut flow = Flow {
            idempotent: req.method().is_idempotent() || extensions.get::<Idempotent>().is_some(),
            session_bound: extensions.get::<SessionBound>().is_some(),
            pending: Some(req),
            attempt: 0,
            resent_after_loss: false,
            first_generation: None,
            refreshed_from: None,
        };
        loop {
            let Some(mut request) = flow.pending.take() else {
                // Only reached if a retry was decided without a spare copy; never by construction.
                return Err(fail(HttpError::NotReplayable));
            };
            let spare = request.try_clone();
            self.admit()?;
            let carried = self.inject(&mut request, &mut flow).await?;
            let (result, sent) = self
                .send(request, extensions, next.clone(), &mut flow)
                .await;
            let step = match result {
                Err(e) => self.after_transport_error(e, sent, &mut flow, spare.is_some()),
                Ok(response) => {
                    let (verdict, response) = s
                        .classifier
                        .classify(response)
                        .await
                        .map_err(reqwest_middleware::Error::Reqwest)?;
                    match verdict {
                        Verdict::Refresh => {
                            *rejections += 1;
                            self.heal(carried, sent, &mut flow, spare.is_some()).await?;
                            Step::Now
                        }
                        Verdict::Forbidden => Step::End(Ok(self.refused(response, sent))),
                        Verdict::Accepted => {
                            self.accepted(carried, &mut flow);
                            let replayable = spare.is_some();
                            self.retry_decision(
                                response, carried, sent, &mut flow, replayable, false,
                            )
                        }
                        Verdict::Answered => {
                            self.accepted(carried, &mut flow);
                            self.retry_decision(response, carried, sent, &mut flow, false, true)
                        }
                    }
                }
            };
            match step {
                Step::Now => flow.pending = spare,
                Step::After(delay) => {
                    s.clock.sleep(delay).await;
                    flow.pending = spare;
                }
                Step::End(result) => return result,
            }
        }
    }

    /// Step 1: the auth and the server circuit breakers; an open one fails fast, the server
    /// untouched.
    fn admit(&self) -> reqwest_middleware::Result<()> {
        let s = &*self.shared;
        let now = s.clock.now();
        s.auth_breaker.allow(now.into_std()).map_err(|r| {
            fail(HttpError::AuthCircuitOpen {
                retry_in: r.retry_in,
            })
        })?;
        s.server_breaker.allow(now.into_std()).map_err(|r| {
            fail(HttpError::ServerCircuitOpen {
                retry_in: r.retry_in,
            })
        })?;
        Ok(())
    }

    /// Step 2: puts the current token on `request` — a refcount-free read on the hot path, a wait
    /// only when none is servable. A `SessionBound` request whose session was replaced since its
    /// first attempt is [`HttpError::SessionLost`].
    async fn inject(
        &self,
        request: &mut Request,
        flow: &mut Flow,
    ) -> reqwest_middleware::Result<Carried> {
        let s = &*self.shared;
        let carry = |headers: &mut http::HeaderMap, t: &shiftkey_auth::TokenSet| {
            (
                s.header_cache.apply(&s.injector, headers, t),
                Carried {
                    generation: t.generation,
                    issued_at: t.issued_at,
                    lifetime: t.lifetime,
                },
            )
        };
        let injected = s.manager.with_token(|t| carry(request.headers_mut(), t));
        let (ok, carried) = match injected {
            Some(v) => v,
            None => {
                let t = s
                    .manager
                    .token()
                    .await
                    .map_err(|e| fail(HttpError::Token(e)))?;
                carry(request.headers_mut(), &t)
            }
        };
        if flow.session_bound {
            match flow.first_generation {
                Some(g) if g != carried.generation => {
                    s.counters.session_lost.fetch_add(1, Ordering::Relaxed);
                    return Err(fail(HttpError::SessionLost { generation: g }));
                }
                _ => flow.first_generation = Some(carried.generation),
            }
        }
        if !ok {
            return Err(fail(HttpError::Token(shiftkey_auth::AuthError::transient(
                shiftkey_auth::TransientKind::InvalidResponse,
                "the token contains characters that cannot go in an HTTP header",
            ))));
        }
        Ok(carried)
    }

    /// Step 3: one attempt, timed, with the activity the idle-limit learner and the keepalive
    /// read.
    async fn send(
        &self,
        request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
        flow: &mut Flow,
    ) -> (reqwest_middleware::Result<Response>, Sent) {
        let s = &*self.shared;
        let at = s.clock.now();
        let idle = s.idle(at);
        s.touch(at);
        flow.attempt += 1;
        s.counters.attempts.fetch_add(1, Ordering::Relaxed);
        let result = next.run(request, extensions).await;
        let done = s.clock.now();
        s.touch(done);
        (result, Sent { at, idle, done })
    }

    /// Step 4a: no answer. Only a refused connection proves the request never left; any other
    /// transport error (a reset, a cut body) may have reached the server, and is judged like a
    /// timeout: retried only when the request is idempotent.
    fn after_transport_error(
        &self,
        e: reqwest_middleware::Error,
        sent: Sent,
        flow: &mut Flow,
        replayable: bool,
    ) -> Step<reqwest_middleware::Result<Response>> {
        let s = &*self.shared;
        // The request's own body failed at its source (`RequestBodyError`): the caller's fault,
        // not the server's. No breaker, no monitor, no retry (such a body is spent).
        if crate::RequestBodyError::in_chain(&e) {
            metrics::counter!(telemetry::REQUESTS, "client" => s.client.clone(), "outcome" => "body_error")
                .increment(1);
            return Step::End(Err(e));
        }
        let connect = matches!(&e, reqwest_middleware::Error::Reqwest(re) if re.is_connect());
        let outcome = if connect {
            Outcome::Connect
        } else {
            Outcome::Timeout
        };
        s.server_breaker.record(sent.done.into_std(), false);
        self.record(sent.done, outcome.class());
        metrics::counter!(telemetry::REQUESTS, "client" => s.client.clone(), "outcome" => "transport_error")
            .increment(1);
        let replay = if replayable && flow.idempotent {
            Replay::Safe
        } else {
            Replay::Unsafe { sent: !connect }
        };
        match self.retry_delay(&outcome, flow.attempt, replay, replayable, "transport") {
            Some(delay) => {
                flow.resent_after_loss |= !connect;
                Step::After(delay)
            }
            None => Step::End(Err(e)),
        }
    }

    /// Step 4b: the server rejected the token. Records a premature death (and what it teaches),
    /// reports the generation to the manager (one refresh for every request that died with it)
    /// and returns `Ok` when the request goes once more under the replacement; a replacement
    /// rejected again, a body that cannot be sent again, or a `SessionBound` request end here.
    async fn heal(
        &self,
        carried: Carried,
        sent: Sent,
        flow: &mut Flow,
        replayable: bool,
    ) -> reqwest_middleware::Result<()> {
        let s = &*self.shared;
        let generation = carried.generation;
        let done = sent.done;
        self.record(done, shiftkey_policy::Class::Unauthorized);
        metrics::counter!(telemetry::REQUESTS, "client" => s.client.clone(), "outcome" => "unauthorized")
            .increment(1);
        self.learn_from_death(carried, sent);
        if flow.refreshed_from.is_some() {
            s.auth_breaker.record(done.into_std(), false);
            return Err(self.surfaced(HttpError::Rejected { generation }));
        }
        if s.manager.invalidate(generation) == Invalidation::TooSoon {
            // A reactive replacement rejected within `min_interval` is refused — unless the
            // server had accepted it: then it served and died (a restart right after a reactive
            // refresh), and one more refresh does help.
            let served = s.counters.accepted_generation.load(Ordering::Relaxed) >= generation;
            if !served || !self.force_refresh(generation).await {
                s.auth_breaker.record(done.into_std(), false);
                return Err(self.surfaced(HttpError::Rejected { generation }));
            }
        }
        if !replayable {
            return Err(self.surfaced(HttpError::NotReplayable));
        }
        if flow.session_bound {
            // Not surfaced as a 401: the caller starts over under the new session. The server
            // answered and one rejection is no auth failure: both breakers hear a success (a
            // half-open probe is released).
            s.auth_breaker.record(done.into_std(), true);
            s.server_breaker.record(done.into_std(), true);
            s.counters.session_lost.fetch_add(1, Ordering::Relaxed);
            return Err(fail(HttpError::SessionLost { generation }));
        }
        flow.refreshed_from = Some(generation);
        // The auth retry is not a policy retry: it does not count against the attempts.
        flow.attempt -= 1;
        Ok(())
    }

    /// A token rejected before its claimed lifetime is a premature death: recorded once per
    /// generation; two alike teach the server's real limits, which the manager then schedules by.
    fn learn_from_death(&self, carried: Carried, sent: Sent) {
        let s = &*self.shared;
        let age = sent.at.saturating_duration_since(carried.issued_at);
        if age >= carried.lifetime {
            return;
        }
        let generation = carried.generation;
        let idle = sent.idle;
        match s.learner.record(generation, Death { age, idle }) {
            Recorded::Duplicate => {}
            recorded => {
                s.counters.premature_deaths.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(telemetry::PREMATURE_DEATHS, "client" => s.client.clone())
                    .increment(1);
                tracing::info!(
                    generation,
                    age_s = age.as_secs_f64(),
                    idle_s = idle.as_secs_f64(),
                    claimed_s = carried.lifetime.as_secs_f64(),
                    "premature token death"
                );
                if let Recorded::Learned(limits) = recorded {
                    let secs = |d: Option<Duration>| {
                        d.map_or_else(
                            || "not learned".to_owned(),
                            |d| format!("{} s", d.as_secs()),
                        )
                    };
                    tracing::warn!(
                        "learned the server's real token limits: lifetime cap {}, idle limit {}",
                        secs(limits.lifetime_cap),
                        secs(limits.idle_limit)
                    );
                    s.apply_limits(limits);
                }
            }
        }
    }

    /// Step 4c: the token is alive but not allowed to do this; refreshing would not help. The
    /// response goes back as it is.
    fn refused(&self, response: Response, sent: Sent) -> Response {
        let s = &*self.shared;
        s.auth_breaker.record(sent.done.into_std(), true);
        s.server_breaker.record(sent.done.into_std(), true);
        self.record(sent.done, shiftkey_policy::Class::ClientError);
        metrics::counter!(telemetry::REQUESTS, "client" => s.client.clone(), "outcome" => "forbidden")
            .increment(1);
        response
    }

    /// The server accepted the token: remembered (a later rejection of it is a real death), and
    /// a rejection this request met counts as recovered.
    fn accepted(&self, carried: Carried, flow: &mut Flow) {
        let s = &*self.shared;
        s.counters
            .accepted_generation
            .fetch_max(carried.generation, Ordering::Relaxed);
        if let Some(old) = flow.refreshed_from.take() {
            s.counters.recovered.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(telemetry::UNAUTHORIZED, "client" => s.client.clone(), "result" => "recovered")
                .increment(1);
            tracing::info!(
                rejected_generation = old,
                generation = carried.generation,
                "token rejection recovered by one refresh"
            );
        }
    }

    /// Step 5: what the server answered under an accepted token — retried (429, 5xx) when the
    /// policy, the budget and the request's idempotency allow, else handed back marked with the
    /// generation it was answered under.
    fn retry_decision(
        &self,
        response: Response,
        carried: Carried,
        sent: Sent,
        flow: &mut Flow,
        replayable: bool,
        answered: bool,
    ) -> Step<reqwest_middleware::Result<Response>> {
        let s = &*self.shared;
        let done = sent.done;
        s.auth_breaker.record(done.into_std(), true);
        let outcome = outcome_of(&response, s.clock.wall());
        // A deliberate answer (`Verdict::Answered`) is final and shows a working server,
        // whatever its status.
        s.server_breaker
            .record(done.into_std(), answered || !outcome.is_server_failure());
        self.record(done, outcome.class());
        let replay = if replayable && flow.idempotent {
            Replay::Safe
        } else {
            Replay::Unsafe { sent: true }
        };
        if let Some(delay) = self
            .retry_delay(&outcome, flow.attempt, replay, replayable, "status")
            .filter(|_| !answered)
        {
            // A 5xx other than 503 may come after the server acted.
            let status = response.status();
            flow.resent_after_loss |=
                status.is_server_error() && status != http::StatusCode::SERVICE_UNAVAILABLE;
            tracing::debug!(attempt = flow.attempt, status = status.as_u16(), "retrying");
            return Step::After(delay);
        }
        let label = if outcome == Outcome::Success {
            "success"
        } else {
            "error"
        };
        metrics::counter!(telemetry::REQUESTS, "client" => s.client.clone(), "outcome" => label)
            .increment(1);
        let mut response = response;
        response
            .extensions_mut()
            .insert(AnsweredUnder(carried.generation));
        if flow.resent_after_loss {
            response.extensions_mut().insert(ResentAfterLostAnswer);
        }
        Step::End(Ok(response))
    }
}
