//! [`TokenManager`]: one credential's token, kept fresh in the background.

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::store::{ServerLimits, StoreError, StoreErrorKind, StoredToken, TokenStore};
use crate::timing::{Planner, RefreshConfig, Schedule};
use crate::{
    AuthError, AuthStrategy, Clock, ConfigError, LifetimeSource, PermanentKind, TokenSet,
    TokioClock, TransientKind,
};

/// A token handed out by the manager: the [`TokenSet`] and its schedule.
///
/// Cheap to clone (one reference count). Dereferences to [`TokenSet`]; `Debug` redacts secrets.
#[derive(Clone)]
pub struct Token(Arc<Entry>);

#[derive(Debug)]
struct Entry {
    token: TokenSet,
    schedule: Schedule,
    /// Obtained by a reactive refresh (its predecessor was rejected by a server).
    reactive: bool,
}

impl Token {
    /// The generation to quote when reporting a rejection with [`TokenManager::invalidate`].
    #[must_use]
    pub fn generation(&self) -> u64 {
        self.0.token.generation
    }

    /// When the background refresh of this token starts.
    #[must_use]
    pub fn refresh_at(&self) -> Instant {
        self.0.schedule.refresh_at
    }

    /// After this instant the manager no longer serves this token.
    #[must_use]
    pub fn hard_deadline(&self) -> Instant {
        self.0.schedule.hard_at
    }

    /// The token's schedule.
    #[must_use]
    pub fn schedule(&self) -> &Schedule {
        &self.0.schedule
    }
}

impl Deref for Token {
    type Target = TokenSet;
    fn deref(&self) -> &TokenSet {
        &self.0.token
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Token").field(&self.0.token).finish()
    }
}

/// What [`TokenManager::invalidate`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalidation {
    /// The generation was current: it is no longer served and one refresh is under way.
    Refreshing,
    /// A newer generation already exists: retry with it, nothing was refreshed.
    AlreadyReplaced,
    /// The generation was current, was itself obtained by a reactive refresh, and is younger
    /// than its `min_interval`: a replacement this fresh being rejected again means refreshing once
    /// more will not help. Nothing was refreshed; report [`AuthError::Rejected`].
    TooSoon,
}

/// Counters since the manager started (all monotonic).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Calls to the strategy's `acquire` (attempts, successful or not).
    pub acquires: u64,
    /// Attempts that failed.
    pub failures: u64,
    /// Refreshes started while the current token was still servable (proactive).
    pub proactive: u64,
    /// Refreshes started because a server rejected the current token.
    pub reactive: u64,
    /// Callers that had to wait on the slow path (no servable token at hand).
    pub waits: u64,
    /// The longest such wait, in microseconds (on the manager's clock).
    pub max_wait_us: u64,
    /// Tokens adopted from a sibling process through the store (no server call).
    pub adopted: u64,
    /// Of those, adopted because the store announced a change (`LISTEN/NOTIFY`).
    pub notified: u64,
}

/// What the refresher last published; callers on the slow path watch it.
#[derive(Debug, Clone, Default)]
struct Published {
    completed: u64,
    last_error: Option<AuthError>,
    halted: Option<AuthError>,
    next_attempt: Option<Instant>,
    shutdown: bool,
    /// The refresher ended without being asked to (a panic in a strategy or store, or its task
    /// was aborted): nothing will ever refresh again.
    died: bool,
}

/// A snapshot for status pages, `doctor` and tests.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Status {
    /// Generation of the servable token, if any.
    pub generation: Option<u64>,
    /// Its schedule.
    pub schedule: Option<Schedule>,
    /// The last failed attempt's error, cleared by a success.
    pub last_error: Option<AuthError>,
    /// The permanent error that stopped refreshing, if any.
    pub halted: Option<AuthError>,
    /// When the refresher will try next.
    pub next_attempt: Option<Instant>,
    /// Server clock minus ours, estimated from the token endpoint's `Date` header (seconds).
    pub skew_secs: Option<f64>,
    /// Counters.
    pub stats: Stats,
    /// No token is held because none is wanted ([`TokenManagerBuilder::on_demand`] before the
    /// first ask, or after [`TokenManager::release`]): not a failure.
    pub dormant: bool,
}

struct Inner {
    name: String,
    clock: Arc<dyn Clock>,
    cfg: RefreshConfig,
    current: ArcSwapOption<Entry>,
    wake: Notify,
    stopping: Notify,
    invalidated: AtomicU64,
    forced: AtomicBool,
    stop: AtomicBool,
    published: watch::Sender<Published>,
    skew_millis: AtomicU64,
    lifetime_cap_millis: AtomicU64,
    store: Option<Arc<dyn TokenStore>>,
    limits: std::sync::Mutex<ServerLimits>,
    limits_dirty: AtomicBool,
    counters: Counters,
    /// No token is wanted: the refresher neither acquires nor refreshes until `demanded`.
    dormant: AtomicBool,
    /// A caller asked for a token (or a refresh) since the manager went dormant.
    demanded: AtomicBool,
    /// A pending [`TokenManager::release`], answered by the refresher with the dropped token.
    release: std::sync::Mutex<Option<tokio::sync::oneshot::Sender<Option<TokenSet>>>>,
}

