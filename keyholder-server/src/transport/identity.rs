//! Mapping a verified client certificate to exactly one configured principal.
//!
//! Runs once per connection, after rustls verified the chain. Handlers only
//! see the result: a [`Principal`] or the reason there is none.

use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer as _, X509Certificate};

use crate::principal::Principal;

/// Why a verified certificate maps to no principal.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The handshake carried no certificate (never happens with the verifier
    /// requiring one).
    #[error("the connection has no client certificate")]
    NoCertificate,
    /// The certificate does not parse.
    #[error("the client certificate does not parse")]
    Unparsable,
    /// No principal has one of the certificate's identities.
    #[error(
        "the client certificate ({names}) is not a configured principal; add its CN or DNS SAN as a cert_identity"
    )]
    Unknown {
        /// The certificate's CN and DNS SANs.
        names: String,
    },
    /// Several principals match.
    #[error(
        "the client certificate matches several principals ({principals}); give it one identity"
    )]
    Ambiguous {
        /// Their names.
        principals: String,
    },
}

/// The CN(s) and DNS SANs of a certificate.
pub fn identities(cert: &CertificateDer<'_>) -> Result<Vec<String>, IdentityError> {
    let (_, parsed) =
        X509Certificate::from_der(cert.as_ref()).map_err(|_| IdentityError::Unparsable)?;
    let mut names: Vec<String> = parsed
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok())
        .map(str::to_owned)
        .collect();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                names.push((*dns).to_owned());
            }
        }
    }
    names.dedup();
    Ok(names)
}

/// The one principal whose `cert_identity` the certificate carries.
pub fn resolve(
    cert: Option<&CertificateDer<'_>>,
    principals: &[Principal],
) -> Result<Principal, IdentityError> {
    let names = identities(cert.ok_or(IdentityError::NoCertificate)?)?;
    let matching: Vec<&Principal> = principals
        .iter()
        .filter(|p| names.contains(&p.cert_identity))
        .collect();
    match matching.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(IdentityError::Unknown {
            names: names.join(", "),
        }),
        many => Err(IdentityError::Ambiguous {
            principals: many
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}
