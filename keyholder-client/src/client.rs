//! The typed client of keyholderd's API (docs/protocol.md) over mutual TLS.
//!
//! Every request carries our API version; every answer's version is checked
//! with [`keyholder_api::check_compatible`] before its body is read. Failures
//! become [`ClientError`]s that say what happened and what to do: which side's
//! certificate failed, whether the daemon is unreachable, sealed, or refused
//! the role. Nothing here logs or prints a body.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crypto_core::{HookHandover, KeyVersion};
use keyholder_api::{
    API_VERSION, API_VERSION_HEADER, ApiError, AuditLog, Health, IncompatibleVersion,
    KeyringRequest, PrepareRequest, RetirePlan, RetireRequest, RollbackPlan, RollbackRequest,
    RotationStatus, ShareEnvelope, Status, ThrottleRequest, UnsealRequest, UnsealResponse, paths,
};
use reqwest::{Method, StatusCode};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

use crate::files::{self, FileError};

/// Where the daemon is and which certificate we present.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// `host:port` or `https://host:port`; a cluster's nodes comma-separated
    /// (`https://a:8443,https://b:8443`): a request that cannot connect
    /// goes to the next, and one a follower answers `not_leader` goes to
    /// the leader it names.
    pub addr: String,
    /// The CA that signed the daemon's certificate (PEM).
    pub ca: PathBuf,
    /// Our client certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM, mode 0600).
    pub key: PathBuf,
}

