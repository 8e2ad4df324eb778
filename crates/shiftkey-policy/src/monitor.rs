//! An error-rate monitor over a sliding window, raising alerts when a rule starts and stops firing.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::Class;

const CLASSES: usize = 5;

fn index(class: Class) -> usize {
    match class {
        Class::Success => 0,
        Class::Unauthorized => 1,
        Class::ServerFailure => 2,
        Class::RateLimited => 3,
        Class::ClientError => 4,
    }
}

/// Thresholds (design §5 defaults, `docs/design.md`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MonitorConfig {
    /// The sliding window (15 min).
    pub window: Duration,
    /// Buckets in the window (60, i.e. 15 s each): the window slides a bucket at a time.
    pub buckets: u32,
    /// Requests needed in the window before rates count (20), so one 401 in three calls is no alert.
    pub min_requests: u64,
    /// 401 rate that warns (1 %).
    pub unauthorized_warning: f64,
    /// 401 rate that is critical (5 %).
    pub unauthorized_critical: f64,
    /// Refresh success rate below which to warn (99.9 %).
    pub refresh_success_min: f64,
    /// Refreshes needed in the window before their success rate counts (10), so one failed
    /// attempt against an upstream down for a second is no alert (three in a row still are:
    /// `refresh_failures_max`).
    pub min_refreshes: u64,
    /// Refresh latency above which to warn (2 s).
    pub refresh_latency_max: Duration,
    /// Consecutive refresh failures that are critical (3).
    pub refresh_failures_max: u32,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(15 * 60),
            buckets: 60,
            min_requests: 20,
            unauthorized_warning: 0.01,
            unauthorized_critical: 0.05,
            refresh_success_min: 0.999,
            min_refreshes: 10,
            refresh_latency_max: Duration::from_secs(2),
            refresh_failures_max: 3,
        }
    }
}

/// Which rule an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Rule {
    /// Share of requests rejected with 401 in the window.
    UnauthorizedRate,
    /// Share of token refreshes that succeeded in the window.
    RefreshSuccessRate,
    /// The slowest refresh in the window.
    RefreshLatency,
    /// Refresh failures in a row.
    ConsecutiveRefreshFailures,
}

impl Rule {
    /// The rule's name, as alerts carry it (`UnauthorizedRate`, ...).
    ///
    /// ```
    /// assert_eq!(shiftkey_policy::Rule::RefreshLatency.name(), "RefreshLatency");
    /// ```
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::UnauthorizedRate => "UnauthorizedRate",
            Self::RefreshSuccessRate => "RefreshSuccessRate",
            Self::RefreshLatency => "RefreshLatency",
            Self::ConsecutiveRefreshFailures => "ConsecutiveRefreshFailures",
        }
    }
}

/// How bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// Look at it soon.
    Warning,
    /// Look at it now.
    Critical,
}

/// An alert transition: a rule started firing (or changed severity), or cleared.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    /// The rule.
    pub rule: Rule,
    /// The new severity; `None` means the condition cleared.
    pub severity: Option<Severity>,
    /// The measured value (a rate, seconds, or a count).
    pub value: f64,
}

/// Where alerts go: a log, a metric, a webhook.
pub trait AlertSink: Send + Sync + std::fmt::Debug {
    /// Called once per transition, outside any hot loop.
    fn alert(&self, alert: &Alert);
}

/// Logs alerts through `tracing` (warn / error, `info` when cleared).
#[derive(Debug, Clone, Copy, Default)]
pub struct TracingSink;

impl AlertSink for TracingSink {
    fn alert(&self, a: &Alert) {
        match a.severity {
            Some(Severity::Critical) => {
                tracing::error!(rule = a.rule.name(), value = a.value, "alert: critical")
            }
            Some(Severity::Warning) => {
                tracing::warn!(rule = a.rule.name(), value = a.value, "alert: warning")
            }
            None => tracing::info!(rule = a.rule.name(), value = a.value, "alert cleared"),
        }
    }
}

