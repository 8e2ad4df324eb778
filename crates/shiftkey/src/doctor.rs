//! `shiftkey doctor`: one line per check (`ok|warn|FAIL  <check>  <detail>`), then, with
//! `--probe`, the server's real session limits measured with spaced probes, and advice.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use shiftkey_auth::{AuthStrategy as _, Clock as _, TokioClock};
use shiftkey_http::{Classifier as _, Verdict};
use shiftkey_teamcenter::{SessionConfig, SessionLogin, TcClassifier, TcClient};

use crate::config::Config;
use crate::tokens::human;

/// Options of `shiftkey doctor`.
#[derive(Debug, clap::Args)]
pub(crate) struct DoctorArgs {
    /// The configuration file.
    #[arg(short, long, default_value = "shiftkey.toml")]
    config: PathBuf,
    /// Also measure the Teamcenter session's idle timeout and lifetime cap (takes up to
    /// `--max-hours`; run it outside production hours' assumptions, e.g. during the working day
    /// when the pool is busy).
    #[arg(long)]
    probe: bool,
    /// Give up the lifetime probe after this many hours (above 0, at most 72).
    #[arg(long, default_value_t = 9.0, value_parser = crate::number_in(f64::MIN_POSITIVE, 72.0))]
    max_hours: f64,
    /// How long each HTTP check (reachability, logins, the site) waits for an answer, in
    /// seconds.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=600))]
    deadline: u64,
    /// For the emulator only: its simulated seconds per real second.
    #[arg(long, default_value_t = 1.0, hide = true, value_parser = crate::number_in(1.0, 100_000.0))]
    time_scale: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Ok,
    Warn,
    Fail,
}

#[derive(Default)]
struct Report {
    failed: bool,
}

impl Report {
    fn line(&mut self, level: Level, check: &str, detail: impl AsRef<str>) {
        let tag = match level {
            Level::Ok => "ok  ",
            Level::Warn => "warn",
            Level::Fail => {
                self.failed = true;
                "FAIL"
            }
        };
        println!("{tag}  {check:<12}  {}", detail.as_ref());
    }
}

fn wall() -> SystemTime {
    #[allow(
        clippy::disallowed_methods,
        reason = "skew is measured against the real clock"
    )]
    SystemTime::now()
}

