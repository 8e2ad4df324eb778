//! Time compression: a clock where simulated time runs `scale` times faster than real time.

use std::time::{Duration, SystemTime};

use shiftkey_auth::{Clock, Sleep};

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
}
