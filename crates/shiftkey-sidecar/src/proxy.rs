//! [`Proxy`]: a local HTTP proxy that puts a fresh credential on an unchanged script's requests.
//!
//! A script points its base URL at the proxy instead of the server. Every request goes on to
//! `upstream` through an [`AuthMiddleware`] — the same healing loop the library's own clients use:
//! proactive refresh, one refresh and one retry on a rejection, policy retries for idempotent
//! requests only, `Retry-After`, circuit breakers. What the script put in `Authorization` and
//! `Cookie` is dropped (its token is stale by design); method, path, query, the other headers,
//! status and bodies pass through unchanged, bodies streamed both ways. A request body is held in
//! memory only up to the replay limit: a larger one streams on and, since it cannot be sent twice,
//! is not retried.
//!
//! In Teamcenter mode the script's own `Session/login` and `Session/logout` calls are answered
//! here: a login names one of the proxy's local accounts (never the service's Teamcenter
//! password) and opens a local session (a `JSESSIONID` of the proxy's, never the server's), so a
//! script that logs in once and reads for days works on the proxy's healed session. A call
//! without a live local session is refused with `InvalidUserException`, as the server would.
//! Failed logins back off per source ([`crate::logins`]).
//!
//! What the proxy holds is bounded: a request body must keep arriving ([`BODY_IDLE_TIMEOUT`])
//! and arrive whole in time ([`BODY_TIMEOUT`]); the bytes held for replay across all
//! connections stay under a budget ([`DEFAULT_REPLAY_BUDGET`]). Only the methods scripts use
//! are forwarded. Refusals are counted and logged at most once a minute per kind.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::{Body, HttpBody as _};
use axum::response::{IntoResponse as _, Response};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use reqwest_middleware::ClientWithMiddleware;
use serde_json::{Value, json};
use shiftkey_http::{AuthMiddleware, HttpError};
use tokio::sync::Semaphore;
use url::Url;

use crate::body::{
    self, BODY_IDLE_TIMEOUT, BODY_TIMEOUT, BodyError, DEFAULT_REPLAY_BUDGET, Deadlines,
};
use crate::logins::{Admission, LocalLogin, Logins};
use crate::serve::Peer;
use crate::{Refusal, Refusals, SidecarError};

/// The default replay limit: request bodies up to 1 MiB are held so a rejected request can go
/// once more; larger ones stream and are sent once.
pub const DEFAULT_REPLAY_LIMIT: usize = 1024 * 1024;

/// Local sessions kept: a script that logs in every few minutes and never logs out does not grow
/// the proxy; the least recently used session is forgotten first (its script's next call still
/// goes through, uncounted).
pub const MAX_SESSIONS: usize = 256;

/// The largest Teamcenter login or logout body read (a login is a few hundred bytes).
const MAX_LOCAL_BODY: usize = 64 * 1024;

/// How one proxy forwards.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ProxyConfig {
    /// Its name, for logs, metrics and `/status`.
    pub name: String,
    /// Where requests go: the request's path is appended to this URL's path.
    pub upstream: Url,
    /// Request bodies up to this many bytes are replayable; larger ones are sent once.
    pub replay_limit: usize,
    /// Bytes held for replay across all connections at once; a body that does not fit is sent
    /// once.
    pub replay_budget: usize,
    /// A request body must send a byte at least this often.
    pub body_idle_timeout: Duration,
    /// A request body must arrive whole within this.
    pub body_timeout: Duration,
    /// Teamcenter mode: the scripts' logins (to these local accounts) and logouts are answered
    /// locally.
    pub teamcenter: Option<Vec<LocalLogin>>,
}

impl ProxyConfig {
    /// A bearer-token proxy to `upstream` with the default replay limit.
    ///
    /// # Example
    /// ```
    /// let cfg = shiftkey_sidecar::ProxyConfig::new("mes", "https://mes.example.com/api".parse()?);
    /// # Ok::<(), url::ParseError>(())
    /// ```
    #[must_use]
    pub fn new(name: impl Into<String>, upstream: Url) -> Self {
        Self {
            name: name.into(),
            upstream,
            replay_limit: DEFAULT_REPLAY_LIMIT,
            replay_budget: DEFAULT_REPLAY_BUDGET,
            body_idle_timeout: BODY_IDLE_TIMEOUT,
            body_timeout: BODY_TIMEOUT,
            teamcenter: None,
        }
    }

