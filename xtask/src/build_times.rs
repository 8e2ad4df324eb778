//! `cargo xtask build-times`: how long a project that depends on one shiftkey crate waits for its
//! first build. Each library crate is built alone (`cargo build -p CRATE --lib`, its default
//! features, the dev profile) into an empty target folder of its own, one after the other, and
//! the wall time and the number of packages compiled go into a generated table in
//! docs/benchmarks.md. The goal (#28): a crate that uses only `shiftkey-policy` or `shiftkey-auth`
//! (without JWT) builds cold in at most 90 s on 2 cores.

use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::{LIBRARIES, root, say, write_generated};

/// The goal for a crate a consumer uses alone, in seconds.
const GOAL_S: f64 = 90.0;
/// The crates the goal is stated for.
const GOAL_FOR: &[&str] = &["shiftkey-clock", "shiftkey-policy", "shiftkey-auth"];

pub(crate) fn run() -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut rows = Vec::new();
    for lib in LIBRARIES {
        let dir = root().join("target/build-times").join(lib);
        let _ = std::fs::remove_dir_all(&dir);
        say(&format!("xtask: building {lib} cold"));
        #[allow(
            clippy::disallowed_methods,
            reason = "xtask measures a real build's wall time"
        )]
        let started = Instant::now();
        let out = Command::new(&cargo)
            .args(["build", "-p", lib, "--lib", "--message-format", "json"])
            .env("CARGO_TARGET_DIR", &dir)
            .current_dir(root())
            .output()
            .with_context(|| format!("building {lib}"))?;
        let seconds = started.elapsed().as_secs_f64();
        if !out.status.success() {
            bail!(
                "building {lib} failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let compiled = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains(r#""reason":"compiler-artifact""#))
            .count();
        let _ = std::fs::remove_dir_all(&dir);
        let goal = if GOAL_FOR.contains(lib) {
            if seconds <= GOAL_S {
                format!("≤ {GOAL_S:.0} s: met")
            } else {
                format!("≤ {GOAL_S:.0} s: **not met**")
            }
        } else {
            String::new()
        };
        rows.push(format!(
            "| `{lib}` | {seconds:.0} s | {compiled} | {goal} |"
        ));
    }
    let body = format!(
        "Each library crate built alone, cold (`cargo build -p CRATE --lib`, default features, dev \
         profile, an empty target folder), one after the other: what a project that depends on \
         only that crate waits for on its first build. Packages: the crates compiled, build \
         scripts and proc macros included.\n\n\
         | crate | cold build | packages | goal |\n| --- | --- | --- | --- |\n{}\n",
        rows.join("\n")
    );
    say(&body);
    write_generated(
        "docs/benchmarks.md",
        "build-times",
        "cargo xtask build-times",
        &format!("## Build times per crate\n\n{body}"),
    )
}
