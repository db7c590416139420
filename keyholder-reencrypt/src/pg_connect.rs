//! Connecting to PostgreSQL as libpq would: one parsed `postgres://` URL
//! with its TLS settings, used by the re-encryption targets here and by the
//! daemon's PostgreSQL state store.
//!
//! Owns the libpq parameters the driver does not know (`sslmode`'s
//! `verify-ca` and `verify-full`, `sslrootcert`, `sslcert`, `sslkey`,
//! `passfile`), their `PGSSLMODE` / `PGSSLROOTCERT` / `PGSSLCERT` /
//! `PGSSLKEY` / `PGPASSFILE` environment, the password file, and the rustls
//! configuration built from them. The URL's parameter wins over the
//! environment, the environment over the default, as in libpq.
//!
//! The default `sslmode` is libpq's `prefer` for a loopback host or a Unix
//! socket, and `verify-full` for every other host: plain TCP to another host
//! happens only when the URL or `PGSSLMODE` says `sslmode=disable`, and then
//! [`PgConnect::plaintext_to_remote`] is true so the daemon warns at
//! start-up. `prefer` (which may fall back to plain TCP) and `allow` are
//! refused for a host that is not loopback.
//!
//! Certificate and key files are read on every connect, so a renewed file
//! is used by the next connection. It must never put the password in an
//! error, a log or its `Debug`.

mod pgpass;
mod tls;

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use tokio_postgres::Client;
use tokio_postgres::config::Host;

use crate::error::DatabaseError;

pub(crate) use tls::tls_cause;

/// libpq's `sslmode`, as keyholder honours it (`allow` is refused).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PgSslMode {
    /// Plain TCP only.
    Disable,
    /// TLS when the server offers it, unverified; plain TCP otherwise.
    /// Only for a loopback host or a Unix socket.
    Prefer,
    /// TLS, the certificate unverified (verified as `verify-ca` when
    /// `sslrootcert` is given, as in libpq).
    Require,
    /// TLS, the certificate signed by `sslrootcert`, any host name.
    VerifyCa,
    /// TLS, the certificate signed by `sslrootcert` and naming the host.
    VerifyFull,
}

impl PgSslMode {
    fn parse(value: &str) -> Result<Self, String> {
        Ok(match value {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            "allow" => {
                return Err(
                    "sslmode=allow is not supported (it tries plain TCP first); use prefer, require or verify-full"
                        .to_owned(),
                );
            }
            other => {
                return Err(format!(
                    "sslmode={other} is not one of disable, prefer, require, verify-ca, verify-full"
                ));
            }
        })
    }

    /// libpq's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }
}

impl fmt::Display for PgSslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The TLS settings of one connection URL (paths, read on connect).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TlsSettings {
    pub(crate) mode: PgSslMode,
    pub(crate) root_cert: Option<PathBuf>,
    pub(crate) client: Option<(PathBuf, PathBuf)>,
}

/// A parsed PostgreSQL connection URL with libpq's TLS and password-file
/// settings. Shown (`Display`, `Debug`) with its password replaced.
#[derive(Clone, PartialEq, Eq)]
pub struct PgConnect {
    url: String,
    config: tokio_postgres::Config,
    tls: TlsSettings,
    mode_given: bool,
    passfile: Option<PathBuf>,
}

/// Where the process's environment and home are (a seam for tests).
struct Env<'a> {
    var: &'a dyn Fn(&str) -> Option<String>,
}

impl Env<'_> {
    fn get(&self, name: &str) -> Option<String> {
        (self.var)(name).filter(|v| !v.is_empty())
    }

    fn home_file(&self, name: &str) -> Option<PathBuf> {
        self.get("HOME").map(|home| Path::new(&home).join(name))
    }
}

impl PgConnect {
    /// Parses `postgres://user[:password]@host[:port]/db[?param=value&...]`
    /// with the process's `PGSSL*` and `PGPASSFILE` environment. The error
    /// names the parameter that is wrong, never the password.
    pub fn parse(url: &str) -> Result<Self, String> {
        Self::parse_in(
            url,
            &Env {
                var: &|name| std::env::var(name).ok(),
            },
        )
    }

    /// [`PgConnect::parse`] with `var` as the environment.
    pub fn parse_with_env(url: &str, var: &dyn Fn(&str) -> Option<String>) -> Result<Self, String> {
        Self::parse_in(url, &Env { var })
    }

