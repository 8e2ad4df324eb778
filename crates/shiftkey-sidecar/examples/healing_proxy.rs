//! A healing proxy in front of the emulator's gateway, used the way an unchanged script uses
//! it: the script sends the token it fetched this morning; the proxy replaces it, and when the
//! server restarts (every token dies) the script still sees no 401.
//!
//! Run: `cargo run -p shiftkey-sidecar --example healing_proxy` (offline: the emulator and the
//! proxy run on loopback inside the example).

#![allow(clippy::print_stdout, reason = "an example shows what happens")]

use std::sync::Arc;

use shiftkey_auth::strategies::{ClientAuth, OAuthClient, ServiceAccount};
use shiftkey_auth::{TokenManager, TokioClock};
use shiftkey_http::AuthMiddleware;
use shiftkey_sidecar::{Proxy, ProxyConfig, serve};
use shiftkey_sim::{Sim, SimConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let sim = Sim::start(SimConfig::default(), Arc::new(TokioClock::new())).await?;
    let oauth = OAuthClient::new(
        reqwest::Client::new(),
        format!("{}/oauth/token", sim.url()).parse()?,
        "shiftkey",
        ClientAuth::SecretBasic("shiftkey-secret".into()),
    );
    let manager = TokenManager::builder(ServiceAccount::new(oauth)).build()?;
    // No redirects: a 3xx goes back to the script, and the credential never follows it.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let proxy = Proxy::new(
        ProxyConfig::new("gateway", sim.url().parse()?),
        http,
        AuthMiddleware::builder(manager).build(),
    )?;
    // Only this user's processes may spend the credential; a browser's page cannot reach it.
    let gate = serve::Gate::users(serve::Users::this_user(), proxy.refusals().clone());
    let router = serve::with_host_check_only(
        Arc::clone(&proxy).router(),
        serve::Hosts::loopback_and(&[]),
        gate.refusals.clone(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(serve::serve_tcp(
        listener,
        router,
        serve::ServeLimits::default(),
        gate,
    ));

    // The script: its base URL points at the proxy, and it still sends its stale token.
    let script = reqwest::Client::new();
    let url = format!("http://{addr}/tc/RestServices/Core-2007-01-Session/getTCSessionInfo");
    for call in 1..=3 {
        if call == 3 {
            println!("the server restarts: every token it issued is dead");
            sim.restart();
        }
        let answer = script
            .post(&url)
            .header("Authorization", "Bearer the-token-from-this-morning")
            .header("Content-Type", "application/json")
            .body(r#"{"header": {"state": {}, "policy": {}}, "body": {}}"#)
            .send()
            .await?;
        println!("script call {call}: {}", answer.status());
        if !answer.status().is_success() {
            return Err(format!("call {call}: {}", answer.status()).into());
        }
    }
    let stats = proxy.stats();
    println!(
        "proxy: {} requests, {} rejections healed, {} surfaced",
        stats.requests, stats.healed, stats.surfaced
    );
    if stats.healed != 1 || stats.surfaced != 0 {
        return Err("expected the restart's rejection healed, once".into());
    }
    Ok(())
}
