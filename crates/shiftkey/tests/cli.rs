//! The real binary, run as a user would.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_shiftkey");

#[test]
fn demo_reports_zero_surfaced_401s_and_every_cycle_succeeded() {
    let out = Command::new(BIN)
        .args([
            "--verbose",
            "demo",
            "--hours",
            "6",
            "--speed",
            "2880",
            "--json",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}\n{stderr}", out.status);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["unauthorized"]["surfaced"], 0, "{report:#}");
    assert_eq!(report["cycles"]["failed"], 0, "{report:#}");
    let run = report["cycles"]["run"].as_u64().unwrap();
    assert!(run >= 20, "a cycle every 15 simulated minutes: {run}");
    assert_eq!(report["cycles"]["succeeded"].as_u64(), Some(run));
    assert_eq!(report["process_revisions_in_sink"], 20);
    assert_eq!(
        report["server_kills"]["restart"], 1,
        "the scripted server restart happened and was survived: {report:#}"
    );
    // The verbose log of the whole run holds no secret.
    assert!(stderr.contains("Teamcenter login"), "the log was captured");
    assert!(
        !stderr.contains("mfg_sync_pw"),
        "the password leaked into the log"
    );
    let leaked: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("JSESSIONID="))
        .collect();
    assert!(
        leaked.is_empty(),
        "a session cookie leaked into the log: {leaked:?}"
    );
}

#[test]
fn bad_arguments_exit_non_zero_with_a_message_naming_them() {
    let check = |args: &[&str], says: &str| {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    };
    check(&["demo", "--hours=-3"], "--hours");
    check(&["demo", "--speed", "0"], "--speed");
    check(&["demo", "--bogus"], "--bogus");
    check(&["frobnicate"], "frobnicate");
    check(
        &["sim", "--config", "/nonexistent/scenario.toml"],
        "/nonexistent/scenario.toml",
    );
}