    /// Teamcenter mode: a script's login is accepted locally when it names one of `logins`
    /// with its secret (else `InvalidCredentialsException`, and the source backs off); with no
    /// account every login is refused. A call without a live local session is refused with
    /// `InvalidUserException` (a script logs in again, as after a server restart).
    #[must_use]
    pub fn teamcenter(mut self, logins: impl IntoIterator<Item = LocalLogin>) -> Self {
        self.teamcenter = Some(logins.into_iter().collect());
        self
    }

    /// A request body must send a byte at least every `idle` and arrive whole within `total`.
    #[must_use]
    pub fn body_deadlines(mut self, idle: Duration, total: Duration) -> Self {
        self.body_idle_timeout = idle;
        self.body_timeout = total;
        self
    }

    /// At most `bytes` are held for replay across all connections at once.
    #[must_use]
    pub fn replay_budget(mut self, bytes: usize) -> Self {
        self.replay_budget = bytes;
        self
    }

    /// Request bodies up to `bytes` are held so that a rejected request can go once more.
    #[must_use]
    pub fn replay_limit(mut self, bytes: usize) -> Self {
        self.replay_limit = bytes;
        self
    }
}

/// Counters of one proxy since start (all monotonic but `sessions`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct ProxyStats {
    /// Requests the scripts sent (local logins and logouts included).
    pub requests: u64,
    /// Requests forwarded upstream.
    pub forwarded: u64,
    /// Policy retries (429, 5xx, timeouts, refused connections).
    pub retries: u64,
    /// Rejections (401, `InvalidUserException`) the scripts never saw: healed by a refresh.
    pub healed: u64,
    /// Rejections that reached a script.
    pub surfaced: u64,
    /// Requests answered with a proxy error (the upstream unreachable, no token, a circuit open).
    pub failed: u64,
    /// Teamcenter: local logins accepted.
    pub logins: u64,
    /// Teamcenter: local logins refused (wrong user or password, or backing off).
    pub logins_refused: u64,
    /// Teamcenter: local logouts.
    pub logouts: u64,
    /// Teamcenter: local sessions open now (the newest [`MAX_SESSIONS`]), each a script's, with
    /// its requests.
    pub sessions: BTreeMap<String, u64>,
    /// Requests and connections refused, by kind ([`Refusal::as_str`]), the listener's
    /// included when it shares [`Proxy::refusals`].
    pub refused: BTreeMap<&'static str, u64>,
}

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    forwarded: AtomicU64,
    failed: AtomicU64,
    logins: AtomicU64,
    logins_refused: AtomicU64,
    logouts: AtomicU64,
}

/// A local session: its label (for `/status`, never the id itself) and its requests.
#[derive(Debug)]
struct LocalSession {
    label: String,
    requests: u64,
    /// When it was last used, in requests the proxy has seen.
    last: u64,
}

/// The healing proxy. Build one per listener with [`Proxy::new`], serve [`Proxy::router`].
#[derive(Debug)]
pub struct Proxy {
    name: String,
    upstream: Url,
    client: ClientWithMiddleware,
    middleware: AuthMiddleware,
    replay_limit: usize,
    budget: Arc<Semaphore>,
    deadlines: Deadlines,
    login: Option<Logins>,
    sessions: std::sync::Mutex<BTreeMap<String, LocalSession>>,
    counters: Counters,
    refusals: Refusals,
}

