//! `cargo xtask soak`: the sync daemon against the emulator for N simulated days under a fault
//! profile, in paused tokio time (a month runs in seconds to minutes), then a report and its goals.
//!
//! Usage: `soak [--days N] [--profile NAME|all] [--seed S] [--json FILE]`
//! Profiles: calm, teamcenter-busy-pool, lifetime-cap, restarts, flaky, rotation-storm; `all` runs
//! every one. Exits 1 when a goal is missed: 0 surfaced 401s, every rejection the emulator sent
//! accounted for by a client (healed or surfaced, the sums equal to the emulator's count), 0
//! refresh-token reuse kills, 0 cycles failed because of auth,
//! token-endpoint calls ≤ 1.2 × the minimum the timing law allows (plus the deaths no client can
//! avoid: one per restart, and two per limit it cannot know before seeing it twice), and at most
//! 10 % of cycles failed for any other reason.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line tool reports to the terminal"
)]

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde_json::{Value, json};
use shiftkey_auth::strategies::{ClientAuth, OAuthClient, OAuthPassword, OAuthRefresh};
use shiftkey_auth::timing::{RefreshConfig, margins};
use shiftkey_auth::{Clock, MemoryStore, TokenManager};
use shiftkey_http::HttpError;
use shiftkey_shopfloor::{ApplyReport, Feedback, ProcessRecord, Sink, SinkError};
use shiftkey_sim::{Sim, SimConfig};
use shiftkey_sync::{Engine, EngineConfig, Stop, SyncError};
use shiftkey_teamcenter::{SessionConfig, TcClient};

const PROFILES: [&str; 6] = [
    "calm",
    "teamcenter-busy-pool",
    "lifetime-cap",
    "restarts",
    "flaky",
    "rotation-storm",
];

/// A shop floor in memory (the soak runs in paused time, which a database pool would not
/// survive): the same contract as `SqlSink` — idempotent apply, watermark with the batch.
#[derive(Debug, Default)]
struct MemorySink {
    state: Mutex<(BTreeMap<String, ProcessRecord>, Option<SystemTime>)>,
}

#[async_trait]
impl Sink for MemorySink {
    async fn apply(
        &self,
        batch: &[ProcessRecord],
        watermark: SystemTime,
    ) -> Result<ApplyReport, SinkError> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut report = ApplyReport::default();
        for p in batch {
            match state.0.get(&p.uid) {
                Some(old) if old == p => report.unchanged += 1,
                Some(_) => report.updated += 1,
                None => report.inserted += 1,
            }
            state.0.insert(p.uid.clone(), p.clone());
        }
        state.1 = Some(watermark);
        Ok(report)
    }
    async fn watermark(&self) -> Result<Option<SystemTime>, SinkError> {
        Ok(self.state.lock().unwrap_or_else(PoisonError::into_inner).1)
    }
    async fn stored_versions(
        &self,
        uids: &[String],
    ) -> Result<BTreeMap<String, SystemTime>, SinkError> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(uids
            .iter()
            .filter_map(|u| state.0.get(u).map(|p| (u.clone(), p.last_modified)))
            .collect())
    }
    async fn pending_feedback(&self, _limit: i64) -> Result<Vec<Feedback>, SinkError> {
        Ok(Vec::new())
    }
    async fn mark_feedback_sent(&self, _id: i64) -> Result<(), SinkError> {
        Ok(())
    }
}

/// The emulator scenario of a profile, and what the client side looks like.
struct Setup {
    sim: SimConfig,
    /// OAuth gateway (bearer tokens) instead of a Teamcenter session.
    gateway: bool,
    /// Processes sharing one stored token (rotation-storm).
    processes: usize,
    /// The lifetime the server really enforces.
    true_lifetime: Duration,
    /// The idle timeout the server really enforces, when it does.
    true_idle: Option<Duration>,
    /// Server kills no client can avoid (restarts).
    forced_kills: u64,
    /// Limits below what the client assumes: each must be seen twice before it can be known
    /// (the learner's rule), so two deaths each are unavoidable.
    unknown_limits: u64,
}

