//! The `shiftkey` binary: glue over the library crates (ripgrep's shape: `main → run()`,
//! the error chain printed once).

#![forbid(unsafe_code)]
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line program reports to the terminal"
)]

mod config;
#[cfg(feature = "demo")]
mod demo;
mod doctor;
mod harden;
mod net;
mod ops;
mod proxy;
mod sink;
mod site;
mod store_cmd;
mod supervise;
mod systemd;
mod tokens;
mod words;

use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use shiftkey_policy::ErrorRateMonitor;

/// A runtime failure (configuration, network, server, sink).
pub(crate) const EXIT_FAILURE: u8 = 1;
/// Bad command-line arguments (clap's own code).
pub(crate) const EXIT_USAGE: u8 = 2;
/// The configuration is missing, invalid, or references a secret that cannot be read.
pub(crate) const EXIT_CONFIG: u8 = 3;
/// A token store file is unreadable, tampered with, or opened with the wrong key.
pub(crate) const EXIT_STORE: u8 = 4;
/// A server refused the credentials (wrong password, revoked client): an operator must act.
pub(crate) const EXIT_AUTH: u8 = 5;
/// A server could not be reached or kept failing (retry later).
pub(crate) const EXIT_UNAVAILABLE: u8 = 6;
/// `doctor` found a problem (its report says which).
pub(crate) const EXIT_DOCTOR: u8 = 7;

/// Keeps Teamcenter-to-shop-floor sync authenticated around the clock.
#[derive(Debug, Parser)]
#[command(
    name = "shiftkey",
    version,
    about,
    long_about = None,
    after_help = "Exit codes: 0 ok, 1 failure, 2 bad arguments, 3 bad configuration, 4 unreadable token store, \
                  5 credentials refused, 6 server unavailable, 7 doctor found a problem."
)]
struct Cli {
    /// Log at debug level (to stderr).
    #[arg(long, global = true)]
    verbose: bool,
    /// Log as JSON lines (for journald or a log shipper) instead of text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole job on embedded defaults: an emulated Teamcenter with realistic faults, the
    /// sync daemon into a SQLite file, a simulated day in about a minute, then a report.
    #[cfg(feature = "demo")]
    Demo(demo::DemoArgs),
    /// Run the Teamcenter/OAuth emulator alone.
    #[cfg(feature = "demo")]
    Sim(demo::SimArgs),
    /// Run the sync daemon: a cycle every `schedule.interval_minutes`, until SIGTERM or Ctrl-C
    /// (which stop it between batches).
    Run {
        /// The configuration file.
        #[arg(short, long, default_value = "shiftkey.toml")]
        config: std::path::PathBuf,
    },
    /// Run one sync cycle now and exit (for cron): reads changes since the sink's watermark.
    Sync(SyncArgs),
    /// Configuration helpers.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Named tokens (`[tokens.NAME]`): status, refresh, print, revoke.
    #[command(subcommand)]
    Token(tokens::TokenCommand),
    /// The encrypted token store: create a key, re-encrypt under a new key, verify every file.
    #[command(subcommand)]
    Store(store_cmd::StoreCommand),
    /// Serve tokens to local scripts (Unix socket, optional loopback HTTP) and the ops endpoints,
    /// until SIGTERM or Ctrl-C.
    Broker {
        /// The configuration file.
        #[arg(short, long, default_value = "shiftkey.toml")]
        config: std::path::PathBuf,
    },
    /// Serve the `[proxy.NAME]` proxies: an unchanged script points its base URL at one, and
    /// every request goes on to the server with a fresh token or Teamcenter session (`run`
    /// serves them too). Until SIGTERM or Ctrl-C.
    Proxy {
        /// The configuration file.
        #[arg(short, long, default_value = "shiftkey.toml")]
        config: std::path::PathBuf,
    },
    /// Check the configuration, the servers, the clock and the credentials; `--probe` measures
    /// the server's real token limits.
    Doctor(doctor::DoctorArgs),
    /// Print shell completions (bash, zsh, fish, elvish, powershell) to stdout, e.g.
    /// `shiftkey completions bash > /usr/share/bash-completion/completions/shiftkey`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) to stdout: `shiftkey man | man -l -`; with `--dir`, write it
    /// and one page per subcommand (`shiftkey-token-get.1`, ...) into that folder.
    Man {
        /// Write every page into this folder instead.
        #[arg(long, value_name = "DIR")]
        dir: Option<std::path::PathBuf>,
    },
}

