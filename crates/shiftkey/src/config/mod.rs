//! The configuration file: TOML with `SHIFTKEY_…` environment overrides (figment). Secrets only by
//! reference — an environment variable, a file, or a systemd credential; an inline secret is
//! refused with a hint. Only the binary reads config files and environment variables.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;
use shiftkey_auth::Secret;

mod check;

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
#[derive(Debug)]
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

/// How a secret is written in the file, for errors.
const SECRET_FORMS: &str = "{ env = \"NAME\" }, { file = \"/path\" } or { credential = \"name\" }";

impl<'de> Deserialize<'de> for SecretRef {
    /// `{ env = … }`, `{ file = … }`, `{ credential = … }`, or a plain string (refused later
    /// with its key); anything else is explained in plain words.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Table(std::collections::BTreeMap<String, String>),
        }
        let forms = ["env", "file", "credential"];
        let raw = Raw::deserialize(d).map_err(|_| {
            D::Error::custom(format!("a secret is given by reference: {SECRET_FORMS}"))
        })?;
        let table = match raw {
            Raw::Text(text) => return Ok(Self::Inline(text)),
            Raw::Table(table) => table,
        };
        let mut entries = table.into_iter();
        match (entries.next(), entries.next()) {
            (Some((kind, value)), None) => match kind.as_str() {
                "env" => Ok(Self::Env { env: value }),
                "file" => Ok(Self::File { file: value.into() }),
                "credential" => Ok(Self::Credential { credential: value }),
                other => Err(D::Error::custom(format!(
                    "`{other}` is not a kind of secret reference: write {SECRET_FORMS}{}",
                    check::did_you_mean(other, &forms)
                ))),
            },
            _ => Err(D::Error::custom(format!(
                "a secret reference names exactly one source: {SECRET_FORMS}"
            ))),
        }
    }
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
            Self::Env { env } => match std::env::var(env) {
                Ok(v) => v,
                Err(std::env::VarError::NotPresent) => {
                    bail!("`{key}`: environment variable {env} is not set")
                }
                Err(std::env::VarError::NotUnicode(_)) => {
                    bail!("`{key}`: environment variable {env} is not valid UTF-8")
                }
            },
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
        let cfg = Self::read(path)?;
        cfg.validate()
            .map_err(|problems| anyhow::anyhow!("{}: {problems}", path.display()))?;
        Ok(cfg)
    }

    /// `config check`: the file read, then every problem of the checks and of the secrets (each
    /// resolved, never printed) in one report; the secret references resolved.
    pub(crate) fn check(path: &Path) -> anyhow::Result<(Self, usize)> {
        let problem = |e: anyhow::Error| match e.downcast::<ConfigProblem>() {
            Ok(p) => anyhow::Error::new(p),
            Err(e) => anyhow::Error::new(ConfigProblem(crate::causes(&e))),
        };
        let cfg = Self::read(path).map_err(problem)?;
        let mut problems = cfg.validate().err().map(|p| p.0).unwrap_or_default();
        let (resolved, unreadable) = cfg.secret_problems();
        problems.extend(unreadable);
        let mut seen = std::collections::HashSet::new();
        problems.retain(|p| seen.insert(p.clone()));
        if problems.is_empty() {
            Ok((cfg, resolved))
        } else {
            Err(anyhow::Error::new(ConfigProblem(format!(
                "{}: {}",
                path.display(),
                check::Problems(problems)
            ))))
        }
    }

    /// The file and its `SHIFTKEY_…` overrides, read but not checked.
    fn read(path: &Path) -> anyhow::Result<Self> {
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
            .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), check::reading_problems(e)))?;
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
    /// Every unreadable secret is reported in one run.
    pub(crate) fn resolve_all(&self) -> anyhow::Result<usize> {
        let (resolved, problems) = self.secret_problems();
        if problems.is_empty() {
            Ok(resolved)
        } else {
            Err(anyhow::Error::new(ConfigProblem(
                check::Problems(problems).to_string(),
            )))
        }
    }

    /// The secret references, and what is wrong with those that cannot be read (each once).
    fn secret_problems(&self) -> (usize, Vec<String>) {
        let refs = self.secret_refs();
        let mut problems = Vec::new();
        let mut check = |r: anyhow::Result<()>| {
            if let Err(e) = r {
                problems.push(crate::causes(&e));
            }
        };
        // Each secret is read once: those with a form of their own (the store key, broker
        // client secrets, proxy logins) by their own check below.
        let own_check = |key: &str| {
            key == "store.key" || key.starts_with("broker.clients.") || key.starts_with("proxy.")
        };
        for (key, s) in refs.iter().filter(|(key, _)| !own_check(key)) {
            check(s.resolve_text(key).map(drop));
        }
        if let Some(key) = self.store.as_ref().and_then(|s| s.key.as_ref()) {
            // Its form, never its value: 32 bytes in base64.
            check(key.resolve("store.key").and_then(|text| {
                shiftkey_store::KeySource::from_base64(text.expose(), "`store.key`")
                    .map(drop)
                    .map_err(|e| anyhow::anyhow!("{}", e.detail))
            }));
        }
        for (client, c) in &self.broker.clients {
            let key = format!("broker.clients.{client}.secret");
            check(c.secret.resolve(&key).and_then(|s| {
                let len = s.expose().len();
                if len < MIN_CLIENT_SECRET {
                    bail!(
                        "`{key}` is {len} bytes; a broker client secret needs at least \
                         {MIN_CLIENT_SECRET} (make one with `head -c 32 /dev/urandom | base64`)"
                    );
                }
                Ok(())
            }));
        }
        for (name, p) in &self.proxy {
            for (user, secret) in &p.logins {
                check(crate::proxy::login(name, user, secret).map(drop));
            }
        }
        (refs.len(), problems)
    }
}

/// An annotated example (`shiftkey config example`); a test loads it.
pub(crate) const EXAMPLE: &str = include_str!("example.toml");

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
