//! `cargo xtask soak`: the sync daemon against the emulator for simulated days per fault profile.

use super::*;

/// Runs the soak tool (`tests/src/bin/soak.rs`); `--release` builds it optimised.
pub(crate) fn soak(args: &[String]) -> Result<()> {
    let release = args.iter().any(|a| a == "--release");
    let mut cmd = vec!["run", "-q", "-p", "shiftkey-tests", "--bin", "soak"];
    if release {
        cmd.push("--release");
    }
    cmd.push("--");
    let passed: Vec<&str> = args
        .iter()
        .filter(|a| a.as_str() != "--release")
        .map(String::as_str)
        .collect();
    cmd.extend(passed.iter().copied());
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(&cmd)
        .current_dir(root())
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running the soak")?;
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    say(&table);
    // The documented run is the month of every profile: shorter runs (CI's 3 days) and single
    // profiles are printed, not written into the docs.
    let days = passed
        .iter()
        .position(|a| *a == "--days")
        .and_then(|i| passed.get(i + 1))
        .map_or(Ok(30), |d| d.parse::<u64>())
        .unwrap_or(0);
    let one_profile = passed
        .iter()
        .position(|a| *a == "--profile")
        .and_then(|i| passed.get(i + 1))
        .is_some_and(|p| *p != "all");
    if days >= 30 && !one_profile {
        let shown = std::iter::once("cargo xtask soak")
            .chain(args.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" ");
        let body: String = table
            .lines()
            .filter(|l| l.starts_with('|'))
            .map(|l| format!("{l}\n"))
            .collect();
        write_generated("docs/reliability.md", "soak", &shown, &body)?;
    }
    if !out.status.success() {
        bail!("the soak missed a goal ({})", out.status);
    }
    Ok(())
}
