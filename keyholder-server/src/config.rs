//! The daemon's one TOML config file: parsed strictly, validated completely.
//!
//! Owns turning `keyholder.toml` into a [`Config`] whose every value has been
//! checked. Validation never stops at the first problem: it collects all of
//! them, each naming its field (`principals[2].name: duplicate name "bob"`), so
//! `keyholderd check-config` shows an operator everything to fix at once.
//! Config values are paths and names, never secrets.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crypto_core::KeyringId;
use serde::Deserialize;

use crate::principal::{Principal, Role};
use crate::store::PgLocation;
use crate::transport::identity::IdentityField;

mod syntax;
#[cfg(test)]
pub(crate) mod tests;
mod validate;

pub use syntax::Position;
pub use validate::sql_ident_rule;
use validate::{Checker, validate};

/// Default time partial unseal progress is kept.
const DEFAULT_PROGRESS_TTL: Duration = Duration::from_secs(15 * 60);
/// Default number of records test-decrypted per version per target.
const DEFAULT_SAMPLE_SIZE: u32 = 64;
/// Default time a client has to finish its TLS handshake.
const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default number of state store snapshots kept in `state_dir/snapshots`.
const DEFAULT_KEEP_SNAPSHOTS: u32 = 5;
/// Default time for a request's headers (and an idle keep-alive connection).
const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default number of client connections open at once.
const DEFAULT_MAX_CONNECTIONS: i64 = 256;
/// Default time a cluster leader's lease lasts without a renewal.
const DEFAULT_LEASE: Duration = Duration::from_secs(10);

/// Why the config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}; check the path and its permissions")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown or mistyped fields. It
    /// says where and what kind of error, never the file's text: a line may
    /// hold a database URL's password.
    #[error(
        "config {path} does not parse{}: {kind}; fix the file there (its text is not repeated: it may hold a password)",
        at.map(|at| format!(" at {at}")).unwrap_or_default()
    )]
    Parse {
        /// The config file.
        path: PathBuf,
        /// Where, when the parser says.
        at: Option<Position>,
        /// The kind of error, without any of the file's text.
        kind: String,
    },
    /// The file parsed but some values are wrong.
    #[error("config {path} has {} problem(s); fix each of them:\n{}", problems.len(), Problem::list(problems))]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// Every problem found.
        problems: Vec<Problem>,
    },
}

