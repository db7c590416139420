//! Targets: the validated configuration of one table whose columns hold
//! keyholder records.
//!
//! Owns the parsing of `[[targets]]`, the strict SQL identifier rule and the
//! associated-data rule. Every identifier that reaches SQL text passes
//! [`SqlIdent`]'s check here first; this module must never hand out an
//! unchecked name, and never shows a store password.

use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::store::Pk;

/// A SQL identifier matching `^[a-z_][a-z0-9_]{0,62}$`: safe to put in SQL
/// text unquoted on both SQLite and PostgreSQL.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SqlIdent(String);

impl SqlIdent {
    /// Checks `input`; `field` names the configuration field in the error.
    pub fn parse(input: &str, field: &str) -> Result<Self> {
        let refuse = |reason: &str| Error::InvalidTarget {
            field: field.to_owned(),
            reason: reason.to_owned(),
        };
        let mut bytes = input.bytes();
        match bytes.next() {
            None => return Err(refuse("must not be empty")),
            Some(b) if b == b'_' || b.is_ascii_lowercase() => {}
            Some(_) => {
                return Err(refuse(
                    "must start with a lowercase letter or `_` (pattern ^[a-z_][a-z0-9_]{0,62}$)",
                ));
            }
        }
        if !bytes.all(|b| b == b'_' || b.is_ascii_lowercase() || b.is_ascii_digit()) {
            return Err(refuse(
                "may hold only lowercase letters, digits and `_` (pattern ^[a-z_][a-z0-9_]{0,62}$)",
            ));
        }
        if input.len() > 63 {
            return Err(refuse("is longer than 63 characters"));
        }
        Ok(Self(input.to_owned()))
    }

    /// The identifier.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SqlIdent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a target's table lives.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// A SQLite file, from `sqlite:///abs/path.db`.
    Sqlite(PathBuf),
    /// A PostgreSQL URL (`postgres://` or `postgresql://`), kept whole for the
    /// driver; shown with its password replaced.
    Postgres(String),
    /// A MySQL or MariaDB database, from `mysql://user@host:port/db`.
    Mysql(MysqlLocation),
}

impl StoreLocation {
    /// Parses `sqlite:///abs/path.db` or a `postgres://` URL; `field` names the
    /// configuration field in the error.
    pub fn parse(input: &str, field: &str) -> Result<Self> {
        let refuse = |reason: &str| Error::InvalidTarget {
            field: field.to_owned(),
            reason: reason.to_owned(),
        };
        if let Some(path) = input.strip_prefix("sqlite://") {
            if !path.starts_with('/') || path.len() < 2 {
                return Err(refuse(
                    "a sqlite store must be an absolute path: sqlite:///abs/path.db",
                ));
            }
            return Ok(Self::Sqlite(PathBuf::from(path)));
        }
        if input.starts_with("postgres://") || input.starts_with("postgresql://") {
            input.parse::<tokio_postgres::Config>().map_err(|_| {
                refuse("is not a valid PostgreSQL URL (postgres://user@host:port/db)")
            })?;
            return Ok(Self::Postgres(input.to_owned()));
        }
        if input.starts_with("mysql://") {
            return MysqlLocation::parse(input, field).map(Self::Mysql);
        }
        Err(refuse(
            "must start with sqlite:/// (absolute path), postgres:// or mysql://",
        ))
    }
}

impl fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite(path) => write!(f, "sqlite://{}", path.display()),
            Self::Postgres(url) => f.write_str(&redact_password(url)),
            Self::Mysql(location) => fmt::Display::fmt(location, f),
        }
    }
}

impl fmt::Debug for StoreLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// `postgres://user:secret@host/db` -> `postgres://user:***@host/db`.
fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "postgres://***".to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// How a MySQL store protects its connection, as MySQL's own `--ssl-mode`
/// names it (`PREFERRED`, which falls back to plain text, is not offered).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    /// No TLS. The default only for a loopback host.
    Disabled,
    /// TLS, without checking the server's certificate.
    Required,
    /// TLS with a certificate signed by a trusted CA (`ssl-ca`, or the
    /// built-in web roots), for any host name.
    VerifyCa,
    /// TLS with a trusted certificate for the host named in the URL. The
    /// default for every host that is not loopback.
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
    fn parse(input: &str, field: &str) -> Result<Self> {
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
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|address| address.is_loopback());
        let ssl_mode = ssl_mode.unwrap_or(if loopback {
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

/// The associated data bound to each record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AadRule {
    /// No associated data.
    #[default]
    None,
    /// `"<table>/<column>/<pk>"` as bytes, so a record copied to another row
    /// or column fails to decrypt.
    Row,
}

/// One validated target: a table, its primary key, its encrypted columns and
/// its associated-data rule, in a data store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    name: String,
    store: StoreLocation,
    table: SqlIdent,
    primary_key: SqlIdent,
    columns: Vec<SqlIdent>,
    aad: AadRule,
}

impl Target {
    /// Builds a target from already-parsed parts, checking the name, that
    /// there is at least one column, no column twice and none equal to the
    /// primary key.
    pub fn new(
        name: &str,
        store: StoreLocation,
        table: SqlIdent,
        primary_key: SqlIdent,
        columns: Vec<SqlIdent>,
        aad: AadRule,
    ) -> Result<Self> {
        check_target_name(name, "name")?;
        if columns.is_empty() {
            return Err(Error::InvalidTarget {
                field: "columns".to_owned(),
                reason: "must list at least one encrypted column".to_owned(),
            });
        }
        for (index, column) in columns.iter().enumerate() {
            if columns[..index].contains(column) {
                return Err(Error::InvalidTarget {
                    field: format!("columns[{index}]"),
                    reason: format!("`{column}` is listed twice"),
                });
            }
            if *column == primary_key {
                return Err(Error::InvalidTarget {
                    field: format!("columns[{index}]"),
                    reason: "the primary key cannot be an encrypted column".to_owned(),
                });
            }
        }
        Ok(Self {
            name: name.to_owned(),
            store,
            table,
            primary_key,
            columns,
            aad,
        })
    }

