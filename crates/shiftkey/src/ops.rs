//! The ops HTTP server (`/healthz`, `/readyz`, `/metrics`, `/status`) and alerting: the policy
//! engine's error-rate alerts and the credential-expiry alert go to the log, the status page and,
//! when configured, a webhook.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde_json::json;
use shiftkey_auth::TokenManager;
use shiftkey_http::AuthMiddleware;
use shiftkey_policy::{Alert, AlertSink, Severity};
use shiftkey_sync::{CycleReport, SyncError};

use crate::config::Config;

mod json;

/// How many timeline events and cycles `/status` keeps.
const KEEP: usize = 50;

/// Installs the process-wide Prometheus recorder (once).
pub(crate) fn install_recorder() -> anyhow::Result<PrometheusHandle> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("duration_seconds".to_owned()),
            &[
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
            ],
        )
        .context("histogram buckets")?
        .install_recorder()
        .context("installing the metrics recorder")
        .inspect(|_| {
            describe_metrics();
            metrics::gauge!("shiftkey_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        })
}

/// The circuit breaker states, as the `state` label of `shiftkey_circuit_state`.
const CIRCUIT_STATES: [&str; 3] = ["closed", "half_open", "open"];

/// The `# HELP` text of every metric the binary records (the middleware describes its own,
/// `shiftkey_http::telemetry`).
fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    shiftkey_http::telemetry::describe();
    describe_gauge!(
        "shiftkey_build_info",
        "Always 1; the running version in the `version` label. Every process exports it."
    );
    describe_gauge!(
        "shiftkey_sync_leader",
        "Under [lease]: 1 while this process holds the leader lease and syncs, else 0."
    );
    describe_counter!(
        "shiftkey_sync_cycles_total",
        Unit::Count,
        "Sync cycles by result (ok, failed)."
    );
    describe_counter!(
        "shiftkey_sync_records_total",
        Unit::Count,
        "Process revisions a sync cycle applied, by kind (inserted, updated, unchanged)."
    );
    describe_histogram!(
        "shiftkey_sync_cycle_duration_seconds",
        Unit::Seconds,
        "How long successful sync cycles took."
    );
    describe_gauge!(
        "shiftkey_sync_warning",
        "1 while successful cycles find the setup wrong, by kind (nothing_found, utc_offset, no_current_revision)."
    );
    describe_gauge!(
        "shiftkey_sync_lag_seconds",
        Unit::Seconds,
        "Time since the last successful sync cycle (since the start before the first)."
    );
    describe_counter!(
        "shiftkey_token_refreshes_total",
        Unit::Count,
        "New tokens obtained, by token and kind (proactive: before expiry; reactive: after a rejection)."
    );
    describe_counter!(
        "shiftkey_token_refresh_failures_total",
        Unit::Count,
        "Token acquisitions (logins, refreshes) that failed, by token."
    );
    describe_histogram!(
        "shiftkey_token_acquire_duration_seconds",
        Unit::Seconds,
        "How long each token acquisition (login, refresh) took, successful or not, by token."
    );
    describe_gauge!(
        "shiftkey_token_expires_in_seconds",
        Unit::Seconds,
        "Time until the current token expires, by token (0: none held)."
    );
    describe_counter!(
        "shiftkey_proxy_total",
        Unit::Count,
        "A local proxy's requests by what became of them (requests, forwarded, retries, healed, surfaced, failed)."
    );
    describe_gauge!(
        "shiftkey_proxy_sessions",
        "Script sessions a local Teamcenter proxy holds, by proxy."
    );
    describe_counter!(
        "shiftkey_proxy_refused_total",
        Unit::Count,
        "Connections and requests a local proxy refused, by proxy and kind."
    );
    describe_gauge!(
        "shiftkey_circuit_state",
        "1 for the state each Teamcenter circuit breaker is in (closed, half_open, open), 0 for the others."
    );
}

/// Creates every counter and labelled series the binary records at 0 (and registers its
/// histograms), so that a rate over a window holding the first event counts it and dashboards
/// show 0 rather than nothing. The proxies' series come with the first poll, a second after the
/// start; the circuits' with the first poll too.
fn zero_metrics(tokens: &[(String, TokenManager)], syncs: bool) {
    for (name, _) in tokens {
        for kind in ["proactive", "reactive"] {
            metrics::counter!("shiftkey_token_refreshes_total", "token" => name.clone(), "kind" => kind)
                .absolute(0);
        }
        metrics::counter!("shiftkey_token_refresh_failures_total", "token" => name.clone())
            .increment(0);
        let _ =
            metrics::histogram!("shiftkey_token_acquire_duration_seconds", "token" => name.clone());
    }
    if syncs {
        for result in ["ok", "failed"] {
            metrics::counter!("shiftkey_sync_cycles_total", "result" => result).increment(0);
        }
        for kind in ["inserted", "updated", "unchanged"] {
            metrics::counter!("shiftkey_sync_records_total", "kind" => kind).increment(0);
        }
        for kind in shiftkey_sync::CycleWarning::KINDS {
            metrics::gauge!("shiftkey_sync_warning", "kind" => kind).set(0.0);
        }
        let _ = metrics::histogram!("shiftkey_sync_cycle_duration_seconds");
    }
}

/// One line of a token's timeline.
#[derive(Debug, Clone)]
struct Event {
    at: SystemTime,
    token: String,
    what: String,
}

/// One sync cycle as `/status` shows it.
#[derive(Debug, Clone)]
struct Cycle {
    at: SystemTime,
    outcome: Result<CycleReport, String>,
}

/// A firing alert.
#[derive(Debug, Clone)]
struct Active {
    severity: Severity,
    since: SystemTime,
    detail: String,
}

#[derive(Debug, Default)]
struct Log {
    events: VecDeque<Event>,
    cycles: VecDeque<Cycle>,
    last_success: Option<SystemTime>,
    alerts: BTreeMap<String, Active>,
    seen: BTreeMap<String, (shiftkey_auth::Stats, Option<u64>)>,
    /// Background tasks that ended unexpectedly.
    dead: Vec<String>,
}

const ROLE_LEADER: u8 = 1;
const ROLE_FOLLOWER: u8 = 2;
const ROLE_UNKNOWN: u8 = 3;

/// What the ops server reads and the daemon writes.
pub(crate) struct Ops {
    prometheus: Option<PrometheusHandle>,
    started: SystemTime,
    tokens: Vec<(String, TokenManager)>,
    /// The `[proxy.NAME]` proxies, for their per-script accounting.
    proxies: Vec<Arc<shiftkey_sidecar::Proxy>>,
    teamcenter: Option<AuthMiddleware>,
    interval: Option<Duration>,
    webhook: Option<(reqwest::Client, String)>,
    /// Host names the ops server answers to besides its loopback names.
    allowed_hosts: Vec<String>,
    /// Under a leader lease: whether this process holds it (0 no lease or not checked yet,
    /// 1 leader, 2 follower, 3 the lease cannot be checked).
    role: std::sync::atomic::AtomicU8,
    /// When this process last became the leader (a fresh leader is ready while its first cycle
    /// runs, for one interval).
    leading_since: Mutex<Option<SystemTime>>,
    /// When the sync's loop last showed it is alive (a finished cycle, a lease check; at first
    /// the start): the systemd watchdog pings only while this is recent.
    beat: Mutex<tokio::time::Instant>,
    /// Set once the sync is up: its first cycle finished, or it stands by as a follower.
    up: tokio::sync::watch::Sender<bool>,
    log: Mutex<Log>,
}

impl std::fmt::Debug for Ops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ops")
            .field("tokens", &self.tokens.len())
            .finish_non_exhaustive()
    }
}

