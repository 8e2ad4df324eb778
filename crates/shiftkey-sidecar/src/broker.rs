//! The token broker: scripts in any language get a token by name over a Unix socket (0600 in a
//! 0700 directory, and the peer's uid must be ours) or loopback HTTP with a per-client secret, and
//! report a rejected generation — the broker refreshes once for all of them.
//!
//! Unix-socket protocol: one JSON object per line each way.
//! - `{"op":"get","name":"mes"}` → `{"ok":true,"token":"…","generation":3,"expires_in":1790}`
//! - `{"op":"rejected","name":"mes","generation":3}` → the replacement, same shape; add
//!   `"served":true` when that generation had been accepted by the server before it was refused
//!   (it served, then died: a restart), which lets the broker refresh a token it had just
//!   refreshed on a report (once per minimum interval)
//! - `{"op":"stats"}` → `{"ok":true,"tokens":{"mes":{"acquires":…,"proactive":…,"reactive":…}}}`
//! - any failure → `{"ok":false,"error":"…"}`
//!
//! HTTP: `GET /v1/tokens/{name}` and `POST /v1/tokens/{name}/rejected` with
//! `{"generation":3}` (and `"served":true` as above), both with `Authorization: Bearer <client
//! secret>`; same JSON replies.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use shiftkey_auth::{Invalidation, LifetimeSource, Secret, TokenManager};
use shiftkey_http::limits::{Death, LimitLearner, LimitsConfig, Recorded};
#[cfg(unix)]
use tokio::io::AsyncReadExt as _;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
#[cfg(unix)]
use tokio::net::{UnixListener, UnixStream};
use zeroize::Zeroizing;

use crate::SidecarError;

/// One request line.
#[derive(Debug, Deserialize, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Request {
    Get {
        name: String,
    },
    Rejected {
        name: String,
        generation: u64,
        /// The server had accepted this generation before refusing it.
        #[serde(default)]
        served: bool,
    },
    Stats,
}

/// A broker's answer, written as one JSON object. A token answer is serialised into a
/// zeroizing buffer of sufficient size ([`Answer::to_json`]): the only copy of the token in it
/// is wiped when the reply has been sent.
#[derive(Debug)]
pub(crate) enum Answer {
    /// The current token of a name.
    Token {
        token: Secret,
        generation: u64,
        expires_in: u64,
    },
    /// Counters (no secret).
    Stats(Value),
    /// A refusal or failure.
    Error(String),
}

/// A token answer on the wire, borrowing the token.
#[derive(Serialize)]
struct TokenReply<'a> {
    ok: bool,
    token: &'a str,
    generation: u64,
    expires_in: u64,
}

/// Bytes enough for a token answer with a token of `len` bytes: JSON escapes a byte into at most
/// six (`\u001f`), and the rest of the object is under 128 bytes. A buffer that never grows
/// leaves no copy behind in freed memory.
fn token_reply_capacity(len: usize) -> usize {
    len.saturating_mul(6).saturating_add(128)
}

