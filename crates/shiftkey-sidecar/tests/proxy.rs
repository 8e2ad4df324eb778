//! The proxy in front of the emulator, the way unchanged plant scripts use it, through a day in
//! tokio's paused time: the lifetime cap, idle kills, hard timeouts and a restart all happen, and
//! no rejection reaches the script. Each test reconciles with the emulator's own count of the
//! rejections it sent.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use shiftkey_auth::strategies::{ClientAuth, OAuthClient, ServiceAccount};
use shiftkey_auth::{TokenManager, TokioClock};
use shiftkey_http::AuthMiddleware;
use shiftkey_sidecar::{LocalLogin, Proxy, ProxyConfig, serve};
use shiftkey_sim::{Sim, SimConfig};
use tokio::time::sleep;

const H: u64 = 3600;

fn mins(m: u64) -> Duration {
    Duration::from_secs(m * 60)
}

async fn sim(cfg: SimConfig) -> Sim {
    Sim::start(cfg, Arc::new(TokioClock::new())).await.unwrap()
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Serves `proxy` on a loopback port, with the `Host` check a TCP proxy gets.
async fn start(proxy: Arc<Proxy>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let gate = serve::Gate::users(serve::Users::this_user(), proxy.refusals().clone());
    let router = serve::with_host_check_only(
        Arc::clone(&proxy).router(),
        serve::Hosts::loopback_and(&[]),
        gate.refusals.clone(),
    );
    tokio::spawn(serve::serve_tcp(
        listener,
        router,
        serve::ServeLimits::default(),
        gate,
    ));
    addr
}

fn bearer_proxy(sim: &Sim) -> Arc<Proxy> {
    bearer_proxy_holding(sim, shiftkey_sidecar::DEFAULT_REPLAY_LIMIT)
}

/// A proxy to the emulator's gateway that holds request bodies up to `replay_limit` bytes.
fn bearer_proxy_holding(sim: &Sim, replay_limit: usize) -> Arc<Proxy> {
    let oauth = OAuthClient::new(
        reqwest::Client::new(),
        format!("{}/oauth/token", sim.url()).parse().unwrap(),
        "shiftkey",
        ClientAuth::SecretBasic("shiftkey-secret".into()),
    );
    let manager = TokenManager::builder(ServiceAccount::new(oauth))
        .build()
        .unwrap();
    Proxy::new(
        ProxyConfig::new("gateway", sim.url().parse().unwrap()).replay_limit(replay_limit),
        no_redirects(),
        AuthMiddleware::builder(manager).build(),
    )
    .unwrap()
}

fn qname(v: &Value) -> &str {
    v[".QName"].as_str().unwrap_or_default()
}

#[tokio::test(start_paused = true)]
async fn a_script_with_a_stale_token_sees_no_401_through_a_day_of_caps_and_a_restart() {
    // The server claims 8 h and kills tokens at 4 h; it restarts at 13:00.
    let mut cfg = SimConfig::default();
    cfg.oauth.access_ttl_cap_secs = Some(4 * H);
    cfg.session.restart_at_hours = vec![13.0];
    let sim = sim(cfg).await;
    let proxy = bearer_proxy(&sim);
    let addr = start(Arc::clone(&proxy)).await;
    let script = reqwest::Client::new();
    let url = format!("http://{addr}/tc/RestServices/Core-2007-01-Session/getTCSessionInfo");
    // The script's pattern: the token it fetched once at start, every 15 minutes for a day.
    for i in 0..96 {
        let answer = script
            .post(&url)
            .header("Authorization", "Bearer the-token-from-this-morning")
            .json(&json!({"header": {"state": {}, "policy": {}}, "body": {}}))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200, "call {i}");
        let v: Value = answer.json().await.unwrap();
        assert!(
            qname(&v).ends_with("GetTCSessionInfoResponse"),
            "call {i}: {v}"
        );
        sleep(mins(15)).await;
    }
    let stats = proxy.stats();
    let sent = sim
        .stats()
        .exceptions
        .get("invalid_token")
        .copied()
        .unwrap_or(0);
    assert_eq!(stats.surfaced, 0, "{stats:?}");
    // The two deaths that teach the cap and the restart, at least; every one the server sent
    // was healed.
    assert!(sent >= 3, "the day had rejections to heal: {sent}");
    assert_eq!(stats.healed, sent, "{stats:?}");
    assert_eq!(sim.stats().killed.get("restart"), Some(&1));
    assert_eq!(stats.requests, 96);
}