fn now() -> SystemTime {
    #[allow(
        clippy::disallowed_methods,
        reason = "the status page and alerts show real wall-clock times"
    )]
    SystemTime::now()
}

impl Ops {
    /// The ops state for `tokens`, the Teamcenter middleware when syncing, the sync interval.
    pub(crate) fn new(
        cfg: &Config,
        prometheus: Option<PrometheusHandle>,
        tokens: Vec<(String, TokenManager)>,
        proxies: Vec<Arc<shiftkey_sidecar::Proxy>>,
        teamcenter: Option<AuthMiddleware>,
        interval: Option<Duration>,
    ) -> anyhow::Result<Arc<Self>> {
        let webhook = match &cfg.ops.webhook_env {
            Some(var) => {
                let url = std::env::var(var).with_context(|| {
                    format!("`ops.webhook_env`: environment variable {var} is not set")
                })?;
                url::Url::parse(&url)
                    .with_context(|| format!("`ops.webhook_env`: {var} does not hold a URL"))?;
                Some((crate::net::plain_client(Duration::from_secs(10))?, url))
            }
            None => None,
        };
        if prometheus.is_some() {
            zero_metrics(&tokens, interval.is_some());
        }
        Ok(Arc::new(Self {
            prometheus,
            started: now(),
            tokens,
            proxies,
            teamcenter,
            interval,
            webhook,
            allowed_hosts: cfg.ops.allowed_hosts.clone(),
            role: std::sync::atomic::AtomicU8::new(0),
            leading_since: Mutex::new(None),
            beat: Mutex::new(tokio::time::Instant::now()),
            up: tokio::sync::watch::channel(false).0,
            log: Mutex::new(Log::default()),
        }))
    }

    /// Resolves once the sync is up: its first cycle finished (whatever its result), or this
    /// process stands by as a follower.
    pub(crate) async fn wait_up(&self) {
        let mut up = self.up.subscribe();
        let _ = up.wait_for(|u| *u).await;
    }

    /// The sync's loop is alive (a finished cycle, a lease check).
    pub(crate) fn beat(&self) {
        *self.beat.lock().unwrap_or_else(PoisonError::into_inner) = tokio::time::Instant::now();
    }

    /// Whether the service is healthy enough for a watchdog ping: no background task died, and
    /// the sync's loop (when this process syncs) showed life within `slack`.
    pub(crate) fn alive(&self, slack: Duration) -> bool {
        if !self.log().dead.is_empty() {
            return false;
        }
        self.interval.is_none()
            || self
                .beat
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .elapsed()
                <= slack
    }

