//! When the daemon's TLS credentials run out: the server certificate's and
//! the client CA's `notAfter` and the CRL's `nextUpdate`, read from the
//! files `[listen]` names. Logged at start-up (a warning for each one less
//! than [`WARN_BEFORE`] away or past), exported as a metric and in the
//! status document. It reads certificates only, never the key.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keyholder_api::CertificateExpiry;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use x509_parser::prelude::{FromDer as _, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

use super::tls::TlsError;
use crate::config::Listen;

/// How long before an end of validity the daemon warns.
pub const WARN_BEFORE: Duration = Duration::from_secs(CertificateExpiry::WARN_DAYS * 24 * 3600);

/// The dates, in Unix seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CredentialDates {
    /// The server certificate's `notAfter` (the first certificate of
    /// `listen.cert`).
    pub server_cert: i64,
    /// The earliest `notAfter` of the certificates in `listen.client_ca`.
    pub client_ca: i64,
    /// The earliest `nextUpdate` of the CRLs in `listen.crl`.
    pub crl_next_update: Option<i64>,
}

fn bad(field: &'static str, path: &Path, reason: impl ToString) -> TlsError {
    TlsError::Pem {
        field,
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

fn not_afters(field: &'static str, path: &Path) -> Result<Vec<i64>, TlsError> {
    let ders = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(field, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(field, path, e))?;
    let dates = ders
        .iter()
        .map(|der| {
            X509Certificate::from_der(der)
                .map(|(_, cert)| cert.validity().not_after.timestamp())
                .map_err(|e| bad(field, path, format!("not an X.509 certificate: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if dates.is_empty() {
        return Err(bad(field, path, "holds no PEM certificate"));
    }
    Ok(dates)
}

/// Reads the dates of the files `listen` names.
pub fn read(listen: &Listen) -> Result<CredentialDates, TlsError> {
    let server_cert = not_afters("listen.cert", &listen.cert)?[0];
    let client_ca = not_afters("listen.client_ca", &listen.client_ca)?
        .into_iter()
        .min()
        .expect("not_afters returns at least one");
    let crl_next_update = match &listen.crl {
        None => None,
        Some(path) => {
            let ders = CertificateRevocationListDer::pem_file_iter(path)
                .map_err(|e| bad("listen.crl", path, e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad("listen.crl", path, e))?;
            let mut earliest = None;
            for der in &ders {
                let (_, crl) = CertificateRevocationList::from_der(der)
                    .map_err(|e| bad("listen.crl", path, format!("not an X.509 CRL: {e}")))?;
                if let Some(next) = crl.next_update() {
                    let next = next.timestamp();
                    earliest = Some(earliest.map_or(next, |e: i64| e.min(next)));
                }
            }
            earliest
        }
    };
    Ok(CredentialDates {
        server_cert,
        client_ca,
        crl_next_update,
    })
}

fn unix(now: SystemTime) -> i64 {
    now.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// RFC 3339 in UTC, seconds precision.
pub fn rfc3339(at: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_secs(u64::try_from(at).unwrap_or(0));
    humantime::format_rfc3339_seconds(at).to_string()
}

impl CredentialDates {
    /// The dates by metric label.
    pub fn labelled(&self) -> Vec<(&'static str, i64)> {
        let mut all = vec![
            ("server_cert", self.server_cert),
            ("client_ca", self.client_ca),
        ];
        all.extend(self.crl_next_update.map(|at| ("crl_next_update", at)));
        all
    }

    /// The status document's form.
    pub fn to_api(&self) -> CertificateExpiry {
        CertificateExpiry {
            server_cert_not_after: rfc3339(self.server_cert),
            client_ca_not_after: rfc3339(self.client_ca),
            crl_next_update: self.crl_next_update.map(rfc3339),
        }
    }

    /// The ones less than [`WARN_BEFORE`] after `now` (or past), with what
    /// to do about each.
    pub fn due(&self, now: SystemTime) -> Vec<String> {
        let now = unix(now);
        let horizon = now.saturating_add(i64::try_from(WARN_BEFORE.as_secs()).unwrap_or(0));
        self.labelled()
            .into_iter()
            .filter(|(_, at)| *at <= horizon)
            .map(|(what, at)| {
                let (thing, verb, action) = match what {
                    "server_cert" => (
                        "the server certificate (listen.cert)",
                        ["expires", "expired"],
                        "renew it (keyholder pki renew --server for a dev PKI)",
                    ),
                    "client_ca" => (
                        "the client CA certificate (listen.client_ca)",
                        ["expires", "expired"],
                        "issue a new CA and re-issue the client certificates",
                    ),
                    _ => (
                        "the CRL's next update (listen.crl)",
                        ["is due", "was due"],
                        "publish a new CRL",
                    ),
                };
                let when = rfc3339(at);
                if at <= now {
                    format!("{thing} {} at {when}; {action}", verb[1])
                } else {
                    let days = (at - now) / 86_400;
                    format!("{thing} {} at {when}, in {days} days; {action}", verb[0])
                }
            })
            .collect()
    }

    /// Logs the dates (one event) and a warning for each one due.
    pub fn log(&self, now: SystemTime) {
        tracing::info!(
            server_cert_not_after = %rfc3339(self.server_cert),
            client_ca_not_after = %rfc3339(self.client_ca),
            crl_next_update = %self.crl_next_update.map(rfc3339).unwrap_or_else(|| "none".to_owned()),
            "tls credentials loaded"
        );
        self.warn(now);
    }

    /// A warning for each date due (see [`CredentialDates::due`]).
    pub fn warn(&self, now: SystemTime) {
        for warning in self.due(now) {
            tracing::warn!("{warning}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::CredentialDates;

    #[test]
    fn warns_from_thirty_days_before_and_after_expiry() {
        let day = 86_400;
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let at = |days: i64| 1_800_000_000 + days * day;
        let dates = CredentialDates {
            server_cert: at(29) + 60,
            client_ca: at(31),
            crl_next_update: Some(at(-1)),
        };
        let due = dates.due(now);
        assert_eq!(due.len(), 2, "{due:?}");
        assert_eq!(
            due[0],
            "the server certificate (listen.cert) expires at 2027-02-13T08:01:00Z, in 29 days; renew it (keyholder pki renew --server for a dev PKI)"
        );
        assert_eq!(
            due[1],
            "the CRL's next update (listen.crl) was due at 2027-01-14T08:00:00Z; publish a new CRL"
        );
        assert_eq!(dates.to_api().client_ca_not_after, "2027-02-15T08:00:00Z");
    }
}
