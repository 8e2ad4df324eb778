//! Every HTTP client the binary builds: deadlines on all of them, no redirects where a
//! credential travels, and the clear-text rule for credential-bearing URLs.

use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::config::Config;

/// For token, login and revocation endpoints: no redirects, 10 s to connect, 60 s per request.
pub(crate) fn credential_client() -> anyhow::Result<reqwest::Client> {
    shiftkey_auth::credential_client()
        .build()
        .context("cannot build the HTTP client")
}

/// For Teamcenter (login and calls share one client: the session cookie is a credential):
/// no redirects, 10 s to connect, `timeout` per request.
pub(crate) fn teamcenter_client(timeout: Duration) -> anyhow::Result<reqwest::Client> {
    shiftkey_auth::credential_client()
        .timeout(timeout)
        .build()
        .context("cannot build the Teamcenter HTTP client")
}

/// For calls that carry no credential of ours (the alert webhook, the doctor's reachability
/// probe): no redirects either (a webhook URL is often a secret), 10 s to connect, `timeout`.
pub(crate) fn plain_client(timeout: Duration) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(shiftkey_auth::CONNECT_TIMEOUT)
        .timeout(timeout)
        .build()
        .context("cannot build the HTTP client")
}

/// Refuses `http://` for a credential-bearing URL `key` unless it is a loopback address or the
/// config says `allow_insecure_http = true`.
pub(crate) fn check_secure(cfg: &Config, key: &str, url: &url::Url) -> anyhow::Result<()> {
    match url.scheme() {
        "https" => Ok(()),
        "http" if cfg.allow_insecure_http || shiftkey_auth::is_loopback(url) => Ok(()),
        "http" => bail!(
            "`{key}`: {url} would send credentials in clear text; use https (or, in a lab only, \
             set `allow_insecure_http = true` at the top of the config)"
        ),
        other => bail!("`{key}`: `{other}` is not an HTTP scheme"),
    }
}

/// Logs the lab switch at start, so it is never on unnoticed.
pub(crate) fn warn_if_insecure(cfg: &Config) {
    if cfg.allow_insecure_http {
        tracing::warn!(
            "allow_insecure_http = true: credentials may cross the network in clear text (a lab \
             setting; never in production)"
        );
    }
}