    /// Records what the last lease check found (`/status`, `/readyz`,
    /// `shiftkey_sync_leader`); each change is logged once.
    pub(crate) fn lease(&self, state: &shiftkey_sync::LeaseState) {
        use shiftkey_sync::LeaseState;
        self.beat();
        let role = match state {
            LeaseState::Starting => return,
            LeaseState::Leader => ROLE_LEADER,
            LeaseState::Follower => ROLE_FOLLOWER,
            _ => ROLE_UNKNOWN,
        };
        if role != ROLE_LEADER {
            // Standing by (or unable to lead) is "up": the sync waits for the lease.
            self.up.send_replace(true);
        }
        let before = self.role.swap(role, std::sync::atomic::Ordering::Relaxed);
        metrics::gauge!("shiftkey_sync_leader").set(if role == ROLE_LEADER { 1.0 } else { 0.0 });
        if before == role {
            return;
        }
        *self
            .leading_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = (role == ROLE_LEADER).then(now);
        match state {
            LeaseState::Leader => tracing::info!("this process holds the leader lease: it syncs"),
            LeaseState::Follower => {
                tracing::info!("another process holds the leader lease: this one stands by");
            }
            LeaseState::Unreachable { error } => tracing::warn!(
                error = %error,
                "the leader lease cannot be checked: this process does not sync until it can"
            ),
            _ => {}
        }
    }

    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a finished sync cycle.
    pub(crate) fn cycle(&self, result: Result<&CycleReport, &SyncError>) {
        self.beat();
        self.up.send_replace(true);
        let at = now();
        let outcome = match result {
            Ok(r) => {
                metrics::counter!("shiftkey_sync_cycles_total", "result" => "ok").increment(1);
                for (kind, n) in [
                    ("inserted", r.inserted),
                    ("updated", r.updated),
                    ("unchanged", r.unchanged),
                ] {
                    metrics::counter!("shiftkey_sync_records_total", "kind" => kind).increment(n);
                }
                metrics::histogram!("shiftkey_sync_cycle_duration_seconds")
                    .record(r.duration.as_secs_f64());
                self.cycle_warnings(r);
                Ok(r.clone())
            }
            Err(e) => {
                metrics::counter!("shiftkey_sync_cycles_total", "result" => "failed").increment(1);
                Err(public_sync(e))
            }
        };
        let mut log = self.log();
        if outcome.is_ok() {
            log.last_success = Some(at);
        }
        log.cycles.push_front(Cycle { at, outcome });
        log.cycles.truncate(KEEP);
    }

    /// A successful cycle's warnings: `shiftkey_sync_warning{kind}` (1 while it holds, every
    /// kind shown from the first cycle) and an alert `sync_warning:KIND` raised when it appears
    /// and cleared when a cycle no longer finds it (the engine logs it every cycle). Only a full
    /// read can tell whether plans are found, so `nothing_found` changes on full reads only.
    fn cycle_warnings(&self, r: &CycleReport) {
        for kind in shiftkey_sync::CycleWarning::KINDS {
            if kind == "nothing_found" && !r.reconciled {
                continue;
            }
            let found = r.warnings.iter().find(|w| w.kind == kind);
            metrics::gauge!("shiftkey_sync_warning", "kind" => kind).set(if found.is_some() {
                1.0
            } else {
                0.0
            });
            let key = format!("sync_warning:{kind}");
            let active = self.log().alerts.get(&key).map(|a| a.detail.clone());
            match (found, active) {
                (Some(w), Some(d)) if d == w.detail => {}
                (Some(w), _) => self.alert(&key, Some(Severity::Warning), w.detail.clone()),
                (None, Some(d)) => self.alert(&key, None, d),
                (None, None) => {}
            }
        }
    }

