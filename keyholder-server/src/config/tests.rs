use std::fs;
use std::os::unix::fs::PermissionsExt as _;

use super::*;

pub(crate) struct Dir(tempfile::TempDir);

impl Dir {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        fs::create_dir(&state).unwrap();
        fs::set_permissions(&state, fs::Permissions::from_mode(0o700)).unwrap();
        for file in ["server.pem", "server.key", "ca.pem"] {
            let path = dir.path().join(file);
            fs::write(&path, "x").unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        }
        Self(dir)
    }

    pub(crate) fn load(&self, text: &str) -> Result<Config, ConfigError> {
        let path = self.0.path().join("keyholder.toml");
        fs::write(&path, text).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        Config::load(&path)
    }
}

pub(crate) fn principal(name: &str, role: &str, identity: &str) -> String {
    let recipient = if role == "keyholder" {
        format!("age_recipient = \"{}\"\n", fresh_recipient())
    } else {
        String::new()
    };
    format!(
        "[[principals]]\nname = \"{name}\"\nroles = [\"{role}\"]\ncert_identity = \"{identity}\"\n{recipient}\n"
    )
}

pub(crate) fn base(threshold: i64, principals: &str) -> String {
    format!(
        "keyring = \"orders\"\nstate_dir = \"state\"\n[listen]\naddr = \"127.0.0.1:8443\"\ncert = \"server.pem\"\nkey = \"server.key\"\nclient_ca = \"ca.pem\"\n[shamir]\nthreshold = {threshold}\n{principals}"
    )
}

fn problems(result: Result<Config, ConfigError>) -> Vec<String> {
    match result {
        Err(ConfigError::Invalid { problems, .. }) => {
            problems.iter().map(ToString::to_string).collect()
        }
        Err(other) => panic!("expected problems, got {other}"),
        Ok(_) => panic!("expected problems, the config loaded"),
    }
}

#[test]
fn a_good_config_loads_with_defaults_and_keyholders_in_order() {
    let dir = Dir::new();
    let config = dir
        .load(&base(
            2,
            &[
                principal("carol", "keyholder", "carol"),
                principal("alice", "keyholder", "alice"),
                principal("db1", "database", "db1"),
            ]
            .concat(),
        ))
        .unwrap();
    let order: Vec<&str> = config.keyholders().map(|p| p.name.as_str()).collect();
    assert_eq!(order, ["carol", "alice"]);
    assert_eq!(config.progress_ttl, DEFAULT_PROGRESS_TTL);
    assert_eq!(config.sample_size, 64);
    assert!(
        matches!(&config.state, StateLocation::Dir(d) if *d == dir.0.path().join("state")),
        "{:?}",
        config.state
    );
}

#[test]
fn a_postgres_state_store_replaces_the_state_dir() {
    let dir = Dir::new();
    let principals = [
        principal("alice", "keyholder", "alice"),
        principal("bob", "keyholder", "bob"),
    ]
    .concat();
    let with_store = |store: &str| {
        base(2, &principals).replace(
            "state_dir = \"state\"",
            &format!("state_store = \"{store}\""),
        )
    };
    let config = dir
        .load(&with_store(
            "postgres://kh:pw@db.internal/state?schema=orders_ks&sslrootcert=/etc/kh/pg-ca.pem",
        ))
        .unwrap();
    match &config.state {
        StateLocation::Postgres(at) => assert_eq!(at.schema(), "orders_ks"),
        other => panic!("expected a postgres store, got {other:?}"),
    }
    assert!(!format!("{config:?}").contains("pw@"), "{config:?}");

    assert_eq!(
        problems(dir.load(&with_store("sqlite:///var/lib/state.db"))),
        ["state_store: must be a URL starting with postgres:// or postgresql://"]
    );
    assert_eq!(
        problems(dir.load(&with_store(
            "postgres://kh@db/state?schema=Orders&sslrootcert=/etc/kh/pg-ca.pem"
        ))),
        ["state_store: schema \"Orders\" must match ^[a-z_][a-z0-9_]{0,62}$"]
    );
    let both = base(2, &principals).replace(
        "state_dir = \"state\"",
        "state_dir = \"state\"\nstate_store = \"postgres://kh@db/state\"",
    );
    assert_eq!(
        problems(dir.load(&both)),
        [
            "state_store: is set together with state_dir; keep the one that holds the daemon's state and remove the other"
        ]
    );
    let neither = base(2, &principals).replace("state_dir = \"state\"\n", "");
    assert_eq!(
        problems(dir.load(&neither)),
        [
            "state_dir: is missing; set the directory (mode 0700) that holds the daemon's state, or state_store = \"postgres://...\""
        ]
    );
}

