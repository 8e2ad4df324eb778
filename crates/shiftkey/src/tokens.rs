//! Named tokens (`[tokens.NAME]`): strategies and managers built from the config, each with its
//! own encrypted store file, and the `shiftkey token …` commands.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use async_trait::async_trait;
use shiftkey_auth::strategies::{
    BrowserLogin, ClientAuth, DeviceLogin, Discovery, JwtAlgorithm, LoginFlow, OAuthClient,
    OAuthPassword, OAuthRefresh, PrivateKeyJwt, ServiceAccount,
};
use shiftkey_auth::{
    AuthError, AuthStrategy, Clock, TokenManager, TokenSet, TokenStore, TokioClock,
};
use shiftkey_store::{FileStore, KeySource, PgStore};

use crate::config::{
    ClientAuthKind, Config, SigningAlg, StoreBackend, StoreConfig, TokenConfig, TokenKind,
};

/// The store key from `[store]`.
pub(crate) fn key_source(store: &StoreConfig) -> anyhow::Result<KeySource> {
    match (&store.key, &store.passphrase) {
        (Some(k), _) => {
            let text = k.resolve("store.key")?;
            Ok(KeySource::from_base64(text.expose(), "store.key")?)
        }
        (None, Some(p)) => Ok(KeySource::passphrase(p.resolve("store.passphrase")?)),
        (None, None) => bail!("set `store.key` or `store.passphrase`"),
    }
}

/// The store file of token `name` (a file store).
pub(crate) fn store_path(store: &StoreConfig, name: &str) -> anyhow::Result<PathBuf> {
    Ok(store.dir()?.join(format!("{name}.token")))
}

/// The store of token `name` as `[store]` says, and where it is (for messages). A file store's
/// folder is created private when missing; a PostgreSQL store connects (and creates its table).
pub(crate) async fn open_store(
    cfg: &Config,
    key: &KeySource,
    name: &str,
) -> anyhow::Result<(Arc<dyn TokenStore>, String)> {
    let store_cfg = store_config(cfg)?;
    match store_cfg.backend {
        StoreBackend::File => {
            ensure_private_dir(store_cfg.dir()?)?;
            let path = store_path(store_cfg, name)?;
            let shown = path.display().to_string();
            Ok((Arc::new(FileStore::new(path, key.clone())), shown))
        }
        StoreBackend::Postgres => {
            let url = cfg.store_url()?;
            let store = PgStore::connect(&url, name, key.clone())
                .await
                .with_context(|| format!("`store`: the PostgreSQL token store for `{name}`"))?;
            Ok((Arc::new(store), format!("PostgreSQL row `{name}`")))
        }
    }
}

/// The `[store]` section or an error naming it.
pub(crate) fn store_config(cfg: &Config) -> anyhow::Result<&StoreConfig> {
    cfg.store
        .as_ref()
        .context("this command needs a `[store]` section (see `shiftkey config example`)")
}

/// The `[tokens.NAME]` section or an error listing the names there are.
pub(crate) fn token_config<'a>(cfg: &'a Config, name: &str) -> anyhow::Result<&'a TokenConfig> {
    cfg.tokens
        .get(name)
        .ok_or_else(|| unknown_token(name, cfg.tokens.keys()))
}

/// "No token NAME" naming the configured ones (a configuration problem, exit 3).
fn unknown_token<'a>(name: &str, known: impl Iterator<Item = &'a String>) -> anyhow::Error {
    let names: Vec<&str> = known.map(String::as_str).collect();
    let detail = if names.is_empty() {
        format!("no token `{name}`: the config has no `[tokens.*]` sections")
    } else {
        format!(
            "no token `{name}` in the config (configured: {})",
            names.join(", ")
        )
    };
    anyhow::Error::new(crate::config::ConfigProblem(detail))
}