/// Why a call to keyholderd failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// `--addr` is not usable.
    #[error(
        "--addr `{addr}` is not a daemon address: {reason}; use host:port or https://host:port"
    )]
    BadAddress {
        /// What was given.
        addr: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A certificate or key file could not be read.
    #[error(transparent)]
    File(#[from] FileError),
    /// A PEM file holds nothing of the expected kind.
    #[error("{} holds no {what}; {hint}", path.display())]
    EmptyPem {
        /// The file.
        path: PathBuf,
        /// What was looked for.
        what: &'static str,
        /// Which flag it belongs to.
        hint: &'static str,
    },
    /// A PEM file is malformed.
    #[error("{} is not valid PEM ({reason}); give a PEM file", path.display())]
    BadPem {
        /// The file.
        path: PathBuf,
        /// The parser's reason.
        reason: String,
    },
    /// The CA certificate was refused as a trust anchor.
    #[error("{} cannot be used as a CA: {reason}", path.display())]
    BadCa {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The client certificate and key do not go together.
    #[error(
        "the client certificate {} cannot be used with the key {}: {reason}; check that --key belongs to --cert",
        cert.display(),
        key.display()
    )]
    ClientIdentity {
        /// The certificate.
        cert: PathBuf,
        /// The key.
        key: PathBuf,
        /// Why.
        reason: String,
    },
    /// No TCP connection.
    #[error(
        "cannot reach keyholderd at {addr}: {reason}; is keyholderd running and listening there? (--addr, KEYHOLDER_ADDR)"
    )]
    Unreachable {
        /// The daemon's address.
        addr: String,
        /// The system's reason.
        reason: String,
    },
    /// No answer in time.
    #[error(
        "keyholderd at {addr} did not answer in time; check that the address is keyholderd's and that it is healthy"
    )]
    Timeout {
        /// The daemon's address.
        addr: String,
    },
    /// The daemon's certificate does not chain to our CA.
    #[error(
        "the daemon's certificate at {addr} is not signed by the CA in {} ({reason}); use the CA that signed keyholderd's server certificate (--ca, KEYHOLDER_CACERT)",
        ca.display()
    )]
    ServerNotTrusted {
        /// The daemon's address.
        addr: String,
        /// Our CA file.
        ca: PathBuf,
        /// rustls' reason.
        reason: String,
    },
    /// The daemon's certificate is not for the name we dialled.
    #[error(
        "the daemon's certificate is not valid for the name in --addr {addr} ({reason}); connect with a name or address its certificate lists"
    )]
    ServerNameMismatch {
        /// The daemon's address.
        addr: String,
        /// rustls' reason.
        reason: String,
    },
    /// The daemon's certificate is expired, not yet valid or revoked.
    #[error(
        "the daemon's certificate at {addr} is not valid now ({reason}); keyholderd needs a renewed server certificate"
    )]
    ServerCertInvalid {
        /// The daemon's address.
        addr: String,
        /// rustls' reason.
        reason: String,
    },
    /// The daemon refused our certificate during the handshake.
    #[error(
        "the daemon at {addr} refused our client certificate {} during the handshake ({reason}); is it signed by the daemon's client CA, unexpired and not revoked? (--cert, KEYHOLDER_CLIENT_CERT)",
        cert.display()
    )]
    ClientCertRefused {
        /// The daemon's address.
        addr: String,
        /// Our certificate.
        cert: PathBuf,
        /// The alert or close we saw.
        reason: String,
    },
    /// Another TLS failure.
    #[error("TLS with keyholderd at {addr} failed: {reason}")]
    Tls {
        /// The daemon's address.
        addr: String,
        /// rustls' reason.
        reason: String,
    },
    /// The request failed in another way.
    #[error("the request to keyholderd at {addr} failed: {reason}")]
    Request {
        /// The daemon's address.
        addr: String,
        /// reqwest's reason.
        reason: String,
    },
    /// The daemon speaks an incompatible API.
    #[error("keyholderd at {addr} is incompatible: {source}")]
    Incompatible {
        /// The daemon's address.
        addr: String,
        /// Both versions.
        source: IncompatibleVersion,
    },
    /// 403: our principal lacks the role.
    #[error(
        "keyholderd refused: {message}; run this with the certificate of a principal who has that role"
    )]
    Forbidden {
        /// The daemon's message, naming the role.
        message: String,
    },
    /// 503 `sealed`.
    #[error(
        "keyholderd is sealed: {message}; the keyholders must unseal it first (keyholder unseal)"
    )]
    Sealed {
        /// The daemon's message.
        message: String,
    },
    /// 503 `store_unavailable`: the daemon cannot reach its state store
    /// (a PostgreSQL restart, say); nothing was done.
    #[error(
        "keyholderd cannot use its state store now: {message}; nothing was done, try again shortly"
    )]
    StoreUnavailable {
        /// The daemon's message.
        message: String,
    },
    /// 429 `too_many_connections`: the caller's principal holds as many
    /// connections as the daemon allows it (many clients sharing one
    /// certificate); nothing was done, and one may close soon.
    #[error("keyholderd takes no more connections of this certificate's principal now: {message}")]
    TooManyConnections {
        /// The daemon's message.
        message: String,
    },
    /// 421 `not_leader`: a cluster node that does not lead, and the leader
    /// was not among the addresses given or did not take the request.
    #[error("keyholderd refused: {message}{}", match .leader {
        Some(leader) => format!(" (add {leader} to --addr, KEYHOLDER_ADDR)"),
        None => String::new(),
    })]
    NotLeader {
        /// The daemon's message.
        message: String,
        /// The leader's address, when the node knew it.
        leader: Option<String>,
    },
    /// Any other refusal, as the daemon worded it.
    #[error("keyholderd refused: {message} ({code}, HTTP {status})")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The stable code.
        code: String,
        /// The daemon's sentence.
        message: String,
    },
    /// A body that does not parse.
    #[error("keyholderd sent an answer this client cannot read: {reason}")]
    MalformedResponse {
        /// What was wrong (never the body).
        reason: String,
    },
}

impl ClientError {
    /// Whether waiting may help: the daemon is down, starting, sealed,
    /// cannot reach its state store, or holds as many connections of the
    /// caller's principal as it allows.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Unreachable { .. }
                | Self::Timeout { .. }
                | Self::Sealed { .. }
                | Self::StoreUnavailable { .. }
                | Self::TooManyConnections { .. }
        )
    }
}

/// A connection to keyholderd: one node, or a cluster's nodes in turn.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    /// Each node's URL base and its address as messages show it.
    nodes: Vec<(String, String)>,
    /// The node that answered last: the next request starts there.
    current: Arc<std::sync::atomic::AtomicUsize>,
    options: ConnectOptions,
}

