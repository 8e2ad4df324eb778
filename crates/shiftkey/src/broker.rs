//! The token broker: scripts in any language get a token by name over a Unix socket (0600 in a
//! 0700 directory, and the peer's uid must be ours) or loopback HTTP with a per-client secret, and
//! report a rejected generation — the broker refreshes once for all of them.
//!
//! Unix-socket protocol: one JSON object per line each way.
//! - `{"op":"get","name":"mes"}` → `{"ok":true,"token":"…","generation":3,"expires_in":1790}`
//! - `{"op":"rejected","name":"mes","generation":3}` → the replacement, same shape
//! - `{"op":"stats"}` → `{"ok":true,"tokens":{"mes":{"acquires":…,"proactive":…,"reactive":…}}}`
//! - any failure → `{"ok":false,"error":"…"}`
//!
//! HTTP: `GET /v1/tokens/{name}` and `POST /v1/tokens/{name}/rejected` with
//! `{"generation":3}`, both with `Authorization: Bearer <client secret>`; same JSON replies.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use axum::Json;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use shiftkey_auth::{Invalidation, Secret, TokenManager};
use shiftkey_http::limits::{Death, LimitLearner, LimitsConfig, Recorded};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::config::Config;

/// One request line.
#[derive(Debug, Deserialize, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Request {
    Get { name: String },
    Rejected { name: String, generation: u64 },
    Stats,
}

/// The broker's shared state: a manager per token, and what the reported deaths taught about
/// each server's real limits (a cap below `expires_in` is learned from the clients' reports, as
/// the HTTP middleware learns it from responses, so refreshes become proactive again).
pub(crate) struct Broker {
    managers: BTreeMap<String, TokenManager>,
    learners: BTreeMap<String, LimitLearner>,
    /// The generation a refresh was last forced for, per token.
    forced: std::sync::Mutex<BTreeMap<String, u64>>,
}

/// A reactive token rejected younger than this was probably never accepted: not refreshed again
/// (the manager's `min_interval` guard). Older, it served and then died: refreshed.
const FRESH_REJECTION: Duration = Duration::from_secs(10);

impl Broker {
    pub(crate) fn new(managers: BTreeMap<String, TokenManager>) -> Arc<Self> {
        let learners = managers
            .iter()
            .map(|(name, m)| {
                (
                    name.clone(),
                    LimitLearner::new(LimitsConfig::default()).with_learned(m.server_limits()),
                )
            })
            .collect();
        Arc::new(Self {
            managers,
            learners,
            forced: std::sync::Mutex::default(),
        })
    }

    fn manager(&self, name: &str) -> Result<&TokenManager, String> {
        self.managers
            .get(name)
            .ok_or_else(|| format!("no token named `{name}`"))
    }

    async fn reply(&self, req: Request) -> Value {
        let result = match req {
            Request::Get { name } => self.get(&name, None).await,
            Request::Rejected { name, generation } => self.get(&name, Some(generation)).await,
            Request::Stats => Ok(self.stats()),
        };
        result.unwrap_or_else(|e| json!({"ok": false, "error": e}))
    }

