//! The configuration file: TOML with `SHIFTKEY_…` environment overrides (figment). Secrets only by
//! reference — an environment variable, a file, or a systemd credential; an inline secret is
//! refused with a hint. Only the binary reads config files and environment variables.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;
use shiftkey_auth::Secret;

/// A configuration problem: the file, a key, or a referenced secret (exit code 3).
#[derive(Debug)]
pub(crate) struct ConfigProblem(pub(crate) String);

impl std::fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigProblem {}

/// The whole configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// The Teamcenter server (needed by `run`, `sync` and the doctor's login check).
    #[serde(default)]
    pub(crate) teamcenter: Option<TeamcenterConfig>,
    /// The shop-floor database (needed by `run` and `sync`).
    #[serde(default)]
    pub(crate) sink: Option<SinkConfig>,
    #[serde(default)]
    pub(crate) schedule: ScheduleConfig,
    /// Where tokens are kept between runs (needed by `[tokens.*]`).
    #[serde(default)]
    pub(crate) store: Option<StoreConfig>,
    /// The leader lease: several `shiftkey run` processes, one syncing.
    #[serde(default)]
    pub(crate) lease: Option<LeaseConfig>,
    /// Named OAuth credentials the broker serves and `token` manages.
    #[serde(default)]
    pub(crate) tokens: std::collections::BTreeMap<String, TokenConfig>,
    /// The token broker.
    #[serde(default)]
    pub(crate) broker: BrokerConfig,
    /// Healing proxies for unchanged scripts, by name (`shiftkey proxy`, and `run`).
    #[serde(default)]
    pub(crate) proxy: std::collections::BTreeMap<String, ProxySection>,
    /// The ops HTTP server and alerts.
    #[serde(default)]
    pub(crate) ops: OpsConfig,
    /// Allow `http://` for credential-bearing URLs that are not loopback (default false). A lab
    /// switch, logged as a warning at start.
    #[serde(default)]
    pub(crate) allow_insecure_http: bool,
}

/// Where the encrypted tokens are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum StoreBackend {
    /// One file per named token, `<dir>/<name>.token` (one host).
    #[default]
    File,
    /// One row per named token in PostgreSQL, shared by every host (`url` or `url_env`).
    Postgres,
}

/// The encrypted token store: one file per named token, `<dir>/<name>.token`, or one PostgreSQL
/// row per token.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StoreConfig {
    #[serde(default)]
    pub(crate) backend: StoreBackend,
    /// The folder of the file store (`backend = "file"`).
    #[serde(default)]
    pub(crate) dir: Option<PathBuf>,
    /// The database (`backend = "postgres"`): a URL without a password...
    #[serde(default)]
    pub(crate) url: Option<String>,
    /// ... or an environment variable holding it.
    #[serde(default)]
    pub(crate) url_env: Option<String>,
    /// A raw 32-byte key, base64 (`shiftkey store init` makes one).
    #[serde(default)]
    pub(crate) key: Option<SecretRef>,
    /// Or a passphrase (Argon2id).
    #[serde(default)]
    pub(crate) passphrase: Option<SecretRef>,
}

/// How a named token is obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum TokenKind {
    /// OAuth `client_credentials` (a service account).
    ClientCredentials,
    /// OAuth `password`, then its rotated refresh tokens.
    Password,
    /// A refresh token a person got once with `shiftkey token login NAME` (the device grant or
    /// the browser with PKCE), then its rotated successors.
    RefreshToken,
}

/// How the client authenticates at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ClientAuthKind {
    /// `client_secret_basic`.
    #[default]
    Basic,
    /// `client_secret_post`.
    Post,
    /// `private_key_jwt`, signed with `signing_alg`.
    PrivateKeyJwt,
    /// A public client: only `client_id` is sent (device and browser logins of kind
    /// `refresh_token`).
    None,
}

/// The signature algorithm of `private_key_jwt` assertions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub(crate) enum SigningAlg {
    /// RSASSA-PKCS1-v1_5 with SHA-256 (an RSA key).
    #[default]
    RS256,
    /// RSASSA-PSS with SHA-256 (an RSA key).
    PS256,
    /// ECDSA P-256 with SHA-256 (an EC P-256 key).
    ES256,
}

/// One named token (`[tokens.NAME]`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokenConfig {
    pub(crate) kind: TokenKind,
    pub(crate) token_url: String,
    pub(crate) client_id: String,
    #[serde(default)]
    pub(crate) client_auth: ClientAuthKind,
    #[serde(default)]
    pub(crate) client_secret: Option<SecretRef>,
    /// The PEM private key for `private_key_jwt`.
    #[serde(default)]
    pub(crate) private_key: Option<SecretRef>,
    /// Its algorithm (default RS256).
    #[serde(default)]
    pub(crate) signing_alg: SigningAlg,
    /// The `kid` header of its assertions, when the server wants one.
    #[serde(default)]
    pub(crate) key_id: Option<String>,
    /// The issuer whose metadata `shiftkey token login` reads (kind `refresh_token`).
    #[serde(default)]
    pub(crate) issuer: Option<String>,
    /// The signing certificate (PEM); its expiry raises an alert 14 days ahead.
    #[serde(default)]
    pub(crate) certificate: Option<PathBuf>,
    /// When the client secret expires (`YYYY-MM-DD`), for the same alert.
    #[serde(default)]
    pub(crate) secret_expires: Option<String>,
    #[serde(default)]
    pub(crate) scopes: Vec<String>,
    #[serde(default)]
    pub(crate) username: Option<String>,
    #[serde(default)]
    pub(crate) password: Option<SecretRef>,
    /// RFC 7009 revocation endpoint, for `token revoke`.
    #[serde(default)]
    pub(crate) revoke_url: Option<String>,
}

/// The token broker (`shiftkey broker`).
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct BrokerConfig {
    /// The Unix socket (created 0600, its directory 0700). Default
    /// `$XDG_RUNTIME_DIR/shiftkey/broker.sock`; see [`BrokerConfig::socket_path`].
    pub(crate) socket: Option<PathBuf>,
    /// Optional loopback HTTP listener, e.g. `127.0.0.1:8732`.
    pub(crate) http: Option<String>,
    /// Optional HTTPS listener for scripts on other hosts, e.g. `0.0.0.0:8733`: with
    /// `tls_cert` and `tls_key`, clients authenticated by their secret as on `http`.
    pub(crate) https: Option<String>,
    /// The HTTPS listener's certificate chain (PEM, the server's certificate first).
    pub(crate) tls_cert: Option<PathBuf>,
    /// Its private key (PEM), by reference like every secret.
    pub(crate) tls_key: Option<SecretRef>,
    /// HTTP clients by name: each one's secret and the tokens it may get.
    pub(crate) clients: std::collections::BTreeMap<String, BrokerClient>,
}

/// One client of the broker's HTTP listener (`[broker.clients.NAME]`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BrokerClient {
    /// Its secret, by reference; at least [`MIN_CLIENT_SECRET`] bytes.
    pub(crate) secret: SecretRef,
    /// The `[tokens.NAME]` it may get; any other is refused (403).
    pub(crate) tokens: Vec<String>,
}

