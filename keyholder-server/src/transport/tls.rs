//! The server's rustls configuration: TLS 1.3 only, a client certificate
//! required and verified against the configured CA (and CRL). The verifier
//! is also handed out on its own, so open connections can be checked again
//! against the credentials a reload put in force.

use std::path::Path;
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use crate::config::Listen;

/// Why the TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{field}: {path}: {reason}")]
    Pem {
        /// The config field.
        field: &'static str,
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("the TLS configuration is refused: {0}")]
    Rustls(String),
}

fn pem_error(field: &'static str, path: &Path, reason: impl ToString) -> TlsError {
    TlsError::Pem {
        field,
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

pub(crate) fn certs(
    field: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(field, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(field, path, e))?;
    if certs.is_empty() {
        return Err(pem_error(field, path, "holds no PEM certificate"));
    }
    Ok(certs)
}

/// The server config and the client-certificate verifier inside it.
#[derive(Clone)]
pub struct ServerTls {
    /// What new connections are handshaken with.
    pub config: Arc<ServerConfig>,
    /// The verifier `config` checks client certificates with (client CA,
    /// CRL, validity, client-auth usage).
    pub verifier: Arc<dyn ClientCertVerifier>,
}

/// Builds the server config from `[listen]`.
pub fn server_config(listen: &Listen) -> Result<ServerTls, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certs("listen.cert", &listen.cert)?;
    let key = PrivateKeyDer::from_pem_file(&listen.key).map_err(|e| {
        pem_error(
            "listen.key",
            &listen.key,
            format!("no usable private key ({e})"),
        )
    })?;
    let mut roots = RootCertStore::empty();
    for ca in certs("listen.client_ca", &listen.client_ca)? {
        roots
            .add(ca)
            .map_err(|e| pem_error("listen.client_ca", &listen.client_ca, e))?;
    }
    let mut verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider));
    if let Some(crl_path) = &listen.crl {
        let crls = CertificateRevocationListDer::pem_file_iter(crl_path)
            .map_err(|e| pem_error("listen.crl", crl_path, e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_error("listen.crl", crl_path, e))?;
        if crls.is_empty() {
            return Err(pem_error("listen.crl", crl_path, "holds no PEM CRL"));
        }
        verifier = verifier.with_crls(crls);
    }
    let verifier = verifier
        .build()
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_client_cert_verifier(Arc::clone(&verifier))
        .with_single_cert(chain, key)
        .map_err(|e| {
            TlsError::Rustls(format!(
                "listen.cert and listen.key do not make a server identity: {e}"
            ))
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(ServerTls {
        config: Arc::new(config),
        verifier,
    })
}
