//! `shiftkey proxy` with the field's own scripts: a Python `requests` script with a stale token of
//! its own, and a Teamcenter script that logs in once, each pointed at the proxy and otherwise
//! unchanged, through a compressed day (an hour is a second: tokens that claim 20 and live 4,
//! sessions that die when idle and at 8, a restart). No rejection reaches either, and the
//! proxy's counts match the emulator's. And a 50 MB download and a 20 MB upload pass through
//! intact while the proxy's memory stays far below either.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Daemon, KEY, temp_dir};

const SCRIPTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/scripts");

/// Runs a field script to the end: its JSON counts.
async fn script(args: Vec<String>) -> serde_json::Value {
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(common::python())
            .args(&args)
            .output()
            .expect("python runs the field script")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "the script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `shiftkey_proxy_total{proxy, what}` from the ops endpoint.
async fn proxy_metric(ops: &str, proxy: &str, what: &str) -> u64 {
    metric(
        ops,
        &format!("shiftkey_proxy_total{{proxy=\"{proxy}\",what=\"{what}\"}} "),
    )
    .await
}

/// The value of the sample that starts with `needle` (name and labels) on `/metrics`.
async fn metric(ops: &str, needle: &str) -> u64 {
    let text = reqwest::get(format!("{ops}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(needle))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {needle} in /metrics:\n{text}"))
}

fn write_config(dir: &Path, body: &str) -> std::path::PathBuf {
    let cfg = dir.join("shiftkey.toml");
    std::fs::write(
        &cfg,
        format!(
            "[store]\ndir = \"{dir}/store\"\nkey = {{ env = \"SK_KEY\" }}\n{body}\
             [ops]\nlisten = \"127.0.0.1:0\"\n",
            dir = dir.display()
        ),
    )
    .unwrap();
    cfg
}

fn gateway_token(sim_url: &str) -> String {
    format!(
        "[tokens.gw]\nkind = \"client_credentials\"\ntoken_url = \"{sim_url}/oauth/token\"\n\
         client_id = \"shiftkey\"\nclient_secret = {{ env = \"GW_SECRET\" }}\n"
    )
}

const ENV: [(&str, &str); 4] = [
    ("SK_KEY", KEY),
    ("GW_SECRET", "shiftkey-secret"),
    ("TC_PASSWORD", "mfg_sync_pw"),
    ("TC_PROXY_LOGIN", "the-printer-s-own-local-secret"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requests_script_with_a_stale_token_sees_no_401_through_a_compressed_day() {
    // An hour is a second: tokens claim 20 h and die at 4 h; the server restarts at 13:00.
    let mut sim_cfg = shiftkey_sim::SimConfig::default();
    sim_cfg.oauth.access_ttl_secs = 20;
    sim_cfg.oauth.access_ttl_cap_secs = Some(4);
    let sim = common::start_sim(sim_cfg).await;
    let dir = temp_dir("proxy-mes");
    let cfg = write_config(
        &dir,
        &format!(
            "{}[proxy.gw]\nlisten = \"127.0.0.1:0\"\nupstream = \"{}\"\ntoken = \"gw\"\n",
            gateway_token(&sim.url()),
            sim.url()
        ),
    );
    let mut proxy = Daemon::spawn(&["proxy", "-c", cfg.to_str().unwrap()], &ENV);
    let base = proxy.address("proxy `gw` on ").await;
    let ops = proxy.address("ops endpoints on ").await;
    let api_url = format!("{base}/tc/RestServices/Core-2007-01-Session/getTCSessionInfo");
    let run = tokio::spawn(script(vec![
        format!("{SCRIPTS}/mes_script.py"),
        api_url,
        "24".to_owned(),
    ]));
    tokio::time::sleep(Duration::from_secs(13)).await;
    sim.restart();
    let counts = run.await.unwrap();
    assert_eq!(
        counts["unauthorized"], 0,
        "no 401 reached the script: {counts}"
    );
    assert_eq!(counts["other"], 0, "{counts}");
    // Traffic across the day, not a speed: a busy machine makes fewer calls.
    assert!(counts["ok"].as_u64().unwrap() > 24, "{counts}");
    let stats = sim.stats();
    let sent = stats.exceptions.get("invalid_token").copied().unwrap_or(0);
    assert!(
        stats.killed.get("cap").is_some_and(|n| *n >= 1) && stats.killed.get("restart") == Some(&1),
        "the day had a cap death and a restart: {stats:?}"
    );
    assert!(sent >= 2, "rejections to heal: {stats:?}");
    assert_eq!(proxy_metric(&ops, "gw", "surfaced").await, 0);
    assert_eq!(
        proxy_metric(&ops, "gw", "healed").await,
        sent,
        "every 401 the server sent was healed"
    );
    let (exit, log) = proxy.terminate().await;
    assert!(exit.success(), "{log}");
    // A proxy stops as a proxy: no sync batch, no broker in its words.
    assert!(
        log.contains("stopping: finishing the requests in flight")
            && log.contains("the proxies stopped"),
        "{log}"
    );
    assert!(!log.contains("batch") && !log.contains("broker"), "{log}");
    common::assert_reads_as_words(&log, "the proxy's log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_teamcenter_script_that_logs_in_once_sees_no_invalid_user_through_a_compressed_day() {
    // An hour is a second: sessions die 8 h after login and, the pool being busy, after 1 s
    // idle; the server restarts at 13:00.
    let mut sim_cfg = shiftkey_sim::SimConfig::default();
    sim_cfg.session.hard_timeout_secs = 8;
    sim_cfg.session.soft_timeout_secs = 1;
    sim_cfg.session.load_by_hour = [5; 24];
    sim_cfg.session.load_noise = 0;
    let sim = common::start_sim(sim_cfg).await;
    let dir = temp_dir("proxy-tc");
    let cfg = write_config(
        &dir,
        &format!(
            "[teamcenter]\nurl = \"{url}\"\nuser = \"mfg_sync\"\npassword = {{ env = \"TC_PASSWORD\" }}\n\
             [proxy.tc]\nlisten = \"127.0.0.1:0\"\nupstream = \"{url}\"\nteamcenter = true\n\
             [proxy.tc.logins]\nlabel_printer = {{ env = \"TC_PROXY_LOGIN\" }}\n",
            url = sim.url()
        ),
    );
    let mut proxy = Daemon::spawn(&["proxy", "-c", cfg.to_str().unwrap()], &ENV);
    let base = proxy.address("proxy `tc` on ").await;
    let ops = proxy.address("ops endpoints on ").await;
    let run = tokio::spawn(script(vec![
        format!("{SCRIPTS}/tc_script.py"),
        base,
        "label_printer".to_owned(),
        "the-printer-s-own-local-secret".to_owned(),
        "24".to_owned(),
    ]));
    tokio::time::sleep(Duration::from_secs(13)).await;
    sim.restart();
    let counts = run.await.unwrap();
    assert_eq!(counts["invalid_user"], 0, "{counts}");
    assert_eq!(counts["other"], 0, "{counts}");
    assert!(counts["ok"].as_u64().unwrap() > 24, "{counts}");
    let stats = sim.stats();
    let sent = stats
        .exceptions
        .get("InvalidUserException")
        .copied()
        .unwrap_or(0);
    for cause in ["idle", "restart"] {
        assert!(
            stats.killed.get(cause).is_some_and(|n| *n >= 1),
            "no {cause} death: {stats:?}"
        );
    }
    assert_eq!(proxy_metric(&ops, "tc", "surfaced").await, 0);
    assert_eq!(proxy_metric(&ops, "tc", "healed").await, sent, "{stats:?}");
    // The proxy's counts are on /status too.
    let status = reqwest::get(format!("{ops}/status"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(status.contains("<td>tc</td>"), "{status}");
    // Every read went to the server; the script's login and logout did not.
    assert_eq!(
        proxy_metric(&ops, "tc", "requests").await,
        counts["ok"].as_u64().unwrap() + 2
    );
    assert_eq!(
        proxy_metric(&ops, "tc", "forwarded").await,
        counts["ok"].as_u64().unwrap()
    );
    proxy.terminate().await;
}

/// An upstream that sends 50 MB in 64 KiB chunks and hashes what it receives, refusing the
/// script's own credential.
async fn file_server() -> std::net::SocketAddr {
    use axum::body::Body;
    use axum::http::{HeaderMap, StatusCode};
    use futures_util::StreamExt as _;
    fn authorized(h: &HeaderMap) -> bool {
        h.get("authorization")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("Bearer ") && !v.contains("script-own"))
    }
    let app = axum::Router::new()
        .route(
            "/ok",
            axum::routing::any(|h: HeaderMap| async move {
                if authorized(&h) {
                    (StatusCode::OK, "ok")
                } else {
                    (StatusCode::UNAUTHORIZED, "")
                }
            }),
        )
        .route(
            "/files/big",
            axum::routing::get(|h: HeaderMap| async move {
                if !authorized(&h) {
                    return (StatusCode::UNAUTHORIZED, Body::empty());
                }
                let chunks = futures_util::stream::iter(0..800u32).map(|i| {
                    Ok::<_, std::io::Error>(bytes::Bytes::from(vec![(i % 251) as u8; 65_536]))
                });
                (StatusCode::OK, Body::from_stream(chunks))
            }),
        )
        .route(
            "/files/upload",
            axum::routing::post(|h: HeaderMap, body: Body| async move {
                if !authorized(&h) {
                    return (StatusCode::UNAUTHORIZED, String::new());
                }
                let mut stream = body.into_data_stream();
                let (mut len, mut sum) = (0u64, 0u64);
                while let Some(chunk) = stream.next().await {
                    // A body the proxy cut off (a stalled script's) ends here.
                    let Ok(chunk) = chunk else {
                        return (StatusCode::BAD_REQUEST, String::new());
                    };
                    len += chunk.len() as u64;
                    sum = chunk
                        .iter()
                        .fold(sum, |s, b| s.wrapping_mul(31).wrapping_add(u64::from(*b)));
                }
                (StatusCode::OK, format!("{len} {sum}"))
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// The peak resident memory of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_megabytes_stream_through_intact_in_bounded_memory() {
    use futures_util::StreamExt as _;
    let sim = common::start_sim(shiftkey_sim::SimConfig::default()).await;
    let files = file_server().await;
    let dir = temp_dir("proxy-big");
    let cfg = write_config(
        &dir,
        &format!(
            "{}[proxy.files]\nlisten = \"127.0.0.1:0\"\nupstream = \"http://{files}\"\ntoken = \"gw\"\n",
            gateway_token(&sim.url())
        ),
    );
    let mut proxy = Daemon::spawn(&["proxy", "-c", cfg.to_str().unwrap()], &ENV);
    let base = proxy.address("proxy `files` on ").await;
    let client = reqwest::Client::new();

    // Download: every byte, in order.
    let answer = client
        .get(format!("{base}/files/big"))
        .header("Authorization", "Bearer script-own")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let mut stream = answer.bytes_stream();
    let mut at = 0usize;
    while let Some(chunk) = stream.next().await {
        for b in chunk.unwrap() {
            assert_eq!(b, ((at / 65_536) % 251) as u8, "byte {at}");
            at += 1;
        }
    }
    assert_eq!(at, 800 * 65_536);

    // Upload: 20 MB, far beyond the replay limit, streamed on.
    let parts = futures_util::stream::iter(0..320u32)
        .map(|i| Ok::<_, std::io::Error>(vec![(i % 7) as u8; 65_536]));
    let expected = (0..320u32).fold(0u64, |s, i| {
        (0..65_536).fold(s, |s, _| {
            s.wrapping_mul(31).wrapping_add(u64::from((i % 7) as u8))
        })
    });
    let answer = client
        .post(format!("{base}/files/upload"))
        .body(reqwest::Body::wrap_stream(parts))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(
        answer.text().await.unwrap(),
        format!("{} {expected}", 320 * 65_536)
    );

    // Neither body was held: the proxy's peak memory stays below the 50 MB body.
    let peak_mib = peak_rss_kib(proxy.pid()) / 1024;
    // (About 30 MiB measured; holding the download alone would take it past 50 + that.)
    assert!(peak_mib < 48, "the proxy peaked at {peak_mib} MiB");
    proxy.terminate().await;
}

/// A config with one bearer proxy on loopback TCP in front of the file server, with `extra`
/// settings.
fn files_proxy(
    dir: &Path,
    sim_url: &str,
    files: std::net::SocketAddr,
    extra: &str,
) -> std::path::PathBuf {
    write_config(
        dir,
        &format!(
            "{}[proxy.files]\nlisten = \"127.0.0.1:0\"\nupstream = \"http://{files}\"\ntoken = \"gw\"\n{extra}",
            gateway_token(sim_url)
        ),
    )
}

/// `curl`'s status code for `method url`, run as `uid` when given (`setpriv`, as root).
fn curl_status(as_uid: Option<u32>, method: &str, url: &str) -> String {
    let curl = [
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-X",
        method,
        url,
    ];
    let out = match as_uid {
        Some(uid) => std::process::Command::new("setpriv")
            .args([
                format!("--reuid={uid}"),
                format!("--regid={uid}"),
                "--clear-groups".to_owned(),
            ])
            .args(curl)
            .output(),
        None => std::process::Command::new(curl[0])
            .args(&curl[1..])
            .output(),
    }
    .expect("curl runs (apt-get install -y curl)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_users_a_tcp_proxy_names_spend_its_credential() {
    let sim = common::start_sim(shiftkey_sim::SimConfig::default()).await;
    let files = file_server().await;
    let me = rustix_uid();
    // The default: the service's own user only. The audit's attack, as `nobody`, where this
    // test may become another user (root); as ourselves against a proxy that names someone else
    // elsewhere.
    let dir = temp_dir("proxy-users");
    let cfg = files_proxy(&dir, &sim.url(), files, "");
    let mut proxy = Daemon::spawn(&["proxy", "-c", cfg.to_str().unwrap()], &ENV);
    let base = proxy.address("proxy `files` on ").await;
    let ops = proxy.address("ops endpoints on ").await;
    let url = format!("{base}/ok");
    let ours = tokio::task::spawn_blocking({
        let url = url.clone();
        move || curl_status(None, "DELETE", &url)
    });
    assert_eq!(
        ours.await.unwrap(),
        "200",
        "the service's own user is served"
    );
    if me == 0 {
        let theirs = tokio::task::spawn_blocking(move || curl_status(Some(65_534), "DELETE", &url));
        assert_eq!(
            theirs.await.unwrap(),
            "403",
            "another local user is refused"
        );
        assert_eq!(refused(&ops, "files", "user").await, 1);
    }
    proxy.terminate().await;

    let dir = temp_dir("proxy-users-other");
    let other = me.wrapping_add(4242);
    let cfg = files_proxy(&dir, &sim.url(), files, &format!("users = [\"{other}\"]\n"));
    let mut proxy = Daemon::spawn(&["proxy", "-c", cfg.to_str().unwrap()], &ENV);
    let base = proxy.address("proxy `files` on ").await;
    let ops = proxy.address("ops endpoints on ").await;
    let url = format!("{base}/ok");
    let status = tokio::task::spawn_blocking(move || curl_status(None, "DELETE", &url));
    assert_eq!(status.await.unwrap(), "403");
    assert_eq!(refused(&ops, "files", "user").await, 1);
    assert_eq!(proxy_metric(&ops, "files", "forwarded").await, 0);
    proxy.terminate().await;
}

fn rustix_uid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// `shiftkey_proxy_refused_total{proxy, kind}` from the ops endpoint.
async fn refused(ops: &str, proxy: &str, kind: &str) -> u64 {
    metric(
        ops,
        &format!("shiftkey_proxy_refused_total{{proxy=\"{proxy}\",kind=\"{kind}\"}} "),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_stalled_bodies_hold_neither_the_slots_nor_the_memory() {
    use tokio::io::AsyncWriteExt as _;
    let sim = common::start_sim(shiftkey_sim::SimConfig::default()).await;
    let files = file_server().await;
    let dir = temp_dir("proxy-slow");
    let cfg = files_proxy(&dir, &sim.url(), files, "body_idle_secs = 1\n");
    let mut proxy = Daemon::spawn(&["proxy", "-c", cfg.to_str().unwrap()], &ENV);
    let base = proxy.address("proxy `files` on ").await;
    let ops = proxy.address("ops endpoints on ").await;
    let addr = base
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let good = reqwest::Client::new();
    assert_eq!(
        good.get(format!("{base}/ok"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // The audit's attack: each announces 1 MiB, sends all but one byte, and stalls.
    let mut stalled = Vec::new();
    let body = vec![b'x'; 1024 * 1024 - 1];
    for _ in 0..300 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST /files/upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n",
            1024 * 1024
        );
        s.write_all(head.as_bytes()).await.unwrap();
        // Some are closed over the limit or cut off while this still writes: fine.
        let _ = s.write_all(&body).await;
        stalled.push(s);
    }
    // Meanwhile a well-behaved script gets every answer: deadlines free the slots.
    for i in 0..20 {
        let answer = good
            .get(format!("{base}/ok"))
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        let status = answer.status();
        assert_eq!(status, 200, "request {i}: {}", answer.text().await.unwrap());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let peak_mib = peak_rss_kib(proxy.pid()) / 1024;
    // The budget (32 MiB) and small buffers per connection, not 300 bodies (438 MB before).
    eprintln!("peak {peak_mib} MiB");
    assert!(peak_mib < 160, "the proxy peaked at {peak_mib} MiB");
    assert!(refused(&ops, "files", "slow_body").await >= 1);
    drop(stalled);
    proxy.terminate().await;
}
