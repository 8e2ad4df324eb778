//! `[proxy.NAME]`: the healing proxies for unchanged scripts, built from the configuration and
//! served (the proxy itself is `shiftkey_sidecar::Proxy`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use shiftkey_http::{AuthMiddleware, Injector};
use shiftkey_policy::ErrorRateMonitor;
use shiftkey_sidecar::workers::Workers;
use shiftkey_sidecar::{LocalLogin, Proxy, ProxyConfig, serve};

use crate::config::{Config, ProxySection};
use crate::supervise::Tasks;

/// A built proxy and where it listens.
pub(crate) struct Built {
    pub(crate) proxy: Arc<Proxy>,
    listen: Listen,
    max_connections: usize,
    users: serve::Users,
    /// Threads serving a TCP listener, each with its own runtime and HTTP client.
    workers: usize,
    /// One attempt's deadline, for each worker's HTTP client.
    timeout: Duration,
}

/// The proxy's HTTP client: no redirects (a 3xx goes back to the script as it is, and our
/// credential never follows it to another origin).
fn http_client(timeout: Duration) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(shiftkey_auth::CONNECT_TIMEOUT)
        .timeout(timeout)
        .build()
        .context("cannot build the proxy's HTTP client")
}

/// Threads serving a TCP proxy when `workers` is not set: one per core.
pub(crate) fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

enum Listen {
    Tcp(String),
    Socket(PathBuf),
}

/// Builds every `[proxy.NAME]`. `teamcenter` is the Teamcenter client whose session the
/// `teamcenter = true` proxies share (each proxy has its own middleware over that session, so
/// its counters are its own).
pub(crate) fn build(
    cfg: &Config,
    tokens: &crate::tokens::Tokens,
    teamcenter: Option<&shiftkey_teamcenter::TcClient>,
    monitor: Option<&Arc<ErrorRateMonitor>>,
) -> anyhow::Result<Vec<Built>> {
    cfg.proxy
        .iter()
        .map(|(name, p)| build_one(cfg, name, p, tokens, teamcenter, monitor))
        .collect()
}

fn build_one(
    cfg: &Config,
    name: &str,
    p: &ProxySection,
    tokens: &crate::tokens::Tokens,
    teamcenter: Option<&shiftkey_teamcenter::TcClient>,
    monitor: Option<&Arc<ErrorRateMonitor>>,
) -> anyhow::Result<Built> {
    let key = format!("proxy.{name}");
    let timeout = Duration::from_secs(p.timeout_secs);
    let raw = cfg.proxy_upstream(name, p)?;
    let upstream: url::Url = raw
        .parse()
        .with_context(|| format!("`{key}.upstream`: `{raw}` is not a URL"))?;
    let bytes = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    let mut proxy_cfg = ProxyConfig::new(name, upstream)
        .replay_limit(bytes(p.replay_limit_kib.saturating_mul(1024)))
        .replay_budget(bytes(p.replay_budget_mib.saturating_mul(1024 * 1024)))
        .body_deadlines(
            Duration::from_secs(p.body_idle_secs),
            Duration::from_secs(p.body_timeout_secs),
        );
    let mut mw = match (&p.token, teamcenter) {
        (Some(token), _) => AuthMiddleware::builder(tokens.get(token)?.clone()),
        (None, Some(tc)) => {
            proxy_cfg = proxy_cfg.teamcenter(logins(name, p)?);
            let session = tc.middleware();
            AuthMiddleware::builder(session.manager().clone())
                .injector(Injector::Cookie {
                    name: "JSESSIONID".to_owned(),
                })
                .classifier(shiftkey_teamcenter::TcClassifier)
                .learned(session.learned_limits())
        }
        (None, None) => anyhow::bail!("`{key}`: no Teamcenter session to serve"),
    }
    .attempt_timeout(timeout)
    .name(format!("proxy:{name}"));
    if let Some(m) = monitor {
        mw = mw.monitor(Arc::clone(m));
    }
    let proxy = Proxy::new(proxy_cfg, http_client(timeout)?, mw.build())?;
    let listen = match (&p.listen, &p.socket) {
        (Some(addr), _) => Listen::Tcp(addr.clone()),
        (None, Some(path)) => Listen::Socket(path.clone()),
        (None, None) => anyhow::bail!("`{key}`: set `listen` or `socket`"),
    };
    Ok(Built {
        proxy,
        listen,
        max_connections: p.max_connections,
        users: users(name, p)?,
        workers: p.workers.unwrap_or_else(default_workers),
        timeout,
    })
}

/// The local accounts of a Teamcenter proxy, their secrets resolved.
pub(crate) fn logins(name: &str, p: &ProxySection) -> anyhow::Result<Vec<LocalLogin>> {
    p.logins
        .iter()
        .map(|(user, secret)| login(name, user, secret))
        .collect()
}

