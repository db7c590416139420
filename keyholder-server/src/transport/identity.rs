//! Mapping a verified client certificate to exactly one configured principal.
//!
//! Runs once per connection, after rustls verified the chain. Handlers only
//! see the result: a [`Principal`] or the reason there is none. The identity
//! is read from ONE certificate field, chosen in the config
//! (`listen.identity_field`), and that field must hold exactly one value: a
//! certificate naming `CN=mallory, CN=alice` is nobody, never alice.

use std::sync::Arc;

use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer as _, X509Certificate};

use crate::principal::Principal;

/// The certificate field a principal's `cert_identity` is compared with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IdentityField {
    /// The subject's common name (`identity_field = "cn"`, the default: what
    /// `keyholder pki init` and most internal CAs issue).
    #[default]
    Cn,
    /// The DNS subject alternative name (`identity_field = "dns_san"`).
    DnsSan,
}

impl IdentityField {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cn => "cn",
            Self::DnsSan => "dns_san",
        }
    }

    /// Parses the config spelling.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "cn" => Some(Self::Cn),
            "dns_san" => Some(Self::DnsSan),
            _ => None,
        }
    }

    /// The field's name in messages.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Self::Cn => "common name (CN)",
            Self::DnsSan => "DNS subject alternative name",
        }
    }
}

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
    /// The configured field is absent from the certificate.
    #[error(
        "the client certificate has no {}, the field listen.identity_field names; issue it with one",
        .field.describe()
    )]
    Missing {
        /// The configured field.
        field: IdentityField,
    },
    /// The configured field holds several values: which one is meant cannot
    /// be told, so none is taken.
    #[error(
        "the client certificate has {count} values in its {} ({values}); an identity must be exactly one, issue it with one",
        .field.describe()
    )]
    Several {
        /// The configured field.
        field: IdentityField,
        /// How many values it holds.
        count: usize,
        /// The values.
        values: String,
    },
    /// The certificate passed the handshake, but the credentials in force
    /// now refuse it: a reload's CRL revoked it or its client CA is no
    /// longer trusted, or it expired while the connection stayed open.
    #[error(
        "the client certificate is no longer accepted ({reason}); connect again with a valid certificate"
    )]
    NoLongerAccepted {
        /// The verifier's reason.
        reason: String,
    },
    /// No principal has the certificate's identity.
    #[error(
        "the client certificate ({name}) is not a configured principal; add it as a cert_identity"
    )]
    Unknown {
        /// The certificate's identity.
        name: String,
    },
    /// The certificate maps to a principal that holds as many connections
    /// as it may: this one is answered once (429) and closed.
    #[error(
        "{principal} already holds {max} open connections, as many as listen.max_connections_per_principal allows; this one is closed: close idle clients of {principal} or raise the limit, then try again"
    )]
    OverLimit {
        /// The principal.
        principal: String,
        /// `listen.max_connections_per_principal`.
        max: usize,
    },
}

/// The configured principals and the field their certificates are read by.
#[derive(Clone, Debug)]
pub struct Directory {
    /// The field compared with `cert_identity`.
    pub field: IdentityField,
    /// Every principal (their `cert_identity` values are unique: the config
    /// checks it).
    pub principals: Arc<[Principal]>,
}

/// Every value of `field` in the certificate, as written (an unreadable value
/// counts, so it cannot hide a second one).
pub fn values(
    cert: &CertificateDer<'_>,
    field: IdentityField,
) -> Result<Vec<String>, IdentityError> {
    let (_, parsed) =
        X509Certificate::from_der(cert.as_ref()).map_err(|_| IdentityError::Unparsable)?;
    let mut names = Vec::new();
    match field {
        IdentityField::Cn => {
            for cn in parsed.subject().iter_common_name() {
                names.push(cn.as_str().unwrap_or("<not a string>").to_owned());
            }
        }
        IdentityField::DnsSan => {
            if let Ok(Some(san)) = parsed.subject_alternative_name() {
                for name in &san.value.general_names {
                    if let GeneralName::DNSName(dns) = name {
                        names.push((*dns).to_owned());
                    }
                }
            }
        }
    }
    Ok(names)
}