    /// Raises (or clears, with `severity: None`) an alert: log, status page, webhook.
    pub(crate) fn alert(&self, key: &str, severity: Option<Severity>, detail: String) {
        {
            let mut log = self.log();
            match severity {
                Some(severity) => {
                    let since = log.alerts.get(key).map_or_else(now, |a| a.since);
                    log.alerts.insert(
                        key.to_owned(),
                        Active {
                            severity,
                            since,
                            detail: detail.clone(),
                        },
                    );
                }
                None => {
                    log.alerts.remove(key);
                }
            }
        }
        match severity {
            Some(Severity::Critical) => tracing::error!(alert = key, "{detail}"),
            Some(Severity::Warning) => tracing::warn!(alert = key, "{detail}"),
            None => tracing::info!(alert = key, "cleared: {detail}"),
        }
        if let Some((http, url)) = &self.webhook {
            let body = json!({
                "source": "shiftkey",
                "alert": key,
                "severity": match severity {
                    Some(Severity::Critical) => "critical",
                    Some(Severity::Warning) => "warning",
                    None => "cleared",
                },
                "detail": detail,
            });
            let (http, url) = (http.clone(), url.clone());
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    if let Err(e) = http.post(&url).json(&body).send().await {
                        tracing::warn!(error = %e.without_url(), "alert webhook failed");
                    }
                });
            }
        }
    }

    /// Polls the managers and middleware: timeline events and gauges. Runs every second.
    pub(crate) fn poll(&self) {
        let wall = now();
        let at = tokio::time::Instant::now();
        let mut log = self.log();
        for (name, m) in &self.tokens {
            let status = m.status();
            let s = status.stats;
            for (kind, n) in [("proactive", s.proactive), ("reactive", s.reactive)] {
                metrics::counter!("shiftkey_token_refreshes_total", "token" => name.clone(), "kind" => kind).absolute(n);
            }
            let left = status.schedule.map_or(0.0, |sc| {
                sc.expires_at.saturating_duration_since(at).as_secs_f64()
            });
            metrics::gauge!("shiftkey_token_expires_in_seconds", "token" => name.clone()).set(left);
            let (before, before_gen) = log.seen.get(name).copied().unwrap_or_default();
            let mut event = |what: String| {
                log.events.push_front(Event {
                    at: wall,
                    token: name.clone(),
                    what,
                });
            };
            if s.reactive > before.reactive {
                event(format!(
                    "generation {} died early: the server rejected it",
                    before_gen.map_or_else(|| "?".to_owned(), |g| g.to_string())
                ));
            }
            if status.generation != before_gen {
                let how = if s.reactive > before.reactive {
                    "after a rejection (reactive)"
                } else if s.adopted > before.adopted {
                    "from the store (another process or an earlier run)"
                } else if s.proactive > before.proactive {
                    "before expiry (proactive)"
                } else {
                    "at start"
                };
                if let Some(g) = status.generation {
                    event(format!("generation {g} obtained {how}"));
                }
            }
            if s.failures > before.failures {
                event(format!(
                    "refresh failed{}",
                    status
                        .last_error
                        .as_ref()
                        .map(|e| format!(": {}", public_auth(e)))
                        .unwrap_or_default()
                ));
            }
            log.seen.insert(name.clone(), (s, status.generation));
        }
        log.events.truncate(KEEP);
        for p in &self.proxies {
            let s = p.stats();
            for (what, n) in [
                ("requests", s.requests),
                ("forwarded", s.forwarded),
                ("retries", s.retries),
                ("healed", s.healed),
                ("surfaced", s.surfaced),
                ("failed", s.failed),
            ] {
                metrics::counter!("shiftkey_proxy_total", "proxy" => p.name().to_owned(), "what" => what)
                    .absolute(n);
            }
            metrics::gauge!("shiftkey_proxy_sessions", "proxy" => p.name().to_owned())
                .set(s.sessions.len() as f64);
            // Every kind from the start: an alert on a rise needs no `or` for a first event.
            for (kind, n) in &s.refused {
                metrics::counter!("shiftkey_proxy_refused_total", "proxy" => p.name().to_owned(), "kind" => *kind)
                    .absolute(*n);
            }
        }
        if let Some(mw) = &self.teamcenter {
            let (auth, server) = mw.circuits();
            for (name, state) in [("auth", auth), ("server", server)] {
                let now = match state {
                    shiftkey_policy::State::Closed => "closed",
                    shiftkey_policy::State::HalfOpen => "half_open",
                    shiftkey_policy::State::Open => "open",
                };
                for label in CIRCUIT_STATES {
                    metrics::gauge!("shiftkey_circuit_state", "circuit" => name, "state" => label)
                        .set(if label == now { 1.0 } else { 0.0 });
                }
            }
        }
        // A follower does not sync: its lag is the leader's to report.
        if self.interval.is_some() && !self.follower() {
            let since = log.last_success.unwrap_or(self.started);
            metrics::gauge!("shiftkey_sync_lag_seconds")
                .set(wall.duration_since(since).unwrap_or_default().as_secs_f64());
        }
    }

    /// What the request-rate alerts measure: the Teamcenter client's requests and each proxy's.
    fn measured(&self) -> String {
        let mut what: Vec<String> = Vec::new();
        if self.teamcenter.is_some() {
            what.push("Teamcenter".to_owned());
        }
        what.extend(self.proxies.iter().map(|p| format!("proxy {}", p.name())));
        match what.as_slice() {
            [] => "the requests".to_owned(),
            [one] => format!("the requests of {one}"),
            many => format!("the requests of {}", many.join(", ")),
        }
    }

    /// Why the process is not ready, if it is not.
    /// Records that the background task `name` ended unexpectedly: `/readyz` names it.
    pub(crate) fn task_died(&self, name: &str) {
        self.log().dead.push(name.to_owned());
    }

    /// Whether this process does not lead under a lease: another one holds it, or it cannot
    /// be checked.
    fn follower(&self) -> bool {
        matches!(
            self.role.load(std::sync::atomic::Ordering::Relaxed),
            ROLE_FOLLOWER | ROLE_UNKNOWN
        )
    }

    fn not_ready(&self) -> Vec<String> {
        let mut why = Vec::new();
        for name in &self.log().dead {
            why.push(format!("the background task `{name}` stopped unexpectedly"));
        }
        let at = tokio::time::Instant::now();
        // A follower is ready when it serves: its Teamcenter session and its sync wait until it
        // leads.
        let follower = self.follower();
        for (name, m) in &self.tokens {
            if follower && name == "teamcenter" {
                continue;
            }
            let status = m.status();
            if m.refresher_died() {
                why.push(format!("token {name}: its refresher stopped unexpectedly"));
            } else if let Some(e) = &status.halted {
                why.push(format!(
                    "token {name}: refreshing stopped: {}",
                    public_auth(e)
                ));
            } else if !status.dormant && status.schedule.is_none_or(|s| at >= s.expires_at) {
                // (A dormant manager holds no token because none is wanted: a session is
                // logged in when a call needs it.)
                why.push(format!("token {name}: no fresh token"));
            }
        }
        if let Some(mw) = &self.teamcenter {
            let (auth, server) = mw.circuits();
            if auth != shiftkey_policy::State::Closed {
                why.push(format!(
                    "the auth circuit is {}",
                    crate::words::circuit(auth)
                ));
            }
            if server != shiftkey_policy::State::Closed {
                why.push(format!(
                    "the server circuit is {}",
                    crate::words::circuit(server)
                ));
            }
        }
        if self.role.load(std::sync::atomic::Ordering::Relaxed) == ROLE_UNKNOWN {
            why.push(
                "the leader lease cannot be checked (its database is unreachable; see the log)"
                    .to_owned(),
            );
        }
        if let Some(interval) = self.interval.filter(|_| !follower) {
            let leading_since = *self
                .leading_since
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let log = self.log();
            let since = log.last_success.unwrap_or(self.started);
            let age = now().duration_since(since).unwrap_or_default();
            // A fresh leader is ready while its first cycle runs, for one interval.
            let fresh_leader = leading_since.filter(|t| since < *t);
            if let Some(t) = fresh_leader {
                let leading = now().duration_since(t).unwrap_or_default();
                if leading > interval {
                    why.push(format!(
                        "no successful sync in the {} since this process became the leader (one period is {})",
                        crate::tokens::human(leading),
                        crate::tokens::human(interval)
                    ));
                }
            } else if age > interval * 2 {
                why.push(format!(
                    "no successful sync for {} (two periods are {})",
                    crate::tokens::human(age),
                    crate::tokens::human(interval * 2)
                ));
            }
        }
        why
    }

    /// The router.
    pub(crate) fn router(self: &Arc<Self>) -> axum::Router {
        axum::Router::new()
            .route("/healthz", axum::routing::get(|| async { "ok\n" }))
            .route("/readyz", axum::routing::get(readyz))
            .route("/metrics", axum::routing::get(metrics_text))
            .route("/status", axum::routing::get(status))
            .with_state(Arc::clone(self))
    }

    /// The credential-expiry alert: client secrets with `secret_expires` and certificates.
    pub(crate) fn check_expiries(&self, cfg: &Config) {
        let warn_within = Duration::from_secs(u64::from(cfg.ops.expiry_warning_days) * 86_400);
        let at = now();
        for (name, t) in &cfg.tokens {
            let mut checks: Vec<(String, anyhow::Result<SystemTime>)> = Vec::new();
            if let Some(d) = &t.secret_expires {
                checks.push((format!("tokens.{name}.client_secret"), date(d)));
            }
            if let Some(path) = &t.certificate {
                checks.push((
                    format!("tokens.{name}.certificate"),
                    certificate_expiry(path),
                ));
            }
            for (key, expiry) in checks {
                let alert_key = format!("credential_expiry:{key}");
                match expiry {
                    Ok(when) => match when.duration_since(at) {
                        Err(_) => self.alert(
                            &alert_key,
                            Some(Severity::Critical),
                            format!("`{key}` has expired: renew it and update the reference"),
                        ),
                        Ok(left) if left <= warn_within => self.alert(
                            &alert_key,
                            Some(Severity::Warning),
                            format!(
                                "`{key}` expires in {} days: renew it before then",
                                left.as_secs() / 86_400
                            ),
                        ),
                        Ok(_) => {
                            if self.log().alerts.contains_key(&alert_key) {
                                self.alert(&alert_key, None, format!("`{key}` renewed"));
                            }
                        }
                    },
                    Err(e) => {
                        // The cause (with its file path) goes to the log only.
                        tracing::warn!(key = key.as_str(), error = %crate::causes(&e), "cannot read a credential's expiry");
                        self.alert(
                            &alert_key,
                            Some(Severity::Warning),
                            format!("cannot read the expiry of `{key}` (the log says why)"),
                        );
                    }
                }
            }
        }
    }
}

