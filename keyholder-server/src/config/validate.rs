//! Validation of the raw config: every problem collected, each naming its
//! field.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use crypto_core::KeyringId;

use super::{
    Cluster, Config, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_HEADER_READ_TIMEOUT,
    DEFAULT_KEEP_SNAPSHOTS, DEFAULT_LEASE, DEFAULT_MAX_CONNECTIONS, DEFAULT_PROGRESS_TTL,
    DEFAULT_SAMPLE_SIZE, Listen, Node, Problem, RawCluster, RawConfig, RawListen, RawPrincipal,
    RawReencrypt, RawRotation, RawUsage, Reencrypt, RotationRules, StateLocation, UsageLimits,
};
use crate::principal::{Principal, Role};
use crate::store::PgLocation;
use crate::transport::identity::{self, IdentityField};

#[derive(Default)]
pub(super) struct Checker {
    pub(super) problems: Vec<Problem>,
}

impl Checker {
    fn problem(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            field: field.into(),
            message: message.into(),
        });
    }

    fn name(&mut self, value: &str, field: &str) {
        if let Err(reason) = name_rule(value) {
            self.problem(field, format!("\"{value}\" {reason}"));
        }
    }

    fn duration(
        &mut self,
        value: Option<&str>,
        field: &str,
        default: Duration,
        range: (Duration, Duration),
    ) -> Duration {
        let Some(text) = value else { return default };
        match humantime::parse_duration(text) {
            Ok(d) if d >= range.0 && d <= range.1 => d,
            Ok(_) => {
                self.problem(
                    field,
                    format!(
                        "\"{text}\" is out of range; use between {} and {}",
                        humantime::format_duration(range.0),
                        humantime::format_duration(range.1)
                    ),
                );
                default
            }
            Err(_) => {
                self.problem(
                    field,
                    format!("\"{text}\" is not a duration; write it like \"15m\" or \"250ms\""),
                );
                default
            }
        }
    }

    fn number(&mut self, value: Option<i64>, field: &str, default: i64, range: (i64, i64)) -> i64 {
        match value {
            None => default,
            Some(n) if n >= range.0 && n <= range.1 => n,
            Some(n) => {
                self.problem(
                    field,
                    format!("{n} is out of range; use {} to {}", range.0, range.1),
                );
                default
            }
        }
    }

    fn file_readable(&mut self, path: &Path, field: &str) {
        if let Err(e) = std::fs::File::open(path) {
            self.problem(field, format!("cannot read {}: {e}", path.display()));
        }
    }

    /// A file only its owner may read (config, private key), and that owner
    /// is the user the daemon runs as: a file another user can rewrite could
    /// name other principals or another key.
    pub(super) fn file_private(&mut self, path: &Path, field: &str) {
        if let Ok(meta) = std::fs::metadata(path) {
            self.owned_by_us(&meta, path, field);
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                self.problem(
                    field,
                    format!(
                        "{} is accessible by group or others (mode {mode:o}); run chmod 600 on it",
                        path.display()
                    ),
                );
            }
        }
    }

    fn owned_by_us(&mut self, meta: &std::fs::Metadata, path: &Path, field: &str) {
        let euid = nix::unistd::geteuid().as_raw();
        if meta.uid() != euid {
            self.problem(
                field,
                format!(
                    "{} is owned by uid {}, not by the daemon's user (uid {euid}); chown it to that user",
                    path.display(),
                    meta.uid()
                ),
            );
        }
    }

    /// A configured path, resolved against the config's directory: an empty
    /// path (it would name the config's directory) and `..` (it leaves the
    /// place the operator reviewed) are refused by name.
    fn path(&mut self, base: &Path, path: &Path, field: &str) -> Option<PathBuf> {
        if path.as_os_str().is_empty() {
            self.problem(field, "is empty; set the path");
            return None;
        }
        if path.components().any(|c| c == Component::ParentDir) {
            self.problem(
                field,
                format!(
                    "\"{}\" contains \"..\"; write the path without it",
                    path.display()
                ),
            );
            return None;
        }
        Some(resolve(base, path))
    }

    fn sql_ident(&mut self, value: &str, field: &str) {
        if let Err(reason) = sql_ident_rule(value) {
            self.problem(field, format!("\"{value}\" {reason}"));
        }
    }
}

