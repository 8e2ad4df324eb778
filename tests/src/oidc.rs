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
/// ES256, key at [`OidcServer::jwt_key_path`]), `svc-jwt-rs256` and `svc-jwt-ps256` (the same
/// with RS256 and PS256, key at [`OidcServer::rsa_key_path`]), `app` / `app-secret` (password and
/// refresh_token grants; user `alice` / `wonderland`), `login-app` (a public client with the device
/// and authorization code grants, for `token login`). Refresh tokens rotate; reusing one revokes the grant.
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
            .env("RSA_KEY_OUT", tmp.join("svc-rsa.pem"))
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

    /// PEM RSA private key of the `svc-jwt-rs256` and `svc-jwt-ps256` clients.
    pub fn rsa_key_path(&self) -> PathBuf {
        self.key_path.with_file_name("svc-rsa.pem")
    }

    /// Plays the person of a device login: alice approves (or, with `approve` false, refuses)
    /// the device code `user_code`, as the server's own verification page would record it.
    pub async fn decide_device(&self, http: &reqwest::Client, user_code: &str, approve: bool) {
        let mut url = self
            .issuer
            .join("/test/device")
            .unwrap_or_else(|e| panic!("{e}"));
        url.query_pairs_mut().append_pair("user_code", user_code);
        if !approve {
            url.query_pairs_mut().append_pair("deny", "1");
        }
        let resp = http
            .post(url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("deciding the device code: {e}"));
        assert!(
            resp.status().is_success(),
            "deciding the device code: {}",
            resp.status()
        );
    }

    /// Plays the person's browser of a browser login: follows `authorize_url` through the
    /// server's sign-in (alice consents at once) with the cookies a browser keeps, up to the
    /// redirect to the client's loopback `callback`, which it then calls. Returns the callback's
    /// status.
    pub async fn browse_login(&self, authorize_url: &str) -> reqwest::StatusCode {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let mut cookies: std::collections::BTreeMap<String, String> = Default::default();
        let mut url = Url::parse(authorize_url).unwrap_or_else(|e| panic!("{authorize_url}: {e}"));
        for _ in 0..10 {
            let cookie = cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ");
            let mut req = http.get(url.clone());
            if !cookie.is_empty() {
                req = req.header(reqwest::header::COOKIE, cookie);
            }
            let resp = req
                .send()
                .await
                .unwrap_or_else(|e| panic!("browsing {url}: {e}"));
            if url.host_str() == Some("127.0.0.1") && url.port() != self.issuer.port() {
                return resp.status();
            }
            for c in resp.headers().get_all(reqwest::header::SET_COOKIE) {
                let pair = c
                    .to_str()
                    .unwrap_or_default()
                    .split(';')
                    .next()
                    .unwrap_or_default();
                if let Some((k, v)) = pair.split_once('=') {
                    cookies.insert(k.trim().to_owned(), v.trim().to_owned());
                }
            }
            let Some(next) = resp.headers().get(reqwest::header::LOCATION) else {
                panic!("browsing {url}: HTTP {} without a redirect", resp.status());
            };
            let next = next.to_str().unwrap_or_else(|e| panic!("{e}"));
            url = url.join(next).unwrap_or_else(|e| panic!("{next}: {e}"));
        }
        panic!("the login did not come back to the client within 10 redirects");
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