/// Options of `shiftkey sync`.
#[derive(Debug, clap::Args)]
struct SyncArgs {
    /// Run one cycle and exit (the only mode for now; the daemon is `shiftkey run`, to come).
    #[arg(long)]
    once: bool,
    /// The configuration file.
    #[arg(short, long, default_value = "shiftkey.toml")]
    config: std::path::PathBuf,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print an annotated example configuration.
    Example,
    /// Load and check a configuration file (secrets are resolved, never printed).
    Check {
        /// The configuration file.
        #[arg(short, long, default_value = "shiftkey.toml")]
        config: std::path::PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { 0 });
        }
    };
    let filter = match log_filter(&cli) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("shiftkey: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let log = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let json = cli.log_json;
    if json {
        log.json().init();
    } else {
        log.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    // Before any secret is read: no core dump and no ptrace attach can reveal one.
    harden::no_dumps();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            if json {
                tracing::error!(error = %crate::causes(&e), "shiftkey stopped");
            } else {
                eprintln!("shiftkey: {}", causes(&e));
            }
            ExitCode::from(exit_code(&e))
        }
    }
}

/// A clap value parser for a finite number in `[min, max]`: a value outside is a usage error
/// (exit 2) naming the range, like any other bad argument.
pub(crate) fn number_in(min: f64, max: f64) -> impl Fn(&str) -> Result<f64, String> + Clone {
    move |s: &str| {
        let v: f64 = s
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not a number"))?;
        if v.is_finite() && (min..=max).contains(&v) {
            Ok(v)
        } else {
            Err(format!("{v} is outside {min}..={max}"))
        }
    }
}

/// An error and its causes, each said once. Many errors print their source inside their own
/// message (`no token: <the login's error>`), so printing the chain as `{:#}` does would repeat
/// a sentence once per level; a cause whose text the message already holds is left out.
pub(crate) fn causes(e: &anyhow::Error) -> String {
    shiftkey_auth::causes(e.as_ref())
}

/// What is logged: `RUST_LOG` when set (tracing-subscriber's `EnvFilter` syntax, e.g.
/// `warn,shiftkey_auth=debug`); otherwise `--verbose` logs everything at debug, and by default
/// the services (`run`, `broker`) log shiftkey's own events at info and the rest at warn, the
/// other commands warnings only.
fn log_filter(cli: &Cli) -> Result<tracing_subscriber::EnvFilter, String> {
    match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => tracing_subscriber::EnvFilter::try_new(&v)
            .map_err(|e| format!("RUST_LOG=`{v}` is not a log filter: {e}")),
        _ => {
            let default = if cli.verbose {
                "debug"
            } else if matches!(
                cli.command,
                Command::Run { .. } | Command::Broker { .. } | Command::Proxy { .. }
            ) {
                "warn,shiftkey=info"
            } else {
                "warn"
            };
            tracing_subscriber::EnvFilter::try_new(default).map_err(|e| e.to_string())
        }
    }
}

