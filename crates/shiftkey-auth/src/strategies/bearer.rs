//! Bearer login: credentials POSTed to a login endpoint, renewed by logging in again.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use url::Url;

use crate::{
    AuthError, AuthStrategy, Clock, ConfigError, Secret, TokenSet, TokioClock, TransientKind, wire,
};

/// How the credentials are encoded in the login request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum BodyFormat {
    /// A JSON object of the fields (default).
    #[default]
    Json,
    /// `application/x-www-form-urlencoded`.
    Form,
}

/// Where to log in and where the answer keeps the token.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BearerLoginConfig {
    /// The login endpoint.
    pub login_url: Url,
    /// Credential fields to post, for example `username` and `password`, or `api_key`.
    pub fields: Vec<(String, Secret)>,
    /// How the fields are encoded.
    pub format: BodyFormat,
    /// JSON pointer (RFC 6901) of the token in the answer (default `/access_token`).
    pub token_pointer: String,
    /// JSON pointer of the lifetime in seconds (a number or a numeric string), if the server sends
    /// one (default `/expires_in`). When absent, a JWT token's `exp` is used, then `default_lifetime`.
    pub lifetime_pointer: Option<String>,
    /// Lifetime assumed when the server says nothing (default 1 h).
    pub default_lifetime: Duration,
    /// Allow an `http://` login URL that is not a loopback address (default false). A lab
    /// switch: the credentials then cross the network in clear text.
    pub allow_insecure_http: bool,
}

impl BearerLoginConfig {
    /// A config posting `fields` as JSON to `login_url`, with the defaults above.
    pub fn new(login_url: Url, fields: Vec<(String, Secret)>) -> Self {
        Self {
            login_url,
            fields,
            format: BodyFormat::Json,
            token_pointer: "/access_token".to_owned(),
            lifetime_pointer: Some("/expires_in".to_owned()),
            default_lifetime: Duration::from_secs(3600),
            allow_insecure_http: false,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if let Err(e) =
            wire::check_secure(&self.login_url, self.allow_insecure_http, "the login URL")
        {
            return Err(ConfigError::new("login_url", e.to_string()));
        }
        let pointer_ok = |p: &str| p.starts_with('/');
        if !pointer_ok(&self.token_pointer) {
            return Err(ConfigError::new(
                "token_pointer",
                format!(
                    "`{}` is not a JSON pointer (it must start with `/`)",
                    self.token_pointer
                ),
            ));
        }
        if let Some(p) = &self.lifetime_pointer
            && !pointer_ok(p)
        {
            return Err(ConfigError::new(
                "lifetime_pointer",
                format!("`{p}` is not a JSON pointer (it must start with `/`)"),
            ));
        }
        if self.default_lifetime.is_zero() {
            return Err(ConfigError::new(
                "default_lifetime",
                "must be greater than zero",
            ));
        }
        Ok(())
    }
}

/// Logs in with user name and password (or an API key) at a login endpoint and reads the token
/// from the JSON answer; renews by logging in again.
///
/// Give it a reqwest client that follows no redirects and has a timeout: a redirect answer is
/// then an error, never the credentials posted again to another address. Answers over 1 MiB are
/// refused unread.
///
/// # Example
/// ```
/// use shiftkey_auth::strategies::{BearerLogin, BearerLoginConfig};
///
/// let mut cfg = BearerLoginConfig::new(
///     "https://mes.example.com/api/login".parse()?,
///     vec![("username".into(), "svc".into()), ("password".into(), "pa55".into())],
/// );
/// cfg.token_pointer = "/data/token".into();
/// let strategy = BearerLogin::new(reqwest::Client::new(), cfg)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct BearerLogin {
    http: reqwest::Client,
    cfg: BearerLoginConfig,
    clock: Arc<dyn Clock>,
}

impl BearerLogin {
    /// A login strategy; the JSON pointers are checked here.
    pub fn new(http: reqwest::Client, cfg: BearerLoginConfig) -> Result<Self, ConfigError> {
        cfg.validate()?;
        Ok(Self {
            http,
            cfg,
            clock: Arc::new(TokioClock::new()),
        })
    }

    /// The clock for `Retry-After` dates and JWT `exp` without `iat` (default [`TokioClock`]).
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }
}

fn invalid(detail: String) -> AuthError {
    AuthError::transient(TransientKind::InvalidResponse, detail)
}

#[async_trait]
impl AuthStrategy for BearerLogin {
    async fn acquire(&self, _previous: Option<&TokenSet>) -> Result<TokenSet, AuthError> {
        let fields: Vec<(&str, &str)> = self
            .cfg
            .fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.expose()))
            .collect();
        let request = self.http.post(self.cfg.login_url.clone());
        let request = match self.cfg.format {
            BodyFormat::Json => {
                let body: serde_json::Map<String, serde_json::Value> = fields
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(*v)))
                    .collect();
                request.json(&body)
            }
            BodyFormat::Form => request.form(&fields),
        };
        let response = request.send().await.map_err(wire::transport_error)?;
        let status = response.status();
        let headers = response.headers().clone();
        if status.is_redirection() {
            return Err(wire::redirected(status, &headers, &self.cfg.login_url));
        }
        let (body, too_large) = wire::read_bounded(response, wire::MAX_ANSWER)
            .await
            .map_err(wire::transport_error)?;
        if too_large {
            return Err(invalid(format!(
                "the answer of the login endpoint {} is larger than the {} KiB limit",
                wire::endpoint(&self.cfg.login_url),
                wire::MAX_ANSWER / 1024
            )));
        }
        let now_wall = self.clock.wall();
        if !status.is_success() {
            return Err(wire::classify_failure(status, &headers, &body, now_wall));
        }
        let json: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
            invalid(format!(
                "login answer from {} is not JSON: {e}",
                self.cfg.login_url.path()
            ))
        })?;
        let access = json
            .pointer(&self.cfg.token_pointer)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                invalid(format!(
                    "login answer has no non-empty string at `{}`",
                    self.cfg.token_pointer
                ))
            })?;
        let expires_in = self
            .cfg
            .lifetime_pointer
            .as_deref()
            .and_then(|p| json.pointer(p).map(|v| (p, v)))
            .and_then(|(p, v)| wire::json_seconds(v, p))
            .and_then(wire::seconds);
        let (lifetime, source) =
            wire::lifetime(expires_in, access, self.cfg.default_lifetime, now_wall);
        let mut token = TokenSet::new(access, lifetime, self.clock.now(), now_wall);
        token.lifetime_source = source;
        token.server_date = wire::server_date(&headers);
        Ok(token)
    }

    fn name(&self) -> &str {
        "bearer-login"
    }
}