#[test]
fn the_state_dir_mode_is_not_checked_for_a_postgres_store() {
    let dir = Dir::new();
    fs::set_permissions(
        dir.0.path().join("state"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let text = base(
        2,
        &[
            principal("alice", "keyholder", "alice"),
            principal("bob", "keyholder", "bob"),
        ]
        .concat(),
    )
    .replace(
        "state_dir = \"state\"",
        "state_store = \"postgres://kh@db/state?sslmode=require\"",
    );
    assert!(dir.load(&text).is_ok());
}

#[test]
fn every_problem_is_reported_with_its_field() {
    let dir = Dir::new();
    let principals = [
        principal("alice", "keyholder", "alice"),
        principal("", "keyholder", "e"),
        principal("alice", "keyholder", "alice"),
        principal("ops", "admin", "ops"),
    ]
    .concat();
    let text = format!(
        "{}[unseal]\nprogress_ttl = \"soon\"\n[verify]\nsample_size = 0\n[[targets]]\nname = \"t\"\nstore = \"sqlite://rel.db\"\ntable = \"Customers; DROP\"\nprimary_key = \"id\"\ncolumns = []\n",
        base(1, &principals)
    );
    let found = problems(dir.load(&text));
    let expected = [
        "principals[1].name: \"\" is empty; every name must be set",
        "principals[2].name: duplicate name \"alice\"",
        "principals[2].cert_identity: \"alice\" is also the identity of \"alice\"; each certificate identity maps to one principal",
        "principals[3].roles[0]: \"admin\" is not a role; use keyholder, operator, database or node",
        "shamir.threshold: 1 is too low; a key needs at least 2 keyholders to rebuild",
        "unseal.progress_ttl: \"soon\" is not a duration; write it like \"15m\" or \"250ms\"",
        "verify.sample_size: 0 is out of range; use 1 to 100000",
        "targets[0].store: a SQLite store is an absolute path: sqlite:///abs/path.db",
        "targets[0].table: \"Customers; DROP\" must match ^[a-z_][a-z0-9_]{0,62}$",
        "targets[0].columns: is empty; name the encrypted columns",
    ];
    for e in expected {
        assert!(found.iter().any(|f| f == e), "missing {e:?} in {found:#?}");
    }
    assert_eq!(found.len(), expected.len(), "{found:#?}");
}

#[test]
fn threshold_above_keyholders_and_open_modes_are_refused() {
    let dir = Dir::new();
    fs::set_permissions(
        dir.0.path().join("state"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let found = problems(dir.load(&base(3, &principal("alice", "keyholder", "alice"))));
    assert!(found.contains(&"shamir.threshold: 3 is more than the 1 keyholder(s) configured; add keyholders or lower it".to_owned()), "{found:#?}");
    assert!(
        found.iter().any(|f| f.starts_with("state_dir: ")
            && f.ends_with("is accessible by group or others (mode 755); run chmod 700 on it")),
        "{found:#?}"
    );
}

#[test]
fn unknown_fields_are_refused_by_place_with_the_fields_allowed_there() {
    let dir = Dir::new();
    let err = dir
        .load(&format!("{}\nthresold = 2\n", base(2, "")))
        .unwrap_err()
        .to_string();
    let path = dir.0.path().join("keyholder.toml");
    assert_eq!(
        err,
        format!(
            "config {} does not parse at line 11, column 1: unknown field, expected `threshold`; fix the file there (its text is not repeated: it may hold a password)",
            path.display()
        )
    );
}

/// A line that does not parse may hold a password (a target's store URL):
/// the error says where and what kind, never the line.
#[test]
fn a_parse_error_names_the_file_line_column_and_kind_but_not_the_line() {
    let dir = Dir::new();
    let err = dir
        .load(&format!(
            "{}\n[[targets]]\nname = \"app\"\nstore = \"postgres://app:Pw-S3cret-4711@db.example/app\ntable = \"t\"\n",
            base(2, "")
        ))
        .unwrap_err();
    assert!(
        matches!(
            err,
            ConfigError::Parse {
                at: Some(Position {
                    line: 13,
                    column: 54
                }),
                ..
            }
        ),
        "{err:?}"
    );
    let path = dir.0.path().join("keyholder.toml");
    assert_eq!(
        err.to_string(),
        format!(
            "config {} does not parse at line 13, column 54: invalid basic string, expected `\"`; fix the file there (its text is not repeated: it may hold a password)",
            path.display()
        )
    );
    assert!(!format!("{err:?}").contains("S3cret"), "{err:?}");
}

/// A keyholder with the given age recipient.
fn keyholder_with(name: &str, recipient: &str) -> String {
    format!(
        "[[principals]]\nname = \"{name}\"\nroles = [\"keyholder\"]\ncert_identity = \"{name}\"\nage_recipient = \"{recipient}\"\n\n"
    )
}

fn fresh_recipient() -> String {
    age::x25519::Identity::generate().to_public().to_string()
}

#[test]
fn two_keyholders_with_one_age_recipient_are_refused() {
    let dir = Dir::new();
    let shared = fresh_recipient();
    let found = problems(
        dir.load(&base(
            2,
            &[
                keyholder_with("alice", &shared),
                keyholder_with("bob", &shared.to_uppercase()),
                keyholder_with("carol", &fresh_recipient()),
            ]
            .concat(),
        )),
    );
    assert_eq!(
        found,
        [
            "principals[1].age_recipient: is also the age recipient of \"alice\"; one identity would decrypt both shares and break the two-person rule, give each keyholder their own"
        ]
    );
}

#[test]
fn identities_are_unique_across_every_principal() {
    let dir = Dir::new();
    let found = problems(
        dir.load(&base(
            2,
            &[
                keyholder_with("alice", &fresh_recipient()),
                keyholder_with("bob", &fresh_recipient()),
                principal("ops", "operator", "alice"),
            ]
            .concat(),
        )),
    );
    assert_eq!(
        found,
        [
            "principals[2].cert_identity: \"alice\" is also the identity of \"alice\"; each certificate identity maps to one principal"
        ]
    );
}

fn two_keyholders() -> String {
    [
        keyholder_with("alice", &fresh_recipient()),
        keyholder_with("bob", &fresh_recipient()),
    ]
    .concat()
}

#[test]
fn empty_and_parent_paths_are_refused_by_name() {
    let dir = Dir::new();
    let text = base(2, &two_keyholders())
        .replace("state_dir = \"state\"", "state_dir = \"\"")
        .replace("key = \"server.key\"", "key = \"../x/server.key\"")
        .replace("client_ca = \"ca.pem\"", "client_ca = \"\"");
    assert_eq!(
        problems(dir.load(&text)),
        [
            "state_dir: is empty; set the path",
            "listen.key: \"../x/server.key\" contains \"..\"; write the path without it",
            "listen.client_ca: is empty; set the path",
        ]
    );
}

#[test]
fn files_of_another_user_are_refused_by_name() {
    let dir = Dir::new();
    let nobody = 65534;
    let key = dir.0.path().join("server.key");
    std::os::unix::fs::chown(&key, Some(nobody), None).unwrap();
    let text = base(2, &two_keyholders());
    let found = problems(dir.load(&text));
    let euid = nix::unistd::geteuid().as_raw();
    assert_eq!(
        found,
        [format!(
            "listen.key: {} is owned by uid {nobody}, not by the daemon's user (uid {euid}); chown it to that user",
            key.display()
        )]
    );
    std::os::unix::fs::chown(&key, Some(euid), None).unwrap();
    let config = dir.0.path().join("keyholder.toml");
    fs::write(&config, &text).unwrap();
    fs::set_permissions(&config, fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(&config, Some(nobody), None).unwrap();
    assert_eq!(
        problems(Config::load(&config)),
        [format!(
            "(config file): {} is owned by uid {nobody}, not by the daemon's user (uid {euid}); chown it to that user",
            config.display()
        )]
    );
}

#[test]
fn a_sqlite_target_must_exist() {
    let dir = Dir::new();
    let missing = dir.0.path().join("app.db");
    let target = |path: &str| {
        format!(
            "{}[[targets]]\nname = \"t\"\nstore = \"sqlite://{path}\"\ntable = \"customers\"\nprimary_key = \"id\"\ncolumns = [\"ssn\"]\n",
            base(2, &two_keyholders())
        )
    };
    assert_eq!(
        problems(dir.load(&target(&missing.display().to_string()))),
        [format!(
            "targets[0].store: {} does not exist or is not a file; point it at the application's database",
            missing.display()
        )]
    );
    assert_eq!(
        problems(dir.load(&target("/var/../etc/app.db"))),
        ["targets[0].store: \"/var/../etc/app.db\" contains \"..\"; write the path without it"]
    );
    fs::write(&missing, "").unwrap();
    assert_eq!(
        dir.load(&target(&missing.display().to_string()))
            .unwrap()
            .targets
            .len(),
        1
    );
}

#[test]
fn the_identity_field_is_chosen_in_the_config_and_defaults_to_the_cn() {
    use crate::transport::identity::IdentityField;
    let dir = Dir::new();
    let text = base(2, &two_keyholders());
    assert_eq!(
        dir.load(&text).unwrap().listen.identity_field,
        IdentityField::Cn
    );
    let with = |value: &str| {
        text.replace(
            "client_ca = \"ca.pem\"",
            &format!("client_ca = \"ca.pem\"\nidentity_field = \"{value}\""),
        )
    };
    assert_eq!(
        dir.load(&with("dns_san")).unwrap().listen.identity_field,
        IdentityField::DnsSan
    );
    assert_eq!(
        problems(dir.load(&with("any"))),
        ["listen.identity_field: \"any\" is not a certificate field; use \"cn\" or \"dns_san\""]
    );
}

#[test]
fn min_verified_defaults_to_one_above_the_threshold_within_the_keyholders() {
    let dir = Dir::new();
    let three = [
        two_keyholders(),
        keyholder_with("carol", &fresh_recipient()),
    ]
    .concat();
    let config = dir.load(&base(2, &three)).unwrap();
    assert_eq!(config.rotation.min_verified, 3);
    assert_eq!(config.rotation.keep_snapshots, 5);
    // Two of two: there is no spare keyholder, so all of them.
    assert_eq!(
        dir.load(&base(2, &two_keyholders()))
            .unwrap()
            .rotation
            .min_verified,
        2
    );
    let with = |n: i64| format!("{}[rotation]\nmin_verified = {n}\n", base(2, &three));
    assert_eq!(dir.load(&with(2)).unwrap().rotation.min_verified, 2);
    assert_eq!(
        problems(dir.load(&with(1))),
        [
            "rotation.min_verified: 1 is below shamir.threshold (2); fewer verified keyholders could not rebuild the new key"
        ]
    );
    assert_eq!(
        problems(dir.load(&with(4))),
        [
            "rotation.min_verified: 4 is more than the 3 keyholder(s) configured; lower it or add keyholders"
        ]
    );
    assert_eq!(
        problems(dir.load(&format!(
            "{}[rotation]\nkeep_snapshots = 0\n",
            base(2, &three)
        ))),
        ["rotation.keep_snapshots: 0 is out of range; use 1 to 1000"]
    );
}

#[test]
fn a_mysql_target_loads_and_a_password_in_its_url_is_refused_by_name() {
    let dir = Dir::new();
    let principals = [
        principal("alice", "keyholder", "alice"),
        principal("bob", "keyholder", "bob"),
    ]
    .concat();
    let target = |store: &str| {
        format!(
            "{}[[targets]]\nname = \"t\"\nstore = \"{store}\"\ntable = \"customers\"\nprimary_key = \"id\"\ncolumns = [\"ssn\"]\n",
            base(2, &principals)
        )
    };
    let config = dir
        .load(&target("mysql://app@db.example:3306/orders"))
        .unwrap();
    assert_eq!(
        config.targets[0].store().to_string(),
        "mysql://app@db.example:3306/orders?ssl-mode=VERIFY_IDENTITY"
    );
    let found = problems(dir.load(&target("mysql://app:hunter2@db.example/orders")));
    assert_eq!(
        found,
        [
            "targets[0].store: holds a password; a mysql store URL must not: put it in a file named by `password-file=/abs/path` or in the MYSQL_PWD environment variable"
        ]
    );
    let found = problems(dir.load(&target("mongodb://db.example/orders")));
    assert_eq!(
        found,
        ["targets[0].store: must start with sqlite:///, postgres:// or mysql://"]
    );
}

fn cluster_config(nodes: &str, extra_principals: &str) -> String {
    let three = ["alice", "bob", "carol"]
        .map(|n| principal(n, "keyholder", n))
        .concat();
    let pg = base(2, &format!("{three}{extra_principals}")).replace(
        "state_dir = \"state\"",
        "state_store = \"postgres://keyholder@127.0.0.1/keyholder\"",
    );
    format!(
        "{pg}[cluster]\nnode = \"kh-a\"\nlease = \"3s\"\nclient_cert = \"server.pem\"\nclient_key = \"server.key\"\nserver_ca = \"ca.pem\"\n{nodes}"
    )
}

fn node(name: &str, addr: &str) -> String {
    format!("[[cluster.nodes]]\nname = \"{name}\"\naddr = \"{addr}\"\n")
}

#[test]
fn a_cluster_names_its_nodes_and_each_is_a_node_principal() {
    let dir = Dir::new();
    let nodes = ["kh-a", "kh-b", "kh-c"];
    let principals = nodes.map(|n| principal(n, "node", n)).concat();
    let listed = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| node(n, &format!("127.0.0.1:{}", 8443 + i)))
        .collect::<String>();
    let config = dir.load(&cluster_config(&listed, &principals)).unwrap();
    let cluster = config.cluster.unwrap();
    assert_eq!(cluster.node, "kh-a");
    assert_eq!(cluster.lease, Duration::from_secs(3));
    assert_eq!(
        cluster.peers().map(|n| n.name.as_str()).collect::<Vec<_>>(),
        ["kh-b", "kh-c"]
    );
    assert!(cluster.has_node("kh-c") && !cluster.has_node("kh-d"));
}

#[test]
fn a_cluster_refuses_a_state_dir_strangers_and_bad_addresses_by_name() {
    let dir = Dir::new();
    let principals = [
        principal("kh-a", "node", "kh-a"),
        principal("kh-b", "database", "kh-b"),
    ]
    .concat();
    let on_sqlite = cluster_config(
        &format!(
            "{}{}",
            node("kh-b", "127.0.0.1:8444"),
            node("kh-b", "https://x/y")
        ),
        &principals,
    )
    .replace(
        "state_store = \"postgres://keyholder@127.0.0.1/keyholder\"",
        "state_dir = \"state\"",
    );
    assert_eq!(
        problems(dir.load(&on_sqlite)),
        [
            "cluster: needs state_store = \"postgres://...\": the nodes of a cluster share one PostgreSQL state store, never a state_dir",
            "cluster.nodes[0].name: \"kh-b\" is not a principal with the node role; add [[principals]] name = \"kh-b\", roles = [\"node\"] with its client certificate's identity",
            "cluster.nodes[1].name: duplicate node \"kh-b\"",
            "cluster.nodes[1].name: \"kh-b\" is not a principal with the node role; add [[principals]] name = \"kh-b\", roles = [\"node\"] with its client certificate's identity",
            "cluster.nodes[1].addr: \"https://x/y\" is not host:port; write it like \"kh-a.internal:8443\" (no scheme, no path)",
            "cluster.node: \"kh-a\" is not one of cluster.nodes; list this node there too",
        ]
    );
    let lone = base(
        2,
        &[
            principal("alice", "keyholder", "alice"),
            principal("bob", "keyholder", "bob"),
            principal("kh-a", "node", "kh-a"),
        ]
        .concat(),
    );
    assert_eq!(
        problems(dir.load(&lone)),
        [
            "principals: \"kh-a\" has the node role but there is no [cluster]; remove the role or configure the cluster"
        ]
    );
    let mixed = base(
        2,
        &[
            principal("alice", "keyholder", "alice"),
            principal("bob", "keyholder", "bob"),
        ]
        .concat(),
    ) + "[[principals]]\nname = \"kh-a\"\nroles = [\"node\", \"operator\"]\ncert_identity = \"kh-a\"\n";
    assert!(
        problems(dir.load(&mixed)).contains(&"principals[2].roles: gives node with other roles; a node is a keyholderd of the cluster, not a person or a database: give it the node role alone".to_owned())
    );
}

/// Everything a node tells a peer goes to the address listed for it: two
/// nodes at one address would have one of them miss every relay,
/// withdrawal and seal notice meant for it.
#[test]
fn two_nodes_at_one_address_are_refused_by_name() {
    let dir = Dir::new();
    let principals = ["kh-a", "kh-b", "kh-c"]
        .map(|n| principal(n, "node", n))
        .concat();
    let listed = [
        node("kh-a", "kh-a.internal:8443"),
        node("kh-b", "kh-b.internal:8443"),
        node("kh-c", "KH-B.internal:8443"),
    ]
    .concat();
    assert_eq!(
        problems(dir.load(&cluster_config(&listed, &principals))),
        [
            "cluster.nodes[2].addr: \"KH-B.internal:8443\" is also the address of kh-b (cluster.nodes[1]); each node is reached at its own address: what this node tells kh-c (relayed shares, withdrawals, seal notices) would reach kh-b instead"
        ]
    );
}

/// A node whose config names it after another node (copied from that
/// node's) would renew that node's lease as its own and lead beside it: its
/// client certificate must be the one of `cluster.node`.
#[test]
fn a_cluster_node_presents_its_own_certificate() {
    let dir = Dir::new();
    let nodes = ["kh-a", "kh-b"];
    let principals = nodes.map(|n| principal(n, "node", n)).concat();
    let listed = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| node(n, &format!("127.0.0.1:{}", 8443 + i)))
        .collect::<String>();
    let with_cert = |cn: &str| {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let key = rcgen::KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        fs::write(dir.0.path().join("node.pem"), pem).unwrap();
        cluster_config(&listed, &principals)
            .replace("client_cert = \"server.pem\"", "client_cert = \"node.pem\"")
    };
    assert_eq!(
        problems(dir.load(&with_cert("kh-b"))),
        [
            "cluster.client_cert: the certificate's common name (CN) is \"kh-b\", the cert_identity of \"kh-b\", but cluster.node is \"kh-a\" (cert_identity \"kh-a\"): the peers would take this node for kh-b, and a node named after another one holds the lease beside it; set cluster.node to the name of the node this certificate is for, or point client_cert at kh-a's certificate"
        ]
    );
    assert_eq!(
        problems(dir.load(&with_cert("kh-x"))),
        [
            "cluster.client_cert: the certificate's common name (CN) is \"kh-x\", no principal's cert_identity, but cluster.node is \"kh-a\" (cert_identity \"kh-a\"): the peers would refuse this node's calls; set cluster.node to the name of the node this certificate is for, or point client_cert at kh-a's certificate"
        ]
    );
    let config = dir.load(&with_cert("kh-a")).unwrap();
    assert_eq!(config.cluster.unwrap().node, "kh-a");
}

#[test]
fn usage_limits_may_only_be_lowered() {
    let dir = Dir::new();
    let keyholders = two_keyholders();
    let with = |usage: &str| format!("{}[usage]\n{usage}", base(2, &keyholders));
    let config = dir.load(&base(2, &keyholders)).unwrap();
    assert_eq!(
        config.usage,
        UsageLimits {
            warn_at: 1 << 31,
            limit: 1 << 32
        }
    );
    let lowered = dir.load(&with("warn_at = 100\nlimit = 200\n")).unwrap();
    assert_eq!(
        lowered.usage,
        UsageLimits {
            warn_at: 100,
            limit: 200
        }
    );
    // A lowered limit alone warns at its half, as 2^31 is of 2^32.
    assert_eq!(
        dir.load(&with("limit = 1000\n")).unwrap().usage.warn_at,
        500
    );
    assert_eq!(
        problems(dir.load(&with("warn_at = 2147483649\nlimit = 4294967297\n"))),
        [
            "usage.limit: 4294967297 is above 2^32 (4294967296); this setting may only lower the limit, never raise it past what AES-GCM with random nonces allows",
            "usage.warn_at: 2147483649 is above 2^31 (2147483648); this setting may only lower the limit, never raise it past what AES-GCM with random nonces allows",
        ]
    );
    assert_eq!(
        problems(dir.load(&with("warn_at = 300\nlimit = 200\n"))),
        ["usage.warn_at: 300 is not below usage.limit (200); the warning must come first"]
    );
    assert_eq!(
        problems(dir.load(&with("limit = 0\n"))),
        ["usage.limit: 0 is below 1; a limit counts encryptions"]
    );
}

#[test]
fn a_principal_holds_a_quarter_of_the_connections_by_default_and_never_all_of_them() {
    let dir = Dir::new();
    let listen = |extra: &str| {
        base(2, &two_keyholders()).replacen(
            "client_ca = \"ca.pem\"\n",
            &format!("client_ca = \"ca.pem\"\n{extra}"),
            1,
        )
    };
    let default = dir.load(&listen("")).unwrap();
    assert_eq!(default.listen.max_connections, 256);
    assert_eq!(default.listen.max_connections_per_principal, 64);
    let small = dir.load(&listen("max_connections = 3\n")).unwrap();
    assert_eq!(small.listen.max_connections_per_principal, 1);
    let set = dir
        .load(&listen(
            "max_connections = 16\nmax_connections_per_principal = 15\n",
        ))
        .unwrap();
    assert_eq!(set.listen.max_connections_per_principal, 15);
    assert_eq!(
        problems(dir.load(&listen(
            "max_connections = 16\nmax_connections_per_principal = 16\n"
        ))),
        [
            "listen.max_connections_per_principal: 16 is not below listen.max_connections (16); one principal must not be able to take every connection, lower it (the default is a quarter of max_connections)"
        ]
    );
    assert_eq!(
        problems(dir.load(&listen("max_connections_per_principal = 0\n"))),
        [
            "listen.max_connections_per_principal: 0 is below 1; a principal needs a connection to call the API"
        ]
    );
}

#[test]
fn reencrypt_workers_default_to_one_and_are_checked() {
    let dir = Dir::new();
    let principals = [
        principal("alice", "keyholder", "alice"),
        principal("bob", "keyholder", "bob"),
    ]
    .concat();
    let with =
        |workers: &str| format!("{}[reencrypt]\nworkers = {workers}\n", base(2, &principals));
    assert_eq!(
        dir.load(&base(2, &principals)).unwrap().reencrypt.workers,
        1
    );
    assert_eq!(dir.load(&with("2")).unwrap().reencrypt.workers, 2);
    assert_eq!(dir.load(&with("16")).unwrap().reencrypt.workers, 16);
    assert_eq!(
        problems(dir.load(&with("0"))),
        ["reencrypt.workers: 0 is out of range; use 1 to 16"]
    );
    assert_eq!(
        problems(dir.load(&with("17"))),
        ["reencrypt.workers: 17 is out of range; use 1 to 16"]
    );
    let quoted = dir.load(&with("\"2\"")).unwrap_err().to_string();
    assert!(
        quoted.contains("at line 23, column 11: invalid type: string, expected i64"),
        "{quoted}"
    );
}