/// A healing proxy (`[proxy.NAME]`): a script points its base URL at `listen` (or `socket`) and
/// every request goes on to `upstream` with a fresh credential.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProxySection {
    /// A loopback address, e.g. `127.0.0.1:8181`; only `users` are served (their uid read from
    /// the kernel's socket table, Linux).
    pub(crate) listen: Option<String>,
    /// A Unix socket (its folder 0700, the socket 0600); only `users` are served.
    pub(crate) socket: Option<PathBuf>,
    /// The local users served, by name or uid (default: the service's own user). Anyone else
    /// gets 403.
    pub(crate) users: Option<Vec<String>>,
    /// Where requests go; the script's path is appended to this URL's path. A Teamcenter proxy
    /// goes to `teamcenter.url` (this may be left out, and must not differ).
    pub(crate) upstream: Option<String>,
    /// The `[tokens.NAME]` whose token goes on each request (`Authorization: Bearer`).
    pub(crate) token: Option<String>,
    /// `true`: the `[teamcenter]` session goes on each request, and the scripts' own
    /// `Session/login` and `logout` are answered by the proxy.
    #[serde(default)]
    pub(crate) teamcenter: bool,
    /// Teamcenter: the local accounts scripts log in with (`user = { env = … }`), each with its
    /// own secret; never the service's Teamcenter password. None: every login is refused.
    #[serde(default)]
    pub(crate) logins: std::collections::BTreeMap<String, SecretRef>,
    /// A request body must send a byte at least this often (default 10 s).
    #[serde(default = "default_body_idle")]
    pub(crate) body_idle_secs: u64,
    /// A request body must arrive whole within this (default 120 s).
    #[serde(default = "default_body_timeout")]
    pub(crate) body_timeout_secs: u64,
    /// Request bytes held for replay across all connections at once (default 32 MiB); a body
    /// that does not fit is sent once.
    #[serde(default = "default_replay_budget")]
    pub(crate) replay_budget_mib: u64,
    /// Request bodies up to this size are held so a rejected request can go once more; larger
    /// ones stream and are sent once (default 1024 KiB).
    #[serde(default = "default_replay_limit_kib")]
    pub(crate) replay_limit_kib: u64,
    /// The deadline of one attempt upstream, the response body included (default 300 s).
    #[serde(default = "default_proxy_timeout")]
    pub(crate) timeout_secs: u64,
    /// Connections served at once (default 256).
    #[serde(default = "default_proxy_connections")]
    pub(crate) max_connections: usize,
    /// Threads serving a `listen` address, each with its own runtime and upstream connections
    /// (default: one per core). A `socket` is served with the rest of the process.
    pub(crate) workers: Option<usize>,
}

fn default_replay_limit_kib() -> u64 {
    1024
}

fn default_body_idle() -> u64 {
    10
}

fn default_body_timeout() -> u64 {
    120
}

fn default_replay_budget() -> u64 {
    32
}

/// The shortest local login secret of a Teamcenter proxy (with the lockout, guessing one is
/// hopeless).
pub(crate) const MIN_LOGIN_SECRET: usize = 16;

fn default_proxy_timeout() -> u64 {
    300
}

fn default_proxy_connections() -> usize {
    256
}

/// The shortest broker client secret accepted (32 bytes: `head -c 32 /dev/urandom | base64`).
pub(crate) const MIN_CLIENT_SECRET: usize = 32;

impl BrokerConfig {
    /// `broker.socket`, else `$XDG_RUNTIME_DIR/shiftkey/broker.sock`. There is no fallback in the
    /// shared temp folder: a predictable path there is one another user can occupy first.
    pub(crate) fn socket_path(&self) -> anyhow::Result<PathBuf> {
        if let Some(p) = &self.socket {
            return Ok(p.clone());
        }
        match std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
            Some(dir) => Ok(PathBuf::from(dir).join("shiftkey").join("broker.sock")),
            None => Err(anyhow::Error::new(ConfigProblem(
                "the broker needs a private folder for its socket: set `broker.socket` (e.g. \
                 /run/shiftkey/broker.sock with systemd's RuntimeDirectory=shiftkey), or run \
                 where XDG_RUNTIME_DIR is set"
                    .to_owned(),
            ))),
        }
    }
}

/// The ops HTTP server and alerting.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct OpsConfig {
    /// Where `/healthz`, `/readyz`, `/metrics` and `/status` listen; empty: no server. Unset:
    /// `127.0.0.1:9464` for `run`, none for `proxy` and `broker` (see [`OpsConfig::listen_for`]).
    pub(crate) listen: Option<String>,
    /// An environment variable holding the alert webhook URL (URLs often carry a token).
    pub(crate) webhook_env: Option<String>,
    /// Alert when a client secret or certificate expires within this many days.
    pub(crate) expiry_warning_days: u32,
    /// Share of requests rejected as unauthorized over 15 minutes that raises a warning.
    pub(crate) unauthorized_warning: f64,
    /// … and a critical alert.
    pub(crate) unauthorized_critical: f64,
    /// Consecutive failed refreshes that raise a critical alert.
    pub(crate) refresh_failures_max: u32,
    /// Allow `listen` on a non-loopback address (default false): put a reverse proxy with TLS
    /// and authentication in front instead when you can.
    pub(crate) allow_remote: bool,
    /// Host names (as in the `Host` header) the ops server answers to besides its loopback
    /// names, e.g. the name a reverse proxy forwards.
    pub(crate) allowed_hosts: Vec<String>,
}

/// Where the ops server of `shiftkey run` listens unless `ops.listen` says otherwise.
pub(crate) const DEFAULT_OPS_LISTEN: &str = "127.0.0.1:9464";

impl OpsConfig {
    /// Where the ops server listens, if anywhere: `ops.listen` when set (empty: nowhere); unset,
    /// the default port for the daemon (`run`), and nowhere for `proxy` and `broker`, so that a
    /// second proxy or broker on a host does not fail on a port the first one took.
    pub(crate) fn listen_for(&self, daemon: bool) -> Option<&str> {
        match self.listen.as_deref() {
            Some("") => None,
            Some(l) => Some(l),
            None => daemon.then_some(DEFAULT_OPS_LISTEN),
        }
    }
}

impl Default for OpsConfig {
    fn default() -> Self {
        Self {
            listen: None,
            webhook_env: None,
            expiry_warning_days: 14,
            unauthorized_warning: 0.01,
            unauthorized_critical: 0.05,
            refresh_failures_max: 3,
            allow_remote: false,
            allowed_hosts: Vec::new(),
        }
    }
}

/// How shiftkey authenticates to Teamcenter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum TcMode {
    /// `Core-2011-06-Session/login` with `user` and `password`; the `JSESSIONID` cookie on every
    /// call to `/tc/JsonRestServices/…`.
    #[default]
    Session,
    /// Behind Teamcenter's OAuth gateway: the bearer tokens of `[tokens.<token>]` on every call
    /// to `/tc/RestServices/…`.
    Gateway,
}

