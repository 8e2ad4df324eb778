//! Time compression: a clock where simulated time runs `scale` times faster than real time.

use std::time::{Duration, SystemTime};

use shiftkey_clock::{Clock, Sleep};

/// Simulated time = start + real elapsed × `scale`; sleeps are divided by `scale`.
///
/// Shared by the emulator and the client in one process, a simulated day at a scale of 1 440 takes
/// a real minute while loopback latency stays far below every simulated timeout. Under tokio's
/// paused time it still works (both clocks then advance only when the runtime is idle).
#[derive(Debug, Clone, Copy)]
pub struct ScaledClock {
    origin: tokio::time::Instant,
    origin_wall: SystemTime,
    scale: f64,
}

impl ScaledClock {
    /// A clock that starts at wall time `start` and runs `scale` times faster than real time.
    ///
    /// A `scale` that is not a finite number ≥ 1 is taken as 1.
    #[must_use]
    pub fn new(start: SystemTime, scale: f64) -> Self {
        let scale = if scale.is_finite() && scale >= 1.0 {
            scale
        } else {
            1.0
        };
        Self {
            origin: tokio::time::Instant::now(),
            origin_wall: start,
            scale,
        }
    }

    /// A clock shared by several processes: simulated time was `start` at the real wall time
    /// `real_origin`, and runs `scale` times faster since.
    ///
    /// Each process that builds one with the same arguments reads the same simulated time (up to
    /// how far their real wall clocks agree: on one machine, exactly), whenever it started. A
    /// `real_origin` in the future counts as now; a `scale` that is not a finite number ≥ 1 is
    /// taken as 1.
    ///
    /// ```
    /// use std::time::{Duration, SystemTime};
    /// use shiftkey_clock::Clock;
    /// use shiftkey_sim::ScaledClock;
    ///
    /// let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    /// # #[allow(clippy::disallowed_methods)]
    /// let origin = SystemTime::now() - Duration::from_secs(10);
    /// // Built ten real seconds after the origin: ten simulated minutes have passed at scale 60.
    /// let clock = ScaledClock::anchored(origin, start, 60.0);
    /// assert!(clock.wall() >= start + Duration::from_secs(600));
    /// ```
    #[must_use]
    pub fn anchored(real_origin: SystemTime, start: SystemTime, scale: f64) -> Self {
        let mut clock = Self::new(start, scale);
        #[allow(
            clippy::disallowed_methods,
            reason = "the real wall clock is what processes share"
        )]
        let since = SystemTime::now()
            .duration_since(real_origin)
            .unwrap_or_default();
        // Move the origin back by the real time already gone; an instant that cannot go back
        // that far (a machine up for less time than that) keeps the simulated offset instead.
        match clock.origin.checked_sub(since) {
            Some(origin) => clock.origin = origin,
            None => clock.origin_wall += since.mul_f64(clock.scale),
        }
        clock
    }

    /// The compression factor.
    #[must_use]
    pub fn scale(&self) -> f64 {
        self.scale
    }

    fn elapsed(&self) -> Duration {
        tokio::time::Instant::now()
            .saturating_duration_since(self.origin)
            .mul_f64(self.scale)
    }
}

impl Clock for ScaledClock {
    fn now(&self) -> tokio::time::Instant {
        self.origin + self.elapsed()
    }

    fn wall(&self) -> SystemTime {
        self.origin_wall + self.elapsed()
    }

    fn sleep(&self, duration: Duration) -> Sleep {
        Box::pin(tokio::time::sleep(duration.div_f64(self.scale)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_simulated_day_passes_in_a_real_minute_at_scale_1440() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let clock = ScaledClock::new(start, 1440.0);
        let t0 = clock.now();
        tokio::time::sleep(Duration::from_secs(60)).await; // one real (tokio) minute
        assert_eq!(clock.now() - t0, Duration::from_secs(86_400));
        assert_eq!(clock.wall(), start + Duration::from_secs(86_400));
        let before = tokio::time::Instant::now();
        clock.sleep(Duration::from_secs(3600)).await; // a simulated hour
        assert_eq!(
            tokio::time::Instant::now() - before,
            Duration::from_millis(2500)
        );
        assert_eq!(ScaledClock::new(start, f64::NAN).scale(), 1.0);
    }

    #[tokio::test(start_paused = true)]
    async fn anchored_clocks_built_at_different_times_agree() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        #[allow(
            clippy::disallowed_methods,
            reason = "the anchor is the real wall clock"
        )]
        let origin = SystemTime::now() - Duration::from_secs(30);
        let first = ScaledClock::anchored(origin, start, 100.0);
        // Thirty real seconds before: 3 000 simulated seconds have passed (and a little more).
        let lag = first.wall().duration_since(start).unwrap();
        assert!(lag >= Duration::from_secs(3000), "{lag:?}");
        assert!(lag < Duration::from_secs(3000 + 600), "{lag:?}");
        // A second process built later (the wall clock moved on by 2 s) reads the same time as
        // the first one, which its paused monotonic clock advanced by the same 2 s.
        let second_origin = origin - Duration::from_secs(2);
        tokio::time::advance(Duration::from_secs(2)).await;
        let second = ScaledClock::anchored(second_origin, start, 100.0);
        let (a, b) = (first.wall(), second.wall());
        let gap = a.duration_since(b).unwrap_or_else(|e| e.duration());
        assert!(gap < Duration::from_secs(60), "{a:?} vs {b:?}");
        // A real origin in the future counts as now.
        #[allow(
            clippy::disallowed_methods,
            reason = "the anchor is the real wall clock"
        )]
        let future = SystemTime::now() + Duration::from_secs(3600);
        assert_eq!(ScaledClock::anchored(future, start, 100.0).wall(), start);
    }
}
