//! The PostgreSQL server of the tests: `KEYHOLDER_TEST_PG`. Without it a
//! test skips, saying so; with it set and no server answering, it fails.

use std::time::{SystemTime, UNIX_EPOCH};

/// The server's URL, or `None` after printing the skip notice.
pub fn url() -> Option<String> {
    let url = std::env::var("KEYHOLDER_TEST_PG")
        .ok()
        .filter(|u| !u.is_empty());
    if url.is_none() {
        println!("skipping: KEYHOLDER_TEST_PG not set");
    }
    url
}

/// A connection, driven on the current runtime; panics when the server does
/// not answer (CI sets the variable so that these tests run).
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!("KEYHOLDER_TEST_PG is set but PostgreSQL does not answer: {e:?}")
        });
    tokio::spawn(connection);
    client
}

/// A name no other test run uses (`<prefix>_<pid>_<nanos>`), a valid SQL
/// identifier.
pub fn unique_name(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}_{}_{}", std::process::id(), nanos % 1_000_000_000)
}

/// A schema of one test's own on the server of `url`: a fresh state store
/// for a daemon (or a cluster of them). Drop it with [`Schema::drop_it`].
pub struct Schema {
    /// A connection to the server.
    pub client: tokio_postgres::Client,
    /// The schema's name.
    pub name: String,
    url: String,
}

impl Schema {
    /// A new, unused schema name on `url`'s server (created by the daemon).
    pub async fn new(url: &str) -> Self {
        Self {
            client: connect(url).await,
            name: unique_name("kh_e2e"),
            url: url.to_owned(),
        }
    }

    /// The `state_store` URL of this schema.
    pub fn state_store(&self) -> String {
        let separator = if self.url.contains('?') { '&' } else { '?' };
        format!("{}{separator}schema={}", self.url, self.name)
    }

    /// Drops the schema and everything in it.
    pub async fn drop_it(self) {
        self.client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.name))
            .await
            .unwrap();
    }
}
