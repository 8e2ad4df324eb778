//! [`TcClientBuilder`]: the one recipe for a [`TcClient`]. The binary, the soak and the tests
//! build their clients with it, so a session is put together the same way everywhere: a login
//! on demand (a session holds a process of the server's pool), the `JSESSIONID` cookie, the
//! Teamcenter classifier and the pool's idle limit as a learned limit; or, in gateway mode,
//! bearer tokens from a manager of the caller's.

use std::sync::Arc;
use std::time::Duration;

use shiftkey_auth::timing::RefreshConfig;
use shiftkey_auth::{AuthStrategy, Clock, ServerLimits, TokenManager, TokioClock};
use shiftkey_http::{AuthMiddleware, Injector};
use shiftkey_policy::ErrorRateMonitor;
use url::Url;

use crate::client::{Mode, TcClient};
use crate::session::{SessionConfig, SessionLogin, TcClassifier};

/// Wraps the session's login strategy (to time it, count it, or make it fail in a test).
pub type LoginWrapper = Box<dyn FnOnce(Arc<dyn AuthStrategy>) -> Arc<dyn AuthStrategy> + Send>;

enum Auth {
    Session(SessionConfig),
    Gateway { base: Url, manager: TokenManager },
}

/// Builds a [`TcClient`]: [`TcClient::builder`] for session mode,
/// [`TcClient::gateway_builder`] for gateway mode.
///
/// # Example
/// ```no_run
/// use shiftkey_teamcenter::{SessionConfig, TcClient};
///
/// # fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let cfg = SessionConfig::new("https://tc.example.com".parse()?, "mfg_sync", "pw".into());
/// let tc = TcClient::builder(reqwest::Client::new(), cfg)
///     .name("teamcenter")
///     .read_timeout(std::time::Duration::from_secs(30))
///     .build()?;
/// # Ok(()) }
/// ```
#[must_use]
pub struct TcClientBuilder {
    http: reqwest::Client,
    auth: Auth,
    clock: Arc<dyn Clock>,
    name: Option<String>,
    refresh: Option<RefreshConfig>,
    seed: Option<u64>,
    monitor: Option<Arc<ErrorRateMonitor>>,
    wrap_login: Option<LoginWrapper>,
    read_timeout: Option<Duration>,
    max_answer: Option<usize>,
}

impl std::fmt::Debug for TcClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcClientBuilder")
            .field("name", &self.name)
            .field("gateway", &matches!(self.auth, Auth::Gateway { .. }))
            .finish_non_exhaustive()
    }
}

impl TcClientBuilder {
    fn new(http: reqwest::Client, auth: Auth) -> Self {
        Self {
            http,
            auth,
            clock: Arc::new(TokioClock::new()),
            name: None,
            refresh: None,
            seed: None,
            monitor: None,
            wrap_login: None,
            read_timeout: None,
            max_answer: None,
        }
    }

    pub(crate) fn session(http: reqwest::Client, cfg: SessionConfig) -> Self {
        Self::new(http, Auth::Session(cfg))
    }

    pub(crate) fn gateway(http: reqwest::Client, base: Url, manager: TokenManager) -> Self {
        Self::new(http, Auth::Gateway { base, manager })
    }

    /// The clock of the session's schedule, retries and learning (default tokio's): under a
    /// compressed clock a simulated day of sessions runs in a minute.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The name in logs and metrics (the `client` label).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The session's refresh schedule (session mode; a gateway manager has its own).
    pub fn refresh(mut self, cfg: RefreshConfig) -> Self {
        self.refresh = Some(cfg);
        self
    }

    /// The seed of the retry jitter (a reproducible run).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Feeds every call's outcome to `monitor` (the error-rate alerts).
    pub fn monitor(mut self, monitor: Arc<ErrorRateMonitor>) -> Self {
        self.monitor = Some(monitor);
        self
    }

    /// Wraps the session's login (session mode): to time it, count it, or hook it.
    pub fn wrap_login(
        mut self,
        wrap: impl FnOnce(Arc<dyn AuthStrategy>) -> Arc<dyn AuthStrategy> + Send + 'static,
    ) -> Self {
        self.wrap_login = Some(Box::new(wrap));
        self
    }

    /// The deadline of one attempt of a call ([`TcClient::with_read_timeout`]).
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = Some(timeout);
        self
    }

    /// The largest answer read ([`TcClient::with_max_answer`]).
    pub fn max_answer(mut self, bytes: usize) -> Self {
        self.max_answer = Some(bytes);
        self
    }

    /// The client. Must run inside a tokio runtime.
    ///
    /// # Errors
    /// A session configuration the token manager refuses.
    pub fn build(self) -> Result<TcClient, shiftkey_auth::ConfigError> {
        let (middleware, base, mode) = match self.auth {
            Auth::Session(cfg) => {
                let idle = cfg.idle_limit;
                let base = cfg.base.clone();
                let login: Arc<dyn AuthStrategy> = Arc::new(
                    SessionLogin::new(self.http.clone(), cfg).with_clock(Arc::clone(&self.clock)),
                );
                let login = match self.wrap_login {
                    Some(wrap) => wrap(login),
                    None => login,
                };
                // A session holds a server process of the pool: logged in when a call needs it
                // (a standby never does), logged out (`TcClient::end_session`) when done.
                let mut manager = TokenManager::builder(login)
                    .clock(Arc::clone(&self.clock))
                    .on_demand();
                if let Some(name) = &self.name {
                    manager = manager.name(name.clone());
                }
                if let Some(refresh) = self.refresh {
                    manager = manager.config(refresh);
                }
                let middleware = AuthMiddleware::builder(manager.build()?)
                    .injector(Injector::Cookie {
                        name: "JSESSIONID".to_owned(),
                    })
                    .learned(ServerLimits {
                        lifetime_cap: None,
                        idle_limit: Some(idle),
                    });
                (middleware, base, Mode::Session)
            }
            Auth::Gateway { base, manager } => {
                (AuthMiddleware::builder(manager), base, Mode::Gateway)
            }
        };
        let mut middleware = middleware
            .classifier(TcClassifier)
            .clock(Arc::clone(&self.clock));
        if let Some(name) = self.name {
            middleware = middleware.name(name);
        }
        if let Some(seed) = self.seed {
            middleware = middleware.seed(seed);
        }
        if let Some(monitor) = self.monitor {
            middleware = middleware.monitor(monitor);
        }
        let mut client = TcClient::with_middleware(self.http, middleware.build(), base, mode);
        if let Some(t) = self.read_timeout {
            client = client.with_read_timeout(t);
        }
        if let Some(bytes) = self.max_answer {
            client = client.with_max_answer(bytes);
        }
        Ok(client)
    }
}