/// One wrong value, named by its field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The field, as a TOML path (`principals[2].name`).
    pub field: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl Problem {
    fn list(problems: &[Problem]) -> String {
        problems
            .iter()
            .map(|p| format!("  {p}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    keyring: String,
    state_dir: Option<PathBuf>,
    state_store: Option<String>,
    listen: RawListen,
    shamir: RawShamir,
    #[serde(default)]
    principals: Vec<RawPrincipal>,
    #[serde(default)]
    unseal: RawUnseal,
    #[serde(default)]
    verify: RawVerify,
    #[serde(default)]
    targets: Vec<keyholder_reencrypt::TargetConfig>,
    #[serde(default)]
    reencrypt: RawReencrypt,
    #[serde(default)]
    rotation: RawRotation,
    cluster: Option<RawCluster>,
    #[serde(default)]
    usage: RawUsage,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    node: String,
    lease: Option<String>,
    client_cert: PathBuf,
    client_key: PathBuf,
    server_ca: PathBuf,
    #[serde(default)]
    nodes: Vec<RawNode>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: String,
    addr: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    addr: String,
    cert: PathBuf,
    key: PathBuf,
    client_ca: PathBuf,
    crl: Option<PathBuf>,
    metrics_addr: Option<String>,
    handshake_timeout: Option<String>,
    identity_field: Option<String>,
    header_read_timeout: Option<String>,
    max_connections: Option<i64>,
    max_connections_per_principal: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShamir {
    threshold: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrincipal {
    name: String,
    roles: Vec<String>,
    cert_identity: String,
    age_recipient: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUnseal {
    progress_ttl: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVerify {
    sample_size: Option<i64>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRotation {
    min_verified: Option<i64>,
    keep_snapshots: Option<i64>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUsage {
    warn_at: Option<i64>,
    limit: Option<i64>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReencrypt {
    batch_size: Option<i64>,
    rows_per_sec: Option<i64>,
    pause_between_batches: Option<String>,
    max_batch_latency: Option<String>,
    max_replica_lag: Option<String>,
    workers: Option<i64>,
    #[serde(default)]
    consumers: Vec<String>,
}

/// The validated config.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it was read from.
    pub path: PathBuf,
    /// The keyring this daemon serves.
    pub keyring: KeyringId,
    /// Where the daemon's state lives (`state_dir` or `state_store`).
    pub state: StateLocation,
    /// Where the daemon listens.
    pub listen: Listen,
    /// Shares needed to rebuild a key.
    pub threshold: u8,
    /// Every principal, in config order (keyholders get share indices in this order).
    pub principals: Vec<Principal>,
    /// How long partial unseal progress is kept.
    pub progress_ttl: Duration,
    /// Records test-decrypted per version per target before unsealing.
    pub sample_size: u32,
    /// The tables whose records the keys protect.
    pub targets: Vec<keyholder_reencrypt::Target>,
    /// Re-encryption settings (used by the rotation).
    pub reencrypt: Reencrypt,
    /// `[rotation]`: the rules a rotation must keep.
    pub rotation: RotationRules,
    /// `[cluster]`: the other keyholderd nodes sharing this PostgreSQL
    /// state store; `None` for a single daemon.
    pub cluster: Option<Cluster>,
    /// `[usage]`: the encryption counts at which a version is warned about
    /// and shown exhausted.
    pub usage: UsageLimits,
}

/// `[usage]`: the encryption counts a version is held to (AES-GCM with
/// random nonces). They may only be lowered (for tests and drills), never
/// raised past 2^31 and 2^32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsageLimits {
    /// From this count on, the version is shown with a warning: rotate now.
    pub warn_at: u64,
    /// From this count on, the version is shown exhausted.
    pub limit: u64,
}

impl Default for UsageLimits {
    fn default() -> Self {
        Self {
            warn_at: crypto_core::NONCE_WARN_LIMIT,
            limit: crypto_core::NONCE_HARD_LIMIT,
        }
    }
}

/// `[cluster]`: several keyholderd nodes on one PostgreSQL state store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cluster {
    /// This node's name: one of `nodes`, and the name of the `node`
    /// principal its client certificate maps to on its peers.
    pub node: String,
    /// How long a leader's lease lasts without a renewal; a leader that
    /// cannot renew stops writing before it runs out.
    pub lease: Duration,
    /// This node's client certificate (PEM), presented to its peers.
    pub client_cert: PathBuf,
    /// Its private key (PEM, mode 0600).
    pub client_key: PathBuf,
    /// The CA that signed the peers' server certificates (PEM).
    pub server_ca: PathBuf,
    /// Every node of the cluster, this one included, in config order.
    pub nodes: Vec<Node>,
}

/// One node of `[cluster]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// Its name (the name rule); a principal of that name has the `node` role.
    pub name: String,
    /// Where its API is reached, `host:port` (the host as its server
    /// certificate names it).
    pub addr: String,
}

impl Cluster {
    /// The other nodes.
    pub fn peers(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| n.name != self.node)
    }

    /// Whether `name` is a node of this cluster.
    pub fn has_node(&self, name: &str) -> bool {
        self.nodes.iter().any(|n| n.name == name)
    }

    /// The node named `name`.
    pub fn node_named(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

/// `[rotation]`.
#[derive(Clone, Debug)]
pub struct RotationRules {
    /// Distinct keyholders who must have verified their share of the new
    /// version before the old one may be retired (>= threshold, <= the
    /// number of keyholders; default threshold + 1, capped at that number).
    pub min_verified: u8,
    /// State store snapshots kept in `state_dir/snapshots`: the oldest go
    /// once a new one is taken.
    pub keep_snapshots: u32,
}

/// Where the daemon's state store lives: exactly one of `state_dir` and
/// `state_store` is configured.
#[derive(Clone, Debug)]
pub enum StateLocation {
    /// `state_dir`: a directory (mode 0700) holding the SQLite file
    /// `state.db`.
    Dir(PathBuf),
    /// `state_store = "postgres://..."`: a schema in a PostgreSQL database.
    Postgres(Box<PgLocation>),
}

impl StateLocation {
    /// The SQLite state file inside a state directory.
    pub fn sqlite_file(dir: &Path) -> PathBuf {
        dir.join("state.db")
    }
}

/// `[listen]`.
#[derive(Clone, Debug)]
pub struct Listen {
    /// The API's address.
    pub addr: SocketAddr,
    /// The server certificate chain (PEM).
    pub cert: PathBuf,
    /// The server's private key (PEM).
    pub key: PathBuf,
    /// The CA client certificates must chain to (PEM).
    pub client_ca: PathBuf,
    /// A CRL of that CA (PEM), when configured.
    pub crl: Option<PathBuf>,
    /// A loopback plain-HTTP address for `/metrics`.
    pub metrics_addr: Option<SocketAddr>,
    /// How long a client has to finish its handshake.
    pub handshake_timeout: Duration,
    /// The client certificate field a `cert_identity` is compared with.
    pub identity_field: IdentityField,
    /// How long a request's headers may take, and how long an idle
    /// keep-alive connection is kept.
    pub header_read_timeout: Duration,
    /// Client connections open at once; more are closed at once.
    pub max_connections: usize,
    /// Connections one principal may hold open at once, below
    /// `max_connections` so that no principal can take every slot; more are
    /// closed at once.
    pub max_connections_per_principal: usize,
}

/// `[reencrypt]`.
#[derive(Clone, Debug)]
pub struct Reencrypt {
    /// Rows per batch.
    pub batch_size: u32,
    /// Rows per second, 0 = unlimited.
    pub rows_per_sec: u64,
    /// Pause between batches.
    pub pause_between_batches: Duration,
    /// The adaptive batch size aims under this latency.
    pub max_batch_latency: Duration,
    /// PostgreSQL replica lag above which the worker pauses.
    pub max_replica_lag: Duration,
    /// Workers of a pass's main scan on disjoint key ranges (PostgreSQL
    /// targets with an integer key; one elsewhere, with a warning).
    pub workers: u32,
    /// Database principals that must fetch a new keyring before `switch`.
    pub consumers: Vec<String>,
}

impl Reencrypt {
    /// The engine's throttle from these settings.
    pub fn throttle(&self) -> keyholder_reencrypt::Throttle {
        keyholder_reencrypt::Throttle {
            rows_per_sec: self.rows_per_sec,
            batch_size: self.batch_size,
            pause_between_batches: self.pause_between_batches,
            max_batch_latency: self.max_batch_latency,
            max_replica_lag: self.max_replica_lag,
        }
    }
}

impl Config {
    /// Reads and validates `path`, reporting every problem.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let raw: RawConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            at: syntax::position(&text, &e),
            kind: syntax::kind(e.message()),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut check = Checker::default();
        check.file_private(path, "(config file)");
        let config = validate(raw, path, base, &mut check);
        match config {
            Some(config) if check.problems.is_empty() => Ok(config),
            _ => Err(ConfigError::Invalid {
                path: path.to_owned(),
                problems: check.problems,
            }),
        }
    }

    /// The keyholders, in config order: index `i + 1` is dealt to entry `i`.
    pub fn keyholders(&self) -> impl Iterator<Item = &Principal> {
        self.principals.iter().filter(|p| p.has(Role::Keyholder))
    }

    /// The principal named `name`.
    pub fn principal(&self, name: &str) -> Option<&Principal> {
        self.principals.iter().find(|p| p.name == name)
    }
}
