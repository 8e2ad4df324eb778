//! High availability with real processes: two `shiftkey run` daemons against one real PostgreSQL
//! (token store, leader lease and sink) and the emulator; the leader is killed with SIGKILL again
//! and again, at random moments (its first cycle in flight included).
//!
//! Real time: the daemons are processes, the lease lives in PostgreSQL. Every wait polls a
//! condition with a generous deadline; no assertion is about speed.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::time::Duration;

use common::{Daemon, KEY, temp_dir};
use shiftkey_auth::TokenStore as _;
use shiftkey_tests::postgres::PgServer;

/// The two daemons' configs differ only in their broker socket.
fn config(dir: &std::path::Path, sim: &str, i: usize) -> std::path::PathBuf {
    let path = dir.join(format!("shiftkey-{i}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"[teamcenter]
url = "{sim}"
user = "mfg_sync"
password = {{ env = "TC_PW" }}
[sink]
url_env = "PG_URL"
[schedule]
interval_minutes = 1
[store]
backend = "postgres"
url_env = "PG_URL"
key = {{ env = "SK_KEY" }}
[tokens.gw]
kind = "client_credentials"
token_url = "{sim}/oauth/token"
client_id = "shiftkey"
client_secret = {{ env = "GW_SECRET" }}
[lease]
url_env = "PG_URL"
check_secs = 1
[broker]
socket = "{dir}/run-{i}/broker.sock"
[ops]
listen = "127.0.0.1:0"
"#,
            dir = dir.display(),
        ),
    )
    .unwrap();
    path
}

/// A daemon and its ops address.
struct Node {
    daemon: Daemon,
    ops: String,
}

/// The secrets the configs reference, and the PostgreSQL URL for the store, lease and sink.
fn env(pg_url: &str) -> [(&str, &str); 4] {
    [
        ("TC_PW", "mfg_sync_pw"),
        ("SK_KEY", KEY),
        ("GW_SECRET", "shiftkey-secret"),
        ("PG_URL", pg_url),
    ]
}

async fn start(cfg: &std::path::Path, pg: &str) -> Node {
    let mut daemon = Daemon::spawn(&["run", "-c", cfg.to_str().unwrap()], &env(pg));
    let ops = daemon.address("ops endpoints on ").await;
    Node { daemon, ops }
}

/// Whether the node says it holds the lease (a dead or starting node does not).
async fn leads(http: &reqwest::Client, node: &Node) -> bool {
    match http.get(format!("{}/status", node.ops)).send().await {
        Ok(r) => r
            .text()
            .await
            .is_ok_and(|t| t.contains("Role: <b>leader</b>")),
        Err(_) => false,
    }
}

