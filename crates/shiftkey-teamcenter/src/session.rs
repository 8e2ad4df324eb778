//! The Teamcenter session as a token: JSON SOA login, the `JSESSIONID` cookie, and the classifier
//! that recognises a dead session inside any answer.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};
use shiftkey_auth::{
    AuthError, AuthStrategy, Clock, PermanentKind, Secret, TokenSet, TokioClock, TransientKind,
};
use shiftkey_http::{BearerClassifier, Classifier, Verdict};
use url::Url;

use crate::error::TcError;
use crate::wire;

/// How to log in.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SessionConfig {
    /// The server, e.g. `https://tc.example.com` (the client adds `/tc/JsonRestServices/...`).
    pub base: Url,
    /// User id.
    pub user: String,
    /// Password (by reference in config; a secret here).
    pub password: Secret,
    /// Group (empty: the user's default).
    pub group: String,
    /// Role (empty: the default).
    pub role: String,
    /// Locale.
    pub locale: String,
    /// The `descrimator` (sic): sessions with the same user and descrimator share one server
    /// process. Default: unique per process. Each re-login appends `-N`: logging in again with
    /// the same value would re-attach to the old server process, whose hard timeout runs on.
    pub descrimator: String,
    /// Lifetime assumed for a session (it has no expiry on the wire): the pool's hard timeout,
    /// 8 h by default, until a shorter one is learned.
    pub hard_limit: Duration,
    /// Idle limit assumed until learned (the pool's soft timeout, 20 min by default).
    pub idle_limit: Duration,
    /// After a re-login, the previous session is logged out this much later (default 60 s), so
    /// requests still carrying it finish and its server process goes back to the pool.
    pub retire_after: Duration,
    /// Allow an `http://` base URL that is not a loopback address (default false). A lab switch:
    /// the password and the session cookie then cross the network in clear text.
    pub allow_insecure_http: bool,
}

/// The largest login answer read (1 MiB; a real one is a few kilobytes).
const MAX_LOGIN_ANSWER: usize = 1024 * 1024;

impl SessionConfig {
    /// A config with the defaults above.
    pub fn new(base: Url, user: impl Into<String>, password: Secret) -> Self {
        Self {
            base,
            user: user.into(),
            password,
            group: String::new(),
            role: String::new(),
            locale: "en_US".to_owned(),
            descrimator: format!("shiftkey-{}-{:x}", std::process::id(), rand_u32()),
            hard_limit: Duration::from_secs(8 * 3600),
            idle_limit: Duration::from_secs(20 * 60),
            retire_after: Duration::from_secs(60),
            allow_insecure_http: false,
        }
    }
}

fn rand_u32() -> u32 {
    rand::random()
}