/// Where Teamcenter is and how to log in.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TeamcenterConfig {
    pub(crate) url: String,
    /// How shiftkey authenticates (`session`, the default, or `gateway`).
    #[serde(default)]
    pub(crate) mode: TcMode,
    /// Session mode: the user that logs in.
    #[serde(default)]
    pub(crate) user: String,
    /// Session mode: its password.
    #[serde(default)]
    pub(crate) password: Option<SecretRef>,
    /// Gateway mode: the `[tokens.NAME]` whose bearer tokens are sent.
    #[serde(default)]
    pub(crate) token: Option<String>,
    #[serde(default)]
    pub(crate) group: String,
    #[serde(default)]
    pub(crate) role: String,
    /// The site mapping: query, window, properties (`[teamcenter.read]`).
    #[serde(default)]
    pub(crate) read: crate::site::ReadSection,
    /// Where shop-floor feedback goes (`[teamcenter.feedback]`; absent: no feedback writes).
    #[serde(default)]
    pub(crate) feedback: Option<crate::site::FeedbackSection>,
    /// The deadline of one attempt of a Teamcenter call, in seconds (default 60).
    #[serde(default = "default_read_timeout")]
    pub(crate) read_timeout_secs: u64,
    /// The largest Teamcenter answer read, in MiB (default 64).
    #[serde(default = "default_max_answer")]
    pub(crate) max_answer_mib: u64,
}

fn default_read_timeout() -> u64 {
    60
}

fn default_max_answer() -> u64 {
    64
}

impl StoreConfig {
    /// The file store's folder, or an error naming the key.
    pub(crate) fn dir(&self) -> anyhow::Result<&Path> {
        match (self.backend, &self.dir) {
            (StoreBackend::File, Some(d)) => Ok(d),
            (StoreBackend::File, None) => Err(anyhow::Error::new(ConfigProblem(
                "`store.dir` is required with `store.backend = \"file\"`".to_owned(),
            ))),
            (StoreBackend::Postgres, _) => Err(anyhow::Error::new(ConfigProblem(
                "this command works on a file store; `store.backend` is \"postgres\"".to_owned(),
            ))),
        }
    }
}

/// The leader lease (`[lease]`): with it, any number of `shiftkey run` processes on any hosts
/// share one PostgreSQL advisory lock; only its holder syncs, the others serve the broker and
/// the ops endpoints and take over when the holder dies.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LeaseConfig {
    /// The database: a URL without a password...
    #[serde(default)]
    pub(crate) url: Option<String>,
    /// ... or an environment variable holding it.
    #[serde(default)]
    pub(crate) url_env: Option<String>,
    /// The advisory lock's key: every process of one sync job uses the same (default 7242).
    #[serde(default = "default_lease_key")]
    pub(crate) key: i64,
    /// How often, in seconds (default 10), the leader confirms its lease and a follower asks
    /// for it: a lost lease or a leader's death is noticed within this long, and the new leader
    /// syncs at once.
    #[serde(default = "default_lease_check")]
    pub(crate) check_secs: u64,
}

fn default_lease_check() -> u64 {
    10
}

fn default_lease_key() -> i64 {
    7242
}

/// Checks a database URL pair of `section`: exactly one of `url` and `url_env`, and no password
/// written in the file.
fn check_db_url(
    section: &str,
    url: Option<&String>,
    url_env: Option<&String>,
) -> anyhow::Result<()> {
    if url.is_none() == url_env.is_none() {
        bail!("set exactly one of `{section}.url` and `{section}.url_env`");
    }
    if let Some(url) = url
        && url_has_password(url)
    {
        bail!(
            "`{section}.url` contains a password; put the URL in an environment variable and name it in `{section}.url_env`"
        );
    }
    Ok(())
}

/// Whether a database URL carries a password: in its user part (`user:pw@`) or as a
/// `password`/`sslpassword` query parameter (libpq and sqlx read both).
fn url_has_password(url: &str) -> bool {
    let in_authority = url
        .split_once("://")
        .map(|(_, rest)| rest.split(['/', '?', '#']).next().unwrap_or_default())
        .and_then(|authority| authority.rsplit_once('@'))
        .is_some_and(|(creds, _)| creds.contains(':'));
    let in_query = url.split_once('?').is_some_and(|(_, query)| {
        url::form_urlencoded::parse(query.as_bytes()).any(|(k, _)| {
            k.eq_ignore_ascii_case("password") || k.eq_ignore_ascii_case("sslpassword")
        })
    });
    in_authority || in_query
}

/// The URL of a database URL pair of `section`.
fn resolve_db_url(
    section: &str,
    url: Option<&String>,
    url_env: Option<&String>,
) -> anyhow::Result<String> {
    match (url, url_env) {
        (Some(u), _) => Ok(u.clone()),
        (None, Some(var)) => std::env::var(var).map_err(|_| {
            anyhow::Error::new(ConfigProblem(format!(
                "`{section}.url_env`: environment variable {var} is not set"
            )))
        }),
        (None, None) => bail!("set `{section}.url` or `{section}.url_env`"),
    }
}

/// Where the shop floor is.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SinkConfig {
    /// `sqlite://path?mode=rwc` or `postgres://…` (a password in it must come from `url_env`).
    #[serde(default)]
    pub(crate) url: Option<String>,
    /// An environment variable holding the URL instead (keeps a database password out of the file).
    #[serde(default)]
    pub(crate) url_env: Option<String>,
    /// Also publish every process revision to an MQTT broker, before the watermark moves.
    #[serde(default)]
    pub(crate) mqtt: Option<MqttConfig>,
}

/// `[sink.mqtt]`: retained ISA-95 messages beside the SQL sink, which keeps the watermark.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MqttConfig {
    /// `mqtt://host[:1883]` or `mqtts://host[:8883]` (TLS).
    pub(crate) url: String,
    /// The MQTT client id (one per process: a broker drops the older of two equal ids); default
    /// `shiftkey-<host name>`.
    #[serde(default = "default_mqtt_client_id")]
    pub(crate) client_id: String,
    /// Topics are `{prefix}/{plant}/process/{id}`.
    #[serde(default = "default_mqtt_prefix")]
    pub(crate) prefix: String,
    /// 1 or 2 (0 is refused: the watermark moves only on the broker's acknowledgement).
    #[serde(default = "default_mqtt_qos")]
    pub(crate) qos: u8,
    #[serde(default)]
    pub(crate) username: Option<String>,
    /// By reference, like every secret.
    #[serde(default)]
    pub(crate) password: Option<SecretRef>,
    /// With `mqtts://`: trust only this CA (PEM); default the system's roots.
    #[serde(default)]
    pub(crate) ca_file: Option<PathBuf>,
    /// How long the broker may take to acknowledge a batch.
    #[serde(default = "default_mqtt_ack_timeout")]
    pub(crate) ack_timeout_secs: u64,
}

/// `shiftkey-<host name>`: stable across restarts (the broker keeps the session of a client id),
/// and different on each host of an HA pair (a broker drops the older of two equal ids).
fn default_mqtt_client_id() -> String {
    #[cfg(unix)]
    let host = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    #[cfg(not(unix))]
    let host = std::env::var("COMPUTERNAME").unwrap_or_default();
    let host: String = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(48)
        .collect();
    format!("shiftkey-{host}")
}

fn default_mqtt_prefix() -> String {
    "shiftkey".to_owned()
}

fn default_mqtt_qos() -> u8 {
    1
}

fn default_mqtt_ack_timeout() -> u64 {
    30
}