fn teamcenter_proxy(sim: &Sim) -> Arc<Proxy> {
    let cfg = shiftkey_teamcenter::SessionConfig::new(
        sim.url().parse().unwrap(),
        "mfg_sync",
        "mfg_sync_pw".into(),
    );
    let tc = shiftkey_teamcenter::TcClient::session(no_redirects(), cfg).unwrap();
    Proxy::new(
        ProxyConfig::new("teamcenter", sim.url().parse().unwrap()).teamcenter([LocalLogin {
            user: "label_printer".to_owned(),
            password: "the-printer-s-own-local-secret".into(),
        }]),
        no_redirects(),
        tc.middleware().clone(),
    )
    .unwrap()
}

/// A Teamcenter script's SOA call through the proxy, with its (local) session cookie.
async fn soa(
    addr: SocketAddr,
    cookie: Option<&str>,
    operation: &str,
    body: Value,
) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .post(format!("http://{addr}/tc/JsonRestServices/{operation}"))
        .json(&json!({"header": {"state": {}, "policy": {}}, "body": body}));
    if let Some(c) = cookie {
        req = req.header("Cookie", c);
    }
    req.send().await.unwrap()
}

/// A script's `getTCSessionInfo` through the proxy, its answer.
async fn session_info(addr: SocketAddr, cookie: &str) -> Value {
    soa(
        addr,
        Some(cookie),
        "Core-2007-01-Session/getTCSessionInfo",
        json!({}),
    )
    .await
    .json()
    .await
    .unwrap()
}

async fn login(addr: SocketAddr, user: &str, password: &str) -> (Value, Option<String>) {
    let answer = soa(
        addr,
        None,
        "Core-2011-06-Session/login",
        json!({"credentials": {"user": user, "password": password, "group": "", "role": "", "locale": "", "descrimator": "script"}}),
    )
    .await;
    let cookie = answer
        .headers()
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned());
    (answer.json().await.unwrap(), cookie)
}