fn server_date(headers: &reqwest::header::HeaderMap) -> Option<std::time::SystemTime> {
    headers
        .get(reqwest::header::DATE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
}

/// The `Core-2011-06-Session/login` strategy: the `JSESSIONID` cookie is the token.
///
/// Errors: `InvalidCredentialsException` is permanent (`BadCredentials`, with the code and any
/// Security Services hint); 429/5xx/`InternalServerException`/network are transient.
#[derive(Debug, Clone)]
pub struct SessionLogin {
    http: reqwest::Client,
    cfg: SessionConfig,
    clock: Arc<dyn Clock>,
    logins: Arc<AtomicU64>,
}

impl SessionLogin {
    /// A login strategy over `http` (a plain client: the login itself carries no session).
    pub fn new(http: reqwest::Client, cfg: SessionConfig) -> Self {
        Self {
            http,
            cfg,
            clock: Arc::new(TokioClock::new()),
            logins: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The clock (default [`TokioClock`]).
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Logs `session` out now, within [`crate::LOGOUT_DEADLINE`], so its server process goes
    /// back to the pool. Best effort: a failure, or a session that had died already (answered
    /// with XML), is logged at debug. Returns whether the server answered.
    ///
    /// # Example
    /// ```no_run
    /// # async fn demo(cfg: shiftkey_teamcenter::SessionConfig) {
    /// use shiftkey_auth::AuthStrategy as _;
    /// let login = shiftkey_teamcenter::SessionLogin::new(reqwest::Client::new(), cfg);
    /// if let Ok(session) = login.acquire(None).await {
    ///     // … calls with the session's cookie …
    ///     login.logout(&session).await;
    /// }
    /// # }
    /// ```
    pub async fn logout(&self, session: &TokenSet) -> bool {
        send_logout(&self.http, &self.cfg.base, session).await
    }

    /// Logs the previous session out after `retire_after`, in the background, best effort (a
    /// session that already died answers with an error, which changes nothing).
    fn retire(&self, old: &TokenSet) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (http, clock, grace, base) = (
            self.http.clone(),
            Arc::clone(&self.clock),
            self.cfg.retire_after,
            self.cfg.base.clone(),
        );
        let old = old.clone();
        rt.spawn(async move {
            clock.sleep(grace).await;
            send_logout(&http, &base, &old).await;
        });
    }

    fn invalid(detail: impl Into<String>) -> AuthError {
        AuthError::transient(TransientKind::InvalidResponse, detail)
    }
}

/// `Core-2006-03-Session/logout` with `session`'s cookie, through `http` (a client without the
/// session middleware: a dead session must not log in again to log out), within
/// [`crate::LOGOUT_DEADLINE`]; logged at debug. Whether the server answered.
pub(crate) async fn send_logout(http: &reqwest::Client, base: &Url, session: &TokenSet) -> bool {
    let Ok(url) = base.join("/tc/JsonRestServices/Core-2006-03-Session/logout") else {
        return false;
    };
    // The session's cookie, in a buffer zeroized when the request is done with it.
    let Some(cookie) =
        shiftkey_http::secret_header_value(&["JSESSIONID=", session.access_token.expose()])
    else {
        return false;
    };
    let sent = tokio::time::timeout(
        crate::LOGOUT_DEADLINE,
        http.post(url)
            .header(reqwest::header::COOKIE, cookie)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(wire::envelope(json!({})).to_string())
            .send(),
    )
    .await;
    match sent {
        Ok(Ok(r)) => {
            tracing::debug!(
                status = r.status().as_u16(),
                generation = session.generation,
                "logged out of Teamcenter"
            );
            true
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e.without_url(), "Teamcenter logout failed");
            false
        }
        Err(_) => {
            tracing::debug!(
                "Teamcenter logout: no answer within {} s",
                crate::LOGOUT_DEADLINE.as_secs()
            );
            false
        }
    }
}

#[async_trait]
impl AuthStrategy for SessionLogin {
    async fn acquire(&self, previous: Option<&TokenSet>) -> Result<TokenSet, AuthError> {
        let c = &self.cfg;
        // A fresh server process per login: the same descrimator would re-attach to the old one.
        let n = self.logins.fetch_add(1, Ordering::Relaxed);
        let descrimator = if n == 0 {
            c.descrimator.clone()
        } else {
            format!("{}-{n}", c.descrimator)
        };
        let url = c
            .base
            .join("/tc/JsonRestServices/Core-2011-06-Session/login")
            .map_err(|e| {
                AuthError::permanent(PermanentKind::Configuration, format!("base URL: {e}"))
            })?;
        let plain = url.scheme() != "https";
        if plain && !(c.allow_insecure_http || shiftkey_auth::is_loopback(&url)) {
            return Err(AuthError::permanent(
                PermanentKind::Configuration,
                format!(
                    "the Teamcenter URL {}://{} would send the password over `{}`: use https (or, \
                     in a lab only, set `allow_insecure_http = true`)",
                    url.scheme(),
                    url.host_str().unwrap_or_default(),
                    url.scheme()
                ),
            ));
        }
        let body = wire::envelope(json!({"credentials": {
            "user": c.user, "password": c.password.expose(), "group": c.group, "role": c.role, "locale": c.locale, "descrimator": descrimator
        }}));
        let response = self.http.post(url).json(&body).send().await.map_err(|e| {
            AuthError::transient(
                TransientKind::Network,
                shiftkey_auth::Transport::describe(e),
            )
        })?;
        let status = response.status();
        let headers = response.headers().clone();
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(AuthError::Transient {
                kind: TransientKind::RateLimited,
                detail: "login: HTTP 429".into(),
                // Both Retry-After forms, against the server's Date, clamped to an hour.
                retry_after: headers
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| {
                        shiftkey_policy::parse_retry_after(
                            v,
                            server_date(&headers),
                            self.clock.wall(),
                            Duration::from_secs(3600),
                        )
                    }),
            });
        }
        if status.is_redirection() {
            return Err(AuthError::permanent(
                PermanentKind::Configuration,
                format!(
                    "login answered HTTP {} (a redirect): the password is never re-sent to a \
                     redirect target; configure the final Teamcenter URL",
                    status.as_u16()
                ),
            ));
        }
        let mut response = response;
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| {
            AuthError::transient(
                TransientKind::Network,
                shiftkey_auth::Transport::describe(e),
            )
        })? {
            if bytes.len() + chunk.len() > MAX_LOGIN_ANSWER {
                return Err(AuthError::transient(
                    TransientKind::InvalidResponse,
                    format!(
                        "the login answer is larger than the {} KiB limit",
                        MAX_LOGIN_ANSWER / 1024
                    ),
                ));
            }
            bytes.extend_from_slice(&chunk);
        }
        let answer: Value = match serde_json::from_slice(&bytes) {
            Ok(v) => v,
            Err(_) if status.is_server_error() => {
                return Err(AuthError::transient(
                    TransientKind::ServerError(status.as_u16()),
                    format!("login: HTTP {status}"),
                ));
            }
            Err(e) => {
                return Err(Self::invalid(format!(
                    "login answer is not JSON (HTTP {status}): {e}"
                )));
            }
        };
        match wire::check_exception(&answer) {
            Ok(()) => {}
            Err(e @ TcError::InvalidCredentials { .. }) => {
                return Err(AuthError::permanent(
                    PermanentKind::BadCredentials,
                    e.to_string(),
                ));
            }
            Err(e) => {
                return Err(AuthError::transient(
                    TransientKind::TemporarilyUnavailable,
                    format!("login: {e}"),
                ));
            }
        }
        if status.is_server_error() {
            return Err(AuthError::transient(
                TransientKind::ServerError(status.as_u16()),
                format!("login: HTTP {status}"),
            ));
        }
        let session = headers
            .get_all(reqwest::header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| v.split(';').next())
            .find_map(|kv| kv.trim().strip_prefix("JSESSIONID=").map(str::to_owned))
            .filter(|s| !s.is_empty())
            .ok_or_else(|| Self::invalid("login succeeded but set no JSESSIONID cookie"))?;
        let mut token = TokenSet::new(session, c.hard_limit, self.clock.now(), self.clock.wall());
        token.token_type = "JSESSIONID".to_owned();
        token.lifetime_source = shiftkey_auth::LifetimeSource::Default;
        token.server_date = server_date(&headers);
        tracing::info!(user = %c.user, descrimator = %descrimator, server = answer["serverInfo"]["TcServerID"].as_str().unwrap_or(""), "Teamcenter login");
        if let Some(old) =
            previous.filter(|p| p.access_token.expose() != token.access_token.expose())
        {
            self.retire(old);
        }
        Ok(token)
    }

    fn name(&self) -> &str {
        "teamcenter-session"
    }
}

