//! The emulator's HTTP server: Teamcenter JSON REST SOA with sessions like the pool manager, an
//! OAuth gateway with rotation and reuse detection, and seeded faults.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use shiftkey_clock::Clock;
use tokio::time::Instant;

use crate::config::SimConfig;
use crate::data::Dataset;
use crate::model::{Policy, Schema};
use crate::soa::{Ctx, Windows};
use crate::wire;

/// Counters a test can read (also served as JSON at `GET /sim/stats`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Successful logins.
    pub logins: u64,
    /// Refused logins.
    pub login_failures: u64,
    /// Token grants by `grant_type` (successful).
    pub grants: BTreeMap<String, u64>,
    /// Successful token grants by client id.
    pub grants_by_client: BTreeMap<String, u64>,
    /// Refused grants by OAuth error.
    pub grant_errors: BTreeMap<String, u64>,
    /// Sessions (and gateway tokens) killed, by cause: `hard`, `idle`, `restart`, `cap`, `logout`.
    pub killed: BTreeMap<String, u64>,
    /// Exceptions returned, by short name (`InvalidUserException`, ...; `invalid_token` for the gateway).
    pub exceptions: BTreeMap<String, u64>,
    /// Requests by `Library-YYYY-MM-Service/operation`.
    pub requests: BTreeMap<String, u64>,
    /// Faults injected: `rate_limited`, `server_error`, `dropped` (hung requests are in `hung`).
    pub faults: BTreeMap<String, u64>,
    /// Windows (`openContexts`, `createBOMWindows`) opened.
    pub windows_opened: u64,
    /// Windows the client closed.
    pub windows_closed: u64,
    /// Windows that died with their session (timeout, logout, restart).
    pub windows_died: u64,
    /// Requests that named a runtime line or window not live in the caller's session (a client
    /// reusing stale `SR::…` UIDs).
    pub stale_lines: u64,
    /// Requests held without an answer ([`Sim::hang_next`](crate::Sim::hang_next) or
    /// `faults.hang_probability`). A hung request is still counted in `requests`, but in nothing
    /// else: it logs no one in, grants and rotates no token, writes nothing.
    pub hung: u64,
}

/// Which requests [`Sim::hang_next`](crate::Sim::hang_next) holds without an answer.
///
/// A hung request is read in full and then never answered, until the client gives up and drops
/// the connection or the emulator stops (then it gets HTTP 503). The SOA operations are classified
/// by name, the same on the session path (`/tc/JsonRestServices/...`) and behind the OAuth gateway
/// (`/tc/RestServices/...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HangTarget {
    /// The OAuth token endpoint `POST /oauth/token`, every grant type. The gateway has no login
    /// operation of its own: its bearer token comes from here.
    Token,
    /// Teamcenter login: the operation `login` of any `…-Session` service, i.e.
    /// `Core-2006-03-Session/login` and `Core-2011-06-Session/login` (the one the emulator
    /// answers and the session client sends).
    Login,
    /// Teamcenter reads: every other SOA operation that is neither a login nor a feedback write —
    /// saved queries, `loadObjects`, `getProperties`, `getTypeDescriptions`, revision rules,
    /// `openContexts`, `createBOMWindows`, `expandPSOneLevel`,
    /// `expandGRMRelationsForPrimary`, `getTCSessionInfo`, `logout`, and operations the emulator
    /// does not have.
    Reads,
    /// Feedback writes: the operation `setProperties` of any `…-DataManagement` service, i.e.
    /// `Core-2010-09-DataManagement/setProperties` — the write the sync's feedback sends and the
    /// only write the emulator has. (The feedback path's reads, such as the `getProperties` of
    /// the idempotency key, are [`HangTarget::Reads`].)
    Feedback,
    /// Window closes: `closeContexts` and `closeBOMWindows` (not counted as reads).
    WindowClose,
}

impl HangTarget {
    /// The target of the SOA operation `service/operation`.
    fn of_operation(service: &str, operation: &str) -> Self {
        if service.ends_with("-Session") && operation == "login" {
            Self::Login
        } else if service.ends_with("-DataManagement") && operation == "setProperties" {
            Self::Feedback
        } else if operation == "closeContexts" || operation == "closeBOMWindows" {
            Self::WindowClose
        } else {
            Self::Reads
        }
    }

