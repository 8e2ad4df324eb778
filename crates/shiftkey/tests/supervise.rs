//! Every background task of the daemon, killed in turn: the daemon names it, and exits non-zero
//! so that the service manager restarts it, instead of living on with a part missing.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use common::{Daemon, KEY, temp_dir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_background_task_stops_the_daemon_non_zero_and_is_named() {
    let sim = common::start_sim(shiftkey_sim::SimConfig::default()).await;
    let dir = temp_dir("supervise");
    let cfg = dir.join("shiftkey.toml");
    std::fs::write(
        &cfg,
        format!(
            "[teamcenter]\nurl = \"{url}\"\nuser = \"mfg_sync\"\npassword = {{ env = \"TC_PW\" }}\n\
             [sink]\nurl = \"sqlite://{dir}/shop.db?mode=rwc\"\n\
             [store]\ndir = \"{dir}/store\"\nkey = {{ env = \"SK_KEY\" }}\n\
             [tokens.gw]\nkind = \"client_credentials\"\ntoken_url = \"{url}/oauth/token\"\n\
             client_id = \"shiftkey\"\nclient_secret = {{ env = \"GW_SECRET\" }}\n\
             [broker]\nsocket = \"{dir}/run/broker.sock\"\nhttp = \"127.0.0.1:0\"\n\
             [broker.clients.printer]\nsecret = {{ env = \"PRINTER_SECRET\" }}\ntokens = [\"gw\"]\n\
             [ops]\nlisten = \"127.0.0.1:0\"\n",
            url = sim.url(),
            dir = dir.display()
        ),
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap();
    for task in [
        "ops",
        "ops-poll",
        "broker",
        "broker-http",
        "sync",
        "refresher:gw",
        "refresher:teamcenter",
    ] {
        // No stored token: the refresher of `gw` must call its strategy (the hook is there).
        let _ = std::fs::remove_dir_all(dir.join("store"));
        let daemon = Daemon::spawn(
            &["run", "-c", cfg],
            &[
                ("TC_PW", "mfg_sync_pw"),
                ("SK_KEY", KEY),
                ("GW_SECRET", "shiftkey-secret"),
                (
                    "PRINTER_SECRET",
                    "printer-secret-1-abcdefghijklmnopqrstuvwxyz",
                ),
                ("SHIFTKEY_TEST_PANIC_TASK", task),
            ],
        );
        let (status, log) = daemon.wait_exit().await;
        assert!(!status.success(), "{task}: the daemon lived on:\n{log}");
        assert!(
            log.contains(&format!("`{task}` stopped unexpectedly")),
            "{task}: the log does not name it:\n{log}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIGTERM while a Teamcenter read hangs: the stop cancels the read and the daemon exits 0, long
/// before the read's own 60 s deadline (three attempts: three minutes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_daemon_while_a_read_hangs() {
    let sim = common::start_sim(shiftkey_sim::SimConfig::default()).await;
    let dir = temp_dir("sigterm-hang");
    let cfg = dir.join("shiftkey.toml");
    std::fs::write(
        &cfg,
        format!(
            "[teamcenter]\nurl = \"{url}\"\nuser = \"mfg_sync\"\npassword = {{ env = \"TC_PW\" }}\n\
             [sink]\nurl = \"sqlite://{dir}/shop.db?mode=rwc\"\n[ops]\nlisten = \"\"\n",
            url = sim.url(),
            dir = dir.display()
        ),
    )
    .unwrap();
    sim.hang_next(shiftkey_sim::HangTarget::Reads, 1_000);
    let mut daemon = Daemon::spawn(
        &["run", "-c", cfg.to_str().unwrap()],
        &[("TC_PW", "mfg_sync_pw")],
    );
    daemon.wait_for("syncing").await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while sim.stats().hung == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no read reached the emulator in 30 s:\n{}",
            daemon.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // A guard, not a timing claim: without the cancel the exit waits for the read's deadlines.
    let (status, log) =
        tokio::time::timeout(std::time::Duration::from_secs(30), daemon.terminate())
            .await
            .expect("SIGTERM did not stop the daemon while a read hung");
    assert!(status.success(), "{log}");
    assert!(!log.contains("stopped unexpectedly"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}
