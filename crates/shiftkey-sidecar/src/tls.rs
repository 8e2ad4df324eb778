//! TLS for a listener other hosts reach (the broker's `https`): a certificate chain and its key
//! in PEM, rustls with its safe defaults (TLS 1.2 and 1.3) and no client certificates: clients
//! prove who they are with their secret inside the connection.

use std::sync::Arc;

pub use tokio_rustls::TlsAcceptor;

/// Why a certificate and key do not make a TLS server. Never quotes the key file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The certificate file holds no PEM `CERTIFICATE` block.
    #[error("the certificate file holds no PEM certificate")]
    NoCertificate,
    /// A certificate block does not decode.
    #[error("the certificate file does not decode as PEM certificates")]
    Certificate,
    /// The key holds no PEM private key (PKCS#8, PKCS#1 or SEC1), or it does not decode.
    #[error("the key is not a PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    Key,
    /// rustls refuses the pair (a key that does not match the certificate, an unsupported
    /// algorithm).
    #[error("the certificate and key do not make a TLS server: {0}")]
    Config(String),
}

/// A TLS acceptor for the certificate chain `cert_pem` (the server's certificate first) and its
/// private key `key_pem`.
///
/// ```
/// let Err(err) = shiftkey_sidecar::tls::acceptor(b"not a certificate", b"") else {
///     panic!("a certificate was found");
/// };
/// assert!(err.to_string().contains("no PEM certificate"));
/// ```
///
/// # Errors
/// [`TlsError`] saying which part is wrong.
pub fn acceptor(cert_pem: &[u8], key_pem: &[u8]) -> Result<TlsAcceptor, TlsError> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|_| TlsError::Certificate)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    // The key's parse error is not passed on: it may quote a line of the key file.
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| TlsError::Key)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
