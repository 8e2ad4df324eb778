//! `cargo xtask bench-proxy` (also the last step of `cargo xtask bench`): the healing proxy
//! against its anchor, measured in one run on this machine. The same minimal upstream (nginx
//! answering `200 ok` itself) is reached directly, through `shiftkey proxy`, and through nginx
//! as a reverse proxy setting the same `Authorization` header (`worker_processes auto`, upstream
//! keepalive, no healing), each by `wrk` at 1 and 32 connections, 3 repetitions of 4 s. The
//! table goes into docs/benchmarks.md between its own markers.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

pub(crate) const BEGIN: &str =
    "<!-- cargo xtask bench-proxy: begin (generated; edits are overwritten) -->";
pub(crate) const END: &str = "<!-- cargo xtask bench-proxy: end -->";

const SECONDS: u32 = 4;
const REPETITIONS: usize = 3;
const CONNECTIONS: [u32; 2] = [1, 32];

/// A child process killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Waits until something accepts connections on `port` (10 s at most).
fn wait_listening(port: u16, what: &str) -> Result<()> {
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        #[allow(
            clippy::disallowed_methods,
            reason = "xtask waits for a real process to listen"
        )]
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{what} did not listen on 127.0.0.1:{port} within 10 s")
}

fn nginx(dir: &Path, name: &str, workers: &str, server: &str) -> Result<Running> {
    let tmp = dir.join(format!("{name}-tmp"));
    std::fs::create_dir_all(&tmp)?;
    let t = tmp.display();
    let conf = dir.join(format!("{name}.conf"));
    std::fs::write(
        &conf,
        format!(
            "worker_processes {workers};\ndaemon off;\npid {d}/{name}.pid;\nerror_log {d}/{name}.err warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {t}; proxy_temp_path {t}; fastcgi_temp_path {t};\n  \
             uwsgi_temp_path {t}; scgi_temp_path {t};\n  keepalive_requests 1000000;\n{server}\n}}\n",
            d = dir.display(),
        ),
    )?;
    let child = Command::new("nginx")
        .arg("-c")
        .arg(&conf)
        .arg("-p")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting nginx")?;
    Ok(Running(child))
}

/// One wrk run: (requests/s, p50 µs, p99 µs).
fn wrk(port: u16, connections: u32) -> Result<(f64, f64, f64)> {
    let threads = connections.min(2).to_string();
    let out = Command::new("wrk")
        .args(["--latency", "-t", &threads, "-c", &connections.to_string()])
        .arg(format!("-d{SECONDS}s"))
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || text.contains("Non-2xx") || text.contains("Socket errors") {
        bail!("wrk on port {port}: failed or saw errors:\n{text}");
    }
    let rps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .with_context(|| format!("no Requests/sec in wrk's output:\n{text}"))?;
    let percentile = |p: &str| -> Result<f64> {
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with(p))
            .with_context(|| format!("no {p} latency in wrk's output:\n{text}"))?;
        micros(line.trim_start_matches(p).trim())
    };
    Ok((rps, percentile("50%")?, percentile("99%")?))
}

/// wrk's durations (`123.00us`, `1.23ms`, `2.00s`) in microseconds.
fn micros(v: &str) -> Result<f64> {
    let (number, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1e6)
    } else {
        bail!("`{v}` is not a wrk duration");
    };
    Ok(number.parse::<f64>().context("a wrk duration")? * scale)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs the comparison and returns the generated section.
