//! A real OAuth 2.0 server: `oidc-provider` (npm) running `tests/oidc/server.mjs` on loopback.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::Value;
use url::Url;

/// A running oidc-provider. Killed on drop.
///
/// Clients it knows (see `server.mjs`): `svc-basic` / `svc-basic-secret` and `svc-post` /
/// `svc-post-secret` (client_credentials), `svc-jwt` (client_credentials with `private_key_jwt`,
/// ES256, key at [`OidcServer::jwt_key_path`]), `app` / `app-secret` (password and refresh_token
/// grants; user `alice` / `wonderland`). Refresh tokens rotate; reusing one revokes the grant.
pub struct OidcServer {
    child: Child,
    issuer: Url,
    key_path: PathBuf,
    events: Arc<Mutex<Vec<Value>>>,
    _dir: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn oidc_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("oidc")
}

impl OidcServer {
    /// Starts a server whose access tokens live `access_ttl` seconds.
    ///
    /// # Panics
    /// When node or the npm packages are missing (with the command that fixes it) or the server
    /// does not come up within 20 s.
    pub fn start(access_ttl: u64) -> Self {
        let dir = oidc_dir();
        assert!(
            dir.join("node_modules/oidc-provider").is_dir(),
            "oidc-provider is not installed: run `npm ci --prefix {}` (or `cargo xtask test`, which does it)",
            dir.display()
        );
        let tmp =
            std::env::temp_dir().join(format!("shiftkey-oidc-{}-{}", std::process::id(), unique()));
        std::fs::create_dir_all(&tmp).unwrap_or_else(|e| panic!("creating {}: {e}", tmp.display()));
        let key_path = tmp.join("svc-jwt.pem");
        let mut child = Command::new("node")
            .arg(dir.join("server.mjs"))
            .current_dir(&dir)
            .env("PORT", "0")
            .env("ACCESS_TTL", access_ttl.to_string())
            .env("KEY_OUT", &key_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting node failed ({e}): install Node.js 20+ (`apt-get install -y nodejs npm`)"));
        let stdout = child
            .stdout
            .take()
            .unwrap_or_else(|| panic!("no stdout from node"));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&events);
        std::thread::spawn(move || {
            let mut ready = Some(ready_tx);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if v.get("ready").is_some() {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(v);
                    }
                } else {
                    sink.lock().unwrap_or_else(PoisonError::into_inner).push(v);
                }
            }
        });
        let ready = ready_rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("oidc-provider did not start within 20 s"));
        let issuer = ready["issuer"]
            .as_str()
            .and_then(|s| Url::parse(s).ok())
            .unwrap_or_else(|| panic!("bad ready line {ready}"));
        Self {
            child,
            issuer,
            key_path,
            events,
            _dir: TempDir(tmp),
        }
    }

    /// The issuer URL (`http://127.0.0.1:PORT`).
    pub fn issuer(&self) -> &Url {
        &self.issuer
    }

    /// The token endpoint.
    pub fn token_url(&self) -> Url {
        self.issuer.join("/token").unwrap_or_else(|e| panic!("{e}"))
    }

    /// PEM private key of the `svc-jwt` client.
    pub fn jwt_key_path(&self) -> &Path {
        &self.key_path
    }

    /// Token-endpoint events so far (`grant.success`, `grant.error` with `detail`, `grant.revoked`).
    pub fn events(&self) -> Vec<Value> {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits (up to 20 s: the events come from another process) until `done` holds for the
    /// events read so far, and returns them.
    ///
    /// Events reach us through a reader thread, so an answer can arrive before its event line has
    /// been read. Lines are read in order: once the latest expected event is here, so is every
    /// earlier one, and counts of earlier events are exact.
    pub async fn wait_events(&self, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        for _ in 0..1000 {
            let events = self.events();
            if done(&events) {
                return events;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.events()
    }

    /// Token-endpoint successes of `grant_type`, after waiting until there are at least `at_least`.
    pub async fn successes(&self, grant_type: &str, at_least: usize) -> usize {
        let count = |events: &[Value]| {
            events
                .iter()
                .filter(|e| e["event"] == "grant.success" && e["grant_type"] == grant_type)
                .count()
        };
        count(&self.wait_events(|e| count(e) >= at_least).await)
    }

    /// Whether the server considers `access_token` active now (its introspection endpoint).
    pub async fn is_active(&self, http: &reqwest::Client, access_token: &str) -> bool {
        let url = self
            .issuer
            .join("/token/introspection")
            .unwrap_or_else(|e| panic!("{e}"));
        let answer: Value = http
            .post(url)
            .basic_auth("svc-basic", Some("svc-basic-secret"))
            .form(&[("token", access_token)])
            .send()
            .await
            .unwrap_or_else(|e| panic!("introspection: {e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("introspection answer: {e}"));
        answer["active"] == Value::Bool(true)
    }
}

impl Drop for OidcServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}