/// `[a-z0-9-]{1,64}`, not starting or ending with `-`: the rule of every name.
fn name_rule(value: &str) -> Result<(), &'static str> {
    if value.is_empty() {
        return Err("is empty; every name must be set");
    }
    if value.len() > 64 {
        return Err("is longer than 64 characters");
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err("may hold only a-z, 0-9 and -");
    }
    if value.starts_with('-') || value.ends_with('-') {
        return Err("may not start or end with -");
    }
    Ok(())
}

/// `^[a-z_][a-z0-9_]{0,62}$`: safe unquoted in SQL on SQLite and PostgreSQL.
pub fn sql_ident_rule(value: &str) -> Result<(), &'static str> {
    let mut bytes = value.bytes();
    match bytes.next() {
        None => return Err("is empty"),
        Some(b) if b == b'_' || b.is_ascii_lowercase() => {}
        Some(_) => return Err("must match ^[a-z_][a-z0-9_]{0,62}$"),
    }
    if value.len() > 63 || !bytes.all(|b| b == b'_' || b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return Err("must match ^[a-z_][a-z0-9_]{0,62}$");
    }
    Ok(())
}

fn resolve(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_owned()
    } else {
        base.join(path)
    }
}

pub(super) fn validate(
    raw: RawConfig,
    path: &Path,
    base: &Path,
    check: &mut Checker,
) -> Option<Config> {
    let keyring = match raw.keyring.parse::<KeyringId>() {
        Ok(id) => Some(id),
        Err(e) => {
            check.problem("keyring", e.to_string());
            None
        }
    };

    let state = match (&raw.state_dir, &raw.state_store) {
        (Some(dir), None) => {
            let dir = check.path(base, dir, "state_dir");
            // Only a directory has permissions to check; a database's access
            // is its own roles' business.
            if let Some(dir) = &dir {
                check_state_dir(dir, check);
            }
            dir.map(StateLocation::Dir)
        }
        (None, Some(url)) => match PgLocation::parse(url) {
            Ok(location) => Some(StateLocation::Postgres(Box::new(location))),
            Err(reason) => {
                check.problem("state_store", reason);
                None
            }
        },
        (Some(_), Some(_)) => {
            check.problem(
                "state_store",
                "is set together with state_dir; keep the one that holds the daemon's state and remove the other",
            );
            None
        }
        (None, None) => {
            check.problem(
                "state_dir",
                "is missing; set the directory (mode 0700) that holds the daemon's state, or state_store = \"postgres://...\"",
            );
            None
        }
    };

    let listen = validate_listen(&raw.listen, base, check);
    let principals = validate_principals(&raw.principals, check);

    let keyholders = principals.iter().filter(|p| p.has(Role::Keyholder)).count();
    if keyholders > 255 {
        check.problem(
            "principals",
            format!("{keyholders} keyholders; at most 255 are possible"),
        );
    }
    let threshold = raw.shamir.threshold;
    if threshold < 2 {
        check.problem(
            "shamir.threshold",
            format!("{threshold} is too low; a key needs at least 2 keyholders to rebuild"),
        );
    } else if threshold > keyholders as i64 {
        check.problem(
            "shamir.threshold",
            format!("{threshold} is more than the {keyholders} keyholder(s) configured; add keyholders or lower it"),
        );
    }

    let progress_ttl = check.duration(
        raw.unseal.progress_ttl.as_deref(),
        "unseal.progress_ttl",
        DEFAULT_PROGRESS_TTL,
        (Duration::from_secs(10), Duration::from_secs(24 * 3600)),
    );
    let sample_size = check.number(
        raw.verify.sample_size,
        "verify.sample_size",
        i64::from(DEFAULT_SAMPLE_SIZE),
        (1, 100_000),
    ) as u32;
    let targets = validate_targets(&raw.targets, check);
    let reencrypt = validate_reencrypt(&raw.reencrypt, &principals, check);
    let rotation = validate_rotation(&raw.rotation, threshold, keyholders, check);
    let identity_field = listen
        .as_ref()
        .map_or_else(IdentityField::default, |l| l.identity_field);
    let cluster = validate_cluster(
        raw.cluster.as_ref(),
        state.as_ref(),
        &principals,
        identity_field,
        base,
        check,
    );
    let usage = validate_usage(&raw.usage, check);

    Some(Config {
        path: path.to_owned(),
        keyring: keyring?,
        state: state?,
        listen: listen?,
        threshold: u8::try_from(threshold).ok()?,
        principals,
        progress_ttl,
        sample_size,
        targets,
        reencrypt,
        rotation,
        cluster,
        usage,
    })
}