/// Runs the checks.
pub(crate) async fn run(args: DoctorArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.max_hours.is_finite() && args.max_hours > 0.0 && args.max_hours <= 72.0,
        "--max-hours must be between 0 and 72, got {}",
        args.max_hours
    );
    anyhow::ensure!(
        args.time_scale.is_finite() && args.time_scale >= 1.0,
        "--time-scale must be at least 1, got {}",
        args.time_scale
    );
    let mut r = Report::default();
    let cfg = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            r.line(Level::Fail, "config", crate::causes(&e));
            return Ok(ExitCode::from(crate::EXIT_DOCTOR));
        }
    };
    match cfg.resolve_all() {
        Ok(n) => r.line(
            Level::Ok,
            "config",
            format!(
                "{} loaded; {n} secret reference(s) resolved; {} token(s)",
                args.config.display(),
                cfg.tokens.len()
            ),
        ),
        Err(e) => r.line(Level::Fail, "config", crate::causes(&e)),
    }
    let http = crate::net::plain_client(Duration::from_secs(args.deadline))?;
    let mut endpoints: Vec<(String, String)> = Vec::new();
    if let Some(tc) = &cfg.teamcenter {
        endpoints.push(("teamcenter".to_owned(), tc.url.clone()));
    }
    for (name, t) in &cfg.tokens {
        endpoints.push((format!("tokens.{name}"), t.token_url.clone()));
    }
    if endpoints.is_empty() {
        r.line(
            Level::Warn,
            "reachability",
            "nothing to check: no [teamcenter] and no [tokens.*]",
        );
    }
    for (what, url) in &endpoints {
        reach(&mut r, &http, what, url).await;
    }
    let mut session_cfg = None;
    if let Some(tc) = &cfg.teamcenter
        && let Some(token) = &tc.token
    {
        r.line(
            Level::Warn,
            "login",
            format!(
                "teamcenter: gateway mode with the tokens of `tokens.{token}` (its login is checked below); the site check needs session mode for now"
            ),
        );
    } else if let Some(tc) = &cfg.teamcenter
        && let Some(password) = &tc.password
    {
        match password.resolve("teamcenter.password") {
            Ok(password) => {
                let base = tc.url.parse()?;
                let mut s = SessionConfig::new(base, tc.user.clone(), password);
                s.group.clone_from(&tc.group);
                s.role.clone_from(&tc.role);
                s.allow_insecure_http = cfg.allow_insecure_http;
                let login = SessionLogin::new(http.clone(), s.clone());
                match login.acquire(None).await {
                    Ok(session) => {
                        r.line(
                            Level::Ok,
                            "login",
                            format!("teamcenter: logged in as {}", tc.user),
                        );
                        // Every session doctor opens goes back to the pool.
                        login.logout(&session).await;
                        site(&mut r, &http, &s, tc, cfg.overlap()).await;
                    }
                    Err(e) => r.line(Level::Fail, "login", format!("teamcenter: {e}")),
                }
                session_cfg = Some(s);
            }
            Err(e) => r.line(Level::Fail, "login", crate::causes(&e)),
        }
    }
    for (name, t) in &cfg.tokens {
        match crate::tokens::strategy(&http, name, t, cfg.allow_insecure_http) {
            Ok(s) => match s.acquire(None).await {
                Ok(token) => r.line(
                    Level::Ok,
                    "login",
                    format!(
                        "tokens.{name}: token obtained, the server says it lives {}{}",
                        human(token.lifetime),
                        if token.refresh_token.is_some() {
                            ", with a refresh token"
                        } else {
                            ""
                        }
                    ),
                ),
                Err(e) => r.line(Level::Fail, "login", format!("tokens.{name}: {e}")),
            },
            Err(e) => r.line(
                Level::Fail,
                "login",
                format!("tokens.{name}: {}", crate::causes(&e)),
            ),
        }
    }
    databases(&mut r, &cfg).await;
    if args.probe {
        match session_cfg {
            Some(s) => probe(&http, s, &args, cfg.schedule.interval_minutes).await,
            None => r.line(
                Level::Warn,
                "probe",
                "--probe measures Teamcenter sessions; the config has no usable [teamcenter]",
            ),
        }
    }
    Ok(if r.failed {
        ExitCode::from(crate::EXIT_DOCTOR)
    } else {
        ExitCode::SUCCESS
    })
}

/// The databases the config names, each reached read-only with a deadline: the PostgreSQL token
/// store, the leader lease (is a process holding it?) and the sink (its watermark).
async fn databases(r: &mut Report, cfg: &Config) {
    if cfg
        .store
        .as_ref()
        .is_some_and(|s| s.backend == crate::config::StoreBackend::Postgres)
    {
        match cfg.store_url() {
            Ok(url) => match shiftkey_store::PgStore::count(&url).await {
                Ok(Some(n)) => r.line(
                    Level::Ok,
                    "store",
                    format!("PostgreSQL reached; {n} token(s) stored"),
                ),
                Ok(None) => r.line(
                    Level::Ok,
                    "store",
                    "PostgreSQL reached; no token stored yet (the first run creates the table)",
                ),
                Err(e) => r.line(Level::Fail, "store", e.to_string()),
            },
            Err(e) => r.line(Level::Fail, "store", crate::causes(&e)),
        }
    }
    match cfg.lease_url() {
        Ok(Some((url, key))) => {
            match shiftkey_store::LeaderLease::is_held_by_anyone(&url, key).await {
                Ok(false) => r.line(
                    Level::Ok,
                    "lease",
                    format!("leader lease {key} is free: no process is syncing under it now"),
                ),
                Ok(true) => r.line(
                    Level::Ok,
                    "lease",
                    format!("leader lease {key} is held: a process is syncing under it"),
                ),
                Err(e) => r.line(Level::Fail, "lease", e.to_string()),
            }
        }
        Ok(None) => {}
        Err(e) => r.line(Level::Fail, "lease", crate::causes(&e)),
    }
    if cfg.sink.is_some() {
        let url = match cfg.sink_url() {
            Ok(u) => u,
            Err(e) => {
                r.line(Level::Fail, "sink", crate::causes(&e));
                return;
            }
        };
        let state = tokio::time::timeout(
            Duration::from_secs(20),
            shiftkey_shopfloor::SqlSink::inspect(&url),
        )
        .await;
        use shiftkey_shopfloor::SinkState;
        match state {
            Ok(Ok(SinkState::Synced(w))) => r.line(
                Level::Ok,
                "sink",
                format!("reached; synced up to {}", crate::ops::stamp(w)),
            ),
            Ok(Ok(SinkState::Missing)) => r.line(
                Level::Ok,
                "sink",
                "reached; no sink tables yet (the first sync creates them)",
            ),
            Ok(Ok(_)) => r.line(Level::Ok, "sink", "reached; nothing synced yet"),
            Ok(Err(e)) => r.line(Level::Fail, "sink", shiftkey_auth::causes(&e)),
            Err(_) => r.line(Level::Fail, "sink", "no answer within 20 s"),
        }
    }
}

