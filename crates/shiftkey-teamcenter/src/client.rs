//! [`TcClient`]: Teamcenter calls through the self-healing HTTP layer.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use serde_json::Value;
use shiftkey_auth::{Clock, TokenManager};
use shiftkey_http::{AuthMiddleware, Keepalive};
use url::Url;

use crate::builder::TcClientBuilder;
use crate::error::TcError;
use crate::session::{SessionConfig, TcClassifier};
use crate::wire;

/// The default deadline of one attempt of a Teamcenter call (60 s).
pub const DEFAULT_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// The default limit of one Teamcenter answer (64 MiB).
pub const DEFAULT_MAX_ANSWER: usize = 64 * 1024 * 1024;

/// A Teamcenter client: session mode (`/tc/JsonRestServices`, `JSESSIONID`) or gateway mode
/// (`/tc/RestServices`, OAuth bearer). Either way a dead session or token is healed by one
/// re-login and one retry, counted, and learned from (design §3.3 and §3.5, `docs/design.md`).
///
/// Cheap to clone; clones share the session.
#[derive(Debug, Clone)]
pub struct TcClient {
    http: ClientWithMiddleware,
    /// The same client without the middleware (for the logout, which must not log in).
    plain: reqwest::Client,
    middleware: AuthMiddleware,
    base: Url,
    prefix: &'static str,
    calls: Arc<AtomicU64>,
    read_timeout: std::time::Duration,
    max_answer: usize,
    /// Window closes that failed, to try again before the next open (see `mfg::Orphan`).
    pub(crate) orphans: Arc<std::sync::Mutex<Vec<crate::mfg::Orphan>>>,
    /// The change query's UID and entries, with the session generation they were found in.
    pub(crate) query_cache: Arc<std::sync::Mutex<Option<crate::mfg::CachedQuery>>>,
    /// The smallest and largest UTC offset (minutes) seen in the server's dates.
    offsets: Arc<std::sync::Mutex<Option<(i32, i32)>>>,
}

/// Which Teamcenter interface a client calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Mode {
    /// `/tc/JsonRestServices` with the session's `JSESSIONID`.
    Session,
    /// `/tc/RestServices` behind an OAuth gateway, with bearer tokens.
    Gateway,
}

impl Mode {
    fn prefix(self) -> &'static str {
        match self {
            Self::Session => "/tc/JsonRestServices",
            Self::Gateway => "/tc/RestServices",
        }
    }
}

impl TcClient {
    /// Session mode: logs in with `cfg` (through `http` without the middleware) and sends every
    /// call through `http` with the `JSESSIONID` cookie. Must run inside a tokio runtime.
    /// [`TcClient::builder`] with its defaults.
    pub fn session(
        http: reqwest::Client,
        cfg: SessionConfig,
    ) -> Result<Self, shiftkey_auth::ConfigError> {
        Self::builder(http, cfg).build()
    }

