//! The refresh timing law (design §3.2, `docs/design.md`) as pure functions and a pure planner.
//!
//! Nothing here reads a clock or draws randomness on its own: instants and random draws come in as
//! arguments (the [`Planner`] owns a seeded RNG), so every decision is reproducible and the
//! property tests check the very code the [`TokenManager`](crate::TokenManager) runs.
//!
//! For a token of lifetime `L` received at `t0`:
//! - `soft = min(clamp(0.20 L, 60 s, 2 h), 0.5 L)`; the background refresh starts at
//!   `t0 + L - soft - jitter`, `jitter` uniform in `[0, 0.10 soft)`;
//! - `hard = min(clamp(0.05 L, 10 s, 5 min), 0.25 L)`; past `t0 + L - hard` the token is not served;
//! - proactive refreshes start at least `min_interval = min(60 s, L / 2)` apart;
//! - a failed refresh backs off: base 1 s, factor 2, full jitter, cap 60 s, `Retry-After`
//!   honoured up to 1 h; a permanent error stops the planner.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use crate::{AuthError, ConfigError};

/// Every number of the timing law, with design §3.2's defaults.
///
/// Build one with `RefreshConfig { seed: Some(1), ..RefreshConfig::default() }`; the
/// [`TokenManager`](crate::TokenManager) calls [`RefreshConfig::validate`] before using it.
#[derive(Debug, Clone, PartialEq)]
pub struct RefreshConfig {
    /// Soft margin as a fraction of the lifetime (0.20).
    pub soft_fraction: f64,
    /// Lower clamp of the soft margin (60 s).
    pub soft_min: Duration,
    /// Upper clamp of the soft margin (2 h).
    pub soft_max: Duration,
    /// The soft margin never exceeds this fraction of the lifetime (0.5).
    pub soft_cap_fraction: f64,
    /// Jitter is drawn from `[0, jitter_fraction * soft)` (0.10).
    pub jitter_fraction: f64,
    /// Hard margin as a fraction of the lifetime (0.05).
    pub hard_fraction: f64,
    /// Lower clamp of the hard margin (10 s).
    pub hard_min: Duration,
    /// Upper clamp of the hard margin (5 min).
    pub hard_max: Duration,
    /// The hard margin never exceeds this fraction of the lifetime (0.25).
    pub hard_cap_fraction: f64,
    /// At most one proactive refresh per `min(min_interval, min_interval_fraction * L)` (60 s).
    pub min_interval: Duration,
    /// See `min_interval` (0.5).
    pub min_interval_fraction: f64,
    /// First backoff step after a failed refresh (1 s).
    pub backoff_base: Duration,
    /// Backoff growth factor (2).
    pub backoff_factor: f64,
    /// Backoff never exceeds this (60 s).
    pub backoff_cap: Duration,
    /// A server's `Retry-After` is honoured up to this (1 h).
    pub retry_after_max: Duration,
    /// How long a caller waits for a refresh once the token is past its hard margin (30 s).
    pub wait_timeout: Duration,
    /// How long one `acquire` may take before it counts as a transient timeout (30 s).
    pub acquire_timeout: Duration,
    /// Seed of the jitter RNG; `None` seeds from the OS. Same seed, same schedule.
    pub seed: Option<u64>,
}

impl Default for RefreshConfig {
    fn default() -> Self {
        Self {
            soft_fraction: 0.20,
            soft_min: Duration::from_secs(60),
            soft_max: Duration::from_secs(2 * 3600),
            soft_cap_fraction: 0.5,
            jitter_fraction: 0.10,
            hard_fraction: 0.05,
            hard_min: Duration::from_secs(10),
            hard_max: Duration::from_secs(5 * 60),
            hard_cap_fraction: 0.25,
            min_interval: Duration::from_secs(60),
            min_interval_fraction: 0.5,
            backoff_base: Duration::from_secs(1),
            backoff_factor: 2.0,
            backoff_cap: Duration::from_secs(60),
            retry_after_max: Duration::from_secs(3600),
            wait_timeout: Duration::from_secs(30),
            acquire_timeout: Duration::from_secs(30),
            seed: None,
        }
    }
}