impl Proxy {
    /// A proxy forwarding through `middleware` on `http`. `http` should follow no redirects: a
    /// 3xx goes back to the script as it is, and no credential of ours follows it.
    ///
    /// # Errors
    /// An upstream URL that cannot be a base (`mailto:`), or one with a query or fragment; a
    /// zero body deadline.
    ///
    /// # Example
    /// ```no_run
    /// use std::sync::Arc;
    /// use shiftkey_auth::TokenManager;
    /// use shiftkey_http::AuthMiddleware;
    /// use shiftkey_sidecar::{Proxy, ProxyConfig};
    ///
    /// # async fn demo(manager: TokenManager) -> Result<(), Box<dyn std::error::Error>> {
    /// let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?;
    /// let cfg = ProxyConfig::new("mes", "https://mes.example.com".parse()?);
    /// let proxy = Proxy::new(cfg, http, AuthMiddleware::builder(manager).build())?;
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:8181").await?;
    /// let gate = shiftkey_sidecar::serve::Gate::users(
    ///     shiftkey_sidecar::serve::Users::this_user(),
    ///     proxy.refusals().clone(),
    /// );
    /// shiftkey_sidecar::serve::serve_tcp(listener, Arc::clone(&proxy).router(), Default::default(), gate).await;
    /// # Ok(()) }
    /// ```
    pub fn new(
        cfg: ProxyConfig,
        http: reqwest::Client,
        middleware: AuthMiddleware,
    ) -> Result<Arc<Self>, SidecarError> {
        if cfg.upstream.cannot_be_a_base()
            || cfg.upstream.query().is_some()
            || cfg.upstream.fragment().is_some()
        {
            return Err(SidecarError::Config(format!(
                "`proxy.{}.upstream`: {} must be a base URL without query or fragment",
                cfg.name, cfg.upstream
            )));
        }
        if cfg.body_idle_timeout.is_zero() || cfg.body_timeout.is_zero() {
            return Err(SidecarError::Config(format!(
                "proxy `{}`: the body deadlines must be greater than zero",
                cfg.name
            )));
        }
        let client = reqwest_middleware::ClientBuilder::new(http)
            .with(middleware.clone())
            .build();
        Ok(Arc::new(Self {
            name: cfg.name,
            upstream: cfg.upstream,
            client,
            middleware,
            replay_limit: cfg.replay_limit,
            budget: Arc::new(Semaphore::new(
                cfg.replay_budget.min(Semaphore::MAX_PERMITS),
            )),
            deadlines: Deadlines {
                idle: cfg.body_idle_timeout,
                total: cfg.body_timeout,
            },
            login: cfg.teamcenter.map(Logins::new),
            sessions: std::sync::Mutex::default(),
            counters: Counters::default(),
            refusals: Refusals::default(),
        }))
    }

    /// Its name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its refusal counts: give the same to its listener ([`crate::serve::Gate`],
    /// [`crate::serve::with_host_check_only`]) so that [`Proxy::stats`] has them all.
    #[must_use]
    pub fn refusals(&self) -> &Refusals {
        &self.refusals
    }

    /// The middleware it forwards through (its manager, breakers and counters).
    #[must_use]
    pub fn middleware(&self) -> &AuthMiddleware {
        &self.middleware
    }

    /// Counters since start.
    #[must_use]
    pub fn stats(&self) -> ProxyStats {
        let c = &self.counters;
        let mw = self.middleware.stats();
        let sessions = self
            .sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .map(|s| (s.label.clone(), s.requests))
            .collect();
        ProxyStats {
            requests: c.requests.load(Ordering::Relaxed),
            forwarded: c.forwarded.load(Ordering::Relaxed),
            retries: mw.retries,
            healed: mw.rejections_healed,
            surfaced: mw.rejections_surfaced,
            failed: c.failed.load(Ordering::Relaxed),
            logins: c.logins.load(Ordering::Relaxed),
            logins_refused: c.logins_refused.load(Ordering::Relaxed),
            logouts: c.logouts.load(Ordering::Relaxed),
            sessions,
            refused: self.refusals.counts(),
        }
    }

    /// The router answering every path: serve it with [`crate::serve`] (put
    /// [`crate::serve::with_host_check_only`] in front on TCP).
    pub fn router(self: Arc<Self>) -> axum::Router {
        axum::Router::new()
            .fallback(
                |axum::extract::State(proxy): axum::extract::State<Arc<Self>>,
                 request: axum::extract::Request| async move {
                    proxy.handle(request).await
                },
            )
            .with_state(self)
    }

    /// [`Proxy::router`] forwarding through `http` (its own connection pool) with the same
    /// middleware, counters and sessions: for a worker on its own runtime
    /// ([`crate::workers::Workers`]), whose upstream connections then stay on its thread.
    /// `http` should follow no redirects, as for [`Proxy::new`].
    ///
    /// # Example
    /// ```no_run
    /// # fn demo(proxy: std::sync::Arc<shiftkey_sidecar::Proxy>) -> reqwest::Result<()> {
    /// let routers = (0..2)
    ///     .map(|_| {
    ///         let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?;
    ///         Ok(std::sync::Arc::clone(&proxy).router_with(http))
    ///     })
    ///     .collect::<reqwest::Result<Vec<_>>>()?;
    /// # Ok(()) }
    /// ```
    pub fn router_with(self: Arc<Self>, http: reqwest::Client) -> axum::Router {
        let client = reqwest_middleware::ClientBuilder::new(http)
            .with(self.middleware.clone())
            .build();
        let state = Arc::new((self, client));
        axum::Router::new()
            .fallback(
                |axum::extract::State(state): axum::extract::State<
                    Arc<(Arc<Self>, ClientWithMiddleware)>,
                >,
                 request: axum::extract::Request| async move {
                    state.0.forward(&state.1, request).await
                },
            )
            .with_state(state)
    }