/// One event to count.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Event {
    /// A request ended with this class.
    Request(Class),
    /// A token refresh ended.
    Refresh {
        /// Whether it succeeded.
        ok: bool,
        /// How long it took.
        latency: Duration,
    },
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    index: u64,
    requests: [u64; CLASSES],
    refresh_ok: u64,
    refresh_failed: u64,
    refresh_latency_max: Duration,
}

#[derive(Debug)]
struct Window {
    buckets: VecDeque<Bucket>,
    totals: [u64; CLASSES],
    refresh_ok: u64,
    refresh_failed: u64,
    consecutive_refresh_failures: u32,
    firing: [Option<Severity>; 4],
}

/// Counts of the current window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Requests by class: success, unauthorized, server failure, rate limited, client error.
    pub requests: [u64; CLASSES],
    /// Successful refreshes.
    pub refresh_ok: u64,
    /// Failed refreshes.
    pub refresh_failed: u64,
}

/// A sliding-window error-rate monitor (design §5).
///
/// The window is `buckets` buckets of `window / buckets`, counted from `origin`; an event at `t`
/// falls in bucket `(t - origin) / width`, and the window at `now` holds the last `buckets`
/// buckets up to `now`'s. Rules are evaluated on every event; each transition (start, severity
/// change, clear) reaches the sinks once.
///
/// # Example
/// ```
/// use std::time::Instant;
/// use shiftkey_policy::{Class, ErrorRateMonitor, Event, MonitorConfig, TracingSink};
///
/// let t0 = Instant::now();
/// let monitor = ErrorRateMonitor::new(MonitorConfig::default(), t0).with_sink(TracingSink);
/// for _ in 0..99 {
///     monitor.record(t0, Event::Request(Class::Success));
/// }
/// monitor.record(t0, Event::Request(Class::Unauthorized));
/// assert_eq!(monitor.rate(t0, Class::Unauthorized), Some(0.01));
/// ```
#[derive(Debug)]
pub struct ErrorRateMonitor {
    cfg: MonitorConfig,
    origin: Instant,
    width: Duration,
    window: Mutex<Window>,
    sinks: Vec<Arc<dyn AlertSink>>,
}

impl ErrorRateMonitor {
    /// A monitor whose buckets count from `origin`.
    #[must_use]
    pub fn new(cfg: MonitorConfig, origin: Instant) -> Self {
        let buckets = cfg.buckets.max(1);
        let width = (cfg.window / buckets).max(Duration::from_millis(1));
        Self {
            cfg: MonitorConfig { buckets, ..cfg },
            origin,
            width,
            window: Mutex::new(Window {
                buckets: VecDeque::with_capacity(buckets as usize + 1),
                totals: [0; CLASSES],
                refresh_ok: 0,
                refresh_failed: 0,
                consecutive_refresh_failures: 0,
                firing: [None; 4],
            }),
            sinks: Vec::new(),
        }
    }

    /// Adds a sink for alerts.
    #[must_use]
    pub fn with_sink(mut self, sink: impl AlertSink + 'static) -> Self {
        self.sinks.push(Arc::new(sink));
        self
    }

    fn bucket_of(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.origin);
        (since.as_nanos() / self.width.as_nanos().max(1)) as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        self.window.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn slide(&self, w: &mut Window, current: u64) {
        let oldest_kept = current.saturating_sub(u64::from(self.cfg.buckets) - 1);
        while w.buckets.front().is_some_and(|b| b.index < oldest_kept) {
            if let Some(b) = w.buckets.pop_front() {
                for (t, r) in w.totals.iter_mut().zip(b.requests) {
                    *t -= r;
                }
                w.refresh_ok -= b.refresh_ok;
                w.refresh_failed -= b.refresh_failed;
            }
        }
    }

