//! `cargo xtask mutants`: cargo-mutants over the timing law, the policy engine and the limit learner.

use super::*;

/// The modules whose every mutant a test must kill (or the docs explain): (package, file glob,
/// the test targets that exercise them — cargo-mutants runs only these for each mutant).
/// The last is the seconds a mutant's tests may run before it counts as a hang (a mutant that
/// makes a loop endless): a few times what the unmutated tests take.
pub(crate) const MUTATED: [(&str, &str, &[&str], u32); 3] = [
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
pub(crate) fn mutants() -> Result<()> {
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