    /// Answers one script request.
    pub async fn handle(&self, request: http::Request<Body>) -> Response {
        self.forward(&self.client, request).await
    }

    /// Answers one script request, forwarding through `client`.
    async fn forward(
        &self,
        client: &ClientWithMiddleware,
        request: http::Request<Body>,
    ) -> Response {
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        let (parts, body) = request.into_parts();
        // A browser on this host must not be able to make writes with the plant's credential
        // (a form or `fetch` from any web page): browsers mark their requests, scripts do not.
        if let Some(marker) = BROWSER_MARKERS
            .iter()
            .find(|h| parts.headers.contains_key(**h))
        {
            return self.refuse(
                Refusal::Browser,
                StatusCode::FORBIDDEN,
                &format!("a browser's request (it carries `{marker}`) is not forwarded"),
            );
        }
        // Origin-form only: a script that took this for a forward proxy (`CONNECT`, an
        // absolute URL) is told so, not sent on with the credential.
        if parts.method == Method::CONNECT || parts.uri.scheme().is_some() {
            return self.refuse(
                Refusal::Path,
                StatusCode::BAD_REQUEST,
                "this is a reverse proxy: point the script's base URL at it, not HTTP_PROXY",
            );
        }
        // `TRACE` would echo the credential back; unknown methods have unknown effects.
        if !FORWARDED_METHODS.contains(&parts.method) {
            let mut r = self.refuse(
                Refusal::Method,
                StatusCode::METHOD_NOT_ALLOWED,
                &format!("the method {} is not forwarded", parts.method),
            );
            r.headers_mut().insert(
                header::ALLOW,
                HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
            );
            return r;
        }
        let Some(url) = target(&self.upstream, &parts.uri) else {
            return self.refuse(
                Refusal::Path,
                StatusCode::BAD_REQUEST,
                "the path has `.` or `..` segments or an encoded slash: it could leave the upstream's base path",
            );
        };
        if let Some(logins) = &self.login {
            // Matched as Tomcat reads the path (decoded, `;` parameters dropped, any case), so
            // no spelling of a logout reaches the server with the shared session.
            match session_operation(url.path()) {
                Some(op) if parts.method != Method::POST => {
                    return self.refuse(
                        Refusal::Method,
                        StatusCode::METHOD_NOT_ALLOWED,
                        &format!("Session/{op} is a POST"),
                    );
                }
                Some(SessionOp::Login) => {
                    let peer = parts.extensions.get::<Peer>().map(|p| p.uid);
                    return self.local_login(logins, peer, url.path(), body).await;
                }
                Some(SessionOp::Logout) => return self.local_logout(&parts.headers),
                None => {}
            }
            if !self.count_session(&parts.headers) {
                self.refusals.refuse(
                    Refusal::NoSession,
                    &self.name,
                    "a Teamcenter call without a live local session (the script must log in)",
                );
                return json_answer(StatusCode::OK, &invalid_user(), None);
            }
        }
        let size_hint = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        // A request without a body (most reads) needs no reading, holding or deadlines.
        let body = if body.is_end_stream() {
            body::Forwarded {
                body: reqwest::Body::from(bytes::Bytes::new()),
                _held: None,
            }
        } else {
            match body::for_forwarding(
                body,
                self.deadlines,
                self.replay_limit,
                &self.budget,
                size_hint,
            )
            .await
            {
                Ok(b) => b,
                Err(e) => return self.body_error(&e),
            }
        };
        let mut outgoing = reqwest::Request::new(parts.method, url);
        *outgoing.headers_mut() = forwardable(&parts.headers, true);
        *outgoing.body_mut() = Some(body.body);
        self.counters.forwarded.fetch_add(1, Ordering::Relaxed);
        let answer = client.execute(outgoing).await;
        drop(body._held);
        match answer {
            Ok(response) => {
                let response = http::Response::from(response);
                let (mut parts, upstream_body) = response.into_parts();
                parts.headers = forwardable(&parts.headers, false);
                // What the script gets is ours to frame (HTTP/1.1), and carries none of the
                // client's own markers.
                parts.version = http::Version::HTTP_11;
                parts.extensions = http::Extensions::new();
                if self.login.is_some() {
                    // The server's session cookie is the proxy's, never the script's.
                    parts.headers.remove(header::SET_COOKIE);
                }
                // The upstream's body goes on as it arrives, without a stream adapter.
                Response::from_parts(parts, Body::new(upstream_body))
            }
            Err(e) => self.error(&e),
        }
    }