/// The OAuth client of a token section.
pub(crate) fn oauth_client(
    http: &reqwest::Client,
    name: &str,
    t: &TokenConfig,
    allow_insecure_http: bool,
) -> anyhow::Result<OAuthClient> {
    let key = |field: &str| format!("tokens.{name}.{field}");
    let url = t
        .token_url
        .parse()
        .with_context(|| format!("`{}` is not a URL", key("token_url")))?;
    let secret = |field: &str, s: &Option<crate::config::SecretRef>| {
        s.as_ref()
            .with_context(|| format!("`{}` is missing", key(field)))
            .and_then(|s| s.resolve(&key(field)))
    };
    let auth = match t.client_auth {
        ClientAuthKind::Basic => {
            ClientAuth::SecretBasic(secret("client_secret", &t.client_secret)?)
        }
        ClientAuthKind::Post => ClientAuth::SecretPost(secret("client_secret", &t.client_secret)?),
        ClientAuthKind::PrivateKeyJwt => {
            let pem = t
                .private_key
                .as_ref()
                .with_context(|| format!("`{}` is missing", key("private_key")))?
                .resolve_text(&key("private_key"))?;
            let alg = match t.signing_alg {
                SigningAlg::RS256 => JwtAlgorithm::RS256,
                SigningAlg::PS256 => JwtAlgorithm::PS256,
                SigningAlg::ES256 => JwtAlgorithm::ES256,
            };
            let mut signer =
                PrivateKeyJwt::from_pem(pem.expose().as_bytes(), alg).with_context(|| {
                    format!(
                        "`{}` (a {:?} key is expected: `{}`)",
                        key("private_key"),
                        t.signing_alg,
                        key("signing_alg")
                    )
                })?;
            if let Some(kid) = &t.key_id {
                signer = signer.with_kid(kid.clone());
            }
            ClientAuth::PrivateKeyJwt(signer)
        }
        ClientAuthKind::None => ClientAuth::None,
    };
    Ok(
        OAuthClient::new(http.clone(), url, t.client_id.clone(), auth)
            .with_scopes(t.scopes.clone())
            .allow_insecure_http(allow_insecure_http),
    )
}

/// The strategy of a token section, timed for `/metrics` and the alert monitor.
pub(crate) fn strategy(
    http: &reqwest::Client,
    name: &str,
    t: &TokenConfig,
    allow_insecure_http: bool,
) -> anyhow::Result<Timed> {
    let client = oauth_client(http, name, t, allow_insecure_http)?;
    let inner: Arc<dyn AuthStrategy> = match t.kind {
        TokenKind::ClientCredentials => Arc::new(ServiceAccount::new(client)),
        TokenKind::Password => {
            let user = t
                .username
                .clone()
                .with_context(|| format!("`tokens.{name}.username` is missing"))?;
            let password = t
                .password
                .as_ref()
                .with_context(|| format!("`tokens.{name}.password` is missing"))?
                .resolve(&format!("tokens.{name}.password"))?;
            // Rotated refresh tokens first; the password grant only when the chain is lost.
            Arc::new(
                OAuthRefresh::new(client.clone())
                    .with_fallback(OAuthPassword::new(client, user, password)),
            )
        }
        // Rotated refresh tokens from the stored one; when the chain is lost, only a person can
        // start a new one, and the error says how.
        TokenKind::RefreshToken => Arc::new(NeedsLogin {
            name: name.to_owned(),
            refresh: OAuthRefresh::new(client),
        }),
    };
    Ok(Timed::wrap(name, inner))
}

/// A `refresh_token` chain: the rotating refresh tokens, and when the chain ends (none stored,
/// or the server refuses it) the same error kind with the command that starts a new one. The
/// kind is kept: the manager re-reads the store on `invalid_grant` (another process may have
/// rotated the token), which a different kind would skip.
#[derive(Debug)]
struct NeedsLogin {
    name: String,
    refresh: OAuthRefresh,
}

#[async_trait]
impl AuthStrategy for NeedsLogin {
    async fn acquire(&self, previous: Option<&TokenSet>) -> Result<TokenSet, AuthError> {
        match self.refresh.acquire(previous).await {
            Err(AuthError::Permanent { kind, detail }) => Err(AuthError::permanent(
                kind,
                format!(
                    "{detail}; a person starts a new chain with `shiftkey token login {}`",
                    self.name
                ),
            )),
            other => other,
        }
    }

    fn name(&self) -> &str {
        self.refresh.name()
    }
}

/// Called after every acquire with its outcome and latency (feeds the alert monitor).
pub(crate) type RefreshHook = Arc<dyn Fn(bool, Duration) + Send + Sync>;

/// A strategy that records each acquire's latency and outcome as metrics.
pub(crate) struct Timed {
    name: String,
    inner: Arc<dyn AuthStrategy>,
    clock: Arc<dyn Clock>,
    on_refresh: Option<RefreshHook>,
}