fn date(text: &str) -> anyhow::Result<SystemTime> {
    let d = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .with_context(|| format!("`{text}` is not a date like 2027-03-31"))?;
    let t = d
        .and_hms_opt(0, 0, 0)
        .context("midnight")?
        .and_utc()
        .timestamp();
    Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(t).unwrap_or(0)))
}

/// The `notAfter` of the first certificate in a PEM file.
pub(crate) fn certificate_expiry(path: &std::path::Path) -> anyhow::Result<SystemTime> {
    use x509_cert::der::DecodePem as _;
    let pem = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    // `openssl ca` writes a text dump before the PEM block: start at the block.
    let start = pem
        .windows(27)
        .position(|w| w == b"-----BEGIN CERTIFICATE-----")
        .with_context(|| format!("{} holds no PEM certificate", path.display()))?;
    let cert = x509_cert::Certificate::from_pem(&pem[start..])
        .map_err(|e| anyhow::anyhow!("{} is not a PEM certificate: {e}", path.display()))?;
    Ok(SystemTime::UNIX_EPOCH + cert.tbs_certificate.validity.not_after.to_unix_duration())
}

/// Sends the policy engine's alerts to [`Ops::alert`].
#[derive(Debug)]
pub(crate) struct OpsSink(pub(crate) Arc<Ops>);

impl AlertSink for OpsSink {
    fn alert(&self, a: &Alert) {
        let key = a.rule.name();
        let detail = match a.rule {
            shiftkey_policy::Rule::UnauthorizedRate => format!(
                "{:.1} % of {} got a 401 (a token or session the server rejected) over 15 minutes; \
                 each was retried with a fresh one, /status counts those that surfaced",
                a.value * 100.0,
                self.0.measured()
            ),
            shiftkey_policy::Rule::RefreshSuccessRate => format!(
                "only {:.1} % of token refreshes succeeded over 15 minutes",
                a.value * 100.0
            ),
            shiftkey_policy::Rule::RefreshLatency => {
                format!("a token refresh took {:.1} s", a.value)
            }
            shiftkey_policy::Rule::ConsecutiveRefreshFailures => {
                format!("{} token refreshes failed in a row", a.value)
            }
            _ => format!("{} = {}", a.rule.name(), a.value),
        };
        self.0.alert(key, a.severity, detail);
    }
}

