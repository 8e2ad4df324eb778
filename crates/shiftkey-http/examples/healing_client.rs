//! A reqwest client whose requests carry a fresh token and heal a rejection on their own,
//! against the emulator's gateway: the server restarts (every token dies), and the caller never
//! sees the 401.
//!
//! Run: `cargo run -p shiftkey-http --example healing_client` (offline: the emulator runs on
//! loopback inside the example).

#![allow(clippy::print_stdout, reason = "an example shows what happens")]

use std::sync::Arc;

use shiftkey_auth::strategies::{ClientAuth, OAuthClient, ServiceAccount};
use shiftkey_auth::{TokenManager, TokioClock};
use shiftkey_http::AuthMiddleware;
use shiftkey_sim::{Sim, SimConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let sim = Sim::start(SimConfig::default(), Arc::new(TokioClock::new())).await?;
    let http = reqwest::Client::new();
    let oauth = OAuthClient::new(
        http.clone(),
        format!("{}/oauth/token", sim.url()).parse()?,
        "shiftkey",
        ClientAuth::SecretBasic("shiftkey-secret".into()),
    );
    let manager = TokenManager::builder(ServiceAccount::new(oauth)).build()?;
    let auth = AuthMiddleware::builder(manager).build();
    let client = reqwest_middleware::ClientBuilder::new(http)
        .with(auth.clone())
        .build();
    let url = format!(
        "{}/tc/RestServices/Core-2007-01-Session/getTCSessionInfo",
        sim.url()
    );
    let envelope = r#"{"header": {"state": {}, "policy": {}}, "body": {}}"#;
    for call in 1..=3 {
        if call == 3 {
            println!("the server restarts: every token it issued is dead");
            sim.restart();
        }
        let answer = client
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(envelope)
            .send()
            .await?;
        println!("call {call}: {}", answer.status());
        if !answer.status().is_success() {
            return Err(format!("call {call} failed: {}", answer.status()).into());
        }
    }
    let stats = auth.stats();
    println!(
        "requests {}, rejections healed {}, surfaced {}",
        stats.requests, stats.rejections_healed, stats.rejections_surfaced
    );
    if stats.rejections_healed != 1 || stats.rejections_surfaced != 0 {
        return Err("expected the restart's rejection to be healed, once".into());
    }
    Ok(())
}
