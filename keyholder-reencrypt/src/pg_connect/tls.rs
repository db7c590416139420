//! The rustls client configuration for one `sslmode`: which certificate
//! checks run (none for `prefer` and `require` without `sslrootcert`, the
//! chain for `verify-ca`, chain and host name for `verify-full`), the client
//! certificate, and the words for a failed handshake.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use super::{PgSslMode, TlsSettings};

/// The rustls configuration for `settings`, its files read now.
pub(super) fn client_config(settings: &TlsSettings) -> Result<ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls setup: {e}"))?;
    let verifier: Arc<dyn ServerCertVerifier> = match (&settings.root_cert, settings.mode) {
        (None, _) => Arc::new(AnyCertificate { provider }),
        (Some(path), mode) => {
            let roots = Arc::new(read_roots(path)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
            match mode {
                PgSslMode::VerifyFull => webpki,
                // libpq: require with a root certificate is verify-ca.
                _ => Arc::new(AnyName { webpki }),
            }
        }
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    match &settings.client {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let chain = read_certs(cert, "sslcert")?;
            let key = read_key(key)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("sslcert/sslkey: {e}"))
        }
    }
}

fn read_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let text = fs::read(path)
        .map_err(|e| format!("cannot read {what} {}: {}", path.display(), e.kind()))?;
    let certs = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what} {} is not PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{what} {} holds no certificate", path.display()));
    }
    Ok(certs)
}

fn read_roots(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path, "sslrootcert")? {
        roots
            .add(cert)
            .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
    }
    Ok(roots)
}

/// The client key, refused when its mode lets the group or others read it
/// (libpq's rule, stricter: 0600 or less, whoever owns it).
fn read_key(path: &Path) -> Result<rustls::pki_types::PrivateKeyDer<'static>, String> {
    let meta = fs::metadata(path)
        .map_err(|e| format!("cannot read sslkey {}: {}", path.display(), e.kind()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "sslkey {} has mode {mode:04o}, readable by others; it must be 0600 or stricter (chmod 600 {})",
            path.display(),
            path.display()
        ));
    }
    let text = zeroize::Zeroizing::new(
        fs::read(path)
            .map_err(|e| format!("cannot read sslkey {}: {}", path.display(), e.kind()))?,
    );
    match rustls::pki_types::PrivateKeyDer::from_pem_slice(&text) {
        Ok(key) => Ok(key),
        Err(rustls::pki_types::pem::Error::NoItemsFound) => {
            Err(format!("sslkey {} holds no private key", path.display()))
        }
        Err(_) => Err(format!("sslkey {} is not PEM", path.display())),
    }
}

/// What a failed handshake's rustls error means, in the words of the
/// settings (`unknown CA`, `host name mismatch`), when `cause` is one.
pub(crate) fn tls_cause(cause: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    let rustls = cause.downcast_ref::<rustls::Error>().or_else(|| {
        cause
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    })?;
    let rustls::Error::InvalidCertificate(error) = rustls else {
        return None;
    };
    Some(match error {
        // BadSignature: a CA of the same name as the issuer, another key.
        CertificateError::UnknownIssuer | CertificateError::BadSignature => {
            "unknown CA: the server's certificate is not signed by the CA in sslrootcert"
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            "host name mismatch: the server's certificate does not name the host in the URL"
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            "the server's certificate has expired"
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "the server's certificate is not valid yet"
        }
        _ => return None,
    })
}

/// `prefer`, and `require` without `sslrootcert`: encrypted, the server's
/// certificate not checked (libpq's meaning). Handshake signatures are
/// still verified, so the session is bound to the certificate shown.
#[derive(Debug)]
struct AnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `verify-ca`: the chain up to `sslrootcert` is checked, the host name is
/// not. The webpki verifier checks the chain before the name, so a name
/// error means the chain passed.
#[derive(Debug)]
struct AnyName {
    webpki: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}