    /// The target's slot in [`Inner`]'s pending-hang counters.
    fn slot(self) -> usize {
        match self {
            Self::Token => 0,
            Self::Login => 1,
            Self::Reads => 2,
            Self::Feedback => 3,
            Self::WindowClose => 4,
        }
    }
}

fn bump(map: &mut BTreeMap<String, u64>, key: &str) {
    *map.entry(key.to_owned()).or_default() += 1;
}

#[derive(Debug, Clone)]
struct Session {
    user: String,
    descrimator: String,
    created: Instant,
    last_used: Instant,
}

#[derive(Debug)]
struct Access {
    family: u64,
    issued: Instant,
    expires: Instant,
}

#[derive(Debug)]
struct Refresh {
    family: u64,
    client: String,
    user: Option<String>,
    used: bool,
    expires: Instant,
}

#[derive(Debug, Default)]
struct OAuth {
    access: HashMap<String, Access>,
    refresh: HashMap<String, Refresh>,
    revoked: HashSet<u64>,
    next_family: u64,
}

#[derive(Debug)]
struct Faults {
    rng: StdRng,
    burst_left: u32,
}

/// Shared state of one emulator.
pub(crate) struct Inner {
    pub(crate) cfg: SimConfig,
    pub(crate) clock: Arc<dyn Clock>,
    sessions: Mutex<HashMap<String, Session>>,
    pub(crate) data: Mutex<Dataset>,
    pub(crate) windows: Mutex<Windows>,
    schema: Schema,
    oauth: Mutex<OAuth>,
    faults: Mutex<Faults>,
    pub(crate) stats: Mutex<Stats>,
    restarts: Mutex<Vec<Instant>>,
    token_counter: Mutex<u64>,
    pub(crate) changes_paused: std::sync::atomic::AtomicBool,
    /// Requests still to hang, by [`HangTarget::slot`].
    hangs: [AtomicU32; 5],
    /// Becomes `true` when the emulator stops: hung requests then end.
    stopping: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Inner {
    pub(crate) fn new(cfg: SimConfig, clock: Arc<dyn Clock>) -> Self {
        let started = clock.now();
        let mut data = Dataset::generate(&cfg.data, clock.wall());
        for q in &cfg.tc.saved_queries {
            data.add_saved_query(q);
        }
        let restarts = cfg
            .session
            .restart_at_hours
            .iter()
            .filter(|h| h.is_finite() && **h >= 0.0)
            .map(|h| started + Duration::from_secs_f64(h * 3600.0))
            .collect();
        Self {
            faults: Mutex::new(Faults {
                rng: StdRng::seed_from_u64(cfg.faults.seed),
                burst_left: 0,
            }),
            data: Mutex::new(data),
            windows: Mutex::new(Windows::default()),
            schema: Schema::new(cfg.tc.site_properties.clone()),
            cfg,
            clock,
            sessions: Mutex::new(HashMap::new()),
            oauth: Mutex::new(OAuth::default()),
            stats: Mutex::new(Stats::default()),
            restarts: Mutex::new(restarts),
            token_counter: Mutex::new(0),
            changes_paused: std::sync::atomic::AtomicBool::new(false),
            hangs: Default::default(),
            stopping: tokio::sync::watch::channel(false).0,
        }
    }

    /// The next `requests` requests to `target` hang (replacing what was still pending; 0 cancels).
    pub(crate) fn hang_next(&self, target: HangTarget, requests: u32) {
        self.hangs[target.slot()].store(requests, Ordering::Release);
    }

    /// Whether this request to `target` is one to hang (and counts it off).
    fn take_hang(&self, target: HangTarget) -> bool {
        self.hangs[target.slot()]
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
    }

    /// The emulator stops: hung requests end with HTTP 503, and a request to hang from now on
    /// gets its 503 at once.
    pub(crate) fn shutdown(&self) {
        self.stopping.send_replace(true);
    }

    /// Restarts the server now: every session and gateway access token dies.
    pub(crate) fn restart(&self) {
        lock(&self.restarts).push(self.clock.now());
        lock(&self.windows).all_died();
    }

    fn last_restart(&self, now: Instant) -> Option<Instant> {
        lock(&self.restarts)
            .iter()
            .filter(|t| **t <= now)
            .max()
            .copied()
    }

    fn new_secret(&self, prefix: &str) -> String {
        let mut n = lock(&self.token_counter);
        *n += 1;
        let mut bytes = [0u8; 18];
        rand::thread_rng().fill(&mut bytes);
        format!(
            "{prefix}{}{}",
            *n,
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        )
    }

    /// Pool load (server processes) at simulated instant `t`.
    fn load_at(&self, t: Instant) -> u32 {
        let s = &self.cfg.session;
        let wall = self.wall_at(t);
        let secs = wall
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let (day, hour) = (secs / 86_400, (secs / 3600) % 24);
        let noise = if s.load_noise == 0 {
            0
        } else {
            let mut rng =
                StdRng::seed_from_u64(s.seed ^ day.wrapping_mul(31) ^ hour.wrapping_mul(1_000_003));
            rng.gen_range(0..=s.load_noise)
        };
        s.load_by_hour[hour as usize] + noise
    }

    fn wall_at(&self, t: Instant) -> SystemTime {
        let now = self.clock.now();
        let wall = self.clock.wall();
        if t >= now {
            wall + (t - now)
        } else {
            wall.checked_sub(now - t).unwrap_or(wall)
        }
    }

    /// Whether the pool's load was above target at some point of `[from, to]` (hourly slots).
    fn busy_between(&self, from: Instant, to: Instant) -> bool {
        let target = self.cfg.session.process_target;
        let mut t = from;
        while t <= to {
            if self.load_at(t) > target {
                return true;
            }
            t += Duration::from_secs(3600);
        }
        self.load_at(to) > target
    }

    /// Why a session is dead at `now`, if it is.
    fn death(&self, s: &Session, now: Instant) -> Option<&'static str> {
        let cfg = &self.cfg.session;
        if self.last_restart(now).is_some_and(|r| r > s.created) {
            return Some("restart");
        }
        if now.saturating_duration_since(s.created) >= Duration::from_secs(cfg.hard_timeout_secs) {
            return Some("hard");
        }
        let soft = Duration::from_secs(cfg.soft_timeout_secs);
        let idle_from = s.last_used + soft;
        if now >= idle_from && self.busy_between(idle_from, now) {
            return Some("idle");
        }
        None
    }