#[derive(Default)]
struct Counters {
    adopted: AtomicU64,
    notified: AtomicU64,
    acquires: AtomicU64,
    failures: AtomicU64,
    proactive: AtomicU64,
    reactive: AtomicU64,
    waits: AtomicU64,
    max_wait_us: AtomicU64,
}

const NO_SKEW: u64 = u64::MAX;
const NO_CAP: u64 = u64::MAX;
const NOT_INVALIDATED: u64 = u64::MAX;

/// Stops the refresher when the last [`TokenManager`] clone is dropped.
struct StopOnDrop(Arc<Inner>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.request_stop();
    }
}

impl Inner {
    fn lifetime_cap(&self) -> Option<Duration> {
        let m = self.lifetime_cap_millis.load(Ordering::Acquire);
        (m != NO_CAP).then(|| Duration::from_millis(m))
    }

    /// Forgets a permanent halt (an operator or a server asked for a new token), so waiting
    /// callers wait for the next attempt instead of getting the old error.
    fn clear_halt(&self) {
        self.published.send_if_modified(|p| {
            let was = p.halted.is_some();
            p.halted = None;
            if was {
                p.last_error = None;
            }
            was
        });
    }

    fn request_stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.wake.notify_one();
        self.stopping.notify_one();
    }
}

/// Keeps one credential's token fresh: proactive refresh in the background, reactive refresh on
/// rejection, backoff on failure.
///
/// # Concurrency
/// - [`TokenManager::token`] on a fresh token is a lock-free load (`arc-swap`), one clock read and
///   a reference-count increment: no lock, no allocation, no await.
/// - **Single flight**: only the manager's one refresher task ever calls
///   [`AuthStrategy::acquire`], one call at a time. Any number of callers that find no servable
///   token wait for that task's next attempt; they never start one of their own. N concurrent
///   callers at expiry therefore cause exactly one `acquire`.
/// - A caller never receives a token past its hard margin. While a refresh is failing the old
///   token keeps being served until then; afterwards callers wait up to `wait_timeout` through
///   failed attempts whose retry falls inside that wait, and get the last error when the wait
///   ends, or at once when the next attempt lies beyond it (a long `Retry-After`).
/// - A permanent error stops refreshing until [`TokenManager::refresh_now`] or
///   [`TokenManager::invalidate`]; callers then get that error at once.
///
/// Cheap to clone; all clones share one token. The refresher stops when the last clone is dropped
/// or on [`TokenManager::shutdown`].
///
/// # Example
/// ```
/// use std::time::Duration;
/// use shiftkey_auth::{AuthError, AuthStrategy, TokenManager, TokenSet, Clock, TokioClock};
///
/// #[derive(Debug)]
/// struct Static;
///
/// #[async_trait::async_trait]
/// impl AuthStrategy for Static {
///     async fn acquire(&self, _previous: Option<&TokenSet>) -> Result<TokenSet, AuthError> {
///         let clock = TokioClock::new();
///         Ok(TokenSet::new("t0k3n", Duration::from_secs(3600), clock.now(), clock.wall()))
///     }
///     fn name(&self) -> &str { "static" }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let manager = TokenManager::builder(Static).build()?;
/// let token = manager.token().await?;
/// assert_eq!(token.access_token.expose(), "t0k3n");
/// assert_eq!(token.generation(), 1);
/// manager.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct TokenManager {
    inner: Arc<Inner>,
    _stop: Arc<StopOnDrop>,
}

impl fmt::Debug for TokenManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenManager")
            .field("name", &self.inner.name)
            .finish_non_exhaustive()
    }
}

/// Builds a [`TokenManager`].
#[derive(Debug)]
pub struct TokenManagerBuilder<S> {
    strategy: S,
    cfg: RefreshConfig,
    clock: Option<Arc<dyn Clock>>,
    name: Option<String>,
    store: Option<Arc<dyn TokenStore>>,
    on_demand: bool,
}