    fn parse_in(url: &str, env: &Env<'_>) -> Result<Self, String> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err("must be a URL starting with postgres:// or postgresql://".to_owned());
        }
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        // The driver ends the password at its first `@`: a second one means
        // a password holding `@` unencoded, whose rest would be read (and
        // looked up, and logged) as the host.
        if base.matches('@').count() > 1 {
            return Err(
                "holds `@` more than once before its query: percent-encode `@` (%40) and `/` (%2F) in the user name and password"
                    .to_owned(),
            );
        }
        let mut ours: [(&str, Option<String>); 5] = [
            ("sslmode", None),
            ("sslrootcert", None),
            ("sslcert", None),
            ("sslkey", None),
            ("passfile", None),
        ];
        let mut rest = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match ours.iter_mut().find(|(name, _)| *name == key) {
                Some((name, slot)) => {
                    if slot.is_some() {
                        return Err(format!("names {name} twice"));
                    }
                    let value = percent_encoding::percent_decode_str(value)
                        .decode_utf8()
                        .map_err(|_| format!("{name} is not UTF-8"))?;
                    *slot = Some(value.into_owned());
                }
                None => rest.push(pair),
            }
        }
        let [mode, root_cert, cert, key, passfile] = ours.map(|(_, value)| value);
        let driver_url = if rest.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", rest.join("&"))
        };
        let mut config = tokio_postgres::Config::from_str(&driver_url).map_err(|e| {
            let cause = std::error::Error::source(&e)
                .map(|c| format!(" ({c})"))
                .unwrap_or_default();
            format!("is not a PostgreSQL URL{cause}")
        })?;

        let loopback = is_loopback(&config);
        let mode_given = mode.is_some() || env.get("PGSSLMODE").is_some();
        let mode = match mode.or_else(|| env.get("PGSSLMODE")) {
            Some(value) => PgSslMode::parse(&value)?,
            None if loopback => PgSslMode::Prefer,
            None => PgSslMode::VerifyFull,
        };
        if !loopback && mode == PgSslMode::Prefer {
            return Err(
                "sslmode=prefer may fall back to plain TCP, and the host is not loopback: use sslmode=verify-full (or require), or sslmode=disable to send in the clear on purpose"
                    .to_owned(),
            );
        }
        let file = |given: Option<String>, var: &str, default: &str| {
            given
                .or_else(|| env.get(var))
                .map(PathBuf::from)
                .or_else(|| env.home_file(default).filter(|p| p.exists()))
        };
        let root_cert = file(root_cert, "PGSSLROOTCERT", ".postgresql/root.crt");
        if root_cert.as_deref() == Some(Path::new("system")) {
            return Err(
                "sslrootcert=system is not supported: name the file of the CA that signed the server's certificate"
                    .to_owned(),
            );
        }
        if matches!(mode, PgSslMode::VerifyCa | PgSslMode::VerifyFull) && root_cert.is_none() {
            let why = if mode_given {
                ""
            } else {
                " (the default for a host that is not loopback)"
            };
            return Err(format!(
                "sslmode={mode}{why} needs sslrootcert, the CA that signed the server's certificate (or PGSSLROOTCERT); sslmode=disable sends in the clear instead"
            ));
        }
        let cert = file(cert, "PGSSLCERT", ".postgresql/postgresql.crt");
        let key = file(key, "PGSSLKEY", ".postgresql/postgresql.key");
        let client = match (cert, key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            (Some(_), None) => return Err("sslcert is given without sslkey".to_owned()),
            (None, Some(_)) => return Err("sslkey is given without sslcert".to_owned()),
        };
        // libpq never asks for TLS over a Unix socket, whatever sslmode says.
        let unix_only = config.get_hostaddrs().is_empty()
            && !config.get_hosts().is_empty()
            && config
                .get_hosts()
                .iter()
                .all(|h| matches!(h, Host::Unix(_)));
        config.ssl_mode(match mode {
            _ if unix_only => tokio_postgres::config::SslMode::Disable,
            PgSslMode::Disable => tokio_postgres::config::SslMode::Disable,
            PgSslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        let passfile = passfile
            .or_else(|| env.get("PGPASSFILE"))
            .map(PathBuf::from)
            .or_else(|| env.home_file(".pgpass"));
        Ok(Self {
            url: url.to_owned(),
            config,
            tls: TlsSettings {
                mode,
                root_cert,
                client,
            },
            mode_given,
            passfile,
        })
    }

    /// The driver's settings (host, port, user, database, timeouts).
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// The driver's settings, to set a timeout or the application name.
    pub fn config_mut(&mut self) -> &mut tokio_postgres::Config {
        &mut self.config
    }

    /// The `sslmode` in force (given, or the default for the host).
    pub fn ssl_mode(&self) -> PgSslMode {
        self.tls.mode
    }

    /// Whether `sslmode` was given (URL or `PGSSLMODE`) rather than the
    /// default for the host.
    pub fn ssl_mode_given(&self) -> bool {
        self.mode_given
    }

    /// True when connections go in the clear to a host that is not
    /// loopback (`sslmode=disable` given explicitly): the caller warns.
    pub fn plaintext_to_remote(&self) -> bool {
        self.tls.mode == PgSslMode::Disable && !is_loopback(&self.config)
    }

    /// The first host, as shown in logs (`db.internal:5432`, or the socket
    /// directory).
    pub fn host_for_logs(&self) -> String {
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        match self.config.get_hosts().first() {
            Some(Host::Tcp(host)) => format!("{host}:{port}"),
            Some(Host::Unix(dir)) => dir.display().to_string(),
            None => format!("localhost:{port}"),
        }
    }

    /// Connects: TLS as `sslmode` says, the password from the URL or the
    /// password file. The connection task is spawned; `what` names it in
    /// the warning logged when it fails later. The error names the cause
    /// (unknown CA, host name mismatch, a server that refuses plain TCP, a
    /// key file readable by others) and never the password.
    pub async fn connect(&self, what: &'static str) -> Result<Client, DatabaseError> {
        let mut config = self.config.clone();
        if config.get_password().is_none()
            && let Some(password) = self
                .passfile
                .as_deref()
                .and_then(|f| pgpass::lookup(f, &config))
        {
            config.password(password);
        }
        let connected = if self.tls.mode == PgSslMode::Disable {
            config
                .connect(tokio_postgres::NoTls)
                .await
                .map(|(client, connection)| {
                    spawn(what, connection);
                    client
                })
        } else {
            let tls = tls::client_config(&self.tls)
                .map_err(|reason| DatabaseError::connection(reason, false))?;
            config
                .connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
                .await
                .map(|(client, connection)| {
                    spawn(what, connection);
                    client
                })
        };
        connected.map_err(|error| self.explain(&error))
    }

    fn explain(&self, error: &tokio_postgres::Error) -> DatabaseError {
        let mut database = DatabaseError::from(error);
        let refused_plain = error.as_db_error().is_some_and(|db| {
            db.code().code() == "28000" && db.message().contains("no encryption")
        });
        if refused_plain && database.hint.is_none() {
            database.hint = Some(format!(
                "the server refuses connections without TLS (sslmode is {}); set sslmode=verify-full and sslrootcert",
                self.tls.mode
            ));
        }
        database
    }
}

