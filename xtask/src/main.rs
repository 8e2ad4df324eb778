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
//! - `ci`: what `.ci/run` runs: cargo-deny when missing, test, a 3-day soak of every profile,
//!   fmt, clippy (also of the binary without its `demo` feature), deny.

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
mod build_times;

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

/// Whether `program` is on the `PATH`.
fn have(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// Whether `python3 -m venv` can make an environment with pip (Debian splits it out).
fn python_venv() -> bool {
    Command::new("python3")
        .args(["-c", "import ensurepip, venv"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The Debian packages the tests need that this machine lacks.
fn missing_packages() -> Vec<&'static str> {
    let postgres = std::fs::read_dir("/usr/lib/postgresql").is_ok_and(|d| {
        d.filter_map(Result::ok)
            .any(|e| e.path().join("bin/initdb").is_file())
    });
    [
        (have("node"), "nodejs"),
        (have("npm"), "npm"),
        (postgres, "postgresql"),
        (have("mosquitto"), "mosquitto"),
        (have("python3"), "python3"),
        (python_venv(), "python3-venv"),
        (have("runuser"), "util-linux"),
        (have("systemd-analyze"), "systemd"),
        // `promtool check metrics` on a live /metrics (crates/shiftkey/tests/ops.rs).
        (have("promtool"), "prometheus"),
    ]
    .into_iter()
    .filter(|(present, _)| !present)
    .map(|(_, package)| package)
    .collect()
}

/// Installs what the tests need from the system when it is missing and this can (root with
/// apt-get); otherwise stops before building, with the one command that would.
fn system_packages() -> Result<()> {
    let need = missing_packages();
    if need.is_empty() {
        return Ok(());
    }
    install_debian(&need, "the tests start real servers")
}

/// Installs Debian `packages` when this can (root with apt-get); otherwise stops with the one
/// command that would, saying `why` they are needed.
fn install_debian(packages: &[&str], why: &str) -> Result<()> {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let list = packages.join(" ");
    if !(root && have("apt-get")) {
        bail!(
            "{why} and need: {list}. Run `sudo apt-get install -y {list}` (or your system's \
             equivalent), then run the same xtask command again"
        );
    }
    say(&format!("xtask: installing {list} ({why})"));
    status(Command::new("apt-get").args(["update", "-qq"]))?;
    status(
        Command::new("apt-get")
            .args(["install", "-y", "-qq"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn test() -> Result<()> {
    system_packages()?;
    npm_packages()?;
    let python = python_env()?;
    // The field's Python scripts in the Rust tests run on the environment's `requests`.
    status(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            // The binary's test hooks (`SHIFTKEY_TEST_PANIC_TASK`) for the supervision tests.
            .args([
                "test",
                "--workspace",
                "--all-targets",
                "--features",
                "shiftkey/test-util",
            ])
            .env("SHIFTKEY_PYTHON", &python)
            // The tools installed above are there: a test that needs one fails without it.
            .env("SHIFTKEY_REQUIRE_TOOLS", "1")
            .current_dir(root()),
    )?;
    cargo(&["test", "--workspace", "--doc"])?;
    // The Python package against the real broker the tests above built.
    say("xtask: the Python client's tests (clients/python, pytest)");
    status(
        Command::new(&python)
            .args(["-m", "pytest", "-q", "clients/python/tests"])
            .env("SHIFTKEY_BIN", root().join("target/debug/shiftkey"))
            .current_dir(root()),
    )?;
    python_package(&python)
}

/// The Python package as PyPI would take it: built (sdist and wheel) and checked by twine; its
/// licence files are the repository's.
fn python_package(python: &Path) -> Result<()> {
    for license in ["LICENSE-MIT", "LICENSE-APACHE"] {
        let ours = std::fs::read(root().join(license))?;
        let theirs = std::fs::read(root().join("clients/python").join(license))?;
        if ours != theirs {
            bail!(
                "clients/python/{license} differs from the repository's {license}: copy it again"
            );
        }
    }
    let dist = root().join("target/python-dist");
    let _ = std::fs::remove_dir_all(&dist);
    say("xtask: building the Python package (python -m build) and checking it (twine check)");
    status(
        Command::new(python)
            .args(["-m", "build", "-q", "--outdir"])
            .arg(&dist)
            .arg(root().join("clients/python")),
    )?;
    let files: Vec<PathBuf> = std::fs::read_dir(&dist)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    status(
        Command::new(python)
            .args(["-m", "twine", "check", "--strict"])
            .args(&files),
    )
}

/// A virtual environment in `target/pyenv` with pytest, requests and httpx from PyPI and the
/// package in `clients/python`: its Python.
fn python_env() -> Result<PathBuf> {
    let env = root().join("target/pyenv");
    let python = env.join("bin/python");
    if !python.is_file() {
        say("xtask: creating target/pyenv (pytest, requests, httpx from PyPI)");
        status(Command::new("python3").args(["-m", "venv"]).arg(&env)).context(
            "cannot create a Python virtual environment (Debian: apt-get install -y python3-venv)",
        )?;
    }
    // cryptography makes the test CA of the TLS tests; build and twine check the package.
    let ready = Command::new(&python)
        .args([
            "-c",
            "import pytest, requests, httpx, cryptography, build, twine",
        ])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ready {
        status(Command::new(&python).args([
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "pytest",
            "requests",
            "httpx",
            "cryptography",
            "build",
            "twine",
        ]))?;
    }
    // The package as it is in this checkout (quick: pure Python, no dependencies to fetch).
    status(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                "--no-deps",
            ])
            .arg(root().join("clients/python")),
    )?;
    Ok(python)
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

const BENCH_BEGIN: &str = "<!-- cargo xtask bench: begin (generated; edits are overwritten) -->";
const BENCH_END: &str = "<!-- cargo xtask bench: end -->";

/// The machine and the moment, for a generated table's caption: (date, cores, CPU).
pub(crate) fn machine() -> (String, usize, String) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    (date, cores, cpu)
}

/// Replaces the text between `<!-- cargo xtask TASK: begin … -->` and `<!-- cargo xtask TASK:
/// end -->` in `doc` (under the repository root) with `body`, captioned with the date, the
/// machine and `command`. Appends the section when the markers are missing.
fn write_generated(doc: &str, task: &str, command: &str, body: &str) -> Result<()> {
    let begin = format!("<!-- cargo xtask {task}: begin (generated; edits are overwritten) -->");
    let end = format!("<!-- cargo xtask {task}: end -->");
    let (date, cores, cpu) = machine();
    let section = format!(
        "{begin}\nGenerated by `{command}` on {date}, {cores} cores ({cpu}).\n\n{}\n{end}\n",
        body.trim_end()
    );
    let path = root().join(doc);
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {doc}"))?;
    let text = match (text.find(&begin), text.find(&end)) {
        (Some(a), Some(b)) if a < b => format!(
            "{}{section}{}",
            &text[..a],
            text[b + end.len()..].trim_start_matches('\n')
        ),
        _ => format!("{}\n\n{section}", text.trim_end()),
    };
    std::fs::write(&path, text).with_context(|| format!("writing {doc}"))?;
    say(&format!("xtask: the table is written to {doc}"));
    Ok(())
}

/// Runs every benchmark, then rewrites the generated section of docs/benchmarks.md.
fn bench() -> Result<()> {
    // Criterion keeps results of earlier runs: only files written from now on count.
    #[allow(
        clippy::disallowed_methods,
        reason = "xtask stamps which criterion results are from this run"
    )]
    let started = std::time::SystemTime::now();
    // Criterion-main suites take the short timing flags; the others have their own `main`
    // (their own criterion configuration, or an end-to-end measure printed on stdout).
    let suites: &[(&str, &str, bool)] = &[
        ("shiftkey-auth", "token", true),
        ("shiftkey-policy", "policy", true),
        ("shiftkey-http", "middleware", true),
        ("shiftkey-store", "store", false),
        ("shiftkey-teamcenter", "initial_load", false),
        ("shiftkey-sync", "sync", false),
        ("shiftkey-sidecar", "proxy", false),
    ];
    let mut end_to_end = String::new();
    for (package, bench, criterion) in suites {
        let mut args = vec!["bench", "-q", "-p", package, "--bench", bench];
        if *criterion {
            args.extend(["--", "--warm-up-time", "1", "--measurement-time", "3"]);
        }
        let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(&args)
            .current_dir(root())
            .stderr(std::process::Stdio::inherit())
            .output()
            .with_context(|| format!("running the {bench} benchmark"))?;
        if !out.status.success() {
            bail!("the {bench} benchmark failed ({})", out.status);
        }
        let text = String::from_utf8_lossy(&out.stdout);
        say(&text);
        // The measures the suites print themselves (store percentiles, call counts, the end to
        // end load), not criterion's own report lines.
        if !criterion {
            for line in text.lines().map(str::trim_end).filter(|l| {
                l.contains(" p50 ")
                    || l.starts_with("initial load")
                    || l.starts_with("HTTP calls")
                    || l.starts_with("incremental cycle")
            }) {
                end_to_end.push_str(&format!("{bench}: {line}\n"));
            }
        }
    }
    // Criterion's results of this run: <target>/criterion/**/new/{benchmark,estimates}.json.
    let mut rows: Vec<(String, String, f64)> = Vec::new();
    let mut stack = vec![root().join("target/criterion")];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            if p.file_name().is_none_or(|n| n != "benchmark.json")
                || p.parent()
                    .and_then(|d| d.file_name())
                    .is_none_or(|n| n != "new")
            {
                continue;
            }
            let fresh = e
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t >= started);
            if !fresh {
                continue;
            }
            let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p)?)?;
            let est: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
                p.with_file_name("estimates.json"),
            )?)?;
            let (Some(group), Some(full), Some(median)) = (
                meta["group_id"].as_str(),
                meta["full_id"].as_str(),
                est["median"]["point_estimate"].as_f64(),
            ) else {
                continue;
            };
            let function = full
                .strip_prefix(group)
                .unwrap_or(full)
                .trim_start_matches('/');
            rows.push((group.to_owned(), function.to_owned(), median));
        }
    }
    rows.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    let is_baseline = |f: &str| f.contains("baseline") || f.starts_with("plain");
    let suffix = |f: &str| {
        f.rsplit_once('/')
            .map(|(_, s)| s.to_owned())
            .unwrap_or_default()
    };
    let mut table =
        String::from("| benchmark | median | vs baseline (same run) |\n| --- | --- | --- |\n");
    for (group, function, median) in &rows {
        let baseline = rows
            .iter()
            .filter(|(g, f, _)| g == group && is_baseline(f) && f != function)
            .find(|(_, f, _)| suffix(f) == suffix(function))
            .or_else(|| {
                rows.iter()
                    .find(|(g, f, _)| g == group && is_baseline(f) && f != function)
            });
        // Without a baseline in its group, a two-thread row is compared with the same operation
        // on one thread (both measured the same way): how it scales under contention.
        let one_thread = function
            .strip_suffix("/2_threads")
            .map(|op| format!("{op}/1_thread"))
            .and_then(|f| rows.iter().find(|(g, r, _)| g == group && *r == f));
        let ratio = match (baseline, one_thread) {
            (Some((_, f, b)), _) if !is_baseline(function) => format!("{:.2}× `{f}`", median / b),
            (None, Some((_, f, b))) => format!("{:.2}× `{f}`", median / b),
            _ => "—".to_owned(),
        };
        table.push_str(&format!(
            "| `{group}/{function}` | {} | {ratio} |\n",
            human_ns(*median)
        ));
    }
    let (date, cores, cpu) = machine();
    let section = format!(
        "{BENCH_BEGIN}\n## Every criterion measurement of the last `cargo xtask bench`\n\n\
         Run of {date} on {cores} cores ({cpu}), shared and noisy: compare ratios within this table, \
         not absolute numbers across runs. Command: `cargo xtask bench` (criterion, 1 s warm-up, \
         3 s measurement per benchmark). A ratio is this median over the baseline's median \
         (lower is faster).\n\n{table}\nPrinted by the suites themselves (`store`: 1 000 saves and loads; \
         `initial_load`: the read path's calls; `sync`: end to end into SQLite; `proxy`: \
         `shiftkey-sidecar`'s proxy against direct calls):\n\n\
         ```text\n{}\n```\n{BENCH_END}\n",
        end_to_end.trim_end()
    );
    let path = root().join("docs/benchmarks.md");
    let doc = std::fs::read_to_string(&path)?;
    let doc = match (doc.find(BENCH_BEGIN), doc.find(BENCH_END)) {
        (Some(a), Some(b)) if a < b => {
            format!(
                "{}{section}{}",
                &doc[..a],
                &doc[b + BENCH_END.len()..].trim_start_matches('\n')
            )
        }
        _ => format!("{}\n{section}", doc.trim_end()),
    };
    std::fs::write(&path, doc)?;
    say(&format!(
        "xtask: {} measurements written to docs/benchmarks.md",
        rows.len()
    ));
    Ok(())
}