/// Recognises a dead Teamcenter session whatever the HTTP status: an `InvalidUserException` in
/// the body (read and handed back rebuilt), or a gateway's 401 bearer challenge.
///
/// Only the first 64 KiB are read: the exception is a few hundred bytes, so a longer
/// answer is accepted and handed back with its head put back in front of the rest, still
/// streaming (a proxy passing a large answer through never holds it).
#[derive(Debug, Clone, Copy, Default)]
pub struct TcClassifier;

/// How much of an answer [`TcClassifier`] reads to look for the exception.
const PEEK: usize = 64 * 1024;

#[async_trait]
impl Classifier for TcClassifier {
    async fn classify(
        &self,
        mut response: reqwest::Response,
    ) -> Result<(Verdict, reqwest::Response), reqwest::Error> {
        let bearer = BearerClassifier::verdict(response.status(), response.headers());
        if bearer == Verdict::Refresh {
            return Ok((bearer, response));
        }
        let status = response.status();
        let headers = response.headers().clone();
        let mut head = bytes::BytesMut::new();
        let mut ended = false;
        while head.len() <= PEEK {
            match response.chunk().await? {
                Some(chunk) => head.extend_from_slice(&chunk),
                None => {
                    ended = true;
                    break;
                }
            }
        }
        let head = head.freeze();
        let body = if ended {
            reqwest::Body::from(head.clone())
        } else {
            let first = futures_util::stream::iter([Ok::<_, reqwest::Error>(head.clone())]);
            reqwest::Body::wrap_stream(futures_util::StreamExt::chain(
                first,
                response.bytes_stream(),
            ))
        };
        // Parse only a whole body that can be the exception: large answers are parsed once, by
        // the caller.
        const NAME: &[u8] = b"InvalidUserException";
        let dead = ended
            && head.first() == Some(&b'{')
            && head.windows(NAME.len()).any(|w| w == NAME)
            && serde_json::from_slice::<Value>(&head).is_ok_and(|v| wire::is_invalid_user(&v));
        // An exception about the request itself under 5xx (an operation the server does not
        // have, a body it cannot read) is the server's final answer: not retried.
        let refusal = !dead
            && ended
            && status.is_server_error()
            && head.first() == Some(&b'{')
            && serde_json::from_slice::<Value>(&head).is_ok_and(|v| wire::is_request_refusal(&v));
        let mut rebuilt = http::Response::new(body);
        *rebuilt.status_mut() = status;
        *rebuilt.headers_mut() = headers;
        let verdict = if dead {
            Verdict::Refresh
        } else if refusal && bearer == Verdict::Accepted {
            Verdict::Answered
        } else {
            bearer
        };
        Ok((verdict, reqwest::Response::from(rebuilt)))
    }
}

