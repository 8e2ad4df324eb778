//! `shiftkey demo`: the main job on embedded defaults, in compressed time.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use serde_json::json;
use shiftkey_auth::Clock;
use shiftkey_shopfloor::{Sink, SqlSink};
use shiftkey_sim::{ScaledClock, Sim, SimConfig};
use shiftkey_sync::{Engine, EngineConfig, Stop};
use shiftkey_teamcenter::{SessionConfig, TcClient};

/// Options of `shiftkey demo`.
#[derive(Debug, clap::Args)]
pub(crate) struct DemoArgs {
    /// Simulated hours to run (above 0, at most 8760).
    #[arg(long, default_value_t = 24.0, value_parser = crate::number_in(f64::MIN_POSITIVE, 24.0 * 365.0))]
    hours: f64,
    /// Simulated seconds per real second (1440: a day in a minute; 1 to 100000).
    #[arg(long, default_value_t = 1440.0, value_parser = crate::number_in(1.0, 100_000.0))]
    speed: f64,
    /// Print the final report as JSON (for scripts) instead of text.
    #[arg(long)]
    json: bool,
    /// The SQLite file to sync into (default: a fresh file in the temp folder).
    #[arg(long)]
    db: Option<std::path::PathBuf>,
}

/// The realistic fault profile: a pool that soft-times-out idle sessions in the working day, one
/// server restart, a few 429s and 503 bursts, latency and clock skew, a steady change stream.
fn scenario(hours: f64) -> SimConfig {
    let mut cfg = SimConfig::default();
    cfg.session.restart_at_hours = vec![(hours * 0.45).max(0.1)];
    cfg.faults.rate_limit_probability = 0.01;
    cfg.faults.retry_after_secs = 30;
    cfg.faults.server_error_probability = 0.005;
    cfg.faults.burst_len = 2;
    cfg.faults.latency_ms = 200;
    cfg.faults.date_skew_secs = 45;
    cfg.data.changes_per_hour = 8.0;
    cfg
}

