//! `keyholder pki init`: a development/test PKI in one directory — a CA, the
//! daemon's server certificate, one client certificate per principal, one age
//! identity per keyholder — and a `keyholder.toml` that uses them.
//!
//! It refuses to overwrite anything: every path is checked before the first
//! file is written, and each file is created with `create_new`. Private keys
//! and identities are mode 0600, and so is the config (the daemon refuses a
//! config others can read).

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use age::secrecy::ExposeSecret as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use crate::files::{self, FileError};

mod renew;

pub use renew::{RenewError, renew};

/// How long a principal's (and the server's) certificate is valid: a dev
/// PKI is re-made, never kept for years.
const LEAF_VALIDITY: time::Duration = time::Duration::days(365);
/// How long the dev CA is valid: long enough to outlive the certificates it
/// issues and one re-issue of them.
const CA_VALIDITY: time::Duration = time::Duration::days(3 * 365);
/// Backdating, for clocks slightly behind the one that issued.
const CLOCK_SKEW: time::Duration = time::Duration::hours(1);

/// The validity window starting now, as rcgen wants it.
fn validity(params: &mut CertificateParams, now: time::OffsetDateTime, length: time::Duration) {
    params.not_before = now - CLOCK_SKEW;
    params.not_after = now + length;
}

/// A date for the listing: `2027-12-01`.
fn day(at: time::OffsetDateTime) -> String {
    format!(
        "{:04}-{:02}-{:02}",
        at.year(),
        u8::from(at.month()),
        at.day()
    )
}

/// What `pki init` makes.
#[derive(Debug, Clone)]
pub struct PkiPlan {
    /// The directory to write into (created 0700 if missing).
    pub dir: PathBuf,
    /// The keyring name in the config.
    pub keyring: String,
    /// Principals with the keyholder role (each gets an age identity).
    pub keyholders: Vec<String>,
    /// Principals with the operator role.
    pub operators: Vec<String>,
    /// Principals with the database role (the hook's identity).
    pub databases: Vec<String>,
    /// An extra DNS name for the server certificate.
    pub server_name: Option<String>,
    /// The daemon's listen address in the config.
    pub listen: String,
}

/// Why `pki init` refused.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A principal name is not `[a-z0-9-]{1,64}`.
    #[error("principal name `{name}` in --{list} {reason}; use 1 to 64 of a-z, 0-9 and -")]
    BadName {
        /// Which flag.
        list: &'static str,
        /// The name.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// A principal name that is also the name of the PKI's own files: its
    /// `NAME.pem` and `NAME.key` would be the CA's or the server's.
    #[error(
        "principal name `{name}` in --{list} is taken: {name}.pem and {name}.key are {owner}'s; choose another name"
    )]
    Reserved {
        /// Which flag.
        list: &'static str,
        /// The name.
        name: String,
        /// Whose files they are.
        owner: &'static str,
    },
    /// `pki renew ca`: the CA is not a principal.
    #[error(
        "`ca` is the dev CA, not a principal: pki renew re-issues the server's certificate (--server) or a principal's (NAME); a new CA is made by a new `keyholder pki init`"
    )]
    RenewCa,
    /// A name appears twice (in one list or across lists).
    #[error(
        "principal `{name}` is given twice; each principal has one certificate and one set of roles"
    )]
    Duplicate {
        /// The name.
        name: String,
    },
    /// Fewer than two keyholders: the two-person rule needs two.
    #[error("--keyholders names {count}; the two-person rule needs at least 2 keyholders")]
    TooFewKeyholders {
        /// How many were given.
        count: usize,
    },
    /// `--databases` or `--operators` is empty.
    #[error("--{list} is empty; name at least one principal")]
    EmptyList {
        /// Which flag.
        list: &'static str,
    },
    /// `--server-name` is not a DNS name.
    #[error("--server-name `{name}` is not a DNS name")]
    BadServerName {
        /// The name.
        name: String,
    },
    /// `--keyring` is not a keyring name the daemon takes.
    #[error("--keyring {0}")]
    BadKeyring(crypto_core::Error),
    /// `--listen` is not an address the daemon takes.
    #[error("--listen `{addr}` is not an address; write it like 127.0.0.1:8443")]
    BadListen {
        /// The value given.
        addr: String,
    },
    /// A file could not be written (or exists).
    #[error(transparent)]
    File(#[from] FileError),
    /// The directory could not be created.
    #[error("cannot create {}: {source}", dir.display())]
    CreateDir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// rcgen refused.
    #[error("cannot make a certificate: {0}")]
    Certificate(#[from] rcgen::Error),
}

impl PkiError {
    /// Whether the error is a bad command line (exit 2) rather than a refusal.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            Self::BadName { .. }
                | Self::Reserved { .. }
                | Self::RenewCa
                | Self::Duplicate { .. }
                | Self::TooFewKeyholders { .. }
                | Self::EmptyList { .. }
                | Self::BadServerName { .. }
                | Self::BadKeyring(_)
                | Self::BadListen { .. }
        )
    }
}

