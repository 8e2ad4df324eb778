//! The emulator's own tests: wire shapes, each timeout kind, rotation reuse, determinism.
//! Paused time on one thread: client and server share the runtime, so time only jumps when both
//! are idle.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use shiftkey_auth::TokioClock;
use shiftkey_sim::{Sim, SimConfig};
use tokio::time::sleep;

const H: u64 = 3600;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

struct Client {
    http: reqwest::Client,
    base: String,
    cookie: Option<String>,
}

impl Client {
    fn new(sim: &Sim) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: sim.url(),
            cookie: None,
        }
    }

    async fn call(&mut self, op: &str, body: Value) -> (u16, String, Value) {
        let mut req = self
            .http
            .post(format!("{}/tc/JsonRestServices/{op}", self.base))
            .body(json!({"header": {"state": {}, "policy": {}}, "body": body}).to_string());
        if let Some(c) = &self.cookie {
            req = req.header("cookie", format!("JSESSIONID={c}"));
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        if let Some(set) = resp
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
        {
            self.cookie = set
                .split(';')
                .next()
                .and_then(|kv| kv.strip_prefix("JSESSIONID="))
                .map(str::to_owned);
        }
        let text = resp.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        (status, text, json)
    }

    async fn login(&mut self, user: &str, password: &str) -> (u16, Value) {
        let (s, _, v) = self.call("Core-2011-06-Session/login", json!({"credentials": {"user": user, "password": password, "group": "", "role": "", "locale": "en_US", "descrimator": "t"}})).await;
        (s, v)
    }

    async fn info(&mut self) -> Value {
        self.call("Core-2007-01-Session/getTCSessionInfo", json!({}))
            .await
            .2
    }
}

fn qname(v: &Value) -> &str {
    v[".QName"].as_str().unwrap_or_default()
}

async fn sim(cfg: SimConfig) -> Sim {
    Sim::start(cfg, Arc::new(TokioClock::new())).await.unwrap()
}

fn quiet() -> SimConfig {
    let mut c = SimConfig::default();
    c.session.load_by_hour = [1; 24];
    c.session.load_noise = 0;
    c
}

#[tokio::test(start_paused = true)]
async fn login_and_session_info_have_the_documented_shapes() {
    let s = sim(SimConfig::default()).await;
    let mut c = Client::new(&s);
    let (status, v) = c.login("mfg_sync", "mfg_sync_pw").await;
    assert_eq!(status, 200);
    assert_eq!(
        qname(&v),
        "http://teamcenter.com/Schemas/Core/2011-06/Session.LoginResponse"
    );
    for k in [
        "DisplayVersion",
        "HostName",
        "Locale",
        "LogFile",
        "SiteLocale",
        "TcServerID",
        "UserID",
        "Version",
    ] {
        assert!(v["serverInfo"][k].is_string(), "serverInfo.{k}");
    }
    assert_eq!(
        v["partialErrors"][0]["errorValues"][0]["code"], 214102,
        "a warning that still means success"
    );
    assert!(c.cookie.is_some(), "JSESSIONID cookie");
    let info = c.info().await;
    assert!(qname(&info).ends_with("Session.GetTCSessionInfoResponse"));
    for k in ["TcServerID", "hostName", "syslogFile", "TCServerLocale"] {
        assert!(info["extraInfo"][k].is_string(), "extraInfo.{k}");
    }
    // The same user and descrimator share one server process (one session).
    let first = c.cookie.clone();
    c.login("mfg_sync", "mfg_sync_pw").await;
    assert_eq!(c.cookie, first);
}