/// A token error as the ops pages show it: its kind and the server's code, never the server's
/// text, a URL or a path (those go to the log).
pub(crate) fn public_auth(e: &shiftkey_auth::AuthError) -> String {
    use shiftkey_auth::AuthError;
    match e {
        AuthError::Transient { kind, .. } => format!("transient: {kind}"),
        AuthError::Permanent { kind, .. } => format!("refused: {kind}"),
        AuthError::Rejected { generation, .. } => {
            format!("generation {generation} was rejected again")
        }
        AuthError::Shutdown => "shut down".to_owned(),
        AuthError::TaskDied => "the refresher stopped".to_owned(),
        _ => "failed (the log says why)".to_owned(),
    }
}

/// A sync error as the ops pages show it (see [`public_auth`]).
pub(crate) fn public_sync(e: &SyncError) -> String {
    use shiftkey_teamcenter::TcError;
    match e {
        SyncError::Teamcenter(tc) => format!(
            "Teamcenter: {}",
            match tc {
                TcError::InvalidCredentials { code, .. } =>
                    format!("credentials refused (code {code})"),
                TcError::SessionRejected { .. } => "the session was rejected again".to_owned(),
                TcError::InternalServer { messages } => format!(
                    "internal error (codes {})",
                    messages
                        .iter()
                        .map(|m| m.code.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                TcError::Service { code, .. } => format!("service error (code {code})"),
                TcError::Unexpected { operation, .. } => {
                    format!("an unexpected answer from {operation}")
                }
                TcError::Site { .. } =>
                    "the site mapping does not fit (run `shiftkey doctor`)".to_owned(),
                TcError::Http(_) => match tc.http_error() {
                    Some(http) => {
                        use shiftkey_http::HttpError;
                        match http {
                            HttpError::Token(a) => public_auth(a),
                            HttpError::Rejected { .. } => {
                                "the new session was rejected again".to_owned()
                            }
                            HttpError::AuthCircuitOpen { .. } => {
                                "the auth circuit is open".to_owned()
                            }
                            HttpError::ServerCircuitOpen { .. } => {
                                "the server circuit is open".to_owned()
                            }
                            _ => "HTTP layer error".to_owned(),
                        }
                    }
                    None if tc.is_timeout() => "timed out".to_owned(),
                    None if tc.is_connect() => "cannot connect".to_owned(),
                    None => "HTTP error".to_owned(),
                },
                _ => "failed".to_owned(),
            }
        ),
        SyncError::Sink(_) => "the shop-floor sink failed (the log says why)".to_owned(),
        _ => "failed (the log says why)".to_owned(),
    }
}

async fn readyz(State(ops): State<Arc<Ops>>) -> Response {
    let why = ops.not_ready();
    if why.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready:\n- {}\n", why.join("\n- ")),
        )
            .into_response()
    }
}