    /// The answer to a body that could not be read: 408 for a slow one (the connection is
    /// closed, so its slot is served again), 413 or 400 otherwise.
    fn body_error(&self, e: &BodyError) -> Response {
        let (kind, status) = match e {
            BodyError::Slow(_) => (Refusal::SlowBody, StatusCode::REQUEST_TIMEOUT),
            BodyError::TooLong(_) => (Refusal::Path, StatusCode::PAYLOAD_TOO_LARGE),
            BodyError::Read(_) => {
                return self.failure(StatusCode::BAD_REQUEST, &e.to_string());
            }
        };
        let mut r = self.refuse(kind, status, &e.to_string());
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        r
    }

    /// The answer when the middleware gave up: what a script expects from its server — a 401
    /// with a bearer challenge (or, for Teamcenter, the `InvalidUserException` a dead session
    /// gets) for a rejection, 503 for no token (with `Retry-After` when a circuit is open), 504 for a
    /// timeout and 502 for an unreachable upstream.
    fn error(&self, e: &reqwest_middleware::Error) -> Response {
        // A streamed body that stopped arriving is the script's doing, not the upstream's.
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(c) = cause {
            if let Some(b) = c.downcast_ref::<BodyError>() {
                return self.body_error(b);
            }
            cause = c.source();
        }
        self.counters.failed.fetch_add(1, Ordering::Relaxed);
        match HttpError::from_middleware(e) {
            Some(
                HttpError::Rejected { .. }
                | HttpError::NotReplayable
                | HttpError::SessionLost { .. },
            ) => {
                tracing::warn!(proxy = self.name.as_str(), error = %e, "a rejection reached the script");
                if self.login.is_some() {
                    json_answer(StatusCode::OK, &invalid_user(), None)
                } else {
                    let mut r = self.failure(StatusCode::UNAUTHORIZED, &e.to_string());
                    r.headers_mut().insert(
                        header::WWW_AUTHENTICATE,
                        HeaderValue::from_static("Bearer error=\"invalid_token\""),
                    );
                    r
                }
            }
            Some(
                HttpError::AuthCircuitOpen { retry_in } | HttpError::ServerCircuitOpen { retry_in },
            ) => {
                let mut r = self.failure(StatusCode::SERVICE_UNAVAILABLE, &e.to_string());
                let secs = retry_in.as_secs().max(1).to_string();
                if let Ok(v) = HeaderValue::from_str(&secs) {
                    r.headers_mut().insert(header::RETRY_AFTER, v);
                }
                r
            }
            Some(_) => self.failure(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
            None if e.is_timeout() => self.failure(StatusCode::GATEWAY_TIMEOUT, &e.to_string()),
            None => self.failure(StatusCode::BAD_GATEWAY, &e.to_string()),
        }
    }

    /// A proxy-made error answer (JSON, naming the proxy), logged.
    fn failure(&self, status: StatusCode, message: &str) -> Response {
        tracing::warn!(
            proxy = self.name.as_str(),
            status = status.as_u16(),
            message,
            "proxy error"
        );
        self.answer(status, message)
    }

    /// A refused request: counted, logged at most once a minute per kind, answered.
    fn refuse(&self, kind: Refusal, status: StatusCode, message: &str) -> Response {
        self.refusals.refuse(kind, &self.name, message);
        self.answer(status, message)
    }

    fn answer(&self, status: StatusCode, message: &str) -> Response {
        json_answer(
            status,
            &json!({"error": format!("shiftkey proxy `{}`: {message}", self.name)}),
            None,
        )
    }

    /// A script's `Session/login`, answered here when it names a local account with its secret
    /// and its source is not backing off.
    async fn local_login(
        &self,
        logins: &Logins,
        peer: Option<u32>,
        path: &str,
        body: Body,
    ) -> Response {
        let bytes = match body::read_all(body, self.deadlines, MAX_LOCAL_BODY).await {
            Ok(b) => b,
            Err(e) => return self.body_error(&e),
        };
        // The SOA envelope `{"header": …, "body": …}` (`docs/teamcenter-reads.md` §0.5–0.6):
        // 2011-06 nests the credentials in the body; 2006-03 has them flat.
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let input = &v["body"];
        let credentials = if input["credentials"].is_object() {
            &input["credentials"]
        } else {
            input
        };
        let user = credentials["user"].as_str().unwrap_or_default();
        let password = credentials["password"].as_str().unwrap_or_default();
        let source = (peer, user.to_ascii_lowercase());
        let refused = |kind: Refusal, why: &str| {
            self.counters.logins_refused.fetch_add(1, Ordering::Relaxed);
            self.refusals.refuse(kind, &self.name, why);
            json_answer(StatusCode::OK, &invalid_credentials(), None)
        };
        match logins.admit(&source) {
            Admission::Check => {}
            Admission::Pause => {
                return refused(
                    Refusal::LockedOut,
                    "a local login within a second of a failed one (not checked)",
                );
            }
            Admission::Locked => {
                return refused(
                    Refusal::LockedOut,
                    "a local login while locked out (not checked)",
                );
            }
        }
        if !logins.check(user, password) {
            if logins.failed(source) {
                tracing::warn!(
                    proxy = self.name.as_str(),
                    user,
                    peer_uid = peer,
                    "{} failed local logins in a row: this source is locked out for {} minutes",
                    crate::logins::LOCKOUT_AFTER,
                    crate::logins::LOCKOUT.as_secs() / 60
                );
            }
            return refused(
                Refusal::Login,
                "a local login with a user or password that is not one of the proxy's accounts",
            );
        }
        logins.succeeded(&source);
        // The script's login succeeds when the proxy's own session can be had.
        if let Err(e) = self.middleware.manager().token().await {
            tracing::warn!(proxy = self.name.as_str(), error = %e, "a script logged in, but the proxy has no session");
            return json_answer(StatusCode::OK, &internal_error(&e.to_string()), None);
        }
        let id = session_id();
        let n = self.counters.logins.fetch_add(1, Ordering::Relaxed) + 1;
        let label = format!("{user}#{n}");
        tracing::info!(
            proxy = self.name.as_str(),
            session = label.as_str(),
            "a script logged in locally"
        );
        let now = self.counters.requests.load(Ordering::Relaxed);
        let mut sessions = self
            .sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while sessions.len() >= MAX_SESSIONS {
            let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.last)
                .map(|(id, _)| id.clone())
            else {
                break;
            };
            sessions.remove(&oldest);
        }
        sessions.insert(
            id.clone(),
            LocalSession {
                label,
                requests: 1,
                last: now,
            },
        );
        drop(sessions);
        // The local session's id is the script's credential: its header is zeroized on drop.
        let cookie =
            shiftkey_http::secret_header_value(&["JSESSIONID=", &id, "; Path=/; HttpOnly"]);
        let version = if path.contains("2006-03") {
            "2006-03"
        } else {
            "2011-06"
        };
        let answer = json!({
            ".QName": format!("http://teamcenter.com/Schemas/Core/{version}/Session.LoginResponse"),
            "serverInfo": {
                "DisplayVersion": "shiftkey proxy",
                "HostName": "shiftkey-proxy",
                "Locale": "en_US",
                "LogFile": "",
                "SiteLocale": "en_US",
                "TcServerID": format!("shiftkey-proxy-{}", self.name),
                "UserID": user,
                "Version": "shiftkey proxy",
            },
            "partialErrors": [],
        });
        json_answer(StatusCode::OK, &answer, cookie)
    }

