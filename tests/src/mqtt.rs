//! A Mosquitto broker per test on a free loopback port. Stopped on drop.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running `mosquitto -p PORT` (without a configuration file it listens on loopback only).
pub struct Mosquitto {
    child: Child,
    port: u16,
}

impl Mosquitto {
    /// Starts a broker.
    ///
    /// # Panics
    /// When mosquitto is not installed (with the install command) or does not listen within 10 s.
    pub fn start() -> Self {
        let port = free_port();
        Self::spawn(
            Command::new("mosquitto").args(["-p", &port.to_string()]),
            port,
        )
    }

    /// Starts `command` (a mosquitto) and waits until it listens on `port`.
    fn spawn(command: &mut Command, port: u16) -> Self {
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("starting mosquitto failed ({e}): run `apt-get install -y mosquitto`")
            });
        // Owned by the guard at once, so a failed start still kills and reaps the process.
        let broker = Self { child, port };
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return broker;
            }
            #[allow(
                clippy::disallowed_methods,
                reason = "a blocking wait for the broker at test start, before any runtime work"
            )]
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("mosquitto did not listen on 127.0.0.1:{port} within 10 s");
    }

    /// Starts a broker that speaks only TLS (a server certificate for 127.0.0.1 signed by `ca`)
    /// and admits only `user` with `password`; its files live in `dir`.
    ///
    /// # Panics
    /// As [`Mosquitto::start`], and when `mosquitto_passwd` fails.
    pub fn start_tls(
        ca: &crate::postgres::TestCa,
        dir: &std::path::Path,
        user: &str,
        password: &str,
    ) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("{e}"));
        let (cert, key) = ca.server_cert();
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text)
                .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
            path
        };
        let cert = write("mqtt-server.pem", &cert);
        let key = write("mqtt-server.key", &key);
        let passwords = dir.join("mqtt-passwords");
        let made = Command::new("mosquitto_passwd")
            .arg("-c")
            .arg("-b")
            .arg(&passwords)
            .args([user, password])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap_or_else(|e| {
                panic!("mosquitto_passwd failed ({e}): run `apt-get install -y mosquitto`")
            });
        assert!(made.success(), "mosquitto_passwd failed");
        // `user root`: as root, keep the privileges that read these files (a no-op otherwise).
        let conf = write(
            "mosquitto.conf",
            &format!(
                "user root\nlistener {port} 127.0.0.1\ncertfile {}\nkeyfile {}\n\
                 allow_anonymous false\npassword_file {}\n",
                cert.display(),
                key.display(),
                passwords.display()
            ),
        );
        Self::spawn(Command::new("mosquitto").arg("-c").arg(&conf), port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

/// A loopback port free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Subscribes to `filter` on the broker at `127.0.0.1:port` (TLS trusting `ca_file` when given,
/// with `credentials` when given) and collects the retained messages, by topic, until `want` have
/// arrived or 30 s have passed (real time: the broker is another process).
///
/// # Panics
/// When the CA file cannot be read or a payload is not JSON.
pub async fn retained(
    port: u16,
    ca_file: Option<&std::path::Path>,
    credentials: Option<(&str, &str)>,
    filter: &str,
    want: usize,
) -> std::collections::BTreeMap<String, serde_json::Value> {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
    let mut opts = MqttOptions::new(
        format!("shiftkey-test-sub-{}", crate::oidc::unique()),
        "127.0.0.1",
        port,
    );
    if let Some(ca) = ca_file {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject as _;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca).unwrap_or_else(|e| panic!("{e}")) {
            roots
                .add(cert.unwrap_or_else(|e| panic!("{e}")))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|e| panic!("{e}"))
        .with_root_certificates(roots)
        .with_no_client_auth();
        opts.set_transport(Transport::Tls(TlsConfiguration::Rustls(
            std::sync::Arc::new(config),
        )));
    }
    if let Some((user, password)) = credentials {
        opts.set_credentials(user, password);
    }
    let (client, mut events) = AsyncClient::new(opts, 64);
    client
        .subscribe(filter, QoS::AtLeastOnce)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut messages = std::collections::BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while messages.len() < want && tokio::time::Instant::now() < deadline {
        if let Ok(Ok(Event::Incoming(Packet::Publish(p)))) =
            tokio::time::timeout(Duration::from_secs(1), events.poll()).await
        {
            assert!(p.retain, "retained");
            let v: serde_json::Value =
                serde_json::from_slice(&p.payload).unwrap_or_else(|e| panic!("{e}"));
            messages.insert(p.topic.clone(), v);
        }
    }
    let _ = client.disconnect().await;
    messages
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