impl Answer {
    /// The JSON object, without a newline, in a buffer zeroized on drop.
    fn to_json(&self) -> Zeroizing<Vec<u8>> {
        let written = match self {
            Self::Token {
                token,
                generation,
                expires_in,
            } => {
                let token = token.expose();
                let mut buf = Zeroizing::new(Vec::with_capacity(token_reply_capacity(token.len())));
                serde_json::to_writer(
                    &mut *buf,
                    &TokenReply {
                        ok: true,
                        token,
                        generation: *generation,
                        expires_in: *expires_in,
                    },
                )
                .map(|()| buf)
            }
            Self::Stats(v) => serde_json::to_vec(v).map(Zeroizing::new),
            Self::Error(e) => {
                serde_json::to_vec(&json!({"ok": false, "error": e})).map(Zeroizing::new)
            }
        };
        // Serialising strings and numbers into memory cannot fail; if it did, say so.
        written.unwrap_or_else(|_| {
            Zeroizing::new(br#"{"ok":false,"error":"the answer could not be written"}"#.to_vec())
        })
    }
}

/// The broker's shared state: a manager per token, and what the reported deaths taught about
/// each server's real limits (a cap below `expires_in` is learned from the clients' reports, as
/// the HTTP middleware learns it from responses, so refreshes become proactive again).
///
/// Nothing a client reports can make a refresh storm (any local process of ours can report):
/// - a report refreshes through [`TokenManager::invalidate`], which refuses to replace a token
///   obtained by a report-triggered refresh less than `min_interval` ago: at most one
///   report-triggered refresh per minimum interval, however many clients report;
/// - except that a report saying the server had accepted the generation (`served`: it served,
///   then died, as after a restart right behind a report-triggered refresh) may refresh such a
///   token once per minimum interval: two report-triggered refreshes per interval at worst;
/// - each generation's death counts once (the learner ignores repeats, whoever sends them);
/// - a lifetime cap learned from reports is never below [`floor`] (max(60 s, 10 % of the
///   server's `expires_in`)), neither applied nor persisted — a cap restored from the store below
///   it is raised to it.
pub struct Broker {
    managers: BTreeMap<String, TokenManager>,
    learners: BTreeMap<String, LimitLearner>,
    /// The lifetime the server claims (`expires_in`) per token, as last seen unclamped.
    claimed: std::sync::Mutex<BTreeMap<String, Duration>>,
    /// When a `served` report last refreshed a token its minimum interval protected, per token.
    served_refresh: std::sync::Mutex<BTreeMap<String, tokio::time::Instant>>,
}

/// The lowest lifetime cap learned from broker reports: max(60 s, 10 % of what the server
/// claims).
pub fn floor(claimed: Option<Duration>) -> Duration {
    let tenth = claimed.map_or(Duration::ZERO, |c| c / 10);
    Duration::from_secs(60).max(tenth)
}

impl Broker {
    /// A broker serving `managers` by name. A lifetime cap restored from a store below
    /// [`floor`] is raised to it.
    ///
    /// # Example
    /// ```no_run
    /// # fn demo(manager: shiftkey_auth::TokenManager) {
    /// let broker = shiftkey_sidecar::broker::Broker::new([("mes".to_owned(), manager)].into());
    /// # let _ = broker; }
    /// ```
    #[must_use]
    pub fn new(managers: BTreeMap<String, TokenManager>) -> Arc<Self> {
        let learners = managers
            .iter()
            .map(|(name, m)| {
                let mut restored = m.server_limits();
                if let Some(cap) = restored.lifetime_cap
                    && cap < floor(None)
                {
                    tracing::warn!(
                        token = name.as_str(),
                        cap_s = cap.as_secs(),
                        "a stored lifetime cap is below the floor for reported limits; raised"
                    );
                    restored.lifetime_cap = Some(floor(None));
                    m.set_server_limits(restored);
                }
                (
                    name.clone(),
                    LimitLearner::new(LimitsConfig::default()).with_learned(restored),
                )
            })
            .collect();
        Arc::new(Self {
            managers,
            learners,
            claimed: std::sync::Mutex::default(),
            served_refresh: std::sync::Mutex::default(),
        })
    }

    fn manager(&self, name: &str) -> Result<&TokenManager, String> {
        self.managers
            .get(name)
            .ok_or_else(|| format!("no token named `{name}`"))
    }

    /// Answers one request from `client` (for the logs).
    async fn reply(&self, req: Request, client: &str) -> Answer {
        let result = match req {
            Request::Get { name } => self.get(&name, None, client).await,
            Request::Rejected {
                name,
                generation,
                served,
            } => self.get(&name, Some((generation, served)), client).await,
            Request::Stats => Ok(Answer::Stats(self.stats())),
        };
        result.unwrap_or_else(Answer::Error)
    }

