//! shiftkey's build tasks (`cargo xtask <task>`), in the manner of rust-analyzer's xtask.
//!
//! - `test`: installs what the tests need when it is missing (Debian packages as root, the npm
//!   packages) or stops with the command that would, then runs the whole test suite.
//! - `proptest [--cases N]`: the property suites with N cases each (default 100 000).
//! - `bench`: every criterion suite and the end-to-end measures, then rewrites the generated table
//!   of `docs/benchmarks.md` (medians of this run, ratios against the baselines measured in the
//!   same run, the machine, the command).
//! - `soak [--days N] [--profile NAME|all] [--seed S] [--json FILE] [--release]`: the sync
//!   daemon against the emulator for N simulated days (default 30) per fault profile, in paused
//!   time; prints the report table and fails when a goal is missed.
//! - `peers [--minutes N]`: the same emulator scenario (a lifetime cap below `expires_in`, a
//!   restart) against a naive script, "refresh every hour", authlib, requests-oauthlib,
//!   google-auth (in a virtual environment it creates) and shiftkey as a library and through its
//!   broker, all at once in real time; prints the side-by-side table.
//! - `mutants`: cargo-mutants (installed when missing) over the timing law
//!   (`shiftkey-auth::timing`), the policy engine (`shiftkey-policy`) and the limit learner
//!   (`shiftkey-http::limits`), each mutant tested by its own crate's tests; writes the missed
//!   mutants into `docs/reliability.md`. Not in CI: about 10 minutes on 2 cores.
//! - `bench-proxy`: the proxy against nginx (`anchor.rs`); `build-times`: each library's cold
//!   build (`build_times.rs`); `examples`: every library's `examples/`; `libs`: each library
//!   alone, what it must not compile, its docs and package (`libs.rs`).
//! - `ci`: what `.ci/run` runs: cargo-deny when missing, test, examples, a 3-day soak of every
//!   profile, fmt, clippy (also of the binary without its `demo` feature), the unit, the alert
//!   rules, the libraries alone, the package, deny.
//!
//! One module per task (`tests.rs`, `soak.rs`, `bench.rs`, `peers.rs`, `mutants.rs`,
//! `service.rs`, `libs.rs`, `package.rs`), what they need on the machine in `setup.rs`; this
//! file dispatches and holds the shared helpers.

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

mod anchor;
mod bench;
mod build_times;
mod libs;
mod mutants;
mod package;
mod peers;
mod service;
mod setup;
mod soak;
mod tests;

use bench::{bench, bench_proxy, machine, write_generated};
use libs::libraries_alone;
use mutants::mutants;
use package::{deb_installs, package};
use peers::peers;
use service::{alert_rules, systemd_unit};
use setup::{install_debian, npm_packages, python_env, python_package, system_packages};
use soak::soak;
use tests::{examples, proptest, test};

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let task = args.first().map(String::as_str).unwrap_or("help");
    match task {
        "test" => test(),
        "proptest" => proptest(&args[1..]),
        "bench" => bench().and_then(|()| bench_proxy()),
        "bench-proxy" => bench_proxy(),
        "build-times" => build_times::run(),
        "soak" => soak(&args[1..]),
        "peers" => peers(&args[1..]),
        "mutants" => mutants(),
        "ci" => ci(),
        "libs" => libraries_alone(),
        "examples" => examples(),
        "package" if args.get(1).is_some_and(|a| a == "--check-install") => deb_installs(),
        "package" => package().map(|deb| say(&format!("xtask: built {}", deb.display()))),
        "help" | "--help" | "-h" => {
            say(
                "usage: cargo xtask <test | proptest [--cases N] | bench | bench-proxy | build-times | soak [--days N] [--profile NAME|all] [--release] | peers [--minutes N] | mutants | package [--check-install] | libs | examples | ci>",
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

/// Whether `program` is on the `PATH`.
fn have(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

fn ci() -> Result<()> {
    disk_report("start")?;
    if !Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["deny", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        say("xtask: installing cargo-deny");
        cargo(&["install", "cargo-deny", "--locked"])?;
    }
    test()?;
    examples()?;
    disk_report("after the tests")?;
    soak(&["--days".into(), "3".into()])?;
    cargo(&["fmt", "--all", "--check"])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--features",
        "shiftkey/test-util",
        "--",
        "-D",
        "warnings",
    ])?;
    systemd_unit()?;
    alert_rules()?;
    libraries_alone()?;
    deb_installs()?;
    // The service build: the binary without the emulator (`demo` off).
    cargo(&[
        "clippy",
        "-p",
        "shiftkey",
        "--no-default-features",
        "--",
        "-D",
        "warnings",
    ])?;
    cargo(&["deny", "check", "licenses", "bans", "sources"])?;
    disk_report("end")
}

/// The library crates, each usable alone: built alone with its default features and with none,
/// documented with warnings denied, and packaged as crates.io would take them.
const LIBRARIES: &[&str] = &[
    "shiftkey-clock",
    "shiftkey-policy",
    "shiftkey-auth",
    "shiftkey-store",
    "shiftkey-http",
    "shiftkey-teamcenter",
    "shiftkey-shopfloor",
    "shiftkey-sidecar",
    "shiftkey-sync",
    "shiftkey-sim",
];

/// Prints how much `target/` holds and how much the disk has left: CI once ran out of space, and
/// the figures say where a run stands if it happens again.
fn disk_report(stage: &str) -> Result<()> {
    let target = root().join("target");
    let used = Command::new("du")
        .args(["-sh"])
        .arg(&target)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .next()
                .unwrap_or("?")
                .to_owned()
        })
        .unwrap_or_else(|| "nothing".into());
    let free = Command::new("df")
        .args(["-h", "--output=avail"])
        .arg(root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .nth(1)
                .map(|l| l.trim().to_owned())
        })
        .unwrap_or_else(|| "?".into());
    say(&format!(
        "xtask: disk ({stage}): target/ holds {used}, {free} free"
    ));
    Ok(())
}
