//! Learning a server's real token limits from premature deaths (DESIGN §3.5).
//!
//! A *premature death* is a token rejected while it still claimed validity, at age `a` after an
//! idle gap `g` (time since the previous request). Two kinds of server limit explain them:
//! - a **lifetime cap** (a global policy shorter than `expires_in`): deaths at similar ages whatever
//!   the idle gap. Learned as the smallest such age once two deaths agree within 20 %.
//! - an **idle limit** (a session timeout): deaths only after long quiet periods. A death whose idle
//!   gap is at least half its age counts as idle; the limit is the smallest such gap once two agree
//!   that idleness is the cause.
//!
//! One death proves little (a server restart looks the same), so each limit needs two.

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

/// What has been learned (or pinned): the auth core's [`ServerLimits`], which the
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

/// Infers limits from deaths (pure; see the module docs for the rule).
#[must_use]
pub fn infer(deaths: &[Death]) -> LearnedLimits {
    let (idle, busy): (Vec<&Death>, Vec<&Death>) = deaths
        .iter()
        .partition(|d| d.idle * 2 >= d.age && !d.idle.is_zero());
    LearnedLimits {
        lifetime_cap: agreeing_min(busy.iter().map(|d| d.age)),
        idle_limit: two_or_more_min(idle.iter().map(|d| d.idle)),
    }
}

/// The smallest value that another value agrees with (within 20 %), if any.
fn agreeing_min(values: impl Iterator<Item = Duration>) -> Option<Duration> {
    let mut v: Vec<Duration> = values.collect();
    v.sort();
    v.windows(2)
        .find(|w| w[1].as_secs_f64() <= w[0].as_secs_f64() * 1.2)
        .map(|w| w[0])
}

fn two_or_more_min(values: impl Iterator<Item = Duration>) -> Option<Duration> {
    let v: Vec<Duration> = values.collect();
    if v.len() >= 2 {
        v.into_iter().min()
    } else {
        None
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
    state: Mutex<(Vec<Death>, LearnedLimits)>,
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
            .clone()
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
        s.0.push(death);
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
        let check = |deaths: &[Death], cap: Option<Duration>, idle: Option<Duration>| {
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
        check(&[d(240, 15)], None, None); // one death: could be a restart
        check(&[d(240, 15), d(250, 0)], mins(240), None); // a 4 h cap
        check(&[d(240, 15), d(400, 15)], None, None); // ages disagree: restarts, not a cap
        check(&[d(200, 150), d(90, 60)], None, mins(60)); // deaths after long quiet periods
        check(&[d(200, 150)], None, None);
        check(
            &[d(240, 15), d(250, 15), d(300, 200), d(500, 300)],
            mins(240),
            mins(200),
        );
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
