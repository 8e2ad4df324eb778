//! A TLS listener (`serve::serve_tls`) with a test CA made here: a client that trusts the CA is
//! served, one that does not fails the handshake, and one that stalls the handshake is closed
//! within the header deadline.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use shiftkey_sidecar::serve::{ServeLimits, serve_tls};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A CA and a server certificate for 127.0.0.1 it signed: (CA certificate DER, server chain PEM,
/// server key PEM).
fn test_pki() -> (CertificateDer<'static>, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "shiftkey test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    let cert = params.signed_by(&key, &ca_cert, &ca_key).unwrap();
    (ca_cert.der().clone(), cert.pem(), key.serialize_pem())
}

async fn start(cert: &str, key: &str, limits: ServeLimits) -> std::net::SocketAddr {
    let acceptor = shiftkey_sidecar::tls::acceptor(cert.as_bytes(), key.as_bytes()).unwrap();
    let router = axum::Router::new().route("/", axum::routing::get(|| async { "ok over tls" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_tls(listener, router, limits, acceptor));
    addr
}

fn client(root: Option<CertificateDer<'static>>) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(r) = root {
        roots.add(r).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

async fn get(
    connector: &tokio_rustls::TlsConnector,
    addr: std::net::SocketAddr,
) -> std::io::Result<String> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::IpAddress(addr.ip().into());
    let mut tls = connector.connect(name, tcp).await?;
    tls.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await?;
    let mut out = String::new();
    tls.read_to_string(&mut out).await?;
    Ok(out)
}

#[tokio::test]
async fn a_client_that_trusts_the_ca_is_served_and_others_fail_the_handshake() {
    let (ca, cert, key) = test_pki();
    let addr = start(&cert, &key, ServeLimits::default()).await;
    let answer = get(&client(Some(ca)), addr).await.unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok over tls"),
        "{answer}"
    );
    let e = get(&client(None), addr).await.unwrap_err();
    assert!(e.to_string().contains("certificate"), "{e}");
}

#[tokio::test]
async fn a_stalled_handshake_is_closed_within_the_header_deadline() {
    let (_, cert, key) = test_pki();
    let limits = ServeLimits {
        header_timeout: Duration::from_millis(300),
        ..ServeLimits::default()
    };
    let addr = start(&cert, &key, limits).await;
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf))
        .await
        .expect("closed by the server, not left open");
    assert_eq!(read.unwrap_or(0), 0, "closed without an answer");
}

#[test]
fn a_key_that_is_not_one_is_refused_without_quoting_it() {
    let (_, cert, _) = test_pki();
    let secret_line = "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1tYXRlcmlhbA==\n";
    let Err(e) = shiftkey_sidecar::tls::acceptor(cert.as_bytes(), secret_line.as_bytes()) else {
        panic!("a key that is not one was taken");
    };
    assert!(e.to_string().contains("not a PEM private key"), "{e}");
    assert!(!e.to_string().contains("c2VjcmV0"), "{e}");
}
