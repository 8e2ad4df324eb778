//! Two sync cycles from the emulator into SQLite: the first reads every plan, the second only
//! what changed since (nothing, here: the emulator's planner is held still).
//!
//! Run: `cargo run -p shiftkey-sync --example one_cycle` (offline: the emulator runs on loopback
//! inside the example; the database goes to a temporary folder).

#![allow(clippy::print_stdout, reason = "an example shows what happens")]

use std::sync::Arc;

use shiftkey_auth::TokioClock;
use shiftkey_shopfloor::{Sink, SqlSink};
use shiftkey_sim::{Sim, SimConfig};
use shiftkey_sync::{Engine, EngineConfig, Stop};
use shiftkey_teamcenter::{SessionConfig, TcClient};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let sim = Sim::start(SimConfig::default(), Arc::new(TokioClock::new())).await?;
    sim.pause_changes(true);
    let tc = TcClient::session(
        reqwest::Client::new(),
        SessionConfig::new(sim.url().parse()?, "mfg_sync", "mfg_sync_pw".into()),
    )?;
    let dir = std::env::temp_dir().join(format!("shiftkey-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let url = format!("sqlite://{}?mode=rwc", dir.join("shopfloor.db").display());
    let sink = Arc::new(SqlSink::connect(&url).await?);
    let engine = Engine::new(tc.clone(), sink.clone(), EngineConfig::default());
    // Call `stop.request()` from a SIGTERM handler: the call in flight is cancelled, a batch
    // being applied finishes.
    let stop = Stop::default();

    let first = engine.cycle(&stop).await?;
    println!(
        "first cycle: read {}, inserted {}, full read: {}",
        first.read, first.inserted, first.reconciled
    );
    let second = engine.cycle(&stop).await?;
    println!(
        "second cycle: read {}, already synced {}, inserted {}",
        second.read, second.already_synced, second.inserted
    );
    println!("watermark: {:?}", sink.watermark().await?);
    let logged_out = tc.end_session().await;
    let _ = std::fs::remove_dir_all(&dir);
    if first.inserted == 0 || second.read != 0 || !logged_out {
        return Err("expected a full first cycle, an empty second one and a logout".into());
    }
    Ok(())
}
