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
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("{e}"));
        let child = Command::new("mosquitto")
            .args(["-p", &port.to_string()])
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

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