impl<S: AuthStrategy + 'static> TokenManagerBuilder<S> {
    /// Acquires the first token when it is first asked for ([`TokenManager::token`] or
    /// [`TokenManager::refresh_now`]), not at build: for a credential that costs the server
    /// something while held (a Teamcenter session holds a server process), in a process that
    /// may never use it (a standby).
    ///
    /// # Example
    /// ```
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use shiftkey_auth::{TokenManager, testing::ScriptedStrategy};
    ///
    /// let strategy = ScriptedStrategy::new(Duration::from_secs(3600), Duration::ZERO);
    /// let manager = TokenManager::builder(strategy.clone()).on_demand().build()?;
    /// tokio::task::yield_now().await;
    /// assert_eq!(strategy.calls(), 0);
    /// manager.token().await?;
    /// assert_eq!(strategy.calls(), 1);
    /// # manager.shutdown().await;
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn on_demand(mut self) -> Self {
        self.on_demand = true;
        self
    }

    /// Persists tokens in `store` and refreshes under its cross-process lock (design §4.3,
    /// `docs/design.md`): processes sharing a store share one token, and a rotated refresh token is
    /// used once.
    /// At start a fresh stored token is adopted without contacting the server.
    #[must_use]
    pub fn store(mut self, store: Arc<dyn TokenStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// The timing law's numbers (default: design §3.2).
    #[must_use]
    pub fn config(mut self, cfg: RefreshConfig) -> Self {
        self.cfg = cfg;
        self
    }

    /// The clock (default: [`TokioClock`]).
    #[must_use]
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The credential's name in logs (default: the strategy's name).
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Validates the configuration and starts the refresher task, which acquires the first token
    /// at once. Must be called inside a tokio runtime.
    pub fn build(self) -> Result<TokenManager, ConfigError> {
        let planner = Planner::new(self.cfg.clone())?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            ConfigError::new(
                "runtime",
                "TokenManager::build must run inside a tokio runtime",
            )
        })?;
        let clock = self.clock.unwrap_or_else(|| Arc::new(TokioClock::new()));
        let name = self.name.unwrap_or_else(|| self.strategy.name().to_owned());
        let inner = Arc::new(Inner {
            name,
            clock,
            cfg: self.cfg,
            current: ArcSwapOption::empty(),
            wake: Notify::new(),
            stopping: Notify::new(),
            invalidated: AtomicU64::new(NOT_INVALIDATED),
            forced: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            published: watch::Sender::new(Published::default()),
            skew_millis: AtomicU64::new(NO_SKEW),
            lifetime_cap_millis: AtomicU64::new(NO_CAP),
            store: self.store,
            limits: std::sync::Mutex::new(ServerLimits::default()),
            limits_dirty: AtomicBool::new(false),
            counters: Counters::default(),
            dormant: AtomicBool::new(self.on_demand),
            demanded: AtomicBool::new(false),
            release: std::sync::Mutex::new(None),
        });
        runtime.spawn(refresher(Arc::clone(&inner), self.strategy, planner));
        Ok(TokenManager {
            _stop: Arc::new(StopOnDrop(Arc::clone(&inner))),
            inner,
        })
    }
}