impl MqttConfig {
    /// The broker's host, port and whether it is TLS, from `url`.
    pub(crate) fn endpoint(&self) -> anyhow::Result<(String, u16, bool)> {
        let url = url::Url::parse(&self.url)
            .with_context(|| format!("`sink.mqtt.url`: `{}` is not a URL", self.url))?;
        let tls = match url.scheme() {
            "mqtt" => false,
            "mqtts" => true,
            other => bail!(
                "`sink.mqtt.url`: `{other}` is neither mqtt:// nor mqtts:// ({})",
                self.url
            ),
        };
        let host = url
            .host_str()
            .with_context(|| format!("`sink.mqtt.url`: {} names no host", self.url))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = url.port().unwrap_or(if tls { 8883 } else { 1883 });
        if !url.username().is_empty() || url.password().is_some() {
            bail!("`sink.mqtt.url`: credentials go in `username` and `password`, not in the URL");
        }
        Ok((host, port, tls))
    }
}

/// The schedule.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct ScheduleConfig {
    pub(crate) interval_minutes: u64,
    pub(crate) batch: usize,
    pub(crate) overlap_minutes: u64,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            interval_minutes: 15,
            batch: 50,
            overlap_minutes: 5,
        }
    }
}

/// A secret by reference.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum SecretRef {
    /// `{ env = "NAME" }`
    Env {
        /// The variable.
        env: String,
    },
    /// `{ file = "/path" }`
    File {
        /// The file (its first line).
        file: PathBuf,
    },
    /// `{ credential = "name" }` — a systemd credential in `$CREDENTIALS_DIRECTORY`.
    Credential {
        /// The credential name.
        credential: String,
    },
    /// A plain string: refused.
    Inline(
        #[allow(
            dead_code,
            reason = "only its presence matters; the value is never read or printed"
        )]
        String,
    ),
}

/// What systemd puts before each file's name when the unit loads a whole folder of credentials
/// (`LoadCredential=shiftkey:/etc/shiftkey/credentials`).
pub(crate) const CREDENTIAL_PREFIX: &str = "shiftkey_";

impl SecretRef {
    /// Resolves the secret's first line; `key` names the config key in errors. Never prints
    /// the value.
    pub(crate) fn resolve(&self, key: &str) -> anyhow::Result<Secret> {
        let text = self.resolve_text(key)?;
        let value = text
            .expose()
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned();
        if value.is_empty() {
            bail!("`{key}`: the referenced secret is empty");
        }
        Ok(Secret::new(value))
    }

    /// Resolves the whole secret (a PEM key, several lines).
    pub(crate) fn resolve_text(&self, key: &str) -> anyhow::Result<Secret> {
        self.read(key)
            .map_err(|e| anyhow::Error::new(ConfigProblem(crate::causes(&e))))
    }

    fn read(&self, key: &str) -> anyhow::Result<Secret> {
        let value = match self {
            Self::Env { env } => std::env::var(env)
                .with_context(|| format!("`{key}`: environment variable {env} is not set"))?,
            Self::File { file } => read_private_file(key, file)?,
            Self::Credential { credential } => {
                let dir = std::env::var_os("CREDENTIALS_DIRECTORY").with_context(|| format!("`{key}`: systemd credential {credential}, but CREDENTIALS_DIRECTORY is not set"))?;
                // The packaged unit loads the folder /etc/shiftkey/credentials, which systemd
                // names `shiftkey_FILE`; a unit of a site's own may name it `FILE`.
                let plain = Path::new(&dir).join(credential);
                let prefixed = Path::new(&dir).join(format!("{CREDENTIAL_PREFIX}{credential}"));
                let path = if plain.exists() { plain } else { prefixed };
                std::fs::read_to_string(&path).with_context(|| {
                    format!(
                        "`{key}`: no systemd credential {credential} (nor {CREDENTIAL_PREFIX}{credential}): put it in /etc/shiftkey/credentials/{credential} (root's, 0600)"
                    )
                })?
            }
            Self::Inline(_) => bail!(
                "`{key}`: secrets are never written in the config file; use {key} = {{ env = \"NAME\" }}, {{ file = \"/path\" }} or {{ credential = \"name\" }}"
            ),
        };
        if value.trim().is_empty() {
            bail!("`{key}`: the referenced secret is empty");
        }
        Ok(Secret::new(value))
    }
}

/// Refuses a secret file that group or others may read, as store files are refused.
/// Reads a `{ file }` secret as ssh reads a key: the file itself, never a link to it (opened
/// with `O_NOFOLLOW`), owned by this user or root and open to no one else, in a folder that
/// belongs to this user or root and that no one else may write to (where another user could
/// swap the file).
fn read_private_file(key: &str, file: &Path) -> anyhow::Result<String> {
    use rustix::fs::{Mode, OFlags};
    use std::io::Read as _;
    use std::os::unix::fs::MetadataExt as _;
    let fd = rustix::fs::open(
        file,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| {
        if e == rustix::io::Errno::LOOP {
            anyhow::anyhow!(
                "`{key}`: {} is a symbolic link; name the file itself",
                file.display()
            )
        } else {
            anyhow::anyhow!("`{key}`: cannot read {}: {e}", file.display())
        }
    })?;
    let mut f = std::fs::File::from(fd);
    let meta = f
        .metadata()
        .with_context(|| format!("`{key}`: cannot read {}", file.display()))?;
    let me = rustix::process::getuid().as_raw();
    let owner_ok = |uid: u32| uid == me || uid == 0;
    if !meta.is_file() {
        bail!("`{key}`: {} is not a regular file", file.display());
    }
    if !owner_ok(meta.uid()) {
        bail!(
            "`{key}`: {} belongs to uid {}, not to this user (uid {me}) or root",
            file.display(),
            meta.uid()
        );
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "`{key}`: {} is readable by other users (mode {mode:o}); run `chmod 600 {}`",
            file.display(),
            file.display()
        );
    }
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let dir_meta = std::fs::metadata(dir)
        .with_context(|| format!("`{key}`: cannot read the folder {}", dir.display()))?;
    if !owner_ok(dir_meta.uid()) || dir_meta.mode() & 0o022 != 0 {
        bail!(
            "`{key}`: the folder {} may be written by other users (owner uid {}, mode {:o}): \
             another user could replace the secret; keep it in a folder of this user or root \
             that only its owner may write",
            dir.display(),
            dir_meta.uid(),
            dir_meta.mode() & 0o7777
        );
    }
    let mut value = String::new();
    f.read_to_string(&mut value)
        .with_context(|| format!("`{key}`: cannot read {}", file.display()))?;
    Ok(value)
}

impl Config {
    /// Loads `path`, then `SHIFTKEY_<SECTION>__<KEY>` environment overrides, and checks what
    /// can be checked without the network. Secrets are not resolved here.
    pub(crate) fn load(path: &Path) -> anyhow::Result<Self> {
        Self::load_inner(path).map_err(|e| match e.downcast::<ConfigProblem>() {
            Ok(p) => anyhow::Error::new(p),
            Err(e) => anyhow::Error::new(ConfigProblem(crate::causes(&e))),
        })
    }