/// The proxy against nginx in front of the same upstream (`anchor.rs`); nginx and wrk come from
/// Debian, installed like the test packages (skipped, saying so, where they cannot be).
fn bench_proxy() -> Result<()> {
    if !(have("nginx") && have("wrk"))
        && let Err(e) = install_debian(&["nginx-light", "wrk"], "the proxy's anchor benchmark")
    {
        say(&format!("xtask: bench-proxy skipped: {e:#}"));
        return Ok(());
    }
    cargo(&["build", "--release", "-p", "shiftkey"])?;
    let section = anchor::run(&root(), &root().join("target/release/shiftkey"))?;
    say(&section);
    anchor::write(&root().join("docs/benchmarks.md"), &section)?;
    say("xtask: the proxy's table is written to docs/benchmarks.md");
    Ok(())
}

fn human_ns(ns: f64) -> String {
    if ns >= 1e9 {
        format!("{:.2} s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.1} ns")
    }
}

/// A GET on loopback with the standard library (xtask stays free of an HTTP client).
fn http_get(port: u16, path: &str) -> Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP body")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!("GET {path}: {}", head.lines().next().unwrap_or_default());
    }
    Ok(body.to_owned())
}

/// Polls: xtask has no async runtime, so a plain thread sleep is right here.
fn pause_100ms() {
    #[allow(
        clippy::disallowed_methods,
        reason = "xtask is a synchronous program without a runtime"
    )]
    std::thread::sleep(std::time::Duration::from_millis(100));
}

