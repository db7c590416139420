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
use crate::pg_connect::PgConnect;
use crate::store::Pk;

mod mysql;

pub use mysql::{MysqlLocation, SslMode};

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
    /// A PostgreSQL URL (`postgres://` or `postgresql://`) with libpq's TLS
    /// settings; shown with its password replaced.
    Postgres(Box<PgConnect>),
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
            return PgConnect::parse(input)
                .map(|at| Self::Postgres(Box::new(at)))
                .map_err(|reason| {
                    refuse(&format!(
                        "{reason} (postgres://user@host:port/db?sslmode=verify-full&sslrootcert=/path/ca.pem)"
                    ))
                });
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
            Self::Postgres(at) => fmt::Display::fmt(at, f),
            Self::Mysql(location) => fmt::Display::fmt(location, f),
        }
    }
}

impl fmt::Debug for StoreLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
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
        let location = StoreLocation::parse(
            "postgres://app:hunter2@db.example:5432/orders?sslmode=require",
            "store",
        )
        .unwrap();
        let shown = format!("{location} {location:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("postgres://app:***@db.example:5432/orders?sslmode=require"));
    }
}