    /// A script's logout: its local session ends; the proxy's own session lives on.
    fn local_logout(&self, headers: &HeaderMap) -> Response {
        if let Some(id) = local_session(headers) {
            let removed = self
                .sessions
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&id);
            if let Some(s) = removed {
                self.counters.logouts.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    proxy = self.name.as_str(),
                    session = s.label.as_str(),
                    "a script logged out locally"
                );
            }
        }
        json_answer(
            StatusCode::OK,
            &json!({".QName": "http://teamcenter.com/Schemas/Soa/2006-03/Base.ServiceData"}),
            None,
        )
    }

    /// Counts a request against the script's local session; `false` when it names none that
    /// is live.
    fn count_session(&self, headers: &HeaderMap) -> bool {
        let Some(id) = local_session(headers) else {
            return false;
        };
        let mut sessions = self
            .sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(s) = sessions.get_mut(&id) else {
            return false;
        };
        s.requests += 1;
        s.last = self.counters.requests.load(Ordering::Relaxed);
        true
    }
}

/// The upstream URL for a script's path and query; `None` when `..` segments would leave the
/// upstream's base path.
fn target(upstream: &Url, uri: &http::Uri) -> Option<Url> {
    // Refused before any normalisation: `.`/`..` in any spelling (`%2e`, `..;param`, which
    // Tomcat reads as `..`), an encoded slash or backslash, a backslash.
    let suspicious = uri.path().split('/').any(|segment| {
        let lower = segment.to_ascii_lowercase();
        let bare = lower
            .split(';')
            .next()
            .unwrap_or_default()
            .replace("%2e", ".");
        bare == "."
            || bare == ".."
            || lower.contains("%2f")
            || lower.contains("%5c")
            || lower.contains('\\')
    });
    if suspicious {
        return None;
    }
    let mut url = upstream.clone();
    let base = upstream.path().trim_end_matches('/');
    url.set_path(&format!("{base}{}", uri.path()));
    url.set_query(uri.query());
    let inside = url.path() == base
        || url
            .path()
            .strip_prefix(base)
            .is_some_and(|rest| rest.starts_with('/'));
    inside.then_some(url)
}

