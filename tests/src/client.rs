//! A small mTLS client for the daemon's API: reqwest over a rustls (ring)
//! client config with the test CA as the only root.

use std::net::SocketAddr;
use std::sync::Arc;

use keyholder_api::{API_VERSION, API_VERSION_HEADER};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::de::DeserializeOwned;

use crate::pki::ClientFiles;

/// An answer: status and body text.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// The body.
    pub body: String,
    /// The daemon's API version header, if any.
    pub api_version: Option<String>,
    /// The `Retry-After` header, if any.
    pub retry_after: Option<String>,
}

impl Answer {
    /// The body as `T`, panicking with the body when it does not parse.
    pub fn json<T: DeserializeOwned>(&self) -> T {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    /// The body as an `ApiError`.
    pub fn error(&self) -> keyholder_api::ApiError {
        self.json()
    }
}

/// A client of one daemon with one identity (or none).
pub struct Client {
    http: reqwest::Client,
    base: String,
}

/// The rustls client config of the tests: TLS 1.3, the test CA as the only
/// root, `identity`'s certificate (or none).
pub fn tls_config(
    ca_pem: &std::path::Path,
    identity: Option<&ClientFiles>,
) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_pem).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots);
    match identity {
        Some(files) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
                .unwrap()
                .map(Result::unwrap)
                .collect();
            let key = PrivateKeyDer::from_pem_file(&files.key).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    }
}

impl Client {
    /// A client presenting `identity` (or no certificate) to the daemon at
    /// `addr`, trusting `ca_pem`.
    pub fn new(addr: SocketAddr, ca_pem: &std::path::Path, identity: Option<&ClientFiles>) -> Self {
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls_config(ca_pem, identity))
            .timeout(std::time::Duration::from_secs(20))
            .build()
            .unwrap();
        Self {
            http,
            base: format!("https://{addr}"),
        }
    }

    /// Sends a request; `Err` when the connection or handshake failed.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<String>,
    ) -> Result<Answer, reqwest::Error> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header(API_VERSION_HEADER, API_VERSION);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let api_version = response
            .headers()
            .get(API_VERSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = response.text().await?;
        Ok(Answer {
            status,
            body,
            api_version,
            retry_after,
        })
    }

    /// `GET path` without the API version header.
    pub async fn get_without_version(&self, path: &str) -> Answer {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("request failed");
        let status = response.status().as_u16();
        let api_version = response
            .headers()
            .get(API_VERSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Answer {
            status,
            retry_after: None,
            body: response.text().await.expect("body"),
            api_version,
        }
    }

    /// `GET path`, panicking when the connection fails.
    pub async fn get(&self, path: &str) -> Answer {
        self.send(reqwest::Method::GET, path, None)
            .await
            .expect("request failed")
    }

    /// `GET path`; `None` when the connection or handshake failed (a kept
    /// connection to a daemon that restarted, say).
    pub async fn try_get(&self, path: &str) -> Option<Answer> {
        self.send(reqwest::Method::GET, path, None).await.ok()
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: &serde_json::Value) -> Answer {
        self.send(reqwest::Method::POST, path, Some(body.to_string()))
            .await
            .expect("request failed")
    }

    /// `POST /v1/unseal` with these share lines.
    pub async fn unseal(&self, lines: &[&str]) -> Answer {
        self.post("/v1/unseal", &serde_json::json!({ "shares": lines }))
            .await
    }
}
