//! The service's own checks in `cargo xtask ci`: the systemd unit's exposure, the alert rules and their runbooks.

use super::*;

/// `systemd-analyze verify` on the packaged unit, its `ExecStart` pointed at the binary the
/// tests built (verify checks that the command exists).
pub(crate) fn systemd_unit() -> Result<()> {
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
pub(crate) fn unit_exposure(unit: &std::path::Path) -> Result<()> {
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
pub(crate) const MAX_EXPOSURE: f64 = 2.0;

/// The score in `→ Overall exposure level for shiftkey.service: 1.2 OK`.
pub(crate) fn exposure(text: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.split("Overall exposure level for").nth(1))
        .and_then(|rest| rest.split(':').nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

#[test]
pub(crate) fn the_exposure_score_is_read_from_systemd_analyze_output() {
    let text = "  ✓ UMask=  Files created by service are accessible only by service's own user\n\
                \n→ Overall exposure level for shiftkey.service: 1.2 OK 🙂\n";
    assert_eq!(exposure(text), Some(1.2));
    assert_eq!(
        exposure("→ Overall exposure level for x.service: 8.5 EXPOSED 🙁"),
        Some(8.5)
    );
    assert_eq!(exposure("nothing"), None);
}

/// Every alert of `rules` has a `runbook_url` whose anchor is a heading of `docs`.
pub(crate) fn runbooks_exist(rules: &Path, docs: &Path) -> Result<()> {
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
pub(crate) fn alert_rules() -> Result<()> {
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