/// Checks a principal name given to `pki renew`. `ca` is refused: renewed
/// as a principal, the CA's certificate would be replaced by one that is no
/// CA (`server` is the server, as with `--server`).
pub fn check_principal_name(name: &str) -> Result<(), PkiError> {
    check_name("principal", name)?;
    if name == "ca" {
        return Err(PkiError::RenewCa);
    }
    Ok(())
}

/// The names whose `NAME.pem` and `NAME.key` are the PKI's own, and whose.
const RESERVED: [(&str, &str); 2] = [
    ("ca", "the dev CA"),
    ("server", "keyholderd's server certificate"),
];

fn check_name(list: &'static str, name: &str) -> Result<(), PkiError> {
    let bad = |reason| PkiError::BadName {
        list,
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(bad("is empty"));
    }
    if name.len() > 64 {
        return Err(bad("is longer than 64 characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(bad("holds a character other than a-z, 0-9 and -"));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(bad("starts or ends with -"));
    }
    Ok(())
}

/// One file `pki init` writes.
#[derive(Debug)]
pub struct Written {
    /// Where.
    pub path: PathBuf,
    /// What it is, for the listing.
    pub what: String,
}

struct Pending {
    path: PathBuf,
    contents: Vec<u8>,
    mode: u32,
    what: String,
}

impl PkiPlan {
    fn validate(&self) -> Result<(), PkiError> {
        let mut seen: Vec<&str> = Vec::new();
        for (list, names) in [
            ("keyholders", &self.keyholders),
            ("operators", &self.operators),
            ("databases", &self.databases),
        ] {
            if names.is_empty() {
                return Err(PkiError::EmptyList { list });
            }
            for name in names {
                check_name(list, name)?;
                if let Some((_, owner)) = RESERVED.iter().find(|(taken, _)| taken == name) {
                    return Err(PkiError::Reserved {
                        list,
                        name: name.clone(),
                        owner,
                    });
                }
                if seen.contains(&name.as_str()) {
                    return Err(PkiError::Duplicate { name: name.clone() });
                }
                seen.push(name);
            }
        }
        // What the config gets, as keyholderd reads it: a value it
        // refuses would leave a whole PKI that cannot be made again in
        // place.
        self.keyring
            .parse::<crypto_core::KeyringId>()
            .map_err(PkiError::BadKeyring)?;
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(PkiError::BadListen {
                addr: self.listen.clone(),
            });
        }
        if self.keyholders.len() < 2 {
            return Err(PkiError::TooFewKeyholders {
                count: self.keyholders.len(),
            });
        }
        if let Some(name) = &self.server_name
            && (rcgen::string::Ia5String::try_from(name.as_str()).is_err()
                || name.is_empty()
                || name.contains(|c: char| c.is_whitespace() || c == '/'))
        {
            return Err(PkiError::BadServerName { name: name.clone() });
        }
        Ok(())
    }

    /// Makes every file, checks that none exists, then writes them all.
    pub fn run(&self) -> Result<Vec<Written>, PkiError> {
        self.validate()?;
        let dir = &self.dir;
        let mut pending = Vec::new();
        let mut add = |name: &str, contents: Vec<u8>, mode: u32, what: String| {
            pending.push(Pending {
                path: dir.join(name),
                contents,
                mode,
                what,
            });
        };

        let now = time::OffsetDateTime::now_utc();
        let ca_until = day(now + CA_VALIDITY);
        let leaf_until = day(now + LEAF_VALIDITY);
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        validity(&mut ca_params, now, CA_VALIDITY);
        ca_params.distinguished_name = dn(&format!("keyholder {} dev CA", self.keyring));
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);
        add(
            "ca.pem",
            ca_cert.pem().into_bytes(),
            0o644,
            format!("CA certificate (--ca), valid until {ca_until}"),
        );
        add(
            "ca.key",
            issuer.key().serialize_pem().into_bytes(),
            0o600,
            "CA private key".into(),
        );

        let mut sans = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        sans.extend(self.server_name.iter().cloned());
        let server_key = KeyPair::generate()?;
        let mut server = CertificateParams::new(sans)?;
        validity(&mut server, now, LEAF_VALIDITY);
        server.distinguished_name = dn(self.server_name.as_deref().unwrap_or("localhost"));
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let server_cert = server.signed_by(&server_key, &issuer)?;
        add(
            "server.pem",
            server_cert.pem().into_bytes(),
            0o644,
            format!("keyholderd server certificate, valid until {leaf_until}"),
        );
        add(
            "server.key",
            server_key.serialize_pem().into_bytes(),
            0o600,
            "keyholderd server key".into(),
        );

        let mut recipients = Vec::new();
        let principals = self
            .keyholders
            .iter()
            .map(|n| (n, "keyholder"))
            .chain(self.operators.iter().map(|n| (n, "operator")))
            .chain(self.databases.iter().map(|n| (n, "database")));
        for (name, role) in principals {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(vec![name.clone()])?;
            validity(&mut params, now, LEAF_VALIDITY);
            params.distinguished_name = dn(name);
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            let cert = params.signed_by(&key, &issuer)?;
            add(
                &format!("{name}.pem"),
                cert.pem().into_bytes(),
                0o644,
                format!("{name}: client certificate ({role}), valid until {leaf_until}"),
            );
            add(
                &format!("{name}.key"),
                key.serialize_pem().into_bytes(),
                0o600,
                format!("{name}: client key"),
            );
            if role == "keyholder" {
                let identity = age::x25519::Identity::generate();
                let recipient = identity.to_public().to_string();
                let text = format!(
                    "# keyholder age identity of {name}\n# public key: {recipient}\n{}\n",
                    identity.to_string().expose_secret()
                );
                add(
                    &format!("{name}.age"),
                    text.into_bytes(),
                    0o600,
                    format!("{name}: age identity (--identity)"),
                );
                recipients.push((name.clone(), recipient));
            }
        }
        add(
            "keyholder.toml",
            self.config(&recipients).into_bytes(),
            0o600,
            "keyholderd config".into(),
        );

        let state = dir.join("state");
        for path in pending.iter().map(|f| &f.path).chain([&state]) {
            files::ensure_absent(path)?;
        }
        if !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| PkiError::CreateDir {
                    dir: dir.clone(),
                    source,
                })?;
        }
        // keyholderd refuses a state directory others can enter.
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&state)
            .and_then(|()| fs::set_permissions(&state, fs::Permissions::from_mode(0o700)))
            .map_err(|source| PkiError::CreateDir {
                dir: state.clone(),
                source,
            })?;
        let mut written = vec![Written {
            path: state,
            what: "keyholderd state directory (mode 0700)".into(),
        }];
        for file in pending {
            files::write_new(&file.path, &file.contents, file.mode)?;
            written.push(Written {
                path: file.path,
                what: file.what,
            });
        }
        Ok(written)
    }

    /// The config, in DESIGN.md's shape, with absolute paths when the
    /// directory can be resolved so it works from any working directory.
    fn config(&self, recipients: &[(String, String)]) -> String {
        let base = absolute(&self.dir);
        let path = |name: &str| quote(&base.join(name).display().to_string());
        let list = |names: &[String]| {
            let quoted: Vec<String> = names.iter().map(|n| quote(n)).collect();
            format!("[{}]", quoted.join(", "))
        };
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# keyholderd config made by `keyholder pki init` (a development/test setup).\n\
             # Check it with: keyholderd check-config --config {}\n",
            base.join("keyholder.toml").display()
        );
        let _ = writeln!(out, "keyring = {}", quote(&self.keyring));
        let _ = writeln!(out, "state_dir = {}\n", path("state"));
        let _ = writeln!(out, "[listen]");
        let _ = writeln!(out, "addr = {}", quote(&self.listen));
        let _ = writeln!(out, "cert = {}", path("server.pem"));
        let _ = writeln!(out, "key = {}", path("server.key"));
        let _ = writeln!(out, "client_ca = {}\n", path("ca.pem"));
        let _ = writeln!(out, "[shamir]\nthreshold = 2\n");
        for (name, recipient) in recipients {
            let _ = writeln!(
                out,
                "[[principals]]\nname = {n}\nroles = [\"keyholder\"]\ncert_identity = {n}\nage_recipient = {r}\n",
                n = quote(name),
                r = quote(recipient)
            );
        }
        for (names, role) in [(&self.operators, "operator"), (&self.databases, "database")] {
            for name in names {
                let _ = writeln!(
                    out,
                    "[[principals]]\nname = {n}\nroles = [\"{role}\"]\ncert_identity = {n}\n",
                    n = quote(name)
                );
            }
        }
        let _ = writeln!(out, "[unseal]\nprogress_ttl = \"15m\"\n");
        let _ = writeln!(out, "[verify]\nsample_size = 64\n");
        let _ = writeln!(
            out,
            "# The tables whose columns hold keyholder envelopes, for example:\n\
             # [[targets]]\n\
             # name = \"customers-ssn\"\n\
             # store = \"sqlite:///var/lib/app/app.db\"\n\
             # table = \"customers\"\n\
             # primary_key = \"id\"\n\
             # columns = [\"ssn\"]\n\
             # aad = \"none\"\n"
        );
        let _ = writeln!(
            out,
            "[reencrypt]\nbatch_size = 1000\nrows_per_sec = 0\npause_between_batches = \"0ms\"\n\
             max_batch_latency = \"250ms\"\nmax_replica_lag = \"5s\"\nconsumers = {}",
            list(&self.databases)
        );
        out
    }
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

