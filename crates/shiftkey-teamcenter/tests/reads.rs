//! Sessions and reads against `shiftkey-sim`.

use std::sync::Arc;
use std::time::Duration;

use shiftkey_auth::strategies::{ClientAuth, OAuthClient, ServiceAccount};
use shiftkey_auth::{AuthError, PermanentKind, TokenManager, TokioClock};
use shiftkey_http::HttpError;
use shiftkey_sim::{Sim, SimConfig};
use shiftkey_teamcenter::{ReadConfig, SessionConfig, TcClient};
use tokio::time::sleep;

pub(crate) const H: u64 = 3600;

pub(crate) fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

pub(crate) fn quiet() -> SimConfig {
    let mut c = SimConfig::default();
    c.session.load_by_hour = [1; 24];
    c.session.load_noise = 0;
    c
}

pub(crate) async fn sim(cfg: SimConfig) -> Sim {
    Sim::start(cfg, Arc::new(TokioClock::new())).await.unwrap()
}

pub(crate) fn client(sim: &Sim, password: &str) -> TcClient {
    let cfg = SessionConfig::new(sim.url().parse().unwrap(), "mfg_sync", password.into());
    TcClient::session(reqwest::Client::new(), cfg).unwrap()
}

#[tokio::test(start_paused = true)]
async fn idle_hard_and_restart_deaths_heal_with_one_relogin_each() {
    // Idle: a busy pool kills a session left alone for 20 minutes.
    let mut busy = quiet();
    busy.session.load_by_hour = [5; 24];
    let s = sim(busy).await;
    let tc = client(&s, "mfg_sync_pw");
    tc.changed_since(None, &ReadConfig::default())
        .await
        .unwrap();
    sleep(secs(30 * 60)).await;
    let again = tc
        .changed_since(None, &ReadConfig::default())
        .await
        .unwrap();
    assert_eq!(again.plans.len(), 20, "the read completed");
    assert_eq!(s.stats().killed.get("idle"), Some(&1));
    assert_eq!(s.stats().logins, 2, "exactly one re-login for the death");

    // Hard: the server's hard timeout (2 h) is below what we assume (8 h).
    let mut hard = quiet();
    hard.session.hard_timeout_secs = 2 * H;
    let s = sim(hard).await;
    let tc = client(&s, "mfg_sync_pw");
    let _keepalive = tc.keepalive().unwrap();
    tc.session_info().await.unwrap();
    sleep(secs(2 * H + 60)).await;
    assert_eq!(
        tc.changed_since(None, &ReadConfig::default())
            .await
            .unwrap()
            .plans
            .len(),
        20
    );
    assert_eq!(s.stats().killed.get("hard"), Some(&1));

    // Restart in the middle of a read (every call takes a simulated second).
    let mut slow = quiet();
    slow.faults.latency_ms = 1000;
    let s = Arc::new(sim(slow).await);
    let tc = client(&s, "mfg_sync_pw");
    tc.session_info().await.unwrap();
    let restarter = {
        let s = Arc::clone(&s);
        tokio::spawn(async move {
            sleep(Duration::from_millis(2500)).await;
            s.restart();
        })
    };
    let read = tc
        .changed_since(None, &ReadConfig::default().with_chunk(5))
        .await
        .unwrap();
    restarter.await.unwrap();
    assert_eq!(read.plans.len(), 20);
    assert_eq!(s.stats().killed.get("restart"), Some(&1));
    assert_eq!(s.stats().logins, 2);
    assert_eq!(
        tc.middleware().stats().surfaced,
        0,
        "the caller saw no error"
    );
    assert_eq!(
        s.stats().stale_lines,
        0,
        "no line of the dead session was sent again"
    );
    assert_eq!(s.leaked_windows(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_wrong_password_fails_once_and_never_loops() {
    let s = sim(quiet()).await;
    let tc = client(&s, "not-the-password");
    let err = tc.session_info().await.unwrap_err();
    match err.http_error() {
        Some(HttpError::Token(AuthError::Permanent {
            kind: PermanentKind::BadCredentials,
            detail,
        })) => {
            assert!(detail.contains("515143"), "names the code: {detail}");
        }
        other => panic!("{err}: {other:?}"),
    }
    sleep(secs(H)).await;
    assert!(tc.session_info().await.is_err());
    assert_eq!(
        s.stats().login_failures,
        1,
        "one login attempt, no retry loop"
    );
}

#[tokio::test(start_paused = true)]
async fn invalid_user_is_recognised_under_200_401_and_500() {
    for status in [200u16, 401, 500] {
        let mut cfg = quiet();
        cfg.session.invalid_user_status = status;
        let s = sim(cfg).await;
        let tc = client(&s, "mfg_sync_pw");
        tc.session_info().await.unwrap();
        sleep(secs(1)).await;
        s.restart();
        sleep(secs(1)).await;
        tc.session_info()
            .await
            .unwrap_or_else(|e| panic!("HTTP {status}: {e}"));
        assert_eq!(s.stats().logins, 2, "HTTP {status}");
    }
}

#[tokio::test(start_paused = true)]
async fn gateway_mode_learns_an_enforced_lifetime_cap() {
    let mut cfg = quiet();
    cfg.oauth.access_ttl_cap_secs = Some(4 * H);
    let s = sim(cfg).await;
    let oauth = OAuthClient::new(
        reqwest::Client::new(),
        format!("{}/oauth/token", s.url()).parse().unwrap(),
        "shiftkey",
        ClientAuth::SecretBasic("shiftkey-secret".into()),
    );
    let manager = TokenManager::builder(ServiceAccount::new(oauth))
        .build()
        .unwrap();
    let tc = TcClient::gateway(reqwest::Client::new(), s.url().parse().unwrap(), manager);
    for _ in 0..(24 * 4) {
        tc.session_info().await.unwrap();
        sleep(secs(15 * 60)).await;
    }
    let stats = tc.middleware().stats();
    assert_eq!(stats.surfaced, 0);
    assert_eq!(
        stats.premature_deaths, 2,
        "two deaths teach the cap, then none"
    );
    assert!(tc.middleware().learned_limits().lifetime_cap.is_some());
}

#[tokio::test(start_paused = true)]
async fn a_pool_runs_distinct_sessions_that_heal_on_their_own() {
    let s = Arc::new(sim(quiet()).await);
    let cfg = SessionConfig::new(s.url().parse().unwrap(), "mfg_sync", "mfg_sync_pw".into());
    let pool = shiftkey_teamcenter::TcPool::new(reqwest::Client::new(), &cfg, 3, 2).unwrap();
    let calls: Vec<_> = (0..12)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                pool.call(
                    "Core-2007-01-Session/getTCSessionInfo",
                    serde_json::Value::Null,
                )
                .await
                .map(|_| ())
            })
        })
        .collect();
    for c in calls {
        c.await.unwrap().unwrap();
    }
    assert_eq!(
        s.stats().logins,
        3,
        "three sessions, three server processes"
    );
    let tokens: std::collections::BTreeSet<String> = pool
        .clients()
        .iter()
        .map(|c| {
            c.middleware()
                .manager()
                .try_token()
                .unwrap()
                .access_token
                .expose()
                .to_owned()
        })
        .collect();
    assert_eq!(tokens.len(), 3, "distinct JSESSIONIDs");
    // One session dies: only it logs in again.
    sleep(secs(1)).await;
    s.restart();
    sleep(secs(1)).await;
    pool.clients()[0].session_info().await.unwrap();
    assert_eq!(s.stats().logins, 4);
}

