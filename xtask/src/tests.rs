//! `cargo xtask test`, `proptest` and `examples`.

use super::*;

pub(crate) fn test() -> Result<()> {
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

pub(crate) fn proptest(args: &[String]) -> Result<()> {
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

/// `cargo xtask examples`: runs every library crate's `examples/` (offline: each starts the
/// emulator on loopback itself); an example that fails exits non-zero.
pub(crate) fn examples() -> Result<()> {
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