fn setup(profile: &str, days: f64, seed: u64) -> Option<Setup> {
    let mut sim = SimConfig::default();
    sim.faults.seed = seed;
    sim.session.seed = seed;
    sim.data.seed = seed;
    sim.data.changes_per_hour = 4.0;
    let hard = Duration::from_secs(sim.session.hard_timeout_secs);
    let mut s = Setup {
        sim,
        gateway: false,
        processes: 1,
        true_lifetime: hard,
        true_idle: None,
        forced_kills: 0,
        unknown_limits: 0,
    };
    match profile {
        "calm" => {
            s.sim.session.load_by_hour = [1; 24];
            s.sim.session.load_noise = 0;
        }
        "teamcenter-busy-pool" => {
            // Idle sessions die after 10 min in the working day: shorter than the 15-min cycle,
            // so only keepalives keep the session.
            s.sim.session.soft_timeout_secs = 600;
            s.true_idle = Some(Duration::from_secs(600));
            s.unknown_limits = 1;
        }
        "lifetime-cap" => {
            s.gateway = true;
            s.sim.oauth.access_ttl_secs = 8 * 3600;
            s.sim.oauth.access_ttl_cap_secs = Some(4 * 3600);
            s.true_lifetime = Duration::from_secs(4 * 3600);
            s.unknown_limits = 1;
        }
        "restarts" => {
            // A restart every 30 simulated hours, at odd times of day.
            let mut at = 7.5;
            while at < days * 24.0 {
                s.sim.session.restart_at_hours.push(at);
                at += 30.0;
            }
            s.forced_kills = s.sim.session.restart_at_hours.len() as u64;
        }
        "flaky" => {
            s.sim.faults.rate_limit_probability = 0.02;
            s.sim.faults.retry_after_secs = 30;
            s.sim.faults.server_error_probability = 0.01;
            s.sim.faults.burst_len = 3;
            s.sim.faults.drop_probability = 0.005;
            s.sim.faults.latency_ms = 150;
            s.sim.faults.date_skew_secs = 600;
        }
        "rotation-storm" => {
            s.gateway = true;
            s.processes = 8;
            s.sim.oauth.access_ttl_secs = 3600;
            s.true_lifetime = Duration::from_secs(3600);
        }
        _ => return None,
    }
    Some(s)
}

/// The refresh period the timing law gives a lifetime `l` (DESIGN §3.2, the auth crate's own
/// `timing::margins`), jitter at its mean.
fn law_period(l: Duration) -> Duration {
    let cfg = RefreshConfig::default();
    let soft = margins(&cfg, l).soft;
    l.saturating_sub(soft + soft.mul_f64(cfg.jitter_fraction / 2.0))
}

/// Whether a failed cycle failed because of authentication.
fn auth_failure(e: &SyncError) -> bool {
    match e {
        SyncError::Teamcenter(t) => {
            matches!(t, shiftkey_teamcenter::TcError::InvalidCredentials { .. })
                || t.http_error().is_some_and(|h| {
                    matches!(
                        h,
                        HttpError::Token(_)
                            | HttpError::Rejected { .. }
                            | HttpError::NotReplayable
                            | HttpError::AuthCircuitOpen { .. }
                    )
                })
        }
        _ => false,
    }
}

