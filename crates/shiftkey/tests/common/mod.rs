//! Helpers shared by the CLI tests: temp folders, running the binary, a daemon with its log.

#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers: each test binary uses some of them, and they fail loudly"
)]

use std::io::BufRead as _;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_shiftkey");

/// A 32-byte store key (base64) for tests.
pub(crate) const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// The emulator on real time, with `cfg`.
pub(crate) async fn start_sim(cfg: shiftkey_sim::SimConfig) -> shiftkey_sim::Sim {
    shiftkey_sim::Sim::start(cfg, Arc::new(shiftkey_auth::TokioClock::new()))
        .await
        .unwrap()
}

/// The Python that runs the field's scripts: `SHIFTKEY_PYTHON` (the virtual environment
/// `cargo xtask test` prepares, with `requests` and `httpx`), else `python3`.
pub(crate) fn python() -> String {
    std::env::var("SHIFTKEY_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// `promtool check metrics` on a `/metrics` text: Prometheus' own linter (HELP texts, counter
/// names, units) must find nothing. Without promtool the check is skipped with a note, unless
/// `SHIFTKEY_REQUIRE_TOOLS` is set (as `cargo xtask test` does after installing it).
#[allow(
    clippy::print_stderr,
    reason = "a skipped check says so in the test output"
)]
pub(crate) fn promtool_check_metrics(metrics: &str) {
    use std::io::Write as _;
    let have = Command::new("promtool")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        assert!(
            std::env::var_os("SHIFTKEY_REQUIRE_TOOLS").is_none(),
            "promtool is required (Debian: apt-get install prometheus)"
        );
        eprintln!(
            "promtool not found: `promtool check metrics` skipped (cargo xtask test runs it)"
        );
        return;
    }
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}\n{metrics}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Text meant for people (CLI output, `/status`, the log) never shows Rust's debug formatting:
/// `Some(…)`, `None`, `Struct { field: … }` or an enum variant's name. An HTML page is read
/// without its `<style>` block.
pub(crate) fn assert_reads_as_words(text: &str, what: &str) {
    let text = match (text.find("<style>"), text.find("</style>")) {
        (Some(a), Some(b)) if a < b => format!("{}{}", &text[..a], &text[b..]),
        _ => text.to_owned(),
    };
    for debug in [
        "Some(",
        "None",
        " { ",
        "HalfOpen",
        "Closed",
        "ExpiresIn",
        "JwtClaims",
        "Warning,",
        "Critical",
        "Leader",
        "Follower",
        "Unreachable",
    ] {
        assert!(
            !text.contains(debug),
            "{what} reads like Rust's debug text ({debug:?}):\n{text}"
        );
    }
}

/// A fresh private folder for one test.
pub(crate) fn temp_dir(name: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = std::env::temp_dir().join(format!("shiftkey-t-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    dir
}

/// Runs the binary to completion.
pub(crate) fn shiftkey(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(BIN);
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

/// stdout + stderr as text.
pub(crate) fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A long-running `shiftkey` with its stderr collected.
pub(crate) struct Daemon {
    child: Option<Child>,
    log: Arc<Mutex<String>>,
    /// The thread reading stderr into `log`: it ends when the process's stderr closes.
    reader: std::thread::JoinHandle<()>,
}

impl Daemon {
    pub(crate) fn spawn(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut c = Command::new(BIN);
        c.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
        // The tests read the default log and play the service manager themselves.
        for var in ["RUST_LOG", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
            c.env_remove(var);
        }
        for (k, v) in env {
            c.env(k, v);
        }
        let mut child = c.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&log);
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        Self {
            child: Some(child),
            log,
            reader,
        }
    }

    /// Waits (up to 10 s) until the reader has reached the end of stderr, so that the log is
    /// whole once the process has exited. A child the daemon started may still hold stderr open:
    /// then the log is what was read by the deadline.
    async fn drain(&self) {
        for _ in 0..1000 {
            if self.reader.is_finished() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub(crate) fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The first log line containing `needle` (waits up to 30 s).
    pub(crate) async fn wait_for(&mut self, needle: &str) -> String {
        for _ in 0..300 {
            if let Some(line) = self.log().lines().find(|l| l.contains(needle)) {
                return line.to_owned();
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "shiftkey exited ({status}) before logging {needle:?}:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no {needle:?} in 30 s:\n{}", self.log());
    }

    /// The process id (for reading its memory use in /proc).
    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// The URL logged after `prefix` (e.g. "ops endpoints on "), without the path.
    pub(crate) async fn address(&mut self, prefix: &str) -> String {
        let line = self.wait_for(prefix).await;
        let url = line.split(prefix).nth(1).unwrap().trim();
        let rest = url.strip_prefix("http://").unwrap();
        format!("http://{}", rest.split('/').next().unwrap())
    }

    /// Waits (up to 60 s) for the process to exit by itself: its status and whole log.
    pub(crate) async fn wait_exit(mut self) -> (std::process::ExitStatus, String) {
        for _ in 0..600 {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                self.drain().await;
                return (status, self.log());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("still running after 60 s:\n{}", self.log());
    }

    /// SIGTERM, then the exit status and the whole log.
    pub(crate) async fn terminate(mut self) -> (std::process::ExitStatus, String) {
        let child = self.child.take().unwrap();
        let ok = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        let mut child = child;
        let status = tokio::task::spawn_blocking(move || child.wait())
            .await
            .unwrap()
            .unwrap();
        self.drain().await;
        (status, self.log())
    }
}

impl Daemon {
    /// SIGKILL, and waits for the process to be gone.
    pub(crate) fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
