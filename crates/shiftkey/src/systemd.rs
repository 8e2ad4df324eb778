//! systemd's readiness and watchdog protocol (`Type=notify`, `WatchdogSec=`): `READY=1` once
//! the service is up, `WATCHDOG=1` while it is alive. Outside systemd (no `NOTIFY_SOCKET`)
//! nothing is sent. The only module that knows about it; on other platforms every call is a
//! no-op, so a Windows port touches only this file.

use std::time::Duration;

/// Tells the service manager the service is up.
pub(crate) fn ready() {
    #[cfg(unix)]
    if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %e, "cannot tell systemd the service is ready");
    }
}

/// Tells the service manager the service is stopping.
pub(crate) fn stopping() {
    #[cfg(unix)]
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
}

/// One watchdog ping.
pub(crate) fn alive() {
    #[cfg(unix)]
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
}

/// How often to ping when the service manager asked for a watchdog (`WatchdogSec=`): half its
/// timeout, as sd_watchdog_enabled(3) advises; `None` without one. As that page says,
/// `WATCHDOG_USEC` counts for this process unless `WATCHDOG_PID` names another one.
pub(crate) fn watchdog_every() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    let ours = std::env::var("WATCHDOG_PID")
        .ok()
        .is_none_or(|pid| pid.trim().parse::<u32>().ok() == Some(std::process::id()));
    // Never busier than every 100 ms, whatever a misconfigured WatchdogSec says.
    (ours && usec > 0).then(|| (Duration::from_micros(usec) / 2).max(Duration::from_millis(100)))
}
