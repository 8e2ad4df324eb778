//! The emulator's own tests: wire shapes, each timeout kind, rotation reuse, determinism.
//! Paused time on one thread: client and server share the runtime, so time only jumps when both
//! are idle.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use shiftkey_clock::TokioClock;
use shiftkey_sim::{HangTarget, Sim, SimConfig};
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
        self.call_with(op, body, json!({})).await
    }

    async fn call_with(&mut self, op: &str, body: Value, policy: Value) -> (u16, String, Value) {
        let mut req = self
            .http
            .post(format!("{}/tc/JsonRestServices/{op}", self.base))
            .body(json!({"header": {"state": {}, "policy": policy}, "body": body}).to_string());
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

/// The saved query `Item Revision...`: find it, check its entries.
async fn item_revision_query(c: &mut Client) -> String {
    let (_, _, found) = c
        .call_with(
            "Query-2010-04-SavedQuery/findSavedQueries",
            json!({"inputCriteria": [{"queryNames": ["Item Rev*"], "queryDescs": [""], "queryType": 0}]}),
            json!({"types": [{"name": "ImanQuery", "properties": [{"name": "query_name"}]}]}),
        )
        .await;
    let uid = found["savedQueries"][0]["uid"].as_str().unwrap().to_owned();
    assert_eq!(
        found["ServiceData"]["modelObjects"][&uid]["props"]["query_name"]["dbValues"][0],
        "Item Revision..."
    );
    let (_, _, described) = c
        .call(
            "Query-2006-03-SavedQuery/describeSavedQueries",
            json!({"queries": [uid]}),
        )
        .await;
    let entries: Vec<&str> = described["fieldLists"][0]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["entryName"].as_str().unwrap())
        .collect();
    assert!(
        entries.contains(&"Type") && entries.contains(&"Modified After"),
        "{entries:?}"
    );
    assert!(described["fieldLists"][0]["fields"][0]["attributeType"].is_i64());
    uid
}

fn execute(query: &str, entries: &[&str], values: &[&str]) -> Value {
    json!({"input": [{"query": {"uid": query, "type": "ImanQuery"}, "entries": entries, "values": values,
        "limitList": [], "maxNumToReturn": 0, "resultsType": 0, "requestId": "", "clientId": "t"}]})
}

fn expand(lines: &[&str]) -> Value {
    json!({"input": {"parentBomLines": lines, "excludeFilter": "None"}, "pref": {"expItemRev": false, "info": []}})
}

const OPEN: &str = "Manufacturing-2011-06-DataManagement/openContexts";
const EXPAND: &str = "Cad-2007-01-StructureManagement/expandPSOneLevel";

fn open(plan: &str) -> Value {
    json!({"input": [{"object": {"uid": plan, "type": "MEProcessRevision"}, "openViews": false,
        "openAssociatedContexts": false, "contextSettings": {}}]})
}