impl std::fmt::Debug for Timed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timed")
            .field("name", &self.name)
            .field("strategy", &self.inner.name())
            .finish_non_exhaustive()
    }
}

impl Timed {
    /// Times `inner` under the metric label `name`.
    pub(crate) fn wrap(name: &str, inner: Arc<dyn AuthStrategy>) -> Self {
        Self {
            name: name.to_owned(),
            inner,
            clock: Arc::new(TokioClock::new()),
            on_refresh: None,
        }
    }

    /// Also calls `hook` after every acquire.
    pub(crate) fn with_hook(mut self, hook: RefreshHook) -> Self {
        self.on_refresh = Some(hook);
        self
    }
}

#[async_trait]
impl AuthStrategy for Timed {
    async fn acquire(&self, previous: Option<&TokenSet>) -> Result<TokenSet, AuthError> {
        if crate::supervise::hook_names(&format!("refresher:{}", self.name)) {
            panic!(
                "{}: this refresher was asked to die",
                crate::supervise::PANIC_TASK_ENV
            );
        }
        let started = self.clock.now();
        let result = self.inner.acquire(previous).await;
        let took = self.clock.now() - started;
        metrics::histogram!("shiftkey_token_acquire_duration_seconds", "token" => self.name.clone())
            .record(took.as_secs_f64());
        if result.is_err() {
            metrics::counter!("shiftkey_token_refresh_failures_total", "token" => self.name.clone())
                .increment(1);
        }
        if let Some(hook) = &self.on_refresh {
            hook(result.is_ok(), took);
        }
        result
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn unattended(&self) -> bool {
        self.inner.unattended()
    }
}

/// Every configured token's manager, by name.
#[derive(Default)]
pub(crate) struct Tokens {
    pub(crate) managers: BTreeMap<String, TokenManager>,
}

impl Tokens {
    /// Builds a manager per `[tokens.NAME]`, each on its own store file or row.
    pub(crate) async fn build(
        cfg: &Config,
        http: &reqwest::Client,
        hook: Option<RefreshHook>,
    ) -> anyhow::Result<Self> {
        Self::build_some(cfg, http, hook, None).await
    }

    /// Builds the manager of `name` only: a command about one token neither reads the secrets
    /// of the others nor fails on them.
    pub(crate) async fn build_one(
        cfg: &Config,
        http: &reqwest::Client,
        name: &str,
    ) -> anyhow::Result<Self> {
        token_config(cfg, name)?;
        Self::build_some(cfg, http, None, Some(name)).await
    }

    async fn build_some(
        cfg: &Config,
        http: &reqwest::Client,
        hook: Option<RefreshHook>,
        only: Option<&str>,
    ) -> anyhow::Result<Self> {
        let mut managers = BTreeMap::new();
        if cfg.tokens.is_empty() {
            return Ok(Self { managers });
        }
        // Without a `[store]` (only grants that can always be obtained again), tokens live in
        // memory.
        let key = cfg.store.as_ref().map(key_source).transpose()?;
        for (name, t) in &cfg.tokens {
            if only.is_some_and(|o| o != name) {
                continue;
            }
            let mut strategy = strategy(http, name, t, cfg.allow_insecure_http)?;
            if let Some(h) = &hook {
                strategy = strategy.with_hook(Arc::clone(h));
            }
            let mut builder = TokenManager::builder(strategy).name(name.clone());
            if let Some(key) = &key {
                builder = builder.store(open_store(cfg, key, name).await?.0);
            }
            let manager = builder
                .build()
                .with_context(|| format!("`tokens.{name}`"))?;
            managers.insert(name.clone(), manager);
        }
        Ok(Self { managers })
    }

    /// The manager of `name`, or an error listing the names there are.
    pub(crate) fn get(&self, name: &str) -> anyhow::Result<&TokenManager> {
        self.managers
            .get(name)
            .ok_or_else(|| unknown_token(name, self.managers.keys()))
    }
}

/// Creates `dir` (0700) when missing; refuses one that is not private: a symbolic link, owned by
/// another user, or with any group or other permission bit. The message says how to fix it.
pub(crate) fn ensure_private_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    Ok(shiftkey_sidecar::unix::ensure_private_dir(dir)?)
}