fn fraction(field: &'static str, v: f64, lo_open: f64, hi_open: f64) -> Result<(), ConfigError> {
    if v.is_finite() && v > lo_open && v < hi_open {
        Ok(())
    } else {
        Err(ConfigError::new(
            field,
            format!("must be between {lo_open} and {hi_open} (exclusive), got {v}"),
        ))
    }
}

fn positive(field: &'static str, d: Duration) -> Result<(), ConfigError> {
    if d.is_zero() {
        Err(ConfigError::new(field, "must be greater than zero"))
    } else {
        Ok(())
    }
}

impl RefreshConfig {
    /// Checks that the numbers can work together: every margin positive and below the lifetime,
    /// the hard margin below the soft one for every lifetime, intervals non-zero.
    ///
    /// The hard margin is below the soft margin for *every* lifetime exactly when each hard
    /// parameter is below its soft counterpart, which is what this checks.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fraction("soft_fraction", self.soft_fraction, 0.0, 1.0)?;
        fraction("soft_cap_fraction", self.soft_cap_fraction, 0.0, 1.0)?;
        fraction("hard_fraction", self.hard_fraction, 0.0, 1.0)?;
        fraction("hard_cap_fraction", self.hard_cap_fraction, 0.0, 1.0)?;
        fraction(
            "min_interval_fraction",
            self.min_interval_fraction,
            0.0,
            1.0,
        )?;
        if !(self.jitter_fraction.is_finite() && (0.0..1.0).contains(&self.jitter_fraction)) {
            return Err(ConfigError::new(
                "jitter_fraction",
                format!("must be in [0, 1), got {}", self.jitter_fraction),
            ));
        }
        for (field, d) in [
            ("soft_min", self.soft_min),
            ("hard_min", self.hard_min),
            ("min_interval", self.min_interval),
            ("backoff_base", self.backoff_base),
            ("backoff_cap", self.backoff_cap),
            ("wait_timeout", self.wait_timeout),
            ("acquire_timeout", self.acquire_timeout),
        ] {
            positive(field, d)?;
        }
        if self.soft_max < self.soft_min {
            return Err(ConfigError::new("soft_max", "must not be below soft_min"));
        }
        if self.hard_max < self.hard_min {
            return Err(ConfigError::new("hard_max", "must not be below hard_min"));
        }
        let pairs = [
            (
                "hard_fraction",
                self.hard_fraction < self.soft_fraction,
                "soft_fraction",
            ),
            (
                "hard_cap_fraction",
                self.hard_cap_fraction < self.soft_cap_fraction,
                "soft_cap_fraction",
            ),
            ("hard_min", self.hard_min < self.soft_min, "soft_min"),
            ("hard_max", self.hard_max < self.soft_max, "soft_max"),
        ];
        for (field, ok, other) in pairs {
            if !ok {
                return Err(ConfigError::new(
                    field,
                    format!("must be below `{other}` so the hard margin stays inside the soft one"),
                ));
            }
        }
        if !(self.backoff_factor.is_finite() && self.backoff_factor >= 1.0) {
            return Err(ConfigError::new(
                "backoff_factor",
                format!("must be at least 1, got {}", self.backoff_factor),
            ));
        }
        if self.backoff_cap < self.backoff_base {
            return Err(ConfigError::new(
                "backoff_cap",
                "must not be below backoff_base",
            ));
        }
        Ok(())
    }
}

/// The margins of one lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Margins {
    /// Refresh in the background this long before expiry (before jitter).
    pub soft: Duration,
    /// Stop serving the token this long before expiry.
    pub hard: Duration,
    /// Proactive refreshes start at least this far apart.
    pub min_interval: Duration,
}

fn clamp_secs(x: f64, lo: Duration, hi: Duration) -> f64 {
    x.max(lo.as_secs_f64()).min(hi.as_secs_f64())
}

