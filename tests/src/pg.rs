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