/// The TLS acceptor of `broker.https`: the certificate chain file and the key secret.
pub(crate) fn broker_tls(cfg: &Config) -> anyhow::Result<shiftkey_sidecar::tls::TlsAcceptor> {
    let (Some(cert), Some(key)) = (&cfg.broker.tls_cert, &cfg.broker.tls_key) else {
        anyhow::bail!("`broker.https` needs `broker.tls_cert` and `broker.tls_key`");
    };
    let chain = std::fs::read(cert)
        .with_context(|| format!("`broker.tls_cert`: cannot read {}", cert.display()))?;
    let key = key.resolve_text("broker.tls_key")?;
    shiftkey_sidecar::tls::acceptor(&chain, key.expose().as_bytes())
        .with_context(|| format!("`broker.tls_cert` {} and `broker.tls_key`", cert.display()))
}

/// The broker's HTTP clients (`[broker.clients.NAME]`), their secrets resolved.
pub(crate) fn broker_clients(cfg: &Config) -> anyhow::Result<shiftkey_sidecar::broker::HttpAuth> {
    let clients = cfg
        .broker
        .clients
        .iter()
        .map(|(name, c)| {
            Ok(shiftkey_sidecar::broker::HttpClient {
                name: name.clone(),
                secret: c.secret.resolve(&format!("broker.clients.{name}.secret"))?,
                tokens: c.tokens.clone(),
            })
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(shiftkey_sidecar::broker::HttpAuth::new(clients))
}

/// `token` subcommands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum TokenCommand {
    /// Show every configured token's stored state: expiry, generation, learned limits (never
    /// the token).
    Status {
        /// The configuration file.
        #[arg(short, long, default_value = "shiftkey.toml")]
        config: PathBuf,
    },
    /// Get a new token for NAME now (the old one is replaced in the store).
    Refresh {
        /// The token's name (`[tokens.NAME]`).
        name: String,
        /// The configuration file.
        #[arg(short, long, default_value = "shiftkey.toml")]
        config: PathBuf,
    },
    /// Print NAME's access token on stdout, for shell scripts: from the running broker when
    /// there is one, else from the store (refreshed when due).
    Get {
        /// The token's name (`[tokens.NAME]`).
        name: String,
        /// The configuration file.
        #[arg(short, long, default_value = "shiftkey.toml")]
        config: PathBuf,
    },
    /// Log in once, as a person, for NAME's refresh token (kind = "refresh_token"): the device
    /// grant (a code typed on any device with a browser) or, where the server offers only that, a
    /// browser on this host with PKCE. The token is stored, never printed; the daemon keeps it
    /// alive from then on.
    Login {
        /// The token's name (`[tokens.NAME]`).
        name: String,
        /// The configuration file.
        #[arg(short, long, default_value = "shiftkey.toml")]
        config: PathBuf,
        /// The flow: `auto` (the server's metadata decides), `device` or `browser`.
        #[arg(long, value_enum, default_value = "auto")]
        flow: FlowChoice,
        /// How long to wait for the person, in seconds.
        #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..=86_400))]
        wait_secs: u64,
    },
    /// Revoke NAME at the server (when `revoke_url` is set) and delete it from the store.
    Revoke {
        /// The token's name (`[tokens.NAME]`).
        name: String,
        /// The configuration file.
        #[arg(short, long, default_value = "shiftkey.toml")]
        config: PathBuf,
    },
}

/// Which interactive login `token login` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum FlowChoice {
    /// The device grant when the server offers it, else the browser.
    Auto,
    /// The device authorization grant (RFC 8628).
    Device,
    /// The authorization code grant with PKCE and a loopback redirect.
    Browser,
}

