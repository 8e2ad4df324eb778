//! `[proxy.NAME]`: the healing proxies for unchanged scripts, built from the configuration and
//! served (the proxy itself is `shiftkey_sidecar::Proxy`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use shiftkey_http::{AuthMiddleware, Injector};
use shiftkey_policy::ErrorRateMonitor;
use shiftkey_sidecar::{LocalLogin, Proxy, ProxyConfig, serve};

use crate::config::{Config, ProxySection};
use crate::supervise::Tasks;

/// A built proxy and where it listens.
pub(crate) struct Built {
    pub(crate) proxy: Arc<Proxy>,
    listen: Listen,
    max_connections: usize,
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
    let upstream: url::Url = p
        .upstream
        .parse()
        .with_context(|| format!("`{key}.upstream`: `{}` is not a URL", p.upstream))?;
    let mut proxy_cfg = ProxyConfig::new(name, upstream).replay_limit(
        usize::try_from(p.replay_limit_kib.saturating_mul(1024)).unwrap_or(usize::MAX),
    );
    let mut mw = match (&p.token, teamcenter) {
        (Some(token), _) => AuthMiddleware::builder(tokens.get(token)?.clone()),
        (None, Some(tc)) => {
            let tc_cfg = cfg.teamcenter()?;
            let password = tc_cfg
                .password
                .as_ref()
                .context("`teamcenter.password` is required in session mode")?
                .resolve("teamcenter.password")?;
            proxy_cfg = proxy_cfg.teamcenter(LocalLogin {
                user: tc_cfg.user.clone(),
                password,
            });
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
    .attempt_timeout(timeout);
    if let Some(m) = monitor {
        mw = mw.monitor(Arc::clone(m));
    }
    // No redirects: a 3xx goes back to the script as it is, and our credential never follows
    // it to another origin.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(shiftkey_auth::CONNECT_TIMEOUT)
        .timeout(timeout)
        .build()
        .context("cannot build the proxy's HTTP client")?;
    let proxy = Proxy::new(proxy_cfg, http, mw.build())?;
    let listen = match (&p.listen, &p.socket) {
        (Some(addr), _) => Listen::Tcp(addr.clone()),
        (None, Some(path)) => Listen::Socket(path.clone()),
        (None, None) => anyhow::bail!("`{key}`: set `listen` or `socket`"),
    };
    Ok(Built {
        proxy,
        listen,
        max_connections: p.max_connections,
    })
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
            ..Default::default()
        };
        let router = Arc::clone(&b.proxy).router();
        match &b.listen {
            Listen::Tcp(addr) => {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("`proxy.{name}.listen`: cannot listen on {addr}"))?;
                let local = listener.local_addr()?;
                // A web page must not reach the plant's credentials through a browser here.
                let router = serve::with_host_check_only(router, serve::Hosts::loopback_and(&[]));
                tasks.spawn(
                    &format!("proxy-{name}"),
                    serve::serve_tcp(listener, router, limits),
                );
                tracing::info!(proxy = name.as_str(), %local, "proxy `{name}` on http://{local}/");
            }
            Listen::Socket(path) => {
                let listener =
                    shiftkey_sidecar::unix::bind_socket(path, &format!("proxy.{name}.socket"))
                        .await?;
                sockets.push(shiftkey_sidecar::unix::SocketFile(path.clone()));
                tasks.spawn(
                    &format!("proxy-{name}"),
                    serve::serve_unix(listener, router, limits),
                );
                tracing::info!(proxy = name.as_str(), socket = %path.display(), "proxy `{name}` on {}", path.display());
            }
        }
    }
    Ok(sockets)
}