    /// The live session for `cookie`, touched; or `None` (and the death counted).
    fn session(&self, cookie: Option<&str>, now: Instant) -> Option<Session> {
        let id = cookie?;
        let mut sessions = lock(&self.sessions);
        let s = sessions.get(id)?.clone();
        if let Some(cause) = self.death(&s, now) {
            sessions.remove(id);
            drop(sessions);
            lock(&self.windows).session_ended(id);
            bump(&mut lock(&self.stats).killed, cause);
            return None;
        }
        if let Some(live) = sessions.get_mut(id) {
            live.last_used = now;
        }
        Some(s)
    }

    /// The next `requests` requests get HTTP 503.
    pub(crate) fn fail_next(&self, requests: u32) {
        lock(&self.faults).burst_left = requests;
    }

    /// Sessions still alive now (logged in, not logged out, not timed out): what the pool
    /// still holds a server process for.
    pub(crate) fn live_sessions(&self) -> usize {
        let now = self.clock.now();
        lock(&self.sessions)
            .iter()
            .filter(|(id, s)| id.as_str() != GATEWAY && self.death(s, now).is_none())
            .count()
    }

    /// Windows still open in a session that is still alive: what a client leaked.
    pub(crate) fn leaked_windows(&self) -> usize {
        let now = self.clock.now();
        let sessions = lock(&self.sessions);
        lock(&self.windows)
            .open
            .values()
            .filter(|w| match sessions.get(&w.session) {
                Some(s) => self.death(s, now).is_none(),
                None => w.session == GATEWAY,
            })
            .count()
    }

    /// The counters, with the window counts.
    pub(crate) fn stats(&self) -> Stats {
        let mut st = lock(&self.stats).clone();
        let w = lock(&self.windows);
        st.windows_opened = w.opened;
        st.windows_closed = w.closed;
        st.windows_died = w.died;
        st
    }
}

/// The window owner for calls through the OAuth gateway (no Teamcenter session of its own).
const GATEWAY: &str = "gateway";

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

fn json_response(status: StatusCode, v: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

pub(crate) fn router(state: Arc<Inner>) -> Router {
    Router::new()
        .route("/tc/JsonRestServices/{service}/{operation}", post(soa))
        .route("/tc/RestServices/{service}/{operation}", post(gateway))
        .route("/oauth/token", post(token))
        .route("/sim/stats", axum::routing::get(stats_json))
        .route("/sim/restart", post(restart_now))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            date_header,
        ))
        .with_state(state)
}