fn read_pem_certs(
    path: &Path,
    hint: &'static str,
) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let pem = files::read_public(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ClientError::BadPem {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(ClientError::EmptyPem {
            path: path.to_owned(),
            what: "PEM certificate",
            hint,
        });
    }
    Ok(certs)
}

fn read_pem_key(path: &Path) -> Result<PrivateKeyDer<'static>, ClientError> {
    let pem = files::read_private(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => ClientError::EmptyPem {
            path: path.to_owned(),
            what: "PEM private key",
            hint: "--key must be your client certificate's private key",
        },
        e => ClientError::BadPem {
            path: path.to_owned(),
            reason: e.to_string(),
        },
    })
}

/// `host:port` → `https://host:port`; `http://` is refused.
fn base_url(addr: &str) -> Result<String, ClientError> {
    let bad = |reason| ClientError::BadAddress {
        addr: addr.to_owned(),
        reason,
    };
    let rest = if let Some(rest) = addr.strip_prefix("https://") {
        rest
    } else if addr.contains("://") {
        return Err(bad("keyholderd speaks only https"));
    } else {
        addr
    };
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains('/') || rest.contains(char::is_whitespace) {
        return Err(bad("it must be a host and a port, without a path"));
    }
    Ok(format!("https://{rest}"))
}

impl Client {
    /// Reads the CA, our certificate and key (refusing a key others can
    /// read), and builds an HTTPS client that speaks only TLS 1.3.
    pub fn new(options: ConnectOptions) -> Result<Self, ClientError> {
        let nodes = options
            .addr
            .split(',')
            .map(|one| {
                let base = base_url(one.trim())?;
                let addr = base.trim_start_matches("https://").to_owned();
                Ok((base, addr))
            })
            .collect::<Result<Vec<_>, ClientError>>()?;
        let ca_hint = "--ca must be the CA certificate that signed keyholderd's certificate";
        let mut roots = rustls::RootCertStore::empty();
        for cert in read_pem_certs(&options.ca, ca_hint)? {
            roots.add(cert).map_err(|e| ClientError::BadCa {
                path: options.ca.clone(),
                reason: e.to_string(),
            })?;
        }
        let chain = read_pem_certs(&options.cert, "--cert must be your client certificate")?;
        let key = read_pem_key(&options.key)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let identity_error = |e: rustls::Error| ClientError::ClientIdentity {
            cert: options.cert.clone(),
            key: options.key.clone(),
            reason: e.to_string(),
        };
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(identity_error)?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(identity_error)?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| ClientError::Request {
                addr: options.addr.clone(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            http,
            nodes,
            current: Arc::default(),
            options,
        })
    }

    /// The address of the node that answered last, as shown in messages.
    pub fn addr(&self) -> &str {
        &self.nodes[self.current()].1
    }

    fn current(&self) -> usize {
        self.current.load(std::sync::atomic::Ordering::Relaxed) % self.nodes.len()
    }