/// A Teamcenter session operation the proxy answers itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SessionOp {
    Login,
    Logout,
}

impl std::fmt::Display for SessionOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SessionOp::Login => "login",
            SessionOp::Logout => "logout",
        })
    }
}

/// Whether `path` names `…Session/login` or `…Session/logout` as a servlet container reads it:
/// each segment percent-decoded once, its `;` parameters dropped, empty segments skipped, without
/// case. Any service prefix counts (`Core-2006-03-Session`, `Core-2011-06-Session`).
fn session_operation(path: &str) -> Option<SessionOp> {
    let segments: Vec<String> = path
        .split('/')
        .map(|seg| {
            let bare = seg.split(';').next().unwrap_or_default();
            percent_encoding::percent_decode_str(bare)
                .decode_utf8_lossy()
                .to_lowercase()
        })
        .filter(|seg| !seg.is_empty())
        .collect();
    let [.., service, op] = segments.as_slice() else {
        return None;
    };
    if !service.ends_with("session") {
        return None;
    }
    match op.as_str() {
        "login" => Some(SessionOp::Login),
        "logout" => Some(SessionOp::Logout),
        _ => None,
    }
}

/// The methods forwarded; any other (`TRACE`, `TRACK`, WebDAV's, unknown ones) is refused.
const FORWARDED_METHODS: [Method; 7] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::OPTIONS,
];

/// The `JSESSIONID` a script sent, if any.
fn local_session(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix("JSESSIONID=").map(str::to_owned))
}