    fn load_inner(path: &Path) -> anyhow::Result<Self> {
        if !path.exists() {
            bail!(
                "config file {} does not exist (write one with `shiftkey config example > {}`)",
                path.display(),
                path.display()
            );
        }
        let cfg: Self = Figment::new()
            .merge(Toml::file(path))
            // Only SHIFTKEY_<SECTION>__<KEY>: variables like SHIFTKEY_STORE_KEY hold secrets
            // that the file references, not overrides.
            .merge(
                Env::prefixed("SHIFTKEY_")
                    .filter(|k| k.as_str().contains("__"))
                    .split("__"),
            )
            .extract()
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        cfg.validate()
            .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), crate::causes(&e)))?;
        Ok(cfg)
    }

    /// Where `[proxy.NAME]` forwards: its `upstream`; for a Teamcenter proxy `teamcenter.url`,
    /// which `upstream` may repeat but not change (the shared session's cookie goes there).
    pub(crate) fn proxy_upstream(&self, name: &str, p: &ProxySection) -> anyhow::Result<String> {
        let key = format!("proxy.{name}.upstream");
        if !p.teamcenter {
            return p
                .upstream
                .clone()
                .with_context(|| format!("`{key}`: set the URL requests go to"));
        }
        let tc = self.teamcenter()?.url.clone();
        match &p.upstream {
            Some(u) if u.trim_end_matches('/') != tc.trim_end_matches('/') => bail!(
                "`{key}`: a Teamcenter proxy goes to `teamcenter.url` ({tc}), not {u}: the \
                 shared session's cookie must not go anywhere else (leave `upstream` out)"
            ),
            _ => Ok(tc),
        }
    }

    /// One `[proxy.NAME]`: a loopback listener or a socket, one credential, a secure upstream.
    fn check_proxy(&self, name: &str, p: &ProxySection) -> anyhow::Result<()> {
        let key = |field: &str| format!("proxy.{name}.{field}");
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            bail!("`proxy.{name}`: a proxy name is letters, digits, `-` and `_`");
        }
        match (&p.listen, &p.socket) {
            (Some(listen), None) => {
                let addr: std::net::SocketAddr = listen.parse().with_context(|| {
                    format!(
                        "`{}`: `{listen}` is not an address and port (e.g. 127.0.0.1:8181)",
                        key("listen")
                    )
                })?;
                if !addr.ip().is_loopback() {
                    bail!(
                        "`{}`: {addr} is not a loopback address; the proxy hands out this \
                         host's credentials and listens on 127.0.0.1 or ::1 only",
                        key("listen")
                    );
                }
            }
            (None, Some(_)) => {}
            _ => bail!(
                "`proxy.{name}`: set exactly one of `listen` (a loopback address) and `socket`"
            ),
        }
        match (&p.token, p.teamcenter) {
            (Some(token), false) => {
                if !self.tokens.contains_key(token) {
                    bail!("`{}`: there is no `[tokens.{token}]` section", key("token"));
                }
                if !p.logins.is_empty() {
                    bail!(
                        "`{}`: local logins are for a Teamcenter proxy (`teamcenter = true`)",
                        key("logins")
                    );
                }
            }
            (None, true) => {
                let session = self
                    .teamcenter
                    .as_ref()
                    .is_some_and(|t| t.mode == TcMode::Session);
                if !session {
                    bail!(
                        "`{}`: needs a `[teamcenter]` section in session mode (for a gateway, \
                         set `token` to its `[tokens.NAME]` instead)",
                        key("teamcenter")
                    );
                }
                for user in p.logins.keys() {
                    if user.trim().is_empty() || user.len() > 128 {
                        bail!("`{}`: a login name is 1 to 128 characters", key("logins"));
                    }
                }
            }
            _ => bail!(
                "`proxy.{name}`: set exactly one of `token` (a `[tokens.NAME]`) and \
                 `teamcenter = true`"
            ),
        }
        crate::proxy::users(name, p)?;
        let raw = self.proxy_upstream(name, p)?;
        let upstream = url::Url::parse(&raw)
            .with_context(|| format!("`{}`: `{raw}` is not a URL", key("upstream")))?;
        crate::net::check_secure(self, &key("upstream"), &upstream)?;
        if upstream.query().is_some() || upstream.fragment().is_some() {
            bail!("`{}`: a base URL has no query or fragment", key("upstream"));
        }
        if p.timeout_secs == 0
            || p.max_connections == 0
            || p.body_idle_secs == 0
            || p.body_timeout_secs == 0
        {
            bail!(
                "`{}`, `{}`, `{}` and `{}` must be greater than zero",
                key("timeout_secs"),
                key("max_connections"),
                key("body_idle_secs"),
                key("body_timeout_secs")
            );
        }
        if p.workers.is_some_and(|w| w == 0 || w > 256) {
            bail!(
                "`{}` is between 1 and 256 (threads; leave it out for one per core)",
                key("workers")
            );
        }
        if p.replay_budget_mib > 4096 {
            bail!("`{}` is at most 4096 (MiB)", key("replay_budget_mib"));
        }
        if p.max_connections > 65_536 || p.replay_limit_kib > 65_536 {
            bail!(
                "`{}` and `{}` are at most 65536 (connections; KiB, 64 MiB held per request)",
                key("max_connections"),
                key("replay_limit_kib")
            );
        }
        Ok(())
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.teamcenter.is_none() && self.tokens.is_empty() {
            bail!(
                "nothing to do: the config has neither a `[teamcenter]` section nor any `[tokens.NAME]` (see `shiftkey config example`)"
            );
        }
        for (key, secret) in self.secret_refs() {
            if let SecretRef::Inline(_) = secret {
                secret.resolve(&key)?;
            }
        }
        if let Some(sink) = &self.sink {
            check_db_url("sink", sink.url.as_ref(), sink.url_env.as_ref())?;
            if let Some(m) = &sink.mqtt {
                self.check_mqtt(m)?;
            }
        }
        if let Some(store) = &self.store {
            match store.backend {
                StoreBackend::File => {
                    if store.dir.is_none() {
                        bail!("`store.dir` is required with `store.backend = \"file\"`");
                    }
                    if store.url.is_some() || store.url_env.is_some() {
                        bail!(
                            "`store.url` and `store.url_env` are for `store.backend = \"postgres\"`"
                        );
                    }
                }
                StoreBackend::Postgres => {
                    if store.dir.is_some() {
                        bail!("`store.dir` is for `store.backend = \"file\"`");
                    }
                    check_db_url("store", store.url.as_ref(), store.url_env.as_ref())?;
                }
            }
        }
        if let Some(lease) = &self.lease {
            check_db_url("lease", lease.url.as_ref(), lease.url_env.as_ref())?;
            if lease.check_secs == 0 {
                bail!("`lease.check_secs` must be greater than zero");
            }
            if self.teamcenter.is_none() {
                bail!("`[lease]` elects the process that syncs: it needs a `[teamcenter]` section");
            }
        }
        if let Some(tc) = &self.teamcenter {
            match tc.mode {
                TcMode::Session => {
                    if tc.user.is_empty() || tc.password.is_none() {
                        bail!(
                            "`teamcenter.user` and `teamcenter.password` are required in session mode (the default; `teamcenter.mode = \"gateway\"` uses a `[tokens.NAME]` instead)"
                        );
                    }
                    if tc.token.is_some() {
                        bail!("`teamcenter.token` is for `teamcenter.mode = \"gateway\"`");
                    }
                }
                TcMode::Gateway => {
                    let Some(name) = &tc.token else {
                        bail!(
                            "`teamcenter.mode = \"gateway\"` needs `teamcenter.token`, the name of a `[tokens.NAME]` section"
                        );
                    };
                    if !self.tokens.contains_key(name) {
                        bail!(
                            "`teamcenter.token`: there is no `[tokens.{name}]` section to take gateway tokens from"
                        );
                    }
                    if !tc.user.is_empty() || tc.password.is_some() {
                        bail!(
                            "`teamcenter.user` and `teamcenter.password` are for session mode; in gateway mode the credentials are those of `[tokens.{name}]`"
                        );
                    }
                }
            }
            let url = url::Url::parse(&tc.url)
                .with_context(|| format!("`teamcenter.url`: `{}` is not a URL", tc.url))?;
            crate::net::check_secure(self, "teamcenter.url", &url)?;
            crate::site::configs(tc, self.overlap())?;
            if tc.read_timeout_secs == 0 || tc.max_answer_mib == 0 {
                bail!(
                    "`teamcenter.read_timeout_secs` and `teamcenter.max_answer_mib` must be greater than zero"
                );
            }
        }
        for (name, p) in &self.proxy {
            self.check_proxy(name, p)?;
        }
        if self.schedule.interval_minutes == 0 || self.schedule.batch == 0 {
            bail!("`schedule.interval_minutes` and `schedule.batch` must be greater than zero");
        }
        if self.schedule.interval_minutes > 7 * 24 * 60 {
            bail!("`schedule.interval_minutes` is at most a week (10080)");
        }
        if let Some(store) = &self.store
            && store.key.is_some() == store.passphrase.is_some()
        {
            bail!("set exactly one of `store.key` and `store.passphrase`");
        }
        // A grant that can always be obtained again (client credentials, a configured password)
        // runs without a store: its tokens live in memory and a restart logs in again. A
        // refresh-token chain a person started exists nowhere else.
        if self.store.is_none()
            && let Some((name, _)) = self
                .tokens
                .iter()
                .find(|(_, t)| t.kind == TokenKind::RefreshToken)
        {
            bail!(
                "`tokens.{name}` (kind = \"refresh_token\") needs a `[store]` section: its refresh-token chain is kept only there"
            );
        }
        for (name, t) in &self.tokens {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                bail!("`tokens.{name}`: a token name is letters, digits, `-` and `_`");
            }
            let key = |field: &str| format!("tokens.{name}.{field}");
            let token_url = url::Url::parse(&t.token_url).with_context(|| {
                format!("`{}`: `{}` is not a URL", key("token_url"), t.token_url)
            })?;
            crate::net::check_secure(self, &key("token_url"), &token_url)?;
            if let Some(u) = &t.revoke_url {
                let revoke = url::Url::parse(u)
                    .with_context(|| format!("`{}`: `{u}` is not a URL", key("revoke_url")))?;
                crate::net::check_secure(self, &key("revoke_url"), &revoke)?;
            }
            match t.client_auth {
                ClientAuthKind::Basic | ClientAuthKind::Post if t.client_secret.is_none() => {
                    bail!(
                        "`{}` is missing (client_auth = basic or post needs it)",
                        key("client_secret")
                    )
                }
                ClientAuthKind::PrivateKeyJwt if t.private_key.is_none() => bail!(
                    "`{}` is missing (client_auth = private_key_jwt needs it)",
                    key("private_key")
                ),
                _ => {}
            }
            if t.kind == TokenKind::RefreshToken {
                let issuer = t.issuer.as_ref().with_context(|| {
                    format!(
                        "`{}` is missing (kind = \"refresh_token\" logs in through it)",
                        key("issuer")
                    )
                })?;
                let url = url::Url::parse(issuer)
                    .with_context(|| format!("`{}`: `{issuer}` is not a URL", key("issuer")))?;
                crate::net::check_secure(self, &key("issuer"), &url)?;
            } else if t.client_auth == ClientAuthKind::None {
                bail!(
                    "`{}`: a public client (\"none\") fits only kind = \"refresh_token\"",
                    key("client_auth")
                );
            }
            if t.kind == TokenKind::Password && (t.username.is_none() || t.password.is_none()) {
                bail!(
                    "`{}` and `{}` are needed by kind = \"password\"",
                    key("username"),
                    key("password")
                );
            }
            if let Some(d) = &t.secret_expires {
                chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").with_context(|| {
                    format!(
                        "`{}`: `{d}` is not a date like 2027-03-31",
                        key("secret_expires")
                    )
                })?;
            }
        }
        if let Some(http) = &self.broker.http {
            let addr: std::net::SocketAddr = http.parse().with_context(|| {
                format!("`broker.http`: `{http}` is not an address like 127.0.0.1:8732")
            })?;
            if self.broker.clients.is_empty() {
                bail!("`broker.http` needs at least one `[broker.clients.NAME]` client");
            }
            if !addr.ip().is_loopback() {
                bail!(
                    "`broker.http`: `{http}` is not a loopback address: the client secrets would travel in clear; serve other hosts with `broker.https` (TLS)"
                );
            }
        }
        match (
            &self.broker.https,
            &self.broker.tls_cert,
            &self.broker.tls_key,
        ) {
            (Some(https), Some(_), Some(_)) => {
                https.parse::<std::net::SocketAddr>().with_context(|| {
                    format!("`broker.https`: `{https}` is not an address like 0.0.0.0:8733")
                })?;
                if self.broker.clients.is_empty() {
                    bail!("`broker.https` needs at least one `[broker.clients.NAME]` client");
                }
            }
            (Some(_), _, _) => bail!(
                "`broker.https` needs `broker.tls_cert` (the certificate chain, PEM) and `broker.tls_key` (its key, by reference: {{ file = \"/etc/shiftkey/broker.key\" }})"
            ),
            (None, Some(_), _) | (None, _, Some(_)) => bail!(
                "`broker.tls_cert` and `broker.tls_key` are for `broker.https`, which is not set"
            ),
            (None, None, None) => {}
        }
        for (client, c) in &self.broker.clients {
            if c.tokens.is_empty() {
                bail!(
                    "`broker.clients.{client}.tokens` is empty: list the tokens this client may get"
                );
            }
            if let Some(unknown) = c.tokens.iter().find(|t| !self.tokens.contains_key(*t)) {
                bail!(
                    "`broker.clients.{client}.tokens` names `{unknown}`, which is not a `[tokens.NAME]`"
                );
            }
        }
        if let Some(listen) = self.ops.listen.as_deref().filter(|l| !l.is_empty()) {
            let addr = listen.parse::<std::net::SocketAddr>().with_context(|| {
                format!("`ops.listen`: `{listen}` is not an address like 127.0.0.1:9464")
            })?;
            if !addr.ip().is_loopback() && !self.ops.allow_remote {
                bail!(
                    "`ops.listen`: `{listen}` is not a loopback address; the ops endpoints have no \
                     authentication — serve them on loopback behind a reverse proxy, or set \
                     `ops.allow_remote = true` if the network is yours alone"
                );
            }
        }
        let o = &self.ops;
        if !(0.0..=1.0).contains(&o.unauthorized_warning)
            || !(0.0..=1.0).contains(&o.unauthorized_critical)
            || o.unauthorized_warning > o.unauthorized_critical
        {
            bail!(
                "`ops.unauthorized_warning` and `ops.unauthorized_critical` are shares between 0 and 1, warning ≤ critical"
            );
        }
        Ok(())
    }

    /// Every secret reference with its key.
    fn secret_refs(&self) -> Vec<(String, &SecretRef)> {
        let mut out = Vec::new();
        if let Some(p) = self.teamcenter.as_ref().and_then(|tc| tc.password.as_ref()) {
            out.push(("teamcenter.password".to_owned(), p));
        }
        if let Some(store) = &self.store {
            if let Some(k) = &store.key {
                out.push(("store.key".to_owned(), k));
            }
            if let Some(p) = &store.passphrase {
                out.push(("store.passphrase".to_owned(), p));
            }
        }
        for (name, t) in &self.tokens {
            for (field, s) in [
                ("client_secret", &t.client_secret),
                ("private_key", &t.private_key),
                ("password", &t.password),
            ] {
                if let Some(s) = s {
                    out.push((format!("tokens.{name}.{field}"), s));
                }
            }
        }
        if let Some(p) = self
            .sink
            .as_ref()
            .and_then(|s| s.mqtt.as_ref())
            .and_then(|m| m.password.as_ref())
        {
            out.push(("sink.mqtt.password".to_owned(), p));
        }
        for (client, c) in &self.broker.clients {
            out.push((format!("broker.clients.{client}.secret"), &c.secret));
        }
        for (name, p) in &self.proxy {
            for (user, secret) in &p.logins {
                out.push((format!("proxy.{name}.logins.{user}"), secret));
            }
        }
        out
    }

    /// The watermark overlap of `[schedule]`.
    pub(crate) fn overlap(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.schedule.overlap_minutes.saturating_mul(60))
    }

    /// The `[teamcenter]` section, or an error saying the command needs it.
    pub(crate) fn teamcenter(&self) -> anyhow::Result<&TeamcenterConfig> {
        self.teamcenter
            .as_ref()
            .context("this command needs a `[teamcenter]` section (see `shiftkey config example`)")
    }

    fn check_mqtt(&self, m: &MqttConfig) -> anyhow::Result<()> {
        let (host, _, tls) = m.endpoint()?;
        if !matches!(m.qos, 1 | 2) {
            bail!(
                "`sink.mqtt.qos` = {}: use 1 or 2 (the watermark moves only once the broker has \
                 acknowledged a batch, and QoS 0 is never acknowledged)",
                m.qos
            );
        }
        if m.password.is_some() != m.username.is_some() {
            bail!("`sink.mqtt.username` and `sink.mqtt.password` go together");
        }
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if m.password.is_some() && !tls && !loopback && !self.allow_insecure_http {
            bail!(
                "`sink.mqtt.url`: {} would send the broker password in clear text; use mqtts:// \
                 (or, in a lab only, set `allow_insecure_http = true` at the top of the config)",
                m.url
            );
        }
        if m.ca_file.is_some() && !tls {
            bail!("`sink.mqtt.ca_file` needs an mqtts:// URL");
        }
        if m.ack_timeout_secs == 0 || m.ack_timeout_secs > 3600 {
            bail!(
                "`sink.mqtt.ack_timeout_secs` = {}: use 1 to 3600",
                m.ack_timeout_secs
            );
        }
        if m.client_id.is_empty() || m.prefix.is_empty() {
            bail!("`sink.mqtt.client_id` and `sink.mqtt.prefix` may not be empty");
        }
        Ok(())
    }

    /// The sink URL, from the file or the named environment variable.
    pub(crate) fn sink_url(&self) -> anyhow::Result<String> {
        let sink = self
            .sink
            .as_ref()
            .context("this command needs a `[sink]` section (see `shiftkey config example`)")?;
        resolve_db_url("sink", sink.url.as_ref(), sink.url_env.as_ref())
    }

    /// The PostgreSQL URL of a `store.backend = "postgres"`.
    pub(crate) fn store_url(&self) -> anyhow::Result<String> {
        let store = self
            .store
            .as_ref()
            .context("this command needs a `[store]` section (see `shiftkey config example`)")?;
        resolve_db_url("store", store.url.as_ref(), store.url_env.as_ref())
    }

    /// The PostgreSQL URL of `[lease]`, when there is one.
    pub(crate) fn lease_url(&self) -> anyhow::Result<Option<(String, i64)>> {
        self.lease
            .as_ref()
            .map(|l| {
                resolve_db_url("lease", l.url.as_ref(), l.url_env.as_ref()).map(|u| (u, l.key))
            })
            .transpose()
    }

    /// Resolves every secret reference (for `config check` and `doctor`); the error names the key.
    pub(crate) fn resolve_all(&self) -> anyhow::Result<usize> {
        let refs = self.secret_refs();
        for (key, s) in &refs {
            s.resolve_text(key)?;
        }
        for (client, c) in &self.broker.clients {
            let key = format!("broker.clients.{client}.secret");
            let len = c.secret.resolve(&key)?.expose().len();
            if len < MIN_CLIENT_SECRET {
                return Err(anyhow::Error::new(ConfigProblem(format!(
                    "`{key}` is {len} bytes; a broker client secret needs at least \
                     {MIN_CLIENT_SECRET} (make one with `head -c 32 /dev/urandom | base64`)"
                ))));
            }
        }
        for (name, p) in &self.proxy {
            crate::proxy::logins(name, p)
                .map_err(|e| anyhow::Error::new(ConfigProblem(crate::causes(&e))))?;
        }
        Ok(refs.len())
    }
}

