//! `[sink.mqtt]`: `shiftkey sync --once` publishes every plan to a real Mosquitto over TLS with
//! a user name and password by reference, beside the SQL sink that keeps the watermark.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::path::Path;

use common::{shiftkey, temp_dir, text};
use shiftkey_tests::mqtt::{Mosquitto, retained};
use shiftkey_tests::postgres::TestCa;

fn config(dir: &Path, name: &str, sim_url: &str, mqtt: &str) -> std::path::PathBuf {
    let cfg = dir.join(format!("{name}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "[teamcenter]\nurl = \"{sim_url}\"\nuser = \"mfg_sync\"\npassword = {{ env = \"TC_PW\" }}\n\
             [sink]\nurl = \"sqlite://{dir}/{name}.db?mode=rwc\"\n[sink.mqtt]\n{mqtt}",
            dir = dir.display()
        ),
    )
    .unwrap();
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_publishes_every_plan_over_tls_with_credentials_by_reference() {
    let sim = common::start_sim(shiftkey_sim::SimConfig::default()).await;
    let dir = temp_dir("mqtt-tls");
    let ca = TestCa::new(&dir, "mqtt-ca");
    let broker = Mosquitto::start_tls(&ca, &dir, "sync", "broker-pw");
    let port = broker.port();
    let env = [("TC_PW", "mfg_sync_pw"), ("MQTT_PW", "broker-pw")];
    let mqtt = |extra: &str| {
        format!(
            "url = \"mqtts://127.0.0.1:{port}\"\nprefix = \"plant\"\nqos = 2\n\
             username = \"sync\"\npassword = {{ env = \"MQTT_PW\" }}\nack_timeout_secs = 5\n{extra}"
        )
    };
    let ca_line = format!("ca_file = \"{}\"\n", ca.cert_file.display());

    // The right CA and password: every plan published and retained, and the SQL sink filled.
    let cfg = config(&dir, "ok", &sim.url(), &mqtt(&ca_line));
    let c = cfg.to_str().unwrap().to_owned();
    let out = tokio::task::spawn_blocking({
        let env = env.map(|(k, v)| (k.to_owned(), v.to_owned()));
        move || {
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            shiftkey(&["sync", "--once", "-c", &c], &env)
        }
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("inserted 20"), "{}", text(&out));
    assert!(
        !text(&out).contains("broker-pw"),
        "the password is never shown"
    );
    let messages = retained(
        port,
        Some(&ca.cert_file),
        Some(("sync", "broker-pw")),
        "plant/#",
        20,
    )
    .await;
    assert_eq!(messages.len(), 20, "{:?}", messages.keys());
    assert!(
        messages
            .values()
            .all(|m| m["OperationsDefinition"]["SourceUID"].is_string())
    );

    // A wrong password: the broker refuses, nothing moves, and the error says why.
    let cfg = config(&dir, "bad-pw", &sim.url(), &mqtt(&ca_line));
    let out = shiftkey(
        &["sync", "--once", "-c", cfg.to_str().unwrap()],
        &[("TC_PW", "mfg_sync_pw"), ("MQTT_PW", "wrong")],
    );
    assert!(!out.status.success());
    let shown = text(&out);
    assert!(
        shown.contains("did not take and acknowledge") && shown.contains("Connection refused"),
        "{shown}"
    );
    assert!(!shown.contains("\"wrong\""), "{shown}");
    // Nothing moved: the same configuration with the right password inserts every plan.
    let out = shiftkey(&["sync", "--once", "-c", cfg.to_str().unwrap()], &env);
    assert!(text(&out).contains("inserted 20"), "{}", text(&out));

    // A server certificate from another CA is not trusted.
    let other = TestCa::new(&dir, "other-ca");
    let cfg = config(
        &dir,
        "bad-ca",
        &sim.url(),
        &mqtt(&format!("ca_file = \"{}\"\n", other.cert_file.display())),
    );
    let out = shiftkey(&["sync", "--once", "-c", cfg.to_str().unwrap()], &env);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("last connection error"),
        "{}",
        text(&out)
    );
}

#[test]
fn mqtt_settings_that_cannot_work_are_refused_naming_the_key() {
    let dir = temp_dir("mqtt-config");
    let check = |mqtt: &str| {
        let cfg = config(&dir, "c", "http://127.0.0.1:9", mqtt);
        let out = shiftkey(
            &["config", "check", "-c", cfg.to_str().unwrap()],
            &[("TC_PW", "x"), ("MQTT_PW", "y")],
        );
        (out.status.code(), text(&out))
    };
    let (code, out) = check("url = \"mqtt://127.0.0.1\"\nqos = 0\n");
    assert_eq!(code, Some(3), "{out}");
    assert!(out.contains("sink.mqtt.qos"), "{out}");
    let (code, out) = check(
        "url = \"mqtt://broker.plant.example\"\nusername = \"u\"\npassword = { env = \"MQTT_PW\" }\n",
    );
    assert_eq!(code, Some(3), "{out}");
    assert!(out.contains("clear text"), "{out}");
    let (code, out) = check("url = \"http://broker.plant.example\"\n");
    assert_eq!(code, Some(3), "{out}");
    assert!(out.contains("sink.mqtt.url"), "{out}");
    let (code, out) = check("url = \"mqtt://127.0.0.1\"\nca_file = \"/x.pem\"\n");
    assert_eq!(code, Some(3), "{out}");
    assert!(out.contains("sink.mqtt.ca_file"), "{out}");
    let (code, out) = check(
        "url = \"mqtts://broker.plant.example\"\nusername = \"u\"\npassword = { env = \"MQTT_PW\" }\n",
    );
    assert_eq!(
        code,
        Some(0),
        "TLS with a password by reference is fine: {out}"
    );
}
