//! MySQL and MariaDB store locations: `mysql://user@host:port/db` with its
//! TLS mode, CA, password file and replicas, parsed strictly. The URL must
//! never hold the password; this module refuses one by name, without
//! repeating it.

use std::fmt;
use std::path::PathBuf;

use crate::error::{Error, Result};

/// How a MySQL store protects its connection, as MySQL's own `--ssl-mode`
/// names it (`PREFERRED`, which falls back to plain text, is not offered).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    /// No TLS. The default only when the host and every replica are
    /// loopback.
    Disabled,
    /// TLS, without checking the server's certificate.
    Required,
    /// TLS with a certificate signed by a trusted CA (`ssl-ca`, or the
    /// built-in web roots), for any host name.
    VerifyCa,
    /// TLS with a trusted certificate for the host named in the URL. The
    /// default when the host or a replica is not loopback.
    VerifyIdentity,
}

impl SslMode {
    fn parse(input: &str) -> Option<Self> {
        match input.to_ascii_uppercase().as_str() {
            "DISABLED" => Some(Self::Disabled),
            "REQUIRED" => Some(Self::Required),
            "VERIFY_CA" => Some(Self::VerifyCa),
            "VERIFY_IDENTITY" => Some(Self::VerifyIdentity),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Disabled => "DISABLED",
            Self::Required => "REQUIRED",
            Self::VerifyCa => "VERIFY_CA",
            Self::VerifyIdentity => "VERIFY_IDENTITY",
        }
    }
}

/// A MySQL or MariaDB database:
/// `mysql://user@host[:port]/db[?ssl-mode=..&ssl-ca=/abs.pem&password-file=/abs&replica=host:port]`.
///
/// The URL never holds the password: it is read when the store connects, from
/// `password-file` (the file's first line) or else the `MYSQL_PWD`
/// environment variable, like the `mysql` client does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MysqlLocation {
    /// The user.
    pub user: String,
    /// Host name or IP address (IPv6 without its brackets).
    pub host: String,
    /// TCP port (3306 when the URL names none).
    pub port: u16,
    /// The database.
    pub database: String,
    /// TLS mode.
    pub ssl_mode: SslMode,
    /// CA certificates (PEM) that `VERIFY_CA`/`VERIFY_IDENTITY` trust instead
    /// of the built-in roots.
    pub ssl_ca: Option<PathBuf>,
    /// A file whose first line is the password.
    pub password_file: Option<PathBuf>,
    /// Replicas whose lag throttles the pass (`replica=host:port`, repeatable),
    /// reached with the same user, password and TLS mode. With none, the
    /// lag is the target server's own, when it is itself a replica.
    pub replicas: Vec<(String, u16)>,
}