/// A fresh local session id: 128 random bits, hex.
fn session_id() -> String {
    use rand::RngCore as _;
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Headers only browsers send (Fetch metadata, CORS): a request carrying one is refused.
const BROWSER_MARKERS: [&str; 3] = ["origin", "sec-fetch-site", "sec-fetch-mode"];

/// Hop-by-hop headers (RFC 9110 §7.6.1, and `Proxy-Connection`).
const HOP_BY_HOP: [&str; 9] = [
    "proxy-connection",
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The headers that go on: hop-by-hop ones (and those `Connection` names) dropped; on a request
/// also `Host` (reqwest sets it for the new connection), `Expect` (answered here already) and the
/// script's own `Authorization` and `Cookie` (the proxy's credential replaces them).
/// `Content-Length` stays: a streamed body keeps its length (servers that need one get it).
fn forwardable(headers: &HeaderMap, request: bool) -> HeaderMap {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .collect();
    let dropped = |name: &HeaderName| {
        let n = name.as_str();
        HOP_BY_HOP.contains(&n)
            || named.iter().any(|x| x == n)
            || (request
                && (name == header::HOST
                    || name == header::EXPECT
                    || name == header::AUTHORIZATION
                    || name == header::COOKIE))
    };
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        if !dropped(name) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

fn json_answer(status: StatusCode, body: &Value, cookie: Option<HeaderValue>) -> Response {
    let mut r = (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response();
    if let Some(c) = cookie {
        r.headers_mut().insert(header::SET_COOKIE, c);
    }
    r
}

/// Teamcenter's answer for no valid session (`docs/teamcenter-reads.md` §0.7).
fn invalid_user() -> Value {
    json!({
        ".QName": "http://teamcenter.com/Schemas/Soa/2006-03/Exceptions.InvalidUserException",
        "code": 1000,
        "level": 3,
        "message": "User does not have a valid session.",
        "ssoServerURL": "",
        "ssoAppID": "",
    })
}

/// Teamcenter's answer for a wrong user or password (§0.7: 515143, HTTP 200).
fn invalid_credentials() -> Value {
    json!({
        ".QName": "http://teamcenter.com/Schemas/Soa/2006-03/Exceptions.InvalidCredentialsException",
        "code": 515_143,
        "level": 3,
        "message": "The login attempt failed: either the user ID or the password is invalid.",
        "ssoServerURL": "",
        "ssoAppID": "",
    })
}

/// Teamcenter's shape for a server-side failure (§0.7), carrying why the proxy has no session.
fn internal_error(why: &str) -> Value {
    json!({
        ".QName": "http://teamcenter.com/Schemas/Soa/2006-03/Exceptions.InternalServerException",
        "messages": [{"code": 0, "level": 3, "message": format!("shiftkey proxy: no Teamcenter session: {why}")}],
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use super::*;

    #[test]
    fn hop_by_hop_and_credentials_are_dropped_on_requests_only() {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer stale"),
        );
        h.insert(header::COOKIE, HeaderValue::from_static("JSESSIONID=x"));
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-private"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8181"));
        h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        h.append("x-many", HeaderValue::from_static("a"));
        h.append("x-many", HeaderValue::from_static("b"));
        let req = forwardable(&h, true);
        let names: Vec<&str> = req.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["accept", "x-many"], "{req:?}");
        assert_eq!(req.get_all("x-many").iter().count(), 2);
        let resp = forwardable(&h, false);
        assert!(resp.contains_key(header::AUTHORIZATION) && resp.contains_key(header::HOST));
        assert!(!resp.contains_key("x-private") && !resp.contains_key(header::TRANSFER_ENCODING));
    }

    #[test]
    fn a_path_cannot_leave_the_upstream_base() {
        let proxy_target = |base: &str, path: &str| {
            target(&base.parse().unwrap(), &path.parse().unwrap()).map(|u| u.to_string())
        };
        assert_eq!(
            proxy_target("http://127.0.0.1:9/api/", "/v1/orders?since=2"),
            Some("http://127.0.0.1:9/api/v1/orders?since=2".to_owned())
        );
        assert_eq!(
            proxy_target("http://127.0.0.1:9", "/tc/x"),
            Some("http://127.0.0.1:9/tc/x".to_owned())
        );
        assert_eq!(proxy_target("http://127.0.0.1:9/api", "/../admin"), None);
        // Spellings a server behind may read as `..` or `/`: refused before normalisation.
        for path in [
            "/..;/erp",
            "/%2E%2e;x/erp",
            "/a/..%2ferp",
            "/a%5c..",
            "/./x",
            "/a/..",
        ] {
            assert_eq!(proxy_target("http://127.0.0.1:9/api", path), None, "{path}");
        }
        assert!(proxy_target("http://127.0.0.1:9/api", "/v1/..x/a.b;c=1").is_some());
        assert_eq!(
            proxy_target("http://127.0.0.1:9/api", "/%2e%2e/admin"),
            None
        );
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; JSESSIONID=abc; b=2"),
        );
        assert_eq!(local_session(&h).as_deref(), Some("abc"));
    }

    #[test]
    fn every_spelling_of_login_and_logout_is_recognised() {
        for (path, op) in [
            (
                "/tc/JsonRestServices/Core-2011-06-Session/login",
                Some(SessionOp::Login),
            ),
            (
                "/tc/JsonRestServices/Core-2006-03-Session/login",
                Some(SessionOp::Login),
            ),
            (
                "/tc/JsonRestServices/Core-2006-03-Session/logout",
                Some(SessionOp::Logout),
            ),
            // What the audit sent: Tomcat drops `;` parameters and decodes `%6C`.
            (
                "/tc/JsonRestServices/Core-2006-03-Session/logout;jsessionid=x",
                Some(SessionOp::Logout),
            ),
            (
                "/tc/JsonRestServices/Core-2006-03-Session/%6Cogout",
                Some(SessionOp::Logout),
            ),
            (
                "/tc/JsonRestServices/Core-2006-03-Session;v=1/LOGOUT/",
                Some(SessionOp::Logout),
            ),
            (
                "/tc/JsonRestServices/Core-2006-03-%53ession//logout",
                Some(SessionOp::Logout),
            ),
            (
                "/tc/JsonRestServices/Core-2007-01-Session/getTCSessionInfo",
                None,
            ),
            (
                "/tc/JsonRestServices/Core-2006-03-DataManagement/login",
                None,
            ),
            ("/logout", None),
        ] {
            assert_eq!(session_operation(path), op, "{path}");
        }
    }
}