/// Kills a child when dropped.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn peers(args: &[String]) -> Result<()> {
    let mut minutes = 12.0f64;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--minutes" => {
                let v = it.next().context("--minutes needs a number")?;
                minutes = v
                    .parse()
                    .ok()
                    .filter(|m: &f64| m.is_finite() && *m >= 2.0)
                    .with_context(|| {
                        format!("--minutes: `{v}` is not a number of minutes (≥ 2)")
                    })?;
            }
            other => {
                bail!("peers: unknown argument `{other}` (usage: cargo xtask peers [--minutes N])")
            }
        }
    }
    let root = root();
    let work = root.join("target/peers");
    let _ = std::fs::remove_dir_all(work.join("store"));
    let _ = std::fs::remove_dir_all(work.join("run"));
    std::fs::create_dir_all(&work)?;
    cargo(&[
        "build",
        "-q",
        "-p",
        "shiftkey",
        "-p",
        "shiftkey-tests",
        "--bins",
    ])?;
    let venv = work.join("venv");
    let python = venv.join("bin/python");
    if !python.exists() {
        say(
            "xtask: creating the peers' virtual environment (authlib, requests-oauthlib, google-auth)",
        );
        status(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
        status(Command::new(&python).args([
            "-m",
            "pip",
            "install",
            "-q",
            "authlib",
            "requests-oauthlib",
            "google-auth",
            "requests",
        ]))?;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let peers: [(&str, Option<&str>); 7] = [
        ("naive script (logs in once)", Some("naive")),
        ("refresh every hour", Some("hourly")),
        ("authlib OAuth2Session", Some("authlib")),
        (
            "requests-oauthlib auto_refresh_url",
            Some("requests-oauthlib"),
        ),
        ("google-auth AuthorizedSession", Some("google-auth")),
        ("shiftkey (library)", None),
        (
            "shiftkey broker + 20-line Python client",
            Some("shiftkey-broker"),
        ),
    ];
    let client_of = |mode: Option<&str>| mode.unwrap_or("shiftkey-lib").to_owned();
    let clients: Vec<String> = peers
        .iter()
        .map(|(_, m)| format!("\"{}\" = \"secret\"", client_of(*m)))
        .collect();
    // Tokens claim 5 min and die at 3.5 min; one server restart at 60 % of the run.
    std::fs::write(
        work.join("scenario.toml"),
        format!(
            "[oauth]\naccess_ttl_secs = 300\naccess_ttl_cap_secs = 210\nclients = {{ {} , \"gw-broker\" = \"secret\" }}\n\
             [session]\nrestart_at_hours = [{}]\n[faults]\nrate_limit_probability = 0.01\nretry_after_secs = 2\n",
            clients.join(", "),
            minutes * 0.6 / 60.0
        ),
    )?;
    let bin = root.join("target/debug");
    let _sim = Reaped(
        Command::new(bin.join("shiftkey"))
            .args(["sim", "--port", &port.to_string(), "--config"])
            .arg(work.join("scenario.toml"))
            .stdout(std::process::Stdio::null())
            .spawn()?,
    );
    let base = format!("http://127.0.0.1:{port}");
    let mut ready = false;
    for _ in 0..100 {
        if http_get(port, "/sim/stats").is_ok() {
            ready = true;
            break;
        }
        pause_100ms();
    }
    if !ready {
        bail!("the emulator did not start on port {port}");
    }
    std::fs::write(
        work.join("broker.toml"),
        format!(
            "[store]\ndir = \"{dir}/store\"\nkey = {{ env = \"SK_KEY\" }}\n\
             [tokens.gw]\nkind = \"password\"\ntoken_url = \"{base}/oauth/token\"\nclient_id = \"gw-broker\"\n\
             client_secret = {{ env = \"SK_SECRET\" }}\nusername = \"mfg_sync\"\npassword = {{ env = \"SK_PASSWORD\" }}\n\
             [broker]\nsocket = \"{dir}/run/broker.sock\"\n[ops]\nlisten = \"\"\n",
            dir = work.display()
        ),
    )?;
    let env = [
        ("SK_KEY", "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="),
        ("SK_SECRET", "secret"),
        ("SK_PASSWORD", "mfg_sync_pw"),
    ];
    let _broker = Reaped(
        Command::new(bin.join("shiftkey"))
            .args(["broker", "-c"])
            .arg(work.join("broker.toml"))
            .envs(env)
            .stderr(std::process::Stdio::null())
            .spawn()?,
    );
    let socket = work.join("run/broker.sock");
    for _ in 0..100 {
        if socket.exists() {
            break;
        }
        pause_100ms();
    }
    let seconds = (minutes * 60.0).to_string();
    let token_url = format!("{base}/oauth/token");
    let gateway = format!("{base}/tc/RestServices/Core-2007-01-Session/getTCSessionInfo");
    say(&format!(
        "xtask: running {} peers for {minutes} min against the emulator on {base}",
        peers.len()
    ));
    let mut running = Vec::new();
    for (name, mode) in peers {
        let client = client_of(mode);
        let common = [
            token_url.as_str(),
            gateway.as_str(),
            client.as_str(),
            "secret",
            "mfg_sync",
            "mfg_sync_pw",
            seconds.as_str(),
            "5",
        ];
        let mut cmd = match mode {
            Some(m) => {
                let mut c = Command::new(&python);
                c.arg(root.join("benches/peers/peer.py")).arg(m);
                c
            }
            None => Command::new(bin.join("peer")),
        };
        cmd.args(common)
            .env("SHIFTKEY_BROKER_SOCKET", &socket)
            .stdout(std::process::Stdio::piped());
        running.push((name, client, cmd.spawn()?));
    }
    let mut rows = Vec::new();
    for (name, client, child) in running {
        let out = child.wait_with_output()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("{name}: no JSON summary ({})", out.status))?;
        rows.push((name, client, v));
    }
    let stats: serde_json::Value = serde_json::from_str(&http_get(port, "/sim/stats")?)?;
    let mut table = String::from(
        "| client | calls ok | 401s surfaced | other failures | token-endpoint calls |\n|---|---|---|---|---|\n",
    );
    for (name, client, v) in rows {
        let calls = if client == "shiftkey-broker" {
            stats["grants_by_client"]["gw-broker"].as_u64().unwrap_or(0)
        } else {
            stats["grants_by_client"][&client].as_u64().unwrap_or(0)
        };
        table.push_str(&format!(
            "| {name} | {} | {} | {} | {calls} |\n",
            v["ok"], v["unauthorized"], v["other"]
        ));
    }
    std::fs::write(work.join("peers.md"), &table)?;
    say(&table);
    write_generated(
        "docs/reliability.md",
        "peers",
        &format!("cargo xtask peers --minutes {minutes}"),
        &table,
    )
}

