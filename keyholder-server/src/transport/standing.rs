//! A connection's standing: who its requests are made by. Resolved at the
//! handshake, and again, the certificate chain verified anew, at the first
//! request after a reload published new credentials or after the end of the
//! chain's validity. So a certificate a reload revoked (CRL) or no longer
//! trusts (client CA), a principal a reload removed or remapped, and a
//! certificate that expired while its connection stayed open are refused at
//! their next request, as a new handshake would refuse them, and the
//! connection is closed after that answer. A principal whose roles a reload
//! changed keeps its connection with the new roles.
//!
//! It holds the certificates the client showed, nothing else; it never
//! decides a rule of its own: the verifier and the principals come from the
//! [`Credentials`] in force.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use rustls_pki_types::{CertificateDer, UnixTime};
use tokio::sync::watch;
use x509_parser::prelude::{FromDer as _, X509Certificate};

use super::identity::{self, IdentityError};
use super::{Caller, Credentials};

/// What a connection's requests are made by, kept up to date with the
/// credentials in force.
pub(super) struct Standing {
    peer: SocketAddr,
    /// The certificates the client showed, its own first.
    chain: Vec<CertificateDer<'static>>,
    /// The earliest `notAfter` of `chain`, in Unix seconds.
    not_after: Option<i64>,
    /// The principal the handshake found: the one whose place the
    /// connection holds.
    held: Option<String>,
    current: Mutex<Current>,
}

struct Current {
    credentials: watch::Receiver<Credentials>,
    caller: Caller,
    /// The connection is to close after its next answer.
    closing: bool,
}

impl Standing {
    /// The standing found at the handshake: `caller`, resolved with the
    /// credentials `credentials` last marked seen.
    pub(super) fn new(
        peer: SocketAddr,
        chain: Vec<CertificateDer<'static>>,
        credentials: watch::Receiver<Credentials>,
        caller: Caller,
    ) -> Self {
        let not_after = chain
            .iter()
            .filter_map(|der| X509Certificate::from_der(der).ok())
            .map(|(_, cert)| cert.validity().not_after.timestamp())
            .min();
        let held = caller.0.as_ref().as_ref().ok().map(|p| p.name.clone());
        Self {
            peer,
            chain,
            not_after,
            held,
            current: Mutex::new(Current {
                credentials,
                caller,
                closing: false,
            }),
        }
    }

    /// The caller of the request arriving now, and whether the connection
    /// is to close after answering it.
    pub(super) fn caller(&self) -> (Caller, bool) {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let reloaded = current.credentials.has_changed().unwrap_or(false);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let ran_out = self.not_after.is_some_and(|end| now > end);
        if current.closing || !(reloaded || ran_out) {
            return (current.caller.clone(), current.closing);
        }
        let credentials = current.credentials.borrow_and_update().clone();
        let resolved = self.check(&credentials);
        let keeps = matches!((&resolved, &self.held), (Ok(p), Some(held)) if p.name == *held);
        if !keeps {
            let error = match &resolved {
                Ok(p) => format!("the certificate maps to {} now", p.name),
                Err(e) => e.to_string(),
            };
            tracing::info!(
                peer = %self.peer,
                principal = self.held.as_deref().unwrap_or("none"),
                error,
                "an open connection's client certificate no longer stands for its principal: answered as it is now, then closed"
            );
        }
        current.caller = Caller(Arc::new(resolved));
        current.closing = !keeps;
        (current.caller.clone(), current.closing)
    }

    fn check(
        &self,
        credentials: &Credentials,
    ) -> Result<crate::principal::Principal, IdentityError> {
        let (own, intermediates) = self
            .chain
            .split_first()
            .ok_or(IdentityError::NoCertificate)?;
        credentials
            .verifier
            .verify_client_cert(own, intermediates, UnixTime::now())
            .map_err(|e| IdentityError::NoLongerAccepted {
                reason: e.to_string(),
            })?;
        identity::resolve(Some(own), &credentials.principals)
    }
}
