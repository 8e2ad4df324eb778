//! The file store across real OS processes: sharing one rotated token, and surviving SIGKILL.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use shiftkey_auth::TokenStore;
use shiftkey_store::{FileStore, KeySource};
use shiftkey_tests::oidc::OidcServer;

const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const WORKER: &str = env!("CARGO_BIN_EXE_store-worker");

fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("shiftkey-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_processes_share_one_rotating_token_with_one_refresh_per_rotation() {
    let oidc = OidcServer::start(6);
    let dir = temp_dir("share");
    let path = dir.join("shared.token");
    let workers: Vec<_> = (0..8)
        .map(|_| {
            Command::new(WORKER)
                .args([
                    "share",
                    path.to_str().unwrap(),
                    KEY,
                    oidc.issuer().as_str(),
                    "14",
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut summaries = Vec::new();
    for w in workers {
        let out = tokio::task::spawn_blocking(move || w.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        assert!(
            out.status.success(),
            "worker failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .to_owned();
        summaries.push(serde_json::from_str::<serde_json::Value>(&line).unwrap());
    }
    let stored = FileStore::new(&path, KeySource::from_base64(KEY, "test").unwrap())
        .load()
        .await
        .unwrap()
        .unwrap();
    let refreshes = oidc.successes("refresh_token", 0).await;
    let logins = oidc.successes("password", 0).await;
    let errors: Vec<_> = oidc
        .events()
        .into_iter()
        .filter(|e| e["event"] == "grant.error")
        .collect();
    assert!(errors.is_empty(), "no invalid_grant, no reuse: {errors:?}");
    assert_eq!(logins, 1, "one login for all eight processes");
    assert!(
        stored.generation >= 4,
        "several rotations happened: {}",
        stored.generation
    );
    assert_eq!(
        logins + refreshes,
        stored.generation as usize,
        "exactly one token-endpoint call per rotation"
    );
    for s in &summaries {
        assert_eq!(
            s["inactive"], 0,
            "every process always held a valid token: {s}"
        );
        assert_eq!(s["errors"], 0, "{s}");
    }
    let adopted: u64 = summaries
        .iter()
        .map(|s| s["adopted"].as_u64().unwrap())
        .sum();
    assert!(
        adopted >= 7 * 3,
        "the others adopted rotations instead of refreshing: {adopted}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_writes_never_tears_the_file_or_loses_a_rotation() {
    let dir = temp_dir("crash");
    let path = dir.join("crash.token");
    let store = FileStore::new(&path, KeySource::from_base64(KEY, "test").unwrap());
    let mut kills = 0;
    let mut last_durable = 0u64;
    for i in 0..200u64 {
        let mut child = Command::new(WORKER)
            .args(["write", path.to_str().unwrap(), KEY])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        // Kill at a pseudo-random moment: 0-24 ms after start.
        tokio::time::sleep(Duration::from_millis((i * 7919) % 25)).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        let stdout = child.stdout.take().unwrap();
        if let Some(g) = BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| l.parse::<u64>().ok())
            .last()
        {
            last_durable = last_durable.max(g);
        }
        match store.load().await.unwrap() {
            Some(t) => {
                assert_eq!(
                    t.refresh_token.as_deref(),
                    Some(format!("rt-{}", t.generation).as_str()),
                    "complete, never torn"
                );
                assert!(
                    t.generation >= last_durable,
                    "a generation reported durable ({last_durable}) was lost (have {})",
                    t.generation
                );
            }
            None => assert_eq!(last_durable, 0),
        }
    }
    assert_eq!(kills, 200);
    assert!(
        last_durable > 10,
        "the writer made progress between kills: {last_durable}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