    /// Sends to the node that answered last, then to the next while one
    /// cannot be reached; a `not_leader` answer is tried once at the leader
    /// it names when that is one of the addresses.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Zeroizing<Vec<u8>>>,
    ) -> Result<Zeroizing<Vec<u8>>, ClientError> {
        let count = self.nodes.len();
        let start = self.current();
        let mut unreachable = None;
        for step in 0..count {
            let i = (start + step) % count;
            match self.send_at(i, method.clone(), path, body.clone()).await {
                // A sealed node may have an unsealed peer: `hook --wait`
                // takes whichever node can answer. A node that closes the
                // connection in the handshake is most often one shutting
                // down (a rolling restart); a certificate every node
                // refuses is still reported, by the last one. A node that
                // cannot reach the state store may have a peer that can, and
                // one full of the caller's connections a peer that is not.
                Err(e)
                    if count > 1
                        && (e.is_transient()
                            || matches!(e, ClientError::ClientCertRefused { .. })) =>
                {
                    unreachable = Some(e);
                }
                Err(ClientError::NotLeader {
                    message,
                    leader: Some(leader),
                }) => {
                    let Some(j) = self.nodes.iter().position(|(_, addr)| *addr == leader) else {
                        return Err(ClientError::NotLeader {
                            message,
                            leader: Some(leader),
                        });
                    };
                    self.current.store(j, std::sync::atomic::Ordering::Relaxed);
                    return self.send_at(j, method, path, body).await;
                }
                other => {
                    self.current.store(i, std::sync::atomic::Ordering::Relaxed);
                    return other;
                }
            }
        }
        Err(unreachable.expect("at least one node was tried"))
    }

    async fn send_at(
        &self,
        i: usize,
        method: Method,
        path: &str,
        body: Option<Zeroizing<Vec<u8>>>,
    ) -> Result<Zeroizing<Vec<u8>>, ClientError> {
        let (base, addr) = &self.nodes[i];
        let mut request = self
            .http
            .request(method, format!("{base}{path}"))
            .header(API_VERSION_HEADER, API_VERSION);
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_vec());
        }
        let response = request.send().await.map_err(|e| self.classify(addr, &e))?;
        let peer = response
            .headers()
            .get(API_VERSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        keyholder_api::check_compatible(peer.as_deref()).map_err(|source| {
            ClientError::Incompatible {
                addr: addr.clone(),
                source,
            }
        })?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| self.classify(addr, &e))?;
        let body = Zeroizing::new(bytes.to_vec());
        drop(bytes);
        if status.is_success() {
            return Ok(body);
        }
        let error: ApiError =
            keyholder_api::from_json(&body).map_err(|reason| ClientError::MalformedResponse {
                reason: format!("HTTP {status} and {reason}"),
            })?;
        Err(match (status, error.code.as_str()) {
            (StatusCode::FORBIDDEN, _) => ClientError::Forbidden {
                message: error.error,
            },
            (StatusCode::SERVICE_UNAVAILABLE, "sealed") => ClientError::Sealed {
                message: error.error,
            },
            (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable") => {
                ClientError::StoreUnavailable {
                    message: error.error,
                }
            }
            (StatusCode::TOO_MANY_REQUESTS, "too_many_connections") => {
                ClientError::TooManyConnections {
                    message: error.error,
                }
            }
            (StatusCode::MISDIRECTED_REQUEST, "not_leader") => ClientError::NotLeader {
                message: error.error,
                leader: error.leader,
            },
            _ => ClientError::Api {
                status: status.as_u16(),
                code: error.code,
                message: error.error,
            },
        })
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Zeroizing<Vec<u8>>>,
    ) -> Result<T, ClientError> {
        let body = self.send(method, path, body).await?;
        keyholder_api::from_json(&body).map_err(|reason| ClientError::MalformedResponse { reason })
    }

    fn json<T: serde::Serialize>(value: &T) -> Option<Zeroizing<Vec<u8>>> {
        Some(Zeroizing::new(
            serde_json::to_vec(value).expect("API bodies always serialise"),
        ))
    }

    /// Maps a transport failure to what the user must check.
    fn classify(&self, addr: &str, error: &reqwest::Error) -> ClientError {
        let addr = addr.to_owned();
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
        while let Some(current) = source {
            if let Some(tls) = current.downcast_ref::<rustls::Error>() {
                return self.classify_tls(&addr, tls);
            }
            if let Some(io) = current.downcast_ref::<std::io::Error>() {
                // io::Error's `source()` skips the error it wraps; hyper-rustls
                // nests rustls' error two io::Errors deep.
                let mut inner: &std::io::Error = io;
                while let Some(wrapped) = inner.get_ref() {
                    if let Some(tls) = wrapped.downcast_ref::<rustls::Error>() {
                        return self.classify_tls(&addr, tls);
                    }
                    match wrapped.downcast_ref::<std::io::Error>() {
                        Some(next) => inner = next,
                        None => break,
                    }
                }
                match io.kind() {
                    std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::HostUnreachable
                    | std::io::ErrorKind::NetworkUnreachable
                    | std::io::ErrorKind::AddrNotAvailable => {
                        return ClientError::Unreachable {
                            addr,
                            reason: io.to_string(),
                        };
                    }
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => {
                        return self.refused_during_handshake(&addr, io.to_string());
                    }
                    _ => {}
                }
            }
            source = current.source();
        }
        if error.is_timeout() {
            return ClientError::Timeout { addr };
        }
        let reason = chain_text(error);
        if reason.contains("connection closed before message completed") {
            // TLS 1.3: the client finishes its side of the handshake before
            // the server checks our certificate, so a refusal shows up as the
            // connection closing on the first request.
            return self.refused_during_handshake(&addr, "the connection was closed".to_owned());
        }
        if error.is_connect() {
            return ClientError::Unreachable { addr, reason };
        }
        ClientError::Request { addr, reason }
    }

    fn refused_during_handshake(&self, addr: &str, reason: String) -> ClientError {
        ClientError::ClientCertRefused {
            addr: addr.to_owned(),
            cert: self.options.cert.clone(),
            reason,
        }
    }

    fn classify_tls(&self, addr: &str, error: &rustls::Error) -> ClientError {
        use rustls::CertificateError as C;
        let addr = addr.to_owned();
        let reason = error.to_string();
        match error {
            rustls::Error::InvalidCertificate(cert) => match cert {
                C::UnknownIssuer | C::BadSignature => ClientError::ServerNotTrusted {
                    addr,
                    ca: self.options.ca.clone(),
                    reason,
                },
                C::NotValidForName | C::NotValidForNameContext { .. } => {
                    ClientError::ServerNameMismatch { addr, reason }
                }
                C::Expired
                | C::ExpiredContext { .. }
                | C::NotValidYet
                | C::NotValidYetContext { .. }
                | C::Revoked => ClientError::ServerCertInvalid { addr, reason },
                _ => ClientError::Tls { addr, reason },
            },
            rustls::Error::AlertReceived(_) => self.refused_during_handshake(&addr, reason),
            _ => ClientError::Tls { addr, reason },
        }
    }

    /// `GET /v1/health`.
    pub async fn health(&self) -> Result<Health, ClientError> {
        self.call(Method::GET, paths::HEALTH, None).await
    }

    /// `GET /v1/status`.
    pub async fn status(&self) -> Result<Status, ClientError> {
        self.call(Method::GET, paths::STATUS, None).await
    }

    /// `POST /v1/unseal`: shares of any versions, in one request.
    pub async fn unseal(&self, request: &UnsealRequest) -> Result<UnsealResponse, ClientError> {
        self.call(Method::POST, paths::UNSEAL, Self::json(request))
            .await
    }

    /// `DELETE /v1/unseal`: clears the gathered progress.
    pub async fn reset_unseal(&self) -> Result<UnsealResponse, ClientError> {
        self.call(Method::DELETE, paths::UNSEAL, None).await
    }

    /// `POST /v1/seal`.
    pub async fn seal(&self) -> Result<Status, ClientError> {
        self.call(Method::POST, paths::SEAL, None).await
    }

    /// `POST /v1/admin/reload`: the daemon re-reads and applies its config.
    pub async fn reload(&self) -> Result<keyholder_api::ReloadResponse, ClientError> {
        self.call(Method::POST, paths::ADMIN_RELOAD, None).await
    }

    /// `GET /v1/keyring`: the hand-over, parsed (its errors never echo a key).
    pub async fn keyring(&self) -> Result<HookHandover, ClientError> {
        let body = self.send(Method::GET, paths::KEYRING, None).await?;
        Self::handover(&body)
    }

    /// `POST /v1/keyring`: the hand-over, reporting the encryptions this
    /// process did under each version (build `report` with
    /// [`KeyringRequest::from_keyring`] from the keyring in use, and carry
    /// the counts into the new one with
    /// [`crypto_core::Keyring::continue_counts_from`]). A daemon older than
    /// API 1.3 answers 405: the keyring is then fetched with `GET`, and the
    /// report is not delivered.
    pub async fn keyring_reporting(
        &self,
        report: &KeyringRequest,
    ) -> Result<HookHandover, ClientError> {
        let body = match self
            .send(Method::POST, paths::KEYRING, Self::json(report))
            .await
        {
            Err(ClientError::Api { status: 405, .. }) => {
                self.send(Method::GET, paths::KEYRING, None).await?
            }
            other => other?,
        };
        Self::handover(&body)
    }

    fn handover(body: &[u8]) -> Result<HookHandover, ClientError> {
        let text = std::str::from_utf8(body).map_err(|_| ClientError::MalformedResponse {
            reason: "the keyring is not UTF-8".to_owned(),
        })?;
        HookHandover::from_json(text).map_err(|e| ClientError::MalformedResponse {
            reason: e.to_string(),
        })
    }

    /// `GET /v1/audit?since=SEQ&limit=N`: one page of the log.
    pub async fn audit_page(&self, since: u64, limit: u32) -> Result<AuditLog, ClientError> {
        let path = format!("{}?since={since}&limit={limit}", paths::AUDIT);
        self.call(Method::GET, &path, None).await
    }

    /// `POST /v1/rotation/prepare`.
    pub async fn rotation_prepare(
        &self,
        request: &PrepareRequest,
    ) -> Result<RotationStatus, ClientError> {
        self.call(Method::POST, paths::ROTATION_PREPARE, Self::json(request))
            .await
    }

    /// `GET /v1/rotation/share?version=N`: our own share, still age-armored.
    pub async fn rotation_share(&self, version: KeyVersion) -> Result<ShareEnvelope, ClientError> {
        let path = format!("{}?version={}", paths::ROTATION_SHARE, version.number());
        self.call(Method::GET, &path, None).await
    }

    /// `POST /v1/rotation/verify`: our decrypted new share, proving we can.
    pub async fn rotation_verify(
        &self,
        request: &UnsealRequest,
    ) -> Result<UnsealResponse, ClientError> {
        self.call(Method::POST, paths::ROTATION_VERIFY, Self::json(request))
            .await
    }

    async fn rotation_post(&self, path: &str) -> Result<RotationStatus, ClientError> {
        self.call(Method::POST, path, None).await
    }

    /// `POST /v1/rotation/activate`.
    pub async fn rotation_activate(&self) -> Result<RotationStatus, ClientError> {
        self.rotation_post(paths::ROTATION_ACTIVATE).await
    }

    /// `POST /v1/rotation/switch`.
    pub async fn rotation_switch(&self) -> Result<RotationStatus, ClientError> {
        self.rotation_post(paths::ROTATION_SWITCH).await
    }

    /// `POST /v1/rotation/pause`.
    pub async fn rotation_pause(&self) -> Result<RotationStatus, ClientError> {
        self.rotation_post(paths::ROTATION_PAUSE).await
    }

    /// `POST /v1/rotation/resume`.
    pub async fn rotation_resume(&self) -> Result<RotationStatus, ClientError> {
        self.rotation_post(paths::ROTATION_RESUME).await
    }

    /// `POST /v1/rotation/throttle`.
    pub async fn rotation_throttle(
        &self,
        request: &ThrottleRequest,
    ) -> Result<RotationStatus, ClientError> {
        self.call(Method::POST, paths::ROTATION_THROTTLE, Self::json(request))
            .await
    }

    /// `POST /v1/rotation/retire`: the plan, or an approval with `execute`.
    pub async fn rotation_retire(
        &self,
        request: &RetireRequest,
    ) -> Result<RetirePlan, ClientError> {
        self.call(Method::POST, paths::ROTATION_RETIRE, Self::json(request))
            .await
    }

    /// `POST /v1/rotation/rollback`: the plan, or the start with `execute`.
    pub async fn rotation_rollback(
        &self,
        request: &RollbackRequest,
    ) -> Result<RollbackPlan, ClientError> {
        self.call(Method::POST, paths::ROTATION_ROLLBACK, Self::json(request))
            .await
    }
}

/// The error and its causes, deduplicated, on one line.
fn chain_text(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        let text = current.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = current.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_become_https_urls() {
        assert_eq!(
            base_url("127.0.0.1:8443").unwrap(),
            "https://127.0.0.1:8443"
        );
        assert_eq!(base_url("https://kh:1/").unwrap(), "https://kh:1");
        assert!(matches!(
            base_url("http://kh:1"),
            Err(ClientError::BadAddress { .. })
        ));
        assert!(base_url("kh:1/v1").is_err());
    }
}