/// An annotated example (`shiftkey config example`); a test loads it.
pub(crate) const EXAMPLE: &str = r#"# shiftkey configuration. Every key can be overridden by an environment variable
# SHIFTKEY_<SECTION>__<KEY>, e.g. SHIFTKEY_SCHEDULE__INTERVAL_MINUTES=5.
# Secrets are never written here: give { env = "NAME" }, { file = "/path" } or
# { credential = "name" } (a systemd LoadCredential=).
#
# http:// is refused for Teamcenter and token URLs unless the host is a loopback address.
# allow_insecure_http = true   # a lab switch only: credentials cross the network in clear text

# The Teamcenter server the sync reads (`run`, `sync --once`, `doctor`).
[teamcenter]
url = "https://tc.example.com"          # the server; shiftkey adds /tc/JsonRestServices/...
user = "mfg_sync"                       # a dedicated service user
password = { env = "TC_PASSWORD" }
# mode = "gateway"                      # behind the OAuth gateway (/tc/RestServices): instead of
# token = "tc"                          # user and password, the bearer tokens of [tokens.tc]
group = ""                              # empty: the user's default group
role = ""
read_timeout_secs = 60                  # the deadline of one attempt of a Teamcenter call
max_answer_mib = 64                     # larger answers are refused, naming the operation

