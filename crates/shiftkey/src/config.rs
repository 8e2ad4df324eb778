//! The configuration file: TOML with `SHIFTKEY_…` environment overrides (figment). Secrets only by
//! reference — an environment variable, a file, or a systemd credential; an inline secret is
//! refused with a hint. Only the binary reads config files and environment variables.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;
use shiftkey_auth::Secret;

/// The whole configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    pub(crate) teamcenter: TeamcenterConfig,
    pub(crate) sink: SinkConfig,
    #[serde(default)]
    pub(crate) schedule: ScheduleConfig,
}

/// Where Teamcenter is and how to log in.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TeamcenterConfig {
    pub(crate) url: String,
    pub(crate) user: String,
    pub(crate) password: SecretRef,
    #[serde(default)]
    pub(crate) group: String,
    #[serde(default)]
    pub(crate) role: String,
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

impl SecretRef {
    /// Resolves the secret; `key` names the config key in errors. Never prints the value.
    pub(crate) fn resolve(&self, key: &str) -> anyhow::Result<Secret> {
        let value = match self {
            Self::Env { env } => std::env::var(env)
                .with_context(|| format!("`{key}`: environment variable {env} is not set"))?,
            Self::File { file } => std::fs::read_to_string(file)
                .with_context(|| format!("`{key}`: cannot read {}", file.display()))?,
            Self::Credential { credential } => {
                let dir = std::env::var_os("CREDENTIALS_DIRECTORY").with_context(|| format!("`{key}`: systemd credential {credential}, but CREDENTIALS_DIRECTORY is not set"))?;
                let path = Path::new(&dir).join(credential);
                std::fs::read_to_string(&path)
                    .with_context(|| format!("`{key}`: cannot read {}", path.display()))?
            }
            Self::Inline(_) => bail!(
                "`{key}`: secrets are never written in the config file; use {key} = {{ env = \"NAME\" }}, {{ file = \"/path\" }} or {{ credential = \"name\" }}"
            ),
        };
        let value = value.lines().next().unwrap_or_default().trim().to_owned();
        if value.is_empty() {
            bail!("`{key}`: the referenced secret is empty");
        }
        Ok(Secret::new(value))
    }
}

impl Config {
    /// Loads `path`, then `SHIFTKEY_<SECTION>__<KEY>` environment overrides.
    pub(crate) fn load(path: &Path) -> anyhow::Result<Self> {
        if !path.exists() {
            bail!(
                "config file {} does not exist (write one with `shiftkey config example > {}`)",
                path.display(),
                path.display()
            );
        }
        let cfg: Self = Figment::new()
            .merge(Toml::file(path))
            .merge(Env::prefixed("SHIFTKEY_").split("__"))
            .extract()
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        if let SecretRef::Inline(_) = cfg.teamcenter.password {
            cfg.teamcenter.password.resolve("teamcenter.password")?;
        }
        if cfg.sink.url.is_none() == cfg.sink.url_env.is_none() {
            bail!(
                "{}: set exactly one of `sink.url` and `sink.url_env`",
                path.display()
            );
        }
        if let Some(url) = &cfg.sink.url
            && url.contains('@')
            && url.contains("://")
            && url
                .split("://")
                .nth(1)
                .and_then(|r| r.split('@').next())
                .is_some_and(|c| c.contains(':'))
        {
            bail!(
                "{}: `sink.url` contains a password; put the URL in an environment variable and name it in `sink.url_env`",
                path.display()
            );
        }
        if cfg.schedule.interval_minutes == 0 || cfg.schedule.batch == 0 {
            bail!(
                "{}: `schedule.interval_minutes` and `schedule.batch` must be greater than zero",
                path.display()
            );
        }
        Ok(cfg)
    }

    /// The sink URL, from the file or the named environment variable.
    pub(crate) fn sink_url(&self) -> anyhow::Result<String> {
        match (&self.sink.url, &self.sink.url_env) {
            (Some(u), _) => Ok(u.clone()),
            (None, Some(var)) => std::env::var(var)
                .with_context(|| format!("`sink.url_env`: environment variable {var} is not set")),
            (None, None) => bail!("set `sink.url` or `sink.url_env`"),
        }
    }
}

/// An annotated example (`shiftkey config example`); a test loads it.
pub(crate) const EXAMPLE: &str = r#"# shiftkey configuration. Every key can be overridden by an environment variable
# SHIFTKEY_<SECTION>__<KEY>, e.g. SHIFTKEY_SCHEDULE__INTERVAL_MINUTES=5.
# Secrets are never written here: give { env = "NAME" }, { file = "/path" } or
# { credential = "name" } (a systemd LoadCredential=).

[teamcenter]
url = "https://tc.example.com"          # the server; shiftkey adds /tc/JsonRestServices/...
user = "mfg_sync"                       # a dedicated service user
password = { env = "TC_PASSWORD" }
group = ""                              # empty: the user's default group
role = ""

[sink]
url = "sqlite://shopfloor.db?mode=rwc"  # or set url_env = "SHIFTKEY_SINK_URL" for postgres://user:pw@host/db

[schedule]
interval_minutes = 15                   # a cycle every 15 minutes
batch = 50                              # process revisions per sink transaction
overlap_minutes = 5                     # re-read this much before the watermark (clock skew)
"#;