impl TokenManager {
    /// A builder for a manager of `strategy`'s tokens.
    pub fn builder<S: AuthStrategy + 'static>(strategy: S) -> TokenManagerBuilder<S> {
        TokenManagerBuilder {
            strategy,
            cfg: RefreshConfig::default(),
            clock: None,
            name: None,
            store: None,
            on_demand: false,
        }
    }

    /// The credential's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The configuration in force.
    #[must_use]
    pub fn config(&self) -> &RefreshConfig {
        &self.inner.cfg
    }

    /// The current token if it is servable now (before its hard margin), without waiting.
    ///
    /// This is the hot path: a lock-free load and one clock read.
    #[must_use]
    pub fn try_token(&self) -> Option<Token> {
        let guard = self.inner.current.load();
        let entry = guard.as_ref()?;
        if self.inner.clock.now() < entry.schedule.hard_at {
            Some(Token(Arc::clone(entry)))
        } else {
            None
        }
    }

    /// Runs `f` on the current token if it is servable now, without waiting and without touching
    /// the token's reference count: the cheapest read, for code that only needs to copy the token
    /// into a request header. Keep `f` short; it holds an `arc-swap` guard.
    pub fn with_token<R>(&self, f: impl FnOnce(&TokenSet) -> R) -> Option<R> {
        let guard = self.inner.current.load();
        let entry = guard.as_ref()?;
        if self.inner.clock.now() < entry.schedule.hard_at {
            Some(f(&entry.token))
        } else {
            None
        }
    }

    /// A servable token: the current one, or the next one the refresher gets.
    ///
    /// Waits at most `wait_timeout`; see the type's docs for what it returns when refreshing fails.
    pub async fn token(&self) -> Result<Token, AuthError> {
        match self.try_token() {
            Some(t) => Ok(t),
            None => self.wait_for_token().await,
        }
    }

    async fn wait_for_token(&self) -> Result<Token, AuthError> {
        let started = self.inner.clock.now();
        let result = self.wait_for_token_inner().await;
        let waited = self.inner.clock.now().saturating_duration_since(started);
        self.inner.counters.max_wait_us.fetch_max(
            u64::try_from(waited.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        result
    }

    async fn wait_for_token_inner(&self) -> Result<Token, AuthError> {
        let inner = &self.inner;
        inner.counters.waits.fetch_add(1, Ordering::Relaxed);
        let mut rx = inner.published.subscribe();
        let seen = rx.borrow_and_update().completed;
        let deadline = inner.clock.now() + inner.cfg.wait_timeout;
        inner.demanded.store(true, Ordering::Release);
        inner.wake.notify_one();
        loop {
            if let Some(t) = self.try_token() {
                return Ok(t);
            }
            {
                let p = rx.borrow_and_update();
                if p.shutdown {
                    return Err(if p.died {
                        AuthError::TaskDied
                    } else {
                        AuthError::Shutdown
                    });
                }
                if let Some(e) = &p.halted {
                    return Err(e.clone());
                }
                // A failed attempt whose retry comes within our wait is waited through (a
                // dropped connection costs the caller a second, not an error); one whose retry
                // lies beyond it is reported at once.
                if let Some(e) = &p.last_error {
                    let beyond_wait = p.next_attempt.is_some_and(|t| t > deadline);
                    let no_retry = p.next_attempt.is_none() && p.completed > seen;
                    if beyond_wait || no_retry {
                        return Err(e.clone());
                    }
                }
            }
            let now = inner.clock.now();
            if now >= deadline {
                if let Some(e) = &rx.borrow().last_error {
                    return Err(e.clone());
                }
                return Err(AuthError::transient(
                    TransientKind::Timeout,
                    format!(
                        "no token for `{}` within {:?}",
                        inner.name, inner.cfg.wait_timeout
                    ),
                ));
            }
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() {
                        return Err(AuthError::Shutdown);
                    }
                }
                () = inner.clock.sleep(deadline - now) => {}
            }
        }
    }

    /// Reports that a server rejected the token of `generation` (design §3.3).
    ///
    /// Refreshes only if that generation is still current, so any number of requests that failed
    /// with the same dead token cause one refresh. Bypasses `min_interval`, except that a token
    /// that replaced a rejected one less than `min_interval` ago is not refreshed again
    /// ([`Invalidation::TooSoon`]): that is a credential problem, not an expiry.
    ///
    /// # Example
    /// ```
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use shiftkey_auth::{Invalidation, TokenManager, testing::ScriptedStrategy};
    ///
    /// let manager = TokenManager::builder(ScriptedStrategy::new(
    ///     Duration::from_secs(3600),
    ///     Duration::ZERO,
    /// ))
    /// .build()?;
    /// let dead = manager.token().await?.generation();
    /// assert_eq!(manager.invalidate(dead), Invalidation::Refreshing);
    /// assert!(manager.token().await?.generation() > dead);
    /// # manager.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn invalidate(&self, generation: u64) -> Invalidation {
        self.invalidate_checked(generation, true)
    }

    /// Like [`TokenManager::invalidate`], for a token the server had *accepted* before it
    /// refused it: it served, then died (a server restart right after a reactive refresh), so a
    /// refresh helps even inside `min_interval` and [`Invalidation::TooSoon`] is never returned.
    /// The replacement counts as reactive. The caller bounds how often it calls this (the
    /// broker allows one per minimum interval and token).
    pub fn invalidate_served(&self, generation: u64) -> Invalidation {
        self.invalidate_checked(generation, false)
    }

    fn invalidate_checked(&self, generation: u64, too_soon: bool) -> Invalidation {
        let inner = &self.inner;
        let guard = inner.current.load();
        let Some(entry) = guard.as_ref() else {
            // Nothing servable: a refresh is already wanted; make sure the refresher knows.
            inner.wake.notify_one();
            return Invalidation::AlreadyReplaced;
        };
        if entry.token.generation != generation {
            return Invalidation::AlreadyReplaced;
        }
        let age = entry.token.age(inner.clock.now());
        if too_soon && entry.reactive && age < entry.schedule.margins.min_interval {
            return Invalidation::TooSoon;
        }
        // Only the first reporter of this generation swaps it out; the rest see it gone.
        let prev = inner.current.compare_and_swap(&*guard, None::<Arc<Entry>>);
        let swapped = prev.as_ref().is_some_and(|p| Arc::ptr_eq(p, entry));
        if swapped {
            inner.clear_halt();
            inner.invalidated.store(generation, Ordering::Release);
            inner.wake.notify_one();
            tracing::info!(credential = %inner.name, generation, "token rejected by server; refreshing");
        }
        Invalidation::Refreshing
    }

    /// Asks for a refresh now, whatever the schedule (operator action: `token refresh`). Clears a
    /// permanent halt and any backoff. The current token stays servable meanwhile.
    pub fn refresh_now(&self) {
        self.inner.clear_halt();
        self.inner.forced.store(true, Ordering::Release);
        self.inner.demanded.store(true, Ordering::Release);
        self.inner.wake.notify_one();
    }

    /// Drops the current token and stops refreshing until a token is asked for again (as
    /// [`TokenManagerBuilder::on_demand`] before the first): returns the dropped token, for
    /// example to log its session out. An attempt in flight finishes first, and what it got is
    /// what is returned. The generation count goes on, so the next token is never mistaken for
    /// the dropped one.
    ///
    /// # Example
    /// ```
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use shiftkey_auth::{TokenManager, testing::ScriptedStrategy};
    ///
    /// let strategy = ScriptedStrategy::new(Duration::from_secs(3600), Duration::ZERO);
    /// let manager = TokenManager::builder(strategy.clone()).build()?;
    /// let first = manager.token().await?.generation();
    /// let dropped = manager.release().await.expect("a token was held");
    /// assert_eq!(dropped.generation, first);
    /// assert!(manager.try_token().is_none());
    /// assert!(manager.token().await?.generation() > first);
    /// # manager.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub async fn release(&self) -> Option<TokenSet> {
        let inner = &self.inner;
        let (tx, rx) = tokio::sync::oneshot::channel();
        *inner
            .release
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(tx);
        inner.wake.notify_one();
        let mut published = inner.published.subscribe();
        tokio::select! {
            dropped = rx => {
                if let Ok(dropped) = dropped {
                    return dropped;
                }
            }
            _ = published.wait_for(|p| p.shutdown) => {}
        }
        // No refresher to answer (stopped, or stopping): drop the token here.
        inner.dormant.store(true, Ordering::Release);
        inner.current.swap(None).map(|e| e.token.clone())
    }

    /// Caps every token's lifetime at `cap` for scheduling (design §3.5: a limit learned from
    /// premature deaths, or pinned in config); `None` removes the cap. The current token is
    /// rescheduled at once if its lifetime is longer. Tokens scheduled by the cap report
    /// [`LifetimeSource::Learned`](crate::LifetimeSource::Learned).
    pub fn set_lifetime_cap(&self, cap: Option<Duration>) {
        let millis = cap.map_or(NO_CAP, |c| {
            u64::try_from(c.as_millis()).unwrap_or(NO_CAP - 1).max(1)
        });
        if self
            .inner
            .lifetime_cap_millis
            .swap(millis, Ordering::AcqRel)
            != millis
        {
            self.inner.wake.notify_one();
        }
    }

    /// Records what is known of the server's real limits (the HTTP layer learns them): applies the
    /// lifetime cap and persists them with the next saved token.
    pub fn set_server_limits(&self, limits: ServerLimits) {
        *self
            .inner
            .limits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = limits;
        self.inner.limits_dirty.store(true, Ordering::Release);
        self.set_lifetime_cap(limits.lifetime_cap);
        self.inner.wake.notify_one();
    }

    /// What is known of the server's real limits (restored from the store at start).
    #[must_use]
    pub fn server_limits(&self) -> ServerLimits {
        *self
            .inner
            .limits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The lifetime cap in force, if any.
    #[must_use]
    pub fn lifetime_cap(&self) -> Option<Duration> {
        self.inner.lifetime_cap()
    }

    /// A snapshot of the manager's state.
    #[must_use]
    pub fn status(&self) -> Status {
        let inner = &self.inner;
        let current = inner.current.load_full();
        let p = inner.published.borrow().clone();
        let skew = inner.skew_millis.load(Ordering::Relaxed);
        Status {
            generation: current.as_ref().map(|e| e.token.generation),
            schedule: current.as_ref().map(|e| e.schedule),
            last_error: p.last_error,
            halted: p.halted,
            next_attempt: p.next_attempt,
            skew_secs: (skew != NO_SKEW).then(|| (skew as i64) as f64 / 1000.0),
            stats: self.stats(),
            dormant: inner.dormant.load(Ordering::Acquire) && current.is_none(),
        }
    }

    /// Counters since start.
    #[must_use]
    pub fn stats(&self) -> Stats {
        let c = &self.inner.counters;
        Stats {
            acquires: c.acquires.load(Ordering::Relaxed),
            failures: c.failures.load(Ordering::Relaxed),
            proactive: c.proactive.load(Ordering::Relaxed),
            reactive: c.reactive.load(Ordering::Relaxed),
            waits: c.waits.load(Ordering::Relaxed),
            max_wait_us: c.max_wait_us.load(Ordering::Relaxed),
            adopted: c.adopted.load(Ordering::Relaxed),
            notified: c.notified.load(Ordering::Relaxed),
        }
    }

    /// Whether the refresher task ended without being asked to (a panic in a strategy or a
    /// store): no token will ever be refreshed again, and the process should be restarted.
    #[must_use]
    pub fn refresher_died(&self) -> bool {
        self.inner.published.borrow().died
    }

    /// Resolves when the refresher task ends without being asked to (see
    /// [`TokenManager::refresher_died`]); never, while it runs.
    pub async fn died(&self) {
        let mut rx = self.inner.published.subscribe();
        // The sender lives in `Inner`, which `self` holds: the wait cannot fail.
        let _ = rx.wait_for(|p| p.died).await;
    }

    /// Stops the refresher and waits until it has stopped. Callers waiting for a token get
    /// [`AuthError::Shutdown`]; the current token stays readable through `try_token`.
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        let mut rx = inner.published.subscribe();
        inner.request_stop();
        // The refresher publishes `shutdown` as its last act; a dropped sender means it is gone.
        while !rx.borrow_and_update().shutdown {
            if rx.changed().await.is_err() {
                break;
            }
        }
    }
}