    /// A `served` report of `generation`, which [`TokenManager::invalidate`] found too soon to
    /// replace: replaced anyway, once per minimum interval of `name`. Only a refresh this starts
    /// uses up the interval (a generation already replaced does not), and concurrent reports
    /// take turns, so two of them cannot both start one.
    fn refresh_served(&self, name: &str, manager: &TokenManager, generation: u64) -> Invalidation {
        let mut last = self
            .served_refresh
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // The interval of the token judged too soon (no token: someone is replacing it already).
        let Some(interval) = manager.status().schedule.map(|s| s.margins.min_interval) else {
            return Invalidation::AlreadyReplaced;
        };
        let now = tokio::time::Instant::now();
        if last
            .get(name)
            .is_some_and(|t| now.saturating_duration_since(*t) < interval)
        {
            return Invalidation::TooSoon;
        }
        let outcome = manager.invalidate_served(generation);
        if outcome == Invalidation::Refreshing {
            last.insert(name.to_owned(), now);
        }
        outcome
    }

    /// The current token of `name`; with `rejected`, that generation (and whether the server
    /// had accepted it) is reported dead first (compare-and-swap: many reports of one generation
    /// make one refresh).
    async fn get(
        &self,
        name: &str,
        rejected: Option<(u64, bool)>,
        client: &str,
    ) -> Result<Answer, String> {
        let manager = self.manager(name)?;
        // A cap learned by this very report: the manager is rescheduling the current token, and
        // the reported generation's successor is coming.
        let mut successor_due = false;
        let rejected_generation = rejected.map(|(g, _)| g);
        // What the server claims, remembered for the floor (a learned token says the cap).
        if let Some(claimed) = manager
            .with_token(|t| (t.lifetime_source != LifetimeSource::Learned).then_some(t.lifetime))
            .flatten()
        {
            self.claimed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(name.to_owned(), claimed);
        }
        if let Some((generation, served)) = rejected {
            // The age of the reported token, when it is the current one (a real death).
            let age = manager
                .try_token()
                .filter(|t| t.generation() == generation)
                .map(|t| tokio::time::Instant::now().saturating_duration_since(t.issued_at));
            // The manager refuses to replace a token a report-triggered refresh got less than
            // `min_interval` ago (TooSoon): a client reporting every token it gets cannot make
            // more than one refresh per minimum interval.
            let mut outcome = manager.invalidate(generation);
            tracing::info!(
                token = name,
                client,
                generation,
                served,
                ?outcome,
                "a client reported a rejected token"
            );
            // A token a report just got, that the server accepted and then refused: it served
            // and died (a restart right behind the refresh), and one more refresh helps — as the
            // HTTP middleware does for its own requests.
            if outcome == Invalidation::TooSoon && served {
                outcome = self.refresh_served(name, manager, generation);
                if outcome == Invalidation::Refreshing {
                    tracing::info!(
                        token = name,
                        generation,
                        "a token that served died soon after a report-triggered refresh; refreshed again"
                    );
                }
            }
            // A current token dying is a death whether or not it is refreshed at once (TooSoon):
            // two in a row at one age teach a cap, and the manager then drops the token itself.
            let current = matches!(outcome, Invalidation::Refreshing | Invalidation::TooSoon);
            if let (true, Some(age), Some(learner)) = (current, age, self.learners.get(name)) {
                // Clients do not say how long they were idle: every report is a busy death.
                let death = Death {
                    age,
                    idle: Duration::ZERO,
                };
                if let Recorded::Learned(mut limits) = learner.record(generation, death) {
                    let claimed = self
                        .claimed
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .get(name)
                        .copied();
                    let floor = floor(claimed);
                    if let Some(cap) = limits.lifetime_cap
                        && cap < floor
                    {
                        tracing::warn!(
                            token = name,
                            reported_cap_s = cap.as_secs_f64(),
                            floor_s = floor.as_secs(),
                            "reports suggest a lifetime cap below the floor; using the floor"
                        );
                        limits.lifetime_cap = Some(floor);
                    }
                    tracing::warn!(
                        token = name,
                        lifetime_cap_s = limits.lifetime_cap.map(|d| d.as_secs()),
                        "learned the server's real token lifetime from rejected tokens"
                    );
                    manager.set_server_limits(limits);
                    successor_due = true;
                }
            }
        }
        let mut token = manager
            .token()
            .await
            .map_err(|e| format!("token `{name}`: {e}"))?;
        // A reported generation that is still served is about to be replaced (this report just
        // taught a cap and the manager is rescheduling): wait briefly for its successor.
        for _ in 0..100 {
            if !successor_due || rejected_generation != Some(token.generation()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            token = manager
                .token()
                .await
                .map_err(|e| format!("token `{name}`: {e}"))?;
        }
        let expires_in = manager
            .status()
            .schedule
            .map(|s| {
                s.expires_at
                    .saturating_duration_since(tokio::time::Instant::now())
            })
            .unwrap_or_default();
        manager
            .with_token(|t| Answer::Token {
                token: t.access_token.clone(),
                generation: token.generation(),
                expires_in: expires_in.as_secs(),
            })
            .ok_or_else(|| format!("token `{name}`: no servable token"))
    }

    fn stats(&self) -> Value {
        let tokens: serde_json::Map<String, Value> = self
            .managers
            .iter()
            .map(|(name, m)| {
                let s = m.stats();
                (
                    name.clone(),
                    json!({
                        "acquires": s.acquires,
                        "failures": s.failures,
                        "proactive": s.proactive,
                        "reactive": s.reactive,
                        "adopted": s.adopted,
                        "generation": m.status().generation,
                    }),
                )
            })
            .collect();
        json!({"ok": true, "tokens": tokens})
    }
}

/// Serves the broker's line protocol on a Unix socket (bind it with
/// [`crate::unix::bind_socket`]) until the task is dropped; only this user's processes are
/// served.
#[cfg(unix)]
pub async fn serve_socket(listener: UnixListener, broker: Arc<Broker>) {
    loop {
        let Some((stream, _)) = crate::serve::accepted(listener.accept()).await else {
            continue;
        };
        let Some(client) = crate::unix::peer_is_us(&stream) else {
            continue;
        };
        let broker = Arc::clone(&broker);
        tokio::spawn(async move {
            if let Err(e) = connection(stream, &broker, &client).await {
                tracing::debug!(error = %e, "broker: connection ended");
            }
        });
    }
}

#[cfg(unix)]
async fn connection(stream: UnixStream, broker: &Broker, client: &str) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read.take(1 << 20)).lines();
    while let Some(line) = lines.next_line().await? {
        if line.trim().is_empty() {
            continue;
        }
        let reply = match serde_json::from_str::<Request>(&line) {
            Ok(req) => broker.reply(req, client).await,
            Err(e) => Answer::Error(format!("bad request: {e}")),
        };
        // Two writes rather than a push that could grow (and copy) the token's buffer.
        write.write_all(&reply.to_json()).await?;
        write.write_all(b"\n").await?;
    }
    Ok(())
}