    /// Session mode on an injected clock (the token schedule, retries and learning all use it):
    /// under a compressed clock a simulated day of sessions runs in a minute.
    pub fn session_with_clock(
        http: reqwest::Client,
        cfg: SessionConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, shiftkey_auth::ConfigError> {
        Self::builder(http, cfg).clock(clock).build()
    }

    /// The recipe for a session-mode client, to name it, time its logins, feed a monitor, set
    /// its deadlines ([`TcClientBuilder`]).
    pub fn builder(http: reqwest::Client, cfg: SessionConfig) -> TcClientBuilder {
        TcClientBuilder::session(http, cfg)
    }

    /// Gateway mode: `/tc/RestServices/...` with bearer tokens from `manager` (any strategy).
    pub fn gateway(http: reqwest::Client, base: Url, manager: TokenManager) -> Self {
        let middleware = AuthMiddleware::builder(manager)
            .classifier(TcClassifier)
            .build();
        Self::with_middleware(http, middleware, base, Mode::Gateway)
    }

    /// The recipe for a gateway-mode client ([`TcClientBuilder`]).
    pub fn gateway_builder(
        http: reqwest::Client,
        base: Url,
        manager: TokenManager,
    ) -> TcClientBuilder {
        TcClientBuilder::gateway(http, base, manager)
    }

    /// Any mode with your own middleware (custom policy, breakers, monitor).
    pub fn with_middleware(
        http: reqwest::Client,
        middleware: AuthMiddleware,
        base: Url,
        mode: Mode,
    ) -> Self {
        Self::assemble(http, middleware, base, mode.prefix())
    }

    fn assemble(
        http: reqwest::Client,
        middleware: AuthMiddleware,
        base: Url,
        prefix: &'static str,
    ) -> Self {
        let plain = http.clone();
        let http = ClientBuilder::new(http).with(middleware.clone()).build();
        Self {
            http,
            plain,
            middleware,
            base,
            prefix,
            calls: Arc::new(AtomicU64::new(0)),
            read_timeout: DEFAULT_READ_TIMEOUT,
            max_answer: DEFAULT_MAX_ANSWER,
            orphans: Arc::new(std::sync::Mutex::new(Vec::new())),
            query_cache: Arc::new(std::sync::Mutex::new(None)),
            offsets: Arc::new(std::sync::Mutex::new(None)),
        }
    }

    /// The deadline of one attempt of a Teamcenter call (default 60 s,
    /// [`DEFAULT_READ_TIMEOUT`]); a hung server fails the attempt instead of the cycle.
    #[must_use]
    pub fn with_read_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.read_timeout = timeout;
        self
    }

    /// The largest answer read (default 64 MiB, [`DEFAULT_MAX_ANSWER`]); a larger one is an
    /// error naming the operation and the limit.
    #[must_use]
    pub fn with_max_answer(mut self, bytes: usize) -> Self {
        self.max_answer = bytes;
        self
    }