/// The documented exit code of an error, from the first typed cause in its chain.
fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if cause.downcast_ref::<config::ConfigProblem>().is_some() {
            return EXIT_CONFIG;
        }
        if cause.downcast_ref::<shiftkey_auth::StoreError>().is_some() {
            return EXIT_STORE;
        }
        if let Some(a) = cause.downcast_ref::<shiftkey_auth::AuthError>() {
            return if a.is_permanent() {
                EXIT_AUTH
            } else {
                EXIT_UNAVAILABLE
            };
        }
        if let Some(shiftkey_teamcenter::TcError::InvalidCredentials { .. }) =
            cause.downcast_ref::<shiftkey_teamcenter::TcError>()
        {
            return EXIT_AUTH;
        }
        if cause
            .downcast_ref::<shiftkey_sync::SyncError>()
            .is_some_and(shiftkey_sync::SyncError::is_permanent)
        {
            return EXIT_AUTH;
        }
        if cause.downcast_ref::<reqwest::Error>().is_some() {
            return EXIT_UNAVAILABLE;
        }
    }
    EXIT_FAILURE
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let out = rt.block_on(async move {
        match cli.command {
            #[cfg(feature = "demo")]
            Command::Demo(args) => demo::run(args).await,
            #[cfg(feature = "demo")]
            Command::Sim(args) => demo::sim(args).await,
            Command::Sync(args) => sync_once(args).await,
            Command::Run { config } => daemon(&config, Serve::Everything).await,
            Command::Broker { config } => daemon(&config, Serve::Broker).await,
            Command::Proxy { config } => daemon(&config, Serve::Proxies).await,
            Command::Token(cmd) => tokens::command(cmd).await,
            Command::Store(cmd) => store_cmd::command(cmd).await,
            Command::Doctor(args) => doctor::run(args).await,
            Command::Completions { shell } => {
                use clap::CommandFactory as _;
                clap_complete::generate(
                    shell,
                    &mut Cli::command(),
                    "shiftkey",
                    &mut std::io::stdout(),
                );
                Ok(ExitCode::SUCCESS)
            }
            Command::Man { dir } => {
                use clap::CommandFactory as _;
                match dir {
                    Some(dir) => clap_mangen::generate_to(Cli::command(), &dir).map_err(|e| {
                        anyhow::anyhow!("writing the manual pages into {}: {e}", dir.display())
                    })?,
                    None => clap_mangen::Man::new(Cli::command())
                        .render(&mut std::io::stdout())
                        .map_err(|e| anyhow::anyhow!("writing the manual page: {e}"))?,
                }
                Ok(ExitCode::SUCCESS)
            }
            Command::Config(ConfigCommand::Example) => {
                print!("{}", config::EXAMPLE);
                Ok(ExitCode::SUCCESS)
            }
            Command::Config(ConfigCommand::Check { config }) => {
                let (cfg, secrets) = config::Config::check(&config)?;
                if cfg.sink.is_some() {
                    cfg.sink_url()?;
                }
                println!(
                    "{}: ok ({} token(s), {secrets} secret reference(s) resolved)",
                    config.display(),
                    cfg.tokens.len()
                );
                Ok(ExitCode::SUCCESS)
            }
        }
    });
    // Tasks still running (a hung blocking call included) do not hold the process.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    out
}

/// The Teamcenter client of `[teamcenter]`, its middleware reporting to `monitor`: in session
/// mode with its own login (timed for metrics and alerts), in gateway mode with the manager of
/// the `[tokens.NAME]` it names (from `tokens`).
fn teamcenter(
    cfg: &config::Config,
    monitor: Option<Arc<ErrorRateMonitor>>,
    tokens: &tokens::Tokens,
) -> anyhow::Result<shiftkey_teamcenter::TcClient> {
    use anyhow::Context as _;
    let tc = cfg.teamcenter()?;
    let read_timeout = std::time::Duration::from_secs(tc.read_timeout_secs);
    let http = &net::teamcenter_client(read_timeout)?;
    let base: url::Url = tc
        .url
        .parse()
        .with_context(|| format!("`teamcenter.url`: `{}` is not a URL", tc.url))?;
    let max_answer =
        usize::try_from(tc.max_answer_mib.saturating_mul(1024 * 1024)).unwrap_or(usize::MAX);
    let builder = if let Some(name) = &tc.token {
        // Gateway mode: the token's own manager, shared with the broker that serves it.
        shiftkey_teamcenter::TcClient::gateway_builder(
            http.clone(),
            base,
            tokens.get(name)?.clone(),
        )
    } else {
        let password = tc
            .password
            .as_ref()
            .context("`teamcenter.password` is required in session mode")?
            .resolve("teamcenter.password")?;
        let mut session = shiftkey_teamcenter::SessionConfig::new(base, tc.user.clone(), password);
        session.group.clone_from(&tc.group);
        session.role.clone_from(&tc.role);
        session.allow_insecure_http = cfg.allow_insecure_http;
        // The login is timed for metrics and, with a monitor, for the alerts.
        let hook = monitor.as_ref().map(|m| refresh_hook(Arc::clone(m)));
        shiftkey_teamcenter::TcClient::builder(http.clone(), session).wrap_login(move |login| {
            let timed = tokens::Timed::wrap("teamcenter", login);
            Arc::new(match hook {
                Some(hook) => timed.with_hook(hook),
                None => timed,
            })
        })
    };
    let builder = match monitor {
        Some(m) => builder.monitor(m),
        None => builder,
    };
    builder
        .name("teamcenter")
        .read_timeout(read_timeout)
        .max_answer(max_answer)
        .build()
        .context("`[teamcenter]`")
}

