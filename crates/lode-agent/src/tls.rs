//! Mutual TLS for NBD over TCP (`NBD_OPT_STARTTLS`, rustls): the agent
//! proves itself with its certificate and accepts only clients whose
//! certificate chains to the configured client CA. A TCP listener without
//! it does not exist: a network peer never reaches plaintext unauthenticated.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

/// Why the TLS configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("{what} {path}: {source}")]
    Pem {
        /// Which file.
        what: &'static str,
        /// Path.
        path: String,
        /// What failed.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// A file held no certificate.
    #[error("{what} {path}: no certificate in it")]
    Empty {
        /// Which file.
        what: &'static str,
        /// Path.
        path: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built.
    #[error("client CA {path}: {source}")]
    Verifier {
        /// Path.
        path: String,
        /// What failed.
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
}

fn certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = |source| TlsError::Pem {
        what,
        path: path.display().to_string(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(pem)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem)?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.display().to_string(),
        });
    }
    Ok(certs)
}

/// A TLS acceptor that requires a client certificate signed by `client_ca`.
pub fn mutual_tls(
    cert: &Path,
    key: &Path,
    client_ca: &Path,
) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
    let chain = certs("certificate", cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Pem {
        what: "private key",
        path: key.display().to_string(),
        source,
    })?;
    let mut roots = rustls::RootCertStore::empty();
    for c in certs("client CA", client_ca)? {
        roots.add(c)?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|source| TlsError::Verifier {
        path: client_ca.display().to_string(),
        source,
    })?;
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
