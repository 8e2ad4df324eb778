//! shiftkey as a library, as one client of the emulator's OAuth gateway, for `cargo xtask peers`
//! (the Python peers are `benches/peers/peer.py`; same arguments, same JSON).
//!
//! Usage: `peer TOKEN_URL GATEWAY_URL CLIENT_ID CLIENT_SECRET USER PASSWORD SECONDS INTERVAL`

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "the peer reports to its parent"
)]

use std::time::Duration;

use serde_json::json;
use shiftkey_auth::TokenManager;
use shiftkey_auth::strategies::{ClientAuth, OAuthClient, OAuthPassword, OAuthRefresh};
use shiftkey_http::{AuthMiddleware, HttpError};

fn main() -> std::process::ExitCode {
    let a: Vec<String> = std::env::args().skip(1).collect();
    if a.len() != 8 {
        eprintln!(
            "usage: peer TOKEN_URL GATEWAY_URL CLIENT_ID CLIENT_SECRET USER PASSWORD SECONDS INTERVAL"
        );
        return std::process::ExitCode::from(2);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("peer: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(&a)) {
        Ok(counts) => {
            println!("{counts}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("peer: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(a: &[String]) -> Result<serde_json::Value, String> {
    let token_url = a[0].parse().map_err(|e| format!("TOKEN_URL: {e}"))?;
    let seconds: f64 = a[6].parse().map_err(|e| format!("SECONDS: {e}"))?;
    let interval: f64 = a[7].parse().map_err(|e| format!("INTERVAL: {e}"))?;
    let http = reqwest::Client::new();
    let client = OAuthClient::new(
        http.clone(),
        token_url,
        a[2].clone(),
        ClientAuth::SecretBasic(a[3].clone().into()),
    );
    let strategy = OAuthRefresh::new(client.clone()).with_fallback(OAuthPassword::new(
        client,
        a[4].clone(),
        a[5].clone().into(),
    ));
    let manager = TokenManager::builder(strategy)
        .build()
        .map_err(|e| e.to_string())?;
    let api = reqwest_middleware::ClientBuilder::new(http)
        .with(AuthMiddleware::builder(manager).build())
        .build();
    let body = json!({"header": {"state": {}, "policy": {}}, "body": {}});
    let (mut ok, mut unauthorized, mut other) = (0u64, 0u64, 0u64);
    let end = tokio::time::Instant::now() + Duration::from_secs_f64(seconds);
    while tokio::time::Instant::now() < end {
        let sent = api
            .post(&a[1])
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => ok += 1,
            Ok(r) if r.status() == reqwest::StatusCode::UNAUTHORIZED => unauthorized += 1,
            // An auth failure the middleware gave up on counts as a surfaced 401.
            Err(e)
                if HttpError::from_middleware(&e).is_some_and(|h| {
                    matches!(
                        h,
                        HttpError::Rejected { .. }
                            | HttpError::Token(_)
                            | HttpError::AuthCircuitOpen { .. }
                    )
                }) =>
            {
                unauthorized += 1;
            }
            _ => other += 1,
        }
        tokio::time::sleep(Duration::from_secs_f64(interval)).await;
    }
    Ok(json!({"ok": ok, "unauthorized": unauthorized, "other": other}))
}