#[tokio::test(start_paused = true)]
async fn exceptions_travel_in_the_body_with_their_real_shapes() {
    let s = sim(SimConfig::default()).await;
    let mut c = Client::new(&s);
    let (status, _, v) = c
        .call("Core-2007-01-Session/getTCSessionInfo", json!({}))
        .await;
    assert_eq!(
        status, 200,
        "InvalidUserException under HTTP 200 by default"
    );
    assert_eq!(
        v,
        json!({".QName": "http://teamcenter.com/Schemas/Soa/2006-03/Exceptions.InvalidUserException", "ssoServerURL": "", "ssoAppID": "", "code": 1000, "level": 3, "tcresponse": "Teamcenter", "message": "User does not have a valid session."})
    );
    let (_, v) = c.login("mfg_sync", "wrong").await;
    assert!(qname(&v).ends_with("Exceptions.InvalidCredentialsException"));
    assert_eq!(v["code"], 515143);
    let (_, v) = c.login("", "x").await;
    assert_eq!(v["code"], 1007);
    assert_eq!(s.stats().login_failures, 2);
    let resp = reqwest::Client::new()
        .post(format!(
            "{}/tc/JsonRestServices/Core-2007-01-Session/getTCSessionInfo",
            s.url()
        ))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 500);
    let v: Value = resp.json().await.unwrap();
    assert!(qname(&v).ends_with("Exceptions.InternalServerException"));
    assert_eq!(
        (
            v["messages"][0]["code"].clone(),
            v["messages"][1]["code"].clone()
        ),
        (json!(214022), json!(214004))
    );
    // Logging out of a dead session answers XML, even here.
    let (status, text, _) = c.call("Core-2006-03-Session/logout", json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(
        text,
        r#"<ns1:ServiceData xmlns:ns1="http://teamcenter.com/Schemas/Soa/2006-03/Base"/>"#
    );

    for code in [401u16, 500] {
        let mut cfg = SimConfig::default();
        cfg.session.invalid_user_status = code;
        let s = sim(cfg).await;
        let (status, _, v) = Client::new(&s)
            .call("Core-2007-01-Session/getTCSessionInfo", json!({}))
            .await;
        assert_eq!(status, code);
        assert_eq!(v["code"], 1000);
    }
}

#[tokio::test(start_paused = true)]
async fn data_operations_return_service_data_with_string_db_values() {
    let s = sim(SimConfig::default()).await;
    let mut c = Client::new(&s);
    c.login("mfg_sync", "mfg_sync_pw").await;
    let (_, _, found) = c
        .call("Query-2012-10-Finder/performSearch", json!({"searchInput": {"providerName": "Mfg0ChangedProcessProvider", "searchCriteria": {"type": "MEProcessRevision", "modifiedSince": "2000-01-01T00:00:00+0000"}, "startIndex": 0, "maxToReturn": 5}}))
        .await;
    assert_eq!(found["totalFound"], 20, "2 plants × 10 plans");
    assert_eq!(found["totalLoaded"], 5);
    let uid = found["searchResults"][0]["uid"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, _, sd) = c
        .call(
            "Core-2007-09-DataManagement/loadObjects",
            json!({"uids": [uid, "AAAAAAAAAAAAAA"]}),
        )
        .await;
    let obj = &sd["modelObjects"][&uid];
    assert_eq!(obj["className"], "MEProcessRevision");
    for (_, p) in obj["props"].as_object().unwrap() {
        assert!(
            p["dbValues"]
                .as_array()
                .unwrap()
                .iter()
                .all(Value::is_string),
            "dbValues are strings"
        );
    }
    assert!(
        shiftkey_sim::parse_tc_date(
            obj["props"]["last_mod_date"]["dbValues"][0]
                .as_str()
                .unwrap()
        )
        .is_some(),
        "dates in yyyy-MM-ddTHH:mm:ss+zzzz"
    );
    assert_eq!(
        sd["partialErrors"][0]["uid"], "AAAAAAAAAAAAAA",
        "the null UID is reported, not crashed on"
    );
    let (_, _, props) = c
        .call(
            "Core-2006-03-DataManagement/getProperties",
            json!({"objects": [{"uid": uid}], "attributes": ["item_id"]}),
        )
        .await;
    assert_eq!(
        props["modelObjects"][&uid]["props"]
            .as_object()
            .unwrap()
            .len(),
        1
    );
    let (_, _, tree) = c
        .call(
            "Cad-2007-01-StructureManagement/expandPSOneLevel",
            json!({"input": {"parentBomLines": [uid]}}),
        )
        .await;
    assert_eq!(
        tree["output"][0]["children"].as_array().unwrap().len(),
        8,
        "8 operations per plan"
    );
}

#[tokio::test(start_paused = true)]
async fn the_hard_timeout_kills_a_session_exactly_when_configured() {
    let s = sim(quiet()).await;
    let mut c = Client::new(&s);
    c.login("mfg_sync", "mfg_sync_pw").await;
    for _ in 0..47 {
        sleep(secs(600)).await;
        assert!(qname(&c.info().await).ends_with("GetTCSessionInfoResponse"));
    }
    sleep(secs(599)).await; // 7 h 59 min 59 s after login
    assert!(qname(&c.info().await).ends_with("GetTCSessionInfoResponse"));
    sleep(secs(1)).await; // 8 h
    assert!(qname(&c.info().await).ends_with("InvalidUserException"));
    assert_eq!(s.stats().killed.get("hard"), Some(&1));
}