/// The modules whose every mutant a test must kill (or the docs explain): (package, file glob,
/// the test targets that exercise them — cargo-mutants runs only these for each mutant).
/// The last is the seconds a mutant's tests may run before it counts as a hang (a mutant that
/// makes a loop endless): a few times what the unmutated tests take.
const MUTATED: [(&str, &str, &[&str], u32); 3] = [
    (
        "shiftkey-policy",
        "crates/shiftkey-policy/src/*.rs",
        &["--lib", "--tests"],
        20,
    ),
    (
        "shiftkey-http",
        "crates/shiftkey-http/src/limits.rs",
        &["--lib", "--test", "scenarios"],
        90,
    ),
    (
        "shiftkey-auth",
        "crates/shiftkey-auth/src/timing.rs",
        &["--lib", "--test", "timing_props", "--test", "manager"],
        120,
    ),
];

/// Runs cargo-mutants over [`MUTATED`] and writes its outcome into docs/reliability.md.
fn mutants() -> Result<()> {
    let cargo_bin = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    if !Command::new(&cargo_bin)
        .args(["mutants", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        say("xtask: installing cargo-mutants");
        cargo(&["install", "cargo-mutants", "--locked"])?;
    }
    #[allow(
        clippy::disallowed_methods,
        reason = "xtask reports wall time; no decision depends on it"
    )]
    let started = Instant::now();
    let base = root().join("target").join("mutants");
    let mut totals = [0usize; 4];
    let mut rows = String::new();
    let mut modules = Vec::new();
    for (package, file, tests, timeout) in MUTATED {
        let out_dir = base.join(package);
        std::fs::create_dir_all(&out_dir)
            .with_context(|| format!("creating {}", out_dir.display()))?;
        let mut cmd = Command::new(&cargo_bin);
        cmd.args(["mutants", "--package", package, "--file", file])
            // The suite passes on main (CI): no baseline run.
            .args(["--baseline", "skip", "--no-shuffle", "--timeout"])
            .arg(timeout.to_string())
            .arg("--output")
            .arg(&out_dir)
            .args(tests.iter().map(|t| format!("--cargo-test-arg={t}")))
            // One build folder for the three runs: the dependencies are built once.
            .env("CARGO_TARGET_DIR", base.join("build"))
            .current_dir(root());
        // cargo-mutants exits non-zero when a mutant survives or times out: that is a result to
        // report, not a failure of this task. Only a run that produced no outcomes fails.
        let status = cmd.status().context("running cargo mutants")?;
        let read = |name: &str| {
            std::fs::read_to_string(out_dir.join("mutants.out").join(name)).unwrap_or_default()
        };
        if read("outcomes.json").is_empty() {
            bail!("cargo mutants produced no outcomes for {package} ({status})");
        }
        for (i, name) in ["caught.txt", "missed.txt", "timeout.txt", "unviable.txt"]
            .iter()
            .enumerate()
        {
            totals[i] += read(name).lines().filter(|l| !l.trim().is_empty()).count();
        }
        for (kind, name) in [("missed", "missed.txt"), ("timed out", "timeout.txt")] {
            for line in read(name).lines().filter(|l| !l.trim().is_empty()) {
                rows.push_str(&format!("| {kind} | `{}` |\n", line.trim()));
            }
        }
        modules.push(format!("`{file}` (tests: `{}`)", tests.join(" ")));
    }
    let [caught, missed, timeout, unviable] = totals;
    let mut body = format!(
        "Modules: {}. {} mutants: {caught} caught, {missed} missed, {timeout} timed out, \
         {unviable} unviable (did not build), in {} min.\n",
        modules.join(", "),
        caught + missed + timeout + unviable,
        started.elapsed().as_secs() / 60,
    );
    if !rows.is_empty() {
        body.push_str("\n| outcome | mutant |\n|---|---|\n");
        body.push_str(&rows);
    }
    say(&body);
    write_generated(
        "docs/reliability.md",
        "mutants",
        "cargo xtask mutants",
        &body,
    )
}