async fn run_profile(profile: &str, days: f64, seed: u64) -> Result<Value, String> {
    let s = setup(profile, days, seed).ok_or_else(|| format!("unknown profile `{profile}`"))?;
    // A simulated start, not the real one: the busy hours of the day, and so the whole run,
    // depend on the seed only (2026-01-05 00:00 UTC, a Monday).
    let start = std::time::UNIX_EPOCH + Duration::from_secs(1_767_571_200);
    let clock: Arc<dyn Clock> = Arc::new(shiftkey_sim::ScaledClock::new(start, 1.0));
    let refresh = |i: u64| shiftkey_auth::timing::RefreshConfig {
        seed: Some(seed.wrapping_add(i)),
        ..shiftkey_auth::timing::RefreshConfig::default()
    };
    let sim = Sim::start(s.sim.clone(), Arc::clone(&clock))
        .await
        .map_err(|e| format!("emulator: {e}"))?;
    let base: url::Url = sim.url().parse().map_err(|e| format!("{e}"))?;
    let http = reqwest::Client::new();
    let mut clients = Vec::new();
    if s.gateway {
        let store = Arc::new(MemoryStore::default());
        for i in 0..s.processes {
            let token_url = base.join("oauth/token").map_err(|e| e.to_string())?;
            let client = OAuthClient::new(
                http.clone(),
                token_url,
                "shiftkey",
                ClientAuth::SecretBasic("shiftkey-secret".into()),
            )
            .with_clock(Arc::clone(&clock));
            let strategy = OAuthRefresh::new(client.clone()).with_fallback(OAuthPassword::new(
                client,
                "mfg_sync",
                "mfg_sync_pw".into(),
            ));
            let manager = TokenManager::builder(strategy)
                .store(store.clone())
                .clock(Arc::clone(&clock))
                .config(refresh(i as u64))
                .name(format!("process-{i}"))
                .build()
                .map_err(|e| e.to_string())?;
            let middleware = shiftkey_http::AuthMiddleware::builder(manager)
                .classifier(shiftkey_teamcenter::TcClassifier)
                .clock(Arc::clone(&clock))
                .seed(seed.wrapping_add(100 + i as u64))
                .build();
            clients.push(TcClient::with_middleware(
                http.clone(),
                middleware,
                base.clone(),
                true,
            ));
        }
    } else {
        let session = SessionConfig::new(base.clone(), "mfg_sync", "mfg_sync_pw".into());
        // As `TcClient::session` builds it, with seeded refresh and retry jitter.
        let idle = session.idle_limit;
        let login = shiftkey_teamcenter::SessionLogin::new(http.clone(), session)
            .with_clock(Arc::clone(&clock));
        let manager = TokenManager::builder(login)
            .clock(Arc::clone(&clock))
            .config(refresh(0))
            .build()
            .map_err(|e| e.to_string())?;
        let middleware = shiftkey_http::AuthMiddleware::builder(manager)
            .injector(shiftkey_http::Injector::Cookie {
                name: "JSESSIONID".to_owned(),
            })
            .classifier(shiftkey_teamcenter::TcClassifier)
            .learned(shiftkey_auth::ServerLimits {
                lifetime_cap: None,
                idle_limit: Some(idle),
            })
            .clock(Arc::clone(&clock))
            .seed(seed.wrapping_add(100))
            .build();
        clients.push(TcClient::with_middleware(
            http.clone(),
            middleware,
            base.clone(),
            false,
        ));
    }
    let keepalives: Vec<_> = clients.iter().filter_map(|c| c.keepalive().ok()).collect();
    let sink = Arc::new(MemorySink::default());
    let engine = Engine::new(
        clients[0].clone(),
        sink.clone(),
        EngineConfig {
            seed: Some(seed),
            ..EngineConfig::default()
        },
    )
    .with_clock(Arc::clone(&clock));
    // The other processes of a rotation storm: a script each, calling every 15 min, staggered.
    let script_failures = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let others: Vec<_> = clients
        .iter()
        .enumerate()
        .skip(1)
        .map(|(i, c)| {
            let (c, clock) = (c.clone(), Arc::clone(&clock));
            let failures = Arc::clone(&script_failures);
            tokio::spawn(async move {
                clock.sleep(Duration::from_secs(60 * i as u64)).await;
                loop {
                    if c.session_info().await.is_err() {
                        failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    clock.sleep(Duration::from_secs(900)).await;
                }
            })
        })
        .collect();

    let duration = Duration::from_secs_f64(days * 86_400.0);
    let t0 = clock.now();
    let end = t0 + duration;
    let stop = Stop::default();
    let (mut run, mut ok, mut auth_failed, mut other_failed) = (0u64, 0u64, 0u64, 0u64);
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    let mut next = t0;
    while clock.now() < end {
        let now = clock.now();
        if now < next {
            clock.sleep(next - now).await;
            continue;
        }
        run += 1;
        match engine.cycle(&stop).await {
            Ok(_) => ok += 1,
            Err(e) => {
                if auth_failure(&e) {
                    auth_failed += 1;
                } else {
                    other_failed += 1;
                }
                let key: String = e.to_string().chars().take(120).collect();
                *failures.entry(key).or_default() += 1;
            }
        }
        next += Duration::from_secs(900);
    }
    for o in others {
        o.abort();
    }
    drop(keepalives);

    let server = sim.stats();
    let token_calls = if s.gateway {
        server.grants.values().sum::<u64>()
    } else {
        server.logins
    };
    let (mut recovered, mut surfaced, mut keepalive_count, mut waits) = (0, 0, 0, 0);
    let (mut healed, mut surfaced_rejections) = (0u64, 0u64);
    let mut max_wait_us = 0u64;
    let (mut proactive, mut reactive) = (0, 0);
    for c in &clients {
        let st = c.middleware().stats();
        recovered += st.recovered;
        surfaced += st.surfaced;
        healed += st.rejections_healed;
        surfaced_rejections += st.rejections_surfaced;
        keepalive_count += st.keepalives;
        let m = c.middleware().manager().stats();
        waits += m.waits;
        max_wait_us = max_wait_us.max(m.max_wait_us);
        proactive += m.proactive;
        reactive += m.reactive;
    }
    let learned = clients[0].middleware().learned_limits();
    let raw_min = (duration.as_secs_f64() / s.true_lifetime.as_secs_f64()).ceil() as u64;
    let law_min = (duration.as_secs_f64() / law_period(s.true_lifetime).as_secs_f64()).ceil()
        as u64
        + s.forced_kills
        + 2 * s.unknown_limits;
    let ratio = token_calls as f64 / law_min.max(1) as f64;
    let script_failed = script_failures.load(std::sync::atomic::Ordering::Relaxed);
    // Cycles failed for other reasons (5xx bursts longer than the retry policy) stay rare: more
    // than 10 % means something is stuck (a circuit that never closes, a spinning task).
    // Every window opened was closed or died with its session; no runtime line of a dead session
    // was ever sent again.
    let leaked_windows = sim.leaked_windows();
    // Every rejection the server says it sent is accounted for by a client, healed or surfaced.
    let sent_rejections = server
        .exceptions
        .get("InvalidUserException")
        .copied()
        .unwrap_or(0)
        + server.exceptions.get("invalid_token").copied().unwrap_or(0);
    let reconciled = healed + surfaced_rejections == sent_rejections;
    // A presented refresh token that had already been rotated kills the family (RFC 9700).
    let reuse_kills = server.killed.get("reuse").copied().unwrap_or(0);
    // Every client counts, not only the one that syncs: the other processes' calls must not fail
    // for a credential reason either (they share the token; a 503 burst may fail one call).
    let goals = surfaced == 0
        && reuse_kills == 0
        && script_failed * 10 <= run.max(1)
        && surfaced_rejections == 0
        && reconciled
        && auth_failed == 0
        && ratio <= 1.2
        && other_failed * 10 <= run
        && leaked_windows == 0
        && server.stale_lines == 0;
    Ok(json!({
        "profile": profile,
        "days": days,
        "cycles": {"run": run, "succeeded": ok, "failed_auth": auth_failed, "failed_other": other_failed, "failures": failures},
        "script_calls_failed": script_failed,
        "unauthorized": {"recovered": recovered, "surfaced": surfaced},
        "rejections": {"server_sent": sent_rejections, "healed": healed, "surfaced": surfaced_rejections},
        "reuse_kills": reuse_kills,
        "token_endpoint_calls": token_calls,
        "minimum_calls": {"by_lifetime": raw_min, "by_timing_law": law_min},
        "calls_per_law_minimum": (ratio * 100.0).round() / 100.0,
        "refreshes": {"proactive": proactive, "reactive": reactive},
        "keepalives": keepalive_count,
        "callers_that_waited": waits,
        "max_token_wait_ms": max_wait_us / 1000,
        "learned": {
            "lifetime_cap_s": learned.lifetime_cap.map(|d| d.as_secs()),
            "idle_limit_s": learned.idle_limit.map(|d| d.as_secs()),
        },
        "true": {
            "lifetime_s": s.true_lifetime.as_secs(),
            "idle_s": s.true_idle.map(|d| d.as_secs()),
        },
        "windows": {"opened": server.windows_opened, "closed": server.windows_closed, "died_with_session": server.windows_died, "leaked": leaked_windows, "stale_lines_sent": server.stale_lines},
        "server_kills": server.killed,
        "faults_injected": server.faults,
        "goals_met": goals,
    }))
}

fn main() -> ExitCode {
    let mut days = 30.0;
    let mut profile = "all".to_owned();
    let mut seed = 7;
    let mut json_out: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        let parsed: Result<(), String> = match a.as_str() {
            "--days" => value("--days").and_then(|v| {
                v.parse::<f64>()
                    .ok()
                    .filter(|d| d.is_finite() && *d > 0.0 && *d <= 3650.0)
                    .map(|d| days = d)
                    .ok_or_else(|| format!("--days: `{v}` is not a number of days (0–3650)"))
            }),
            "--profile" => value("--profile").map(|v| profile = v),
            "--seed" => value("--seed").and_then(|v| {
                v.parse()
                    .map(|s| seed = s)
                    .map_err(|_| format!("--seed: `{v}` is not a number"))
            }),
            "--json" => value("--json").map(|v| json_out = Some(v)),
            other => Err(format!(
                "unknown argument `{other}`; usage: soak [--days N] [--profile NAME|all] [--seed S] [--json FILE]"
            )),
        };
        if let Err(e) = parsed {
            eprintln!("soak: {e}");
            return ExitCode::from(2);
        }
    }
    let profiles: Vec<&str> = if profile == "all" {
        PROFILES.to_vec()
    } else if PROFILES.contains(&profile.as_str()) {
        vec![profile.as_str()]
    } else {
        eprintln!(
            "soak: unknown profile `{profile}`; one of {} or all",
            PROFILES.join(", ")
        );
        return ExitCode::from(2);
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("soak: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut reports = Vec::new();
    println!(
        "| profile | days | cycles run / ok | failed (auth / other) | rejections healed / surfaced / server sent | token calls / law minimum | max token wait | keepalives | learned lifetime / idle (true) | windows opened / leaked / stale lines | goals |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let mut all_met = true;
    for p in profiles {
        let r = match rt.block_on(run_profile(p, days, seed)) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("soak: {p}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let h = |v: &Value| {
            v.as_u64()
                .map_or_else(|| "—".to_owned(), |s| format!("{:.1} h", s as f64 / 3600.0))
        };
        let m = |v: &Value| {
            v.as_u64()
                .map_or_else(|| "—".to_owned(), |s| format!("{} min", s / 60))
        };
        println!(
            "| {} | {} | {} / {} | {} / {} | {} / {} / {} | {} / {} ({}×) | {} ms | {} | {} / {} ({} / {}) | {} / {} / {} | {} |",
            p,
            days,
            r["cycles"]["run"],
            r["cycles"]["succeeded"],
            r["cycles"]["failed_auth"],
            r["cycles"]["failed_other"],
            r["rejections"]["healed"],
            r["rejections"]["surfaced"],
            r["rejections"]["server_sent"],
            r["token_endpoint_calls"],
            r["minimum_calls"]["by_timing_law"],
            r["calls_per_law_minimum"],
            r["max_token_wait_ms"],
            r["keepalives"],
            h(&r["learned"]["lifetime_cap_s"]),
            m(&r["learned"]["idle_limit_s"]),
            h(&r["true"]["lifetime_s"]),
            m(&r["true"]["idle_s"]),
            r["windows"]["opened"],
            r["windows"]["leaked"],
            r["windows"]["stale_lines_sent"],
            if r["goals_met"] == true {
                "met"
            } else {
                "MISSED"
            },
        );
        all_met &= r["goals_met"] == true;
        reports.push(r);
    }
    if let Some(path) = json_out {
        let text = serde_json::to_string_pretty(&reports).unwrap_or_default();
        if let Err(e) = std::fs::write(&path, text) {
            eprintln!("soak: cannot write {path}: {e}");
            return ExitCode::FAILURE;
        }
    }
    if all_met {
        ExitCode::SUCCESS
    } else {
        eprintln!("soak: a goal was missed (see the table; details with --json FILE)");
        ExitCode::FAILURE
    }
}