/// Feeds token refresh outcomes into the alert monitor.
fn refresh_hook(monitor: Arc<ErrorRateMonitor>) -> tokens::RefreshHook {
    Arc::new(move |ok, latency| {
        monitor.record(
            tokio::time::Instant::now().into_std(),
            shiftkey_policy::Event::Refresh { ok, latency },
        );
    })
}

fn engine_config(cfg: &config::Config) -> anyhow::Result<shiftkey_sync::EngineConfig> {
    let (read, feedback) = site::configs(cfg.teamcenter()?, cfg.overlap())?;
    Ok(shiftkey_sync::EngineConfig {
        interval: std::time::Duration::from_secs(cfg.schedule.interval_minutes * 60),
        batch: cfg.schedule.batch,
        read,
        feedback,
        lease_check: cfg
            .lease
            .as_ref()
            .map_or(shiftkey_sync::EngineConfig::default().lease_check, |l| {
                std::time::Duration::from_secs(l.check_secs)
            }),
        ..Default::default()
    })
}

async fn sync_once(args: SyncArgs) -> anyhow::Result<ExitCode> {
    use anyhow::Context as _;
    anyhow::ensure!(
        args.once,
        "use `shiftkey sync --once` for one cycle, or `shiftkey run` for the daemon"
    );
    let cfg = config::Config::load(&args.config)?;
    net::warn_if_insecure(&cfg);
    // Under `[lease]` only the leader runs the cycle, so a timer on every host syncs once, on
    // one of them; the lease is held until the cycle ends. A follower logs in nowhere.
    let lease = match cfg.lease_url()? {
        Some((url, key)) => {
            let held = shiftkey_store::LeaderLease::try_acquire(&url, key)
                .await
                .with_context(|| format!("checking the leader lease {key} (`[lease]`)"))?;
            if held.is_none() {
                println!("not syncing: another process holds the leader lease {key}");
                return Ok(ExitCode::SUCCESS);
            }
            held
        }
        None => None,
    };
    // Gateway mode takes its tokens from a `[tokens.NAME]` (and its store).
    let tokens = if let Some(name) = &cfg.teamcenter()?.token {
        tokens::Tokens::build_one(&cfg, &net::credential_client()?, name).await?
    } else {
        tokens::Tokens::default()
    };
    let tc = teamcenter(&cfg, None, &tokens)?;
    let session = tc.clone();
    let (sink, sql) = sink::open(&cfg).await?;
    let engine = shiftkey_sync::Engine::new(tc, sink, engine_config(&cfg)?);
    let report = engine.cycle(&shiftkey_sync::Stop::default()).await;
    // The session goes back to the pool whatever the cycle did (a cron job every 15 minutes
    // would otherwise hold a server process per run until the pool's timeout).
    session.end_session().await;
    sql.close().await;
    if let Some(lease) = lease
        && let Err(e) = lease.release().await
    {
        // The lease ends with this process's connection anyway.
        tracing::warn!(error = %e, "releasing the leader lease");
    }
    let report = report?;
    println!(
        "read {}, inserted {}, updated {}, unchanged {}, feedback pushed {}",
        report.read, report.inserted, report.updated, report.unchanged, report.feedback_pushed
    );
    Ok(ExitCode::SUCCESS)
}

/// What a long-running command serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Serve {
    /// `run`: the sync, the broker and the proxies.
    Everything,
    /// `broker`: the token broker.
    Broker,
    /// `proxy`: the `[proxy.NAME]` proxies.
    Proxies,
}