#[cfg(test)]
mod classifier_tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use super::*;

    fn answer(chunks: Vec<Vec<u8>>) -> reqwest::Response {
        let stream = futures_util::stream::iter(chunks.into_iter().map(Ok::<_, std::io::Error>));
        reqwest::Response::from(http::Response::new(reqwest::Body::wrap_stream(stream)))
    }

    #[tokio::test]
    async fn a_long_answer_is_accepted_and_handed_back_whole() {
        let chunks: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 16 * 1024]).collect();
        let whole: Vec<u8> = chunks.concat();
        let (verdict, response) = TcClassifier.classify(answer(chunks)).await.unwrap();
        assert_eq!(verdict, Verdict::Accepted);
        assert_eq!(response.bytes().await.unwrap().to_vec(), whole);
    }

    #[tokio::test]
    async fn the_exception_in_pieces_is_a_dead_session() {
        let body = serde_json::to_vec(&json!({
            ".QName": "http://teamcenter.com/Schemas/Soa/2006-03/Exceptions.InvalidUserException",
            "code": 1000, "level": 3, "message": "User does not have a valid session.",
        }))
        .unwrap();
        let (a, b) = body.split_at(20);
        let (verdict, response) = TcClassifier
            .classify(answer(vec![a.to_vec(), b.to_vec()]))
            .await
            .unwrap();
        assert_eq!(verdict, Verdict::Refresh);
        assert_eq!(response.bytes().await.unwrap().to_vec(), body);
    }
}