fn spawn<S, T>(what: &'static str, connection: tokio_postgres::Connection<S, T>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            let error = DatabaseError::from(&error);
            tracing::warn!(%error, connection = what, "postgresql connection closed");
        }
    });
}

/// Every host (or `hostaddr`, where the traffic goes) is a Unix socket,
/// `localhost` or a loopback address.
fn is_loopback(config: &tokio_postgres::Config) -> bool {
    if !config.get_hostaddrs().is_empty() {
        return config.get_hostaddrs().iter().all(IpAddr::is_loopback);
    }
    config.get_hosts().iter().all(|host| match host {
        Host::Unix(_) => true,
        Host::Tcp(name) => {
            name == "localhost"
                || name
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
    })
}

impl FromStr for PgConnect {
    type Err = String;

    fn from_str(url: &str) -> Result<Self, String> {
        Self::parse(url)
    }
}

impl fmt::Display for PgConnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_password(&self.url))
    }
}

impl fmt::Debug for PgConnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// `postgres://user:secret@host/db?password=secret` ->
/// `postgres://user:***@host/db?password=***`.
fn redact_password(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let Some((scheme, rest)) = base.split_once("://") else {
        return "postgres://***".to_owned();
    };
    // The password runs from the user's `:` to the `@` (the driver reads a
    // `/` in it as part of it): not to the first `/`, which would show it.
    let mut shown = match (rest.find(':'), rest.rfind('@')) {
        (Some(colon), Some(at)) if colon < at => {
            format!("{scheme}://{}:***@{}", &rest[..colon], &rest[at + 1..])
        }
        _ => base.to_owned(),
    };
    if let Some(query) = query {
        let pairs: Vec<&str> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some(("password", _)) => "password=***",
                _ => pair,
            })
            .collect();
        shown.push('?');
        shown.push_str(&pairs.join("&"));
    }
    shown
}

#[cfg(test)]
mod tests;
