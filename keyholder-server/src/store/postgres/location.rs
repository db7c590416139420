//! Where a PostgreSQL state store lives: a connection URL (with libpq's TLS
//! settings, [`PgConnect`]) and a schema.
//!
//! Parsed once, from the config's `state_store`; its `Debug` and every error
//! leave the password out.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use keyholder_reencrypt::PgConnect;

use crate::config::sql_ident_rule;

/// A connection attempt that gets no answer fails after this long instead
/// of the system's TCP timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A parsed `postgres://` URL and the schema holding the state.
#[derive(Clone)]
pub struct PgLocation {
    connect: PgConnect,
    schema: String,
}

impl PgLocation {
    /// The schema used when the URL names none.
    pub const DEFAULT_SCHEMA: &'static str = "keyholder";

    /// Parses `postgres://user[:password]@host[:port]/db[?...&schema=NAME]`.
    /// `schema` is keyholder's own parameter; the others are libpq's
    /// (`sslmode`, `sslrootcert`, `sslcert`, `sslkey` among them, see
    /// [`PgConnect`]). The error says what is wrong without repeating the
    /// URL.
    pub fn parse(url: &str) -> Result<Self, String> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err("must be a URL starting with postgres:// or postgresql://".to_owned());
        }
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut schema = None;
        let mut rest = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("schema", value)) if schema.is_none() => schema = Some(value.to_owned()),
                Some(("schema", _)) => return Err("names the schema twice".to_owned()),
                _ => rest.push(pair),
            }
        }
        let url = if rest.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", rest.join("&"))
        };
        let mut connect = PgConnect::parse(&url)?;
        let config = connect.config_mut();
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("keyholderd");
        }
        Self {
            connect,
            schema: Self::DEFAULT_SCHEMA.to_owned(),
        }
        .with_schema(schema.as_deref().unwrap_or(Self::DEFAULT_SCHEMA))
    }

    /// The same database, state in `schema` instead.
    pub fn with_schema(mut self, schema: &str) -> Result<Self, String> {
        sql_ident_rule(schema).map_err(|reason| format!("schema \"{schema}\" {reason}"))?;
        schema.clone_into(&mut self.schema);
        Ok(self)
    }

    /// The schema holding the state.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The driver's connection settings.
    pub fn config(&self) -> &tokio_postgres::Config {
        self.connect.config()
    }

    /// The URL with its TLS settings, to connect with.
    pub fn connect(&self) -> &PgConnect {
        &self.connect
    }
}

impl FromStr for PgLocation {
    type Err = String;

    fn from_str(url: &str) -> Result<Self, String> {
        Self::parse(url)
    }
}

impl fmt::Debug for PgLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // PgConnect's Debug redacts the password.
        f.debug_struct("PgLocation")
            .field("url", &self.connect)
            .field("schema", &self.schema)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::PgLocation;

    #[test]
    fn schema_is_taken_from_the_query_and_the_rest_goes_to_the_driver() {
        let at = PgLocation::parse(
            "postgres://kh:secret@db.internal:5433/state?connect_timeout=3&schema=ks_prod&sslrootcert=/etc/kh/pg-ca.pem",
        )
        .unwrap();
        assert_eq!(at.schema(), "ks_prod");
        assert_eq!(at.config().get_dbname(), Some("state"));
        assert_eq!(
            at.config().get_connect_timeout(),
            Some(&std::time::Duration::from_secs(3))
        );
        let debug = format!("{at:?}");
        assert!(!debug.contains("secret"), "{debug}");
    }

    #[test]
    fn default_schema_and_refusals() {
        let at = PgLocation::parse("postgresql://kh@localhost/state").unwrap();
        assert_eq!(at.schema(), "keyholder");
        assert_eq!(
            PgLocation::parse("postgres://kh@localhost/db?schema=Bad-Name").unwrap_err(),
            "schema \"Bad-Name\" must match ^[a-z_][a-z0-9_]{0,62}$"
        );
        assert_eq!(
            PgLocation::parse("postgres://kh@localhost/db?schema=a&schema=b").unwrap_err(),
            "names the schema twice"
        );
        assert_eq!(
            PgLocation::parse("mysql://kh@h/db").unwrap_err(),
            "must be a URL starting with postgres:// or postgresql://"
        );
        let refused =
            PgLocation::parse("postgres://kh:hunter2@localhost/db?nonsense=1").unwrap_err();
        assert!(refused.starts_with("is not a PostgreSQL URL"), "{refused}");
        assert!(!refused.contains("hunter2"), "{refused}");
        assert_eq!(
            PgLocation::parse("postgres://kh@h/db?sslmode=require")
                .unwrap()
                .connect()
                .ssl_mode(),
            keyholder_reencrypt::PgSslMode::Require
        );
        assert!(
            PgLocation::parse("postgres://kh@db.internal/db")
                .unwrap_err()
                .contains("needs sslrootcert")
        );
    }
}
