//! `cargo xtask libs`: each library alone, with and without its default features, its docs and its package.

use super::*;

/// What a crate built with its default features must not compile: (crate, packages).
pub(crate) const NOT_COMPILED: &[(&str, &[&str])] = &[
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
pub(crate) fn compiled_packages(krate: &str) -> Result<Vec<String>> {
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
pub(crate) fn carries_only_what_it_uses() -> Result<()> {
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

pub(crate) fn libraries_alone() -> Result<()> {
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
