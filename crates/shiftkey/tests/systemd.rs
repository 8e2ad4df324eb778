//! `Type=notify` and `WatchdogSec=` without systemd: the test is the service manager, listening
//! on the datagram socket systemd would pass in `NOTIFY_SOCKET`.
//!
//! Real time: the daemon is a process. Every wait has a generous deadline.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::time::Duration;

use common::{Daemon, temp_dir};

/// The next notification; `log` is shown when none comes.
async fn next(sock: &tokio::net::UnixDatagram, log: impl Fn() -> String) -> String {
    let mut buf = [0u8; 512];
    match tokio::time::timeout(Duration::from_secs(30), sock.recv(&mut buf)).await {
        Ok(Ok(n)) => String::from_utf8_lossy(&buf[..n]).trim_end().to_owned(),
        other => panic!("no notification in 30 s ({other:?}):\n{}", log()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_comes_after_the_first_cycle_then_the_watchdog_is_fed() {
    let sim = common::start_sim(shiftkey_sim::SimConfig::default()).await;
    let dir = temp_dir("notify");
    let sock_path = dir.join("notify.sock");
    let sock = tokio::net::UnixDatagram::bind(&sock_path).unwrap();
    let cfg = dir.join("shiftkey.toml");
    std::fs::write(
        &cfg,
        format!(
            "[teamcenter]\nurl = \"{}\"\nuser = \"mfg_sync\"\npassword = {{ env = \"TC_PW\" }}\n[sink]\nurl = \"sqlite://{}/shop.db?mode=rwc\"\n[ops]\nlisten = \"127.0.0.1:0\"\n",
            sim.url(),
            dir.display()
        ),
    )
    .unwrap();
    let sock_env = sock_path.display().to_string();
    let mut daemon = Daemon::spawn(
        &["run", "-c", cfg.to_str().unwrap()],
        &[
            ("TC_PW", "mfg_sync_pw"),
            ("NOTIFY_SOCKET", sock_env.as_str()),
            ("WATCHDOG_USEC", "1000000"),
        ],
    );
    let ops = daemon.address("ops endpoints on ").await;
    let first = next(&sock, || daemon.log()).await;
    assert_eq!(first, "READY=1");
    // By then the first cycle has finished: the status page lists it.
    let status = reqwest::get(format!("{ops}/status"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        status.contains("<td class=\"ok\">ok</td>"),
        "READY before the first cycle: {status}"
    );
    // A 1 s watchdog: pinged every half second while the sync lives.
    for _ in 0..3 {
        assert_eq!(next(&sock, || daemon.log()).await, "WATCHDOG=1");
    }
    let (exit, log) = daemon.terminate().await;
    assert!(exit.success(), "{log}");
    // The last word is STOPPING=1 (a ping may come between the signal and it).
    let mut last = next(&sock, || log.clone()).await;
    while last == "WATCHDOG=1" {
        last = next(&sock, || log.clone()).await;
    }
    assert_eq!(last, "STOPPING=1");
    let _ = std::fs::remove_dir_all(&dir);
}

/// docs/operations.md shows the unit file the repository ships, not a copy that drifted.
#[test]
fn the_documented_unit_is_the_packaged_one() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let unit =
        std::fs::read_to_string(format!("{root}/packaging/systemd/shiftkey.service")).unwrap();
    let doc = std::fs::read_to_string(format!("{root}/docs/operations.md")).unwrap();
    let start = doc.find("```ini\n").expect("an ini block") + "```ini\n".len();
    let end = start + doc[start..].find("```").unwrap();
    assert_eq!(&doc[start..end], unit);
    assert!(unit.contains("Type=notify") && unit.contains("WatchdogSec="));
}

/// The configuration the package installs passes `config check` with the credentials the unit
/// loads: the unit passes every file of /etc/shiftkey/credentials as `shiftkey_FILE`
/// (`LoadCredential=shiftkey:/etc/shiftkey/credentials`, systemd.exec(5)), and every
/// `{ credential = "NAME" }` finds `shiftkey_NAME` there; a site without a credential changes
/// nothing in the unit.
#[test]
fn the_packaged_config_checks_with_the_units_credentials() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let unit = std::fs::read_to_string(root.join("packaging/systemd/shiftkey.service")).unwrap();
    let config = root.join("packaging/shiftkey.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let loaded: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("LoadCredential="))
        .collect();
    assert_eq!(
        loaded,
        ["shiftkey:/etc/shiftkey/credentials"],
        "one folder, no credential a site may not have"
    );
    let wanted: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split("credential = \"").nth(1))
        .filter_map(|s| s.split('"').next())
        .collect();
    assert!(
        !wanted.is_empty(),
        "the packaged config reads its secrets from credentials"
    );
    let dir = temp_dir("packaged-config");
    for name in &wanted {
        let value = if *name == "store-key" {
            common::KEY
        } else {
            "a-secret-for-the-check"
        };
        // As systemd names a file of the loaded folder.
        let path = dir.join(format!("shiftkey_{name}"));
        std::fs::write(&path, value).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
    }
    let out = common::shiftkey(
        &["config", "check", "-c", config.to_str().unwrap()],
        &[("CREDENTIALS_DIRECTORY", dir.to_str().unwrap())],
    );
    assert!(out.status.success(), "{}", common::text(&out));
    // One missing: the message says where it goes.
    std::fs::remove_file(dir.join(format!("shiftkey_{}", wanted[0]))).unwrap();
    let out = common::shiftkey(
        &["config", "check", "-c", config.to_str().unwrap()],
        &[("CREDENTIALS_DIRECTORY", dir.to_str().unwrap())],
    );
    assert!(!out.status.success());
    assert!(
        common::text(&out).contains(&format!("/etc/shiftkey/credentials/{}", wanted[0])),
        "{}",
        common::text(&out)
    );
    let out = common::shiftkey(&["config", "check", "-c", config.to_str().unwrap()], &[]);
    assert!(
        !out.status.success(),
        "without the credentials the check fails"
    );
}