/// Records the server's clock skew reported by a strategy (see [`TokenSet`]) for `status`.
fn record_skew(inner: &Inner, server_date: Option<SystemTime>, sent_wall: SystemTime) {
    if let Some(date) = server_date {
        // `Date` has one-second resolution; this is an estimate, good for doctor and alerts.
        let skew_ms: i64 = match date.duration_since(sent_wall) {
            Ok(ahead) => i64::try_from(ahead.as_millis()).unwrap_or(i64::MAX),
            Err(behind) => -i64::try_from(behind.duration().as_millis()).unwrap_or(i64::MAX),
        };
        inner.skew_millis.store(skew_ms as u64, Ordering::Relaxed);
    }
}

/// Dropped when the refresher ends, however it ends: an unwinding panic or an aborted task
/// included. Waiting callers then get an error at once instead of waiting for a token that will
/// never come, and `shutdown` returns.
struct ExitGuard(Arc<Inner>);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        let inner = &self.0;
        let asked = inner.stop.load(Ordering::Acquire);
        inner.published.send_if_modified(|p| {
            if p.shutdown {
                return false;
            }
            p.shutdown = true;
            p.died = !asked;
            p.next_attempt = None;
            true
        });
        if !asked {
            tracing::error!(
                credential = %inner.name,
                panicked = std::thread::panicking(),
                "the token refresher stopped unexpectedly: no token will be refreshed again"
            );
        }
    }
}

