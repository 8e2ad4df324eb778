//! Tokens kept across restarts in an encrypted file: a manager gets a token from the emulator
//! and stores it; a second manager (the process after a restart) starts from the file without a
//! new grant. The file holds no readable token.
//!
//! Run: `cargo run -p shiftkey-store --example encrypted_store` (offline: the emulator runs on
//! loopback inside the example; the file goes to a temporary folder).

#![allow(clippy::print_stdout, reason = "an example shows what happens")]

use std::sync::Arc;

use shiftkey_auth::strategies::{ClientAuth, OAuthClient, ServiceAccount};
use shiftkey_auth::{TokenManager, TokioClock};
use shiftkey_sim::{Sim, SimConfig};
use shiftkey_store::{FileStore, KeySource};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let sim = Sim::start(SimConfig::default(), Arc::new(TokioClock::new())).await?;
    let dir = std::env::temp_dir().join(format!("shiftkey-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("plant-sync.token");
    // In production: KeySource::from_env, from_key_file or from_systemd_credential.
    let key = KeySource::generate_base64();
    let manager = |key: &str| -> Result<TokenManager, Box<dyn std::error::Error>> {
        let oauth = OAuthClient::new(
            reqwest::Client::new(),
            format!("{}/oauth/token", sim.url()).parse()?,
            "shiftkey",
            ClientAuth::SecretBasic("shiftkey-secret".into()),
        );
        let store = FileStore::new(&path, KeySource::from_base64(key, "the example's key")?);
        Ok(TokenManager::builder(ServiceAccount::new(oauth))
            .store(Arc::new(store))
            .build()?)
    };

    let first = manager(key.expose())?;
    let token = first.token().await?;
    let grants = || sim.stats().grants.values().sum::<u64>();
    println!(
        "first process: generation {}; the server's grants: {}",
        token.generation(),
        grants()
    );

    let file = std::fs::read(&path)?;
    let readable = file
        .windows(token.access_token.expose().len())
        .any(|w| w == token.access_token.expose().as_bytes());
    println!(
        "{} holds {} bytes; the token readable in it: {readable}",
        path.display(),
        file.len()
    );

    let second = manager(key.expose())?;
    let again = second.token().await?;
    println!(
        "after a restart: generation {}, adopted from the file: {}; the server's grants: {}",
        again.generation(),
        second.stats().adopted,
        grants()
    );
    let _ = std::fs::remove_dir_all(&dir);
    if readable || second.stats().adopted != 1 || grants() != 1 {
        return Err("expected one grant in all, and an encrypted file".into());
    }
    Ok(())
}