/// Waits (up to 30 s) until exactly one node leads, checking at every look that never both do;
/// returns its index.
async fn one_leader(http: &reqwest::Client, nodes: &[Node; 2]) -> usize {
    for _ in 0..600 {
        let (a, b) = (leads(http, &nodes[0]).await, leads(http, &nodes[1]).await);
        assert!(!(a && b), "two leaders at once");
        if a != b {
            return usize::from(b);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "no leader within 30 s:\n{}\n---\n{}",
        nodes[0].daemon.log(),
        nodes[1].daemon.log()
    );
}

/// The emulator's truth, mapped as the engine maps it.
async fn truth(sim: &shiftkey_sim::Sim) -> Vec<shiftkey_shopfloor::ProcessRecord> {
    let tc = shiftkey_teamcenter::TcClient::session(
        reqwest::Client::new(),
        shiftkey_teamcenter::SessionConfig::new(
            sim.url().parse().unwrap(),
            "mfg_sync",
            "mfg_sync_pw".into(),
        ),
    )
    .unwrap();
    let all = tc
        .changed_since(None, &shiftkey_teamcenter::ReadConfig::default())
        .await
        .unwrap();
    let mut v: Vec<_> = all
        .plans
        .iter()
        .map(|(p, o)| shiftkey_sync::map_plan(p, o, &all.current))
        .collect();
    v.sort_by(|a, b| a.uid.cmp(&b.uid));
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_keep_one_leader_and_lose_nothing_when_the_leader_is_killed() {
    // 20 kills by default; `SHIFTKEY_HA_KILLS=N` for more (or fewer while developing).
    let kills: u64 = std::env::var("SHIFTKEY_HA_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let pg = PgServer::start();
    let mut cfg = shiftkey_sim::SimConfig::default();
    cfg.session.load_by_hour = [1; 24];
    cfg.session.load_noise = 0;
    // Plans change all the time, and every call takes 100 ms: a cycle lasts long enough for
    // kills to land inside it.
    cfg.data.changes_per_hour = 3600.0;
    cfg.faults.latency_ms = 100;
    let sim = common::start_sim(cfg).await;
    let dir = temp_dir("ha");
    let cfgs = [config(&dir, &sim.url(), 0), config(&dir, &sim.url(), 1)];
    let url = pg.url();
    let mut nodes = [start(&cfgs[0], &url).await, start(&cfgs[1], &url).await];
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let sink = shiftkey_shopfloor::SqlSink::connect(&url).await.unwrap();
    // A seeded spread of kill moments: from at once (the new leader's first cycle in flight)
    // to a few seconds after taking over.
    let mut seed = 0x5eed_u64;
    for kill in 0..kills {
        let leader = one_leader(&http, &nodes).await;
        if kill == 0 {
            // The standby is ready: it serves tokens and ops; its Teamcenter session and its
            // sync wait until it leads (it holds no session meanwhile).
            let follower = &nodes[1 - leader];
            let mut ready = (0, String::new());
            for _ in 0..300 {
                let r = http
                    .get(format!("{}/readyz", follower.ops))
                    .send()
                    .await
                    .unwrap();
                ready = (r.status().as_u16(), r.text().await.unwrap());
                if ready.0 == 200 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert_eq!(ready.0, 200, "the follower is not ready: {}", ready.1);
        }
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        tokio::time::sleep(Duration::from_millis((seed >> 33) % 3000)).await;
        // Nothing changes from here until the new leader has caught up.
        sim.pause_changes(true);
        // SIGKILL: the follower takes over. Then the dead process comes back (as systemd would
        // restart it) and waits its turn.
        nodes[leader].daemon.kill();
        // The killed node cannot answer, so the one leader found is the other process.
        one_leader(&http, &nodes).await;
        nodes[leader] = start(&cfgs[leader], &url).await;
        // After the takeover the sink catches up with the source: nothing the dead leader was
        // writing is lost or torn (60 s: the new leader syncs at once, then every minute).
        let want = truth(&sim).await;
        let mut got = Vec::new();
        for _ in 0..600 {
            got = sink.all().await.unwrap();
            if got == want {
                break;
            }
            assert!(!(leads(&http, &nodes[0]).await && leads(&http, &nodes[1]).await));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            got == want,
            "kill {kill}: the sink ({} plans) never matched the source ({} plans)",
            got.len(),
            want.len()
        );
        sim.pause_changes(false);
    }
    // One token for the whole run: every restart of either process found it in PostgreSQL.
    let store = shiftkey_store::PgStore::connect(
        &url,
        "gw",
        shiftkey_store::KeySource::from_base64(KEY, "test").unwrap(),
    )
    .await
    .unwrap();
    let stored = store.load().await.unwrap().expect("the token is stored");
    let grants: u64 = sim.stats().grants.values().sum();
    assert_eq!(
        grants,
        stored.generation,
        "token-endpoint calls equal the stored generations across {} process starts",
        kills + 2
    );
    for mut n in nodes {
        n.daemon.kill();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// What a node says on `/status` about its role, and on `/readyz`.
async fn role_and_ready(http: &reqwest::Client, node: &Node) -> (String, u16, String) {
    let status = match http.get(format!("{}/status", node.ops)).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    let role = ["leader", "follower", "unknown"]
        .into_iter()
        .find(|r| status.contains(&format!("Role: <b>{r}</b>")))
        .unwrap_or("none")
        .to_owned();
    let (code, text) = match http.get(format!("{}/readyz", node.ops)).send().await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(_) => (0, String::new()),
    };
    (role, code, text)
}

/// PostgreSQL stops for a while under two daemons, then comes back: at no sample do both
/// claim to lead; the old leader stops claiming it while the database is away (it watches its
/// lease between cycles), both say on `/readyz` that the lease cannot be checked and log it
/// once; after the restart one leads again. The standby never logged in to Teamcenter, and the
/// old leader logged its session out when it stopped leading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_never_shows_two_leaders_and_the_old_one_steps_down() {
    let pg = PgServer::start();
    let mut cfg = shiftkey_sim::SimConfig::default();
    cfg.session.load_by_hour = [1; 24];
    cfg.session.load_noise = 0;
    let sim = common::start_sim(cfg).await;
    let dir = temp_dir("ha-outage");
    let cfgs = [config(&dir, &sim.url(), 0), config(&dir, &sim.url(), 1)];
    let url = pg.url();
    let nodes = [start(&cfgs[0], &url).await, start(&cfgs[1], &url).await];
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let leader = one_leader(&http, &nodes).await;
    // The leader's first cycle logs in; the standby never does.
    for _ in 0..300 {
        if sim.stats().logins >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(sim.stats().logins, 1, "{:?}", sim.stats());
    assert_eq!(sim.live_sessions(), 1);

    pg.stop();
    // Sampled every 200 ms: never two leaders; both end up not leading, and not ready.
    let mut stepped_down = false;
    for _ in 0..150 {
        let a = role_and_ready(&http, &nodes[0]).await;
        let b = role_and_ready(&http, &nodes[1]).await;
        assert!(
            !(a.0 == "leader" && b.0 == "leader"),
            "two leaders: {a:?} {b:?}"
        );
        if a.0 != "leader" && b.0 != "leader" && a.1 == 503 && b.1 == 503 {
            for (_, _, why) in [&a, &b] {
                assert!(why.contains("the leader lease cannot be checked"), "{why}");
            }
            stepped_down = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        stepped_down,
        "the old leader kept leading with its database gone:\n{}",
        nodes[leader].daemon.log()
    );
    // It gave its Teamcenter session back.
    for _ in 0..100 {
        if sim.live_sessions() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(sim.live_sessions(), 0, "{:?}", sim.stats());
    // A few more checks while the database is away: each node says so in its log once.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for n in &nodes {
        let said = n
            .daemon
            .log()
            .matches("the leader lease cannot be checked")
            .count();
        assert_eq!(said, 1, "{}", n.daemon.log());
    }

    pg.resume();
    one_leader(&http, &nodes).await;
    for _ in 0..50 {
        let a = role_and_ready(&http, &nodes[0]).await;
        let b = role_and_ready(&http, &nodes[1]).await;
        assert!(
            !(a.0 == "leader" && b.0 == "leader"),
            "two leaders: {a:?} {b:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for mut n in nodes {
        n.daemon.kill();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `sync --once` under `[lease]` (a timer on every host): only the lease holder runs the cycle;
/// the others say so, succeed, and log in nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_once_runs_only_where_the_lease_is_held() {
    let pg = PgServer::start();
    let sim = common::start_sim(shiftkey_sim::SimConfig::default()).await;
    let dir = temp_dir("ha-once");
    let cfg = config(&dir, &sim.url(), 0);
    let url = pg.url();
    let env = env(&url);
    let args = ["sync", "--once", "-c", cfg.to_str().unwrap()];
    // Another host leads (the config's default key).
    let other = shiftkey_store::LeaderLease::try_acquire(&url, 7242)
        .await
        .unwrap()
        .expect("the lease is free");
    let out = common::shiftkey(&args, &env);
    assert!(out.status.success(), "{}", common::text(&out));
    assert!(
        common::text(&out).contains("another process holds the leader lease 7242"),
        "{}",
        common::text(&out)
    );
    assert_eq!(sim.stats().logins, 0, "a follower logged in");
    other.release().await.unwrap();
    let out = common::shiftkey(&args, &env);
    assert!(out.status.success(), "{}", common::text(&out));
    assert!(
        common::text(&out).contains("inserted"),
        "{}",
        common::text(&out)
    );
    assert!(sim.stats().logins >= 1);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Whether `doctor` printed a `tag` line (`ok`, `FAIL`) for `check` whose detail has `detail`.
fn said(text: &str, tag: &str, check: &str, detail: &str) -> bool {
    text.lines().any(|l| {
        let mut words = l.split_whitespace();
        words.next() == Some(tag) && words.next() == Some(check) && l.contains(detail)
    })
}

/// `doctor` reaches the databases the config names: the PostgreSQL store, the leader lease (free,
/// then held by another process) and the sink; a database it cannot reach fails the check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_checks_the_store_the_lease_and_the_sink() {
    let pg = PgServer::start();
    let sim = common::start_sim(shiftkey_sim::SimConfig::default()).await;
    let dir = temp_dir("ha-doctor");
    let cfg = config(&dir, &sim.url(), 0);
    let url = pg.url();
    let args = ["doctor", "-c", cfg.to_str().unwrap()];
    let out = common::shiftkey(&args, &env(&url));
    let text = common::text(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        said(
            &text,
            "ok",
            "store",
            "PostgreSQL reached; no token stored yet"
        ),
        "{text}"
    );
    assert!(
        said(&text, "ok", "lease", "leader lease 7242 is free"),
        "{text}"
    );
    assert!(
        said(&text, "ok", "sink", "reached; no sink tables yet"),
        "{text}"
    );
    let leader = shiftkey_store::LeaderLease::try_acquire(&url, 7242)
        .await
        .unwrap()
        .expect("the doctor gave the lease back");
    let text = common::text(&common::shiftkey(&args, &env(&url)));
    assert!(
        said(&text, "ok", "lease", "leader lease 7242 is held"),
        "{text}"
    );
    leader.release().await.unwrap();
    // Nothing listens on port 1.
    let out = common::shiftkey(&args, &env("postgres://postgres@127.0.0.1:1/postgres"));
    let text = common::text(&out);
    assert_eq!(out.status.code(), Some(7), "{text}");
    for check in ["store", "lease", "sink"] {
        assert!(
            said(&text, "FAIL", check, ""),
            "no failed `{check}` in:\n{text}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
