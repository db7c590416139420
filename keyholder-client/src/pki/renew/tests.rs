use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use x509_parser::prelude::{FromDer as _, X509Certificate};

use super::{RenewError, renew};
use crate::pki::PkiPlan;

fn init(dir: &Path, keyring: &str) {
    PkiPlan {
        dir: dir.to_owned(),
        keyring: keyring.into(),
        keyholders: vec!["alice".into(), "bob".into()],
        operators: vec!["olga".into()],
        databases: vec!["db1".into()],
        server_name: Some("kh.internal".into()),
        listen: "127.0.0.1:8443".into(),
    }
    .run()
    .unwrap();
}

fn der(path: &Path) -> CertificateDer<'static> {
    let text = std::fs::read(path).unwrap();
    <CertificateDer<'static> as rustls_pki_types::pem::PemObject>::from_pem_slice(&text).unwrap()
}

fn serial(path: &Path) -> Vec<u8> {
    let der = der(path);
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    cert.raw_serial().to_vec()
}

fn roots(dir: &Path) -> Arc<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der(&dir.join("ca.pem"))).unwrap();
    Arc::new(roots)
}

#[test]
fn a_renewed_certificate_chains_to_the_same_ca_keeps_the_key_and_gets_a_new_serial() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pki");
    init(&dir, "orders");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key_before = std::fs::read(dir.join("alice.key")).unwrap();
    let serial_before = serial(&dir.join("alice.pem"));

    let written = renew(&dir, "alice").unwrap();
    assert_eq!(written[0].path, dir.join("alice.pem"));
    assert!(written[1].path.starts_with(&dir));
    assert_eq!(
        serial(&written[1].path),
        serial_before,
        "the old one is kept"
    );
    assert_ne!(serial(&dir.join("alice.pem")), serial_before);
    assert_eq!(std::fs::read(dir.join("alice.key")).unwrap(), key_before);
    let clients =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots(&dir), provider.clone())
            .build()
            .unwrap();
    clients
        .verify_client_cert(&der(&dir.join("alice.pem")), &[], UnixTime::now())
        .expect("the renewed client certificate verifies against ca.pem");

    renew(&dir, "server").unwrap();
    let servers =
        rustls::client::WebPkiServerVerifier::builder_with_provider(roots(&dir), provider)
            .build()
            .unwrap();
    for name in ["localhost", "kh.internal", "127.0.0.1"] {
        servers
            .verify_server_cert(
                &der(&dir.join("server.pem")),
                &[],
                &ServerName::try_from(name).unwrap(),
                &[],
                UnixTime::now(),
            )
            .unwrap_or_else(|e| panic!("the renewed server certificate for {name}: {e}"));
    }
}

#[test]
fn a_certificate_of_another_ca_or_a_foreign_key_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, other) = (tmp.path().join("pki"), tmp.path().join("other"));
    init(&dir, "orders");
    // Another keyring's dev CA: another issuer name.
    init(&other, "payments");
    std::fs::copy(other.join("bob.pem"), dir.join("bob.pem")).unwrap();
    let refused = renew(&dir, "bob").unwrap_err();
    assert!(
        matches!(refused, RenewError::OtherIssuer { .. }),
        "{refused}"
    );
    assert!(
        refused
            .to_string()
            .ends_with("; renew it with the CA that issued it"),
        "{refused}"
    );

    std::fs::copy(dir.join("alice.key"), dir.join("olga.key")).unwrap();
    let refused = renew(&dir, "olga").unwrap_err();
    assert_eq!(
        refused.to_string(),
        format!(
            "{} is not the key of {}; renew keeps the key, so they must belong together",
            dir.join("olga.key").display(),
            dir.join("olga.pem").display()
        )
    );
    let missing = renew(&dir, "nobody").unwrap_err();
    assert_eq!(
        missing.to_string(),
        format!(
            "{} does not exist; check the path",
            dir.join("nobody.pem").display()
        )
    );
}
