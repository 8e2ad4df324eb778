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
    // Every session doctor opened went back to the pool.
    let stats = sim.stats();
    assert!(stats.logins >= 2, "{stats:?}");
    assert_eq!(sim.live_sessions(), 0, "{stats:?}");
    for line in [
        "ok    query-finds   the change query finds `MEProcessRevision` objects",
        "ok    utc-offset    the server's dates are in UTC+00:00",
        "ok    config",
        "ok    reachability  teamcenter",
        "ok    clock-skew    teamcenter",
        "ok    login         teamcenter: logged in as mfg_sync",
        "ok    saved-query   `Item Revision...` has the entries `Type` and `Modified After`",
        "ok    types         `MEProcessRevision` has",
        "ok    types         `Mfg0BvrOperation` has",
        "ok    open-process  opened P01-PR",
        "warn  feedback      no [teamcenter.feedback]",
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

/// A name that does not resolve, a port where nothing listens, a server that does not speak TLS
/// and one that never answers each read as what they are (reqwest's own text for all four is
/// "error sending request"), on the reachability line and on the login's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_tells_a_name_a_port_tls_and_a_deadline_apart() {
    let sim = common::start_sim(shiftkey_sim::SimConfig::default()).await;
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    // Accepts and never answers.
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((c, _)) = silent.accept().await {
            held.push(c);
        }
    });
    let plain = sim.url().replacen("http://", "https://", 1);
    let cases = [
        (
            "dns",
            "https://shiftkey-doctor-test.invalid/tc".to_owned(),
            "FAIL  reachability  teamcenter: https://shiftkey-doctor-test.invalid/tc: the host name does not resolve",
        ),
        (
            "refused",
            "http://127.0.0.1:9/tc".to_owned(),
            "FAIL  reachability  teamcenter: http://127.0.0.1:9/tc: the connection was refused: nothing listens there",
        ),
        ("tls", plain.clone(), "FAIL  tls           teamcenter: "),
        (
            "timeout",
            format!("http://{silent_addr}/tc"),
            "no answer before the deadline",
        ),
    ];
    for (name, url, says) in cases {
        let dir = temp_dir(&format!("doctor-{name}"));
        let cfg = config(&dir, &url);
        let out = tokio::task::spawn_blocking(move || {
            shiftkey(
                &["doctor", "--deadline", "2", "-c", cfg.to_str().unwrap()],
                // A resolver that gives up after one second wherever it is asked.
                &[("TC_PW", "x"), ("RES_OPTIONS", "timeout:1 attempts:1")],
            )
        })
        .await
        .unwrap();
        let out_text = text(&out);
        assert_eq!(out.status.code(), Some(7), "{name}: {out_text}");
        assert!(
            out_text.contains(says),
            "{name}: {says:?} missing:\n{out_text}"
        );
        assert!(
            !out_text.contains("error sending request"),
            "{name}: reqwest's text says nothing:\n{out_text}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
    holder.abort();
}

/// Runs `doctor` against the emulator at `url` with `sections` after `[teamcenter]`, from a config in
/// `dir`: its output (stdout and stderr) and exit code.
async fn doctor_site(dir: &std::path::Path, url: &str, sections: &str) -> (String, Option<i32>) {
    let cfg = dir.join("shiftkey.toml");
    std::fs::write(
        &cfg,
        format!(
            "[teamcenter]\nurl = \"{url}\"\nuser = \"mfg_sync\"\npassword = {{ env = \"TC_PW\" }}\n{sections}"
        ),
    )
    .unwrap();
    let c = cfg.to_str().unwrap().to_owned();
    let out = tokio::task::spawn_blocking(move || {
        shiftkey(&["doctor", "-c", &c], &[("TC_PW", "mfg_sync_pw")])
    })
    .await
    .unwrap();
    (text(&out), out.status.code())
}

/// Settings that would sync nothing or miss changes, each its own FAIL line naming the setting,
/// every other line still printed: a plan type that matches nothing, and a fixed UTC offset the
/// server (in UTC−5) disagrees with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_fails_a_type_that_finds_nothing_and_a_wrong_offset_on_their_own_lines() {
    let mut sim_cfg = shiftkey_sim::SimConfig::default();
    sim_cfg.tc.utc_offset_minutes = -300;
    let sim = common::start_sim(sim_cfg).await;
    let dir = temp_dir("doctor-zone");
    let (text, code) = doctor_site(
        &dir,
        &sim.url(),
        "[teamcenter.read]\ntypes = [\"MEProcessRevision\", \"MEProcess\"]\nutc_offset_minutes = 0\n",
    )
    .await;
    assert_eq!(code, Some(7), "{text}");
    for line in [
        "ok    saved-query   `Item Revision...` has the entries",
        "ok    query-finds   the change query finds `MEProcessRevision` objects",
        "FAIL  query-finds   the change query finds no `MEProcess`",
        "not `MEProcess`",
        "FAIL  utc-offset    `utc_offset_minutes` = 0 (UTC+00:00), but the server's dates are in UTC-05:00",
        "fix: remove `utc_offset_minutes`",
        "ok    types         `MEProcessRevision` has",
    ] {
        assert!(text.contains(line), "{line:?} missing:\n{text}");
    }
    assert_eq!(sim.live_sessions(), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_says_what_the_administrator_must_create() {
    // A German site: the saved query's entries are localized; no BMIDE feedback properties.
    let mut sim_cfg = shiftkey_sim::SimConfig::default();
    sim_cfg
        .tc
        .entry_names
        .insert("Modified After".into(), "Geändert nach".into());
    let sim = common::start_sim(sim_cfg).await;
    let dir = temp_dir("doctor-site");
    let (text, code) = doctor_site(
        &dir,
        &sim.url(),
        "[teamcenter.read]\nwindow = \"bom_windows\"\nrevision_rule = \"Latest Released\"\n\
         [teamcenter.read.properties]\nsequence = \"xx4_seq\"\n\
         [teamcenter.feedback]\nformat = \"json\"\nproperty = \"xx4_mes_feedback_key\"\n",
    )
    .await;
    assert_eq!(code, Some(7), "{text}");
    for line in [
        "FAIL  saved-query   `Item Revision...` has no entry `Modified After`; its entries are",
        "`Geändert nach`",
        "fix: in Query Builder add the clauses",
        "FAIL  types         `Mfg0BvrOperation` has no property `xx4_seq`",
        "fix: set [teamcenter.read.properties]",
        "FAIL  types         `MEOPRevision` has no property `xx4_mes_feedback_key`",
        "fix: in BMIDE add the string properties `xx4_mes_feedback_key` to `MEOPRevision`",
        "FAIL  revision-rule  no revision rule is named `Latest Released`; the site has",
        "`Latest Working`",
    ] {
        assert!(text.contains(line), "{line:?} missing:\n{text}");
    }
    assert!(
        text.contains("warn  open-process  not tried: a line above failed"),
        "no process is opened against a broken mapping, and the line says so:\n{text}"
    );
    assert_eq!(sim.stats().windows_opened, 0);
    assert_eq!(sim.leaked_windows(), 0);
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
    // The probe (2 h of server time) said where it was at least every 5 server minutes.
    let progress: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("doctor: probing for "))
        .collect();
    assert!(progress.len() >= 20, "{out}");
    assert!(
        progress
            .iter()
            .all(|l| l.contains("idle probe: ") && l.contains("lifetime probe: ")),
        "{out}"
    );
    common::assert_reads_as_words(&out, "doctor --probe");
    // The probes' surviving sessions were logged out; the others died of what was measured.
    assert_eq!(sim.live_sessions(), 0, "{:?}", sim.stats());
    let _ = std::fs::remove_dir_all(&dir);
}