impl MysqlLocation {
    pub(super) fn parse(input: &str, field: &str) -> Result<Self> {
        let refuse = |reason: String| Error::InvalidTarget {
            field: field.to_owned(),
            reason,
        };
        const SHAPE: &str = "mysql://user@host:port/db";
        let rest = input.strip_prefix("mysql://").unwrap_or(input);
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let Some((authority, database)) = rest.split_once('/') else {
            return Err(refuse(format!("names no database: use {SHAPE}")));
        };
        let Some((user, host_port)) = authority.rsplit_once('@') else {
            return Err(refuse(format!("names no user: use {SHAPE}")));
        };
        if user.contains(':') {
            return Err(refuse(
                "holds a password; a mysql store URL must not: put it in a file named by \
                 `password-file=/abs/path` or in the MYSQL_PWD environment variable"
                    .to_owned(),
            ));
        }
        let plain = |text: &str| {
            !text.is_empty()
                && text
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-.$".contains(&b))
        };
        if !plain(user) || user.len() > 80 {
            return Err(refuse(
                "has a user that is not 1 to 80 of letters, digits and `_-.$`".to_owned(),
            ));
        }
        let (host, port) = host_and_port(host_port).map_err(refuse)?;
        if !database
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$')
            || database.is_empty()
            || database.len() > 64
        {
            return Err(refuse(
                "has a database name that is not 1 to 64 of letters, digits, `_` and `$`"
                    .to_owned(),
            ));
        }
        let mut ssl_mode = None;
        let mut ssl_ca = None;
        let mut password_file = None;
        let mut replicas = Vec::new();
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let absolute = |value: &str| {
                let path = PathBuf::from(value);
                if path.is_absolute() {
                    Ok(path)
                } else {
                    Err(refuse(format!("`{name}` must be an absolute path")))
                }
            };
            let twice = || refuse(format!("names `{name}` twice"));
            match name {
                "ssl-mode" => {
                    let mode = SslMode::parse(value).ok_or_else(|| {
                        refuse(format!(
                            "has ssl-mode `{value}`; use DISABLED, REQUIRED, VERIFY_CA or VERIFY_IDENTITY"
                        ))
                    })?;
                    if ssl_mode.replace(mode).is_some() {
                        return Err(twice());
                    }
                }
                "ssl-ca" => {
                    if ssl_ca.replace(absolute(value)?).is_some() {
                        return Err(twice());
                    }
                }
                "password-file" => {
                    if password_file.replace(absolute(value)?).is_some() {
                        return Err(twice());
                    }
                }
                "replica" => {
                    let replica = host_and_port(value)
                        .map_err(|reason| refuse(format!("`replica`: {reason}")))?;
                    if replicas.contains(&replica) {
                        return Err(twice());
                    }
                    replicas.push(replica);
                }
                _ => {
                    return Err(refuse(format!(
                        "has the unknown parameter `{name}`; known: ssl-mode, ssl-ca, password-file, replica"
                    )));
                }
            }
        }
        // The mode is every connection's, the replicas' too: plain TCP by
        // default only when none of them leaves the machine.
        let loopback = |host: &str| {
            host == "localhost"
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|address| address.is_loopback())
        };
        let all_loopback = loopback(host.as_str()) && replicas.iter().all(|(r, _)| loopback(r));
        let ssl_mode = ssl_mode.unwrap_or(if all_loopback {
            SslMode::Disabled
        } else {
            SslMode::VerifyIdentity
        });
        if ssl_ca.is_some() && matches!(ssl_mode, SslMode::Disabled | SslMode::Required) {
            return Err(refuse(format!(
                "names ssl-ca with ssl-mode {}, which checks no certificate; use VERIFY_CA or VERIFY_IDENTITY",
                ssl_mode.as_str()
            )));
        }
        Ok(Self {
            user: user.to_owned(),
            host: host.to_owned(),
            port,
            database: database.to_owned(),
            ssl_mode,
            ssl_ca,
            password_file,
            replicas,
        })
    }
}