#[tokio::test(start_paused = true)]
async fn a_proactive_relogin_gets_a_fresh_server_process_and_retires_the_old_one() {
    // Logging in again with the same descrimator would re-attach to the old server process,
    // whose 8 h hard timeout runs on: the "refreshed" session would die anyway.
    let s = sim(quiet()).await;
    let tc = client(&s, "mfg_sync_pw");
    let _keepalive = tc.keepalive().unwrap();
    for _ in 0..(30 * 4) {
        tc.session_info().await.unwrap();
        sleep(secs(15 * 60)).await;
    }
    let stats = s.stats();
    assert_eq!(
        stats.killed.get("hard"),
        None,
        "no session reached its hard timeout: {stats:?}"
    );
    assert_eq!(
        tc.middleware().stats().recovered,
        0,
        "no session died under us"
    );
    assert!(
        (4..=6).contains(&stats.logins),
        "a re-login every 6.24-6.4 h over 30 h: {}",
        stats.logins
    );
    assert_eq!(
        stats.killed.get("logout").copied(),
        Some(stats.logins - 1),
        "each replaced session was logged out: {stats:?}"
    );
}

#[tokio::test]
async fn a_clear_text_teamcenter_url_is_refused_unless_loopback_or_allowed() {
    let cfg = SessionConfig::new(
        "http://tc.plant.invalid/".parse().unwrap(),
        "mfg_sync",
        "pw".into(),
    );
    let tc = TcClient::session(reqwest::Client::new(), cfg).unwrap();
    let err = tc.session_info().await.unwrap_err().to_string();
    assert!(err.contains("allow_insecure_http"), "{err}");
    // Loopback is this machine: the emulator on 127.0.0.1 is served over http.
    let s = sim(quiet()).await;
    client(&s, "mfg_sync_pw").session_info().await.unwrap();
}