/// `systemd-analyze verify` on the packaged unit, its `ExecStart` pointed at the binary the
/// tests built (verify checks that the command exists).
fn systemd_unit() -> Result<()> {
    let unit = root().join("packaging/systemd/shiftkey.service");
    let text = std::fs::read_to_string(&unit).context("reading the systemd unit")?;
    let binary = root().join("target/debug/shiftkey");
    let dir = std::env::temp_dir().join(format!("shiftkey-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let copy = dir.join("shiftkey.service");
    std::fs::write(
        &copy,
        text.replace("/usr/bin/shiftkey", &binary.display().to_string()),
    )?;
    let result = status(Command::new("systemd-analyze").arg("verify").arg(&copy))
        .context("`systemd-analyze verify packaging/systemd/shiftkey.service` failed");
    let _ = std::fs::remove_dir_all(&dir);
    result?;
    unit_exposure(&unit)
}

/// The unit's exposure score (`systemd-analyze security --offline=yes`: 0 locked down, 10
/// exposed) stays at or below [`MAX_EXPOSURE`].
fn unit_exposure(unit: &std::path::Path) -> Result<()> {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(unit)
        .output()
        .context("running `systemd-analyze security --offline=yes`")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let score = exposure(&text).with_context(|| {
        format!(
            "no exposure level in `systemd-analyze security` output: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    say(&format!(
        "xtask: the packaged unit's exposure is {score} (at most {MAX_EXPOSURE})"
    ));
    if score > MAX_EXPOSURE {
        bail!(
            "packaging/systemd/shiftkey.service scores {score} in `systemd-analyze security`, \
             above {MAX_EXPOSURE}: a hardening line was lost (see the lines marked ✗ there)"
        );
    }
    Ok(())
}

/// The highest exposure the packaged unit may score (issue: local trust, item 8).
const MAX_EXPOSURE: f64 = 2.0;

/// The score in `→ Overall exposure level for shiftkey.service: 1.2 OK`.
fn exposure(text: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.split("Overall exposure level for").nth(1))
        .and_then(|rest| rest.split(':').nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn the_exposure_score_is_read_from_systemd_analyze_output() {
    let text = "  ✓ UMask=  Files created by service are accessible only by service's own user\n\
                \n→ Overall exposure level for shiftkey.service: 1.2 OK 🙂\n";
    assert_eq!(exposure(text), Some(1.2));
    assert_eq!(
        exposure("→ Overall exposure level for x.service: 8.5 EXPOSED 🙁"),
        Some(8.5)
    );
    assert_eq!(exposure("nothing"), None);
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

/// Every alert of `rules` has a `runbook_url` whose anchor is a heading of `docs`.
fn runbooks_exist(rules: &Path, docs: &Path) -> Result<()> {
    let rules = std::fs::read_to_string(rules).with_context(|| rules.display().to_string())?;
    let docs = std::fs::read_to_string(docs).with_context(|| docs.display().to_string())?;
    // GitHub's heading anchors: lower case, spaces to `-`, other punctuation dropped.
    let anchors: Vec<String> = docs
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .map(|h| {
            h.trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter_map(|c| match c {
                    ' ' => Some('-'),
                    c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                    _ => None,
                })
                .collect()
        })
        .collect();
    let alerts = rules
        .lines()
        .filter(|l| l.trim_start().starts_with("- alert:"))
        .count();
    let urls: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("runbook_url:"))
        .map(|u| u.trim().trim_matches('"'))
        .collect();
    if urls.len() != alerts {
        bail!("{alerts} alerts but {} runbook_url annotations", urls.len());
    }
    for url in urls {
        let anchor = url.rsplit_once('#').map_or("", |(_, a)| a);
        if !anchors.iter().any(|a| a == anchor) {
            bail!("runbook_url {url}: docs/operations.md has no heading with the anchor #{anchor}");
        }
    }
    Ok(())
}

/// Checks and unit-tests the Prometheus alert rules with promtool (Debian's `prometheus`).
fn alert_rules() -> Result<()> {
    if !have("promtool") {
        install_debian(&["prometheus"], "promtool (to check the alert rules)")?;
    }
    let dir = root().join("packaging/prometheus");
    runbooks_exist(
        &dir.join("shiftkey-rules.yml"),
        &root().join("docs/operations.md"),
    )?;
    status(
        Command::new("promtool")
            .args(["check", "rules", "shiftkey-rules.yml"])
            .current_dir(&dir),
    )?;
    status(
        Command::new("promtool")
            .args(["test", "rules", "shiftkey-rules.test.yml"])
            .current_dir(&dir),
    )
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

/// `cargo xtask examples`: runs every library crate's `examples/` (offline: each starts the
/// emulator on loopback itself); an example that fails exits non-zero.
fn examples() -> Result<()> {
    let mut ran = 0;
    for lib in LIBRARIES {
        let dir = root().join("crates").join(lib).join("examples");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".rs").map(str::to_owned)
            })
            .collect();
        names.sort();
        for name in names {
            say(&format!("xtask: example {lib} {name}"));
            cargo(&["run", "-q", "-p", lib, "--example", &name])?;
            ran += 1;
        }
    }
    if ran == 0 {
        bail!("no examples found under crates/*/examples");
    }
    say(&format!("xtask: {ran} examples ran"));
    Ok(())
}

/// What a crate built with its default features must not compile: (crate, packages).
const NOT_COMPILED: &[(&str, &[&str])] = &[
    // SQLite by default: no PostgreSQL driver, no TLS for it.
    ("shiftkey-shopfloor", &["sqlx-postgres"]),
    // Client secrets need no JWT signer (feature `private-key-jwt`) and so no C cryptography.
    (
        "shiftkey-auth",
        &["jsonwebtoken", "aws-lc-rs", "aws-lc-sys"],
    ),
    // The emulator needs only the clock: none of the token machinery.
    ("shiftkey-sim", &["shiftkey-auth", "oauth2", "jsonwebtoken"]),
];

/// Every package `krate` compiles with its default features (normal dependencies).
fn compiled_packages(krate: &str) -> Result<Vec<String>> {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "tree", "-p", krate, "-e", "normal", "--prefix", "none", "--format", "{p}",
        ])
        .current_dir(root())
        .output()
        .context("running cargo tree")?;
    if !out.status.success() {
        bail!(
            "cargo tree -p {krate} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect())
}

/// Each crate of [`NOT_COMPILED`] compiles none of its packages.
fn carries_only_what_it_uses() -> Result<()> {
    for (krate, forbidden) in NOT_COMPILED {
        let packages = compiled_packages(krate)?;
        let found: Vec<&&str> = forbidden
            .iter()
            .filter(|f| packages.iter().any(|p| p == **f))
            .collect();
        if !found.is_empty() {
            bail!("{krate} with its default features compiles {found:?}; it must not");
        }
        say(&format!("xtask: {krate} compiles none of {forbidden:?}"));
    }
    Ok(())
}

fn libraries_alone() -> Result<()> {
    for lib in LIBRARIES {
        cargo(&["check", "-p", lib, "--lib"])?;
        cargo(&["check", "-p", lib, "--lib", "--no-default-features"])?;
    }
    carries_only_what_it_uses()?;
    status(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "doc",
                "--no-deps",
                "--workspace",
                "--all-features",
                "--exclude",
                "shiftkey-tests",
                "--exclude",
                "xtask",
            ])
            .env("RUSTDOCFLAGS", "-D warnings")
            .current_dir(root()),
    )?;
    // Metadata, license files and contents as crates.io would check them. Verifying would build
    // each crate again from its archive against crates.io, where its siblings are not yet.
    cargo(&[
        "package",
        "--workspace",
        "--exclude",
        "shiftkey-tests",
        "--exclude",
        "xtask",
        "--no-verify",
        "--allow-dirty",
    ])
}

