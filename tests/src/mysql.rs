//! The MySQL/MariaDB server of the tests: `KEYHOLDER_TEST_MYSQL`. Without it
//! a test skips, saying so; with it set and no server answering, it fails.

/// The server's URL, or `None` after printing the skip notice.
pub fn url() -> Option<String> {
    let url = std::env::var("KEYHOLDER_TEST_MYSQL")
        .ok()
        .filter(|u| !u.is_empty());
    if url.is_none() {
        println!("skipping: KEYHOLDER_TEST_MYSQL not set");
    }
    url
}

/// A connection; panics when the server does not answer (CI sets the
/// variable so that these tests run).
pub async fn connect(url: &str) -> mysql_async::Conn {
    let opts = mysql_async::Opts::from_url(url)
        .unwrap_or_else(|e| panic!("KEYHOLDER_TEST_MYSQL is not a mysql:// URL: {e}"));
    mysql_async::Conn::new(opts).await.unwrap_or_else(|e| {
        panic!("KEYHOLDER_TEST_MYSQL is set but MySQL/MariaDB does not answer: {e}")
    })
}