/// Runs a `token` subcommand.
pub(crate) async fn command(cmd: TokenCommand) -> anyhow::Result<ExitCode> {
    let http = crate::net::credential_client()?;
    match cmd {
        TokenCommand::Status { config } => {
            let cfg = Config::load(&config)?;
            status(&cfg).await
        }
        TokenCommand::Login {
            name,
            config,
            flow,
            wait_secs,
        } => {
            let cfg = Config::load(&config)?;
            login(&cfg, &http, &name, flow, Duration::from_secs(wait_secs)).await
        }
        TokenCommand::Refresh { name, config } => {
            let cfg = Config::load(&config)?;
            let tokens = Tokens::build_one(&cfg, &http, &name).await?;
            let manager = tokens.get(&name)?;
            let before = manager
                .token()
                .await
                .with_context(|| format!("token `{name}`"))?;
            manager.invalidate(before.generation());
            let after = manager
                .token()
                .await
                .with_context(|| format!("token `{name}`"))?;
            println!(
                "{name}: refreshed, generation {} → {}",
                before.generation(),
                after.generation()
            );
            manager.shutdown().await;
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::Get { name, config } => {
            let cfg = Config::load(&config)?;
            token_config(&cfg, &name)?;
            // No socket path (no `broker.socket`, no XDG_RUNTIME_DIR): no broker to ask.
            let asked = match cfg.broker.socket_path() {
                Ok(socket) => shiftkey_sidecar::broker::ask(&socket, &name).await?,
                Err(_) => None,
            };
            if let Some(token) = asked {
                println!("{}", token.expose());
                return Ok(ExitCode::SUCCESS);
            }
            let tokens = Tokens::build_one(&cfg, &http, &name).await?;
            let manager = tokens.get(&name)?;
            let token = manager
                .token()
                .await
                .with_context(|| format!("token `{name}`"))?;
            let printed = manager.with_token(|t| println!("{}", t.access_token.expose()));
            drop(token);
            manager.shutdown().await;
            printed.with_context(|| format!("token `{name}`: no servable token"))?;
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::Revoke { name, config } => {
            let cfg = Config::load(&config)?;
            revoke(&cfg, &http, &name).await
        }
    }
}

async fn status(cfg: &Config) -> anyhow::Result<ExitCode> {
    if cfg.tokens.is_empty() {
        println!("no tokens configured (add a `[tokens.NAME]` section)");
        return Ok(ExitCode::SUCCESS);
    }
    let store_cfg = store_config(cfg)?;
    let key = key_source(store_cfg)?;
    #[allow(
        clippy::disallowed_methods,
        reason = "status shows real wall-clock expiry"
    )]
    let now = SystemTime::now();
    let mut bad = false;
    for name in cfg.tokens.keys() {
        // A file is verified (its permissions and key too); a row is read.
        let (loaded, place) = match store_cfg.backend {
            StoreBackend::File => {
                let path = store_path(store_cfg, name)?;
                let store = FileStore::new(&path, key.clone());
                (store.verify().await, path.display().to_string())
            }
            StoreBackend::Postgres => match open_store(cfg, &key, name).await {
                Ok((store, place)) => (store.load().await, place),
                Err(e) => {
                    bad = true;
                    println!("{name}: unreadable: {}", crate::causes(&e));
                    continue;
                }
            },
        };
        match loaded {
            Ok(None) => println!("{name}: none stored yet ({place})"),
            Ok(Some(t)) => {
                let left = t.remaining(now);
                let state = if left.is_zero() { "expired" } else { "valid" };
                println!(
                    "{name}: {state}, generation {}, expires in {}, lifetime {} ({}), refresh token {}{}{}",
                    t.generation,
                    human(left),
                    human(t.lifetime),
                    crate::words::lifetime_source(t.lifetime_source),
                    if t.refresh_token.is_some() {
                        "yes"
                    } else {
                        "no"
                    },
                    t.limits
                        .lifetime_cap
                        .map(|c| format!(", learned lifetime cap {}", human(c)))
                        .unwrap_or_default(),
                    t.limits
                        .idle_limit
                        .map(|c| format!(", learned idle timeout {}", human(c)))
                        .unwrap_or_default(),
                );
            }
            Err(e) => {
                bad = true;
                println!("{name}: unreadable: {e}");
            }
        }
    }
    Ok(if bad {
        ExitCode::from(crate::EXIT_STORE)
    } else {
        ExitCode::SUCCESS
    })
}