/// `[usage]`: each limit may only be lowered, and the warning must come
/// before the limit.
fn validate_usage(raw: &RawUsage, check: &mut Checker) -> UsageLimits {
    let defaults = UsageLimits::default();
    let mut limit_of = |value: Option<i64>, field: &str, max: u64, bound: &str| match value {
        None => None,
        Some(n) if n < 1 => {
            check.problem(field, format!("{n} is below 1; a limit counts encryptions"));
            None
        }
        Some(n) if n as u64 > max => {
            check.problem(
                field,
                format!("{n} is above {bound} ({max}); this setting may only lower the limit, never raise it past what AES-GCM with random nonces allows"),
            );
            None
        }
        Some(n) => Some(n as u64),
    };
    let limit = limit_of(raw.limit, "usage.limit", defaults.limit, "2^32");
    let warn_at = limit_of(raw.warn_at, "usage.warn_at", defaults.warn_at, "2^31");
    let limit = limit.unwrap_or(defaults.limit);
    // A lowered limit alone warns at its half, as 2^31 is of 2^32.
    let warn_at = warn_at.unwrap_or(defaults.warn_at.min(limit / 2).max(1));
    if warn_at >= limit {
        check.problem(
            "usage.warn_at",
            format!("{warn_at} is not below usage.limit ({limit}); the warning must come first"),
        );
        return defaults;
    }
    UsageLimits { warn_at, limit }
}