async fn refresher<S: AuthStrategy>(inner: Arc<Inner>, strategy: S, mut planner: Planner) {
    let _exit = ExitGuard(Arc::clone(&inner));
    let mut last: Option<TokenSet> = None;
    let mut generation: u64 = 0;
    let mut applied_cap: Option<Duration> = None;
    loop {
        if inner.stop.load(Ordering::Acquire) {
            break;
        }
        // A release: drop the token, forget its schedule, and wait for demand.
        let released = inner
            .release
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(answer) = released {
            inner.dormant.store(true, Ordering::Release);
            inner.demanded.store(false, Ordering::Release);
            let dropped = inner.current.swap(None).map(|e| e.token.clone());
            last = None;
            if let Ok(fresh) = Planner::new(inner.cfg.clone()) {
                planner = fresh;
            }
            inner.published.send_modify(|p| {
                p.next_attempt = None;
                p.last_error = None;
                p.halted = None;
            });
            tracing::debug!(credential = %inner.name, "token released; refreshing stops until one is asked for");
            let _ = answer.send(dropped);
            continue;
        }
        if inner.dormant.load(Ordering::Acquire) {
            if inner.demanded.swap(false, Ordering::AcqRel) {
                inner.dormant.store(false, Ordering::Release);
            } else {
                inner.wake.notified().await;
                continue;
            }
        }
        // New limits are persisted with the stored token at once.
        if inner.limits_dirty.swap(false, Ordering::AcqRel)
            && let Some(store) = &inner.store
        {
            persist_limits(&inner, store.as_ref(), generation).await;
        }
        // A new learned or pinned lifetime cap reschedules the current token at once.
        let cap = inner.lifetime_cap();
        if cap != applied_cap {
            applied_cap = cap;
            if let (Some(cap), Some(entry)) = (cap, inner.current.load_full())
                && entry.token.lifetime > cap
            {
                let mut token = entry.token.clone();
                token.lifetime = cap;
                token.lifetime_source = LifetimeSource::Learned;
                let schedule = planner.reschedule(token.issued_at, cap);
                tracing::info!(credential = %inner.name, generation = token.generation, cap_s = cap.as_secs_f64(), "token rescheduled by a learned lifetime cap");
                inner.current.compare_and_swap(
                    &entry,
                    Some(Arc::new(Entry {
                        token,
                        schedule,
                        reactive: entry.reactive,
                    })),
                );
            }
        }
        // Take requests that arrived since the last turn.
        let invalidated = inner.invalidated.swap(NOT_INVALIDATED, Ordering::AcqRel);
        let reactive = invalidated != NOT_INVALIDATED && invalidated == generation;
        if reactive {
            planner.on_invalidated();
        }
        let forced = inner.forced.swap(false, Ordering::AcqRel);
        if forced {
            planner.on_forced();
        }
        let now = inner.clock.now();
        let next = planner.next_attempt(now);
        inner.published.send_modify(|p| {
            p.next_attempt = next;
            if !planner.halted() {
                p.halted = None;
            }
        });
        match next {
            Some(at) if at <= now => {}
            Some(at) => {
                tokio::select! {
                    () = inner.clock.sleep(at - now) => {}
                    () = inner.wake.notified() => {}
                    () = store_changed(&inner) => {
                        adopt_notified(&inner, &mut planner, &mut last, &mut generation, applied_cap).await;
                    }
                }
                continue;
            }
            None => {
                tokio::select! {
                    () = inner.wake.notified() => {}
                    () = store_changed(&inner) => {
                        adopt_notified(&inner, &mut planner, &mut last, &mut generation, applied_cap).await;
                    }
                }
                continue;
            }
        }

        // Attempt.
        let proactive = planner.current().is_some_and(|s| now < s.hard_at) && !reactive && !forced;
        if proactive {
            inner.counters.proactive.fetch_add(1, Ordering::Relaxed);
        }
        if reactive {
            inner.counters.reactive.fetch_add(1, Ordering::Relaxed);
        }
        inner.counters.acquires.fetch_add(1, Ordering::Relaxed);
        planner.on_start(now);
        let started_wall = inner.clock.wall();
        let timeout = inner.cfg.acquire_timeout;
        let outcome = {
            let deadline = inner.clock.sleep(timeout);
            tokio::pin!(deadline);
            let attempt = obtain(
                &inner,
                &strategy,
                &mut last,
                generation,
                now,
                started_wall,
                applied_cap,
                &planner,
            );
            tokio::pin!(attempt);
            let outcome = tokio::select! {
                r = &mut attempt => Some(r),
                () = &mut deadline => Some(Err(AuthError::transient(
                    TransientKind::Timeout,
                    format!("`{}` acquire took longer than {timeout:?}", strategy.name()),
                ))),
                () = wait_stop(&inner) => None,
            };
            if outcome.is_none() {
                // A stop must not drop an attempt that may hold the store's lock with a rotated
                // refresh token on its way: the server has consumed the old one, and a sibling
                // would present it again (reuse detection then revokes the whole chain). Let it
                // finish and save, within the same deadline, then stop.
                tokio::select! {
                    _ = &mut attempt => {}
                    () = &mut deadline => {}
                }
            }
            outcome
        };
        let Some(outcome) = outcome else {
            break;
        };
        let end = inner.clock.now();
        match outcome {
            Ok(Obtained { token, adopted }) => {
                generation = token.generation;
                record_skew(&inner, token.server_date, started_wall);
                if adopted {
                    inner.counters.adopted.fetch_add(1, Ordering::Relaxed);
                }
                let schedule = planner.on_success(end, token.issued_at, token.lifetime);
                tracing::info!(
                    credential = %inner.name,
                    generation,
                    adopted,
                    lifetime_s = token.lifetime.as_secs_f64(),
                    refresh_in_s = schedule.refresh_at.saturating_duration_since(end).as_secs_f64(),
                    proactive,
                    reactive,
                    "token acquired"
                );
                last = Some(token.clone());
                inner.current.store(Some(Arc::new(Entry {
                    token,
                    schedule,
                    reactive,
                })));
                inner.published.send_modify(|p| {
                    p.completed += 1;
                    p.last_error = None;
                    p.halted = None;
                });
            }
            Err(error) => {
                inner.counters.failures.fetch_add(1, Ordering::Relaxed);
                let backoff = planner.on_failure(end, &error);
                if error.is_permanent() {
                    tracing::error!(credential = %inner.name, %error, "token refresh failed permanently; refreshing stopped until an operator acts");
                } else {
                    tracing::warn!(credential = %inner.name, %error, failures = planner.failures(), backoff_s = backoff.as_secs_f64(), "token refresh failed; backing off");
                }
                let next = planner.next_attempt(end);
                inner.published.send_modify(|p| {
                    p.completed += 1;
                    p.next_attempt = next;
                    if error.is_permanent() {
                        p.halted = Some(error.clone());
                    }
                    p.last_error = Some(error);
                });
            }
        }
    }
    // Limits learned just before a shutdown are not lost.
    if inner.limits_dirty.swap(false, Ordering::AcqRel)
        && let Some(store) = &inner.store
    {
        persist_limits(&inner, store.as_ref(), generation).await;
    }
    inner.published.send_modify(|p| {
        p.shutdown = true;
        p.next_attempt = None;
    });
    tracing::debug!(credential = %inner.name, "token refresher stopped");
}

