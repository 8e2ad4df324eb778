//! The `shiftkey` binary: glue over the library crates (ripgrep's shape: `main → run()`,
//! the error chain printed once).

#![forbid(unsafe_code)]
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line program reports to the terminal"
)]

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
        }
    })
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