/// `[cluster]`: a PostgreSQL state store, 2 to 5 nodes with unique names,
/// this node among them, each a `node` principal.
fn validate_cluster(
    raw: Option<&RawCluster>,
    state: Option<&StateLocation>,
    principals: &[Principal],
    identity_field: IdentityField,
    base: &Path,
    check: &mut Checker,
) -> Option<Cluster> {
    let Some(raw) = raw else {
        if let Some(p) = principals.iter().find(|p| p.has(Role::Node)) {
            check.problem(
                "principals",
                format!("\"{}\" has the node role but there is no [cluster]; remove the role or configure the cluster", p.name),
            );
        }
        return None;
    };
    if matches!(state, Some(StateLocation::Dir(_))) {
        check.problem(
            "cluster",
            "needs state_store = \"postgres://...\": the nodes of a cluster share one PostgreSQL state store, never a state_dir",
        );
    }
    check.name(&raw.node, "cluster.node");
    let lease = check.duration(
        raw.lease.as_deref(),
        "cluster.lease",
        DEFAULT_LEASE,
        (Duration::from_secs(1), Duration::from_secs(120)),
    );
    let client_cert = check.path(base, &raw.client_cert, "cluster.client_cert");
    if let Some(path) = &client_cert {
        check.file_readable(path, "cluster.client_cert");
    }
    let client_key = check.path(base, &raw.client_key, "cluster.client_key");
    if let Some(path) = &client_key {
        check.file_private(path, "cluster.client_key");
    }
    let server_ca = check.path(base, &raw.server_ca, "cluster.server_ca");
    if let Some(path) = &server_ca {
        check.file_readable(path, "cluster.server_ca");
    }
    if !(2..=5).contains(&raw.nodes.len()) {
        check.problem(
            "cluster.nodes",
            format!(
                "{} node(s); a cluster has 2 to 5 (one [[cluster.nodes]] per keyholderd, this one included)",
                raw.nodes.len()
            ),
        );
    }
    let mut names = BTreeSet::new();
    // Host names compare without regard to case.
    let mut addrs: BTreeMap<String, (usize, &str)> = BTreeMap::new();
    let mut nodes = Vec::new();
    for (i, node) in raw.nodes.iter().enumerate() {
        let at = |field: &str| format!("cluster.nodes[{i}].{field}");
        check.name(&node.name, &at("name"));
        if !names.insert(node.name.as_str()) {
            check.problem(at("name"), format!("duplicate node \"{}\"", node.name));
        }
        match principals.iter().find(|p| p.name == node.name) {
            Some(p) if p.has(Role::Node) => {}
            _ => check.problem(
                at("name"),
                format!("\"{}\" is not a principal with the node role; add [[principals]] name = \"{}\", roles = [\"node\"] with its client certificate's identity", node.name, node.name),
            ),
        }
        if let Err(reason) = host_port(&node.addr) {
            check.problem(at("addr"), format!("\"{}\" {reason}", node.addr));
        } else if let Some((j, other)) =
            addrs.insert(node.addr.to_ascii_lowercase(), (i, &node.name))
        {
            check.problem(
                at("addr"),
                format!(
                    "\"{}\" is also the address of {other} (cluster.nodes[{j}]); each node is reached at its own address: what this node tells {} (relayed shares, withdrawals, seal notices) would reach {other} instead",
                    node.addr, node.name
                ),
            );
        }
        nodes.push(Node {
            name: node.name.clone(),
            addr: node.addr.clone(),
        });
    }
    if !names.contains(raw.node.as_str()) {
        check.problem(
            "cluster.node",
            format!(
                "\"{}\" is not one of cluster.nodes; list this node there too",
                raw.node
            ),
        );
    }
    if let Some(path) = &client_cert {
        node_certificate(path, &raw.node, principals, identity_field, check);
    }
    Some(Cluster {
        node: raw.node.clone(),
        lease,
        client_cert: client_cert?,
        client_key: client_key?,
        server_ca: server_ca?,
        nodes,
    })
}

/// `cluster.client_cert` must be `cluster.node`'s own certificate. The
/// peers know a node by the principal its certificate maps to, the lease
/// and its fence by `cluster.node` alone: a node named after another one
/// (a config copied from that node's) renews that one's lease as its own,
/// at its epoch, and both lead. A file that holds no certificate is left to
/// the TLS loading, which names it; a node that is no node principal is
/// reported above.
fn node_certificate(
    path: &Path,
    node: &str,
    principals: &[Principal],
    field: IdentityField,
    check: &mut Checker,
) {
    let Some(own) = principals
        .iter()
        .find(|p| p.name == node && p.has(Role::Node))
    else {
        return;
    };
    let Some(cert) = crate::transport::tls::certs("cluster.client_cert", path)
        .ok()
        .and_then(|certs| certs.into_iter().next())
    else {
        return;
    };
    let Ok(values) = identity::values(&cert, field) else {
        return;
    };
    let (found, peers) = match values.as_slice() {
        [one] if *one == own.cert_identity => return,
        [one] => match principals.iter().find(|p| p.cert_identity == *one) {
            Some(other) => (
                format!("is \"{one}\", the cert_identity of \"{}\"", other.name),
                format!(
                    "the peers would take this node for {}, and a node named after another one holds the lease beside it",
                    other.name
                ),
            ),
            None => (
                format!("is \"{one}\", no principal's cert_identity"),
                "the peers would refuse this node's calls".to_owned(),
            ),
        },
        _ => (
            "does not hold exactly one identity".to_owned(),
            "the peers would refuse this node's calls".to_owned(),
        ),
    };
    check.problem(
        "cluster.client_cert",
        format!(
            "the certificate's {} {found}, but cluster.node is \"{node}\" (cert_identity \"{}\"): {peers}; set cluster.node to the name of the node this certificate is for, or point client_cert at {node}'s certificate",
            field.describe(),
            own.cert_identity
        ),
    );
}

