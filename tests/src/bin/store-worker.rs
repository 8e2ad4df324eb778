//! A small process for the multi-process and crash tests of the token store.
//!
//! `store-worker share STORE KEY_B64 ISSUER SECONDS`: a TokenManager (OAuth refresh with rotation,
//! password fallback) sharing STORE; asks for a token every 50 ms, checks each new access token at
//! the issuer's introspection endpoint, and prints one JSON summary line.
//!
//! `store-worker share-pg URL KEY_B64 ISSUER SECONDS`: the same through PostgreSQL (`PgStore`).
//!
//! `store-worker write STORE KEY_B64`: saves generation after generation under the lock, printing
//! each generation once it is durable, until killed.

#![allow(
    clippy::print_stdout,
    reason = "the worker reports to its parent on stdout"
)]
#![allow(clippy::print_stderr, reason = "usage errors")]

use std::collections::HashSet;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use shiftkey_auth::strategies::{ClientAuth, OAuthClient, OAuthPassword, OAuthRefresh};
use shiftkey_auth::{ServerLimits, StoredLifetimeSource, StoredToken, TokenManager, TokenStore};
use shiftkey_store::{FileStore, KeySource, PgStore};

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = match args.first().map(String::as_str) {
        Some("share") if args.len() == 5 => rt.block_on(async {
            let store: Arc<dyn TokenStore> = Arc::new(store(&args[1], &args[2])?);
            share(store, &args[3], &args[4]).await
        }),
        Some("share-pg") if args.len() == 5 => rt.block_on(async {
            let key = KeySource::from_base64(&args[2], "argument").map_err(|e| e.to_string())?;
            let store: Arc<dyn TokenStore> = Arc::new(
                PgStore::connect(&args[1], "plant-sync", key).await.map_err(|e| e.to_string())?,
            );
            share(store, &args[3], &args[4]).await
        }),
        Some("write") if args.len() == 3 => rt.block_on(write(&args[1], &args[2])),
        _ => Err("usage: store-worker share STORE KEY ISSUER SECONDS | share-pg URL KEY ISSUER SECONDS | write STORE KEY".to_owned()),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("store-worker: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn store(path: &str, key: &str) -> Result<FileStore, String> {
    Ok(FileStore::new(
        path,
        KeySource::from_base64(key, "argument").map_err(|e| e.to_string())?,
    ))
}

async fn share(store: Arc<dyn TokenStore>, issuer: &str, seconds: &str) -> Result<(), String> {
    let seconds: u64 = seconds.parse().map_err(|e| format!("seconds: {e}"))?;
    let issuer: url::Url = issuer.parse().map_err(|e| format!("issuer: {e}"))?;
    let http = reqwest::Client::new();
    let token_url = issuer.join("/token").map_err(|e| e.to_string())?;
    let app = OAuthClient::new(
        http.clone(),
        token_url,
        "app",
        ClientAuth::SecretBasic("app-secret".into()),
    )
    .with_scopes(["openid", "offline_access", "api"]);
    let strategy = OAuthRefresh::new(app.clone()).with_fallback(OAuthPassword::new(
        app,
        "alice",
        "wonderland".into(),
    ));
    let manager = TokenManager::builder(strategy)
        .store(store)
        .build()
        .map_err(|e| e.to_string())?;
    let introspect = issuer
        .join("/token/introspection")
        .map_err(|e| e.to_string())?;
    let started = tokio::time::Instant::now();
    let (mut seen, mut inactive, mut errors) = (HashSet::new(), 0u32, 0u32);
    while started.elapsed() < Duration::from_secs(seconds) {
        match manager.token().await {
            Ok(t) => {
                if seen.insert(t.generation()) {
                    let answer: serde_json::Value = http
                        .post(introspect.clone())
                        .basic_auth("svc-basic", Some("svc-basic-secret"))
                        .form(&[("token", t.access_token.expose())])
                        .send()
                        .await
                        .map_err(|e| e.to_string())?
                        .json()
                        .await
                        .map_err(|e| e.to_string())?;
                    if answer["active"] != serde_json::Value::Bool(true) {
                        inactive += 1;
                    }
                }
            }
            Err(e) => {
                errors += 1;
                eprintln!("token error: {e}");
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stats = manager.stats();
    println!(
        "{}",
        serde_json::json!({"generations": seen.len(), "inactive": inactive, "errors": errors, "adopted": stats.adopted, "notified": stats.notified, "acquires": stats.acquires})
    );
    manager.shutdown().await;
    Ok(())
}

async fn write(path: &str, key: &str) -> Result<(), String> {
    let store = store(path, key)?;
    let mut out = std::io::stdout();
    loop {
        let mut guard = store.lock().await.map_err(|e| e.to_string())?;
        let generation = guard
            .load()
            .await
            .map_err(|e| e.to_string())?
            .map_or(0, |t| t.generation)
            + 1;
        let token = StoredToken {
            access_token: format!("at-{generation}").into(),
            refresh_token: Some(format!("rt-{generation}").into()),
            token_type: "Bearer".into(),
            #[allow(clippy::disallowed_methods, reason = "a test fixture's timestamp")]
            issued_at: SystemTime::now(),
            lifetime: Duration::from_secs(3600),
            lifetime_source: StoredLifetimeSource::ExpiresIn,
            scope: None,
            generation,
            limits: ServerLimits::default(),
        };
        guard.save(&token).await.map_err(|e| e.to_string())?;
        guard.unlock().await.map_err(|e| e.to_string())?;
        writeln!(out, "{generation}")
            .and_then(|()| out.flush())
            .map_err(|e| e.to_string())?;
    }
}
