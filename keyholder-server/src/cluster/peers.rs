//! The mTLS client a node calls its peers with: the node's `[cluster]`
//! client certificate, trusting `server_ca`, TLS 1.3, short timeouts (a peer
//! that is down costs a refused connection or a second, never a request's
//! or the start's time). A reload re-reads the certificate, key and CA
//! files ([`PeerClient::read`], then [`PeerClient::replace`]), so a node
//! certificate renewed in place is presented from the next call on.
//!
//! It sends share lines and withdrawals (relays) and receives age-encrypted keyrings; it
//! never logs a body, and its errors name the peer and what failed, never
//! a value from a body.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use keyholder_api::{
    API_VERSION, API_VERSION_HEADER, ApiError, ClusterSeal, PeerKeyring, PeerKeyringRequest,
    RelayedShares, RelayedWithdrawal, ShareLine, paths,
};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject as _;
use zeroize::Zeroizing;

use crate::config::{Cluster, Node};
use crate::transport::tls::{self, TlsError};

/// Time to open a TCP and TLS connection to a peer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Time for a whole call to a peer (the keyring call proves nothing on the
/// serving side: it answers from memory and one store read).
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a call to a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// No answer: down, unreachable, TLS refused or too slow.
    #[error("node {peer} at {addr} did not answer: {reason}")]
    Unreachable {
        /// The peer's name.
        peer: String,
        /// Its address.
        addr: String,
        /// The transport's reason.
        reason: String,
    },
    /// It answered with a refusal.
    #[error("node {peer} refused ({code}, HTTP {status}): {message}")]
    Refused {
        /// The peer's name.
        peer: String,
        /// The HTTP status.
        status: u16,
        /// The stable code.
        code: String,
        /// Its sentence.
        message: String,
    },
    /// It answered something this node cannot read.
    #[error("node {peer} sent an answer this node cannot read: {reason}")]
    Malformed {
        /// The peer's name.
        peer: String,
        /// What was wrong (never the body).
        reason: String,
    },
}

impl PeerError {
    /// Whether the peer answered that it holds no key.
    pub fn is_sealed(&self) -> bool {
        matches!(self, Self::Refused { code, .. } if code == "sealed")
    }
}

/// The client of every peer of this node. Its clones share one set of
/// credentials: a reload replaces them for all.
#[derive(Clone)]
pub struct PeerClient {
    http: Arc<RwLock<reqwest::Client>>,
    peers: Arc<Vec<Node>>,
}

/// The HTTPS client of the `[cluster]` files as they were read, not yet in
/// use.
pub struct PeerCredentials(reqwest::Client);

impl PeerClient {
    /// Reads the node's client certificate and key and the peers' CA.
    pub fn new(cluster: &Cluster) -> Result<Self, TlsError> {
        let PeerCredentials(http) = Self::read(cluster)?;
        Ok(Self {
            http: Arc::new(RwLock::new(http)),
            peers: Arc::new(cluster.peers().cloned().collect()),
        })
    }

    /// Calls from now on present the credentials `read` read.
    pub fn replace(&self, credentials: PeerCredentials) {
        *self.http.write().unwrap_or_else(|p| p.into_inner()) = credentials.0;
    }

    fn http(&self) -> reqwest::Client {
        self.http.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reads the `[cluster]` certificate, key and CA files into a client,
    /// refusing them by field as at start-up.
    pub fn read(cluster: &Cluster) -> Result<PeerCredentials, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for ca in tls::certs("cluster.server_ca", &cluster.server_ca)? {
            roots.add(ca).map_err(|e| TlsError::Pem {
                field: "cluster.server_ca",
                path: cluster.server_ca.display().to_string(),
                reason: e.to_string(),
            })?;
        }
        let chain = tls::certs("cluster.client_cert", &cluster.client_cert)?;
        let key = PrivateKeyDer::from_pem_file(&cluster.client_key).map_err(|e| TlsError::Pem {
            field: "cluster.client_key",
            path: cluster.client_key.display().to_string(),
            reason: format!("no usable private key ({e})"),
        })?;
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Rustls(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| {
                TlsError::Rustls(format!(
                    "cluster.client_cert and cluster.client_key do not make a client identity: {e}"
                ))
            })?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(config)
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(CALL_TIMEOUT)
            .build()
            .map_err(|e| TlsError::Rustls(format!("the peer client cannot be built: {e}")))?;
        Ok(PeerCredentials(http))
    }