fn absolute(dir: &Path) -> PathBuf {
    std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned())
}

/// A TOML basic string, escaped by the toml crate.
fn quote(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

/// Whether `mode` keeps a file private (for tests and checks).
pub fn is_private_mode(path: &Path) -> bool {
    fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o077 == 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(dir: &Path) -> PkiPlan {
        PkiPlan {
            dir: dir.to_owned(),
            keyring: "orders".into(),
            keyholders: vec!["alice".into(), "bob".into(), "carol".into()],
            operators: vec!["olga".into()],
            databases: vec!["db1".into()],
            server_name: Some("keyholder.internal".into()),
            listen: "127.0.0.1:8443".into(),
        }
    }

    #[test]
    fn writes_a_pki_and_a_parseable_config_with_private_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("pki");
        let written = plan(&dir).run().unwrap();
        assert_eq!(written.len(), 1 + 2 + 2 + 5 * 2 + 3 + 1);
        assert!(is_private_mode(&dir.join("state")));
        for name in [
            "ca.key",
            "server.key",
            "alice.key",
            "alice.age",
            "keyholder.toml",
        ] {
            assert!(is_private_mode(&dir.join(name)), "{name}");
        }
        let config: toml::Table = fs::read_to_string(dir.join("keyholder.toml"))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(config["keyring"].as_str(), Some("orders"));
        let principals = config["principals"].as_array().unwrap();
        assert_eq!(principals.len(), 5);
        assert!(
            principals[0]["age_recipient"]
                .as_str()
                .unwrap()
                .starts_with("age1")
        );
        assert_eq!(
            config["reencrypt"]["consumers"].as_array().unwrap()[0].as_str(),
            Some("db1")
        );
        let identity: age::x25519::Identity = fs::read_to_string(dir.join("bob.age"))
            .unwrap()
            .lines()
            .last()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            identity.to_public().to_string(),
            principals[1]["age_recipient"].as_str().unwrap()
        );
    }

    /// (not before, not after) of a PEM certificate, in Unix seconds.
    fn validity_of(path: &Path) -> (i64, i64) {
        use x509_parser::prelude::{FromDer as _, X509Certificate};
        let pem = fs::read(path).unwrap();
        let der = <rustls_pki_types::CertificateDer<'_> as rustls_pki_types::pem::PemObject>::from_pem_slice(&pem).unwrap();
        let (_, cert) = X509Certificate::from_der(der.as_ref()).unwrap();
        let v = cert.validity();
        (v.not_before.timestamp(), v.not_after.timestamp())
    }

    #[test]
    fn certificates_are_valid_from_an_hour_ago_for_a_year_and_the_ca_for_three() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("pki");
        let written = plan(&dir).run().unwrap();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let day = 24 * 3600;
        for (name, days) in [
            ("alice.pem", 365),
            ("db1.pem", 365),
            ("server.pem", 365),
            ("ca.pem", 3 * 365),
        ] {
            let (from, until) = validity_of(&dir.join(name));
            assert!(
                (now - 3600 - 60..=now - 3600 + 60).contains(&from),
                "{name}: from {from}, now {now}"
            );
            assert!(
                (now + days * day - 60..=now + days * day + 60).contains(&until),
                "{name}: until {until}"
            );
        }
        let alice = written
            .iter()
            .find(|w| w.path.ends_with("alice.pem"))
            .unwrap();
        let expected = super::day(time::OffsetDateTime::now_utc() + LEAF_VALIDITY);
        assert_eq!(
            alice.what,
            format!("alice: client certificate (keyholder), valid until {expected}")
        );
    }

    #[test]
    fn every_keyholder_gets_an_age_recipient_of_their_own() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("pki");
        plan(&dir).run().unwrap();
        let config: toml::Table = fs::read_to_string(dir.join("keyholder.toml"))
            .unwrap()
            .parse()
            .unwrap();
        let mut recipients: Vec<&str> = config["principals"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p.get("age_recipient").and_then(|r| r.as_str()))
            .collect();
        assert_eq!(recipients.len(), 3);
        recipients.sort_unstable();
        recipients.dedup();
        assert_eq!(recipients.len(), 3, "one recipient per keyholder");
    }

    #[test]
    fn refuses_to_overwrite_and_writes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("bob.age"), "mine").unwrap();
        let err = plan(tmp.path()).run().unwrap_err();
        assert!(
            matches!(err, PkiError::File(FileError::Exists { .. })),
            "{err}"
        );
        assert!(!tmp.path().join("ca.pem").exists());
    }

    #[test]
    fn bad_lists_are_usage_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let mut p = plan(tmp.path());
        p.operators = vec!["alice".into()];
        assert_eq!(
            p.run().unwrap_err().to_string(),
            "principal `alice` is given twice; each principal has one certificate and one set of roles"
        );
        let mut p = plan(tmp.path());
        p.keyholders = vec!["Alice".into(), "bob".into()];
        assert!(p.run().unwrap_err().is_usage());
        let mut p = plan(tmp.path());
        p.keyholders = vec!["alice".into()];
        assert!(matches!(
            p.run().unwrap_err(),
            PkiError::TooFewKeyholders { count: 1 }
        ));
    }
}