/// The counters as JSON, for tools driving the emulator from another process.
async fn stats_json(State(s): State<Arc<Inner>>) -> Response {
    let stats = s.stats();
    json_response(StatusCode::OK, &json!(stats))
}

/// Restarts the server (every session and gateway token dies), for tools driving the emulator
/// from another process: what an administrator's restart of a real server does to clients.
async fn restart_now(State(s): State<Arc<Inner>>) -> Response {
    s.restart();
    json_response(StatusCode::OK, &json!({"restarted": true}))
}

/// Adds `Date` (skewed as configured, in simulated wall time) to every answer.
async fn date_header(
    State(s): State<Arc<Inner>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let mut res = next.run(req).await;
    let skew = s.cfg.faults.date_skew_secs;
    let wall = s.clock.wall();
    let shown = if skew >= 0 {
        wall + Duration::from_secs(skew.unsigned_abs())
    } else {
        wall.checked_sub(Duration::from_secs(skew.unsigned_abs()))
            .unwrap_or(wall)
    };
    if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(shown)) {
        res.headers_mut().insert(header::DATE, v);
    }
    res
}

/// Holds a request without an answer until the emulator stops, then answers 503. If the client
/// gives up first, hyper drops the connection and this future with it. Counted in `hung`; does
/// nothing else.
async fn hang(s: &Inner) -> Response {
    lock(&s.stats).hung += 1;
    let mut stopping = s.stopping.subscribe();
    // Sees a stop that happened before the subscription too; an error (the sender gone) cannot
    // happen while `s` lives, and would end the hang as well.
    let _ = stopping.wait_for(|stopped| *stopped).await;
    (StatusCode::SERVICE_UNAVAILABLE, "emulator stopped").into_response()
}

/// Latency, 429s, 503 bursts, dropped connections and hangs, drawn in request order.
async fn inject_faults(s: &Inner) -> Option<Response> {
    let f = &s.cfg.faults;
    if f.latency_ms > 0 {
        s.clock.sleep(Duration::from_millis(f.latency_ms)).await;
    }
    let verdict = {
        let mut st = lock(&s.faults);
        if st.burst_left > 0 {
            st.burst_left -= 1;
            Some("server_error")
        } else if f.server_error_probability > 0.0
            && st.rng.gen_bool(f.server_error_probability.clamp(0.0, 1.0))
        {
            st.burst_left = f.burst_len.saturating_sub(1);
            Some("server_error")
        } else if f.rate_limit_probability > 0.0
            && st.rng.gen_bool(f.rate_limit_probability.clamp(0.0, 1.0))
        {
            Some("rate_limited")
        } else if f.drop_probability > 0.0 && st.rng.gen_bool(f.drop_probability.clamp(0.0, 1.0)) {
            Some("dropped")
        } else if f.hang_probability > 0.0 && st.rng.gen_bool(f.hang_probability.clamp(0.0, 1.0)) {
            Some("hung")
        } else {
            None
        }
    }?;
    if verdict == "hung" {
        // Counted in `hung`, not in `faults`.
        return Some(hang(s).await);
    }
    bump(&mut lock(&s.stats).faults, verdict);
    Some(match verdict {
        "rate_limited" => (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, f.retry_after_secs.to_string())],
            "rate limited",
        )
            .into_response(),
        // Headers and the first bytes go out, then the body fails: hyper drops the connection.
        "dropped" => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            axum::body::Body::from_stream(futures_util::stream::iter([
                Ok(Bytes::from_static(b"{\"partial\":")),
                Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "emulated connection drop",
                )),
            ])),
        )
            .into_response(),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "server busy").into_response(),
    })
}

/// The envelope's `header.policy` and `body`. A validating server (`refuse_null_body`) refuses
/// a body that is present and not an object; an absent body reads as `{}`.
fn parse_envelope(body: &Bytes, refuse_null_body: bool) -> Result<(Value, Value), String> {
    let mut v: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let policy = v["header"]["policy"].take();
    let body = match v.get_mut("body").map(Value::take) {
        None => json!({}),
        Some(b) if b.is_object() => b,
        Some(b) if refuse_null_body => {
            return Err(format!(
                "the envelope's body must be an object, not {}",
                if b.is_null() {
                    "null".to_owned()
                } else {
                    b.to_string()
                }
            ));
        }
        Some(Value::Null) => json!({}),
        Some(b) => b,
    };
    Ok((policy, body))
}