/// `run`, `broker` and `proxy`: what `serving` names (the broker for `[tokens.*]`, the
/// `[proxy.*]` proxies, the sync loop), the ops server and the alerts, until SIGTERM or Ctrl-C.
async fn daemon(path: &std::path::Path, serving: Serve) -> anyhow::Result<ExitCode> {
    let sync = serving == Serve::Everything;
    let cfg = config::Config::load(path)?;
    cfg.resolve_all()?;
    net::warn_if_insecure(&cfg);
    let http = net::credential_client()?;
    let ops_listen = cfg.ops.listen_for(sync);
    let ops_listener = match ops_listen {
        Some(listen) => Some(ops::bind(listen).await?),
        None => None,
    };
    // The broker's HTTPS port and certificate, checked before anything starts.
    let https = match (&cfg.broker.https, serving != Serve::Proxies) {
        (Some(addr), true) => {
            let acceptor = tokens::broker_tls(&cfg)?;
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("`broker.https`: cannot listen on {addr}: {e}"))?;
            Some((listener, acceptor))
        }
        _ => None,
    };
    let prometheus = if ops_listen.is_some() {
        Some(ops::install_recorder()?)
    } else {
        None
    };
    let monitor_cfg = shiftkey_policy::MonitorConfig {
        unauthorized_warning: cfg.ops.unauthorized_warning,
        unauthorized_critical: cfg.ops.unauthorized_critical,
        refresh_failures_max: cfg.ops.refresh_failures_max,
        ..Default::default()
    };
    // The alert sink needs the ops state, which needs the managers: a late-bound slot.
    let ops_slot: Arc<std::sync::OnceLock<Arc<ops::Ops>>> = Arc::default();
    let monitor = Arc::new(
        ErrorRateMonitor::new(monitor_cfg, tokio::time::Instant::now().into_std())
            .with_sink(LateSink(Arc::clone(&ops_slot))),
    );
    let tokens =
        tokens::Tokens::build(&cfg, &http, Some(refresh_hook(Arc::clone(&monitor)))).await?;
    let tc = if sync {
        Some(teamcenter(&cfg, Some(Arc::clone(&monitor)), &tokens)?)
    } else {
        None
    };
    // The Teamcenter session the `teamcenter = true` proxies share: the sync's, or, without a
    // sync, one of their own (watched and shut down like the sync's).
    let proxy_tc =
        if tc.is_none() && serving != Serve::Broker && cfg.proxy.values().any(|p| p.teamcenter) {
            Some(teamcenter(&cfg, Some(Arc::clone(&monitor)), &tokens)?)
        } else {
            None
        };
    let proxies = if serving == Serve::Broker {
        Vec::new()
    } else {
        proxy::build(
            &cfg,
            &tokens,
            tc.as_ref().or(proxy_tc.as_ref()),
            Some(&monitor),
        )?
    };
    if serving == Serve::Proxies && proxies.is_empty() {
        anyhow::bail!(config::ConfigProblem(format!(
            "{}: `shiftkey proxy` has nothing to serve; add a `[proxy.NAME]` section",
            path.display()
        )));
    }
    let proxy_session = proxy_tc.as_ref().map(|t| t.middleware().manager().clone());
    let proxy_tc_client = proxy_tc;
    let mut watched: Vec<(String, shiftkey_auth::TokenManager)> = tokens
        .managers
        .iter()
        .map(|(n, m)| (n.clone(), m.clone()))
        .collect();
    // In gateway mode Teamcenter's manager is a `[tokens.NAME]`'s, watched as that token.
    let gateway = cfg.teamcenter.as_ref().is_some_and(|t| t.token.is_some());
    if let Some(tc) = tc.as_ref().filter(|_| !gateway) {
        watched.insert(
            0,
            ("teamcenter".to_owned(), tc.middleware().manager().clone()),
        );
    }
    if let Some(m) = &proxy_session {
        watched.insert(0, ("teamcenter".to_owned(), m.clone()));
    }
    let ops = ops::Ops::new(
        &cfg,
        prometheus,
        watched,
        proxies.iter().map(|b| Arc::clone(&b.proxy)).collect(),
        tc.as_ref().map(|t| t.middleware().clone()),
        sync.then(|| std::time::Duration::from_secs(cfg.schedule.interval_minutes * 60)),
    )?;
    let _ = ops_slot.set(Arc::clone(&ops));
    let mut tasks = supervise::Tasks::default();
    if let Some(listener) = ops_listener {
        let (addr, task) = ops::serve(listener, Arc::clone(&ops)).await?;
        tasks.spawn("ops", async move {
            if let Err(e) = task.await
                && e.is_panic()
            {
                std::panic::resume_unwind(e.into_panic());
            }
        });
        tracing::info!(%addr, "ops endpoints on http://{addr}/status");
    }
    {
        let ops = Arc::clone(&ops);
        let cfg_expiry = config::Config::load(path)?;
        tasks.spawn("ops-poll", async move {
            let mut tick = 0u64;
            loop {
                if tick.is_multiple_of(21_600) {
                    ops.check_expiries(&cfg_expiry);
                }
                ops.poll();
                tick += 1;
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        });
    }
    // Warm up: every token fetched (or adopted from the store) now, so scripts get one at once
    // and a refused credential shows in the log and `/readyz` before anyone asks. One-shot
    // tasks: not watched; their refreshers are.
    let mut warmups = Vec::new();
    for (name, m) in &tokens.managers {
        tasks.watch_refresher(name, m);
        let (name, m) = (name.clone(), m.clone());
        warmups.push(tokio::spawn(async move {
            if let Err(e) = m.token().await {
                tracing::error!(token = %name, error = %e, "cannot get a token");
            }
        }));
    }
    if let Some(tc) = tc.as_ref().filter(|_| !gateway) {
        tasks.watch_refresher("teamcenter", tc.middleware().manager());
    }
    if let Some(m) = &proxy_session {
        tasks.watch_refresher("teamcenter", m);
    }
    let _proxy_sockets = proxy::serve(&proxies, &mut tasks).await?;
    let _socket_file;
    if serving == Serve::Proxies {
        tracing::info!("serving {} proxy(ies)", proxies.len());
    } else if !tokens.managers.is_empty() {
        let broker = shiftkey_sidecar::broker::Broker::new(tokens.managers.clone());
        let socket = cfg.broker.socket_path()?;
        let listener = shiftkey_sidecar::unix::bind_socket(&socket, "broker.socket").await?;
        _socket_file = shiftkey_sidecar::unix::SocketFile(socket.clone());
        tasks.spawn(
            "broker",
            shiftkey_sidecar::broker::serve_socket(listener, Arc::clone(&broker)),
        );
        tracing::info!(
            socket = %socket.display(),
            "serving {} token(s) on {}",
            tokens.managers.len(),
            socket.display()
        );
        if let Some(addr) = &cfg.broker.http {
            let auth = Arc::new(tokens::broker_clients(&cfg)?);
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("`broker.http`: cannot listen on {addr}: {e}"))?;
            let addr = listener.local_addr()?;
            let router = shiftkey_sidecar::serve::with_host_check(
                shiftkey_sidecar::broker::http_router(Arc::clone(&broker), auth),
                shiftkey_sidecar::serve::Hosts::loopback_and(&[]),
            );
            tasks.spawn(
                "broker-http",
                shiftkey_sidecar::serve::serve(listener, router),
            );
            tracing::info!(%addr, "broker HTTP on http://{addr}/v1/tokens/NAME");
        }
        // Scripts on other hosts: TLS, and each client's secret.
        if let Some((listener, acceptor)) = https {
            let auth = Arc::new(tokens::broker_clients(&cfg)?);
            let addr = listener.local_addr()?;
            let router = shiftkey_sidecar::serve::with_deadline(
                shiftkey_sidecar::broker::http_router(Arc::clone(&broker), auth),
            );
            tasks.spawn(
                "broker-https",
                shiftkey_sidecar::serve::serve_tls(
                    listener,
                    router,
                    shiftkey_sidecar::serve::ServeLimits::default(),
                    acceptor,
                ),
            );
            tracing::info!(%addr, "broker HTTPS on https://{addr}/v1/tokens/NAME");
        }
    } else if !sync {
        anyhow::bail!(config::ConfigProblem(format!(
            "{}: the broker has nothing to serve; add a `[tokens.NAME]` section",
            path.display()
        )));
    }
    let stop = shiftkey_sync::Stop::default();
    let stopping = match serving {
        Serve::Everything => "stopping after the current batch",
        Serve::Broker | Serve::Proxies => "stopping: finishing the requests in flight",
    };
    let stopped = stop_on_signal(stop.clone(), stopping);
    let mut sink_to_close = None;
    let mut _keepalive = None;
    let tc_manager = tc
        .as_ref()
        .filter(|_| !gateway)
        .map(|t| t.middleware().manager().clone());
    // The sessions to log out at stop: the sync's, and the proxies' own.
    let sessions: Vec<shiftkey_teamcenter::TcClient> = tc
        .iter()
        .chain(proxy_tc_client.iter())
        .filter(|_| !gateway)
        .cloned()
        .collect();
    let work: std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>> =
        match tc {
            Some(tc) => {
                // Session mode keeps the session alive between cycles (under a lease, only
                // while this process leads: a follower holds no Teamcenter session); a gateway
                // has no session.
                let session = (!gateway).then(|| tc.clone());
                if !gateway && cfg.lease.is_none() {
                    _keepalive = Some(tc.keepalive()?);
                }
                let (sink, sql) = sink::open(&cfg).await?;
                sink_to_close = Some(sql);
                let observer = Arc::clone(&ops);
                let engine = shiftkey_sync::Engine::new(tc, sink, engine_config(&cfg)?)
                    .on_cycle(Arc::new(move |r| observer.cycle(r)));
                tracing::info!(
                    "syncing {} every {} min; SIGTERM or Ctrl-C stops",
                    cfg.teamcenter()?.url,
                    cfg.schedule.interval_minutes
                );
                let check = cfg
                    .lease
                    .as_ref()
                    .map_or(std::time::Duration::from_secs(5), |l| {
                        std::time::Duration::from_secs(l.check_secs)
                    });
                let mut lease = cfg.lease_url()?.map(|(url, key)| {
                    tracing::info!(
                        key,
                        "leader lease {key}: this process syncs only while it holds it"
                    );
                    shiftkey_sync::WatchedLease::spawn(url, key, check)
                });
                if let Some(l) = &lease {
                    tasks.spawn(
                        "lease",
                        report_lease(l.subscribe(), Arc::clone(&ops), session),
                    );
                }
                let hooked = supervise::hook_names("sync");
                let stop = stop.clone();
                let sync = tokio::spawn(async move {
                    if hooked {
                        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                        panic!("{}: this task was asked to die", supervise::PANIC_TASK_ENV);
                    }
                    let lease = lease
                        .as_mut()
                        .map(|l| l as &mut (dyn shiftkey_sync::Lease + '_));
                    engine.run(&stop, lease).await
                });
                Box::pin(async move {
                    match sync.await {
                        Ok(cycles) => cycles
                            .map(|n| tracing::info!(cycles = n, "stopped after {n} cycles"))
                            .map_err(anyhow::Error::from),
                        Err(_) => {
                            tracing::error!(task = "sync", "a background task panicked");
                            Err(anyhow::Error::new(supervise::TaskDied("sync".to_owned())))
                        }
                    }
                })
            }
            None => Box::pin(async move {
                stopped.notified().await;
                tracing::info!(
                    "{} stopped",
                    if serving == Serve::Proxies {
                        "the proxies"
                    } else {
                        "the broker"
                    }
                );
                Ok(())
            }),
        };
    // systemd: READY once every token was fetched (or refused) and the sync is up (its first
    // cycle, or standing by under a lease) or, without one, the broker serves; then a watchdog
    // ping every half `WatchdogSec` while the sync's loop shows life.
    {
        let managers: Vec<shiftkey_auth::TokenManager> =
            tokens.managers.values().cloned().collect();
        let ops = Arc::clone(&ops);
        let slack = std::time::Duration::from_secs(cfg.schedule.interval_minutes * 60 * 2 + 300);
        tasks.spawn("systemd", async move {
            for m in &managers {
                let _ = m.token().await;
            }
            if sync {
                ops.wait_up().await;
            }
            systemd::ready();
            match systemd::watchdog_every() {
                Some(every) => loop {
                    if ops.alive(slack) {
                        systemd::alive();
                    } else {
                        tracing::warn!("the sync shows no life: no watchdog ping");
                    }
                    tokio::time::sleep(every).await;
                },
                None => std::future::pending::<()>().await,
            }
        });
    }
    let grace = {
        let stop = stop.clone();
        async move {
            stop.stopped().await;
            tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        }
    };
    let result = tokio::select! {
        r = work => r,
        name = tasks.first_death() => {
            ops.task_died(&name);
            stop.request();
            Err(anyhow::Error::new(supervise::TaskDied(name)))
        }
        // A stop cancels Teamcenter calls at once; a sink call stuck on its database does not
        // end by itself, and SIGTERM must still end the process.
        () = grace => {
            tracing::warn!("the sync did not stop within 3 s of the request; stopping anyway");
            Ok(())
        }
    };
    if let Err(e) = &result {
        tracing::error!(error = %crate::causes(e), "shiftkey is stopping");
    }
    systemd::stopping();
    // However it stopped, the rest is bounded: SIGTERM ends the process within 5 s.
    let cleanup = async {
        tasks.abort_all();
        for w in &warmups {
            w.abort();
        }
        // Refreshers first: nothing logs in again while the sessions are logged out.
        for m in tokens
            .managers
            .values()
            .chain(tc_manager.as_ref())
            .chain(proxy_session.as_ref())
        {
            m.shutdown().await;
        }
        // Every Teamcenter session this process holds goes back to the pool, together and
        // within part of the stop's budget (a server that does not answer costs 2 s, not 10).
        let logouts = futures_util::future::join_all(sessions.iter().map(|s| s.end_session()));
        if tokio::time::timeout(STOP_LOGOUT, logouts).await.is_err() {
            tracing::debug!("Teamcenter logout at stop: no answer within 2 s");
        }
        if let Some(sink) = sink_to_close {
            sink.close().await;
        }
    };
    if tokio::time::timeout(STOP_CLEANUP, cleanup).await.is_err() {
        tracing::warn!("the clean stop took longer than 4 s; exiting anyway");
    }
    result?;
    Ok(ExitCode::SUCCESS)
}

/// How long the clean stop may take after the work stopped (sessions logged out, refreshers
/// stopped, the sink closed): SIGTERM ends the process within 5 s.
const STOP_CLEANUP: std::time::Duration = std::time::Duration::from_secs(4);

/// How long the logouts at stop may take, of [`STOP_CLEANUP`].
const STOP_LOGOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Reports every check of the leader lease to the ops state (`/status`, `/readyz`,
/// `shiftkey_sync_leader`, the watchdog's beat). While this process leads, a session-mode
/// Teamcenter session is kept alive; when it stops leading, the session is logged out: a
/// standby holds none.
async fn report_lease(
    mut reports: tokio::sync::watch::Receiver<shiftkey_sync::LeaseReport>,
    ops: Arc<ops::Ops>,
    session: Option<shiftkey_teamcenter::TcClient>,
) {
    let mut keepalive: Option<shiftkey_http::Keepalive> = None;
    let mut leading = false;
    while reports.changed().await.is_ok() {
        let state = reports.borrow_and_update().state.clone();
        ops.lease(&state);
        let leads = state == shiftkey_sync::LeaseState::Leader;
        if leads == leading {
            continue;
        }
        leading = leads;
        let Some(tc) = &session else { continue };
        if leads {
            match tc.keepalive() {
                Ok(k) => keepalive = Some(k),
                Err(e) => tracing::warn!(error = %e, "no session keepalive"),
            }
        } else {
            keepalive = None;
            if tc.end_session().await {
                tracing::info!("not the leader: logged out of Teamcenter");
            }
        }
    }
    // The lease went with the sync (a stop): nothing more to report, and this task is aborted
    // with the others; ending here would read as a task that died.
    drop(keepalive);
    std::future::pending::<()>().await;
}

/// Requests `stop` on SIGTERM or Ctrl-C; the returned notify fires then too.
fn stop_on_signal(stop: shiftkey_sync::Stop, stopping: &'static str) -> Arc<tokio::sync::Notify> {
    let notify = Arc::new(tokio::sync::Notify::new());
    let fired = Arc::clone(&notify);
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("{stopping}");
        stop.request();
        fired.notify_one();
    });
    notify
}

/// Forwards the monitor's alerts to the ops state once it exists.
#[derive(Debug)]
struct LateSink(Arc<std::sync::OnceLock<Arc<ops::Ops>>>);

impl shiftkey_policy::AlertSink for LateSink {
    fn alert(&self, a: &shiftkey_policy::Alert) {
        match self.0.get() {
            Some(o) => shiftkey_policy::AlertSink::alert(&ops::OpsSink(Arc::clone(o)), a),
            None => shiftkey_policy::AlertSink::alert(&shiftkey_policy::TracingSink, a),
        }
    }
}