/// A node's address: `host:port`, no scheme or path.
fn host_port(addr: &str) -> Result<(), &'static str> {
    const SHAPE: &str =
        "is not host:port; write it like \"kh-a.internal:8443\" (no scheme, no path)";
    let (host, port) = addr.rsplit_once(':').ok_or(SHAPE)?;
    if host.is_empty() || addr.contains('/') || addr.contains(char::is_whitespace) {
        return Err(SHAPE);
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err("has no port between 1 and 65535"),
    }
}

fn validate_rotation(
    raw: &RawRotation,
    threshold: i64,
    keyholders: usize,
    check: &mut Checker,
) -> RotationRules {
    let keyholders = keyholders as i64;
    // One more than the threshold, so that one absent keyholder does not stop
    // every unseal of the new version; all of them when there is no spare.
    let default = (threshold + 1).min(keyholders).max(threshold);
    let min_verified = match raw.min_verified {
        None => default,
        Some(n) if n < threshold => {
            check.problem(
                "rotation.min_verified",
                format!("{n} is below shamir.threshold ({threshold}); fewer verified keyholders could not rebuild the new key"),
            );
            default
        }
        Some(n) if n > keyholders => {
            check.problem(
                "rotation.min_verified",
                format!("{n} is more than the {keyholders} keyholder(s) configured; lower it or add keyholders"),
            );
            default
        }
        Some(n) => n,
    };
    let keep_snapshots = check.number(
        raw.keep_snapshots,
        "rotation.keep_snapshots",
        i64::from(DEFAULT_KEEP_SNAPSHOTS),
        (1, 1000),
    ) as u32;
    RotationRules {
        min_verified: u8::try_from(min_verified.clamp(0, 255)).unwrap_or(u8::MAX),
        keep_snapshots,
    }
}

fn check_state_dir(dir: &Path, check: &mut Checker) {
    match std::fs::metadata(dir) {
        Err(e) => check.problem(
            "state_dir",
            format!(
                "cannot use {}: {e}; create it with mode 0700",
                dir.display()
            ),
        ),
        Ok(meta) if !meta.is_dir() => {
            check.problem("state_dir", format!("{} is not a directory", dir.display()))
        }
        Ok(meta) => {
            check.owned_by_us(&meta, dir, "state_dir");
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                check.problem(
                    "state_dir",
                    format!(
                        "{} is accessible by group or others (mode {mode:o}); run chmod 700 on it",
                        dir.display()
                    ),
                );
            }
        }
    }
}

