//! A test PKI made with rcgen: a CA, the server certificate, one client
//! certificate per principal, an age identity per keyholder, and odd
//! certificates (another CA, expired) for the handshake tests.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason,
    RevokedCertParams, SerialNumber,
};

/// The serial number of the certificate [`Pki::revoked`] issues and revokes.
const REVOKED_SERIAL: u64 = 0x4b1d;

/// A client identity on disk.
#[derive(Clone, Debug)]
pub struct ClientFiles {
    /// Certificate (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
}

/// The PKI of one test.
pub struct Pki {
    /// Where the files are.
    pub dir: PathBuf,
    ca: Issuer<'static, KeyPair>,
    /// The CA certificate (PEM file).
    pub ca_pem: PathBuf,
    /// The server certificate and key.
    pub server: ClientFiles,
}

fn write_private(path: &Path, text: &str) {
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
}

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

impl Pki {
    /// A CA and a server certificate for `localhost` / `127.0.0.1` in `dir`.
    pub fn generate(dir: &Path) -> Self {
        fs::create_dir_all(dir).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let params = ca_params("keyholder test ca");
        let ca_cert = params.self_signed(&ca_key).unwrap();
        let ca_pem = dir.join("ca.pem");
        fs::write(&ca_pem, ca_cert.pem()).unwrap();
        let mut pki = Self {
            dir: dir.to_owned(),
            ca: Issuer::new(params, ca_key),
            ca_pem,
            server: ClientFiles {
                cert: PathBuf::new(),
                key: PathBuf::new(),
            },
        };
        pki.server = pki.issue("server", &["localhost", "127.0.0.1"], false);
        pki
    }

    /// Issues a certificate with CN `name` (and `sans`), expired when asked.
    pub fn issue(&self, name: &str, sans: &[&str], expired: bool) -> ClientFiles {
        issue_with(&self.ca, &self.dir, &[name], sans, expired, None)
    }

    /// Issues a certificate with CN `name` (and `sans`) valid until
    /// `not_after`, written to `<name>.pem/.key` (replacing them).
    pub fn issue_until(
        &self,
        name: &str,
        sans: &[&str],
        not_after: time::OffsetDateTime,
    ) -> ClientFiles {
        issue_dated(&self.ca, &self.dir, name, sans, not_after)
    }

    /// A certificate whose subject holds two CNs, `first` then `second`
    /// (rcgen keeps one value per attribute type, so the second is written
    /// under the CN's OID): what a forger would ask a lax CA for. Written to
    /// `<first>+<second>.pem/.key`.
    pub fn two_cns(&self, first: &str, second: &str) -> ClientFiles {
        issue_with(&self.ca, &self.dir, &[first, second], &[], false, None)
    }

    /// A certificate for `name` (otherwise valid) and a CRL of the CA that
    /// revokes it: `(<name>-revoked.pem/.key, ca.crl)`.
    pub fn revoked(&self, name: &str) -> (ClientFiles, PathBuf) {
        let files = issue_with(
            &self.ca,
            &self.dir,
            &[name],
            &[],
            false,
            Some(REVOKED_SERIAL),
        );
        let crl = CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2024, 1, 1),
            next_update: rcgen::date_time_ymd(2099, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: vec![RevokedCertParams {
                serial_number: SerialNumber::from(REVOKED_SERIAL),
                revocation_time: rcgen::date_time_ymd(2024, 6, 1),
                reason_code: Some(RevocationReason::KeyCompromise),
                invalidity_date: None,
            }],
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&self.ca)
        .unwrap();
        let path = self.dir.join("ca.crl");
        fs::write(&path, crl.pem().unwrap()).unwrap();
        (files, path)
    }

    /// A client certificate for principal `name` (CN = name).
    pub fn client(&self, name: &str) -> ClientFiles {
        let files = ClientFiles {
            cert: self.dir.join(format!("{name}.pem")),
            key: self.dir.join(format!("{name}.key")),
        };
        if files.cert.exists() {
            return files;
        }
        self.issue(name, &[], false)
    }

    /// A client certificate for `name` from a CA the daemon does not trust.
    pub fn from_other_ca(&self, name: &str) -> ClientFiles {
        let dir = self.dir.join("other-ca");
        fs::create_dir_all(&dir).unwrap();
        let key = KeyPair::generate().unwrap();
        let params = ca_params("some other ca");
        let issuer = Issuer::new(params, key);
        issue_with(&issuer, &dir, &[name], &[], false, None)
    }

    /// An age identity for keyholder `name`, written to `<name>.age`; returns
    /// its recipient.
    pub fn age_identity(&self, name: &str) -> String {
        let path = self.dir.join(format!("{name}.age"));
        let identity = age::x25519::Identity::generate();
        {
            use age::secrecy::ExposeSecret as _;
            write_private(
                &path,
                &format!("{}\n", identity.to_string().expose_secret()),
            );
        }
        identity.to_public().to_string()
    }

    /// The age identity of keyholder `name`.
    pub fn load_age_identity(&self, name: &str) -> age::x25519::Identity {
        let text = fs::read_to_string(self.dir.join(format!("{name}.age"))).unwrap();
        text.trim().parse().unwrap()
    }
}

fn issue_dated(
    issuer: &Issuer<'_, KeyPair>,
    dir: &Path,
    name: &str,
    sans: &[&str],
    not_after: time::OffsetDateTime,
) -> ClientFiles {
    let sans: Vec<String> = sans.iter().map(|s| (*s).to_owned()).collect();
    let mut params = CertificateParams::new(sans).unwrap();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.not_before = not_after - time::Duration::days(365);
    params.not_after = not_after;
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    let files = ClientFiles {
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}.key")),
    };
    fs::write(&files.cert, cert.pem()).unwrap();
    fs::remove_file(&files.key).ok();
    write_private(&files.key, &key.serialize_pem());
    files
}

fn issue_with(
    issuer: &Issuer<'_, KeyPair>,
    dir: &Path,
    cns: &[&str],
    sans: &[&str],
    expired: bool,
    serial: Option<u64>,
) -> ClientFiles {
    let sans: Vec<String> = sans.iter().map(|s| (*s).to_owned()).collect();
    let mut params = CertificateParams::new(sans).unwrap();
    let mut dn = DistinguishedName::new();
    for (i, cn) in cns.iter().enumerate() {
        let kind = match i {
            0 => DnType::CommonName,
            _ => DnType::CustomDnType(vec![2, 5, 4, 3]),
        };
        dn.push(kind, *cn);
    }
    params.distinguished_name = dn;
    let name = cns.join("+");
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    params.serial_number = serial.map(SerialNumber::from);
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    let suffix = match (expired, serial) {
        (true, _) => "-expired",
        (false, Some(_)) => "-revoked",
        (false, None) => "",
    };
    let files = ClientFiles {
        cert: dir.join(format!("{name}{suffix}.pem")),
        key: dir.join(format!("{name}{suffix}.key")),
    };
    fs::write(&files.cert, cert.pem()).unwrap();
    write_private(&files.key, &key.serialize_pem());
    files
}
