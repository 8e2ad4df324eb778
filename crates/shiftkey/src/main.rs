//! The `shiftkey` binary: glue over the library crates (ripgrep's shape: `main → run()`,
//! the error chain printed once).

#![forbid(unsafe_code)]
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line program reports to the terminal"
)]

mod config;
mod demo;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Keeps Teamcenter-to-shop-floor sync authenticated around the clock.
#[derive(Debug, Parser)]
#[command(name = "shiftkey", version, about, long_about = None)]
struct Cli {
    /// Log at debug level (to stderr).
    #[arg(long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole job on embedded defaults: an emulated Teamcenter with realistic faults, the
    /// sync daemon into a SQLite file, a simulated day in about a minute, then a report.
    Demo(demo::DemoArgs),
    /// Run the Teamcenter/OAuth emulator alone.
    Sim(SimArgs),
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

/// Options of `shiftkey sim`.
#[derive(Debug, clap::Args)]
struct SimArgs {
    /// Port on 127.0.0.1.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Simulated seconds per real second.
    #[arg(long, default_value_t = 1.0)]
    time_scale: f64,
    /// A scenario file (TOML; see shiftkey-sim's README for every key).
    #[arg(long)]
    config: Option<std::path::PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = if cli.verbose {
        tracing::Level::DEBUG
    } else {
        tracing::Level::WARN
    };
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("shiftkey: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.command {
            Command::Demo(args) => demo::run(args).await,
            Command::Sim(args) => sim(args).await,
            Command::Sync(args) => sync_once(args).await,
            Command::Run { config } => daemon(&config).await,
            Command::Config(ConfigCommand::Example) => {
                print!("{}", config::EXAMPLE);
                Ok(ExitCode::SUCCESS)
            }
            Command::Config(ConfigCommand::Check { config }) => {
                let cfg = config::Config::load(&config)?;
                cfg.teamcenter.password.resolve("teamcenter.password")?;
                cfg.sink_url()?;
                println!("{}: ok", config.display());
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

fn engine(
    cfg: &config::Config,
) -> anyhow::Result<(shiftkey_teamcenter::TcClient, shiftkey_sync::EngineConfig)> {
    use anyhow::Context as _;
    let password = cfg.teamcenter.password.resolve("teamcenter.password")?;
    let base = cfg
        .teamcenter
        .url
        .parse()
        .with_context(|| format!("`teamcenter.url`: `{}` is not a URL", cfg.teamcenter.url))?;
    let mut session =
        shiftkey_teamcenter::SessionConfig::new(base, cfg.teamcenter.user.clone(), password);
    session.group.clone_from(&cfg.teamcenter.group);
    session.role.clone_from(&cfg.teamcenter.role);
    let tc = shiftkey_teamcenter::TcClient::session(reqwest::Client::new(), session)?;
    let engine_cfg = shiftkey_sync::EngineConfig {
        interval: std::time::Duration::from_secs(cfg.schedule.interval_minutes * 60),
        batch: cfg.schedule.batch,
        read: shiftkey_teamcenter::ReadConfig {
            overlap: std::time::Duration::from_secs(cfg.schedule.overlap_minutes * 60),
            ..Default::default()
        },
        ..Default::default()
    };
    Ok((tc, engine_cfg))
}

async fn sync_once(args: SyncArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.once,
        "use `shiftkey sync --once` for one cycle, or `shiftkey run` for the daemon"
    );
    let cfg = config::Config::load(&args.config)?;
    let (tc, engine_cfg) = engine(&cfg)?;
    let sink = std::sync::Arc::new(shiftkey_shopfloor::SqlSink::connect(&cfg.sink_url()?).await?);
    let engine = shiftkey_sync::Engine::new(tc, sink, engine_cfg);
    let report = engine.cycle(&shiftkey_sync::Stop::default()).await?;
    println!(
        "read {}, inserted {}, updated {}, unchanged {}, feedback pushed {}",
        report.read, report.inserted, report.updated, report.unchanged, report.feedback_pushed
    );
    Ok(ExitCode::SUCCESS)
}

async fn daemon(path: &std::path::Path) -> anyhow::Result<ExitCode> {
    let cfg = config::Config::load(path)?;
    let (tc, engine_cfg) = engine(&cfg)?;
    let _keepalive = tc.keepalive()?;
    let sink = std::sync::Arc::new(shiftkey_shopfloor::SqlSink::connect(&cfg.sink_url()?).await?);
    let engine = shiftkey_sync::Engine::new(tc, sink, engine_cfg);
    let stop = shiftkey_sync::Stop::default();
    let on_signal = stop.clone();
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
        eprintln!("shiftkey: stopping after the current batch");
        on_signal.request();
    });
    eprintln!(
        "shiftkey: syncing {} every {} min; SIGTERM or Ctrl-C stops",
        cfg.teamcenter.url, cfg.schedule.interval_minutes
    );
    let cycles = engine.run(&stop, None).await?;
    eprintln!("shiftkey: stopped after {cycles} cycles");
    Ok(ExitCode::SUCCESS)
}

async fn sim(args: SimArgs) -> anyhow::Result<ExitCode> {
    use anyhow::Context as _;
    let cfg = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the scenario {}", path.display()))?;
            shiftkey_sim::SimConfig::from_toml(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        }
        None => shiftkey_sim::SimConfig::default(),
    };
    #[allow(
        clippy::disallowed_methods,
        reason = "simulated time starts at the real wall time"
    )]
    let start = std::time::SystemTime::now();
    let clock = std::sync::Arc::new(shiftkey_sim::ScaledClock::new(start, args.time_scale));
    let sim = shiftkey_sim::Sim::start_on(cfg, clock, ([127, 0, 0, 1], args.port).into())
        .await
        .with_context(|| format!("cannot listen on 127.0.0.1:{}", args.port))?;
    println!(
        "shiftkey sim: Teamcenter emulator on {} (time scale {}); Ctrl-C stops it",
        sim.url(),
        args.time_scale
    );
    tokio::signal::ctrl_c().await?;
    Ok(ExitCode::SUCCESS)
}