/// Writes the current limits into the stored token, if it is still ours.
async fn persist_limits(inner: &Inner, store: &dyn TokenStore, generation: u64) {
    let limits = *inner
        .limits
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let result = async {
        let mut guard = store.lock().await?;
        if let Some(mut st) = guard.load().await?
            && st.generation == generation
            && st.limits != limits
        {
            st.limits = limits;
            guard.save(&st).await?;
        }
        guard.unlock().await
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(credential = %inner.name, error = %e, "could not persist learned server limits");
    }
}

/// Resolves when the store says a sibling stored a new token (never without a store).
async fn store_changed(inner: &Inner) {
    match &inner.store {
        Some(store) => store.changed().await,
        None => std::future::pending().await,
    }
}

/// A sibling announced a new token: adopt it without a lock if it is newer and fresh.
async fn adopt_notified(
    inner: &Inner,
    planner: &mut Planner,
    last: &mut Option<TokenSet>,
    generation: &mut u64,
    cap: Option<Duration>,
) {
    let Some(store) = &inner.store else { return };
    let stored = match store.load().await {
        Ok(Some(st)) if st.generation > *generation => st,
        Ok(_) => return,
        Err(e) => {
            tracing::warn!(credential = %inner.name, error = %e, "could not read the store after a change notice");
            return;
        }
    };
    let now = inner.clock.now();
    let mut token = stored.to_token(now, inner.clock.wall());
    apply_cap(&mut token, cap);
    let schedule = planner.on_success(now, token.issued_at, token.lifetime);
    if now >= schedule.hard_at {
        return;
    }
    *generation = token.generation;
    *last = Some(token.clone());
    inner.counters.adopted.fetch_add(1, Ordering::Relaxed);
    inner.counters.notified.fetch_add(1, Ordering::Relaxed);
    tracing::info!(credential = %inner.name, generation = token.generation, "adopted a sibling's token after a change notice");
    inner.current.store(Some(Arc::new(Entry {
        token,
        schedule,
        reactive: false,
    })));
    inner.published.send_modify(|p| {
        p.completed += 1;
        p.last_error = None;
    });
}

/// A token the refresher got: from the strategy, or adopted from a sibling through the store.
struct Obtained {
    token: TokenSet,
    adopted: bool,
}