#[tokio::test(start_paused = true)]
async fn a_teamcenter_script_that_logs_in_once_reads_all_day_on_the_proxys_session() {
    // The default pool: busy from 08:00 to 18:00, so a session idle for 20 minutes dies then;
    // sessions die 8 h after login; the server restarts at 13:00.
    let mut cfg = SimConfig::default();
    cfg.session.restart_at_hours = vec![13.0];
    let sim = sim(cfg).await;
    let proxy = teamcenter_proxy(&sim);
    let addr = start(Arc::clone(&proxy)).await;

    // A wrong password is refused as the server would refuse it; nothing reaches the server.
    let (refused, cookie) = login(addr, "label_printer", "guess").await;
    assert!(
        qname(&refused).ends_with("InvalidCredentialsException"),
        "{refused}"
    );
    assert!(cookie.is_none());
    assert_eq!(
        sim.stats().exceptions.get("InvalidCredentialsException"),
        None,
        "the wrong password never went to the server"
    );
    // The service's own Teamcenter account is no local account: a script that knows (or
    // guesses) the real password learns nothing here.
    sleep(Duration::from_secs(1)).await;
    let (refused, cookie) = login(addr, "mfg_sync", "mfg_sync_pw").await;
    assert!(
        qname(&refused).ends_with("InvalidCredentialsException"),
        "{refused}"
    );
    assert!(cookie.is_none());
    // Without a local session nothing is forwarded: the server's answer to no session.
    let before = sim.stats().requests.values().sum::<u64>();
    let v: Value = soa(
        addr,
        None,
        "Core-2007-01-Session/getTCSessionInfo",
        json!({}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert!(qname(&v).ends_with("InvalidUserException"), "{v}");
    let v = session_info(addr, "JSESSIONID=made-up").await;
    assert!(qname(&v).ends_with("InvalidUserException"), "{v}");
    assert_eq!(sim.stats().requests.values().sum::<u64>(), before);

    let (answer, cookie) = login(addr, "label_printer", "the-printer-s-own-local-secret").await;
    assert!(
        qname(&answer).ends_with("Session.LoginResponse"),
        "{answer}"
    );
    let cookie = cookie.expect("a local JSESSIONID");
    // The script's pattern: logged in once, reads every 15 minutes and sometimes pauses for
    // 40 (a pause of more than 20 minutes in working hours is an idle kill).
    let mut reads = 0;
    let mut elapsed = 0;
    while elapsed < 24 * 60 {
        let v: Value = session_info(addr, &cookie).await;
        assert!(
            qname(&v).ends_with("GetTCSessionInfoResponse"),
            "at minute {elapsed}: {v}"
        );
        reads += 1;
        let pause = if reads % 5 == 0 { 40 } else { 15 };
        sleep(mins(pause)).await;
        elapsed += pause;
    }
    let stats = proxy.stats();
    let server = sim.stats();
    let sent = server
        .exceptions
        .get("InvalidUserException")
        .copied()
        .unwrap_or(0);
    // Hard timeouts never strike: the proxy logs in again before them (proactive refresh).
    for cause in ["idle", "restart"] {
        assert!(
            server.killed.get(cause).is_some_and(|n| *n > 0),
            "no {cause} death: {server:?}"
        );
    }
    assert_eq!(stats.surfaced, 0, "{stats:?}");
    assert_eq!(
        stats.healed, sent,
        "every InvalidUserException the server sent was healed"
    );
    assert_eq!(stats.logins, 1);
    assert_eq!(stats.logins_refused, 2);
    assert_eq!(stats.refused["no_session"], 2);
    // The script's own login never reached the server: every login there was the proxy's.
    let manager = proxy.middleware().manager().stats();
    assert_eq!(server.logins, manager.acquires, "{server:?} {manager:?}");
    assert!(manager.reactive >= sent.min(1), "{manager:?}");
    assert_eq!(stats.sessions.get("label_printer#1"), Some(&(reads + 1)));

    // Logging out ends the local session only; the proxy's session lives on. (The proxy logs
    // out the sessions it replaces: those are the logouts the server saw.)
    let logouts = || {
        sim.stats()
            .requests
            .get("Core-2006-03-Session/logout")
            .copied()
    };
    let before = logouts();
    let out = soa(
        addr,
        Some(&cookie),
        "Core-2006-03-Session/logout",
        json!({}),
    )
    .await;
    assert_eq!(out.status(), 200);
    assert!(proxy.stats().sessions.is_empty());
    assert_eq!(logouts(), before);
    // The ended session is refused like one the server ended.
    let v: Value = session_info(addr, &cookie).await;
    assert!(qname(&v).ends_with("InvalidUserException"), "{v}");
    // No spelling of a logout reaches the server with the shared session (Tomcat drops `;`
    // parameters and decodes `%6C`): each is answered here.
    let (_, cookie) = login(addr, "label_printer", "the-printer-s-own-local-secret").await;
    let cookie = cookie.unwrap();
    for op in [
        "Core-2006-03-Session/logout;jsessionid=x",
        "Core-2006-03-Session/%6Cogout",
    ] {
        let out = soa(addr, Some(&cookie), op, json!({})).await;
        assert_eq!(out.status(), 200, "{op}");
    }
    assert_eq!(logouts(), before);
    assert_eq!(proxy.stats().logouts, 2);
}

#[tokio::test(start_paused = true)]
async fn guessing_a_local_secret_is_paused_then_locked_out_and_the_server_sees_none_of_it() {
    let sim = sim(SimConfig::default()).await;
    let proxy = teamcenter_proxy(&sim);
    let addr = start(Arc::clone(&proxy)).await;
    // The audit's attack: 3 001 guesses as fast as one connection goes.
    let mut checked = 0;
    for i in 0..3001 {
        let (v, cookie) = login(addr, "label_printer", &format!("guess-{i}")).await;
        assert!(qname(&v).ends_with("InvalidCredentialsException"), "{v}");
        assert!(cookie.is_none());
        if i % 100 == 0 {
            // A second now and then: without it, every guess but the first is never checked.
            sleep(Duration::from_secs(1)).await;
            checked += 1;
        }
    }
    let refused = proxy.stats().refused;
    // At most 10 guesses were ever compared; the rest were refused unchecked.
    assert_eq!(refused["login"], 10, "{refused:?}");
    assert_eq!(
        refused["locked_out"],
        3001 - 10,
        "{refused:?} after {checked} pauses"
    );
    // Locked out: even the right secret is refused for a quarter of an hour.
    let (v, _) = login(addr, "label_printer", "the-printer-s-own-local-secret").await;
    assert!(qname(&v).ends_with("InvalidCredentialsException"), "{v}");
    sleep(Duration::from_secs(15 * 60)).await;
    let (v, cookie) = login(addr, "label_printer", "the-printer-s-own-local-secret").await;
    assert!(qname(&v).ends_with("Session.LoginResponse"), "{v}");
    assert!(cookie.is_some());
    assert_eq!(
        sim.stats().exceptions.get("InvalidCredentialsException"),
        None
    );
}

#[tokio::test(start_paused = true)]
async fn a_proxy_with_no_local_account_refuses_every_login() {
    let sim = sim(SimConfig::default()).await;
    let cfg = shiftkey_teamcenter::SessionConfig::new(
        sim.url().parse().unwrap(),
        "mfg_sync",
        "mfg_sync_pw".into(),
    );
    let tc = shiftkey_teamcenter::TcClient::session(no_redirects(), cfg).unwrap();
    let proxy = Proxy::new(
        ProxyConfig::new("teamcenter", sim.url().parse().unwrap()).teamcenter([]),
        no_redirects(),
        tc.middleware().clone(),
    )
    .unwrap();
    let addr = start(Arc::clone(&proxy)).await;
    for (user, password) in [("mfg_sync", "mfg_sync_pw"), ("", "")] {
        let (v, cookie) = login(addr, user, password).await;
        assert!(qname(&v).ends_with("InvalidCredentialsException"), "{v}");
        assert!(cookie.is_none());
    }
    // Every login the server saw was the proxy's own.
    assert_eq!(
        sim.stats().logins,
        proxy.middleware().manager().stats().acquires,
        "no script login reached the server"
    );
    assert_eq!(
        sim.stats().exceptions.get("InvalidCredentialsException"),
        None
    );
}

#[tokio::test(start_paused = true)]
async fn trace_and_unknown_methods_are_refused_and_never_carry_the_credential() {
    let sim = sim(SimConfig::default()).await;
    let proxy = bearer_proxy(&sim);
    let addr = start(Arc::clone(&proxy)).await;
    for method in ["TRACE", "TRACK", "PROPFIND", "FOO"] {
        let answer = reqwest::Client::new()
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                format!("http://{addr}/tc/RestServices/Core-2007-01-Session/getTCSessionInfo"),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 405, "{method}");
        assert!(answer.headers()["allow"].to_str().unwrap().contains("POST"));
    }
    assert_eq!(proxy.stats().forwarded, 0);
    assert_eq!(proxy.stats().refused["method"], 4);
}

#[tokio::test(start_paused = true)]
async fn a_body_over_the_replay_limit_is_sent_once_and_its_rejection_reaches_the_script() {
    let sim = sim(SimConfig::default()).await;
    // Bodies up to 64 bytes are held; the envelope below is longer.
    let proxy = bearer_proxy_holding(&sim, 64);
    let addr = start(Arc::clone(&proxy)).await;
    let url = format!("http://{addr}/tc/RestServices/Core-2007-01-Session/getTCSessionInfo");
    let long = json!({"header": {"state": {"clientVersion": "plant-script-1.0"}, "policy": {}}, "body": {}});
    let call = |body: Value| reqwest::Client::new().post(&url).json(&body).send();
    assert_eq!(call(long.clone()).await.unwrap().status(), 200);
    // A browser's request (any web page could send it) is refused and goes nowhere.
    let from_a_page = reqwest::Client::new()
        .post(&url)
        .header("Origin", "https://evil.example")
        .json(&long)
        .send()
        .await
        .unwrap();
    assert_eq!(from_a_page.status(), 403);
    assert_eq!(proxy.stats().forwarded, 1);
    // The server restarts: the token dies. The long body cannot be sent twice, so the
    // rejection reaches the script — as its server would have sent it.
    sleep(mins(1)).await;
    sim.restart();
    sleep(mins(1)).await;
    let refused = call(long.clone()).await.unwrap();
    assert_eq!(refused.status(), 401);
    assert!(
        refused.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("invalid_token")
    );
    assert_eq!(proxy.stats().surfaced, 1);
    // A refresh was started all the same: the next request goes through.
    assert_eq!(call(long).await.unwrap().status(), 200);
    // A short body is held and replayed: after the next restart its rejection is healed.
    sleep(mins(1)).await;
    sim.restart();
    sleep(mins(1)).await;
    assert_eq!(call(json!({"body": {}})).await.unwrap().status(), 200);
    assert_eq!(proxy.stats().healed, 1);
    assert_eq!(proxy.stats().surfaced, 1);
}

#[cfg(unix)]
#[tokio::test]
async fn a_unix_socket_proxy_serves_a_script_of_this_user() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let sim = sim(SimConfig::default()).await;
    let proxy = bearer_proxy(&sim);
    let dir = std::env::temp_dir().join(format!("shiftkey-sidecar-sock-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("gateway.sock");
    let listener = shiftkey_sidecar::unix::bind_socket(&path, "proxy.gateway.socket")
        .await
        .unwrap();
    let _file = shiftkey_sidecar::unix::SocketFile(path.clone());
    tokio::spawn(serve::serve_unix(
        listener,
        Arc::clone(&proxy).router(),
        serve::ServeLimits::default(),
        serve::Gate::default(),
    ));
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let body = r#"{"header":{"state":{},"policy":{}},"body":{}}"#;
    let mut stream = tokio::net::UnixStream::connect(&path).await.unwrap();
    stream
        .write_all(
            format!(
                "POST /tc/RestServices/Core-2007-01-Session/getTCSessionInfo HTTP/1.1\r\n\
                 Host: localhost\r\nAuthorization: Bearer stale\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_string(&mut answer))
        .await
        .expect("the proxy answered")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("GetTCSessionInfoResponse"), "{answer}");
    assert_eq!(proxy.stats().forwarded, 1);
    let _ = std::fs::remove_dir_all(&dir);
}