# How shiftkey finds and reads process plans on this site (docs/teamcenter.md has the
# administrator's checklist; `shiftkey doctor` checks every name below). Defaults: the standard model.
[teamcenter.read]
query = "saved_query"                   # or "business_object" (executeBusinessObjectQueries, no entry names)
query_name = "Item Revision..."         # the saved query, as Query Builder names it
type_entry = "Type"                     # its entries, as describeSavedQueries shows them (localized!)
modified_after_entry = "Modified After"
types = ["MEProcessRevision"]           # plan types
utc_offset_minutes = "auto"             # query dates are in server time: "auto" reads its offset from its dates
window = "contexts"                     # openContexts; or "bom_windows" (opened with revision_rule)
revision_rule = ""                      # which revision of an item is current; "": the user's default rule
current = "revision_rule"               # or "every_revision": ask no rule, offer every revision read
depth = 4                               # levels expanded below a plan (nested processes)
plant = ""                              # plant name for every plan, or plant_property = "xx4_plant"
allocated_time_unit = "s"               # unit of Mfg0allocated_time on this site: s | min | h
work_instruction_relations = ["IMAN_MEWorkInstruction"]
# [teamcenter.read.properties]          # field = property, e.g. sequence = "bl_sequence_no"

# Shop-floor feedback needs site-defined (BMIDE) properties on the operation revision; without
# this section shiftkey writes nothing back and feedback waits in the outbox.
# Every field needs a property of its own (none shared), or format = "json" puts them all, with
# the key, into one property as a JSON document.
# [teamcenter.feedback]
# type = "MEOPRevision"
# key_property = "xx4_mes_feedback_key"  # the newest outbox row applied (never written twice)
# completed_count = "xx4_completed_count"
# actual_cycle_time = "xx4_actual_cycle_time"
# deviation = "xx4_deviation"
# format = "json"                       # instead of the four above: one property holds it all
# property = "xx4_mes_feedback"

