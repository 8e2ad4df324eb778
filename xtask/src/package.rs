//! `cargo xtask package`: the Debian package, and its install, upgrade and purge.

use super::*;

/// `cargo xtask package`: the Debian package of the service (the binary without the emulator),
/// with its unit, example configuration, alert rules, manual page and completions.
pub(crate) fn package() -> Result<PathBuf> {
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
pub(crate) fn deb_installs() -> Result<()> {
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
