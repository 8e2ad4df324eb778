//! What the tasks need on this machine: Debian packages, the npm packages, the Python environment and package.

use super::*;

/// The npm packages of the test servers (`tests/oidc`), installed from the lock file when missing.
pub(crate) fn npm_packages() -> Result<()> {
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

/// Whether `python3 -m venv` can make an environment with pip (Debian splits it out).
pub(crate) fn python_venv() -> bool {
    Command::new("python3")
        .args(["-c", "import ensurepip, venv"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The Debian packages the tests need that this machine lacks.
pub(crate) fn missing_packages() -> Vec<&'static str> {
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
pub(crate) fn system_packages() -> Result<()> {
    let need = missing_packages();
    if need.is_empty() {
        return Ok(());
    }
    install_debian(&need, "the tests start real servers")
}

/// Installs Debian `packages` when this can (root with apt-get); otherwise stops with the one
/// command that would, saying `why` they are needed.
pub(crate) fn install_debian(packages: &[&str], why: &str) -> Result<()> {
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

/// The Python package as PyPI would take it: built (sdist and wheel) and checked by twine; its
/// licence files are the repository's.
pub(crate) fn python_package(python: &Path) -> Result<()> {
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
pub(crate) fn python_env() -> Result<PathBuf> {
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
