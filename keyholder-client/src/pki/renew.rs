//! `keyholder pki renew`: re-issues the server's or one principal's
//! certificate from the dev CA of a `keyholder pki init` directory.
//!
//! The key stays (`NAME.key` is read, never written): the config, the
//! daemon's principals and a keyholder's setup do not change, only the
//! certificate's validity (a year from now) and serial. The subject, the
//! names and the extended key usage are taken from the certificate being
//! renewed, which must be one this CA issued for this key. The old
//! certificate is kept beside the new one as `NAME.until-<date>.pem`;
//! nothing is overwritten but `NAME.pem`, replaced by a rename.

use rustls_pki_types::pem::PemObject as _;
use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    CertificateParams, ExtendedKeyUsagePurpose, Issuer, KeyPair, KeyUsagePurpose,
    PublicKeyData as _, SanType, SerialNumber,
};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer as _, X509Certificate};

use super::{LEAF_VALIDITY, Written, day, dn, validity};
use crate::files::{self, FileError};

/// Why `pki renew` refused.
#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    /// A file could not be read or written.
    #[error(transparent)]
    File(#[from] FileError),
    /// A PEM file does not hold what it should.
    #[error("{} {what}; `pki renew` works on a directory made by `keyholder pki init`", path.display())]
    Unusable {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The certificate was not issued by the directory's CA.
    #[error("{} was not issued by the CA in {}; renew it with the CA that issued it", cert.display(), ca.display())]
    OtherIssuer {
        /// The certificate.
        cert: PathBuf,
        /// The CA certificate.
        ca: PathBuf,
    },
    /// The key does not belong to the certificate.
    #[error("{} is not the key of {}; renew keeps the key, so they must belong together", key.display(), cert.display())]
    KeyMismatch {
        /// The key.
        key: PathBuf,
        /// The certificate.
        cert: PathBuf,
    },
    /// rcgen refused.
    #[error("cannot make the certificate: {0}")]
    Certificate(#[from] rcgen::Error),
}

fn unusable(path: &Path, what: impl Into<String>) -> RenewError {
    RenewError::Unusable {
        path: path.to_owned(),
        what: what.into(),
    }
}

fn pem_der(path: &Path, text: &[u8], label: &str) -> Result<Vec<u8>, RenewError> {
    let text = std::str::from_utf8(text).map_err(|_| unusable(path, "is not PEM text"))?;
    match rustls_pki_types::CertificateDer::from_pem_slice(text.as_bytes()) {
        Ok(der) if label == "certificate" => Ok(der.to_vec()),
        _ => Err(unusable(path, format!("holds no PEM {label}"))),
    }
}

fn common_name(cert: &X509Certificate<'_>) -> Option<String> {
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned)
}

/// Re-issues `dir/<name>.pem` (`server` for the daemon's certificate) from
/// `dir/ca.pem` and `dir/ca.key`, keeping `dir/<name>.key`.
pub fn renew(dir: &Path, name: &str) -> Result<Vec<Written>, RenewError> {
    let ca_path = dir.join("ca.pem");
    let ca_key_path = dir.join("ca.key");
    let cert_path = dir.join(format!("{name}.pem"));
    let key_path = dir.join(format!("{name}.key"));

    let ca_der = pem_der(&ca_path, &files::read_public(&ca_path)?, "certificate")?;
    let (_, ca) = X509Certificate::from_der(&ca_der)
        .map_err(|_| unusable(&ca_path, "is not an X.509 certificate"))?;
    let ca_cn =
        common_name(&ca).ok_or_else(|| unusable(&ca_path, "has no common name in its subject"))?;
    let ca_key_pem = files::read_private(&ca_key_path)?;
    let ca_key = KeyPair::from_pem(
        std::str::from_utf8(&ca_key_pem).map_err(|_| unusable(&ca_key_path, "is not PEM text"))?,
    )
    .map_err(|_| unusable(&ca_key_path, "holds no usable private key"))?;
    if ca_key.der_bytes() != &*ca.public_key().subject_public_key.data {
        return Err(RenewError::KeyMismatch {
            key: ca_key_path,
            cert: ca_path,
        });
    }

    let old_der = pem_der(&cert_path, &files::read_public(&cert_path)?, "certificate")?;
    let (_, old) = X509Certificate::from_der(&old_der)
        .map_err(|_| unusable(&cert_path, "is not an X.509 certificate"))?;
    if old.issuer().as_raw() != ca.subject().as_raw() {
        return Err(RenewError::OtherIssuer {
            cert: cert_path,
            ca: ca_path,
        });
    }
    let key_pem = files::read_private(&key_path)?;
    let key = KeyPair::from_pem(
        std::str::from_utf8(&key_pem).map_err(|_| unusable(&key_path, "is not PEM text"))?,
    )
    .map_err(|_| unusable(&key_path, "holds no usable private key"))?;
    if key.der_bytes() != &*old.public_key().subject_public_key.data {
        return Err(RenewError::KeyMismatch {
            key: key_path,
            cert: cert_path,
        });
    }

    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = dn(&common_name(&old)
        .ok_or_else(|| unusable(&cert_path, "has no common name in its subject"))?);
    if let Ok(Some(sans)) = old.subject_alternative_name() {
        for general in &sans.value.general_names {
            match general {
                GeneralName::DNSName(dns) => params
                    .subject_alt_names
                    .push(SanType::DnsName((*dns).try_into()?)),
                GeneralName::IPAddress(bytes) => {
                    let ip = match bytes.len() {
                        4 => <[u8; 4]>::try_from(*bytes).map(IpAddr::from).ok(),
                        16 => <[u8; 16]>::try_from(*bytes).map(IpAddr::from).ok(),
                        _ => None,
                    };
                    if let Some(ip) = ip {
                        params.subject_alt_names.push(SanType::IpAddress(ip));
                    }
                }
                _ => {}
            }
        }
    }
    if let Ok(Some(eku)) = old.extended_key_usage() {
        if eku.value.server_auth {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        if eku.value.client_auth {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ClientAuth);
        }
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let now = time::OffsetDateTime::now_utc();
    validity(&mut params, now, LEAF_VALIDITY);
    // A new serial: rcgen's default (a hash of the public key) would repeat
    // the old certificate's, and revoking one would revoke both.
    let mut serial = [0u8; 16];
    rand::fill(&mut serial);
    serial[0] &= 0x7f;
    params.serial_number = Some(SerialNumber::from_slice(&serial));

    // The issuer as `pki init` made it: the same subject and key, so the
    // new certificate chains to the unchanged ca.pem.
    let mut issuer_params = CertificateParams::new(Vec::<String>::new())?;
    issuer_params.distinguished_name = dn(&ca_cn);
    issuer_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    issuer_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let issuer = Issuer::new(issuer_params, ca_key);
    let cert = params.signed_by(&key, &issuer)?;

    let old_until = day(time::OffsetDateTime::from_unix_timestamp(
        old.validity().not_after.timestamp(),
    )
    .unwrap_or(now));
    let kept = dir.join(format!("{name}.until-{old_until}.pem"));
    let staged = dir.join(format!("{name}.pem.new"));
    files::ensure_absent(&kept)?;
    files::write_new(&staged, cert.pem().as_bytes(), 0o644)?;
    let rename = |from: &Path, to: &Path| {
        fs::rename(from, to).map_err(|source| FileError::Write {
            path: to.to_owned(),
            source,
        })
    };
    fs::hard_link(&cert_path, &kept).map_err(|source| FileError::Write {
        path: kept.clone(),
        source,
    })?;
    rename(&staged, &cert_path)?;
    Ok(vec![
        Written {
            path: cert_path,
            what: format!(
                "{name}: certificate re-issued, valid until {}; the key {name}.key is unchanged",
                day(now + LEAF_VALIDITY)
            ),
        },
        Written {
            path: kept,
            what: format!("{name}: the previous certificate, valid until {old_until}"),
        },
    ])
}

#[cfg(test)]
mod tests;
