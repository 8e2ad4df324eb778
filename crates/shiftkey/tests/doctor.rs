//! `shiftkey doctor` against the emulator: the checks, a refused login, and `--probe` finding the
//! pool's real idle timeout and session lifetime in compressed time.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::sync::Arc;

use common::{shiftkey, temp_dir, text};

fn config(dir: &std::path::Path, url: &str) -> std::path::PathBuf {
    let cfg = dir.join("shiftkey.toml");
    std::fs::write(
        &cfg,
        format!(
            "[teamcenter]\nurl = \"{url}\"\nuser = \"mfg_sync\"\npassword = {{ env = \"TC_PW\" }}\n\
             [sink]\nurl = \"sqlite::memory:\"\n"
        ),
    )
    .unwrap();
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_checks_reachability_clock_and_login_and_names_a_refused_one() {
    let sim = common::start_sim(shiftkey_sim::SimConfig::default()).await;
    let dir = temp_dir("doctor");
    let cfg = config(&dir, &sim.url());
    let c = cfg.to_str().unwrap().to_owned();
    let good = tokio::task::spawn_blocking({
        let c = c.clone();
        move || shiftkey(&["doctor", "-c", &c], &[("TC_PW", "mfg_sync_pw")])
    })
    .await
    .unwrap();
    let out = text(&good);
    assert!(good.status.success(), "{out}");
    for line in [
        "ok    config",
        "ok    reachability  teamcenter",
        "ok    clock-skew    teamcenter",
        "ok    login         teamcenter: logged in as mfg_sync",
    ] {
        assert!(out.contains(line), "{line:?} missing:\n{out}");
    }
    let bad = tokio::task::spawn_blocking(move || {
        shiftkey(&["doctor", "-c", &c], &[("TC_PW", "not-the-password")])
    })
    .await
    .unwrap();
    let out = text(&bad);
    assert_eq!(bad.status.code(), Some(7), "{out}");
    assert!(out.contains("FAIL  login"), "{out}");
    assert!(!out.contains("not-the-password"), "{out}");
    // Nothing listens on port 9 of loopback.
    let cfg = config(&dir, "http://127.0.0.1:9");
    let down = shiftkey(&["doctor", "-c", cfg.to_str().unwrap()], &[("TC_PW", "x")]);
    assert_eq!(down.status.code(), Some(7), "{}", text(&down));
    assert!(
        text(&down).contains("FAIL  reachability  teamcenter"),
        "{}",
        text(&down)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_measures_the_pools_idle_timeout_and_session_lifetime() {
    // A busy pool all day (idle sessions die after 20 min) and a 2 h hard timeout, 600× faster.
    let mut sim_cfg = shiftkey_sim::SimConfig::default();
    sim_cfg.session.load_by_hour = [5; 24];
    sim_cfg.session.hard_timeout_secs = 7_200;
    let scale = 600.0;
    #[allow(
        clippy::disallowed_methods,
        reason = "the emulator's time starts at the real wall time, as the doctor's clock does"
    )]
    let start = std::time::SystemTime::now();
    let sim = shiftkey_sim::Sim::start(
        sim_cfg,
        Arc::new(shiftkey_sim::ScaledClock::new(start, scale)),
    )
    .await
    .unwrap();
    let dir = temp_dir("doctor-probe");
    let cfg = config(&dir, &sim.url());
    let out = tokio::task::spawn_blocking(move || {
        shiftkey(
            &[
                "doctor",
                "-c",
                cfg.to_str().unwrap(),
                "--probe",
                "--max-hours",
                "3",
                "--time-scale",
                "600",
            ],
            &[("TC_PW", "mfg_sync_pw")],
        )
    })
    .await
    .unwrap();
    let out = text(&out);
    let idle = out
        .lines()
        .find(|l| l.starts_with("probe  idle-timeout"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        idle.contains("and died after 20m") || idle.contains("and died after 30m"),
        "the 20-minute soft timeout is bracketed: {idle}"
    );
    let life = out
        .lines()
        .find(|l| l.starts_with("probe  lifetime-cap"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        life.contains("died at age 2h 00m") || life.contains("died at age 2h 01m"),
        "the 2 h hard timeout is found within a probe step: {life}"
    );
    assert!(
        out.contains("advice: the pool reclaims idle sessions") && out.contains("HARD_TIMEOUT"),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