/// `cargo xtask package`: the Debian package of the service (the binary without the emulator),
/// with its unit, example configuration, alert rules, manual page and completions.
fn package() -> Result<PathBuf> {
    let cargo_bin = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    if !Command::new(&cargo_bin)
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        say("xtask: installing cargo-deb");
        cargo(&["install", "cargo-deb", "--locked", "--no-default-features"])?;
    }
    cargo(&[
        "build",
        "--release",
        "-p",
        "shiftkey",
        "--no-default-features",
    ])?;
    let bin = root().join("target/release/shiftkey");
    let assets = root().join("target/release/package-assets");
    std::fs::create_dir_all(&assets)?;
    let capture = |args: &[&str], out: &Path| -> Result<()> {
        let o = Command::new(&bin)
            .args(args)
            .output()
            .with_context(|| format!("running {} {args:?}", bin.display()))?;
        if !o.status.success() {
            bail!(
                "{} {args:?} failed: {}",
                bin.display(),
                String::from_utf8_lossy(&o.stderr)
            );
        }
        std::fs::write(out, o.stdout).with_context(|| format!("writing {}", out.display()))
    };
    // One manual page per command and subcommand, gzipped as Debian ships them.
    let man = assets.join("man");
    let _ = std::fs::remove_dir_all(&man);
    std::fs::create_dir_all(&man)?;
    status(Command::new(&bin).arg("man").arg("--dir").arg(&man))?;
    for page in std::fs::read_dir(&man)?.filter_map(Result::ok) {
        status(Command::new("gzip").arg("-9nf").arg(page.path()))?;
    }
    capture(&["completions", "bash"], &assets.join("shiftkey.bash"))?;
    capture(&["completions", "zsh"], &assets.join("_shiftkey"))?;
    capture(&["completions", "fish"], &assets.join("shiftkey.fish"))?;
    let out = root().join("target/debian");
    let _ = std::fs::remove_dir_all(&out);
    cargo(&["deb", "-p", "shiftkey", "--no-build", "--no-strip"])?;
    std::fs::read_dir(&out)
        .context("cargo deb wrote no target/debian")?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .context("cargo deb wrote no .deb")
}