/// The margins for a token of `lifetime` (design §3.2). Zero lifetime gives zero margins.
#[must_use]
pub fn margins(cfg: &RefreshConfig, lifetime: Duration) -> Margins {
    let l = lifetime.as_secs_f64();
    let soft = clamp_secs(cfg.soft_fraction * l, cfg.soft_min, cfg.soft_max)
        .min(cfg.soft_cap_fraction * l);
    let hard = clamp_secs(cfg.hard_fraction * l, cfg.hard_min, cfg.hard_max)
        .min(cfg.hard_cap_fraction * l);
    let interval = cfg
        .min_interval
        .as_secs_f64()
        .min(cfg.min_interval_fraction * l);
    Margins {
        soft: Duration::from_secs_f64(soft),
        hard: Duration::from_secs_f64(hard),
        min_interval: Duration::from_secs_f64(interval),
    }
}

/// When to refresh and when to stop serving one token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Start the background refresh at this instant (soft margin minus jitter).
    pub refresh_at: Instant,
    /// Stop serving the token at this instant (hard margin).
    pub hard_at: Instant,
    /// The token's expiry.
    pub expires_at: Instant,
    /// The margins this schedule came from.
    pub margins: Margins,
}

/// The schedule of a token of `lifetime` issued at `issued_at`, for a jitter `draw` in `[0, 1)`.
#[must_use]
pub fn schedule(
    cfg: &RefreshConfig,
    issued_at: Instant,
    lifetime: Duration,
    draw: f64,
) -> Schedule {
    let m = margins(cfg, lifetime);
    let draw = if draw.is_finite() {
        draw.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let jitter = m.soft.mul_f64(cfg.jitter_fraction * draw);
    let after = |d: Duration| crate::token::instant_after(issued_at, d);
    let expires_at = after(lifetime);
    Schedule {
        refresh_at: after(lifetime.saturating_sub(m.soft.saturating_add(jitter))),
        hard_at: after(lifetime.saturating_sub(m.hard)),
        expires_at,
        margins: m,
    }
}

/// The delay before retry number `failures` (1 for the first retry) with full jitter, or the
/// server's `Retry-After` when that is longer (clamped to `retry_after_max`).
///
/// The jittered backoff part never exceeds `backoff_cap`.
#[must_use]
pub fn backoff_delay(
    cfg: &RefreshConfig,
    failures: u32,
    draw: f64,
    retry_after: Option<Duration>,
) -> Duration {
    // The workspace's one backoff (shiftkey-policy), with this config's numbers.
    let backoff = shiftkey_policy::Backoff {
        base: cfg.backoff_base,
        factor: cfg.backoff_factor,
        cap: cfg.backoff_cap,
        max_attempts: u32::MAX,
        jitter: shiftkey_policy::Jitter::Full,
    }
    .delay(failures, Duration::ZERO, draw);
    match retry_after {
        Some(ra) => backoff.max(ra.min(cfg.retry_after_max)),
        None => backoff,
    }
}

/// Whether a token may be served at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Before the refresh point.
    Fresh,
    /// Past the refresh point but before the hard margin: serve it, a refresh is due.
    Aging,
    /// Past the hard margin: do not serve; wait for a refresh.
    Stale,
}

/// Where `now` falls in `schedule`.
#[must_use]
pub fn freshness(schedule: &Schedule, now: Instant) -> Freshness {
    if now < schedule.refresh_at {
        Freshness::Fresh
    } else if now < schedule.hard_at {
        Freshness::Aging
    } else {
        Freshness::Stale
    }
}

/// The refresher's state machine: when the next attempt starts, given what happened so far.
///
/// One planner per credential, owned by the manager's refresher task. It never sleeps or calls
/// anything: the caller asks [`Planner::next_attempt`], waits until then, runs the attempt and
/// reports it with [`Planner::on_success`] or [`Planner::on_failure`].
#[derive(Debug)]
pub struct Planner {
    cfg: RefreshConfig,
    rng: StdRng,
    current: Option<Schedule>,
    last_start: Option<Instant>,
    last_end: Option<Instant>,
    failures: u32,
    retry_after: Option<Duration>,
    backoff_until: Option<Instant>,
    halted: bool,
    reactive: bool,
}