fn validate_listen(raw: &RawListen, base: &Path, check: &mut Checker) -> Option<Listen> {
    let addr = match raw.addr.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            check.problem(
                "listen.addr",
                format!(
                    "\"{}\" is not an address; write it like \"127.0.0.1:8443\"",
                    raw.addr
                ),
            );
            None
        }
    };
    let metrics_addr = match raw.metrics_addr.as_deref().map(str::parse::<SocketAddr>) {
        None => None,
        Some(Ok(a)) if a.ip().is_loopback() => Some(a),
        Some(Ok(a)) => {
            check.problem(
                "listen.metrics_addr",
                format!("{a} is not a loopback address; metrics are plain HTTP and stay on 127.0.0.1 or ::1"),
            );
            None
        }
        Some(Err(_)) => {
            check.problem(
                "listen.metrics_addr",
                "is not an address; write it like \"127.0.0.1:9464\"",
            );
            None
        }
    };
    let handshake_timeout = check.duration(
        raw.handshake_timeout.as_deref(),
        "listen.handshake_timeout",
        DEFAULT_HANDSHAKE_TIMEOUT,
        (Duration::from_millis(100), Duration::from_secs(120)),
    );
    let header_read_timeout = check.duration(
        raw.header_read_timeout.as_deref(),
        "listen.header_read_timeout",
        DEFAULT_HEADER_READ_TIMEOUT,
        (Duration::from_millis(100), Duration::from_secs(300)),
    );
    let max_connections = check.number(
        raw.max_connections,
        "listen.max_connections",
        DEFAULT_MAX_CONNECTIONS,
        (2, 65_536),
    );
    let max_connections_per_principal =
        per_principal(raw.max_connections_per_principal, max_connections, check);
    let identity_field = match raw.identity_field.as_deref() {
        None => IdentityField::default(),
        Some(text) => IdentityField::parse(text).unwrap_or_else(|| {
            check.problem(
                "listen.identity_field",
                format!("\"{text}\" is not a certificate field; use \"cn\" or \"dns_san\""),
            );
            IdentityField::default()
        }),
    };
    let cert = check.path(base, &raw.cert, "listen.cert");
    let key = check.path(base, &raw.key, "listen.key");
    let client_ca = check.path(base, &raw.client_ca, "listen.client_ca");
    let crl = raw
        .crl
        .as_deref()
        .map(|p| check.path(base, p, "listen.crl"));
    if let Some(cert) = &cert {
        check.file_readable(cert, "listen.cert");
    }
    if let Some(key) = &key {
        check.file_readable(key, "listen.key");
        check.file_private(key, "listen.key");
    }
    if let Some(client_ca) = &client_ca {
        check.file_readable(client_ca, "listen.client_ca");
    }
    let crl = match crl {
        Some(Some(crl)) => {
            check.file_readable(&crl, "listen.crl");
            Some(crl)
        }
        Some(None) => return None,
        None => None,
    };
    Some(Listen {
        addr: addr?,
        cert: cert?,
        key: key?,
        client_ca: client_ca?,
        crl,
        metrics_addr,
        handshake_timeout,
        identity_field,
        header_read_timeout,
        max_connections: usize::try_from(max_connections).unwrap_or(usize::MAX),
        max_connections_per_principal: usize::try_from(max_connections_per_principal)
            .unwrap_or(usize::MAX),
    })
}

/// `listen.max_connections_per_principal`: from 1 to below
/// `max_connections` (one principal must never be able to take every slot);
/// by default a quarter of `max_connections`.
fn per_principal(value: Option<i64>, max_connections: i64, check: &mut Checker) -> i64 {
    const FIELD: &str = "listen.max_connections_per_principal";
    let default = (max_connections / 4).max(1);
    match value {
        None => default,
        Some(n) if n < 1 => {
            check.problem(
                FIELD,
                format!("{n} is below 1; a principal needs a connection to call the API"),
            );
            default
        }
        Some(n) if n >= max_connections => {
            check.problem(
                FIELD,
                format!(
                    "{n} is not below listen.max_connections ({max_connections}); one principal must not be able to take every connection, lower it (the default is a quarter of max_connections)"
                ),
            );
            default
        }
        Some(n) => n,
    }
}