/// The site against `[teamcenter.read]` and `[teamcenter.feedback]`, read-only: the saved query
/// and its entries, types and properties, the revision rule, one process opened and closed.
/// Each failure prints what the Teamcenter administrator must create.
async fn site(
    r: &mut Report,
    http: &reqwest::Client,
    session: &SessionConfig,
    tc: &crate::config::TeamcenterConfig,
    overlap: Duration,
) {
    let (read, feedback) = match crate::site::configs(tc, overlap) {
        Ok(c) => c,
        Err(e) => return r.line(Level::Fail, "site", crate::causes(&e)),
    };
    let client = match TcClient::session(http.clone(), session.clone()) {
        Ok(c) => c,
        Err(e) => return r.line(Level::Fail, "site", e.to_string()),
    };
    match client.check_site(&read, feedback.as_ref()).await {
        Ok(findings) => {
            for f in findings {
                let level = match (f.checked, f.ok) {
                    (false, _) => Level::Warn,
                    (true, true) => Level::Ok,
                    (true, false) => Level::Fail,
                };
                r.line(level, f.check, &f.detail);
                if let Some(fix) = &f.fix {
                    println!("      {:<12}  fix: {fix}", "");
                }
            }
        }
        Err(e) => r.line(Level::Fail, "site", format!("teamcenter: {e}")),
    }
    if feedback.is_none() {
        r.line(
            Level::Warn,
            "feedback",
            "no [teamcenter.feedback]: shop-floor feedback is kept in the outbox, not written to Teamcenter",
        );
    }
    // The session goes back to the pool (a logout that fails is logged at debug).
    client.end_session().await;
}

/// Reachability, TLS and clock skew of one endpoint (any HTTP answer counts as reachable).
async fn reach(r: &mut Report, http: &reqwest::Client, what: &str, url: &str) {
    let clock = TokioClock::new();
    let started = clock.now();
    let sent_at = wall();
    match http.get(url).send().await {
        Ok(resp) => {
            let took = clock.now() - started;
            r.line(
                Level::Ok,
                "reachability",
                format!(
                    "{what}: {url} answered HTTP {} in {} ms",
                    resp.status().as_u16(),
                    took.as_millis()
                ),
            );
            let parsed = url::Url::parse(url).ok();
            let loopback = parsed
                .as_ref()
                .and_then(|u| u.host_str())
                .is_some_and(|h| h == "localhost" || h == "127.0.0.1" || h == "[::1]");
            match parsed.as_ref().map(url::Url::scheme) {
                Some("https") => r.line(Level::Ok, "tls", format!("{what}: certificate accepted")),
                _ if loopback => r.line(
                    Level::Ok,
                    "tls",
                    format!("{what}: plain HTTP on loopback"),
                ),
                _ => r.line(
                    Level::Warn,
                    "tls",
                    format!(
                        "{what}: plain HTTP: passwords and tokens cross the network unencrypted; use https"
                    ),
                ),
            }
            let date = resp
                .headers()
                .get(reqwest::header::DATE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| httpdate::parse_http_date(v).ok());
            match date {
                Some(server) => {
                    // Our clock at the middle of the exchange, against the server's second.
                    let ours = sent_at + took / 2;
                    let skew = match server.duration_since(ours) {
                        Ok(ahead) => ahead.as_secs_f64(),
                        Err(behind) => -behind.duration().as_secs_f64(),
                    };
                    let level = if skew.abs() > 300.0 {
                        Level::Fail
                    } else if skew.abs() > 60.0 {
                        Level::Warn
                    } else {
                        Level::Ok
                    };
                    r.line(
                        level,
                        "clock-skew",
                        format!(
                            "{what}: the server's clock is {:+.0} s from ours{}",
                            skew.round() + 0.0,
                            if level == Level::Ok {
                                ""
                            } else {
                                " (JWT and expiry checks tolerate about 60 s; fix NTP on whichever side is wrong)"
                            }
                        ),
                    );
                }
                None => r.line(
                    Level::Warn,
                    "clock-skew",
                    format!("{what}: no Date header to compare clocks with"),
                ),
            }
        }
        Err(e) => {
            // What went wrong, told apart: a name, a port, TLS or a deadline.
            let transport = shiftkey_http::Transport::of(&e);
            let check = match transport {
                Some(shiftkey_http::Transport::Tls(_)) => "tls",
                _ => "reachability",
            };
            let detail = transport.map_or_else(|| e.without_url().to_string(), |t| t.to_string());
            r.line(Level::Fail, check, format!("{what}: {url}: {detail}"));
        }
    }
}