pub(crate) fn run(root: &Path, shiftkey: &Path) -> Result<String> {
    let dir: PathBuf = root.join("target/bench-proxy");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let (up, via_nginx, via_shiftkey, oauth) =
        (free_port()?, free_port()?, free_port()?, free_port()?);
    let _upstream = nginx(
        &dir,
        "upstream",
        "1",
        &format!("  server {{ listen 127.0.0.1:{up}; location / {{ return 200 \"ok\\n\"; }} }}"),
    )?;
    let _reverse = nginx(
        &dir,
        "reverse",
        "auto",
        &format!(
            "  upstream up {{ server 127.0.0.1:{up}; keepalive 64; }}\n  server {{ listen 127.0.0.1:{via_nginx};\n    \
             location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\";\n      \
             proxy_set_header Authorization \"Bearer a-static-token\"; }} }}"
        ),
    )?;
    // The token comes from the emulator's OAuth endpoint; the proxy heals with it as usual.
    let _sim = Running(
        Command::new(shiftkey)
            .args(["sim", "--port", &oauth.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting shiftkey sim")?,
    );
    wait_listening(up, "the upstream nginx")?;
    wait_listening(via_nginx, "the reverse-proxy nginx")?;
    wait_listening(oauth, "shiftkey sim")?;
    let cfg = dir.join("shiftkey.toml");
    std::fs::write(
        &cfg,
        format!(
            "[tokens.bench]\nkind = \"client_credentials\"\ntoken_url = \"http://127.0.0.1:{oauth}/oauth/token\"\n\
             client_id = \"shiftkey\"\nclient_secret = {{ env = \"BENCH_SECRET\" }}\n\
             [proxy.bench]\nlisten = \"127.0.0.1:{via_shiftkey}\"\nupstream = \"http://127.0.0.1:{up}\"\ntoken = \"bench\"\n"
        ),
    )?;
    let _proxy = Running(
        Command::new(shiftkey)
            .args(["proxy", "-c"])
            .arg(&cfg)
            .env("BENCH_SECRET", "shiftkey-secret")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting shiftkey proxy")?,
    );
    wait_listening(via_shiftkey, "shiftkey proxy")?;
    let targets = [
        ("direct to the upstream", up),
        ("`shiftkey proxy`", via_shiftkey),
        (
            "nginx 1.22 (`proxy_pass`, `worker_processes auto`)",
            via_nginx,
        ),
    ];
    let mut rows = Vec::new();
    for connections in CONNECTIONS {
        let mut measured = Vec::new();
        for (name, port) in targets {
            // A warm-up, then the repetitions, interleaved so that noise hits every target.
            wrk(port, connections)?;
            measured.push((name, port, Vec::new()));
        }
        for _ in 0..REPETITIONS {
            for (_, port, runs) in &mut measured {
                runs.push(wrk(*port, connections)?);
            }
        }
        let nginx_rps = median(measured[2].2.iter().map(|r| r.0).collect());
        for (name, _, runs) in &measured {
            let rps: Vec<f64> = runs.iter().map(|r| r.0).collect();
            let (lo, hi) = (
                rps.iter().copied().fold(f64::INFINITY, f64::min),
                rps.iter().copied().fold(0.0, f64::max),
            );
            let m = median(rps);
            rows.push(format!(
                "| {name} | {connections} | {:.1} k ({:.1}–{:.1} k) | {:.2}× | {:.0} µs | {:.0} µs |",
                m / 1e3,
                lo / 1e3,
                hi / 1e3,
                m / nginx_rps,
                median(runs.iter().map(|r| r.1).collect()),
                median(runs.iter().map(|r| r.2).collect()),
            ));
        }
    }
    let (date, cores, cpu) = crate::machine();
    Ok(format!(
        "{BEGIN}\n## The proxy against nginx (last `cargo xtask bench-proxy`)\n\n\
         Run of {date} on {cores} cores ({cpu}), shared and noisy: compare within this table. \
         One upstream (nginx answering `200 ok` itself, one worker), reached directly, through \
         `shiftkey proxy` (a client-credentials token from the emulator, healing and accounting \
         on) and through nginx setting the same `Authorization` header; `wrk --latency`, \
         {SECONDS} s per run, a warm-up then {REPETITIONS} repetitions interleaved across the \
         targets; the medians, with the range of requests/s. The goal is relative to nginx.\n\n\
         | path | connections | requests/s (range) | vs nginx | p50 | p99 |\n\
         | --- | --- | --- | --- | --- | --- |\n{}\n{END}\n",
        rows.join("\n")
    ))
}

/// Replaces the generated section of `doc` (or appends it).
pub(crate) fn write(doc: &Path, section: &str) -> Result<()> {
    let text = std::fs::read_to_string(doc)?;
    let text = match (text.find(BEGIN), text.find(END)) {
        (Some(a), Some(b)) if a < b => format!(
            "{}{section}{}",
            &text[..a],
            &text[b + END.len()..].trim_start_matches('\n')
        ),
        _ => format!("{}\n\n{section}", text.trim_end()),
    };
    std::fs::write(doc, text)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::micros;

    #[test]
    fn wrk_durations_read_in_microseconds() {
        assert_eq!(micros("123.00us").unwrap(), 123.0);
        assert_eq!(micros("1.50ms").unwrap(), 1500.0);
        assert_eq!(micros("2.00s").unwrap(), 2e6);
        assert!(micros("12").is_err());
    }
}