/// Asks a running broker at `socket` for the token `name`: `Ok(None)` when no broker is
/// listening there. Only a broker running as this user is trusted; one that accepts and never
/// answers fails after [`ASK_TIMEOUT`].
///
/// # Example
/// ```no_run
/// # async fn demo() -> Result<(), shiftkey_sidecar::SidecarError> {
/// let socket = std::path::Path::new("/run/user/1000/shiftkey/broker.sock");
/// if let Some(token) = shiftkey_sidecar::broker::ask(socket, "mes").await? {
///     // token.expose() goes in the Authorization header.
/// #   let _ = token;
/// }
/// # Ok(()) }
/// ```
#[cfg(unix)]
pub async fn ask(socket: &Path, name: &str) -> Result<Option<Secret>, SidecarError> {
    // A broker that accepts and never answers must not hang a shell script.
    tokio::time::timeout(ASK_TIMEOUT, ask_inner(socket, name))
        .await
        .map_err(|_| {
            SidecarError::path(
                socket,
                format!(
                    "the broker did not answer within {} s",
                    ASK_TIMEOUT.as_secs()
                ),
            )
        })?
}

/// What [`ask`] reads: the token goes straight into a [`Secret`].
#[derive(Deserialize)]
struct AskReply {
    ok: bool,
    #[serde(default)]
    token: Option<Secret>,
    #[serde(default)]
    error: Option<String>,
}

