//! The daemon's ops endpoints, alerts and webhook, against the emulator.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Daemon, KEY, temp_dir};

/// A webhook receiver on loopback: every JSON body POSTed to it.
async fn webhook() -> (String, Arc<Mutex<Vec<serde_json::Value>>>) {
    let got: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let sink = Arc::clone(&got);
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(v): axum::Json<serde_json::Value>| {
            let sink = Arc::clone(&sink);
            async move {
                sink.lock().unwrap().push(v);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_serves_metrics_status_readiness_and_alerts_without_secrets() {
    let sim = common::start_sim(shiftkey_sim::SimConfig::default()).await;
    let dir = temp_dir("ops");
    let (hook, alerts) = webhook().await;
    let soon = (chrono::Utc::now() + chrono::Duration::days(6))
        .format("%Y-%m-%d")
        .to_string();
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let cfg = dir.join("shiftkey.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[teamcenter]
url = "{url}"
user = "mfg_sync"
password = {{ env = "TC_PW" }}
[sink]
url = "sqlite://{dir}/shop.db?mode=rwc"
[store]
dir = "{dir}/store"
key = {{ env = "SK_KEY" }}
[tokens.gw]
kind = "client_credentials"
token_url = "{url}/oauth/token"
client_id = "shiftkey"
client_secret = {{ env = "GW_SECRET" }}
secret_expires = "{soon}"
certificate = "{fixtures}/cert-expired-2020.pem"
[tokens.bad]
kind = "client_credentials"
token_url = "{url}/oauth/token"
client_id = "shiftkey"
client_auth = "post"
client_secret = {{ env = "BAD_SECRET" }}
certificate = "{fixtures}/cert-valid-100y.pem"
[broker]
socket = "{dir}/run/broker.sock"
[ops]
listen = "127.0.0.1:0"
webhook_env = "SK_HOOK"
"#,
            url = sim.url(),
            dir = dir.display(),
        ),
    )
    .unwrap();
    let env = [
        ("TC_PW", "mfg_sync_pw"),
        ("SK_KEY", KEY),
        ("GW_SECRET", "shiftkey-secret"),
        ("BAD_SECRET", "not-the-secret"),
        ("SK_HOOK", hook.as_str()),
    ];
    let mut daemon = Daemon::spawn(&["run", "-c", cfg.to_str().unwrap()], &env);
    let ops = daemon.address("ops endpoints on ").await;
    daemon.wait_for("serving 2 token(s)").await;
    let http = reqwest::Client::new();
    let get = |path: &'static str| {
        let http = http.clone();
        let url = format!("{ops}{path}");
        async move {
            let r = http.get(url).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    // The first cycle runs at once; the status page shows it (real time, a real process: up to
    // 30 s).
    let mut status = String::new();
    for _ in 0..300 {
        status = get("/status").await.1;
        if status.contains("<td class=\"ok\">ok</td><td>20</td>") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        status.contains("<td class=\"ok\">ok</td><td>20</td>"),
        "the cycle that read 20 revisions is listed: {status}"
    );
    // The broker fetched the tokens at start: `token get` asks it.
    let out = common::shiftkey(&["token", "get", "gw", "-c", cfg.to_str().unwrap()], &env);
    assert!(out.status.success(), "{}", common::text(&out));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(token.starts_with("at_"), "{token}");

    assert_eq!(get("/healthz").await, (200, "ok\n".to_owned()));
    let (code, ready) = get("/readyz").await;
    assert_eq!(code, 503, "`bad` cannot get a token: {ready}");
    assert!(ready.contains("token bad:"), "{ready}");
    assert!(!ready.contains("token gw"), "{ready}");

    let (code, metrics) = get("/metrics").await;
    assert_eq!(code, 200);
    let scrape =
        prometheus_parse::Scrape::parse(metrics.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let value = |name: &str, label: Option<(&str, &str)>| -> f64 {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
            .unwrap_or_else(|| panic!("no {name} {label:?} in\n{metrics}"))
    };
    assert!(value("shiftkey_sync_cycles_total", Some(("result", "ok"))) >= 1.0);
    assert_eq!(
        value("shiftkey_sync_records_total", Some(("kind", "inserted"))),
        20.0
    );
    assert!(value("shiftkey_token_expires_in_seconds", Some(("token", "gw"))) > 28_000.0);
    let value2 = |name: &str, a: (&str, &str), b: (&str, &str)| -> f64 {
        scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == name && s.labels.get(a.0) == Some(a.1) && s.labels.get(b.0) == Some(b.1)
            })
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => v,
                _ => f64::NAN,
            })
            .unwrap_or_else(|| panic!("no {name} {a:?} {b:?} in\n{metrics}"))
    };
    // Enums are labels: one series per state, 1 for the state the circuit is in.
    assert_eq!(
        value2(
            "shiftkey_circuit_state",
            ("circuit", "auth"),
            ("state", "closed")
        ),
        1.0
    );
    assert_eq!(
        value2(
            "shiftkey_circuit_state",
            ("circuit", "auth"),
            ("state", "open")
        ),
        0.0
    );
    // Every series that can appear is there from the start, at 0 until its first event, and
    // the middleware's series name what they measure.
    for (name, a, b) in [
        ("shiftkey_sync_cycles_total", ("result", "failed"), None),
        ("shiftkey_sync_records_total", ("kind", "updated"), None),
        (
            "shiftkey_sync_warning",
            ("kind", "no_current_revision"),
            None,
        ),
        (
            "shiftkey_token_refreshes_total",
            ("token", "gw"),
            Some(("kind", "reactive")),
        ),
        (
            "shiftkey_token_refresh_failures_total",
            ("token", "gw"),
            None,
        ),
        (
            "shiftkey_http_requests_total",
            ("client", "teamcenter"),
            Some(("outcome", "forbidden")),
        ),
        (
            "shiftkey_http_unauthorized_total",
            ("client", "teamcenter"),
            Some(("result", "surfaced")),
        ),
        (
            "shiftkey_http_retries_total",
            ("client", "teamcenter"),
            Some(("reason", "status")),
        ),
        (
            "shiftkey_http_premature_deaths_total",
            ("client", "teamcenter"),
            None,
        ),
        (
            "shiftkey_http_keepalive_failures_total",
            ("client", "teamcenter"),
            None,
        ),
    ] {
        let v = match b {
            Some(b) => value2(name, a, b),
            None => value(name, Some(a)),
        };
        assert_eq!(v, 0.0, "{name} {a:?} {b:?}");
    }
    // HELP and TYPE for every metric family, and Prometheus' own linter finds nothing.
    let families: std::collections::BTreeSet<&str> = metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(|m| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    m.strip_suffix(s)
                        .filter(|f| metrics.contains(&format!("# TYPE {f} histogram")))
                })
                .unwrap_or(m)
        })
        .collect();
    for f in &families {
        assert!(
            metrics.contains(&format!("# HELP {f} ")),
            "no HELP for {f}:\n{metrics}"
        );
        assert!(
            metrics.contains(&format!("# TYPE {f} ")),
            "no TYPE for {f}:\n{metrics}"
        );
    }
    common::promtool_check_metrics(&metrics);
    assert!(value("shiftkey_sync_lag_seconds", None) >= 0.0);
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric == "shiftkey_token_acquire_duration_seconds"
                && matches!(s.value, prometheus_parse::Value::Histogram(_))),
        "the acquire latency is a histogram: {metrics}"
    );

    let status = get("/status").await.1;
    for expected in [
        "credential_expiry:tokens.gw.certificate",
        "has expired",
        "credential_expiry:tokens.gw.client_secret",
        "expires in 5 days",
        "generation 1 obtained",
        "401s surfaced 0",
    ] {
        assert!(status.contains(expected), "{expected:?} missing: {status}");
    }
    assert!(
        !status.contains("tokens.bad.certificate"),
        "a certificate valid for 100 years raises nothing: {status}"
    );
    common::assert_reads_as_words(&status, "/status");
    // The same page as JSON for a client that asks for it.
    let doc: serde_json::Value = http
        .get(format!("{ops}/status"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["ready"], false, "{doc}");
    assert!(
        doc["not_ready"][0].as_str().unwrap().contains("token bad"),
        "{doc}"
    );
    let gw = doc["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "gw")
        .unwrap();
    assert_eq!(gw["state"], "ok");
    assert!(gw["expires_in_seconds"].as_u64().unwrap() > 28_000, "{gw}");
    assert_eq!(doc["teamcenter"]["circuits"]["auth"], "closed");
    assert_eq!(doc["cycles"][0]["ok"], true);
    assert_eq!(doc["cycles"][0]["read"], 20);
    assert!(
        doc["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["alert"] == "credential_expiry:tokens.gw.certificate"
                && a["severity"] == "critical"),
        "{doc}"
    );
    // The webhook is delivered by its own task after the alert is raised: wait for both (a real
    // process posting over loopback; generous).
    let delivered = |hooks: &[serde_json::Value]| {
        hooks
            .iter()
            .filter(|a| {
                a["alert"] == "credential_expiry:tokens.gw.certificate"
                    || a["alert"] == "credential_expiry:tokens.gw.client_secret"
            })
            .count()
            >= 2
    };
    for _ in 0..300 {
        if delivered(&alerts.lock().unwrap()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let hooks = alerts.lock().unwrap().clone();
    assert!(
        hooks
            .iter()
            .any(|a| a["alert"] == "credential_expiry:tokens.gw.certificate"
                && a["severity"] == "critical"),
        "{hooks:?}"
    );
    assert!(
        hooks.iter().any(
            |a| a["alert"] == "credential_expiry:tokens.gw.client_secret"
                && a["severity"] == "warning"
        ),
        "{hooks:?}"
    );

    let (exit, log) = daemon.terminate().await;
    assert!(exit.success(), "{log}");
    assert!(
        !dir.join("run/broker.sock").exists(),
        "the socket is removed on exit"
    );
    assert!(
        log.contains("invalid_client"),
        "the refused credential is logged: {log}"
    );
    common::assert_reads_as_words(&log, "the log");
    for secret in [
        token.as_str(),
        "mfg_sync_pw",
        "shiftkey-secret",
        "not-the-secret",
        KEY,
    ] {
        assert!(!status.contains(secret), "/status shows a secret");
        assert!(
            !doc.to_string().contains(secret),
            "/status JSON shows a secret"
        );
        assert!(!metrics.contains(secret), "/metrics shows a secret");
        assert!(!log.contains(secret), "the log shows a secret: {log}");
        assert!(
            !format!("{hooks:?}").contains(secret),
            "a webhook carried a secret"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