async fn soa(
    State(s): State<Arc<Inner>>,
    Path((service, operation)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let op = format!("{service}/{operation}");
    bump(&mut lock(&s.stats).requests, &op);
    if s.take_hang(HangTarget::of_operation(&service, &operation)) {
        return hang(&s).await;
    }
    if let Some(r) = inject_faults(&s).await {
        return r;
    }
    let now = s.clock.now();
    let (policy, input) = match parse_envelope(&body, s.cfg.tc.refuse_null_body) {
        Ok(v) => v,
        Err(e) => {
            bump(&mut lock(&s.stats).exceptions, "InternalServerException");
            return json_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                &wire::internal_server(&e),
            );
        }
    };
    let jsession = cookie(&headers, "JSESSIONID");
    match op.as_str() {
        "Core-2011-06-Session/login" => return login(&s, &input, now),
        "Core-2006-03-Session/logout" => {
            let alive = s.session(jsession.as_deref(), now).is_some();
            if let Some(id) = jsession.filter(|_| alive) {
                lock(&s.sessions).remove(&id);
                lock(&s.windows).session_ended(&id);
                bump(&mut lock(&s.stats).killed, "logout");
                return json_response(
                    StatusCode::OK,
                    &json!({".QName": "http://teamcenter.com/Schemas/Soa/2006-03/Base.ServiceData", "plain": []}),
                );
            }
            return (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "text/xml")],
                wire::DEAD_LOGOUT_XML,
            )
                .into_response();
        }
        _ => {}
    }
    let Some(session) = s.session(jsession.as_deref(), now) else {
        bump(&mut lock(&s.stats).exceptions, "InvalidUserException");
        let status =
            StatusCode::from_u16(s.cfg.session.invalid_user_status).unwrap_or(StatusCode::OK);
        return json_response(status, &wire::invalid_user());
    };
    let id = jsession.unwrap_or_default();
    answer(&s, &op, &policy, &input, &session.user, &id)
}

/// Runs a data operation and turns its outcome into the server's answer: the result, or an
/// `InternalServerException` under HTTP 500 for an unknown operation or a refused body.
fn answer(s: &Inner, op: &str, policy: &Value, input: &Value, user: &str, owner: &str) -> Response {
    let refused = |code: u32, message: &str| {
        bump(&mut lock(&s.stats).exceptions, "InternalServerException");
        json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &wire::refused(code, message),
        )
    };
    if op == "Core-2007-01-Session/getTCSessionInfo" {
        return json_response(StatusCode::OK, &session_info(user));
    }
    let policy = match Policy::parse(policy) {
        Ok(p) => p,
        Err(e) => return refused(wire::INVALID_SYNTAX, &format!("invalid syntax: {e}")),
    };
    let wall = s.clock.wall();
    let mut data = lock(&s.data);
    if !s.changes_paused.load(std::sync::atomic::Ordering::Acquire) {
        data.advance(wall);
    }
    let mut windows = lock(&s.windows);
    let mut ctx = Ctx {
        data: &mut data,
        windows: &mut windows,
        schema: &s.schema,
        cfg: &s.cfg.tc,
        session: owner,
        policy,
        wall,
        stale: std::cell::Cell::new(0),
    };
    let result = ctx.dispatch(op, input);
    let stale = ctx.stale.get();
    if stale > 0 {
        lock(&s.stats).stale_lines += stale;
    }
    drop(windows);
    drop(data);
    match result {
        Some(Ok(v)) => json_response(StatusCode::OK, &v),
        Some(Err(r)) => refused(r.code, &r.message),
        None => refused(214_004, &format!("no such operation {op}")),
    }
}

fn session_info(user: &str) -> Value {
    json!({
        ".QName": "http://teamcenter.com/Schemas/Core/2007-01/Session.GetTCSessionInfoResponse",
        "serverVersion": "V12000.4.0.20200312",
        "user": {"uid": "uUSER", "className": "User", "type": "User"},
        "group": {"uid": "uGROUP", "className": "Group", "type": "Group"},
        "role": {"uid": "uROLE", "className": "Role", "type": "Role"},
        "extraInfo": {"TcServerID": "tcserver-emu", "hostName": "tc-emulator", "syslogFile": format!("/tmp/tcserver_{user}.syslog"), "TCServerLocale": "en_US"}
    })
}

