//! Rows of the fault matrix (docs/reliability.md) that need the emulator or a real process:
//! a connection cut mid-refresh, a 429 storm, clock skew both ways, a full disk.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use shiftkey_auth::strategies::{ClientAuth, OAuthClient, ServiceAccount};
use shiftkey_auth::{TokenManager, TokenStore, TokioClock};
use shiftkey_sim::{Sim, SimConfig};
use shiftkey_store::{FileStore, KeySource};
use shiftkey_teamcenter::{SessionConfig, TcClient};

const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const WORKER: &str = env!("CARGO_BIN_EXE_store-worker");

fn quiet() -> SimConfig {
    let mut c = SimConfig::default();
    c.session.load_by_hour = [1; 24];
    c.session.load_noise = 0;
    c
}

fn service_account(sim: &Sim) -> TokenManager {
    let client = OAuthClient::new(
        reqwest::Client::new(),
        format!("{}/oauth/token", sim.url()).parse().unwrap(),
        "shiftkey",
        ClientAuth::SecretBasic("shiftkey-secret".into()),
    );
    TokenManager::builder(ServiceAccount::new(client))
        .build()
        .unwrap()
}

// Compressed real time, not paused time: with paused time a loaded machine let the clock jump past
// the caller's wait while a loopback answer was still on its way (tokio's auto-advance jumps to the
// next timer whenever no task is ready, and a reply still in a real socket is not a ready task).
// 30×: the caller's 30 s wait is a real second, ample for a loopback answer on a busy machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cut_mid_refresh_is_retried_and_never_reaches_the_caller() {
    let mut cfg = quiet();
    cfg.faults.drop_probability = 0.6;
    cfg.oauth.access_ttl_secs = 3600;
    #[allow(
        clippy::disallowed_methods,
        reason = "simulated time starts at the real wall time"
    )]
    let start = std::time::SystemTime::now();
    let clock: Arc<dyn shiftkey_auth::Clock> =
        Arc::new(shiftkey_sim::ScaledClock::new(start, 30.0));
    let sim = Sim::start(cfg, Arc::clone(&clock)).await.unwrap();
    let client = OAuthClient::new(
        reqwest::Client::new(),
        format!("{}/oauth/token", sim.url()).parse().unwrap(),
        "shiftkey",
        ClientAuth::SecretBasic("shiftkey-secret".into()),
    )
    .with_clock(Arc::clone(&clock));
    let m = TokenManager::builder(ServiceAccount::new(client))
        .clock(Arc::clone(&clock))
        .build()
        .unwrap();
    let mut generations = Vec::new();
    for _ in 0..5 {
        let t = m.token().await.unwrap();
        generations.push(t.generation());
        // A rejection a minute later (sooner, a fresh replacement's rejection is not retried).
        clock.sleep(Duration::from_secs(61)).await;
        m.invalidate(t.generation());
    }
    let dropped = sim.stats().faults.get("dropped").copied().unwrap_or(0);
    assert!(dropped >= 2, "connections were cut: {dropped}");
    assert_eq!(
        m.stats().failures,
        dropped,
        "each cut was one failed attempt"
    );
    assert!(
        generations.windows(2).all(|w| w[1] > w[0]),
        "{generations:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_429_storm_is_waited_out_at_the_servers_pace() {
    let mut cfg = quiet();
    cfg.faults.rate_limit_probability = 0.8;
    cfg.faults.retry_after_secs = 30;
    let sim = Sim::start(cfg, Arc::new(TokioClock::new())).await.unwrap();
    let m = service_account(&sim);
    let started = tokio::time::Instant::now();
    // The first token waits out the storm: a Retry-After beyond the caller's 30 s wait comes
    // back at once as an error, and the caller asks again later.
    let mut asked = 0;
    let token = loop {
        asked += 1;
        match m.token().await {
            Ok(t) => break t,
            // A caller told to come back later does so (the refresher waits the same time).
            Err(e) if e.is_transient() && asked < 100 => {
                tokio::time::sleep(e.retry_after().unwrap_or(Duration::from_secs(1))).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    let limited = sim.stats().faults.get("rate_limited").copied().unwrap_or(0);
    assert!(limited >= 2, "a storm happened: {limited}");
    let requests = sim
        .stats()
        .requests
        .get("oauth/token")
        .copied()
        .unwrap_or(0);
    assert_eq!(
        requests,
        limited + 1,
        "one request per Retry-After, no hammering"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(30 * limited),
        "each Retry-After was honoured: {:?} for {limited}",
        started.elapsed()
    );
    assert_eq!(token.generation(), 1);
}

#[tokio::test(start_paused = true)]
async fn clock_skew_of_ten_minutes_either_way_changes_nothing() {
    for skew in [-600i64, 600] {
        let mut cfg = quiet();
        cfg.faults.date_skew_secs = skew;
        cfg.faults.rate_limit_probability = 0.05;
        cfg.faults.retry_after_secs = 120;
        let sim = Sim::start(cfg, Arc::new(TokioClock::new())).await.unwrap();
        let session =
            SessionConfig::new(sim.url().parse().unwrap(), "mfg_sync", "mfg_sync_pw".into());
        let tc = TcClient::session(reqwest::Client::new(), session).unwrap();
        let _keepalive = tc.keepalive().unwrap();
        for _ in 0..(24 * 4) {
            tc.session_info().await.unwrap();
            tokio::time::sleep(Duration::from_secs(900)).await;
        }
        let stats = sim.stats();
        assert_eq!(stats.killed.get("hard"), None, "skew {skew}: {stats:?}");
        assert_eq!(tc.middleware().stats().surfaced, 0, "skew {skew}");
        assert!(
            (4..=5).contains(&stats.logins),
            "skew {skew}: refreshes on our own clock, every 6.24-6.4 h: {}",
            stats.logins
        );
        let skew_seen = tc.middleware().manager().status().skew_secs.unwrap();
        assert!(
            (skew_seen - skew as f64).abs() < 5.0,
            "the skew is measured: {skew_seen} vs {skew}"
        );
    }
}

#[tokio::test]
async fn a_full_disk_fails_the_save_clearly_and_keeps_the_old_token() {
    let dir = std::env::temp_dir().join(format!("shiftkey-full-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("full.token");
    let store = FileStore::new(&path, KeySource::from_base64(KEY, "test").unwrap());
    // A first worker writes a few generations; it is stopped by a file-size limit of zero on the
    // next run: every write fails with EFBIG, as on a full disk (SIGXFSZ ignored).
    let mut first = Command::new(WORKER)
        .args(["write", path.to_str().unwrap(), KEY])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Real time: the writer is another process.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while store.load().await.unwrap().is_none_or(|t| t.generation < 3) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker wrote fewer than 3 generations in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.kill().unwrap();
    first.wait().unwrap();
    let before = std::fs::read(&path).unwrap();
    let kept = store.load().await.unwrap().unwrap().generation;
    let full = Command::new("bash")
        .args([
            "-c",
            "trap '' XFSZ; ulimit -f 0; exec \"$0\" write \"$1\" \"$2\"",
            WORKER,
            path.to_str().unwrap(),
            KEY,
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&full.stderr);
    assert!(!full.status.success(), "the save failed");
    assert!(
        stderr.contains("full.token"),
        "the error names the file: {stderr}"
    );
    assert!(
        stderr.to_lowercase().contains("too large"),
        "and the cause: {stderr}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), before, "nothing was lost");
    assert_eq!(store.load().await.unwrap().unwrap().generation, kept);
    let leftovers: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "full.token" && n != "full.token.lock")
        .collect();
    assert!(leftovers.is_empty(), "no half-written files: {leftovers:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
