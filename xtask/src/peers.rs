//! `cargo xtask peers`: shiftkey beside other token clients against one emulator, in real time.

use super::*;

/// A GET on loopback with the standard library (xtask stays free of an HTTP client).
pub(crate) fn http_get(port: u16, path: &str) -> Result<String> {
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
pub(crate) fn pause_100ms() {
    #[allow(
        clippy::disallowed_methods,
        reason = "xtask is a synchronous program without a runtime"
    )]
    std::thread::sleep(std::time::Duration::from_millis(100));
}

/// Kills a child when dropped.
pub(crate) struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn peers(args: &[String]) -> Result<()> {
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
