//! TLS set-up for the gateway's listener and the client, with rustls and the ring provider.
//!
//! Only loading and building happen here; the connections use `tokio-rustls` streams like any
//! other stream.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::TlsConfig;
use crate::error::StartupError;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the gateway's TLS acceptor from the certificate chain and key files.
pub fn acceptor(config: &TlsConfig) -> Result<TlsAcceptor, StartupError> {
    let certificates: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(&config.certificate)
            .and_then(|certs| certs.collect())
            .map_err(|e| {
                StartupError::Tls(format!("certificate file {}: {e}", config.certificate))
            })?;
    if certificates.is_empty() {
        return Err(StartupError::Tls(format!(
            "certificate file {} holds no certificate",
            config.certificate
        )));
    }
    let key = PrivateKeyDer::from_pem_file(&config.key)
        .map_err(|e| StartupError::Tls(format!("key file {}: {e}", config.key)))?;
    let server = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| StartupError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certificates, key)
        .map_err(|e| StartupError::Tls(format!("certificate and key do not fit: {e}")))?;
    Ok(TlsAcceptor::from(Arc::new(server)))
}

/// Builds a client connector that trusts the certificates in `ca_pem` (PEM text), and the
/// server name to check the gateway's certificate against.
pub fn connector(
    ca_pem: &[u8],
    server_name: &str,
) -> Result<(TlsConnector, ServerName<'static>), StartupError> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(ca_pem) {
        let certificate =
            certificate.map_err(|e| StartupError::Tls(format!("CA certificates: {e}")))?;
        roots
            .add(certificate)
            .map_err(|e| StartupError::Tls(format!("CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(StartupError::Tls("CA certificates: none found".into()));
    }
    let client = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| StartupError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(server_name.to_string())
        .map_err(|e| StartupError::Tls(format!("server name {server_name:?}: {e}")))?;
    Ok((TlsConnector::from(Arc::new(client)), name))
}