fn validate_principals(raw: &[RawPrincipal], check: &mut Checker) -> Vec<Principal> {
    let mut names = BTreeSet::new();
    let mut identities: BTreeMap<&str, &str> = BTreeMap::new();
    let mut recipients: BTreeMap<String, &str> = BTreeMap::new();
    let mut principals = Vec::new();
    if raw.is_empty() {
        check.problem(
            "principals",
            "none configured; add the keyholders, operators and databases",
        );
    }
    for (i, p) in raw.iter().enumerate() {
        let at = |field: &str| format!("principals[{i}].{field}");
        check.name(&p.name, &at("name"));
        if !names.insert(p.name.as_str()) {
            check.problem(at("name"), format!("duplicate name \"{}\"", p.name));
        }
        let mut roles = BTreeSet::new();
        if p.roles.is_empty() {
            check.problem(
                at("roles"),
                "is empty; give keyholder, operator, database or node",
            );
        }
        for (j, role) in p.roles.iter().enumerate() {
            match Role::parse(role) {
                Some(r) if !roles.insert(r) => check.problem(
                    format!("principals[{i}].roles[{j}]"),
                    format!("\"{role}\" is given twice"),
                ),
                Some(_) => {}
                None => check.problem(
                    format!("principals[{i}].roles[{j}]"),
                    format!("\"{role}\" is not a role; use keyholder, operator, database or node"),
                ),
            }
        }
        if roles.contains(&Role::Node) && roles.len() > 1 {
            check.problem(
                at("roles"),
                "gives node with other roles; a node is a keyholderd of the cluster, not a person or a database: give it the node role alone",
            );
        }
        if p.cert_identity.trim().is_empty() || p.cert_identity.trim() != p.cert_identity {
            check.problem(
                at("cert_identity"),
                "is empty or has surrounding spaces; set the certificate's CN or DNS SAN",
            );
        } else if let Some(other) = identities.insert(&p.cert_identity, &p.name) {
            check.problem(
                at("cert_identity"),
                format!("\"{}\" is also the identity of \"{other}\"; each certificate identity maps to one principal", p.cert_identity),
            );
        }
        match (&p.age_recipient, roles.contains(&Role::Keyholder)) {
            (Some(r), true) => match r.parse::<age::x25519::Recipient>() {
                Err(_) => check.problem(
                    at("age_recipient"),
                    "is not an age X25519 recipient (age1...)",
                ),
                // Compared as parsed, so a spelling in other letter case
                // is the same recipient: one identity would open both shares.
                Ok(parsed) => {
                    if let Some(other) = recipients.insert(parsed.to_string(), &p.name) {
                        check.problem(
                            at("age_recipient"),
                            format!("is also the age recipient of \"{other}\"; one identity would decrypt both shares and break the two-person rule, give each keyholder their own"),
                        );
                    }
                }
            },
            (None, true) => check.problem(
                at("age_recipient"),
                "is missing; a keyholder's shares are encrypted to their age recipient",
            ),
            (Some(_), false) => check.problem(
                at("age_recipient"),
                "is set but the principal is not a keyholder; remove it or add the keyholder role",
            ),
            (None, false) => {}
        }
        principals.push(Principal {
            name: p.name.clone(),
            roles,
            cert_identity: p.cert_identity.clone(),
            age_recipient: p.age_recipient.clone(),
        });
    }
    principals
}