    /// The current token of `name`; with `rejected`, that generation is reported dead first
    /// (compare-and-swap: many reports of one generation make one refresh).
    async fn get(&self, name: &str, rejected: Option<u64>) -> Result<Value, String> {
        let manager = self.manager(name)?;
        if let Some(generation) = rejected {
            // The age of the reported token, when it is the current one (a real death).
            let age = manager
                .try_token()
                .filter(|t| t.generation() == generation)
                .map(|t| tokio::time::Instant::now().saturating_duration_since(t.issued_at));
            let mut outcome = manager.invalidate(generation);
            // The manager refuses to replace a reactive token younger than `min_interval` (a
            // server that rejects every fresh token must not cause a refresh storm). A token that
            // served for a while first and then died — a restart right after a reactive refresh
            // — is a new death: refresh it, at most once per `FRESH_REJECTION` per token.
            if outcome == Invalidation::TooSoon && age.is_some_and(|a| a >= FRESH_REJECTION) {
                manager.refresh_now();
                outcome = Invalidation::Refreshing;
                self.forced
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(name.to_owned(), generation);
            }
            tracing::info!(
                token = name,
                generation,
                ?outcome,
                "a client reported a rejected token"
            );
            // A current token dying is a death whether or not it is refreshed at once (TooSoon):
            // two in a row at one age teach a cap, and the manager then drops the token itself.
            let current = matches!(outcome, Invalidation::Refreshing | Invalidation::TooSoon);
            if let (true, Some(age), Some(learner)) = (current, age, self.learners.get(name)) {
                // Clients do not say how long they were idle: every report is a busy death.
                let death = Death {
                    age,
                    idle: Duration::ZERO,
                };
                if let Recorded::Learned(limits) = learner.record(generation, death) {
                    tracing::warn!(
                        token = name,
                        lifetime_cap_s = limits.lifetime_cap.map(|d| d.as_secs()),
                        "learned the server's real token lifetime from rejected tokens"
                    );
                    manager.set_server_limits(limits);
                }
            }
        }
        let mut token = manager
            .token()
            .await
            .map_err(|e| format!("token `{name}`: {e}"))?;
        // A reported generation that is still served is about to be replaced (a cap was just
        // learned and the manager is rescheduling): wait briefly for its successor.
        for _ in 0..100 {
            if rejected != Some(token.generation()) || !self.replacing(name, token.generation()) {
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
            .with_token(|t| {
                json!({
                    "ok": true,
                    "token": t.access_token.expose(),
                    "generation": token.generation(),
                    "expires_in": expires_in.as_secs(),
                })
            })
            .ok_or_else(|| format!("token `{name}`: no servable token"))
    }

    /// Whether the rejected current token `generation` of `name` is on its way out: a cap was
    /// learned, or a refresh was forced for it.
    fn replacing(&self, name: &str, generation: u64) -> bool {
        let forced = self
            .forced
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            == Some(&generation);
        forced
            || self
                .learners
                .get(name)
                .is_some_and(|l| l.limits().lifetime_cap.is_some())
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

/// Binds the Unix socket: its directory 0700, the socket 0600; a stale socket (nobody
/// answers) is replaced, a live one is an error.
pub(crate) async fn bind_socket(path: &Path) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = path
        .parent()
        .with_context(|| format!("`broker.socket`: {} has no directory", path.display()))?;
    crate::tokens::ensure_private_dir(dir)?;
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            bail!(
                "another broker is already serving {} (stop it, or set a different `broker.socket`)",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot chmod 600 {}", path.display()))?;
    Ok(listener)
}

/// Serves the Unix socket until the task is dropped.
pub(crate) async fn serve_socket(listener: UnixListener, broker: Arc<Broker>) {
    let uid = rustix::process::getuid().as_raw();
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "broker: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        match stream.peer_cred() {
            Ok(cred) if cred.uid() == uid => {}
            Ok(cred) => {
                tracing::warn!(
                    peer_uid = cred.uid(),
                    "broker: refused a connection from another user"
                );
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "broker: cannot read the peer's credentials; refused");
                continue;
            }
        }
        let broker = Arc::clone(&broker);
        tokio::spawn(async move {
            if let Err(e) = connection(stream, &broker).await {
                tracing::debug!(error = %e, "broker: connection ended");
            }
        });
    }
}

async fn connection(stream: UnixStream, broker: &Broker) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read.take(1 << 20)).lines();
    while let Some(line) = lines.next_line().await? {
        if line.trim().is_empty() {
            continue;
        }
        let reply = match serde_json::from_str::<Request>(&line) {
            Ok(req) => broker.reply(req).await,
            Err(e) => json!({"ok": false, "error": format!("bad request: {e}")}),
        };
        let mut bytes = serde_json::to_vec(&reply).unwrap_or_default();
        bytes.push(b'\n');
        write.write_all(&bytes).await?;
    }
    Ok(())
}

