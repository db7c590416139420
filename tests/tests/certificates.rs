//! The expiry of the daemon's TLS credentials (issue 14): the server
//! certificate's and the client CA's end of validity and the CRL's next
//! update, in the status document and the metrics, and a warning in the log
//! for one less than 30 days away.

use keyholder_api::Status;
use keyholder_tests::client::tls_config;
use keyholder_tests::daemon::OPERATOR;
use keyholder_tests::{Env, EnvOptions};

#[tokio::test]
async fn status_and_metrics_show_when_the_credentials_run_out() {
    let metrics = keyholder_tests::daemon::free_addr();
    let env = Env::new(EnvOptions {
        revoked: Some("bob".to_owned()),
        listen_toml: format!("metrics_addr = \"{metrics}\"\n"),
        ..EnvOptions::default()
    });
    let _daemon = env.start().await;
    let status: Status = env.client(OPERATOR).get("/v1/status").await.json();
    let dates = status.certificates.expect("a 1.2 daemon sends the dates");
    // The test PKI's certificates keep rcgen's default end (4096-01-01);
    // its CRL's next update is 2099-01-01.
    assert_eq!(dates.server_cert_not_after, "4096-01-01T00:00:00Z");
    assert_eq!(dates.client_ca_not_after, "4096-01-01T00:00:00Z");
    assert_eq!(
        dates.crl_next_update.as_deref(),
        Some("2099-01-01T00:00:00Z")
    );

    let plain = reqwest::Client::builder()
        .tls_backend_preconfigured(tls_config(&env.pki.ca_pem, None))
        .build()
        .unwrap();
    let text = plain
        .get(format!("http://{metrics}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "keyholder_certificate_expiry_timestamp_seconds{credential=\"server_cert\"} 67090118400",
        "keyholder_certificate_expiry_timestamp_seconds{credential=\"client_ca\"} 67090118400",
        "keyholder_certificate_expiry_timestamp_seconds{credential=\"crl_next_update\"} 4070908800",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line} missing from:\n{text}"
        );
    }
    assert!(env.log_contains("tls credentials loaded").await);
    assert!(!env.log_text().contains("expires at"), "{}", env.log_text());
}

#[tokio::test]
async fn a_server_certificate_ten_days_from_its_end_is_warned_about() {
    let env = Env::new(EnvOptions::default());
    let until =
        time::OffsetDateTime::now_utc() + time::Duration::days(10) + time::Duration::hours(1);
    env.pki
        .issue_until("server", &["localhost", "127.0.0.1"], until);
    let _daemon = env.start().await;
    assert!(
        env.log_contains("the server certificate (listen.cert) expires at")
            .await,
        "{}",
        env.log_text()
    );
    let log = env.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("the server certificate (listen.cert) expires at"))
        .unwrap();
    assert!(line.contains("WARN"), "{line}");
    assert!(
        line.contains("in 10 days; renew it (keyholder pki renew --server for a dev PKI)"),
        "{line}"
    );
}
