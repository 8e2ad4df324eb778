//! shiftkey's build tasks (`cargo xtask <task>`), in the manner of rust-analyzer's xtask.
//!
//! - `test`: installs the npm packages the tests need (once), then runs the whole test suite.
//! - `proptest [--cases N]`: the property suites with N cases each (default 100 000).
//! - `bench`: the criterion benchmarks.
//! - `soak [--days N] [--profile NAME|all] [--seed S] [--json FILE] [--release]`: the sync
//!   daemon against the emulator for N simulated days (default 30) per fault profile, in paused
//!   time; prints the report table and fails when a goal is missed.
//! - `ci`: what `.ci/run` runs after installing system packages: test, a 3-day soak of every
//!   profile, fmt, clippy, deny.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{Context, Result, bail};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            #[allow(clippy::print_stderr, reason = "the binary's one error report")]
            {
                eprintln!("xtask: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let task = args.first().map(String::as_str).unwrap_or("help");
    match task {
        "test" => test(),
        "proptest" => proptest(&args[1..]),
        "bench" => cargo(&["bench", "--workspace"]),
        "soak" => soak(&args[1..]),
        "ci" => ci(),
        "help" | "--help" | "-h" => {
            say(
                "usage: cargo xtask <test | proptest [--cases N] | bench | soak [--days N] [--profile NAME|all] [--release] | ci>",
            );
            Ok(())
        }
        other => bail!("unknown task `{other}`; try `cargo xtask help`"),
    }
}

#[allow(clippy::print_stdout, reason = "xtask reports to the terminal")]
fn say(line: &str) {
    println!("{line}");
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn cargo(args: &[&str]) -> Result<()> {
    status(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(args)
            .current_dir(root()),
    )
}

fn status(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let st = cmd
        .status()
        .with_context(|| format!("could not start {shown}"))?;
    if !st.success() {
        bail!("{shown} failed ({st})");
    }
    Ok(())
}

/// The npm packages of the test servers (`tests/oidc`), installed from the lock file when missing.
fn npm_packages() -> Result<()> {
    let dir = root().join("tests/oidc");
    if dir.join("node_modules/oidc-provider").is_dir() {
        return Ok(());
    }
    say("xtask: installing the OAuth test server's npm packages (npm ci)");
    status(
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir),
    )
    .context("`npm ci` failed: install Node.js 20+ and npm (`apt-get install -y nodejs npm`)")
}

fn test() -> Result<()> {
    npm_packages()?;
    cargo(&["test", "--workspace", "--all-targets"])?;
    cargo(&["test", "--workspace", "--doc"])
}

fn proptest(args: &[String]) -> Result<()> {
    let mut cases: u64 = 100_000;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--cases" => {
                let v = it.next().context("--cases needs a number")?;
                cases = v
                    .parse()
                    .with_context(|| format!("--cases: `{v}` is not a number"))?;
            }
            other => bail!(
                "proptest: unknown argument `{other}` (usage: cargo xtask proptest [--cases N])"
            ),
        }
    }
    // Each suite is a module of a crate's test binary; run them one by one for a line each.
    // The divisor says how the suite scales PROPTEST_CASES: the manager model test runs a whole
    // runtime per case, so it takes one case per thousand (its own code does the division).
    let suites: &[(&str, &str, &str, u64)] = &[
        ("shiftkey-auth", "tests", "timing_props::", 1),
        (
            "shiftkey-auth",
            "tests",
            "manager::no_caller_ever_gets",
            1_000,
        ),
        ("shiftkey-policy", "tests", "props::", 1),
        ("shiftkey-store", "tests", "fuzz::", 1),
    ];
    cargo(&[
        "build",
        "--release",
        "--tests",
        "-p",
        "shiftkey-auth",
        "-p",
        "shiftkey-policy",
    ])?;
    let mut summary = Vec::new();
    for (package, test, filter, divisor) in suites {
        #[allow(
            clippy::disallowed_methods,
            reason = "xtask reports wall time; no decision depends on it"
        )]
        let started = Instant::now();
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.args([
            "test",
            "--release",
            "-q",
            "-p",
            package,
            "--test",
            test,
            "--",
            filter,
        ])
        .env("PROPTEST_CASES", cases.to_string())
        .current_dir(root());
        let result = status(&mut cmd);
        let line = format!(
            "proptest {package}::{filter:<32} cases={:<7} {} in {:.1}s",
            (cases / divisor).max(24),
            if result.is_ok() { "ok" } else { "FAILED" },
            started.elapsed().as_secs_f64()
        );
        summary.push(line);
        result?;
    }
    for line in summary {
        say(&line);
    }
    Ok(())
}

/// Runs the soak tool (`tests/src/bin/soak.rs`); `--release` builds it optimised.
fn soak(args: &[String]) -> Result<()> {
    let release = args.iter().any(|a| a == "--release");
    let mut cmd = vec!["run", "-q", "-p", "shiftkey-tests", "--bin", "soak"];
    if release {
        cmd.push("--release");
    }
    cmd.push("--");
    cmd.extend(
        args.iter()
            .filter(|a| a.as_str() != "--release")
            .map(String::as_str),
    );
    cargo(&cmd)
}

fn ci() -> Result<()> {
    test()?;
    soak(&["--days".into(), "3".into()])?;
    cargo(&["fmt", "--all", "--check"])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    cargo(&["deny", "check", "licenses", "bans", "sources"])
}