async fn revoke(cfg: &Config, http: &reqwest::Client, name: &str) -> anyhow::Result<ExitCode> {
    let t = token_config(cfg, name)?;
    let store_cfg = store_config(cfg)?;
    // Revoking deletes the stored token's file: a file store only for now (with PostgreSQL,
    // `store.dir()` says so and nothing is revoked).
    let path = store_path(store_cfg, name)?;
    let store = FileStore::new(&path, key_source(store_cfg)?);
    let mut guard = store.lock().await?;
    let Some(stored) = guard.load().await? else {
        guard.unlock().await?;
        println!("{name}: nothing stored, nothing to revoke");
        return Ok(ExitCode::SUCCESS);
    };
    if let Some(url) = &t.revoke_url {
        // RFC 7009: revoking the refresh token revokes its access tokens too.
        let (token, hint) = match &stored.refresh_token {
            Some(rt) => (rt.expose(), "refresh_token"),
            None => (stored.access_token.expose(), "access_token"),
        };
        let mut form = vec![("token", token), ("token_type_hint", hint)];
        let mut req = http.post(url.as_str());
        let secret = match t.client_auth {
            ClientAuthKind::Basic | ClientAuthKind::Post => Some(
                t.client_secret
                    .as_ref()
                    .with_context(|| format!("`tokens.{name}.client_secret` is missing"))?
                    .resolve(&format!("tokens.{name}.client_secret"))?,
            ),
            ClientAuthKind::PrivateKeyJwt | ClientAuthKind::None => None,
        };
        match (t.client_auth, &secret) {
            (ClientAuthKind::Basic, Some(secret)) => {
                req = req.basic_auth(&t.client_id, Some(secret.expose()));
            }
            (ClientAuthKind::Post, Some(secret)) => {
                form.push(("client_id", t.client_id.as_str()));
                form.push(("client_secret", secret.expose()));
            }
            _ => form.push(("client_id", t.client_id.as_str())),
        }
        let resp = req
            .form(&form)
            .send()
            .await
            .with_context(|| format!("revoking `{name}` at {url}"))?;
        if !resp.status().is_success() {
            bail!(
                "revoking `{name}`: {url} answered {}; the stored token is kept",
                resp.status()
            );
        }
    }
    std::fs::remove_file(&path).with_context(|| format!("cannot delete {}", path.display()))?;
    guard.unlock().await?;
    println!(
        "{name}: {}deleted from {}",
        if t.revoke_url.is_some() {
            "revoked at the server and "
        } else {
            "no revoke_url configured, so not revoked at the server; "
        },
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `token login NAME`: reads the issuer's metadata, runs the chosen flow, and stores the token
/// with its refresh token under the store's lock, one generation after what was there.
async fn login(
    cfg: &Config,
    http: &reqwest::Client,
    name: &str,
    flow: FlowChoice,
    wait: Duration,
) -> anyhow::Result<ExitCode> {
    let t = token_config(cfg, name)?;
    if t.kind != TokenKind::RefreshToken {
        return Err(anyhow::Error::new(crate::config::ConfigProblem(format!(
            "`tokens.{name}` is not kind = \"refresh_token\": only those are seeded by a login"
        ))));
    }
    let issuer_text = t
        .issuer
        .as_deref()
        .with_context(|| format!("`tokens.{name}.issuer` is missing"))?;
    let issuer: url::Url = issuer_text
        .parse()
        .with_context(|| format!("`tokens.{name}.issuer`: `{issuer_text}` is not a URL"))?;
    let client = oauth_client(http, name, t, cfg.allow_insecure_http)?;
    // The store first: a login the person has finished must not be lost to a store that
    // cannot be opened (a missing key, a folder without rights).
    let key = key_source(store_config(cfg)?)?;
    let (store, shown) = open_store(cfg, &key, name).await?;
    store
        .load()
        .await
        .with_context(|| format!("reading the stored token of `{name}` ({shown})"))?;
    let meta = Discovery::fetch(http, &issuer)
        .await
        .with_context(|| format!("reading the metadata of {issuer} (`tokens.{name}.issuer`)"))?;
    if meta.token_endpoint != *client.token_url() {
        bail!(
            "{issuer} names the token endpoint {}, but `tokens.{name}.token_url` is {}: make them equal",
            meta.token_endpoint,
            client.token_url()
        );
    }
    let chosen = match flow {
        FlowChoice::Device => LoginFlow::Device,
        FlowChoice::Browser => LoginFlow::Browser,
        // Device polling repeats one request, which a private_key_jwt assertion may not be.
        FlowChoice::Auto
            if t.client_auth == ClientAuthKind::PrivateKeyJwt
                && meta.flow() == Some(LoginFlow::Device)
                && meta.authorization_endpoint.is_some() =>
        {
            LoginFlow::Browser
        }
        FlowChoice::Auto => meta.flow().with_context(|| {
            format!(
                "{issuer} offers neither the device grant nor the authorization code grant with \
                 PKCE (S256): no interactive login is possible"
            )
        })?,
    };
    let run = async {
        match chosen {
            LoginFlow::Device => {
                let endpoint = meta
                    .device_authorization_endpoint
                    .as_ref()
                    .with_context(|| {
                        format!(
                            "{issuer} has no device authorization endpoint (try --flow browser)"
                        )
                    })?;
                let device = DeviceLogin::start(&client, endpoint).await?;
                // What the server sent goes to a terminal: no control characters.
                let shown = |s: &str| -> String { s.chars().filter(|c| !c.is_control()).collect() };
                match device.verification_uri_complete() {
                    Some(complete) => eprintln!(
                        "To log in for `{name}`, open {}\n(or open {} and enter the code {}).\nWaiting up to {} ...",
                        shown(complete),
                        shown(device.verification_uri()),
                        shown(device.user_code()),
                        human(device.expires_in().min(wait))
                    ),
                    None => eprintln!(
                        "To log in for `{name}`, open {} and enter the code {}.\nWaiting up to {} ...",
                        shown(device.verification_uri()),
                        shown(device.user_code()),
                        human(device.expires_in().min(wait))
                    ),
                }
                Ok(device.finish(&client).await?)
            }
            LoginFlow::Browser => {
                let endpoint = meta.authorization_endpoint.as_ref().with_context(|| {
                    format!("{issuer} has no authorization endpoint (try --flow device)")
                })?;
                browser_login(&client, endpoint, name).await
            }
        }
    };
    let token: shiftkey_auth::TokenSet = tokio::time::timeout(wait, run)
        .await
        .map_err(|_| anyhow::anyhow!("no login for `{name}` within {}", human(wait)))?
        .map_err(|e: anyhow::Error| e.context(format!("logging in for `{name}`")))?;
    if token.refresh_token.is_none() {
        bail!(
            "the server sent no refresh token for `{name}`: most servers need the scope \
             `offline_access` in `tokens.{name}.scopes`; nothing was stored"
        );
    }
    let mut guard = store.lock().await?;
    let previous = guard.load().await?;
    let limits = previous.as_ref().map(|p| p.limits).unwrap_or_default();
    let mut stored = shiftkey_auth::StoredToken::from_token(&token, limits);
    stored.generation = previous
        .as_ref()
        .map_or(1, |p| p.generation.saturating_add(1));
    guard.save(&stored).await?;
    guard.unlock().await?;
    println!(
        "{name}: logged in; the refresh token is stored in {shown} (generation {})",
        stored.generation
    );
    Ok(ExitCode::SUCCESS)
}

/// The browser flow: a loopback listener for the redirect, the address printed for the person.
async fn browser_login(
    client: &OAuthClient,
    endpoint: &url::Url,
    name: &str,
) -> anyhow::Result<shiftkey_auth::TokenSet> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .context("cannot listen on a loopback port for the login's redirect")?;
    let port = listener.local_addr()?.port();
    let redirect: url::Url = format!("http://127.0.0.1:{port}/callback").parse()?;
    let login = BrowserLogin::start(client, endpoint, redirect)?;
    eprintln!(
        "To log in for `{name}`, open this address in a browser on this host:\n{}\nWaiting ...",
        login.authorize_url()
    );
    let (tx, rx) = tokio::sync::oneshot::channel::<String>();
    let tx = Arc::new(std::sync::Mutex::new(Some(tx)));
    let state = login.state().to_owned();
    let app = axum::Router::new().route(
        "/callback",
        axum::routing::get(move |uri: axum::http::Uri| {
            let tx = Arc::clone(&tx);
            let state = state.clone();
            async move {
                let query = uri.query().unwrap_or_default().to_owned();
                // Only the redirect of this login ends the wait; a stray request does not.
                let ours = url::form_urlencoded::parse(query.as_bytes())
                    .any(|(k, v)| k == "state" && v == state.as_str());
                if !ours {
                    return (
                        axum::http::StatusCode::BAD_REQUEST,
                        "shiftkey: this is not the redirect of the login in progress.",
                    );
                }
                if let Some(tx) = tx.lock().ok().and_then(|mut t| t.take()) {
                    let _ = tx.send(query);
                }
                (
                    axum::http::StatusCode::OK,
                    "shiftkey received the answer; the terminal says whether the login succeeded.",
                )
            }
        }),
    );
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let query = rx.await;
    server.abort();
    let query = query.context("the redirect listener stopped before the browser came back")?;
    Ok(login.finish(client, &query).await?)
}

/// `1h 05m`, `4m 10s`, `12s`.
pub(crate) fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        _ => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
    }
}