/// How long [`ask`] waits for the broker (its own wait for a refresh is 30 s).
pub const ASK_TIMEOUT: Duration = Duration::from_secs(40);

#[cfg(unix)]
async fn ask_inner(socket: &Path, name: &str) -> Result<Option<Secret>, SidecarError> {
    let Ok(stream) = UnixStream::connect(socket).await else {
        return Ok(None);
    };
    // Trust only a broker running as this user: another user's process at the path would
    // otherwise hand a script a token of its choosing.
    let uid = crate::unix::uid();
    let peer = stream
        .peer_cred()
        .map_err(|e| SidecarError::io(format!("cannot read who serves {}", socket.display()), e))?;
    if peer.uid() != uid {
        return Err(SidecarError::path(
            socket,
            format!(
                "is served by uid {}, not by this user (uid {uid}); not trusted",
                peer.uid()
            ),
        ));
    }
    let bad = |what: &str| SidecarError::path(socket, format!("the broker {what}"));
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(&Request::Get {
        name: name.to_owned(),
    })
    .map_err(|_| bad("request could not be written"))?;
    line.push(b'\n');
    write.write_all(&line).await.map_err(|e| {
        SidecarError::io(format!("writing to the broker on {}", socket.display()), e)
    })?;
    // The reply holds the token: read and parsed in buffers zeroized on drop.
    let mut reply = Zeroizing::new(String::new());
    BufReader::new(read.take(1 << 20))
        .read_line(&mut reply)
        .await
        .map_err(|e| {
            SidecarError::io(
                format!("reading the broker's reply on {}", socket.display()),
                e,
            )
        })?;
    let v: AskReply = serde_json::from_str(&reply).map_err(|_| bad("sent a bad reply"))?;
    if !v.ok {
        return Err(bad(&format!(
            "refused: {}",
            v.error.as_deref().unwrap_or("failed")
        )));
    }
    v.token.map(Some).ok_or_else(|| bad("sent no token"))
}

/// One client of the HTTP listener: its name, its secret, the tokens it may get.
#[derive(Debug)]
pub struct HttpClient {
    /// Its name, for logs.
    pub name: String,
    /// The secret it presents as `Authorization: Bearer` (compared in constant time).
    pub secret: Secret,
    /// The tokens it may get; any other is refused (403).
    pub tokens: Vec<String>,
}

/// Per-client secrets and scopes of the HTTP listener.
#[derive(Debug)]
pub struct HttpAuth {
    clients: Vec<HttpClient>,
}

impl HttpAuth {
    /// The listener's clients.
    #[must_use]
    pub fn new(clients: Vec<HttpClient>) -> Self {
        Self { clients }
    }

    /// The client presenting `headers`' bearer secret (compared in constant time), if it may get
    /// `token`: `Ok(name)`; `Err` with the answer to send otherwise.
    fn authorize(&self, headers: &HeaderMap, token: &str) -> Result<&str, Box<Response>> {
        let Some(client) = self.client(headers) else {
            return Err(Box::new(unauthorized()));
        };
        if !client.tokens.iter().any(|t| t == token) {
            tracing::warn!(
                client = client.name.as_str(),
                token,
                "broker: a client asked for a token it may not get"
            );
            return Err(Box::new(
                (
                    StatusCode::FORBIDDEN,
                    Json(json!({"ok": false, "error": format!("client `{}` may not get token `{token}`", client.name)})),
                )
                    .into_response(),
            ));
        }
        Ok(client.name.as_str())
    }