#[tokio::test(start_paused = true)]
async fn the_soft_timeout_kills_only_while_the_pool_is_busy() {
    let mut busy = quiet();
    busy.session.load_by_hour = [5; 24];
    let s = sim(busy).await;
    let mut c = Client::new(&s);
    c.login("mfg_sync", "mfg_sync_pw").await;
    sleep(secs(1199)).await;
    assert!(
        qname(&c.info().await).ends_with("GetTCSessionInfoResponse"),
        "19:59 idle is fine"
    );
    sleep(secs(1200)).await;
    assert!(
        qname(&c.info().await).ends_with("InvalidUserException"),
        "20 min idle on a busy pool"
    );
    assert_eq!(s.stats().killed.get("idle"), Some(&1));

    let s = sim(quiet()).await;
    let mut c = Client::new(&s);
    c.login("mfg_sync", "mfg_sync_pw").await;
    sleep(secs(3 * H)).await;
    assert!(
        qname(&c.info().await).ends_with("GetTCSessionInfoResponse"),
        "a quiet pool lets idle sessions live"
    );
}

#[tokio::test(start_paused = true)]
async fn a_restart_kills_every_session() {
    let mut cfg = quiet();
    cfg.session.restart_at_hours = vec![2.0];
    let s = sim(cfg).await;
    let (mut a, mut b) = (Client::new(&s), Client::new(&s));
    a.login("mfg_sync", "mfg_sync_pw").await;
    b.call("Core-2011-06-Session/login", json!({"credentials": {"user": "mfg_sync", "password": "mfg_sync_pw", "descrimator": "other"}})).await;
    sleep(secs(2 * H + 1)).await;
    assert!(qname(&a.info().await).ends_with("InvalidUserException"));
    assert!(qname(&b.info().await).ends_with("InvalidUserException"));
    assert_eq!(s.stats().killed.get("restart"), Some(&2));
    a.login("mfg_sync", "mfg_sync_pw").await;
    sleep(secs(1)).await;
    s.restart();
    sleep(secs(1)).await;
    assert!(qname(&a.info().await).ends_with("InvalidUserException"));
}

async fn grant(s: &Sim, form: &[(&str, &str)]) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{}/oauth/token", s.url()))
        .basic_auth("shiftkey", Some("shiftkey-secret"))
        .form(form)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