    /// The target's name (unique in the config; used in logs and checkpoints).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where the table lives.
    pub fn store(&self) -> &StoreLocation {
        &self.store
    }

    /// The table.
    pub fn table(&self) -> &SqlIdent {
        &self.table
    }

    /// The primary key column (integer or text).
    pub fn primary_key(&self) -> &SqlIdent {
        &self.primary_key
    }

    /// The encrypted columns, in configuration order.
    pub fn columns(&self) -> &[SqlIdent] {
        &self.columns
    }

    /// The associated-data rule.
    pub fn aad(&self) -> AadRule {
        self.aad
    }

    /// The associated data of the record in `column` of the row `pk`.
    pub fn aad_for(&self, column: &SqlIdent, pk: &Pk) -> Vec<u8> {
        match self.aad {
            AadRule::None => Vec::new(),
            AadRule::Row => format!("{}/{}/{}", self.table, column, pk).into_bytes(),
        }
    }
}

/// A target name: `[a-z0-9-]{1,64}`, like the keyring's.
fn check_target_name(name: &str, field: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidTarget {
            field: field.to_owned(),
            reason: "must be 1 to 64 of lowercase letters, digits and `-`".to_owned(),
        })
    }
}

/// The TOML form of one `[[targets]]` entry, as written in `keyholder.toml`.
/// Turn it into a [`Target`] with [`TargetConfig::validate`].
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// Unique name of the target.
    pub name: String,
    /// `sqlite:///abs/path.db`, `postgres://...` or `mysql://user@host:port/db`.
    pub store: String,
    /// The table.
    pub table: String,
    /// Its primary key column.
    pub primary_key: String,
    /// Its encrypted columns.
    pub columns: Vec<String>,
    /// `none` (default) or `row`.
    #[serde(default)]
    pub aad: AadRule,
}

impl TargetConfig {
    /// Validates every field; `prefix` is how the caller names this entry in
    /// errors (e.g. `targets[2]`), so each error names its field in full.
    pub fn validate(&self, prefix: &str) -> Result<Target> {
        let field = |name: &str| format!("{prefix}.{name}");
        check_target_name(&self.name, &field("name"))?;
        let store = StoreLocation::parse(&self.store, &field("store"))?;
        let table = SqlIdent::parse(&self.table, &field("table"))?;
        let primary_key = SqlIdent::parse(&self.primary_key, &field("primary_key"))?;
        let columns = self
            .columns
            .iter()
            .enumerate()
            .map(|(index, column)| SqlIdent::parse(column, &field(&format!("columns[{index}]"))))
            .collect::<Result<Vec<_>>>()?;
        Target::new(&self.name, store, table, primary_key, columns, self.aad).map_err(|error| {
            match error {
                Error::InvalidTarget {
                    field: inner,
                    reason,
                } => Error::InvalidTarget {
                    field: field(&inner),
                    reason,
                },
                other => other,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_follow_the_strict_pattern() {
        for good in ["a", "_x", "customers", "ssn_2", &"a".repeat(63)] {
            assert!(SqlIdent::parse(good, "table").is_ok(), "{good}");
        }
        for bad in [
            "",
            "1a",
            "A",
            "a-b",
            "a b",
            "a;drop",
            "\"a\"",
            "é",
            &"a".repeat(64),
        ] {
            let error = SqlIdent::parse(bad, "targets[0].table").unwrap_err();
            assert!(
                error
                    .to_string()
                    .starts_with("target field `targets[0].table`"),
                "{error}"
            );
        }
    }

    #[test]
    fn toml_entry_validates_and_names_fields() {
        let text = r#"
            name = "customers-ssn"
            store = "sqlite:///var/lib/app/app.db"
            table = "customers"
            primary_key = "id"
            columns = ["ssn", "dob"]
            aad = "row"
        "#;
        let config: TargetConfig = toml::from_str(text).unwrap();
        let target = config.validate("targets[0]").unwrap();
        assert_eq!(target.aad(), AadRule::Row);
        assert_eq!(
            target.aad_for(&target.columns()[0], &Pk::Int(7)),
            b"customers/ssn/7".to_vec()
        );

        let bad = TargetConfig {
            columns: vec!["ssn".into(), "Bad".into()],
            ..config.clone()
        };
        let error = bad.validate("targets[1]").unwrap_err().to_string();
        assert!(
            error.starts_with("target field `targets[1].columns[1]`"),
            "{error}"
        );

        let twice = TargetConfig {
            columns: vec!["ssn".into(), "ssn".into()],
            ..config.clone()
        };
        let error = twice.validate("targets[1]").unwrap_err().to_string();
        assert_eq!(
            error,
            "target field `targets[1].columns[1]`: `ssn` is listed twice"
        );

        let relative = TargetConfig {
            store: "sqlite://app.db".into(),
            ..config
        };
        let error = relative.validate("targets[0]").unwrap_err().to_string();
        assert!(
            error.starts_with("target field `targets[0].store`"),
            "{error}"
        );

        assert!(toml::from_str::<TargetConfig>(&format!("{text}\nextra = 1")).is_err());
    }

    #[test]
    fn postgres_password_is_never_shown() {
        let location =
            StoreLocation::parse("postgres://app:hunter2@db.example:5432/orders", "store").unwrap();
        let shown = format!("{location} {location:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("postgres://app:***@db.example:5432/orders"));
    }

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