/// One Teamcenter session used directly: login once, then calls with its cookie, no healing.
struct Probe {
    http: reqwest::Client,
    url: url::Url,
    cookie: String,
    login: SessionLogin,
    session: shiftkey_auth::TokenSet,
}

impl Probe {
    /// Logs in with its own `descrimator` (sessions sharing one would share a server process,
    /// and one probe's calls would keep the other alive).
    async fn start(
        http: &reqwest::Client,
        cfg: &SessionConfig,
        role: &str,
    ) -> anyhow::Result<Self> {
        let mut cfg = cfg.clone();
        cfg.descrimator = format!("shiftkey-doctor-{role}-{}", std::process::id());
        let login = SessionLogin::new(http.clone(), cfg.clone());
        let token = login.acquire(None).await?;
        let url = cfg
            .base
            .join("tc/JsonRestServices/Core-2007-01-Session/getTCSessionInfo")?;
        Ok(Self {
            http: http.clone(),
            url,
            cookie: format!("JSESSIONID={}", token.access_token.expose()),
            login,
            session: token,
        })
    }

    /// Logs the probe's session out, if it still lives: it goes back to the pool.
    async fn end(&self) {
        self.login.logout(&self.session).await;
    }

    /// Whether the session is still alive.
    async fn alive(&self) -> anyhow::Result<bool> {
        let resp = self
            .http
            .post(self.url.clone())
            .header(reqwest::header::COOKIE, &self.cookie)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(r#"{"header":{"state":{},"policy":{}},"body":{}}"#)
            .send()
            .await
            .map_err(reqwest::Error::without_url)?;
        let (verdict, _) = TcClassifier
            .classify(resp)
            .await
            .map_err(reqwest::Error::without_url)?;
        Ok(!matches!(verdict, Verdict::Refresh))
    }
}

/// Sleeps `simulated` server time (`time_scale` simulated seconds per real second).
async fn pause(simulated: Duration, scale: f64) {
    tokio::time::sleep(simulated.div_f64(scale)).await;
}

async fn probe(http: &reqwest::Client, cfg: SessionConfig, args: &DoctorArgs, interval_min: u64) {
    let scale = args.time_scale;
    let max = Duration::from_secs_f64(args.max_hours * 3600.0);
    eprintln!(
        "doctor: probing with two sessions (idle gaps up to 2 h, lifetime up to {}); this takes a while",
        human(max)
    );
    let clock = TokioClock::new();
    // Server time elapsed since `t` (real time × the emulator's scale).
    let since = |t: tokio::time::Instant| (clock.now() - t).mul_f64(scale);
    let started = clock.now();
    // What each probe is doing, for the progress lines.
    let now_idle: std::sync::Mutex<Option<(Duration, tokio::time::Instant)>> = Default::default();
    let now_born: std::sync::Mutex<Option<tokio::time::Instant>> = Default::default();
    // A fresh session per gap: each one's age is its idle gap, so a lifetime cap cannot pass
    // for an idle timeout.
    let idle = async {
        let mut survived = Duration::ZERO;
        for minutes in [1u64, 2, 5, 10, 15, 20, 30, 45, 60, 90, 120] {
            let p = Probe::start(http, &cfg, &format!("idle{minutes}")).await?;
            let touched = clock.now();
            if let Ok(mut n) = now_idle.lock() {
                *n = Some((Duration::from_secs(minutes * 60), touched));
            }
            pause(Duration::from_secs(minutes * 60), scale).await;
            let gap = since(touched);
            if !p.alive().await? {
                return anyhow::Ok(Some((survived, gap)));
            }
            p.end().await;
            eprintln!("doctor: alive after {} idle", human(gap));
            survived = gap;
        }
        Ok(None)
    };
    let lifetime = async {
        // Timed from before the login, so the measured age is never below the server's.
        let born = clock.now();
        if let Ok(mut b) = now_born.lock() {
            *b = Some(born);
        }
        let p = Probe::start(http, &cfg, "lifetime").await?;
        while since(born) < max {
            pause(Duration::from_secs(60), scale).await;
            let age = since(born);
            if !p.alive().await? {
                return anyhow::Ok(Some(age));
            }
        }
        p.end().await;
        Ok(None)
    };
    // A probe can last hours: say where it is at least once a minute (every 5 minutes of server
    // time when the emulator runs faster).
    let every = Duration::from_secs(60).min(Duration::from_secs(300).div_f64(scale));
    let work = async { tokio::join!(idle, lifetime) };
    tokio::pin!(work);
    let (idle, lifetime) = loop {
        tokio::select! {
            done = &mut work => break done,
            () = tokio::time::sleep(every) => {
                let idle_step = now_idle.lock().ok().and_then(|n| *n).map_or_else(
                    || "idle probe: logging in".to_owned(),
                    |(gap, touched)| format!(
                        "idle probe: a session idle for {} of {}, checked next at the end of that gap",
                        human(since(touched).min(gap)),
                        human(gap)
                    ),
                );
                let life_step = now_born.lock().ok().and_then(|b| *b).map_or_else(
                    || "lifetime probe: logging in".to_owned(),
                    |born| format!(
                        "lifetime probe: an active session {} old, checked every minute, for at most {}",
                        human(since(born)),
                        human(max)
                    ),
                );
                eprintln!("doctor: probing for {}; {idle_step}; {life_step}", human(since(started)));
            }
        }
    };
    let interval = Duration::from_secs(interval_min * 60);
    match idle {
        Ok(Some((alive, died))) => {
            println!(
                "probe  idle-timeout  an idle session survived {} idle and died after {} idle",
                human(alive),
                human(died)
            );
            println!(
                "advice: the pool reclaims idle sessions after {} to {} idle (SOFT_TIMEOUT while the pool runs above PROCESS_TARGET). \
                 shiftkey keeps its session alive below that and re-logs in on rejection, so sync does not fail; \
                 other scripts will. On the server, give the service user's pool a SOFT_TIMEOUT longer than the sync interval ({}), \
                 or raise PROCESS_TARGET so the pool stops reclaiming idle sessions in the working day.",
                human(alive),
                human(died),
                human(interval)
            );
        }
        Ok(None) => println!(
            "probe  idle-timeout  no idle timeout up to 2h 00m (the pool may only reclaim sessions when busy: probe again during the working day)"
        ),
        Err(e) => println!("probe  idle-timeout  FAIL: {}", crate::causes(&e)),
    }
    match lifetime {
        Ok(Some(age)) => {
            println!(
                "probe  lifetime-cap  an active session died at age {} (between {} and {})",
                human(age),
                human(age.saturating_sub(Duration::from_secs(60))),
                human(age)
            );
            println!(
                "advice: sessions live at most about {} however busy they are (HARD_TIMEOUT, or a server restart during the probe: probe twice if in doubt). \
                 shiftkey refreshes before that and learns the cap from the first deaths. If the cap is under the 8 h you expect, \
                 raise HARD_TIMEOUT for the service user's pool; a service account with an explicit lifetime is better still.",
                human(age)
            );
        }
        Ok(None) => println!(
            "probe  lifetime-cap  an active session lived the whole {} (no cap below that)",
            human(max)
        ),
        Err(e) => println!("probe  lifetime-cap  FAIL: {}", crate::causes(&e)),
    }
}