    /// Every other node, in config order.
    pub fn peers(&self) -> &[Node] {
        &self.peers
    }

    /// Relays share lines `keyholder` submitted here to `peer`, admitted
    /// here at cluster seal generation `generation`.
    pub async fn relay_shares(
        &self,
        peer: &Node,
        keyholder: &str,
        shares: &[ShareLine],
        generation: u64,
    ) -> Result<(), PeerError> {
        let body = RelayedShares {
            keyholder: keyholder.to_owned(),
            shares: shares.to_vec(),
            generation,
        };
        self.post(peer, paths::CLUSTER_SHARES, &body).await?;
        Ok(())
    }

    /// Tells `peer` that `principal` withdrew its unseal shares here (or,
    /// for an operator, cleared the progress).
    pub async fn relay_withdrawal(&self, peer: &Node, principal: &str) -> Result<(), PeerError> {
        let body = RelayedWithdrawal {
            principal: principal.to_owned(),
        };
        self.post(peer, paths::CLUSTER_WITHDRAWAL, &body).await?;
        Ok(())
    }

    /// Asks `peer` for its keyring, encrypted to `recipient`.
    pub async fn keyring(&self, peer: &Node, recipient: String) -> Result<PeerKeyring, PeerError> {
        let body = self
            .post(
                peer,
                paths::CLUSTER_KEYRING,
                &PeerKeyringRequest { recipient },
            )
            .await?;
        keyholder_api::from_json(&body).map_err(|reason| PeerError::Malformed {
            peer: peer.name.clone(),
            reason,
        })
    }

    /// Tells `peer` the cluster was sealed at `generation`.
    pub async fn seal(&self, peer: &Node, generation: u64) -> Result<(), PeerError> {
        self.post(peer, paths::CLUSTER_SEAL, &ClusterSeal { generation })
            .await?;
        Ok(())
    }

    async fn post<T: serde::Serialize>(
        &self,
        peer: &Node,
        path: &str,
        body: &T,
    ) -> Result<Zeroizing<Vec<u8>>, PeerError> {
        let unreachable = |e: reqwest::Error| PeerError::Unreachable {
            peer: peer.name.clone(),
            addr: peer.addr.clone(),
            reason: describe(&e),
        };
        // A relay's body holds share lines: built in a zeroizing buffer.
        let json = Zeroizing::new(serde_json::to_vec(body).expect("peer bodies always serialise"));
        let response = self
            .http()
            .post(format!("https://{}{path}", peer.addr))
            .header(API_VERSION_HEADER, API_VERSION)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(json.to_vec())
            .send()
            .await
            .map_err(unreachable)?;
        drop(json);
        let version = response
            .headers()
            .get(API_VERSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        keyholder_api::check_compatible(version.as_deref()).map_err(|e| PeerError::Malformed {
            peer: peer.name.clone(),
            reason: e.to_string(),
        })?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(unreachable)?;
        let body = Zeroizing::new(bytes.to_vec());
        drop(bytes);
        if status.is_success() {
            return Ok(body);
        }
        let error: ApiError =
            keyholder_api::from_json(&body).map_err(|reason| PeerError::Malformed {
                peer: peer.name.clone(),
                reason: format!("HTTP {status} and {reason}"),
            })?;
        Err(PeerError::Refused {
            peer: peer.name.clone(),
            status: status.as_u16(),
            code: error.code,
            message: error.error,
        })
    }
}

/// reqwest's error with its causes (the TLS or I/O reason is a source).
fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
