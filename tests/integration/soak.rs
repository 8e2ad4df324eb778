//! The soak is evidence only if it can be run again: the same seed gives the same run.

use std::process::Command;

const SOAK: &str = env!("CARGO_BIN_EXE_soak");

fn run(seed: &str, json: &std::path::Path) -> serde_json::Value {
    // Whether a one-day run meets the month's goals does not matter here (a day is too short
    // for the ratio goals); only that it can be run again.
    let out = Command::new(SOAK)
        .args([
            "--days",
            "1",
            "--profile",
            "flaky",
            "--seed",
            seed,
            "--json",
        ])
        .arg(json)
        .output()
        .unwrap();
    let report = std::fs::read(json)
        .unwrap_or_else(|e| panic!("no report ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    serde_json::from_slice(&report).unwrap()
}

/// Two runs with one seed of the most random profile (faults, jitter, busy hours) report the
/// same numbers; another seed reports other ones.
#[test]
fn the_same_seed_reproduces_a_soak_run_exactly() {
    let dir = std::env::temp_dir().join(format!("shiftkey-soak-seed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let a = run("11", &dir.join("a.json"));
    let b = run("11", &dir.join("b.json"));
    assert_eq!(a, b, "the same seed gave two different runs");
    let c = run("12", &dir.join("c.json"));
    assert_ne!(
        a, c,
        "the seed changes nothing: the run is not driven by it"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