    /// The smallest and largest UTC offset, in minutes east, of the dates the server returned
    /// so far (they differ across a daylight-saving change); `None` before the first.
    #[must_use]
    pub fn server_utc_offsets(&self) -> Option<(i32, i32)> {
        *self
            .offsets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records the offset of a date the server returned.
    pub(crate) fn saw_offset(&self, minutes: i32) {
        let mut seen = self
            .offsets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *seen = Some(match *seen {
            Some((lo, hi)) => (lo.min(minutes), hi.max(minutes)),
            None => (minutes, minutes),
        });
    }

    /// The offset query dates are written in under `cfg`: a fixed one as configured; with
    /// [`crate::UtcOffset::Auto`] the smallest seen (never late), or UTC−12 before any.
    pub(crate) fn query_offset(&self, cfg: &crate::ReadConfig) -> i32 {
        match cfg.utc_offset {
            crate::UtcOffset::Minutes(m) => m,
            _ => self
                .server_utc_offsets()
                .map_or(crate::EARLIEST_UTC_OFFSET_MINUTES, |(lo, _)| lo),
        }
    }

    /// Why a fixed `utc_offset` in `cfg` disagrees with the dates the server returned, if it
    /// does: above the smallest offset seen, the query starts late and misses changes; more
    /// than an hour below it (the standard-time advice), the configuration is wrong. `None`
    /// with [`crate::UtcOffset::Auto`] or before any date was seen.
    #[must_use]
    pub fn offset_disagreement(&self, cfg: &crate::ReadConfig) -> Option<String> {
        let crate::UtcOffset::Minutes(m) = cfg.utc_offset else {
            return None;
        };
        let (lo, hi) = self.server_utc_offsets()?;
        let shown = |o: i32| {
            let sign = if o < 0 { '-' } else { '+' };
            format!("UTC{sign}{:02}:{:02}", o.abs() / 60, o.abs() % 60)
        };
        let seen = if lo == hi {
            shown(lo)
        } else {
            format!("{} to {}", shown(lo), shown(hi))
        };
        if m > lo {
            Some(format!(
                "`utc_offset_minutes` = {m} ({}), but the server's dates are in {seen}: change queries start {} min late and miss changes; remove the setting (\"auto\" reads the server's offset)",
                shown(m),
                m - lo
            ))
        } else if m < lo - 60 {
            Some(format!(
                "`utc_offset_minutes` = {m} ({}), but the server's dates are in {seen}: change queries start {} min early; remove the setting (\"auto\" reads the server's offset)",
                shown(m),
                lo - m
            ))
        } else {
            None
        }
    }

    /// The middleware (stats, learned limits, the token manager).
    #[must_use]
    pub fn middleware(&self) -> &AuthMiddleware {
        &self.middleware
    }

    /// HTTP calls made so far (each operation once, however many retries).
    #[must_use]
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    fn url(&self, operation: &str) -> Result<Url, TcError> {
        self.base
            .join(&format!("{}/{operation}", self.prefix))
            .map_err(|e| TcError::Unexpected {
                operation: operation.to_owned(),
                detail: format!("bad URL: {e}"),
            })
    }

    /// Whether windows live in a session this client owns (session mode), so that a new session
    /// means dead windows. Behind an OAuth gateway the server session is the gateway's and does
    /// not change with the bearer token \[I\].
    pub(crate) fn windows_follow_token(&self) -> bool {
        self.prefix == "/tc/JsonRestServices"
    }

    /// The generation of the current session (or token), if there is one. A window opened under
    /// one generation dies with that session: a change means start over.
    #[must_use]
    pub fn generation(&self) -> Option<u64> {
        self.middleware.manager().with_token(|t| t.generation)
    }

    /// Calls `operation` (`Library-YYYY-MM-Service/operation`) with `body`; checks `.QName` for
    /// exceptions whatever the HTTP status.
    pub async fn call(&self, operation: &str, body: Value) -> Result<Value, TcError> {
        self.call_with_policy(operation, body, serde_json::json!({}))
            .await
    }

    /// [`TcClient::call`] with an object property policy in `header.policy` (see
    /// [`wire::policy`]).
    pub async fn call_with_policy(
        &self,
        operation: &str,
        body: Value,
        policy: Value,
    ) -> Result<Value, TcError> {
        self.call_under(operation, body, policy, false)
            .await
            .map(|(answer, _)| answer)
    }

    /// [`TcClient::call_with_policy`], also returning the session generation the server
    /// answered under (see [`shiftkey_http::AnsweredUnder`]). A `session_bound` call names
    /// runtime objects of the current session: after a dead-session answer it is not resent
    /// under a new session (see [`shiftkey_http::SessionBound`]).
    pub(crate) async fn call_under(
        &self,
        operation: &str,
        body: Value,
        policy: Value,
        session_bound: bool,
    ) -> Result<(Value, Option<u64>), TcError> {
        self.send(operation, body, policy, session_bound, true)
            .await
            .map(|(answer, under, _)| (answer, under))
    }

    /// Calls an operation that creates something in the session (a window). Retried like a
    /// read, but the answer says whether it was sent again after an attempt whose answer was lost
    /// (then the server may hold a second, unnamed copy).
    pub(crate) async fn call_creating(
        &self,
        operation: &str,
        body: Value,
    ) -> Result<(Value, Option<u64>, bool), TcError> {
        self.send(operation, body, serde_json::json!({}), false, true)
            .await
    }

    /// Calls a Teamcenter operation that changes data (`setProperties`): sent once, never
    /// retried after a 5xx or a timeout (the caller's idempotency key decides whether to write
    /// again); the one retry after an `InvalidUserException` stays, since the server refused
    /// before acting.
    ///
    /// # Errors
    /// As [`TcClient::call`].
    pub async fn write(&self, operation: &str, body: Value) -> Result<Value, TcError> {
        self.send(operation, body, serde_json::json!({}), false, false)
            .await
            .map(|(answer, _, _)| answer)
    }

    /// One call: the answer, the generation it was answered under, and whether it was sent
    /// again after an attempt whose answer was lost.
    async fn send(
        &self,
        operation: &str,
        body: Value,
        policy: Value,
        session_bound: bool,
        idempotent: bool,
    ) -> Result<(Value, Option<u64>, bool), TcError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let mut request = self
            .http
            .post(self.url(operation)?)
            .timeout(self.read_timeout);
        if session_bound {
            request = request.with_extension(shiftkey_http::SessionBound);
        }
        if idempotent {
            // Reads: the policy may retry them after a 5xx, a 429 or a timeout.
            request = request.with_extension(shiftkey_http::Idempotent);
        }
        let response = request
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(wire::envelope_with_policy(body, policy).to_string())
            .send()
            .await?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(std::time::Duration::from_secs);
        let under = response
            .extensions()
            .get::<shiftkey_http::AnsweredUnder>()
            .map(|g| g.0);
        let resent = response
            .extensions()
            .get::<shiftkey_http::ResentAfterLostAnswer>()
            .is_some();
        let unexpected = |detail: String| TcError::Unexpected {
            operation: operation.to_owned(),
            detail,
        };
        let mut response = response;
        let mut bytes = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| TcError::Http(reqwest_middleware::Error::Reqwest(e)))?
        {
            if bytes.len() + chunk.len() > self.max_answer {
                return Err(unexpected(format!(
                    "the answer is larger than the {} byte limit (raise `max_answer_bytes` if \
                     the site's answers really are this large)",
                    self.max_answer
                )));
            }
            bytes.extend_from_slice(&chunk);
        }
        // A busy or failing server (or a gateway in front of it) without an exception of
        // Teamcenter's: transient, said as such.
        let overloaded =
            status == reqwest::StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
        if overloaded && bytes.first() != Some(&b'{') {
            return Err(TcError::Unavailable {
                operation: operation.to_owned(),
                status: status.as_u16(),
                retry_after,
            });
        }
        if bytes.first() == Some(&b'<') {
            return Err(unexpected(format!(
                "an XML body where JSON was expected (HTTP {status}): {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(120)])
            )));
        }
        let answer: Value = serde_json::from_slice(&bytes)
            .map_err(|e| unexpected(format!("the body is not JSON (HTTP {status}): {e}")))?;
        wire::check_exception(&answer)?;
        if !status.is_success() {
            return Err(unexpected(format!(
                "HTTP {status} without an exception in the body"
            )));
        }
        Ok((answer, under, resent))
    }

    /// A cheap alive check (`getTCSessionInfo`).
    pub async fn session_info(&self) -> Result<Value, TcError> {
        self.call(
            "Core-2007-01-Session/getTCSessionInfo",
            serde_json::json!({}),
        )
        .await
    }

    /// Keeps the session alive with `getTCSessionInfo` whenever idle for half the idle limit
    /// (learned, or the configured 20 min until then), while there is a session (it never logs
    /// in). An answer that is not a `getTCSessionInfo` answer (an exception, whatever the HTTP
    /// status, or a body that is not JSON) is a failed keepalive, logged and counted in
    /// [`shiftkey_http::Stats::keepalives_failed`]. Stops when the handle is dropped.
    pub fn keepalive(&self) -> Result<Keepalive, TcError> {
        let url = self.url("Core-2007-01-Session/getTCSessionInfo")?;
        let body = wire::envelope(serde_json::json!({})).to_string();
        Ok(self.middleware.keepalive_checked(
            self.http.clone(),
            move |c| {
                c.post(url.clone())
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.clone())
            },
            Arc::new(|status, body: &[u8]| {
                let answer: Value = serde_json::from_slice(body)
                    .map_err(|_| format!("HTTP {}, and the body is not JSON", status.as_u16()))?;
                wire::check_exception(&answer).map_err(|e| e.to_string())?;
                if status.is_success() {
                    Ok(())
                } else {
                    Err(format!("HTTP {}", status.as_u16()))
                }
            }),
        ))
    }

    /// Ends the session this client holds, if any (session mode): the session manager drops it
    /// (the next call logs in again) and `Core-2006-03-Session/logout` is sent with its cookie,
    /// once, within [`LOGOUT_DEADLINE`], so its server process goes back to the pool. Returns
    /// whether a session was held. Best effort: a logout that fails or meets a dead session
    /// (answered with XML) is logged at debug and changes nothing else. Behind a gateway there
    /// is no session of ours; nothing is sent.
    pub async fn end_session(&self) -> bool {
        if !self.windows_follow_token() {
            return false;
        }
        let Some(token) = self.middleware.manager().release().await else {
            return false;
        };
        crate::session::send_logout(&self.plain, &self.base, &token).await;
        true
    }
}

/// How long [`TcClient::end_session`] waits for the logout's answer.
pub const LOGOUT_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);