fn login(s: &Inner, input: &Value, now: Instant) -> Response {
    let c = &input["credentials"];
    let user = c["user"].as_str().unwrap_or_default();
    let password = c["password"].as_str().unwrap_or_default();
    let descrimator = c["descrimator"].as_str().unwrap_or_default().to_owned();
    let refused = if user.is_empty() {
        Some(1007)
    } else if s.cfg.users.get(user).map(String::as_str) != Some(password) {
        Some(515143)
    } else {
        None
    };
    if let Some(code) = refused {
        let mut st = lock(&s.stats);
        st.login_failures += 1;
        bump(&mut st.exceptions, "InvalidCredentialsException");
        return json_response(StatusCode::OK, &wire::invalid_credentials(code));
    }
    // Same user and descrimator share one server process: reuse a live session.
    let existing = {
        let sessions = lock(&s.sessions);
        sessions
            .iter()
            .find(|(_, v)| {
                v.user == user && v.descrimator == descrimator && !descrimator.is_empty()
            })
            .map(|(k, v)| (k.clone(), v.clone()))
    };
    let id = match existing {
        Some((id, sess)) if s.death(&sess, now).is_none() => id,
        _ => {
            let id = s.new_secret("");
            lock(&s.sessions).insert(
                id.clone(),
                Session {
                    user: user.to_owned(),
                    descrimator,
                    created: now,
                    last_used: now,
                },
            );
            id
        }
    };
    lock(&s.stats).logins += 1;
    let body = json!({
        ".QName": "http://teamcenter.com/Schemas/Core/2011-06/Session.LoginResponse",
        "serverInfo": {
            "DisplayVersion": "Teamcenter 12.4 (emulated)",
            "HostName": "tc-emulator",
            "Locale": "en_US",
            "LogFile": format!("/tmp/tcserver_{user}.syslog"),
            "SiteLocale": "en_US",
            "TcServerID": format!("tcserver-{}", &id[..id.len().min(6)]),
            "UserID": user,
            "Version": "V12000.4.0.20200312"
        },
        "partialErrors": [{"errorValues": [{"code": 214102, "level": 1, "message": "The license will expire soon."}]}]
    });
    let mut res = json_response(StatusCode::OK, &body);
    if let Ok(v) = HeaderValue::from_str(&format!("JSESSIONID={id}; Path=/tc; HttpOnly")) {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    res
}

async fn gateway(
    State(s): State<Arc<Inner>>,
    Path((service, operation)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let op = format!("{service}/{operation}");
    bump(&mut lock(&s.stats).requests, &format!("gateway:{op}"));
    if s.take_hang(HangTarget::of_operation(&service, &operation)) {
        return hang(&s).await;
    }
    if let Some(r) = inject_faults(&s).await {
        return r;
    }
    let now = s.clock.now();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let valid = bearer.as_deref().is_some_and(|t| access_valid(&s, t, now));
    if !valid {
        bump(&mut lock(&s.stats).exceptions, "invalid_token");
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, r#"Bearer error="invalid_token""#)],
            "",
        )
            .into_response();
    }
    let (policy, input) = match parse_envelope(&body, s.cfg.tc.refuse_null_body) {
        Ok(v) => v,
        Err(e) => {
            return json_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                &wire::internal_server(&e),
            );
        }
    };
    answer(&s, &op, &policy, &input, GATEWAY, GATEWAY)
}

fn access_valid(s: &Inner, token: &str, now: Instant) -> bool {
    let mut o = lock(&s.oauth);
    let Some(a) = o.access.get(token) else {
        return false;
    };
    let cause = if o.revoked.contains(&a.family) {
        Some("revoked")
    } else if s.last_restart(now).is_some_and(|r| r > a.issued) {
        Some("restart")
    } else if now >= a.expires {
        Some(if s.cfg.oauth.access_ttl_cap_secs.is_some() {
            "cap"
        } else {
            "expired"
        })
    } else {
        None
    };
    match cause {
        None => true,
        Some(c) => {
            o.access.remove(token);
            drop(o);
            bump(&mut lock(&s.stats).killed, c);
            false
        }
    }
}

fn oauth_error(s: &Inner, status: StatusCode, error: &str) -> Response {
    bump(&mut lock(&s.stats).grant_errors, error);
    json_response(status, &json!({"error": error, "error_description": error}))
}