    /// Counts one event at `now` and raises any alert transition it causes.
    pub fn record(&self, now: Instant, event: Event) {
        let current = self.bucket_of(now);
        let mut w = self.lock();
        self.slide(&mut w, current);
        if w.buckets.back().is_none_or(|b| b.index < current) {
            w.buckets.push_back(Bucket {
                index: current,
                ..Bucket::default()
            });
        }
        // Events arriving late (an older `now`) count in the newest bucket: never lost.
        let Some(bucket) = w.buckets.back_mut() else {
            return;
        };
        match event {
            Event::Request(class) => {
                bucket.requests[index(class)] += 1;
                w.totals[index(class)] += 1;
            }
            Event::Refresh { ok, latency } => {
                if ok {
                    bucket.refresh_ok += 1;
                } else {
                    bucket.refresh_failed += 1;
                }
                bucket.refresh_latency_max = bucket.refresh_latency_max.max(latency);
                if ok {
                    w.refresh_ok += 1;
                    w.consecutive_refresh_failures = 0;
                } else {
                    w.refresh_failed += 1;
                    w.consecutive_refresh_failures =
                        w.consecutive_refresh_failures.saturating_add(1);
                }
            }
        }
        let transitions = self.evaluate(&mut w, matches!(event, Event::Refresh { .. }));
        drop(w);
        for a in &transitions {
            for s in &self.sinks {
                s.alert(a);
            }
        }
    }

    fn evaluate(&self, w: &mut Window, refresh_rules: bool) -> Vec<Alert> {
        let c = &self.cfg;
        let mut out = Vec::new();
        let requests: u64 = w.totals.iter().sum();
        let unauthorized = if requests >= c.min_requests && requests > 0 {
            w.totals[1] as f64 / requests as f64
        } else {
            0.0
        };
        let sev = if unauthorized > c.unauthorized_critical {
            Some(Severity::Critical)
        } else if unauthorized > c.unauthorized_warning {
            Some(Severity::Warning)
        } else {
            None
        };
        transition(w, &mut out, Rule::UnauthorizedRate, 0, sev, unauthorized);
        if refresh_rules {
            let refreshes = w.refresh_ok + w.refresh_failed;
            let success = if refreshes >= c.min_refreshes && refreshes > 0 {
                w.refresh_ok as f64 / refreshes as f64
            } else {
                1.0
            };
            let sev = (success < c.refresh_success_min).then_some(Severity::Warning);
            transition(w, &mut out, Rule::RefreshSuccessRate, 1, sev, success);
            let slowest = w
                .buckets
                .iter()
                .map(|b| b.refresh_latency_max)
                .max()
                .unwrap_or_default();
            let sev = (slowest > c.refresh_latency_max).then_some(Severity::Warning);
            transition(
                w,
                &mut out,
                Rule::RefreshLatency,
                2,
                sev,
                slowest.as_secs_f64(),
            );
            let failures = w.consecutive_refresh_failures;
            let sev = (failures >= c.refresh_failures_max).then_some(Severity::Critical);
            transition(
                w,
                &mut out,
                Rule::ConsecutiveRefreshFailures,
                3,
                sev,
                f64::from(failures),
            );
        }
        out
    }

    /// The share of requests of `class` in the window at `now` (`None` without requests).
    #[must_use]
    pub fn rate(&self, now: Instant, class: Class) -> Option<f64> {
        let c = self.counts(now);
        let total: u64 = c.requests.iter().sum();
        (total > 0).then(|| c.requests[index(class)] as f64 / total as f64)
    }

    /// The counts of the window at `now`.
    #[must_use]
    pub fn counts(&self, now: Instant) -> Counts {
        let current = self.bucket_of(now);
        let mut w = self.lock();
        self.slide(&mut w, current);
        Counts {
            requests: w.totals,
            refresh_ok: w.refresh_ok,
            refresh_failed: w.refresh_failed,
        }
    }
}

fn transition(
    w: &mut Window,
    out: &mut Vec<Alert>,
    rule: Rule,
    slot: usize,
    now: Option<Severity>,
    value: f64,
) {
    if w.firing[slot] != now {
        w.firing[slot] = now;
        out.push(Alert {
            rule,
            severity: now,
            value,
        });
    }
}