/// The one principal whose `cert_identity` is the one value of the
/// configured field.
pub fn resolve(
    cert: Option<&CertificateDer<'_>>,
    directory: &Directory,
) -> Result<Principal, IdentityError> {
    let field = directory.field;
    let names = values(cert.ok_or(IdentityError::NoCertificate)?, field)?;
    let name = match names.as_slice() {
        [] => return Err(IdentityError::Missing { field }),
        [one] => one,
        many => {
            return Err(IdentityError::Several {
                field,
                count: many.len(),
                values: many.join(", "),
            });
        }
    };
    directory
        .principals
        .iter()
        .find(|p| &p.cert_identity == name)
        .cloned()
        .ok_or_else(|| IdentityError::Unknown { name: name.clone() })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

    use super::*;
    use crate::principal::Role;

    fn cert(cns: &[&str], sans: &[&str]) -> CertificateDer<'static> {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
                .unwrap();
        let mut dn = DistinguishedName::new();
        // rcgen keeps one value per attribute type; a second CN is written
        // under its OID (2.5.4.3), which is what a forged certificate carries.
        for (i, cn) in cns.iter().enumerate() {
            let kind = match i {
                0 => DnType::CommonName,
                _ => DnType::CustomDnType(vec![2, 5, 4, 3]),
            };
            dn.push(kind, *cn);
        }
        params.distinguished_name = dn;
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    fn directory(field: IdentityField) -> Directory {
        let principal = |name: &str| Principal {
            name: name.to_owned(),
            roles: BTreeSet::from([Role::Keyholder]),
            cert_identity: name.to_owned(),
            age_recipient: None,
        };
        Directory {
            field,
            principals: vec![principal("alice"), principal("mallory")].into(),
        }
    }

    #[test]
    fn only_the_configured_field_names_the_principal() {
        let alice_cn_mallory_san = cert(&["alice"], &["mallory"]);
        let by_cn = resolve(Some(&alice_cn_mallory_san), &directory(IdentityField::Cn));
        assert_eq!(by_cn.unwrap().name, "alice");
        let by_san = resolve(
            Some(&alice_cn_mallory_san),
            &directory(IdentityField::DnsSan),
        );
        assert_eq!(by_san.unwrap().name, "mallory");
        assert_eq!(
            resolve(
                Some(&cert(&["alice"], &[])),
                &directory(IdentityField::DnsSan)
            )
            .unwrap_err()
            .to_string(),
            "the client certificate has no DNS subject alternative name, the field listen.identity_field names; issue it with one"
        );
        assert_eq!(
            resolve(Some(&cert(&["eve"], &[])), &directory(IdentityField::Cn))
                .unwrap_err()
                .to_string(),
            "the client certificate (eve) is not a configured principal; add it as a cert_identity"
        );
    }

    #[test]
    fn several_values_in_the_field_are_refused_whatever_they_name() {
        let two_cns = cert(&["mallory", "alice"], &[]);
        assert_eq!(
            resolve(Some(&two_cns), &directory(IdentityField::Cn))
                .unwrap_err()
                .to_string(),
            "the client certificate has 2 values in its common name (CN) (mallory, alice); an identity must be exactly one, issue it with one"
        );
        let two_sans = cert(&["x"], &["mallory", "alice"]);
        assert_eq!(
            resolve(Some(&two_sans), &directory(IdentityField::DnsSan))
                .unwrap_err()
                .to_string(),
            "the client certificate has 2 values in its DNS subject alternative name (mallory, alice); an identity must be exactly one, issue it with one"
        );
        assert_eq!(
            resolve(
                Some(&cert(&["alice"], &["alice", "alice"])),
                &directory(IdentityField::DnsSan)
            )
            .unwrap_err(),
            IdentityError::Several {
                field: IdentityField::DnsSan,
                count: 2,
                values: "alice, alice".to_owned()
            },
            "the same value twice is still two"
        );
    }
}