async fn metrics_text(State(ops): State<Arc<Ops>>) -> Response {
    ops.poll();
    match &ops.prometheus {
        Some(h) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            h.render(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "metrics are not enabled\n").into_response(),
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

pub(crate) fn stamp(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t)
        .format("%Y-%m-%d %H:%M:%S UTC")
        .to_string()
}

/// The status page: HTML, or JSON for a client that asks for it (`Accept: application/json`).
async fn status(State(ops): State<Arc<Ops>>, headers: axum::http::HeaderMap) -> Response {
    ops.poll();
    let json = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/json"));
    if json {
        axum::Json(ops.status_json()).into_response()
    } else {
        Html(ops.render()).into_response()
    }
}

impl Ops {
    /// The `/status` page. Shows generations, times and counts — never a token or secret.
    pub(crate) fn render(&self) -> String {
        let at = tokio::time::Instant::now();
        let why = self.not_ready();
        let log = self.log();
        let mut h = String::from(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>shiftkey status</title>\
             <meta http-equiv=\"refresh\" content=\"30\"><style>body{font-family:system-ui,sans-serif;margin:2em;max-width:70em}\
             table{border-collapse:collapse;margin-bottom:1.5em}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}\
             .ok{color:#060}.bad{color:#a00}</style></head><body><h1>shiftkey</h1>",
        );
        let role = match self.role.load(std::sync::atomic::Ordering::Relaxed) {
            ROLE_LEADER => " Role: <b>leader</b> (holds the lease, syncs).",
            ROLE_FOLLOWER => {
                " Role: <b>follower</b> (another process holds the lease; this one serves and stands by)."
            }
            ROLE_UNKNOWN => {
                " Role: <b>unknown</b> (the lease cannot be checked; this process does not sync)."
            }
            _ => "",
        };
        let _ = write!(
            h,
            "<p>shiftkey {}. Up since {}.{role} Readiness: {}</p>",
            env!("CARGO_PKG_VERSION"),
            stamp(self.started),
            if why.is_empty() {
                "<span class=\"ok\">ready</span>".to_owned()
            } else {
                format!(
                    "<span class=\"bad\">not ready</span> ({})",
                    esc(&why.join("; "))
                )
            }
        );
        h.push_str("<h2>Active alerts</h2>");
        if log.alerts.is_empty() {
            h.push_str("<p class=\"ok\">None.</p>");
        } else {
            h.push_str(
                "<table><tr><th>Alert</th><th>Severity</th><th>Since</th><th>Detail</th></tr>",
            );
            for (k, a) in &log.alerts {
                let _ = write!(
                    h,
                    "<tr><td>{}</td><td class=\"bad\">{}</td><td>{}</td><td>{}</td></tr>",
                    esc(k),
                    crate::words::severity(a.severity),
                    stamp(a.since),
                    esc(&a.detail)
                );
            }
            h.push_str("</table>");
        }
        h.push_str("<h2>Tokens</h2><table><tr><th>Token</th><th>Generation</th><th>Expires in</th><th>Refreshes (proactive / reactive)</th><th>Failures</th><th>State</th></tr>");
        for (name, m) in &self.tokens {
            let s = m.status();
            let left = s
                .schedule
                .map(|sc| crate::tokens::human(sc.expires_at.saturating_duration_since(at)));
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{} / {}</td><td>{}</td><td>{}</td></tr>",
                esc(name),
                s.generation
                    .map_or_else(|| "none".to_owned(), |g| g.to_string()),
                left.unwrap_or_else(|| "n/a".to_owned()),
                s.stats.proactive,
                s.stats.reactive,
                s.stats.failures,
                match (&s.halted, &s.last_error) {
                    (Some(e), _) => format!(
                        "<span class=\"bad\">halted: {}</span>",
                        esc(&public_auth(e))
                    ),
                    (None, Some(e)) => format!("retrying: {}", esc(&public_auth(e))),
                    (None, None) => "<span class=\"ok\">ok</span>".to_owned(),
                }
            );
        }
        h.push_str("</table>");
        if !self.proxies.is_empty() {
            h.push_str(
                "<h2>Proxies</h2><table><tr><th>Proxy</th><th>Requests</th><th>Forwarded</th>\
                 <th>Policy retries</th><th>Rejections healed</th><th>Rejections surfaced</th>\
                 <th>Failed</th><th>Scripts (local sessions: requests)</th></tr>",
            );
            for p in &self.proxies {
                let s = p.stats();
                let scripts = s
                    .sessions
                    .iter()
                    .map(|(who, n)| format!("{who}: {n}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let _ = write!(
                    h,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td><td>{}</td><td>{}</td></tr>",
                    esc(p.name()),
                    s.requests,
                    s.forwarded,
                    s.retries,
                    s.healed,
                    if s.surfaced == 0 { "ok" } else { "bad" },
                    s.surfaced,
                    s.failed,
                    esc(&scripts)
                );
            }
            h.push_str("</table>");
        }
        if let Some(mw) = &self.teamcenter {
            let st = mw.stats();
            let learned = mw.learned_limits();
            let (auth, server) = mw.circuits();
            let _ = write!(
                h,
                "<h2>Teamcenter</h2><p>Requests {}, 401s recovered {}, <b>401s surfaced {}</b>, retries {}, premature deaths {}, keepalives {} ({} failed); circuits: auth {}, server {}; learned lifetime cap {}, idle timeout {}.</p>",
                st.requests,
                st.recovered,
                st.surfaced,
                st.retries,
                st.premature_deaths,
                st.keepalives,
                st.keepalives_failed,
                crate::words::circuit(auth),
                crate::words::circuit(server),
                learned
                    .lifetime_cap
                    .map_or_else(|| "not seen".to_owned(), crate::tokens::human),
                learned
                    .idle_limit
                    .map_or_else(|| "not seen".to_owned(), crate::tokens::human),
            );
        }
        h.push_str("<h2>Token timeline</h2>");
        if log.events.is_empty() {
            h.push_str("<p>No events yet.</p>");
        } else {
            h.push_str("<table><tr><th>Time</th><th>Token</th><th>Event</th></tr>");
            for e in &log.events {
                let _ = write!(
                    h,
                    "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                    stamp(e.at),
                    esc(&e.token),
                    esc(&e.what)
                );
            }
            h.push_str("</table>");
        }
        if self.interval.is_some() {
            h.push_str("<h2>Last sync cycles</h2>");
            if log.cycles.is_empty() {
                h.push_str("<p>No cycle has run yet.</p>");
            } else {
                h.push_str("<table><tr><th>Finished</th><th>Outcome</th><th>Read</th><th>Inserted</th><th>Updated</th><th>Unchanged</th><th>Feedback</th><th>Took</th></tr>");
                for c in &log.cycles {
                    match &c.outcome {
                        Ok(r) => {
                            let outcome = if r.warnings.is_empty() {
                                "<td class=\"ok\">ok</td>".to_owned()
                            } else {
                                format!(
                                    "<td class=\"bad\">ok, with warnings: {}</td>",
                                    esc(&r
                                        .warnings
                                        .iter()
                                        .map(ToString::to_string)
                                        .collect::<Vec<_>>()
                                        .join("; "))
                                )
                            };
                            let _ = write!(
                                h,
                                "<tr><td>{}</td>{outcome}<td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1} s</td></tr>",
                                stamp(c.at),
                                r.read,
                                r.inserted,
                                r.updated,
                                r.unchanged,
                                r.feedback_pushed,
                                r.duration.as_secs_f64()
                            );
                        }
                        Err(e) => {
                            let _ = write!(
                                h,
                                "<tr><td>{}</td><td class=\"bad\" colspan=\"7\">failed: {}</td></tr>",
                                stamp(c.at),
                                esc(e)
                            );
                        }
                    }
                }
                h.push_str("</table>");
            }
        }
        h.push_str("</body></html>\n");
        h
    }
}

/// Binds the ops server's port: before anything starts, so a port another process holds stops
/// the start with that one message, before any token is fetched.
pub(crate) async fn bind(listen: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("`ops.listen`: cannot listen on {listen}"))
}

/// Serves the router on `listener` until the task is dropped.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    ops: Arc<Ops>,
) -> anyhow::Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    let addr = listener.local_addr()?;
    let router = shiftkey_sidecar::serve::with_host_check(
        ops.router(),
        shiftkey_sidecar::serve::Hosts::loopback_and(&ops.allowed_hosts),
    );
    Ok((
        addr,
        tokio::spawn(shiftkey_sidecar::serve::serve(listener, router)),
    ))
}