/// Prepares a token from the strategy: scheduling counts from when the request was sent, the
/// generation follows the highest known, a lifetime cap applies.
fn prepare(
    mut token: TokenSet,
    generation: u64,
    sent: Instant,
    sent_wall: SystemTime,
    cap: Option<Duration>,
) -> TokenSet {
    token.issued_at = sent;
    token.issued_at_wall = sent_wall;
    token.generation = generation;
    // A strategy may set any lifetime (the field is public): schedule by a sane one.
    token.lifetime = crate::clamp_lifetime(token.lifetime);
    apply_cap(&mut token, cap);
    token
}

fn apply_cap(token: &mut TokenSet, cap: Option<Duration>) {
    if let Some(cap) = cap
        && token.lifetime > cap
    {
        token.lifetime = cap;
        token.lifetime_source = LifetimeSource::Learned;
    }
}

fn store_error(e: StoreError) -> AuthError {
    match e.kind {
        StoreErrorKind::Io | StoreErrorKind::LockTimeout => {
            AuthError::transient(TransientKind::Storage, e.to_string())
        }
        _ => AuthError::permanent(PermanentKind::Configuration, e.to_string()),
    }
}

/// One attempt: without a store, ask the strategy; with one, do design §4.3 under its lock:
/// re-read → adopt a sibling's newer, still-fresh token, or refresh from the newest refresh token
/// → persist **before** handing the new token out → unlock. On `invalid_grant`, re-read once and
/// adopt a sibling's rotation.
#[allow(
    clippy::too_many_arguments,
    reason = "the refresher's state, passed by reference"
)]
async fn obtain<S: AuthStrategy>(
    inner: &Inner,
    strategy: &S,
    last: &mut Option<TokenSet>,
    generation: u64,
    sent: Instant,
    sent_wall: SystemTime,
    cap: Option<Duration>,
    planner: &Planner,
) -> Result<Obtained, AuthError> {
    let Some(store) = &inner.store else {
        let token = strategy.acquire(last.as_ref()).await?;
        return Ok(Obtained {
            token: prepare(token, generation + 1, sent, sent_wall, cap),
            adopted: false,
        });
    };
    let adoptable = |stored: &StoredToken, ours: u64| -> Option<TokenSet> {
        if stored.generation <= ours {
            return None;
        }
        let mut t = stored.to_token(inner.clock.now(), inner.clock.wall());
        apply_cap(&mut t, cap);
        let s = crate::timing::schedule(planner.config(), t.issued_at, t.lifetime, 0.0);
        (inner.clock.now() < s.refresh_at).then_some(t)
    };
    let mut guard = store.lock().await.map_err(store_error)?;
    let stored = match guard.load().await {
        Ok(s) => s,
        Err(e) if e.kind == StoreErrorKind::Corrupt => {
            tracing::error!(credential = %inner.name, error = %e, "stored token was corrupt and was moved aside; re-authenticating");
            None
        }
        Err(e) => {
            let _ = guard.unlock().await;
            return Err(store_error(e));
        }
    };
    let mut newest = generation;
    if let Some(st) = &stored {
        // Limits learned by an earlier run (or a sibling) come back with the token.
        let mut limits = inner
            .limits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *limits == ServerLimits::default() && st.limits != ServerLimits::default() {
            *limits = st.limits;
            let millis = st.limits.lifetime_cap.map_or(NO_CAP, |c| {
                u64::try_from(c.as_millis()).unwrap_or(NO_CAP - 1).max(1)
            });
            inner.lifetime_cap_millis.store(millis, Ordering::Release);
        }
    }
    if let Some(st) = &stored {
        if let Some(t) = adoptable(st, generation) {
            guard.unlock().await.map_err(store_error)?;
            *last = Some(t.clone());
            return Ok(Obtained {
                token: t,
                adopted: true,
            });
        }
        if st.generation > generation {
            // A sibling rotated the refresh token: refresh from theirs, never from our stale one.
            *last = Some(st.to_token(inner.clock.now(), inner.clock.wall()));
        }
        newest = newest.max(st.generation);
    }
    match strategy.acquire(last.as_ref()).await {
        Ok(token) => {
            let token = prepare(token, newest + 1, sent, sent_wall, cap);
            // Whatever happens to the save, the server has rotated: keep the new refresh token.
            *last = Some(token.clone());
            let limits = *inner
                .limits
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let saved = guard.save(&StoredToken::from_token(&token, limits)).await;
            let unlocked = guard.unlock().await;
            saved.map_err(store_error)?;
            unlocked.map_err(store_error)?;
            Ok(Obtained {
                token,
                adopted: false,
            })
        }
        Err(e) => {
            let _ = guard.unlock().await;
            if matches!(
                e,
                AuthError::Permanent {
                    kind: PermanentKind::InvalidGrant,
                    ..
                }
            ) && let Ok(Some(st)) = store.load().await
                && let Some(t) = adoptable(&st, newest)
            {
                tracing::warn!(credential = %inner.name, "invalid_grant, but a sibling had already rotated; adopting its token");
                *last = Some(t.clone());
                return Ok(Obtained {
                    token: t,
                    adopted: true,
                });
            }
            Err(e)
        }
    }
}

async fn wait_stop(inner: &Inner) {
    while !inner.stop.load(Ordering::Acquire) {
        inner.stopping.notified().await;
    }
}
