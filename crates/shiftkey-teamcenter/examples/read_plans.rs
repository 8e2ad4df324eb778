//! Reads every manufacturing process plan with its operations from the emulator, the way the
//! sync's first cycle does (saved query, BOM windows, bill of process, current revision), then
//! logs out so the session does not stay on the server's pool.
//!
//! Run: `cargo run -p shiftkey-teamcenter --example read_plans` (offline: the emulator runs on
//! loopback inside the example).

#![allow(clippy::print_stdout, reason = "an example shows what happens")]

use std::sync::Arc;

use shiftkey_auth::TokioClock;
use shiftkey_sim::{Sim, SimConfig};
use shiftkey_teamcenter::{ReadConfig, SessionConfig, TcClient};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let sim = Sim::start(SimConfig::default(), Arc::new(TokioClock::new())).await?;
    // In production the password comes from a secret store, never from the code.
    let cfg = SessionConfig::new(sim.url().parse()?, "mfg_sync", "mfg_sync_pw".into());
    let tc = TcClient::session(reqwest::Client::new(), cfg)?;
    let changes = tc.changed_since(None, &ReadConfig::default()).await?;
    for (plan, operations) in changes.plans.iter().take(5) {
        println!(
            "{}/{} {:?}: {} operations, current: {:?}",
            plan.id,
            plan.revision,
            plan.name,
            operations.len(),
            changes.current.is_current(plan)
        );
    }
    println!(
        "{} plans read; next watermark {:?}; {} partial errors",
        changes.plans.len(),
        changes.high_watermark,
        changes.partial_errors.len()
    );
    let logged_out = tc.end_session().await;
    println!(
        "logged out: {logged_out}; sessions left on the server: {}; windows leaked: {}",
        sim.live_sessions(),
        sim.leaked_windows()
    );
    if changes.plans.is_empty()
        || !logged_out
        || sim.live_sessions() != 0
        || sim.leaked_windows() != 0
    {
        return Err("expected plans, a logout and nothing left open".into());
    }
    Ok(())
}
