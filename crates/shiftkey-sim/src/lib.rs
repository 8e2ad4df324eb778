//! Test support: a Teamcenter JSON REST SOA and OAuth token-server emulator with faults and time
//! compression. Used by tests, benches, xtask and the `demo`/`sim` commands — never by a library
//! crate's normal dependencies.
//!
//! # Overview
//! - [`Sim`]: the emulator on a loopback port: `POST /tc/JsonRestServices/{Library-YYYY-MM-Service}/{operation}`
//!   with `JSESSIONID` sessions that die like the pool manager's (hard timeout, soft idle timeout
//!   only while the pool is above `PROCESS_TARGET`, restarts), the OAuth gateway at
//!   `/tc/RestServices/...` with its token endpoint `/oauth/token`, and seeded faults.
//! - [`SimConfig`]: the scenario (TOML or code; every knob documented in the README).
//! - [`Dataset`]: a deterministic manufacturing data set with Teamcenter's names, and a change stream.
//! - [`ScaledClock`]: simulated time `scale` times faster than real time, shared with the client.
//! - [`Stats`]: what happened (logins, grants, kills by cause, exceptions, requests by operation).
//! - [`HangTarget`]: which requests [`Sim::hang_next`] holds without an answer.
//!
//! # Example
//! ```
//! use std::sync::Arc;
//! use shiftkey_sim::{Sim, SimConfig, ScaledClock};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let clock = Arc::new(ScaledClock::new(std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_795_000_000), 1440.0));
//! let sim = Sim::start(SimConfig::default(), clock).await?;
//! let login = reqwest::Client::new()
//!     .post(format!("{}/tc/JsonRestServices/Core-2011-06-Session/login", sim.url()))
//!     .body(r#"{"header":{"state":{},"policy":{}},"body":{"credentials":{"user":"mfg_sync","password":"mfg_sync_pw","group":"","role":"","locale":"","descrimator":"doc"}}}"#)
//!     .send()
//!     .await?;
//! assert!(login.headers().get("set-cookie").is_some());
//! assert_eq!(sim.stats().logins, 1);
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod clock;
mod config;
mod data;
mod model;
mod server;
mod soa;
pub mod wire;

use std::net::SocketAddr;
use std::sync::{Arc, PoisonError};

pub use clock::ScaledClock;
pub use config::{FaultConfig, OAuthConfig, SessionConfig, SimConfig, TcConfig};
pub use data::{
    DataConfig, Dataset, NULL_UID, Object, Occurrence, OperationTruth, WORK_INSTRUCTION,
    parse_tc_date, tc_date,
};
pub use server::{HangTarget, Stats};
use shiftkey_clock::Clock;

/// A running emulator. Stops when dropped.
#[derive(Debug)]
pub struct Sim {
    inner: Arc<server::Inner>,
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Sim {
    /// Starts the emulator on a free loopback port.
    pub async fn start(cfg: SimConfig, clock: Arc<dyn Clock>) -> std::io::Result<Self> {
        Self::start_on(cfg, clock, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts the emulator on `addr` (loopback addresses only for tests).
    pub async fn start_on(
        cfg: SimConfig,
        clock: Arc<dyn Clock>,
        addr: SocketAddr,
    ) -> std::io::Result<Self> {
        let inner = Arc::new(server::Inner::new(cfg, clock));
        let (addr, task) = server::serve(Arc::clone(&inner), addr).await?;
        Ok(Self { inner, addr, task })
    }

    /// The base URL (`http://127.0.0.1:PORT`).
    #[must_use]
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound address.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Counters so far.
    #[must_use]
    pub fn stats(&self) -> Stats {
        self.inner.stats()
    }

    /// Windows still open in sessions that are still alive: what clients leaked. Windows of a
    /// session that died (timeout, logout, restart) died with it and are not counted.
    #[must_use]
    pub fn leaked_windows(&self) -> usize {
        self.inner.leaked_windows()
    }

    /// Sessions alive now: logged in and neither logged out nor timed out. Each holds a
    /// server process of the pool; a client that logs out what it logs in leaves 0.
    #[must_use]
    pub fn live_sessions(&self) -> usize {
        self.inner.live_sessions()
    }

    /// The next `requests` requests get HTTP 503 (a burst, as `faults.server_error_probability`
    /// starts, but of a chosen length), counted in `faults["server_error"]`.
    pub fn fail_next(&self, requests: u32) {
        self.inner.fail_next(requests);
    }

    /// Restarts the server now: every session and gateway access token dies.
    pub fn restart(&self) {
        self.inner.restart();
    }

    /// The next `requests` requests to `target` hang: each is read in full and never answered,
    /// until the client gives up and drops the connection or the emulator stops (then it gets
    /// HTTP 503). A hung request changes nothing (no login, no grant or rotation, no write) and
    /// is counted in [`Stats::hung`]. Replaces what was still pending for `target`; 0 cancels.
    /// See [`HangTarget`] for which operations each target covers.
    pub fn hang_next(&self, target: HangTarget, requests: u32) {
        self.inner.hang_next(target, requests);
    }

    /// Runs `f` on the data set (the truth a sync is compared with), after applying the changes
    /// due by now.
    pub fn with_data<R>(&self, f: impl FnOnce(&mut Dataset) -> R) -> R {
        let mut d = self
            .inner
            .data
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !self
            .inner
            .changes_paused
            .load(std::sync::atomic::Ordering::Acquire)
        {
            d.advance(self.inner.clock.wall());
        }
        f(&mut d)
    }

    /// Stops (or resumes) the change stream, so a test can compare a sink with a still source.
    /// Changes due while paused are applied on resume.
    pub fn pause_changes(&self, paused: bool) {
        self.inner
            .changes_paused
            .store(paused, std::sync::atomic::Ordering::Release);
    }

    /// The scenario.
    #[must_use]
    pub fn config(&self) -> &SimConfig {
        &self.inner.cfg
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        // Hung requests end first: connections finish their request in flight after the abort.
        self.inner.shutdown();
        self.task.abort();
    }
}
