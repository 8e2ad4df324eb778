//! `cargo xtask soak`: the sync daemon against the emulator for N simulated days under a fault
//! profile, in paused tokio time (a month runs in seconds to minutes), then a report and its goals.
//! `rotation-storm` is 8 real OS processes sharing one encrypted file store, in compressed real
//! time (`--scale`, simulated seconds per real second, 1440 by default: a day per real minute).
//!
//! Usage: `soak [--days N] [--profile NAME|all] [--seed S] [--scale X] [--json FILE]`
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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use shiftkey_auth::strategies::{ClientAuth, OAuthClient, OAuthPassword, OAuthRefresh};
use shiftkey_auth::timing::{RefreshConfig, margins};
use shiftkey_auth::{Clock, MemoryStore, TokenManager, TokenStore};
use shiftkey_http::HttpError;
use shiftkey_shopfloor::{ApplyReport, Feedback, ProcessRecord, Sink, SinkError};
use shiftkey_sim::{ScaledClock, Sim, SimConfig};
use shiftkey_store::{FileStore, KeySource};
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

/// The refresh period the timing law gives a lifetime `l` (design §3.2 in `docs/design.md`, the
/// auth crate's own `timing::margins`), jitter at its mean.
fn law_period(l: Duration) -> Duration {
    let cfg = RefreshConfig::default();
    let soft = margins(&cfg, l).soft;
    l.saturating_sub(soft + soft.mul_f64(cfg.jitter_fraction / 2.0))
}

/// Whether a failed cycle failed because of authentication.
fn auth_failure(e: &SyncError) -> bool {
    match e {
        SyncError::Teamcenter(t) => tc_auth_failure(t),
        _ => false,
    }
}

