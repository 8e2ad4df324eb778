//! A scripted resource server: checks bearer tokens, kills them by rule, answers from a script.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use shiftkey_auth::{Clock, TokioClock};
use tokio::time::Instant;

/// One scripted answer.
#[derive(Debug, Clone)]
pub(crate) enum Scripted {
    Status(u16),
    TooMany {
        retry_after: String,
        date: Option<String>,
    },
}

#[derive(Debug, Default)]
pub(crate) struct Server {
    pub(crate) dead: Mutex<HashSet<String>>,
    pub(crate) reject_all: Mutex<bool>,
    pub(crate) lifetime_cap: Mutex<Option<Duration>>,
    pub(crate) idle_limit: Mutex<Option<Duration>>,
    first_seen: Mutex<HashMap<String, Instant>>,
    last_use: Mutex<HashMap<String, Instant>>,
    pub(crate) script: Mutex<VecDeque<Scripted>>,
    pub(crate) hits: AtomicUsize,
    pub(crate) unauthorized: AtomicUsize,
    pub(crate) tokens_seen: Mutex<Vec<String>>,
}

impl Server {
    pub(crate) fn kill(&self, token: &str) {
        self.dead.lock().unwrap().insert(token.to_owned());
    }

    pub(crate) fn push(&self, steps: impl IntoIterator<Item = Scripted>) {
        self.script.lock().unwrap().extend(steps);
    }

    fn check(&self, headers: &HeaderMap) -> Result<(), Box<Response>> {
        let token = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default()
            .to_owned();
        self.tokens_seen.lock().unwrap().push(token.clone());
        let now = Instant::now();
        let first = *self
            .first_seen
            .lock()
            .unwrap()
            .entry(token.clone())
            .or_insert(now);
        let last = self
            .last_use
            .lock()
            .unwrap()
            .insert(token.clone(), now)
            .unwrap_or(now);
        let capped = self
            .lifetime_cap
            .lock()
            .unwrap()
            .is_some_and(|cap| now - first > cap);
        let idled = self
            .idle_limit
            .lock()
            .unwrap()
            .is_some_and(|limit| now - last > limit);
        if capped || idled {
            self.kill(&token);
        }
        if token.is_empty()
            || *self.reject_all.lock().unwrap()
            || self.dead.lock().unwrap().contains(&token)
        {
            self.unauthorized.fetch_add(1, Ordering::SeqCst);
            let mut h = HeaderMap::new();
            h.insert(
                "www-authenticate",
                r#"Bearer error="invalid_token""#.parse().unwrap(),
            );
            return Err(Box::new(
                (StatusCode::UNAUTHORIZED, h, "token expired").into_response(),
            ));
        }
        Ok(())
    }
}

async fn data(State(s): State<Arc<Server>>, headers: HeaderMap) -> Response {
    s.hits.fetch_add(1, Ordering::SeqCst);
    if let Err(r) = s.check(&headers) {
        return *r;
    }
    let step = s.script.lock().unwrap().pop_front();
    match step {
        None => (StatusCode::OK, "ok").into_response(),
        Some(Scripted::Status(code)) => StatusCode::from_u16(code).unwrap().into_response(),
        Some(Scripted::TooMany { retry_after, date }) => {
            let mut h = HeaderMap::new();
            h.insert("retry-after", retry_after.parse().unwrap());
            if let Some(d) = date {
                h.insert("date", d.parse().unwrap());
            }
            (StatusCode::TOO_MANY_REQUESTS, h, "slow down").into_response()
        }
    }
}

/// Redirects to `?to=URL` (same or another origin).
async fn moved(State(s): State<Arc<Server>>, uri: axum::http::Uri) -> Response {
    s.hits.fetch_add(1, Ordering::SeqCst);
    let to = url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
        .find(|(k, _)| k == "to")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    let mut h = HeaderMap::new();
    h.insert("location", to.parse().unwrap());
    (StatusCode::TEMPORARY_REDIRECT, h).into_response()
}

/// Accepts and never answers (a hung upstream).
async fn hang(State(s): State<Arc<Server>>) -> Response {
    s.hits.fetch_add(1, Ordering::SeqCst);
    std::future::pending::<()>().await;
    StatusCode::OK.into_response()
}

async fn scope(State(s): State<Arc<Server>>) -> Response {
    s.hits.fetch_add(1, Ordering::SeqCst);
    let mut h = HeaderMap::new();
    h.insert(
        "www-authenticate",
        r#"Bearer error="insufficient_scope", scope="write""#
            .parse()
            .unwrap(),
    );
    (StatusCode::FORBIDDEN, h).into_response()
}

async fn upload(
    State(s): State<Arc<Server>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    s.hits.fetch_add(1, Ordering::SeqCst);
    if let Err(r) = s.check(&headers) {
        return *r;
    }
    (StatusCode::OK, format!("{} bytes", body.len())).into_response()
}

/// The wall clock of the paused runtime, for HTTP dates.
pub(crate) fn http_date(offset: Duration) -> String {
    httpdate::fmt_http_date(TokioClock::new().wall() + offset)
}

pub(crate) async fn start() -> (Arc<Server>, url::Url) {
    let server = Arc::new(Server::default());
    let app = Router::new()
        .route("/data", get(data).post(data))
        .route("/hang", get(hang).post(hang))
        .route("/moved", get(moved))
        .route("/scope", get(scope))
        .route("/upload", post(upload))
        .with_state(Arc::clone(&server));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (server, format!("http://{addr}/").parse().unwrap())
}
