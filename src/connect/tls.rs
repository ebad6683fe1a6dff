//! The rustls client configuration of both servers' connections: which
//! roots, how the server's certificate is checked, and the client's own
//! certificate.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use super::verify::{AnyCertificate, ChainOnly};
use super::Verification;

#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("no usable CA certificate ({0})")]
    Roots(String),
    #[error("client certificate and key: {0}")]
    ClientIdentity(String),
    #[error("{0}")]
    Protocols(String),
}

/// A client certificate chain and its key.
pub type ClientIdentity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// The configuration that checks the server as `verification` says
/// (`Plaintext` is taken as `None`: encrypted, nothing checked).
pub fn client_config(
    roots: RootCertStore,
    verification: Verification,
    identity: Option<ClientIdentity>,
) -> Result<ClientConfig, TlsConfigError> {
    let provider = super::crypto_provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsConfigError::Protocols(e.to_string()))?;
    let webpki = || {
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots.clone()), provider.clone())
            .build()
            .map_err(|e| TlsConfigError::Roots(e.to_string()))
    };
    let builder = match verification {
        Verification::Full => builder.with_webpki_verifier(webpki()?),
        Verification::Chain => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ChainOnly(webpki()?))),
        Verification::None | Verification::Plaintext => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider.clone()))),
    };
    match identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| TlsConfigError::ClientIdentity(e.to_string())),
        None => Ok(builder.with_no_client_auth()),
    }
}

/// The operating system's trusted roots.
pub fn system_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    roots
}