/// Sessions are logged in when first needed and logged out when ended; the keepalive sends
/// `{}` (a validating server refuses `"body": null`), keeps the session through idle hours, and
/// never logs in by itself. Against a server that accepts `null` too, the same.
#[tokio::test(start_paused = true)]
async fn a_session_is_opened_on_demand_kept_alive_and_logged_out_when_ended() {
    for refuse_null_body in [true, false] {
        let mut busy = quiet();
        busy.session.load_by_hour = [5; 24];
        busy.tc.refuse_null_body = refuse_null_body;
        let s = sim(busy).await;
        let tc = client(&s, "mfg_sync_pw");
        let _keepalive = tc.keepalive().unwrap();
        sleep(secs(H)).await;
        assert_eq!(s.stats().logins, 0, "nothing needed a session yet");
        assert!(!tc.end_session().await, "no session to end");

        tc.session_info().await.unwrap();
        assert_eq!(s.live_sessions(), 1);
        // Idle for three hours on a busy pool (20-minute soft timeout): the keepalive holds it.
        sleep(secs(3 * H)).await;
        let stats = tc.middleware().stats();
        assert!(stats.keepalives >= 6, "{stats:?}");
        assert_eq!(stats.keepalives_failed, 0, "{stats:?}");
        assert_eq!(s.stats().killed.get("idle"), None, "{:?}", s.stats());

        assert!(tc.end_session().await);
        assert_eq!(s.live_sessions(), 0);
        assert_eq!(s.stats().killed.get("logout"), Some(&1));
        // Released: no keepalive logs in again, for hours.
        sleep(secs(3 * H)).await;
        assert_eq!(s.stats().logins, 1, "{:?}", s.stats());
        // The next call logs in again.
        tc.session_info().await.unwrap();
        assert_eq!((s.stats().logins, s.live_sessions()), (2, 1));
        assert!(tc.end_session().await);
        assert_eq!(
            s.stats().exceptions.get("InternalServerException"),
            None,
            "refuse_null_body = {refuse_null_body}: no call sent null"
        );
    }
}

/// The emulator's setting for an unverified fact: a validating server refuses `"body": null`
/// (as older versions sent on every keepalive) with HTTP 500; the other accepts it.
#[tokio::test(start_paused = true)]
async fn the_emulator_refuses_a_null_body_only_when_it_validates_the_envelope() {
    for (refuse, status) in [(true, 500), (false, 200)] {
        let mut c = quiet();
        c.tc.refuse_null_body = refuse;
        let s = sim(c).await;
        let tc = client(&s, "mfg_sync_pw");
        tc.session_info().await.unwrap();
        let cookie = tc.middleware().manager().try_token().unwrap();
        let answer = reqwest::Client::new()
            .post(format!(
                "{}/tc/JsonRestServices/Core-2007-01-Session/getTCSessionInfo",
                s.url()
            ))
            .header(
                "cookie",
                format!("JSESSIONID={}", cookie.access_token.expose()),
            )
            .body(r#"{"header":{"state":{},"policy":{}},"body":null}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(
            answer.status().as_u16(),
            status,
            "refuse_null_body = {refuse}"
        );
    }
}

/// Every re-login is counted as the server counts logins: the first, and one reactive per
/// death, also for a session that served and died right after a reactive re-login (two restarts
/// back to back).
#[tokio::test(start_paused = true)]
async fn every_relogin_is_counted_as_the_server_counts_it() {
    let s = sim(quiet()).await;
    let tc = client(&s, "mfg_sync_pw");
    tc.session_info().await.unwrap();
    // Restarts a second apart: each kills a session that had just served, within the minimum
    // interval of the reactive re-login that made it.
    for _ in 0..4 {
        sleep(secs(1)).await;
        s.restart();
        tc.session_info().await.unwrap();
    }
    let stats = tc.middleware().manager().stats();
    let logins = s.stats().logins;
    assert_eq!(logins, 5, "{:?}", s.stats());
    assert_eq!(stats.acquires, logins, "{stats:?}");
    assert_eq!(stats.reactive + stats.proactive + 1, logins, "{stats:?}");
    assert_eq!(tc.middleware().stats().surfaced, 0);
}