async fn token(State(s): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Response {
    bump(&mut lock(&s.stats).requests, "oauth/token");
    if s.take_hang(HangTarget::Token) {
        return hang(&s).await;
    }
    if let Some(r) = inject_faults(&s).await {
        return r;
    }
    let form: HashMap<String, String> = url_form(&body);
    // Client authentication: basic or post.
    let (client, secret) = match headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
    {
        Some(b) => {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
                .and_then(|d| String::from_utf8(d).ok())
                .unwrap_or_default();
            let (c, p) = decoded.split_once(':').unwrap_or((decoded.as_str(), ""));
            (percent_decode(c), percent_decode(p))
        }
        None => (
            form.get("client_id").cloned().unwrap_or_default(),
            form.get("client_secret").cloned().unwrap_or_default(),
        ),
    };
    if s.cfg.oauth.clients.get(&client) != Some(&secret) {
        return oauth_error(&s, StatusCode::UNAUTHORIZED, "invalid_client");
    }
    let now = s.clock.now();
    let grant = form
        .get("grant_type")
        .map(String::as_str)
        .unwrap_or_default();
    let (family, user, refresh) = match grant {
        "client_credentials" => (None, None, false),
        "password" => {
            let user = form.get("username").cloned().unwrap_or_default();
            if s.cfg.users.get(&user) != form.get("password") {
                return oauth_error(&s, StatusCode::BAD_REQUEST, "invalid_grant");
            }
            (None, Some(user), true)
        }
        "refresh_token" => {
            let presented = form.get("refresh_token").cloned().unwrap_or_default();
            let mut o = lock(&s.oauth);
            let Some((family, used, owner, expires, user)) = o.refresh.get(&presented).map(|r| {
                (
                    r.family,
                    r.used,
                    r.client.clone(),
                    r.expires,
                    r.user.clone(),
                )
            }) else {
                drop(o);
                return oauth_error(&s, StatusCode::BAD_REQUEST, "invalid_grant");
            };
            if used {
                // RFC 9700 reuse detection: the whole family dies.
                o.revoked.insert(family);
                drop(o);
                bump(&mut lock(&s.stats).killed, "reuse");
                return oauth_error(&s, StatusCode::BAD_REQUEST, "invalid_grant");
            }
            if owner != client || now >= expires || o.revoked.contains(&family) {
                drop(o);
                return oauth_error(&s, StatusCode::BAD_REQUEST, "invalid_grant");
            }
            if let Some(r) = o.refresh.get_mut(&presented) {
                r.used = true;
            }
            (Some(family), user, true)
        }
        _ => return oauth_error(&s, StatusCode::BAD_REQUEST, "unsupported_grant_type"),
    };
    let cfg = &s.cfg.oauth;
    let access = s.new_secret("at_");
    let lives = Duration::from_secs(
        cfg.access_ttl_cap_secs
            .unwrap_or(cfg.access_ttl_secs)
            .min(cfg.access_ttl_secs),
    );
    let mut o = lock(&s.oauth);
    let family = family.unwrap_or_else(|| {
        o.next_family += 1;
        o.next_family
    });
    o.access.insert(
        access.clone(),
        Access {
            family,
            issued: now,
            expires: now + lives,
        },
    );
    let mut body =
        json!({"access_token": access, "token_type": "Bearer", "expires_in": cfg.access_ttl_secs});
    if refresh {
        let rt = s.new_secret("rt_");
        o.refresh.insert(
            rt.clone(),
            Refresh {
                family,
                client: client.clone(),
                user,
                used: false,
                expires: now + Duration::from_secs(cfg.refresh_ttl_secs),
            },
        );
        body["refresh_token"] = json!(rt);
    }
    drop(o);
    {
        let mut st = lock(&s.stats);
        bump(&mut st.grants, grant);
        bump(&mut st.grants_by_client, &client);
    }
    json_response(StatusCode::OK, &body)
}

fn url_form(body: &[u8]) -> HashMap<String, String> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

/// Decodes one form-urlencoded value (client id or secret in a Basic header, RFC 6749 §2.3.1).
fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(s.as_bytes())
        .next()
        .map(|(k, _)| k.into_owned())
        .unwrap_or_default()
}

/// Binds `addr` and serves until the task is dropped. Stopping should call [`Inner::shutdown`]
/// too: a dropped serve task lets each connection finish its request in flight, and a hung one
/// finishes only then.
pub(crate) async fn serve(
    state: Arc<Inner>,
    addr: SocketAddr,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = router(state);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "emulator server stopped");
        }
    });
    Ok((local, task))
}