    /// The client presenting `headers`' bearer secret, compared in constant time.
    fn client(&self, headers: &HeaderMap) -> Option<&HttpClient> {
        use subtle::ConstantTimeEq as _;
        let presented = headers
            .get(header::AUTHORIZATION)?
            .to_str()
            .ok()?
            .strip_prefix("Bearer ")?
            .as_bytes();
        let mut found = None;
        for c in &self.clients {
            if bool::from(c.secret.expose().as_bytes().ct_eq(presented)) {
                found = Some(c);
            }
        }
        found
    }
}

type HttpState = (Arc<Broker>, Arc<HttpAuth>);

/// The loopback HTTP router (serve it with [`crate::serve::with_host_check`] in front).
pub fn http_router(broker: Arc<Broker>, auth: Arc<HttpAuth>) -> axum::Router {
    axum::Router::new()
        .route("/v1/tokens/{name}", axum::routing::get(http_get))
        .route(
            "/v1/tokens/{name}/rejected",
            axum::routing::post(http_rejected),
        )
        .with_state((broker, auth))
}

#[derive(Debug, Deserialize)]
struct RejectedBody {
    generation: u64,
    #[serde(default)]
    served: bool,
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        Json(json!({"ok": false, "error": "a configured client secret is required"})),
    )
        .into_response()
}

fn answer(a: Answer) -> Response {
    let status = match &a {
        Answer::Error(e) if e.starts_with("no token named") => StatusCode::NOT_FOUND,
        Answer::Error(_) => StatusCode::SERVICE_UNAVAILABLE,
        Answer::Token { .. } | Answer::Stats(_) => StatusCode::OK,
    };
    // The body is the zeroizing buffer itself (`Bytes::from_owner`), not a copy of it.
    let body = axum::body::Body::from(bytes::Bytes::from_owner(a.to_json()));
    (
        status,
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::CONTENT_TYPE, "application/json"),
        ],
        body,
    )
        .into_response()
}

async fn http_get(
    State((broker, auth)): State<HttpState>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    let client = match auth.authorize(&headers, &name) {
        Ok(c) => c,
        Err(answer) => return *answer,
    };
    tracing::info!(client, token = name, "broker: HTTP get");
    answer(broker.reply(Request::Get { name }, client).await)
}