use tokio::io::AsyncReadExt as _;

/// A token as the broker hands it out.
pub(crate) struct Reply {
    pub(crate) access_token: Secret,
}

/// Asks a running broker at `socket` for `name`; `None` when no broker is listening.
pub(crate) async fn ask(socket: &Path, name: &str) -> anyhow::Result<Option<Reply>> {
    let Ok(stream) = UnixStream::connect(socket).await else {
        return Ok(None);
    };
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(&Request::Get {
        name: name.to_owned(),
    })?;
    line.push(b'\n');
    write.write_all(&line).await?;
    let mut reply = String::new();
    BufReader::new(read.take(1 << 20))
        .read_line(&mut reply)
        .await
        .with_context(|| format!("reading the broker's reply on {}", socket.display()))?;
    let v: Value = serde_json::from_str(&reply)
        .with_context(|| format!("the broker on {} sent a bad reply", socket.display()))?;
    if v["ok"] != true {
        bail!(
            "broker on {}: {}",
            socket.display(),
            v["error"].as_str().unwrap_or("failed")
        );
    }
    let token = v["token"]
        .as_str()
        .with_context(|| format!("the broker on {} sent no token", socket.display()))?;
    Ok(Some(Reply {
        access_token: Secret::new(token.to_owned()),
    }))
}

/// Per-client secrets of the HTTP listener.
pub(crate) struct HttpAuth {
    clients: Vec<(String, Secret)>,
}

impl HttpAuth {
    pub(crate) fn from_config(cfg: &Config) -> anyhow::Result<Self> {
        let clients = cfg
            .broker
            .clients
            .iter()
            .map(|(name, s)| Ok((name.clone(), s.resolve(&format!("broker.clients.{name}"))?)))
            .collect::<anyhow::Result<_>>()?;
        Ok(Self { clients })
    }

    /// The client presenting `headers`' bearer secret, compared in constant time.
    fn client(&self, headers: &HeaderMap) -> Option<&str> {
        use subtle::ConstantTimeEq as _;
        let presented = headers
            .get(header::AUTHORIZATION)?
            .to_str()
            .ok()?
            .strip_prefix("Bearer ")?
            .as_bytes();
        let mut found = None;
        for (name, secret) in &self.clients {
            if bool::from(secret.expose().as_bytes().ct_eq(presented)) {
                found = Some(name.as_str());
            }
        }
        found
    }
}

type HttpState = (Arc<Broker>, Arc<HttpAuth>);

/// The loopback HTTP router.
pub(crate) fn http_router(broker: Arc<Broker>, auth: Arc<HttpAuth>) -> axum::Router {
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
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        Json(json!({"ok": false, "error": "a configured client secret is required"})),
    )
        .into_response()
}

fn answer(v: Value) -> Response {
    let status = if v["ok"] == true {
        StatusCode::OK
    } else if v["error"]
        .as_str()
        .is_some_and(|e| e.starts_with("no token named"))
    {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, [(header::CACHE_CONTROL, "no-store")], Json(v)).into_response()
}

async fn http_get(
    State((broker, auth)): State<HttpState>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    let Some(client) = auth.client(&headers) else {
        return unauthorized();
    };
    tracing::debug!(client, token = name, "broker: HTTP get");
    answer(broker.reply(Request::Get { name }).await)
}

async fn http_rejected(
    State((broker, auth)): State<HttpState>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
    body: Result<Json<RejectedBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Some(client) = auth.client(&headers) else {
        return unauthorized();
    };
    let Ok(Json(body)) = body else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"ok": false, "error": "the body must be {\"generation\": N}"})),
        )
            .into_response();
    };
    tracing::debug!(client, token = name, "broker: HTTP rejected");
    answer(
        broker
            .reply(Request::Rejected {
                name,
                generation: body.generation,
            })
            .await,
    )
}

/// Removes the socket file when the broker stops.
pub(crate) struct SocketFile(pub(crate) PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