fn validate_targets(
    raw: &[keyholder_reencrypt::TargetConfig],
    check: &mut Checker,
) -> Vec<keyholder_reencrypt::Target> {
    let mut names = BTreeSet::new();
    let mut targets = Vec::new();
    for (i, t) in raw.iter().enumerate() {
        let at = |field: &str| format!("targets[{i}].{field}");
        let problems_before = check.problems.len();
        check.name(&t.name, &at("name"));
        if !names.insert(t.name.as_str()) {
            check.problem(at("name"), format!("duplicate name \"{}\"", t.name));
        }
        if let Some(path) = t.store.strip_prefix("sqlite://") {
            if !path.starts_with('/') || path.len() < 2 {
                check.problem(
                    at("store"),
                    "a SQLite store is an absolute path: sqlite:///abs/path.db",
                );
            } else if Path::new(path)
                .components()
                .any(|c| c == Component::ParentDir)
            {
                check.problem(
                    at("store"),
                    format!("\"{path}\" contains \"..\"; write the path without it"),
                );
            } else if !Path::new(path).is_file() {
                // SQLite would create an empty file and every scan would
                // find nothing: a typo must not look like a drained table.
                check.problem(
                    at("store"),
                    format!("{path} does not exist or is not a file; point it at the application's database"),
                );
            }
        } else if t.store.starts_with("mysql://") {
            // The engine's parser names what is wrong (a password in the
            // URL, an unknown parameter, a bad ssl-mode).
            if let Err(keyholder_reencrypt::Error::InvalidTarget { reason, .. }) =
                keyholder_reencrypt::StoreLocation::parse(&t.store, &at("store"))
            {
                check.problem(at("store"), reason);
            }
        } else if !(t.store.starts_with("postgres://") || t.store.starts_with("postgresql://")) {
            check.problem(
                at("store"),
                "must start with sqlite:///, postgres:// or mysql://",
            );
        }
        check.sql_ident(&t.table, &at("table"));
        check.sql_ident(&t.primary_key, &at("primary_key"));
        if t.columns.is_empty() {
            check.problem(at("columns"), "is empty; name the encrypted columns");
        }
        let mut columns = BTreeSet::new();
        for (j, c) in t.columns.iter().enumerate() {
            check.sql_ident(c, &format!("targets[{i}].columns[{j}]"));
            if !columns.insert(c.as_str()) {
                check.problem(
                    format!("targets[{i}].columns[{j}]"),
                    format!("\"{c}\" is given twice"),
                );
            }
            if c == &t.primary_key {
                check.problem(
                    format!("targets[{i}].columns[{j}]"),
                    "is the primary key; it cannot be encrypted",
                );
            }
        }
        // The checks above name every problem; the engine's own
        // validation then builds the target (and would catch what they miss).
        if check.problems.len() > problems_before {
            continue;
        }
        match t.validate(&format!("targets[{i}]")) {
            Ok(target) => targets.push(target),
            Err(e) => check.problem(format!("targets[{i}]"), e.to_string()),
        }
    }
    targets
}

fn validate_reencrypt(
    raw: &RawReencrypt,
    principals: &[Principal],
    check: &mut Checker,
) -> Reencrypt {
    let batch_size =
        check.number(raw.batch_size, "reencrypt.batch_size", 1000, (1, 100_000)) as u32;
    let rows_per_sec = check.number(
        raw.rows_per_sec,
        "reencrypt.rows_per_sec",
        0,
        (0, 10_000_000),
    ) as u64;
    let pause_between_batches = check.duration(
        raw.pause_between_batches.as_deref(),
        "reencrypt.pause_between_batches",
        Duration::ZERO,
        (Duration::ZERO, Duration::from_secs(3600)),
    );
    let max_batch_latency = check.duration(
        raw.max_batch_latency.as_deref(),
        "reencrypt.max_batch_latency",
        Duration::from_millis(250),
        (Duration::from_millis(1), Duration::from_secs(600)),
    );
    let max_replica_lag = check.duration(
        raw.max_replica_lag.as_deref(),
        "reencrypt.max_replica_lag",
        Duration::from_secs(5),
        (Duration::from_millis(1), Duration::from_secs(3600)),
    );
    let workers = check.number(
        raw.workers,
        "reencrypt.workers",
        1,
        (1, i64::from(keyholder_reencrypt::MAX_WORKERS)),
    ) as u32;
    let mut seen = BTreeSet::new();
    for (i, name) in raw.consumers.iter().enumerate() {
        let field = format!("reencrypt.consumers[{i}]");
        match principals.iter().find(|p| &p.name == name) {
            None => check.problem(&field, format!("\"{name}\" is not a configured principal")),
            Some(p) if !p.has(Role::Database) => check.problem(
                &field,
                format!("\"{name}\" does not have the database role"),
            ),
            Some(_) => {}
        }
        if !seen.insert(name) {
            check.problem(&field, format!("\"{name}\" is given twice"));
        }
    }
    Reencrypt {
        batch_size,
        rows_per_sec,
        pause_between_batches,
        max_batch_latency,
        max_replica_lag,
        workers,
        consumers: raw.consumers.clone(),
    }
}