async fn http_rejected(
    State((broker, auth)): State<HttpState>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
    body: Result<Json<RejectedBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let client = match auth.authorize(&headers, &name) {
        Ok(c) => c,
        Err(answer) => return *answer,
    };
    let Ok(Json(body)) = body else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"ok": false, "error": "the body must be {\"generation\": N}"})),
        )
            .into_response();
    };
    tracing::info!(client, token = name, "broker: HTTP rejected");
    answer(
        broker
            .reply(
                Request::Rejected {
                    name,
                    generation: body.generation,
                    served: body.served,
                },
                client,
            )
            .await,
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use super::*;
    use shiftkey_auth::testing::ScriptedStrategy;
    use shiftkey_auth::timing::RefreshConfig;
    use tokio::time::Instant;

    const DAY: Duration = Duration::from_secs(86_400);

    fn broker(lifetime: Duration) -> (Arc<Broker>, ScriptedStrategy, TokenManager) {
        let strategy = ScriptedStrategy::new(lifetime, Duration::from_millis(50));
        let manager = TokenManager::builder(strategy.clone())
            .config(RefreshConfig {
                seed: Some(7),
                ..RefreshConfig::default()
            })
            .build()
            .unwrap();
        let broker = Broker::new(BTreeMap::from([("mes".to_owned(), manager.clone())]));
        (broker, strategy, manager)
    }

    fn served_generation(a: &Answer) -> u64 {
        match a {
            Answer::Token { generation, .. } => *generation,
            other => panic!("not a token: {other:?}"),
        }
    }

    /// A token answer is written into a buffer that never grows, whatever the token holds (a
    /// grown buffer leaves its old bytes, token included, in freed memory), and reads back.
    #[test]
    fn a_token_answer_is_written_once_into_a_buffer_that_is_never_grown() {
        for token in [
            "t".repeat(4096),
            "\"\\\u{1f}".repeat(1500),
            "é\u{2028}".repeat(700),
            String::new(),
        ] {
            let answer = Answer::Token {
                token: Secret::new(token.clone()),
                generation: u64::MAX,
                expires_in: u64::MAX,
            };
            let json = answer.to_json();
            assert_eq!(json.capacity(), token_reply_capacity(token.len()));
            let back: Value = serde_json::from_slice(&json).unwrap();
            assert_eq!(back["token"], token.as_str());
            assert_eq!(back["ok"], true);
            assert_eq!(back["generation"], u64::MAX);
        }
    }

    async fn generation(b: &Broker, rejected: Option<u64>) -> u64 {
        let v = b
            .get("mes", rejected.map(|g| (g, false)), "test")
            .await
            .unwrap();
        served_generation(&v)
    }

    /// Reports `g` rejected after the server had accepted it.
    async fn served_then_died(b: &Broker, g: u64) -> u64 {
        let v = b.get("mes", Some((g, true)), "test").await.unwrap();
        served_generation(&v)
    }

    /// A restart seconds after a report-triggered refresh kills the young replacement: a report
    /// that says it served gets one more refresh; a report that does not, or a second served
    /// one inside the minimum interval, gets the same token back.
    #[tokio::test(start_paused = true)]
    async fn a_token_that_served_and_died_soon_after_a_report_is_replaced_once_per_interval() {
        let (b, strategy, manager) = broker(Duration::from_secs(3600));
        let g1 = generation(&b, None).await;
        let g2 = generation(&b, Some(g1)).await;
        assert!(g2 > g1, "a report replaces a token");
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(
            generation(&b, Some(g2)).await,
            g2,
            "too soon without evidence"
        );
        let g3 = served_then_died(&b, g2).await;
        assert!(g3 > g2, "it served, then died: refreshed again");
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(
            served_then_died(&b, g3).await,
            g3,
            "once per minimum interval"
        );
        // g3 outlives its interval and a plain report replaces it; the new token is young, and a
        // minute after the last served refresh, a served report may replace it at once.
        tokio::time::sleep(Duration::from_secs(60)).await;
        let g4 = generation(&b, Some(g3)).await;
        assert!(g4 > g3, "past its interval, a plain report replaces it");
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(
            generation(&b, Some(g4)).await,
            g4,
            "too soon without evidence"
        );
        assert!(
            served_then_died(&b, g4).await > g4,
            "a new interval allows one more served refresh"
        );
        assert_eq!(strategy.calls(), 5);
        manager.shutdown().await;
    }

    /// A client that claims every token served and died still makes at most two refreshes per
    /// minimum interval.
    #[tokio::test(start_paused = true)]
    async fn a_client_claiming_every_token_served_cannot_make_a_refresh_storm() {
        let (b, strategy, manager) = broker(Duration::from_secs(3600));
        let start = Instant::now();
        while start.elapsed() < DAY {
            let g = generation(&b, None).await;
            served_then_died(&b, g).await;
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
        let bound = 2 * DAY.as_secs() / 60;
        let calls = strategy.calls() as u64;
        assert!(calls <= bound + 2, "{calls} token-endpoint calls in a day");
        manager.shutdown().await;
    }

    /// A client that reports every token rejected the moment it gets it, and again every 10 s,
    /// for a simulated day: at most one token-endpoint call per minimum interval, and no
    /// learned cap below the floor.
    #[tokio::test(start_paused = true)]
    async fn a_client_reporting_every_token_cannot_make_a_refresh_storm() {
        let lifetime = Duration::from_secs(3600);
        let (b, strategy, manager) = broker(lifetime);
        let start = Instant::now();
        while start.elapsed() < DAY {
            let g = generation(&b, None).await;
            generation(&b, Some(g)).await;
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
        let min_interval = Duration::from_secs(60);
        let bound = DAY.as_secs() / min_interval.as_secs();
        let calls = strategy.calls() as u64;
        // The first token, and one proactive refresh whose token a report replaces at once.
        assert!(calls <= bound + 2, "{calls} token-endpoint calls in a day");
        let starts = strategy.starts();
        let close = starts
            .windows(2)
            .filter(|w| w[1] - w[0] < min_interval)
            .count();
        assert!(
            close <= 2,
            "{close} refreshes closer than the minimum interval"
        );
        let cap = manager.server_limits().lifetime_cap;
        assert!(
            cap.is_none_or(|c| c >= floor(Some(lifetime))),
            "learned cap {cap:?} is below the floor"
        );
        manager.shutdown().await;
    }

    /// A server that kills 8 h tokens at 2 h: two deaths in a row teach the cap (above the
    /// floor of 48 min), and from then on refreshes come before it: no more deaths.
    #[tokio::test(start_paused = true)]
    async fn a_real_cap_above_the_floor_is_learned_from_reports() {
        let lifetime = Duration::from_secs(8 * 3600);
        let real = Duration::from_secs(2 * 3600);
        let (b, _strategy, manager) = broker(lifetime);
        let start = Instant::now();
        let mut deaths = 0;
        while start.elapsed() < 2 * DAY {
            let g = generation(&b, None).await;
            let age = manager
                .try_token()
                .filter(|t| t.generation() == g)
                .map(|t| Instant::now().saturating_duration_since(t.issued_at));
            if age.is_some_and(|a| a >= real) {
                deaths += 1;
                generation(&b, Some(g)).await;
            }
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
        let cap = manager.server_limits().lifetime_cap.unwrap();
        assert!(
            cap >= floor(Some(lifetime)) && cap <= real + Duration::from_secs(120),
            "{cap:?}"
        );
        assert_eq!(deaths, 2, "two deaths teach the cap; none after");
        manager.shutdown().await;
    }

    /// `token get` against a broker that accepts and never answers fails with a clear error.
    #[tokio::test(start_paused = true)]
    async fn asking_a_broker_that_never_answers_times_out() {
        let dir = std::env::temp_dir().join(format!("shiftkey-ask-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("hung.sock");
        let _ = std::fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket).unwrap();
        let held = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            std::future::pending::<()>().await;
            drop(stream);
        });
        let err = ask(&socket, "mes").await.err().unwrap();
        assert!(format!("{err:#}").contains("did not answer"), "{err:#}");
        held.abort();
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// `token get` trusts only a broker running as this user. Checkable where a socket of
    /// another user can be made: as root, with a listener that drops to `nobody`.
    #[tokio::test]
    async fn a_socket_served_by_another_user_is_not_trusted() {
        if !rustix::process::getuid().is_root() {
            return;
        }
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("shiftkey-foreign-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let socket = dir.join("b.sock");
        let script = format!(
            "import os, socket, sys, time\nos.setgid(65534)\nos.setuid(65534)\n\
             s = socket.socket(socket.AF_UNIX)\ns.bind({path:?})\ns.listen()\n\
             print('ready', flush=True)\nc, _ = s.accept()\ntime.sleep(30)\n",
            path = socket.to_str().unwrap()
        );
        let mut child = std::process::Command::new("python3")
            .args(["-c", &script])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line.trim(), "ready");
        let err = ask(&socket, "mes").await.err().unwrap();
        assert!(format!("{err:#}").contains("not trusted"), "{err:#}");
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A cap persisted below the floor (by an older version) is raised when the broker starts.
    #[tokio::test(start_paused = true)]
    async fn a_stored_cap_below_the_floor_is_raised() {
        let (_, _, manager) = broker(Duration::from_secs(3600));
        manager.set_server_limits(shiftkey_auth::ServerLimits {
            lifetime_cap: Some(Duration::from_secs(1)),
            idle_limit: None,
        });
        let _b = Broker::new(BTreeMap::from([("mes".to_owned(), manager.clone())]));
        assert_eq!(
            manager.server_limits().lifetime_cap,
            Some(Duration::from_secs(60))
        );
        manager.shutdown().await;
    }
}