async fn gateway(s: &Sim, token: &str) -> u16 {
    reqwest::Client::new()
        .post(format!(
            "{}/tc/RestServices/Core-2007-01-Session/getTCSessionInfo",
            s.url()
        ))
        .bearer_auth(token)
        .body(r#"{"header":{},"body":{}}"#)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(start_paused = true)]
async fn reusing_a_rotated_refresh_token_revokes_the_family() {
    let s = sim(quiet()).await;
    let (_, first) = grant(
        &s,
        &[
            ("grant_type", "password"),
            ("username", "mfg_sync"),
            ("password", "mfg_sync_pw"),
        ],
    )
    .await;
    let rt1 = first["refresh_token"].as_str().unwrap().to_owned();
    let (status, second) = grant(
        &s,
        &[("grant_type", "refresh_token"), ("refresh_token", &rt1)],
    )
    .await;
    assert_eq!(status, 200);
    let rt2 = second["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(rt1, rt2, "rotated");
    let at2 = second["access_token"].as_str().unwrap().to_owned();
    assert_eq!(gateway(&s, &at2).await, 200);
    let (status, err) = grant(
        &s,
        &[("grant_type", "refresh_token"), ("refresh_token", &rt1)],
    )
    .await;
    assert_eq!(
        (status, err["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    let (_, err) = grant(
        &s,
        &[("grant_type", "refresh_token"), ("refresh_token", &rt2)],
    )
    .await;
    assert_eq!(
        err["error"], "invalid_grant",
        "the newest refresh token died with its family"
    );
    assert_eq!(gateway(&s, &at2).await, 401, "and so did its access token");
    let (_, cc) = grant(&s, &[("grant_type", "client_credentials")]).await;
    assert!(
        cc["refresh_token"].is_null(),
        "client_credentials has no refresh token"
    );
}

#[tokio::test(start_paused = true)]
async fn a_lifetime_cap_below_expires_in_is_enforced() {
    let mut cfg = quiet();
    cfg.oauth.access_ttl_cap_secs = Some(4 * H);
    let s = sim(cfg).await;
    let (_, t) = grant(&s, &[("grant_type", "client_credentials")]).await;
    assert_eq!(t["expires_in"], 8 * H, "the server claims 8 h");
    let at = t["access_token"].as_str().unwrap().to_owned();
    sleep(secs(4 * H - 1)).await;
    assert_eq!(gateway(&s, &at).await, 200);
    sleep(secs(1)).await;
    assert_eq!(gateway(&s, &at).await, 401, "but enforces 4 h");
    assert_eq!(s.stats().killed.get("cap"), Some(&1));
}

#[tokio::test(start_paused = true)]
async fn same_seed_same_data_same_faults() {
    let mut cfg = quiet();
    cfg.faults.rate_limit_probability = 0.2;
    cfg.faults.server_error_probability = 0.1;
    cfg.faults.date_skew_secs = 600;
    let run = |cfg: SimConfig| async move {
        // A fixed simulated start, so the generated dates do not depend on when the run began.
        let start = std::time::UNIX_EPOCH + secs(1_800_000_000);
        let s = Sim::start(cfg, Arc::new(shiftkey_sim::ScaledClock::new(start, 1.0)))
            .await
            .unwrap();
        let mut statuses = Vec::new();
        for _ in 0..60 {
            let resp = reqwest::Client::new()
                .post(format!("{}/oauth/token", s.url()))
                .basic_auth("shiftkey", Some("shiftkey-secret"))
                .form(&[("grant_type", "client_credentials")])
                .send()
                .await
                .unwrap();
            if resp.status() == 429 {
                assert!(resp.headers().get("retry-after").is_some());
            }
            statuses.push(resp.status().as_u16());
        }
        let data = s.with_data(|d| d.objects().clone());
        (statuses, data, s.stats().faults)
    };
    let (a, data_a, faults_a) = run(cfg.clone()).await;
    let (b, data_b, _) = run(cfg.clone()).await;
    assert_eq!(a, b, "same faults in the same order");
    assert_eq!(data_a, data_b, "same data");
    assert!(
        faults_a.get("rate_limited").copied().unwrap_or(0) > 0
            && faults_a.get("server_error").copied().unwrap_or(0) > 0,
        "{faults_a:?}"
    );
    cfg.data.seed = 99;
    let (_, data_c, _) = run(cfg).await;
    assert_ne!(
        data_a.keys().collect::<Vec<_>>(),
        data_c.keys().collect::<Vec<_>>(),
        "another seed, other data"
    );
}

#[tokio::test(start_paused = true)]
async fn the_date_header_carries_the_configured_skew_and_changes_stream_in() {
    let mut cfg = quiet();
    cfg.faults.date_skew_secs = -600;
    let s = sim(cfg).await;
    let resp = reqwest::Client::new()
        .post(format!("{}/oauth/token", s.url()))
        .send()
        .await
        .unwrap();
    let date = httpdate::parse_http_date(resp.headers()["date"].to_str().unwrap()).unwrap();
    let wall = shiftkey_auth::Clock::wall(&TokioClock::new());
    let behind = wall.duration_since(date).unwrap_or_default();
    assert!(behind >= secs(598) && behind <= secs(602), "{behind:?}");
    let before = s.with_data(|d| d.changes_applied());
    sleep(secs(10 * H)).await;
    let after = s.with_data(|d| d.changes_applied());
    assert_eq!(after - before, 60, "6 changes per simulated hour");
}

#[tokio::test]
async fn a_dropped_connection_cuts_the_answer() {
    let mut cfg = quiet();
    cfg.faults.drop_probability = 1.0;
    let s = Sim::start(cfg, Arc::new(shiftkey_auth::TokioClock::new()))
        .await
        .unwrap();
    let sent = reqwest::Client::new()
        .post(format!("{}/oauth/token", s.url()))
        .basic_auth("shiftkey", Some("shiftkey-secret"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await;
    // Depending on when the connection dies, the client sees it on the head or the body.
    let outcome = match sent {
        Err(e) => Err(e),
        Ok(resp) => resp.bytes().await.map(|_| ()),
    };
    assert!(outcome.is_err(), "the answer is cut: {outcome:?}");
    assert_eq!(s.stats().faults.get("dropped"), Some(&1));
}

#[tokio::test]
async fn stats_are_served_as_json_with_grants_by_client() {
    let s = Sim::start(quiet(), Arc::new(shiftkey_auth::TokioClock::new()))
        .await
        .unwrap();
    let http = reqwest::Client::new();
    http.post(format!("{}/oauth/token", s.url()))
        .basic_auth("shiftkey", Some("shiftkey-secret"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = http
        .get(format!("{}/sim/stats", s.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["grants_by_client"]["shiftkey"], 1, "{v}");
    assert_eq!(v["grants"]["client_credentials"], 1, "{v}");
}
