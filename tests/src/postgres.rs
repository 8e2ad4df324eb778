//! A throwaway PostgreSQL cluster per test: `initdb` into a temporary folder, `pg_ctl start` on a
//! free loopback port, stopped and removed on drop.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A running PostgreSQL server. Stopped on drop.
pub struct PgServer {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
    /// The server's options, for a start after a stop.
    opts: String,
}

fn bin_dir() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path().join("bin"))
                .filter(|p| p.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions.pop().unwrap_or_else(|| panic!("PostgreSQL server binaries not found under /usr/lib/postgresql: run `apt-get install -y postgresql`"))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A throwaway certificate authority (PEM), and the file it is written to.
pub struct TestCa {
    /// The CA certificate's file (what `sslrootcert=` names).
    pub cert_file: PathBuf,
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl TestCa {
    /// A new CA named `name`, its certificate written to `dir/name.pem`.
    ///
    /// # Panics
    /// When generating or writing fails.
    pub fn new(dir: &Path, name: &str) -> Self {
        let mut params =
            rcgen::CertificateParams::new(Vec::<String>::new()).unwrap_or_else(|e| panic!("{e}"));
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("shiftkey test CA {name}"),
        );
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let key = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
        let cert = params.self_signed(&key).unwrap_or_else(|e| panic!("{e}"));
        let cert_file = dir.join(format!("{name}.pem"));
        std::fs::write(&cert_file, cert.pem()).unwrap_or_else(|e| panic!("{e}"));
        Self {
            cert_file,
            cert,
            key,
        }
    }

    /// A server certificate for `localhost` and 127.0.0.1 signed by this CA: (cert PEM, key PEM).
    pub fn server_cert(&self) -> (String, String) {
        let params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .unwrap_or_else(|e| panic!("{e}"));
        let key = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .unwrap_or_else(|e| panic!("{e}"));
        (cert.pem(), key.serialize_pem())
    }
}

impl PgServer {
    /// Starts a fresh cluster (`-A trust`, loopback only, fsync off: it is thrown away).
    ///
    /// # Panics
    /// When the binaries are missing (with the install command) or the server does not start.
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// The same with `ssl = on` and a server certificate for 127.0.0.1 signed by `ca`.
    ///
    /// # Panics
    /// As [`PgServer::start`].
    pub fn start_tls(ca: &TestCa) -> Self {
        Self::start_with(Some(ca))
    }

    fn start_with(ca: Option<&TestCa>) -> Self {
        let bin = bin_dir();
        let as_postgres = is_root();
        let dir = std::env::temp_dir().join(format!(
            "shiftkey-pg-{}-{}",
            std::process::id(),
            crate::oidc::unique()
        ));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        if as_postgres {
            // initdb refuses to run as root: the cluster belongs to the postgres user.
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "chown {} to postgres failed", dir.display());
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("{e}"));
        let mut server = Self {
            dir,
            bin,
            port,
            as_postgres,
            opts: String::new(),
        };
        let data = server.dir.join("data");
        server.run(
            "initdb",
            &[
                "-D",
                path(&data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        let mut opts = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -k {} -c fsync=off -c max_connections=100",
            server.dir.display()
        );
        if let Some(ca) = ca {
            use std::os::unix::fs::PermissionsExt as _;
            let (cert, key) = ca.server_cert();
            let cert_file = data.join("server.crt");
            let key_file = data.join("server.key");
            std::fs::write(&cert_file, cert).unwrap_or_else(|e| panic!("{e}"));
            std::fs::write(&key_file, key).unwrap_or_else(|e| panic!("{e}"));
            // PostgreSQL refuses a key others can read, or one that is not its own.
            std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600))
                .unwrap_or_else(|e| panic!("{e}"));
            if server.as_postgres {
                let ok = Command::new("chown")
                    .args(["postgres:postgres"])
                    .arg(&cert_file)
                    .arg(&key_file)
                    .status()
                    .is_ok_and(|s| s.success());
                assert!(ok, "chown of the server key failed");
            }
            opts.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                cert_file.display(),
                key_file.display()
            ));
        }
        server.opts = opts;
        server.resume();
        server
    }

    /// Stops the server (`pg_ctl stop -m fast`: every connection is ended, as in an outage or
    /// a restart), keeping its data.
    ///
    /// # Panics
    /// When `pg_ctl` fails.
    pub fn stop(&self) {
        let data = self.dir.join("data");
        self.run("pg_ctl", &["-D", path(&data), "-m", "fast", "-w", "stop"]);
    }

    /// Starts the server again on the same port and data after [`PgServer::stop`].
    ///
    /// # Panics
    /// When `pg_ctl` fails.
    pub fn resume(&self) {
        let data = self.dir.join("data");
        self.run(
            "pg_ctl",
            &[
                "-D",
                path(&data),
                "-o",
                &self.opts,
                "-l",
                path(&self.dir.join("log")),
                "-w",
                "start",
            ],
        );
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let exe = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let out = cmd
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", exe.display()));
        assert!(
            out.status.success(),
            "{tool} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The port the server listens on (127.0.0.1).
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection URL for the `postgres` database.
    #[must_use]
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

fn path(p: &Path) -> &str {
    p.to_str()
        .unwrap_or_else(|| panic!("non-UTF-8 path {}", p.display()))
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let exe = self.bin.join("pg_ctl");
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let _ = cmd
            .arg("-D")
            .arg(&data)
            .args(["-m", "immediate", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
