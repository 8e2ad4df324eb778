//! Learning a server's real token limits from premature deaths (design §3.5, `docs/design.md`).
//!
//! A *premature death* is a token rejected while it still claimed validity, at age `a` after an
//! idle gap `g` (time since the previous request). Two kinds of server limit explain them:
//! - a **lifetime cap** (a global policy shorter than `expires_in`): every token dies at about the
//!   same age, so the replacement of a dead token dies too. Learned when two *consecutive*
//!   generations both died busy (idle gap under half the age) at ages within 20 % of each other.
//! - an **idle limit** (a session timeout): deaths only after long quiet periods. A death whose idle
//!   gap is at least half its age counts as idle; the limit is the smaller of two idle gaps that
//!   agree within 50 %.
//!
//! One death proves little: a server restart looks the same. Restarts kill tokens at random ages
//! and the replacement usually lives on, so over weeks they must not add up to a "cap" — hence
//! the consecutive-generation rule (a soak of 24 restarts in 30 days once taught a cap near zero
//! without it). No cap below [`MIN_CAP`] and no idle limit below [`MIN_IDLE`] is learned.

use std::sync::Mutex;
use std::sync::PoisonError;
use std::time::Duration;

/// One premature death.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Death {
    /// Age of the token when it was rejected.
    pub age: Duration,
    /// Time since the previous request before the rejected one.
    pub idle: Duration,
}

/// What has been learned (or pinned): the auth core's [`ServerLimits`](shiftkey_auth::ServerLimits), which the
/// `TokenManager` persists with the token.
pub use shiftkey_auth::ServerLimits as LearnedLimits;

/// Whether and what to learn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitsConfig {
    /// Learn from premature deaths (default true).
    pub learn: bool,
    /// A lifetime cap set by an operator; wins over anything learned.
    pub pinned_lifetime: Option<Duration>,
    /// An idle limit set by an operator; wins over anything learned.
    pub pinned_idle: Option<Duration>,
    /// Deaths remembered (default 16).
    pub memory: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            learn: true,
            pinned_lifetime: None,
            pinned_idle: None,
            memory: 16,
        }
    }
}

/// No learned lifetime cap is shorter than this (short tokens are first-class; the
/// consecutive-generation rule is what keeps restarts from teaching a cap).
pub const MIN_CAP: Duration = Duration::from_secs(1);

/// No learned idle limit is shorter than this: keepalives run at half the limit, and an idle
/// death after a few seconds of quiet is a restart, not a pool policy.
pub const MIN_IDLE: Duration = Duration::from_secs(30);

fn is_idle(d: &Death) -> bool {
    d.idle * 2 >= d.age && !d.idle.is_zero()
}

fn agree(a: Duration, b: Duration, within: f64) -> bool {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    hi.as_secs_f64() <= lo.as_secs_f64() * (1.0 + within)
}

/// Infers limits from deaths in the order they were recorded, each with the generation of the
/// token that died (pure; see the module docs for the rules).
#[must_use]
pub fn infer(deaths: &[(u64, Death)]) -> LearnedLimits {
    let lifetime_cap = deaths
        .windows(2)
        .filter(|w| w[1].0 == w[0].0 + 1)
        .filter(|w| !is_idle(&w[0].1) && !is_idle(&w[1].1))
        .filter(|w| agree(w[0].1.age, w[1].1.age, 0.2))
        .map(|w| w[0].1.age.min(w[1].1.age))
        .filter(|age| *age >= MIN_CAP)
        .min();
    let idle: Vec<Duration> = deaths
        .iter()
        .map(|(_, d)| d)
        .filter(|d| is_idle(d) && d.idle >= MIN_IDLE)
        .map(|d| d.idle)
        .collect();
    let mut idle_limit = None;
    for (i, a) in idle.iter().enumerate() {
        for b in &idle[i + 1..] {
            if agree(*a, *b, 0.5) {
                let m = (*a).min(*b);
                idle_limit = Some(idle_limit.map_or(m, |x: Duration| x.min(m)));
            }
        }
    }
    LearnedLimits {
        lifetime_cap,
        idle_limit,
    }
}

/// What [`LimitLearner::record`] did with a death.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// This generation's death was already recorded (or is older): ignored.
    Duplicate,
    /// Counted; the limits did not change.
    Counted,
    /// Counted, and the limits changed to these.
    Learned(LearnedLimits),
}

/// Remembers deaths and what they teach. Thread-safe.
///
/// A token dies once, however many requests saw it die: only the first death reported for a
/// generation counts (N concurrent requests rejected with one token are one death, not N).
#[derive(Debug)]
pub struct LimitLearner {
    cfg: LimitsConfig,
    state: Mutex<(Vec<(u64, Death)>, LearnedLimits)>,
    last_generation: std::sync::atomic::AtomicU64,
}