impl Planner {
    /// A planner with no token yet: its first attempt is due at once.
    pub fn new(cfg: RefreshConfig) -> Result<Self, ConfigError> {
        cfg.validate()?;
        let rng = match cfg.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_entropy(),
        };
        Ok(Self {
            cfg,
            rng,
            current: None,
            last_start: None,
            last_end: None,
            failures: 0,
            retry_after: None,
            backoff_until: None,
            halted: false,
            reactive: false,
        })
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &RefreshConfig {
        &self.cfg
    }

    /// The current token's schedule, if it has one that is still servable or refreshable.
    #[must_use]
    pub fn current(&self) -> Option<&Schedule> {
        self.current.as_ref()
    }

    /// Consecutive failed attempts since the last success.
    #[must_use]
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Whether a permanent error stopped the planner.
    #[must_use]
    pub fn halted(&self) -> bool {
        self.halted
    }

    /// When the next attempt should start, or `None` when the planner is halted.
    ///
    /// - With a servable token: its refresh point, but never sooner than `min_interval` after the
    ///   previous attempt started (unless a reactive refresh was asked for) and never later than
    ///   its hard margin; in both cases not before a backoff ends.
    /// - Without one (none yet, invalidated, or past the hard margin): as soon as the backoff allows.
    #[must_use]
    pub fn next_attempt(&self, now: Instant) -> Option<Instant> {
        if self.halted {
            return None;
        }
        let servable = self.current.filter(|s| now < s.hard_at);
        let mut at = match servable {
            Some(s) if !self.reactive => {
                let not_before = self
                    .last_start
                    .map_or(s.refresh_at, |t| t + s.margins.min_interval);
                // min_interval never holds a retry past the hard margin: from there on no token is
                // servable, callers are waiting, and only the backoff paces attempts.
                s.refresh_at.max(not_before).min(s.hard_at)
            }
            _ => now,
        };
        if let Some(b) = self.backoff_until {
            at = at.max(b);
        }
        Some(at)
    }

    /// Records that an attempt starts at `now`.
    pub fn on_start(&mut self, now: Instant) {
        self.last_start = Some(now);
    }

    /// Records a successful attempt; `issued_at` and `lifetime` describe the new token.
    /// Returns its schedule.
    pub fn on_success(&mut self, now: Instant, issued_at: Instant, lifetime: Duration) -> Schedule {
        let draw = self.rng.r#gen::<f64>();
        let s = schedule(&self.cfg, issued_at, lifetime, draw);
        self.current = Some(s);
        self.last_end = Some(now);
        self.failures = 0;
        self.retry_after = None;
        self.backoff_until = None;
        self.halted = false;
        self.reactive = false;
        s
    }

    /// Replaces the current token's schedule (a lifetime cap was learned), keeping the failure
    /// state. Returns the new schedule.
    pub fn reschedule(&mut self, issued_at: Instant, lifetime: Duration) -> Schedule {
        let draw = self.rng.r#gen::<f64>();
        let s = schedule(&self.cfg, issued_at, lifetime, draw);
        self.current = Some(s);
        s
    }

    /// Records a failed attempt at `now`. A permanent error halts the planner; a transient one
    /// schedules the next attempt after a backoff. Returns the backoff (zero when halted).
    pub fn on_failure(&mut self, now: Instant, error: &AuthError) -> Duration {
        self.last_end = Some(now);
        if error.is_permanent() {
            self.halted = true;
            self.backoff_until = None;
            return Duration::ZERO;
        }
        self.failures = self.failures.saturating_add(1);
        self.retry_after = error.retry_after();
        let draw = self.rng.r#gen::<f64>();
        let delay = backoff_delay(&self.cfg, self.failures, draw, self.retry_after);
        self.backoff_until = Some(now + delay);
        delay
    }

