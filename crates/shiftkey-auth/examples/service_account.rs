//! A service account (OAuth client credentials) against the emulator's token endpoint: one token
//! for any number of tasks, and one refresh for all of them when the server kills it early.
//!
//! Run: `cargo run -p shiftkey-auth --example service_account` (offline: the emulator runs on
//! loopback inside the example).

#![allow(clippy::print_stdout, reason = "an example shows what happens")]

use std::sync::Arc;

use shiftkey_auth::strategies::{ClientAuth, OAuthClient, ServiceAccount};
use shiftkey_auth::{TokenManager, TokioClock};
use shiftkey_sim::{Sim, SimConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let sim = Sim::start(SimConfig::default(), Arc::new(TokioClock::new())).await?;
    let client = OAuthClient::new(
        shiftkey_auth::credential_client().build()?,
        format!("{}/oauth/token", sim.url()).parse()?,
        "shiftkey",
        ClientAuth::SecretBasic("shiftkey-secret".into()),
    );
    let manager = TokenManager::builder(ServiceAccount::new(client)).build()?;

    // Ten tasks ask at once: one grant serves them all.
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let m = manager.clone();
            tokio::spawn(async move { m.token().await.map(|t| t.generation()) })
        })
        .collect();
    let mut generations = Vec::new();
    for t in tasks {
        generations.push(t.await??);
    }
    let first = generations[0];
    println!(
        "10 tasks, generations {generations:?}; grants: {}",
        manager.stats().acquires
    );

    // The server says the token died (a 401 somewhere): one refresh, whoever reports it.
    manager.invalidate(first);
    manager.invalidate(first);
    let next = manager.token().await?;
    println!(
        "after two reports of generation {first}: generation {}, grants {}",
        next.generation(),
        manager.stats().acquires
    );
    // Never print the token itself: `Debug` of a token shows no secret.
    if generations.iter().any(|g| *g != first) || next.generation() == first {
        return Err("expected one shared token, then exactly one replacement".into());
    }
    Ok(())
}