impl LimitLearner {
    /// A learner with nothing learned yet (pinned values apply at once).
    #[must_use]
    pub fn new(cfg: LimitsConfig) -> Self {
        let pinned = LearnedLimits {
            lifetime_cap: cfg.pinned_lifetime,
            idle_limit: cfg.pinned_idle,
        };
        Self {
            cfg,
            state: Mutex::new((Vec::new(), pinned)),
            last_generation: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Starts from limits persisted earlier (the store keeps them with the token).
    #[must_use]
    pub fn with_learned(self, learned: LearnedLimits) -> Self {
        {
            let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            s.1 = self.merge(learned);
        }
        self
    }

    fn merge(&self, learned: LearnedLimits) -> LearnedLimits {
        LearnedLimits {
            lifetime_cap: self.cfg.pinned_lifetime.or(if self.cfg.learn {
                learned.lifetime_cap
            } else {
                None
            }),
            idle_limit: self.cfg.pinned_idle.or(if self.cfg.learn {
                learned.idle_limit
            } else {
                None
            }),
        }
    }

    /// What is known now.
    #[must_use]
    pub fn limits(&self) -> LearnedLimits {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).1
    }

    /// Deaths remembered.
    #[must_use]
    pub fn deaths(&self) -> Vec<Death> {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .iter()
            .map(|(_, d)| *d)
            .collect()
    }

    /// Records the premature death of token `generation`. A generation already recorded (or
    /// older) is ignored.
    pub fn record(&self, generation: u64, death: Death) -> Recorded {
        let previous = self
            .last_generation
            .fetch_max(generation, std::sync::atomic::Ordering::AcqRel);
        if generation <= previous {
            return Recorded::Duplicate;
        }
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.0.push((generation, death));
        let excess = s.0.len().saturating_sub(self.cfg.memory.max(2));
        s.0.drain(..excess);
        // Keep what was learned before unless the new evidence gives a tighter answer.
        let inferred = infer(&s.0);
        let known = s.1;
        let tighter = |new: Option<Duration>, old: Option<Duration>| match (new, old) {
            (Some(n), Some(o)) => Some(n.min(o)),
            (n, o) => n.or(o),
        };
        let next = self.merge(LearnedLimits {
            lifetime_cap: tighter(inferred.lifetime_cap, known.lifetime_cap),
            idle_limit: tighter(inferred.idle_limit, known.idle_limit),
        });
        if next == known {
            return Recorded::Counted;
        }
        s.1 = next;
        Recorded::Learned(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(age_min: u64, idle_min: u64) -> Death {
        Death {
            age: Duration::from_secs(age_min * 60),
            idle: Duration::from_secs(idle_min * 60),
        }
    }

    fn mins(m: u64) -> Option<Duration> {
        Some(Duration::from_secs(m * 60))
    }

    #[test]
    fn inference_table() {
        let check = |deaths: &[(u64, Death)], cap: Option<Duration>, idle: Option<Duration>| {
            assert_eq!(
                infer(deaths),
                LearnedLimits {
                    lifetime_cap: cap,
                    idle_limit: idle
                },
                "{deaths:?}"
            );
        };
        check(&[], None, None);
        check(&[(1, d(240, 15))], None, None); // one death: could be a restart
        check(&[(1, d(240, 15)), (2, d(250, 0))], mins(240), None); // a 4 h cap
        check(&[(1, d(240, 15)), (2, d(400, 15))], None, None); // ages disagree
        // Similar ages, but a proactive refresh lived between them: restarts, not a cap.
        check(&[(3, d(240, 15)), (7, d(250, 15))], None, None);
        check(&[(1, d(40, 25)), (4, d(30, 21))], None, mins(21)); // deaths after quiet periods
        check(&[(1, d(200, 150)), (4, d(90, 60))], None, None); // quiet periods disagree
        check(&[(1, d(200, 150))], None, None);
        check(
            &[
                (1, d(240, 15)),
                (2, d(250, 15)),
                (5, d(300, 200)),
                (9, d(500, 260)),
            ],
            mins(240),
            mins(200),
        );
        // No idle limit under 30 s, however well the gaps agree; short caps are fine.
        let quiet = |s: u64| Death {
            age: Duration::from_secs(s),
            idle: Duration::from_secs(s),
        };
        check(&[(1, quiet(20)), (3, quiet(21))], None, None);
        let busy = |s: u64| Death {
            age: Duration::from_secs(s),
            idle: Duration::ZERO,
        };
        check(
            &[(1, busy(12)), (2, busy(12))],
            Some(Duration::from_secs(12)),
            None,
        );
    }

    #[test]
    fn random_restarts_never_teach_a_cap() {
        // A restart every 30 h kills the current token at whatever age it has; the replacement
        // lives on to its proactive refresh (the generation moves on by several in between).
        let learner = LimitLearner::new(LimitsConfig::default());
        let mut generation = 1;
        for i in 0..24u64 {
            let age = Duration::from_secs(600 + (i * 7_919) % 22_000);
            learner.record(
                generation,
                Death {
                    age,
                    idle: Duration::from_secs(300),
                },
            );
            generation += 5;
        }
        assert_eq!(learner.limits(), LearnedLimits::default());
    }

    #[test]
    fn pinned_values_win_and_learning_can_be_off() {
        let l = LimitLearner::new(LimitsConfig {
            pinned_lifetime: mins(60),
            ..LimitsConfig::default()
        });
        assert_eq!(l.limits().lifetime_cap, mins(60));
        assert_eq!(l.record(1, d(240, 1)), Recorded::Counted);
        assert_eq!(
            l.record(2, d(241, 1)),
            Recorded::Counted,
            "pinned lifetime wins"
        );
        let off = LimitLearner::new(LimitsConfig {
            learn: false,
            ..LimitsConfig::default()
        });
        off.record(1, d(240, 1));
        assert_eq!(off.record(2, d(241, 1)), Recorded::Counted);
        assert_eq!(off.limits(), LearnedLimits::default());
        let on = LimitLearner::new(LimitsConfig::default());
        assert_eq!(on.record(1, d(240, 1)), Recorded::Counted);
        assert_eq!(
            on.record(1, d(240, 1)),
            Recorded::Duplicate,
            "one token dies once, however many requests saw it"
        );
        assert_eq!(on.deaths().len(), 1);
        let Recorded::Learned(l) = on.record(2, d(241, 1)) else {
            panic!("nothing learned")
        };
        assert_eq!(l.lifetime_cap, mins(240));
    }
}