/// `host`, `host:port` or `[v6]:port`; the port is 3306 when not named.
fn host_and_port(text: &str) -> std::result::Result<(String, u16), String> {
    const SHAPE: &str = "mysql://user@host:port/db";
    let (host, port) = if let Some(bracketed) = text.strip_prefix('[') {
        let Some((host, after)) = bracketed.split_once(']') else {
            return Err("has an IPv6 host without its closing `]`".to_owned());
        };
        match after.strip_prefix(':') {
            Some(port) => (host, Some(port)),
            None if after.is_empty() => (host, None),
            None => return Err(format!("has no valid host name: use {SHAPE}")),
        }
    } else {
        match text.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    let host_ok = host.parse::<std::net::IpAddr>().is_ok()
        || (!host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'));
    if !host_ok {
        return Err(format!("has no valid host name: use {SHAPE}"));
    }
    let port = match port {
        None => 3306,
        Some(port) => port
            .parse::<u16>()
            .ok()
            .filter(|&port| port != 0)
            .ok_or_else(|| "has a port that is not 1 to 65535".to_owned())?,
    };
    Ok((host.to_owned(), port))
}

impl fmt::Display for MysqlLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        write!(
            f,
            "mysql://{}@{host}:{}/{}?ssl-mode={}",
            self.user,
            self.port,
            self.database,
            self.ssl_mode.as_str()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::StoreLocation;

    #[test]
    fn mysql_urls_are_strict_and_hold_no_password() {
        let parse = |url: &str| StoreLocation::parse(url, "targets[0].store");
        let Ok(StoreLocation::Mysql(local)) = parse("mysql://app@127.0.0.1:3306/orders") else {
            panic!("a valid mysql url")
        };
        assert_eq!(
            (local.user.as_str(), local.host.as_str(), local.port),
            ("app", "127.0.0.1", 3306)
        );
        assert_eq!(local.database, "orders");
        assert_eq!(
            local.ssl_mode,
            SslMode::Disabled,
            "loopback: no TLS by default"
        );
        let Ok(StoreLocation::Mysql(remote)) = parse("mysql://app@db.example/orders") else {
            panic!("a valid mysql url")
        };
        assert_eq!(remote.port, 3306);
        assert_eq!(
            remote.ssl_mode,
            SslMode::VerifyIdentity,
            "remote: verified TLS"
        );
        assert_eq!(
            remote.to_string(),
            "mysql://app@db.example:3306/orders?ssl-mode=VERIFY_IDENTITY"
        );
        // The replicas are reached in the same mode: one on another host
        // makes the default verified TLS, not plain TCP to it.
        for url in [
            "mysql://app@127.0.0.1/orders?replica=db2.example:3306",
            "mysql://app@localhost/orders?replica=127.0.0.1:3307&replica=10.0.0.7",
        ] {
            let Ok(StoreLocation::Mysql(replicated)) = parse(url) else {
                panic!("a valid mysql url")
            };
            assert_eq!(replicated.ssl_mode, SslMode::VerifyIdentity, "{url}");
        }
        let Ok(StoreLocation::Mysql(local_replicas)) =
            parse("mysql://app@127.0.0.1/orders?replica=localhost:3307&replica=[::1]:3308")
        else {
            panic!("a valid mysql url")
        };
        assert_eq!(local_replicas.ssl_mode, SslMode::Disabled);
        let Ok(StoreLocation::Mysql(full)) = parse(
            "mysql://app@[::1]:3307/orders?ssl-mode=verify_ca&ssl-ca=/etc/ca.pem\
             &password-file=/run/pw&replica=r1.example:3306&replica=r2.example",
        ) else {
            panic!("a valid mysql url")
        };
        assert_eq!((full.host.as_str(), full.port), ("::1", 3307));
        assert_eq!(full.ssl_mode, SslMode::VerifyCa);
        assert_eq!(full.ssl_ca, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(full.password_file, Some(PathBuf::from("/run/pw")));
        assert_eq!(
            full.replicas,
            vec![
                ("r1.example".to_owned(), 3306),
                ("r2.example".to_owned(), 3306)
            ]
        );

        let refused = |url: &str| parse(url).unwrap_err().to_string();
        let password = refused("mysql://app:hunter2@db.example/orders");
        assert_eq!(
            password,
            "target field `targets[0].store`: holds a password; a mysql store URL must not: put it in a file named by `password-file=/abs/path` or in the MYSQL_PWD environment variable"
        );
        assert!(!password.contains("hunter2"));
        for (url, reason) in [
            (
                "mysql://db.example/orders",
                "names no user: use mysql://user@host:port/db",
            ),
            (
                "mysql://app@db.example",
                "names no database: use mysql://user@host:port/db",
            ),
            (
                "mysql://app@db.example:0/orders",
                "has a port that is not 1 to 65535",
            ),
            (
                "mysql://app@db.example:x/orders",
                "has a port that is not 1 to 65535",
            ),
            (
                "mysql://app@db_example/orders",
                "has no valid host name: use mysql://user@host:port/db",
            ),
            (
                "mysql://app@db.example/or;ders",
                "has a database name that is not 1 to 64 of letters, digits, `_` and `$`",
            ),
            (
                "mysql://app@db.example/orders?ssl-mode=PREFERRED",
                "has ssl-mode `PREFERRED`; use DISABLED, REQUIRED, VERIFY_CA or VERIFY_IDENTITY",
            ),
            (
                "mysql://app@db.example/orders?ssl-mode=REQUIRED&ssl-mode=REQUIRED",
                "names `ssl-mode` twice",
            ),
            (
                "mysql://app@db.example/orders?ssl-ca=ca.pem",
                "`ssl-ca` must be an absolute path",
            ),
            (
                "mysql://app@db.example/orders?ssl-mode=REQUIRED&ssl-ca=/ca.pem",
                "names ssl-ca with ssl-mode REQUIRED, which checks no certificate; use VERIFY_CA or VERIFY_IDENTITY",
            ),
            (
                "mysql://app@db.example/orders?password=x",
                "has the unknown parameter `password`; known: ssl-mode, ssl-ca, password-file, replica",
            ),
            (
                "mysql://app@db.example/orders?replica=a:99999",
                "`replica`: has a port that is not 1 to 65535",
            ),
        ] {
            assert_eq!(
                refused(url),
                format!("target field `targets[0].store`: {reason}"),
                "{url}"
            );
        }
    }
}