#[tokio::test(start_paused = true)]
async fn the_read_path_answers_in_the_documented_shapes() {
    let s = sim(SimConfig::default()).await;
    let mut c = Client::new(&s);
    c.login("mfg_sync", "mfg_sync_pw").await;
    let q = item_revision_query(&mut c).await;
    let (status, _, found) = c
        .call(
            "Query-2008-06-SavedQuery/executeSavedQueries",
            execute(
                &q,
                &["Type", "Modified After"],
                &["MEProcessRevision", "01-Jan-2000 00:00"],
            ),
        )
        .await;
    assert_eq!(status, 200);
    let uids: Vec<String> = found["arrayOfResults"][0]["objectUIDS"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(uids.len(), 20, "2 plants × 10 plans");
    let plan = uids[0].clone();
    let (_, _, sd) = c
        .call_with(
            "Core-2007-09-DataManagement/loadObjects",
            json!({"uids": [plan, "AAAAAAAAAAAAAA"]}),
            json!({"types": [{"name": "ItemRevision", "properties": [{"name": "item_id"}, {"name": "last_mod_date"}]}]}),
        )
        .await;
    assert_eq!(
        sd[".QName"],
        "http://teamcenter.com/Schemas/Soa/2006-03/Base.ServiceData"
    );
    let obj = &sd["modelObjects"][&plan];
    assert_eq!(obj["type"], "MEProcessRevision");
    assert_eq!(
        obj["props"].as_object().unwrap().len(),
        2,
        "exactly what the policy asked for (ItemRevision applies to its subtypes)"
    );
    assert!(
        shiftkey_sim::parse_tc_date(
            obj["props"]["last_mod_date"]["dbValues"][0]
                .as_str()
                .unwrap()
        )
        .is_some()
    );
    assert_eq!(
        sd["partialErrors"][0]["uid"], "AAAAAAAAAAAAAA",
        "the null UID is reported, not crashed on"
    );
    // Without a policy: the server's default (object_string only).
    let (_, _, bare) = c
        .call(
            "Core-2007-09-DataManagement/loadObjects",
            json!({"uids": [plan]}),
        )
        .await;
    assert!(bare["modelObjects"][&plan]["props"]["item_id"].is_null());

    let (_, _, opened) = c.call(OPEN, open(&plan)).await;
    let top = opened["output"][0]["contexts"][0]["context"]["uid"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(top.starts_with("SR::N::Mfg0BvrProcess.."), "{top}");
    assert_eq!(opened["ServiceData"]["created"][0], top.as_str());
    let (_, _, tree) = c
        .call_with(
            EXPAND,
            expand(&[&top]),
            json!({"types": [{"name": "BOMLine", "properties": [{"name": "bl_sequence_no"}]},
                             {"name": "Mfg0BvrOperation", "properties": [{"name": "Mfg0consumed_material"}]}]}),
        )
        .await;
    let children = tree["output"][0]["children"].as_array().unwrap();
    assert_eq!(children.len(), 8, "8 operations per plan");
    let line = children[0]["bomLine"]["uid"].as_str().unwrap().to_owned();
    assert_eq!(children[0]["bomLine"]["type"], "Mfg0BvrOperation");
    assert_eq!(children[0]["itemRevOfBOMLine"]["type"], "MEOPRevision");
    let props = &tree["ServiceData"]["modelObjects"][&line]["props"];
    assert_eq!(props["bl_sequence_no"]["dbValues"][0], "10");
    assert!(props["Mfg0consumed_material"]["dbValues"].is_array());
    let (_, _, named) = c
        .call(
            "Core-2006-03-DataManagement/getProperties",
            json!({"objects": [line], "attributes": ["bl_item_item_id"]}),
        )
        .await;
    assert!(
        named["modelObjects"][&line]["props"]["bl_item_item_id"]["dbValues"][0]
            .as_str()
            .unwrap()
            .contains("-OP010")
    );
    let rev = children[0]["itemRevOfBOMLine"]["uid"].as_str().unwrap();
    let (_, _, grm) = c
        .call_with(
            "Core-2007-09-DataManagement/expandGRMRelationsForPrimary",
            json!({"primaryObjects": [{"uid": rev}], "pref": {"expItemRev": false, "returnRelations": true,
                "info": [{"relationTypeName": "IMAN_MEWorkInstruction", "otherSideObjectTypes": []}]}}),
            json!({"types": [{"name": "Dataset", "properties": [{"name": "object_name"}]}]}),
        )
        .await;
    let rd = &grm["output"][0]["relationshipData"][0];
    assert_eq!(rd["relationName"], "IMAN_MEWorkInstruction");
    assert_eq!(
        rd["relationshipObjects"][0]["otherSideObject"]["type"],
        "PDF"
    );
    assert_eq!(s.leaked_windows(), 1);
    let (_, _, closed) = c
        .call(
            "Manufacturing-2011-06-DataManagement/closeContexts",
            json!({"contexts": [top]}),
        )
        .await;
    assert_eq!(closed["deleted"][0], top.as_str());
    assert_eq!(s.leaked_windows(), 0);
    let st = s.stats();
    assert_eq!(
        (st.windows_opened, st.windows_closed, st.stale_lines),
        (1, 1, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn what_teamcenter_refuses_is_refused() {
    let s = sim(quiet()).await;
    let mut c = Client::new(&s);
    c.login("mfg_sync", "mfg_sync_pw").await;
    let refused = |status: u16, v: &Value, code: i64| {
        assert_eq!(status, 500, "{v}");
        assert!(qname(v).ends_with("InternalServerException"), "{v}");
        assert_eq!(v["messages"][0]["code"], code, "{v}");
    };
    // Active Workspace search providers do not exist on a plain 12.4 server.
    let (st, _, v) = c
        .call(
            "Query-2012-10-Finder/performSearch",
            json!({"searchInput": {"providerName": "Mfg0ChangedProcessProvider"}}),
        )
        .await;
    refused(st, &v, 214_004);
    let q = item_revision_query(&mut c).await;
    // `inputs` is the key of executeBusinessObjectQueries, not of executeSavedQueries.
    let (st, _, v) = c
        .call(
            "Query-2008-06-SavedQuery/executeSavedQueries",
            json!({"inputs": []}),
        )
        .await;
    refused(st, &v, 214_086);
    // An ISO date where the display form is expected; an entry the query lacks.
    for (entries, values) in [
        (
            ["Type", "Modified After"],
            ["MEProcessRevision", "2024-01-01T00:00:00+00:00"],
        ),
        (
            ["Type", "Modified Since"],
            ["MEProcessRevision", "01-Jan-2024 00:00"],
        ),
    ] {
        let (st, _, v) = c
            .call(
                "Query-2008-06-SavedQuery/executeSavedQueries",
                execute(&q, &entries, &values),
            )
            .await;
        assert_eq!(st, 200);
        assert!(
            v["arrayOfResults"][0]["objectUIDS"]
                .as_array()
                .unwrap()
                .is_empty()
        );
        let message = v["ServiceData"]["partialErrors"][0]["errorValues"][0]["message"]
            .as_str()
            .unwrap();
        assert!(message.contains(entries[1]), "names the entry: {message}");
    }
    let (_, _, found) = c
        .call(
            "Query-2008-06-SavedQuery/executeSavedQueries",
            execute(&q, &["Type"], &["MEProcessRevision"]),
        )
        .await;
    let plan = found["arrayOfResults"][0]["objectUIDS"][0]
        .as_str()
        .unwrap()
        .to_owned();
    // expandPSOneLevel takes lines of an open window, not revisions.
    let (st, _, v) = c.call(EXPAND, expand(&[&plan])).await;
    assert_eq!(st, 200);
    assert_eq!(v["ServiceData"]["partialErrors"][0]["uid"], plan.as_str());
    assert!(v["output"].as_array().unwrap().is_empty());
    // Without excludeFilter / pref the body does not match the schema.
    let (st, _, v) = c
        .call(EXPAND, json!({"input": {"parentBomLines": [plan]}}))
        .await;
    refused(st, &v, 214_086);
    // A property the type does not have.
    let (_, _, v) = c
        .call(
            "Core-2006-03-DataManagement/getProperties",
            json!({"objects": [plan], "attributes": ["mfg0sequence"]}),
        )
        .await;
    assert!(
        v["partialErrors"][0]["errorValues"][0]["message"]
            .as_str()
            .unwrap()
            .contains("mfg0sequence")
    );
    // expandGRMRelationsForPrimary without a relation filter: 214160.
    let (_, _, v) = c
        .call("Core-2007-09-DataManagement/expandGRMRelationsForPrimary", json!({"primaryObjects": [plan], "pref": {"expItemRev": false, "returnRelations": true, "info": []}}))
        .await;
    assert_eq!(
        v["ServiceData"]["partialErrors"][0]["errorValues"][0]["code"],
        214_160
    );
    // A line of another session's window is not live here.
    let (_, _, opened) = c.call(OPEN, open(&plan)).await;
    let top = opened["output"][0]["contexts"][0]["context"]["uid"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut other = Client::new(&s);
    other.call("Core-2011-06-Session/login", json!({"credentials": {"user": "mfg_sync", "password": "mfg_sync_pw", "group": "", "role": "", "locale": "en_US", "descrimator": "other"}})).await;
    let (_, _, v) = other.call(EXPAND, expand(&[&top])).await;
    assert_eq!(v["ServiceData"]["partialErrors"][0]["uid"], top.as_str());
    assert_eq!(s.stats().stale_lines, 1);
    // The window dies with its session: logged out, it is not a leak.
    assert_eq!(s.leaked_windows(), 1);
    c.call("Core-2006-03-Session/logout", json!({})).await;
    assert_eq!(s.leaked_windows(), 0);
    assert_eq!(s.stats().windows_died, 1);
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
    // The same restart from another process: `POST /sim/restart`.
    a.login("mfg_sync", "mfg_sync_pw").await;
    assert!(qname(&a.info().await).ends_with("GetTCSessionInfoResponse"));
    sleep(secs(1)).await;
    let answer = reqwest::Client::new()
        .post(format!("{}/sim/restart", s.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    sleep(secs(1)).await;
    assert!(qname(&a.info().await).ends_with("InvalidUserException"));
    assert_eq!(s.stats().killed.get("restart"), Some(&4));
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
    let wall = shiftkey_clock::Clock::wall(&TokioClock::new());
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
    let s = Sim::start(cfg, Arc::new(shiftkey_clock::TokioClock::new()))
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
    let s = Sim::start(quiet(), Arc::new(shiftkey_clock::TokioClock::new()))
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

/// How long a client waits for a request: generous for a busy machine.
const PATIENT: Duration = Duration::from_secs(10);

/// Drives `request` until the emulator reports it held (`Stats::hung` reaches `hung`), then drops
/// it, as a client that gives up does. The emulator's count says the request is hung, not a
/// client timer: a busy machine cannot make the client give up before the request arrives.
/// Fails if the request ends first (its own `PATIENT` deadline bounds the wait).
async fn give_up_once_hung(
    s: &Sim,
    hung: u64,
    request: impl std::future::Future<Output = reqwest::Result<reqwest::Response>>,
) {
    tokio::pin!(request);
    loop {
        tokio::select! {
            ended = &mut request => panic!("a hung request ended: {ended:?}"),
            () = sleep(Duration::from_millis(10)) => {
                if s.stats().hung >= hung {
                    return;
                }
            }
        }
    }
}

/// A `client_credentials` grant the client gives up on after `wait`.
async fn token_request(s: &Sim, wait: Duration) -> reqwest::Result<reqwest::Response> {
    reqwest::Client::new()
        .post(format!("{}/oauth/token", s.url()))
        .basic_auth("shiftkey", Some("shiftkey-secret"))
        .form(&[("grant_type", "client_credentials")])
        .timeout(wait)
        .send()
        .await
}

/// A SOA call (with the session `cookie`, if any) the client gives up on after `wait`.
async fn soa_request(
    http: &reqwest::Client,
    s: &Sim,
    cookie: Option<&str>,
    op: &str,
    body: Value,
    wait: Duration,
) -> reqwest::Result<reqwest::Response> {
    let mut req = http
        .post(format!("{}/tc/JsonRestServices/{op}", s.url()))
        .body(json!({"header": {"state": {}, "policy": {}}, "body": body}).to_string())
        .timeout(wait);
    if let Some(c) = cookie {
        req = req.header("cookie", format!("JSESSIONID={c}"));
    }
    req.send().await
}

const GET_SAVED_QUERIES: &str = "Query-2006-03-SavedQuery/getSavedQueries";
const SET_PROPERTIES: &str = "Core-2010-09-DataManagement/setProperties";

fn credentials() -> Value {
    json!({"credentials": {"user": "mfg_sync", "password": "mfg_sync_pw", "group": "", "role": "", "locale": "en_US", "descrimator": "t"}})
}

// Real time: these requests cross real loopback sockets, and paused time could jump to a client's
// deadline while an answer is on its way (tests/integration/faults.rs). No timer decides an
// outcome: a hung request is recognised by the emulator's count (`give_up_once_hung`).

#[tokio::test]
async fn a_hung_token_request_is_never_answered_and_grants_nothing() {
    let s = Sim::start(quiet(), Arc::new(TokioClock::new()))
        .await
        .unwrap();
    s.hang_next(HangTarget::Token, 1);
    give_up_once_hung(&s, 1, token_request(&s, PATIENT)).await;
    let resp = token_request(&s, PATIENT).await.unwrap();
    assert_eq!(resp.status(), 200, "only the next request hangs");
    let v: Value = resp.json().await.unwrap();
    assert!(v["access_token"].is_string(), "{v}");
    let st = s.stats();
    assert_eq!(st.hung, 1);
    assert_eq!(st.requests.get("oauth/token"), Some(&2));
    assert_eq!(
        st.grants.get("client_credentials"),
        Some(&1),
        "the hung request granted nothing"
    );
}

#[tokio::test]
async fn a_hung_read_is_never_answered_and_the_next_one_is() {
    let s = Sim::start(quiet(), Arc::new(TokioClock::new()))
        .await
        .unwrap();
    let mut c = Client::new(&s);
    // A pending read hang is not a login hang.
    s.hang_next(HangTarget::Reads, 1);
    let (status, _) = c.login("mfg_sync", "mfg_sync_pw").await;
    assert_eq!(status, 200);
    let cookie = c.cookie.clone().unwrap();
    let http = reqwest::Client::new();
    give_up_once_hung(
        &s,
        1,
        soa_request(
            &http,
            &s,
            Some(&cookie),
            GET_SAVED_QUERIES,
            json!({}),
            PATIENT,
        ),
    )
    .await;
    let resp = soa_request(
        &http,
        &s,
        Some(&cookie),
        GET_SAVED_QUERIES,
        json!({}),
        PATIENT,
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["queries"].as_array().map(Vec::len), Some(3), "{v}");
    let st = s.stats();
    assert_eq!(st.hung, 1);
    assert_eq!(st.requests.get(GET_SAVED_QUERIES), Some(&2));
    assert_eq!(st.logins, 1);
}

#[tokio::test]
async fn a_hung_login_logs_no_one_in() {
    let s = Sim::start(quiet(), Arc::new(TokioClock::new()))
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let login = "Core-2011-06-Session/login";
    s.hang_next(HangTarget::Login, 1);
    give_up_once_hung(
        &s,
        1,
        soa_request(&http, &s, None, login, credentials(), PATIENT),
    )
    .await;
    assert_eq!((s.stats().hung, s.stats().logins), (1, 0));
    let resp = soa_request(&http, &s, None, login, credentials(), PATIENT)
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("set-cookie").is_some());
    assert_eq!((s.stats().hung, s.stats().logins), (1, 1));
}

#[tokio::test]
async fn a_hung_feedback_write_writes_nothing() {
    let mut cfg = quiet();
    cfg.tc.site_properties.insert(
        "MEOPRevision".to_owned(),
        vec!["xx4_mes_feedback_key".to_owned()],
    );
    let s = Sim::start(cfg, Arc::new(TokioClock::new())).await.unwrap();
    let op = s.with_data(|d| {
        d.objects()
            .values()
            .find(|o| o.type_name == "MEOPRevision")
            .map(|o| o.uid.clone())
            .unwrap()
    });
    let key = |s: &Sim| {
        s.with_data(|d| {
            d.get(&op)
                .and_then(|o| o.get("xx4_mes_feedback_key"))
                .map(str::to_owned)
        })
    };
    let mut c = Client::new(&s);
    c.login("mfg_sync", "mfg_sync_pw").await;
    let cookie = c.cookie.clone().unwrap();
    let write = json!({"info": [{"object": {"uid": op, "type": "MEOPRevision"}, "timestamp": "",
        "vecNameVal": [{"name": "xx4_mes_feedback_key", "values": ["k1"]}]}], "options": []});
    let http = reqwest::Client::new();
    s.hang_next(HangTarget::Feedback, 1);
    give_up_once_hung(
        &s,
        1,
        soa_request(
            &http,
            &s,
            Some(&cookie),
            SET_PROPERTIES,
            write.clone(),
            PATIENT,
        ),
    )
    .await;
    assert_eq!(key(&s), None, "the hung write wrote nothing");
    let resp = soa_request(&http, &s, Some(&cookie), SET_PROPERTIES, write, PATIENT)
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["ServiceData"]["updated"][0], op.as_str(), "{v}");
    assert_eq!(key(&s).as_deref(), Some("k1"));
    assert_eq!(s.stats().hung, 1);
}

#[tokio::test]
async fn a_hung_request_ends_with_503_when_the_emulator_stops() {
    let mut cfg = quiet();
    cfg.faults.hang_probability = 1.0;
    let s = Sim::start(cfg, Arc::new(TokioClock::new())).await.unwrap();
    let url = format!("{}/oauth/token", s.url());
    let pending = tokio::spawn(async move {
        reqwest::Client::new()
            .post(url)
            .basic_auth("shiftkey", Some("shiftkey-secret"))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    for _ in 0..1000 {
        if s.stats().hung > 0 {
            break;
        }
        sleep(Duration::from_millis(10)).await;
    }
    let st = s.stats();
    assert_eq!(st.hung, 1, "held by hang_probability");
    assert!(st.grants.is_empty() && st.faults.is_empty(), "{st:?}");
    drop(s);
    let status = tokio::time::timeout(PATIENT, pending)
        .await
        .expect("the hang ends when the emulator stops")
        .unwrap()
        .unwrap();
    assert_eq!(status, 503);
}