/// Whether a Teamcenter call failed because of authentication (a credential, a token the server
/// refused, the auth circuit).
fn tc_auth_failure(t: &shiftkey_teamcenter::TcError) -> bool {
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

/// The simulated start of every run: the busy hours of the day, and so the whole run, depend on
/// the seed only (2026-01-05 00:00 UTC, a Monday).
const START: Duration = Duration::from_secs(1_767_571_200);

/// What the clients saw, summed over every client (and, for rotation-storm, every process).
#[derive(Debug, Default, Serialize, Deserialize)]
struct Tally {
    /// Sync cycles run, succeeded, failed because of authentication, failed otherwise.
    run: u64,
    ok: u64,
    auth_failed: u64,
    other_failed: u64,
    /// Failed cycles by (truncated) error.
    failures: BTreeMap<String, u64>,
    /// Script calls (the other processes): made, failed because of authentication, failed
    /// otherwise.
    script_calls: u64,
    script_auth_failed: u64,
    script_failed: u64,
    recovered: u64,
    surfaced: u64,
    healed: u64,
    surfaced_rejections: u64,
    keepalives: u64,
    waits: u64,
    max_wait_us: u64,
    proactive: u64,
    reactive: u64,
    /// What the syncing client learned.
    learned_cap_s: Option<u64>,
    learned_idle_s: Option<u64>,
}

impl Tally {
    fn add(&mut self, o: Self) {
        self.run += o.run;
        self.ok += o.ok;
        self.auth_failed += o.auth_failed;
        self.other_failed += o.other_failed;
        for (k, v) in o.failures {
            *self.failures.entry(k).or_default() += v;
        }
        self.script_calls += o.script_calls;
        self.script_auth_failed += o.script_auth_failed;
        self.script_failed += o.script_failed;
        self.recovered += o.recovered;
        self.surfaced += o.surfaced;
        self.healed += o.healed;
        self.surfaced_rejections += o.surfaced_rejections;
        self.keepalives += o.keepalives;
        self.waits += o.waits;
        self.max_wait_us = self.max_wait_us.max(o.max_wait_us);
        self.proactive += o.proactive;
        self.reactive += o.reactive;
        self.learned_cap_s = self.learned_cap_s.or(o.learned_cap_s);
        self.learned_idle_s = self.learned_idle_s.or(o.learned_idle_s);
    }

    /// Adds the counters of the clients' middleware and token managers.
    fn count(&mut self, clients: &[TcClient]) {
        for c in clients {
            let st = c.middleware().stats();
            self.recovered += st.recovered;
            self.surfaced += st.surfaced;
            self.healed += st.rejections_healed;
            self.surfaced_rejections += st.rejections_surfaced;
            self.keepalives += st.keepalives;
            let m = c.middleware().manager().stats();
            self.waits += m.waits;
            self.max_wait_us = self.max_wait_us.max(m.max_wait_us);
            self.proactive += m.proactive;
            self.reactive += m.reactive;
        }
    }
}

/// The refresh configuration of client `i`: seeded jitter; `scale` stretches the waits that stand
/// for real latency (a caller's wait for a refresh in flight), which time compression must not
/// shrink below what a loopback round trip between processes takes.
fn refresh_config(seed: u64, i: u64, scale: f64) -> RefreshConfig {
    let d = RefreshConfig::default();
    RefreshConfig {
        seed: Some(seed.wrapping_add(i)),
        wait_timeout: d.wait_timeout.mul_f64(scale.max(1.0)),
        acquire_timeout: d.acquire_timeout.mul_f64(scale.max(1.0)),
        ..d
    }
}

/// A process of the OAuth gateway profiles: refresh with rotation, password fallback, sharing
/// `store` with the others.
fn gateway_client(
    http: &reqwest::Client,
    base: &url::Url,
    store: Arc<dyn TokenStore>,
    clock: &Arc<dyn Clock>,
    seed: u64,
    i: u64,
    scale: f64,
) -> Result<TcClient, String> {
    let token_url = base.join("oauth/token").map_err(|e| e.to_string())?;
    let client = OAuthClient::new(
        http.clone(),
        token_url,
        "shiftkey",
        ClientAuth::SecretBasic("shiftkey-secret".into()),
    )
    .with_clock(Arc::clone(clock));
    let strategy = OAuthRefresh::new(client.clone()).with_fallback(OAuthPassword::new(
        client,
        "mfg_sync",
        "mfg_sync_pw".into(),
    ));
    let manager = TokenManager::builder(strategy)
        .store(store)
        .clock(Arc::clone(clock))
        .config(refresh_config(seed, i, scale))
        .name(format!("process-{i}"))
        .build()
        .map_err(|e| e.to_string())?;
    TcClient::gateway_builder(http.clone(), base.clone(), manager)
        .clock(Arc::clone(clock))
        .seed(seed.wrapping_add(100 + i))
        .build()
        .map_err(|e| e.to_string())
}

/// Runs the sync engine on `sync` (every 15 min) and a script on each of `scripts` (every 15 min,
/// the n-th one starting n minutes in) until the simulated time `end`.
async fn drive(
    sync: Option<&TcClient>,
    scripts: &[(u64, TcClient)],
    clock: &Arc<dyn Clock>,
    seed: u64,
    end: SystemTime,
) -> Tally {
    // Script calls: made, failed because of authentication, failed otherwise.
    let script_counts = Arc::new([const { AtomicU64::new(0) }; 3]);
    let others: Vec<_> = scripts
        .iter()
        .map(|(n, c)| {
            let (c, clock, n) = (c.clone(), Arc::clone(clock), *n);
            let counts = Arc::clone(&script_counts);
            tokio::spawn(async move {
                clock.sleep(Duration::from_secs(60 * n)).await;
                loop {
                    let failed = c.session_info().await.err();
                    counts[0].fetch_add(1, Ordering::Relaxed);
                    match failed {
                        Some(e) if tc_auth_failure(&e) => counts[1].fetch_add(1, Ordering::Relaxed),
                        Some(_) => counts[2].fetch_add(1, Ordering::Relaxed),
                        None => 0,
                    };
                    clock.sleep(Duration::from_secs(900)).await;
                }
            })
        })
        .collect();
    let mut tally = Tally::default();
    let keepalives: Vec<_> = sync.iter().filter_map(|c| c.keepalive().ok()).collect();
    let mut next = clock.wall();
    if let Some(client) = sync {
        let sink = Arc::new(MemorySink::default());
        let engine = Engine::new(
            client.clone(),
            sink,
            EngineConfig {
                seed: Some(seed),
                ..EngineConfig::default()
            },
        )
        .with_clock(Arc::clone(clock));
        let stop = Stop::default();
        while clock.wall() < end {
            let now = clock.wall();
            if let Ok(wait) = next.duration_since(now)
                && !wait.is_zero()
            {
                clock.sleep(wait).await;
                continue;
            }
            tally.run += 1;
            match engine.cycle(&stop).await {
                Ok(_) => tally.ok += 1,
                Err(e) => {
                    if auth_failure(&e) {
                        tally.auth_failed += 1;
                    } else {
                        tally.other_failed += 1;
                    }
                    let key: String = shiftkey_auth::causes(&e).chars().take(120).collect();
                    *tally.failures.entry(key).or_default() += 1;
                }
            }
            next += Duration::from_secs(900);
        }
        let learned = client.middleware().learned_limits();
        tally.learned_cap_s = learned.lifetime_cap.map(|d| d.as_secs());
        tally.learned_idle_s = learned.idle_limit.map(|d| d.as_secs());
    } else if let Ok(wait) = end.duration_since(clock.wall()) {
        clock.sleep(wait).await;
    }
    for o in others {
        o.abort();
    }
    drop(keepalives);
    tally.script_calls = script_counts[0].load(Ordering::Relaxed);
    tally.script_auth_failed = script_counts[1].load(Ordering::Relaxed);
    tally.script_failed = script_counts[2].load(Ordering::Relaxed);
    tally
}

/// One profile in this process, in paused time.
async fn run_profile(profile: &str, days: f64, seed: u64) -> Result<Value, String> {
    let s = setup(profile, days, seed).ok_or_else(|| format!("unknown profile `{profile}`"))?;
    let start = UNIX_EPOCH + START;
    let clock: Arc<dyn Clock> = Arc::new(ScaledClock::new(start, 1.0));
    let sim = Sim::start(s.sim.clone(), Arc::clone(&clock))
        .await
        .map_err(|e| format!("emulator: {e}"))?;
    let base: url::Url = sim.url().parse().map_err(|e| format!("{e}"))?;
    let http = reqwest::Client::new();
    let client = if s.gateway {
        let store: Arc<dyn TokenStore> = Arc::new(MemoryStore::default());
        gateway_client(&http, &base, store, &clock, seed, 0, 1.0)?
    } else {
        let session = SessionConfig::new(base.clone(), "mfg_sync", "mfg_sync_pw".into());
        // The one recipe, with seeded refresh and retry jitter.
        TcClient::builder(http.clone(), session)
            .clock(Arc::clone(&clock))
            .refresh(refresh_config(seed, 0, 1.0))
            .seed(seed.wrapping_add(100))
            .build()
            .map_err(|e| e.to_string())?
    };
    let end = start + Duration::from_secs_f64(days * 86_400.0);
    let mut tally = drive(Some(&client), &[], &clock, seed, end).await;
    tally.count(std::slice::from_ref(&client));
    Ok(report(profile, days, &s, tally, &sim))
}

/// rotation-storm: the emulator here, and 8 real OS processes (this program with `--worker`)
/// sharing one encrypted file store, in compressed real time (`scale` simulated seconds per real
/// second; every process reads the same simulated time from a shared real anchor). Process 0
/// syncs; the others are scripts calling every 15 minutes. Real processes make the run depend on
/// the OS's scheduling: the same seed gives the same faults and jitter, not the same interleaving.
async fn run_storm(days: f64, seed: u64, scale: f64) -> Result<Value, String> {
    let profile = "rotation-storm";
    let s = setup(profile, days, seed).ok_or_else(|| format!("unknown profile `{profile}`"))?;
    #[allow(
        clippy::disallowed_methods,
        reason = "the real anchor the processes share"
    )]
    let origin = SystemTime::now();
    let clock: Arc<dyn Clock> = Arc::new(ScaledClock::anchored(origin, UNIX_EPOCH + START, scale));
    let sim = Sim::start(s.sim.clone(), Arc::clone(&clock))
        .await
        .map_err(|e| format!("emulator: {e}"))?;
    let dir = std::env::temp_dir().join(format!("shiftkey-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let store = dir.join("storm.token");
    let key = base64::engine::general_purpose::STANDARD.encode(seed.to_le_bytes().repeat(4));
    let exe = std::env::current_exe().map_err(|e| format!("this program's path: {e}"))?;
    let origin_ns = origin
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_nanos()
        .to_string();
    let mut children = Vec::new();
    for i in 0..s.processes {
        let child = tokio::process::Command::new(&exe)
            .args(["--worker", &i.to_string(), "--url", &sim.url()])
            .arg("--store")
            .arg(&store)
            .args(["--key", &key, "--origin", &origin_ns])
            .args(["--scale", &scale.to_string(), "--days", &days.to_string()])
            .args(["--seed", &seed.to_string()])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("starting worker {i}: {e}"))?;
        children.push(child);
    }
    // Real time: the run's length at this scale, and a generous allowance for a loaded machine.
    let deadline = tokio::time::Instant::now()
        + Duration::from_secs_f64(days * 86_400.0 / scale)
        + Duration::from_secs(120);
    let mut tally = Tally::default();
    let mut result = Ok(());
    for (i, child) in children.into_iter().enumerate() {
        let out = match tokio::time::timeout_at(deadline, child.wait_with_output()).await {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => {
                result = Err(format!("worker {i}: {e}"));
                break;
            }
            Err(_) => {
                result = Err(format!("worker {i} did not finish in time"));
                break;
            }
        };
        let text = String::from_utf8_lossy(&out.stdout);
        match text.lines().last().map(serde_json::from_str::<Tally>) {
            Some(Ok(t)) if out.status.success() => tally.add(t),
            _ => {
                result = Err(format!(
                    "worker {i} ended with {} and no report: {text}",
                    out.status
                ));
                break;
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    result?;
    Ok(report(profile, days, &s, tally, &sim))
}

/// A rotation-storm process (`--worker I ...`): prints its tally as one JSON line.
async fn worker(w: WorkerArgs) -> Result<(), String> {
    let origin = UNIX_EPOCH + Duration::from_nanos(w.origin_ns);
    let start = UNIX_EPOCH + START;
    let clock: Arc<dyn Clock> = Arc::new(ScaledClock::anchored(origin, start, w.scale));
    let base: url::Url = w.url.parse().map_err(|e| format!("--url: {e}"))?;
    let key = KeySource::from_base64(&w.key, "--key").map_err(|e| e.to_string())?;
    let store: Arc<dyn TokenStore> = Arc::new(FileStore::new(&w.store, key));
    let http = reqwest::Client::new();
    let client = gateway_client(&http, &base, store, &clock, w.seed, w.index, w.scale)?;
    let end = start + Duration::from_secs_f64(w.days * 86_400.0);
    let mut tally = if w.index == 0 {
        drive(Some(&client), &[], &clock, w.seed, end).await
    } else {
        drive(None, &[(w.index, client.clone())], &clock, w.seed, end).await
    };
    tally.count(std::slice::from_ref(&client));
    client.middleware().manager().shutdown().await;
    println!(
        "{}",
        serde_json::to_string(&tally).map_err(|e| e.to_string())?
    );
    Ok(())
}

/// The arguments of a rotation-storm process.
struct WorkerArgs {
    index: u64,
    url: String,
    store: String,
    key: String,
    origin_ns: u64,
    scale: f64,
    days: f64,
    seed: u64,
}

impl WorkerArgs {
    fn parse(args: &[String]) -> Result<Self, String> {
        let get = |name: &str| {
            args.iter()
                .position(|a| a == name)
                .and_then(|i| args.get(i + 1))
                .ok_or_else(|| format!("worker: {name} is missing"))
        };
        let num = |name: &str| -> Result<f64, String> {
            let v = get(name)?;
            v.parse::<f64>()
                .ok()
                .filter(|f| f.is_finite() && *f > 0.0)
                .ok_or_else(|| format!("worker: {name} `{v}` is not a positive number"))
        };
        let int = |name: &str| -> Result<u64, String> {
            let v = get(name)?;
            v.parse()
                .map_err(|_| format!("worker: {name} `{v}` is not a whole number"))
        };
        Ok(Self {
            index: int("--worker")?,
            url: get("--url")?.clone(),
            store: get("--store")?.clone(),
            key: get("--key")?.clone(),
            origin_ns: int("--origin")?,
            scale: num("--scale")?,
            days: num("--days")?,
            seed: int("--seed")?,
        })
    }
}

/// The report of a profile and whether it met its goals.
fn report(profile: &str, days: f64, s: &Setup, t: Tally, sim: &Sim) -> Value {
    let server = sim.stats();
    let token_calls = if s.gateway {
        server.grants.values().sum::<u64>()
    } else {
        server.logins
    };
    let duration = Duration::from_secs_f64(days * 86_400.0);
    let raw_min = (duration.as_secs_f64() / s.true_lifetime.as_secs_f64()).ceil() as u64;
    let law_min = (duration.as_secs_f64() / law_period(s.true_lifetime).as_secs_f64()).ceil()
        as u64
        + s.forced_kills
        + 2 * s.unknown_limits;
    let ratio = token_calls as f64 / law_min.max(1) as f64;
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
    let reconciled = t.healed + t.surfaced_rejections == sent_rejections;
    // A presented refresh token that had already been rotated kills the family (RFC 9700).
    let reuse_kills = server.killed.get("reuse").copied().unwrap_or(0);
    // Every client counts, not only the one that syncs: the other processes' calls must not fail
    // for a credential reason either (they share the token), and fail for another (a 503 burst)
    // no more often than the rule for cycles allows.
    let goals = t.surfaced == 0
        && reuse_kills == 0
        && t.script_auth_failed == 0
        && t.script_failed * 10 <= t.script_calls
        && t.surfaced_rejections == 0
        && reconciled
        && t.auth_failed == 0
        && ratio <= 1.2
        && t.other_failed * 10 <= t.run
        && leaked_windows == 0
        && server.stale_lines == 0;
    json!({
        "profile": profile,
        "days": days,
        "processes": s.processes,
        "cycles": {"run": t.run, "succeeded": t.ok, "failed_auth": t.auth_failed, "failed_other": t.other_failed, "failures": t.failures},
        "script_calls": {"run": t.script_calls, "failed_auth": t.script_auth_failed, "failed_other": t.script_failed},
        "unauthorized": {"recovered": t.recovered, "surfaced": t.surfaced},
        "rejections": {"server_sent": sent_rejections, "healed": t.healed, "surfaced": t.surfaced_rejections},
        "reuse_kills": reuse_kills,
        "token_endpoint_calls": token_calls,
        "minimum_calls": {"by_lifetime": raw_min, "by_timing_law": law_min},
        "calls_per_law_minimum": (ratio * 100.0).round() / 100.0,
        "refreshes": {"proactive": t.proactive, "reactive": t.reactive},
        "keepalives": t.keepalives,
        "callers_that_waited": t.waits,
        "max_token_wait_ms": t.max_wait_us / 1000,
        "learned": {
            "lifetime_cap_s": t.learned_cap_s,
            "idle_limit_s": t.learned_idle_s,
        },
        "true": {
            "lifetime_s": s.true_lifetime.as_secs(),
            "idle_s": s.true_idle.map(|d| d.as_secs()),
        },
        "windows": {"opened": server.windows_opened, "closed": server.windows_closed, "died_with_session": server.windows_died, "leaked": leaked_windows, "stale_lines_sent": server.stale_lines},
        "server_kills": server.killed,
        "faults_injected": server.faults,
        "goals_met": goals,
    })
}

fn main() -> ExitCode {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    if raw.first().is_some_and(|a| a == "--worker") {
        let result = WorkerArgs::parse(&raw).and_then(|w| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|e| format!("worker: cannot start the runtime: {e}"))?
                .block_on(worker(w))
        });
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("soak: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let mut days = 30.0;
    let mut scale = 1440.0;
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
            "--scale" => value("--scale").and_then(|v| {
                v.parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite() && (1.0..=100_000.0).contains(f))
                    .map(|f| scale = f)
                    .ok_or_else(|| format!("--scale: `{v}` is not a number from 1 to 100000"))
            }),
            other => Err(format!(
                "unknown argument `{other}`; usage: soak [--days N] [--profile NAME|all] [--seed S] [--scale X] [--json FILE]"
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
        "| profile | days | cycles run / ok | failed (auth / other) | other processes' calls / failed (auth / other) | rejections healed / surfaced / server sent | reuse kills | token calls / law minimum | max token wait | keepalives | learned lifetime / idle (true) | windows opened / leaked / stale lines | goals |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut all_met = true;
    for p in profiles {
        let run = if p == "rotation-storm" {
            // Real processes cannot share paused time: compressed real time instead.
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start the runtime: {e}"))
                .and_then(|real| real.block_on(run_storm(days, seed, scale)))
        } else {
            rt.block_on(run_profile(p, days, seed))
        };
        let r = match run {
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
            "| {} | {} | {} / {} | {} / {} | {} / {} / {} | {} / {} / {} | {} | {} / {} ({}×) | {} ms | {} | {} / {} ({} / {}) | {} / {} / {} | {} |",
            p,
            days,
            r["cycles"]["run"],
            r["cycles"]["succeeded"],
            r["cycles"]["failed_auth"],
            r["cycles"]["failed_other"],
            r["script_calls"]["run"],
            r["script_calls"]["failed_auth"],
            r["script_calls"]["failed_other"],
            r["rejections"]["healed"],
            r["rejections"]["surfaced"],
            r["rejections"]["server_sent"],
            r["reuse_kills"],
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