# The shop-floor database the sync writes.
[sink]
url = "sqlite://shopfloor.db?mode=rwc"  # or set url_env = "SHIFTKEY_SINK_URL" for postgres://user:pw@host/db
                                        # (TLS: ?sslmode=verify-full&sslrootcert=/etc/shiftkey/db-ca.pem)
# [sink.mqtt]                           # also publish each plan to MQTT (the SQL sink keeps the watermark)
# url = "mqtts://broker.plant.example"  # mqtt://host:1883 or mqtts://host:8883
# client_id = "shiftkey-sync"           # one per process; default shiftkey-<host name>
# prefix = "shiftkey"                   # topics {prefix}/{plant}/process/{id}, retained
# qos = 1                               # 1 or 2
# username = "shiftkey"
# password = { env = "MQTT_PASSWORD" }
# ca_file = "/etc/shiftkey/mqtt-ca.pem" # default: the system's roots
# ack_timeout_secs = 30

[schedule]
interval_minutes = 15                   # a cycle every 15 minutes
batch = 50                              # process revisions per sink transaction
overlap_minutes = 5                     # re-read this much before the watermark (clock skew)

# Where tokens live between runs: one AES-256-GCM file per token, <dir>/<name>.token.
# `shiftkey store init` prints a fresh key; or use passphrase = { ... } (Argon2id).
[store]
dir = "/var/lib/shiftkey"
key = { env = "SHIFTKEY_STORE_KEY" }
# backend = "postgres"                  # shared by every host instead: one encrypted row per token
# url_env = "SHIFTKEY_STORE_URL"        # postgres://user:pw@db/plant (then no `dir`)

# Several `shiftkey run` processes on any hosts, one syncing at a time (docs/operations.md).
# [lease]
# url_env = "SHIFTKEY_LEASE_URL"        # a PostgreSQL database every process reaches
# key = 7242                            # the same in every process of one sync job
# check_secs = 10                       # the leader confirms its lease, a follower asks, this often

# Named OAuth credentials: `shiftkey broker` serves them to scripts, `shiftkey token` manages them.
[tokens.mes]
kind = "client_credentials"             # or "password" (then username and password), or
                                        # "refresh_token" (then issuer; `shiftkey token login mes`)
token_url = "https://login.example.com/oauth/token"
client_id = "plant-sync"
client_auth = "basic"                   # basic | post | none | private_key_jwt (then private_key,
                                        # signing_alg = RS256 | PS256 | ES256, key_id)
client_secret = { env = "MES_CLIENT_SECRET" }
secret_expires = "2027-06-30"           # alert 14 days before the secret expires
scopes = ["mes.write"]
# certificate = "/etc/shiftkey/mes.pem" # with private_key_jwt: alert before it expires
# issuer = "https://login.example.com"  # kind = "refresh_token": where `token login` reads metadata
# revoke_url = "https://login.example.com/oauth/revoke"

# The token broker for scripts in any language (docs/operations.md).
[broker]
# socket = "/run/shiftkey/broker.sock"  # default: $XDG_RUNTIME_DIR/shiftkey/broker.sock
# http = "127.0.0.1:8732"               # optional loopback HTTP; needs [broker.clients]
# [broker.clients.label-printer]          # one section per HTTP client
# secret = { env = "BROKER_SECRET_LABEL_PRINTER" }   # at least 32 bytes
# tokens = ["mes"]                       # the tokens it may get; others are refused

# A healing proxy for a script that cannot change: point its base URL at the proxy; every request
# goes on to `upstream` with a fresh token (docs/operations.md, "Serving tokens to existing scripts").
# It serves only the local users in `users` (default: the service's own user); anyone else gets 403.
[proxy.mes]
socket = "/run/shiftkey/mes.sock"       # or listen = "127.0.0.1:8181" (loopback only; the peer's
                                        # uid is read from the kernel, so `users` holds there too)
upstream = "https://mes.example.com/api"
token = "mes"
# users = ["shiftkey", "labelprint"]    # local user names or uids
# replay_limit_kib = 1024               # larger request bodies stream and are sent once
# replay_budget_mib = 32                # bytes held for replay across all connections
# body_idle_secs = 10                   # a request body that sends nothing this long is cut off
# body_timeout_secs = 120               # ... and one that takes longer than this in all
# timeout_secs = 300                    # one attempt upstream, the response body included
# workers = 2                           # threads serving a `listen` address (default: one per core)

# A Teamcenter proxy: the [teamcenter] session on every call; scripts log in to the proxy with
# accounts of their own (never the Teamcenter password), and a call without a login is refused.
# [proxy.tc]
# socket = "/run/shiftkey/tc.sock"
# teamcenter = true                     # goes to teamcenter.url
# [proxy.tc.logins]
# label_printer = { credential = "tc-proxy-label-printer" }   # at least 16 characters

# The ops HTTP server: /healthz, /readyz, /metrics, /status.
[ops]
# listen = "127.0.0.1:9464"             # unset: this for `run`, none for `proxy` and `broker`; "": none
# webhook_env = "SHIFTKEY_WEBHOOK_URL"  # alerts are POSTed as JSON to this URL too
expiry_warning_days = 14
unauthorized_warning = 0.01             # share of 401s over 15 min: warning
unauthorized_critical = 0.05            # ... critical
refresh_failures_max = 3                # consecutive failed refreshes: critical
# allow_remote = false                  # a non-loopback listen needs this (prefer a reverse proxy)
# allowed_hosts = ["ops.plant.example"] # Host names answered besides loopback (DNS rebinding guard)
"#;

#[cfg(test)]
mod tests {
    use super::{DEFAULT_OPS_LISTEN, OpsConfig};

    #[test]
    fn the_ops_server_listens_by_default_for_run_only() {
        let unset = OpsConfig::default();
        assert_eq!(unset.listen_for(true), Some(DEFAULT_OPS_LISTEN));
        assert_eq!(unset.listen_for(false), None, "proxy and broker: off");
        let set = OpsConfig {
            listen: Some("127.0.0.1:9500".into()),
            ..OpsConfig::default()
        };
        assert_eq!(set.listen_for(false), Some("127.0.0.1:9500"));
        let off = OpsConfig {
            listen: Some(String::new()),
            ..OpsConfig::default()
        };
        assert_eq!(off.listen_for(true), None);
    }
}