/// One local account of `[proxy.NAME]`, its secret resolved and long enough.
pub(crate) fn login(
    name: &str,
    user: &str,
    secret: &crate::config::SecretRef,
) -> anyhow::Result<LocalLogin> {
    let key = format!("proxy.{name}.logins.{user}");
    let password = secret.resolve(&key)?;
    if password.expose().len() < crate::config::MIN_LOGIN_SECRET {
        bail!(
            "`{key}`: a local login secret has at least {} characters (`head -c 24 \
             /dev/urandom | base64`); it is the script's own, never the Teamcenter password",
            crate::config::MIN_LOGIN_SECRET
        );
    }
    Ok(LocalLogin {
        user: user.to_owned(),
        password,
    })
}

/// The local users `[proxy.NAME]` serves: `users`, by name or uid, or this process's user.
pub(crate) fn users(name: &str, p: &ProxySection) -> anyhow::Result<serve::Users> {
    let key = format!("proxy.{name}.users");
    match &p.users {
        None => this_user(&key),
        Some(list) if list.is_empty() => bail!(
            "`{key}` is empty: the proxy would serve nobody (leave it out to serve the service's \
             own user)"
        ),
        Some(list) => Ok(serve::Users::uids(
            list.iter()
                .map(|u| uid_of(&key, u))
                .collect::<anyhow::Result<Vec<_>>>()?,
        )),
    }
}

#[cfg(unix)]
fn this_user(_key: &str) -> anyhow::Result<serve::Users> {
    Ok(serve::Users::this_user())
}

#[cfg(not(unix))]
fn this_user(key: &str) -> anyhow::Result<serve::Users> {
    bail!("`{key}`: serving only some local users is not supported on this platform yet")
}

/// A user name or a uid (digits) to a uid.
#[cfg(unix)]
fn uid_of(key: &str, user: &str) -> anyhow::Result<u32> {
    if let Ok(uid) = user.parse::<u32>() {
        return Ok(uid);
    }
    match nix::unistd::User::from_name(user) {
        Ok(Some(u)) => Ok(u.uid.as_raw()),
        Ok(None) => bail!("`{key}`: there is no local user named `{user}` (give a name or a uid)"),
        Err(e) => bail!("`{key}`: cannot look up the user `{user}`: {e}"),
    }
}

#[cfg(not(unix))]
fn uid_of(key: &str, _user: &str) -> anyhow::Result<u32> {
    bail!("`{key}`: serving only some local users is not supported on this platform yet")
}

/// Binds and serves every proxy as a task of `tasks`; the socket files are removed when the
/// returned guards drop.
pub(crate) async fn serve(
    built: &[Built],
    tasks: &mut Tasks,
) -> anyhow::Result<Vec<shiftkey_sidecar::unix::SocketFile>> {
    let mut sockets = Vec::new();
    for b in built {
        let name = b.proxy.name().to_owned();
        let limits = serve::ServeLimits {
            max_connections: b.max_connections,
            queue: b.max_connections,
            ..Default::default()
        };
        // Only the users the configuration names may spend the credential; refusals are
        // counted with the proxy's own.
        let gate = serve::Gate::users(b.users.clone(), b.proxy.refusals().clone());
        match &b.listen {
            Listen::Tcp(addr) => {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("`proxy.{name}.listen`: cannot listen on {addr}"))?;
                let local = listener.local_addr()?;
                // Each worker thread forwards through its own client, so that a request, its
                // upstream connection and its answer stay on one thread.
                let routers = (0..b.workers)
                    .map(|_| {
                        // A web page must not reach the plant's credentials through a browser here.
                        Ok(serve::with_host_check_only(
                            Arc::clone(&b.proxy).router_with(http_client(b.timeout)?),
                            serve::Hosts::loopback_and(&[]),
                            gate.refusals.clone(),
                        ))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let mut workers = Workers::serve_tcp(
                    listener.into_std()?,
                    routers,
                    limits,
                    gate,
                    &format!("proxy-{name}"),
                )
                .with_context(|| format!("`proxy.{name}`: cannot start its workers"))?;
                tasks.spawn(&format!("proxy-{name}"), async move {
                    let worker = workers.ended().await;
                    tracing::error!(proxy = name.as_str(), worker, "a proxy worker ended");
                });
                tracing::info!(proxy = b.proxy.name(), %local, workers = b.workers, "proxy `{}` on http://{local}/", b.proxy.name());
            }
            Listen::Socket(path) => {
                let listener =
                    shiftkey_sidecar::unix::bind_socket(path, &format!("proxy.{name}.socket"))
                        .await?;
                sockets.push(shiftkey_sidecar::unix::SocketFile(path.clone()));
                tasks.spawn(
                    &format!("proxy-{name}"),
                    serve::serve_unix(listener, Arc::clone(&b.proxy).router(), limits, gate),
                );
                tracing::info!(proxy = name.as_str(), socket = %path.display(), "proxy `{name}` on {}", path.display());
            }
        }
    }
    Ok(sockets)
}