    /// The current token was rejected by a server: forget it and refresh at once (bypassing
    /// `min_interval`, design §3.3). Also un-halts a planner an operator asked to retry.
    pub fn on_invalidated(&mut self) {
        self.current = None;
        self.reactive = true;
        self.halted = false;
    }

    /// An operator asked for a refresh now: like [`Planner::on_invalidated`] but the current
    /// token stays servable meanwhile, and any backoff is dropped.
    pub fn on_forced(&mut self) {
        self.reactive = true;
        self.halted = false;
        self.backoff_until = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: u64 = 3600;

    fn secs(d: Duration) -> f64 {
        d.as_secs_f64()
    }

    #[test]
    fn eight_hour_token_refreshes_between_6_24_and_6_4_hours() {
        let cfg = RefreshConfig::default();
        let t0 = Instant::now();
        for draw in [0.0, 0.5, 0.999_999] {
            let s = schedule(&cfg, t0, Duration::from_secs(8 * H), draw);
            let at = secs(s.refresh_at - t0) / 3600.0;
            assert!((6.24..=6.4).contains(&at), "draw {draw}: {at} h");
        }
        let m = margins(&cfg, Duration::from_secs(8 * H));
        assert_eq!(m.soft, Duration::from_secs(5760));
        assert_eq!(m.hard, Duration::from_secs(300));
        assert_eq!(m.min_interval, Duration::from_secs(60));
    }

    #[test]
    fn four_second_token_margins() {
        let m = margins(&RefreshConfig::default(), Duration::from_secs(4));
        assert_eq!(
            (m.soft, m.hard, m.min_interval),
            (
                Duration::from_secs(2),
                Duration::from_secs(1),
                Duration::from_secs(2)
            )
        );
    }

    #[test]
    fn validate_names_the_bad_field() {
        let check = |f: fn(&mut RefreshConfig), field: &str| {
            let mut c = RefreshConfig::default();
            f(&mut c);
            let err = c.validate().expect_err(field);
            assert_eq!(err.field, field, "{err}");
        };
        check(|c| c.min_interval = Duration::ZERO, "min_interval");
        check(|c| c.soft_fraction = 1.5, "soft_fraction");
        check(|c| c.hard_fraction = 0.3, "hard_fraction");
        check(|c| c.hard_min = Duration::from_secs(120), "hard_min");
        check(|c| c.soft_cap_fraction = f64::NAN, "soft_cap_fraction");
        check(|c| c.backoff_cap = Duration::from_millis(10), "backoff_cap");
        check(|c| c.backoff_factor = 0.5, "backoff_factor");
        check(|c| c.jitter_fraction = 1.0, "jitter_fraction");
        assert_eq!(RefreshConfig::default().validate(), Ok(()));
    }

    #[test]
    fn retry_after_wins_over_backoff_up_to_its_bound() {
        let cfg = RefreshConfig::default();
        assert_eq!(
            backoff_delay(&cfg, 1, 0.5, Some(Duration::from_secs(30))),
            Duration::from_secs(30)
        );
        assert_eq!(
            backoff_delay(&cfg, 1, 0.5, Some(Duration::from_secs(99 * H))),
            Duration::from_secs(H)
        );
        assert_eq!(backoff_delay(&cfg, 30, 1.0, None), Duration::from_secs(60));
        assert_eq!(backoff_delay(&cfg, 2, 0.5, None), Duration::from_secs(1));
    }

    #[test]
    fn permanent_error_halts_and_invalidation_resumes() {
        let mut p = Planner::new(RefreshConfig {
            seed: Some(1),
            ..RefreshConfig::default()
        })
        .unwrap();
        let now = Instant::now();
        assert_eq!(p.next_attempt(now), Some(now));
        p.on_start(now);
        p.on_failure(
            now,
            &AuthError::permanent(crate::PermanentKind::InvalidGrant, "x"),
        );
        assert_eq!(p.next_attempt(now), None);
        p.on_invalidated();
        assert_eq!(p.next_attempt(now), Some(now));
    }
}