pub(crate) async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.hours.is_finite() && args.hours > 0.0 && args.hours <= 24.0 * 365.0,
        "--hours must be between 0 and 8760, got {}",
        args.hours
    );
    anyhow::ensure!(
        args.speed.is_finite() && args.speed >= 1.0 && args.speed <= 100_000.0,
        "--speed must be between 1 and 100000, got {}",
        args.speed
    );
    #[allow(
        clippy::disallowed_methods,
        reason = "simulated time starts at the real wall time"
    )]
    let start = SystemTime::now();
    let clock: Arc<dyn Clock> = Arc::new(ScaledClock::new(start, args.speed));
    let sim = Sim::start(scenario(args.hours), Arc::clone(&clock))
        .await
        .context("starting the Teamcenter emulator")?;
    let db = args.db.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("shiftkey-demo-{}.db", std::process::id()))
    });
    if args.db.is_none() {
        let _ = std::fs::remove_file(&db);
    }
    let sink = Arc::new(
        SqlSink::connect(&format!("sqlite://{}?mode=rwc", db.display()))
            .await
            .with_context(|| format!("opening {}", db.display()))?,
    );
    let session = SessionConfig::new(sim.url().parse()?, "mfg_sync", "mfg_sync_pw".into());
    let tc = TcClient::session_with_clock(
        crate::net::teamcenter_client(shiftkey_teamcenter::DEFAULT_READ_TIMEOUT)?,
        session,
        Arc::clone(&clock),
    )?;
    let _keepalive = tc.keepalive()?;
    let cfg = EngineConfig::default();
    let engine = Engine::new(tc.clone(), sink.clone(), cfg.clone()).with_clock(Arc::clone(&clock));
    if !args.json {
        eprintln!(
            "shiftkey demo: {} simulated hours at {}× against an emulated Teamcenter on {} → {}",
            args.hours,
            args.speed,
            sim.url(),
            db.display()
        );
    }
    let stop = Stop::default();
    let ctrl_c = stop.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            ctrl_c.request();
        }
    });
    let t0 = clock.now();
    let end = t0 + Duration::from_secs_f64(args.hours * 3600.0);
    let (mut cycles, mut ok, mut records) = (0u64, 0u64, 0u64);
    let mut failures = Vec::new();
    let mut next = t0;
    while clock.now() < end && !stop.requested() {
        let now = clock.now();
        if now < next {
            clock.sleep((next - now).min(Duration::from_secs(60))).await;
            continue;
        }
        cycles += 1;
        match engine.cycle(&stop).await {
            Ok(r) => {
                ok += 1;
                records += r.inserted + r.updated;
                if !args.json {
                    let elapsed = clock.now().saturating_duration_since(t0).as_secs();
                    let s = tc.middleware().stats();
                    eprintln!(
                        "[sim {:02}:{:02}] cycle {cycles:>3}: read {:>3}, inserted {:>3}, updated {:>3}, unchanged {:>3} | 401s recovered {}, surfaced {}",
                        elapsed / 3600,
                        (elapsed % 3600) / 60,
                        r.read,
                        r.inserted,
                        r.updated,
                        r.unchanged,
                        s.recovered,
                        s.surfaced
                    );
                }
            }
            Err(e) => {
                let said = shiftkey_auth::causes(&e);
                if !args.json {
                    eprintln!("cycle {cycles} failed: {said}");
                }
                failures.push(said);
                if e.is_permanent() {
                    break;
                }
            }
        }
        next += cfg.interval;
    }
    let http = tc.middleware().stats();
    let tokens = tc.middleware().manager().stats();
    let limits = tc.middleware().learned_limits();
    let server = sim.stats();
    let stored = sink.all().await?.len();
    let watermark_set = sink.watermark().await?.is_some();
    sink.close().await;
    let report = json!({
        "simulated_hours": args.hours,
        "cycles": {"run": cycles, "succeeded": ok, "failed": failures.len(), "failures": failures},
        "records_synced": records,
        "process_revisions_in_sink": stored,
        "watermark_set": watermark_set,
        "refreshes": {"proactive": tokens.proactive, "reactive": tokens.reactive, "keepalives": http.keepalives, "logins": server.logins},
        "unauthorized": {"recovered": http.recovered, "surfaced": http.surfaced},
        "retries": http.retries,
        "premature_deaths": http.premature_deaths,
        "server_kills": server.killed,
        "faults_injected": server.faults,
        "learned_limits": {
            "lifetime_cap_s": limits.lifetime_cap.map(|d| d.as_secs()),
            "idle_limit_s": limits.idle_limit.map(|d| d.as_secs()),
        },
        "teamcenter_windows": {"opened": server.windows_opened, "closed": server.windows_closed, "died_with_session": server.windows_died, "leaked": sim.leaked_windows(), "stale_lines_sent": server.stale_lines},
        "sqlite": db.display().to_string(),
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!();
        println!("shiftkey demo report ({} simulated hours)", args.hours);
        println!("  cycles run / succeeded     {cycles} / {ok}");
        println!(
            "  records synced             {records} ({stored} process revisions in {})",
            db.display()
        );
        println!(
            "  logins                     {} (proactive refreshes {}, reactive {}, keepalives {})",
            server.logins, tokens.proactive, tokens.reactive, http.keepalives
        );
        println!("  401s recovered             {}", http.recovered);
        println!("  401s surfaced to the sync  {}", http.surfaced);
        println!("  retries (429/5xx)          {}", http.retries);
        println!(
            "  sessions killed by server  {}",
            crate::words::counts(&server.killed)
        );
        println!(
            "  bill-of-process windows    {} opened, {} closed, {} died with their session, {} leaked",
            server.windows_opened,
            server.windows_closed,
            server.windows_died,
            sim.leaked_windows()
        );
        println!(
            "  learned limits             lifetime cap {}, idle limit {}",
            crate::words::limit(limits.lifetime_cap),
            crate::words::limit(limits.idle_limit)
        );
    }
    // A surfaced 401 or a failed cycle is the demo failing its promise: exit 1.
    Ok(
        if http.surfaced == 0 && ok == cycles && sim.leaked_windows() == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(crate::EXIT_FAILURE)
        },
    )
}

/// Options of `shiftkey sim`.
#[derive(Debug, clap::Args)]
pub(crate) struct SimArgs {
    /// Port on 127.0.0.1.
    #[arg(long, default_value_t = 8080)]
    pub(crate) port: u16,
    /// Simulated seconds per real second (1 to 100000).
    #[arg(long, default_value_t = 1.0, value_parser = crate::number_in(1.0, 100_000.0))]
    pub(crate) time_scale: f64,
    /// A scenario file (TOML; see shiftkey-sim's README for every key).
    #[arg(long)]
    pub(crate) config: Option<std::path::PathBuf>,
}

/// `shiftkey sim`: the emulator alone, until Ctrl-C.
pub(crate) async fn sim(args: SimArgs) -> anyhow::Result<ExitCode> {
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