/// Builds the package, installs it with dpkg as a plant would, and runs the installed binary
/// on the installed configuration; then removes it. Needs root and dpkg (skipped, saying so,
/// without them).
fn deb_installs() -> Result<()> {
    let deb = package()?;
    let root_user = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !(root_user && have("dpkg")) {
        say("xtask: not root or no dpkg: the package was built but not installed");
        return Ok(());
    }
    // Never touch a real installation: its configuration would go with the purge.
    if Command::new("dpkg")
        .args(["-s", "shiftkey"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        say(
            "xtask: shiftkey is installed on this machine: the package was built, not installed over it",
        );
        return Ok(());
    }
    let result = (|| -> Result<()> {
        status(Command::new("dpkg").arg("-i").arg(&deb))?;
        status(Command::new("/usr/bin/shiftkey").arg("--version"))?;
        // The installed configuration with the credentials its unit loads (dummies here).
        let creds = std::env::temp_dir().join(format!("shiftkey-deb-creds-{}", std::process::id()));
        std::fs::create_dir_all(&creds)?;
        // Named as the packaged unit's `LoadCredential=shiftkey:/etc/shiftkey/credentials`
        // names them.
        for (name, value) in [
            ("tc-password", "a-secret-for-the-check"),
            ("mes-secret", "a-secret-for-the-check"),
            ("store-key", "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="),
        ] {
            let path = creds.join(format!("shiftkey_{name}"));
            std::fs::write(&path, value)?;
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        }
        let checked = status(
            Command::new("/usr/bin/shiftkey")
                .args(["config", "check", "-c", "/etc/shiftkey/shiftkey.toml"])
                .env("CREDENTIALS_DIRECTORY", &creds),
        );
        let _ = std::fs::remove_dir_all(&creds);
        checked?;
        let listed = Command::new("dpkg").args(["-L", "shiftkey"]).output()?;
        let listed = String::from_utf8_lossy(&listed.stdout);
        for file in [
            "/usr/share/man/man1/shiftkey.1.gz",
            "/usr/share/man/man1/shiftkey-token-get.1.gz",
            "/usr/share/bash-completion/completions/shiftkey",
            "/usr/share/shiftkey/prometheus/shiftkey-rules.yml",
            "/usr/share/shiftkey/grafana/grafana-dashboard.json",
        ] {
            if !listed.lines().any(|l| l == file) {
                bail!("the package does not install {file}");
            }
        }
        // The unit (cargo-deb puts it under lib/ or usr/lib/), enabled by the generated
        // maintainer scripts: the symlink exists whether or not systemd runs here.
        if !listed
            .lines()
            .any(|l| l.ends_with("/systemd/system/shiftkey.service"))
        {
            bail!("the package does not install shiftkey.service");
        }
        if !Path::new("/etc/systemd/system/multi-user.target.wants/shiftkey.service").exists() {
            bail!("the package did not enable shiftkey.service");
        }
        // Started with systemd where this machine runs it (not in a container without it).
        if Path::new("/run/systemd/system").is_dir() {
            status(Command::new("systemctl").args(["start", "shiftkey"])).ok();
            let active = Command::new("systemctl")
                .args(["is-active", "shiftkey"])
                .output()?;
            say(&format!(
                "xtask: systemctl start shiftkey: {} (without a site's configuration it stops with exit 3)",
                String::from_utf8_lossy(&active.stdout).trim()
            ));
        } else {
            say(
                "xtask: systemd is not running here: the unit was installed and enabled, not started",
            );
        }
        // Upgraded in place: the same package again runs the upgrade path of the scripts.
        status(Command::new("dpkg").arg("-i").arg(&deb))?;
        if !Command::new("getent")
            .args(["passwd", "shiftkey"])
            .output()?
            .status
            .success()
        {
            bail!("the package did not create the `shiftkey` system user");
        }
        Ok(())
    })();
    status(Command::new("dpkg").args(["--purge", "shiftkey"]))?;
    result?;
    if Path::new("/etc/systemd/system/multi-user.target.wants/shiftkey.service").exists()
        || Path::new("/usr/bin/shiftkey").exists()
    {
        bail!("the purge left the binary or the enabled unit behind");
    }
    Ok(())
}

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