#[cfg(test)]
mod supervision_tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use super::*;

    /// A minimal session-mode config, loaded from a file under `name` (then removed).
    fn test_config(name: &str) -> Config {
        let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "[teamcenter]\nurl = \"http://127.0.0.1:9\"\nuser = \"u\"\npassword = { env = \"X\" }\n",
        )
        .unwrap();
        let cfg = Config::load(&path).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        cfg
    }

    #[test]
    fn the_pages_show_kinds_and_codes_never_server_text_or_paths() {
        use shiftkey_auth::{AuthError, PermanentKind, TransientKind};
        let refused = AuthError::permanent(
            PermanentKind::InvalidGrant,
            "invalid_grant: refresh token rt-s3cret for https://idp.example/token?x=y was revoked",
        );
        assert_eq!(public_auth(&refused), "refused: invalid_grant");
        let flaky = AuthError::transient(TransientKind::Timeout, "/etc/shiftkey/ca.pem: slow");
        assert_eq!(public_auth(&flaky), "transient: timeout");
        let sink = SyncError::Sink(shiftkey_shopfloor::SinkError::new(
            "open /var/lib/shiftkey/shop.db",
            sqlx::Error::PoolClosed,
        ));
        let shown = public_sync(&sink);
        assert!(!shown.contains("/var/lib"), "{shown}");
        let tc = SyncError::Teamcenter(shiftkey_teamcenter::TcError::Service {
            qname: "ServiceException".to_owned(),
            code: 214_086,
            message: "window 7 of /home/tc/secret-project is gone".to_owned(),
        });
        assert_eq!(public_sync(&tc), "Teamcenter: service error (code 214086)");
    }

    #[tokio::test]
    async fn readyz_names_a_dead_task() {
        let cfg = test_config("shiftkey-ops-unit");
        let ops = Ops::new(&cfg, None, Vec::new(), Vec::new(), None, None).unwrap();
        assert!(ops.not_ready().is_empty(), "{:?}", ops.not_ready());
        ops.task_died("broker");
        let why = ops.not_ready();
        assert!(
            why.iter()
                .any(|w| w.contains("`broker` stopped unexpectedly")),
            "{why:?}"
        );
    }

    /// In a pair: a follower is ready; a fresh leader is ready while its first cycle runs, for
    /// one interval, however long it stood by; a process that cannot check its lease is not.
    #[tokio::test]
    async fn readiness_follows_the_lease() {
        use shiftkey_sync::LeaseState;
        let cfg = test_config("shiftkey-ops-lease");
        let minute = Duration::from_secs(60);
        let mut ops = Ops::new(&cfg, None, Vec::new(), Vec::new(), None, Some(minute)).unwrap();
        // Started (and stood by) ten minutes ago, ten intervals.
        Arc::get_mut(&mut ops).unwrap().started = now() - 10 * minute;
        ops.lease(&LeaseState::Follower);
        assert!(ops.not_ready().is_empty(), "{:?}", ops.not_ready());
        ops.lease(&LeaseState::Leader);
        assert!(
            ops.not_ready().is_empty(),
            "a fresh leader: {:?}",
            ops.not_ready()
        );
        // Its first cycle has run for more than an interval without success: not ready.
        *ops.leading_since.lock().unwrap() = Some(now() - 2 * minute);
        let why = ops.not_ready();
        assert!(
            why.iter()
                .any(|w| w.contains("since this process became the leader")),
            "{why:?}"
        );
        // A success since: ready.
        ops.cycle(Ok(&CycleReport::default()));
        assert!(ops.not_ready().is_empty(), "{:?}", ops.not_ready());
        ops.lease(&LeaseState::Unreachable {
            error: "connection refused".into(),
        });
        let why = ops.not_ready();
        assert!(
            why.iter()
                .any(|w| w.contains("the leader lease cannot be checked")),
            "{why:?}"
        );
        assert!(
            !why.iter().any(|w| w.contains("refused")),
            "no error text: {why:?}"
        );
    }

    /// A cycle's warning raises an alert (on `/status`) once and keeps it while cycles find it;
    /// `nothing_found` changes only with a full read; a cycle without it clears it.
    #[tokio::test]
    async fn cycle_warnings_are_alerts_while_they_hold() {
        let cfg = test_config("shiftkey-ops-warn");
        let ops = Ops::new(
            &cfg,
            None,
            Vec::new(),
            Vec::new(),
            None,
            Some(Duration::from_secs(60)),
        )
        .unwrap();
        let mut full = CycleReport {
            reconciled: true,
            ..CycleReport::default()
        };
        full.warnings = vec![shiftkey_sync::CycleWarning::new(
            "nothing_found",
            "a full read found no plan of the type `MEProcess`",
        )];
        ops.cycle(Ok(&full));
        let page = ops.render();
        assert!(page.contains("sync_warning:nothing_found"), "{page}");
        assert!(
            page.contains("ok, with warnings: a full read found no plan"),
            "{page}"
        );
        // An incremental cycle cannot tell: the alert stays.
        ops.cycle(Ok(&CycleReport::default()));
        assert!(ops.log().alerts.contains_key("sync_warning:nothing_found"));
        // A full read that finds every type clears it.
        ops.cycle(Ok(&CycleReport {
            reconciled: true,
            ..CycleReport::default()
        }));
        assert!(!ops.log().alerts.contains_key("sync_warning:nothing_found"));
    }
}
