//! A cluster of keyholderd nodes for one test: the [`Env`] of the first
//! node (its PKI, its PostgreSQL state store, `keyholderd init` done once),
//! and one config per node that adds the `node` principals and `[cluster]`
//! with its own name and listen address. Every node shares the server
//! certificate (`localhost`, `127.0.0.1`) and the CA.

use std::fs;
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use keyholder_api::{AuditEntry, AuditLog, Status};

use crate::client::Client;
use crate::daemon::{Daemon, Env, EnvOptions, OPERATOR, binary, free_addr, strip_ansi};

/// One node: its name, address, config and log.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    /// Its name (`kh-a`, `kh-b`, ...), a principal with the node role.
    pub name: String,
    /// Its API address.
    pub addr: SocketAddr,
    /// Its config file.
    pub config: PathBuf,
    /// Its stderr log (appended across restarts).
    pub log: PathBuf,
}

/// The nodes' names, in config order.
pub const NODE_NAMES: [&str; 5] = ["kh-a", "kh-b", "kh-c", "kh-d", "kh-e"];

/// A test cluster.
pub struct ClusterEnv {
    /// The first node's environment (PKI, share files, state store).
    pub env: Env,
    /// Every node.
    pub nodes: Vec<NodeSpec>,
}

impl ClusterEnv {
    /// `count` nodes (2..=5) on `options.state_store` (a `postgres://`
    /// URL; required), with a lease of `lease` (`"2s"`). `extra_principals`
    /// is more `[[principals]]` TOML every node's config gets (a node
    /// principal outside the cluster, say).
    pub fn new(count: usize, lease: &str, options: EnvOptions, extra_principals: &str) -> Self {
        assert!((2..=5).contains(&count), "a cluster has 2 to 5 nodes");
        assert!(
            options.state_store.is_some(),
            "a cluster needs a PostgreSQL state store"
        );
        let env = Env::new(options);
        let base = fs::read_to_string(&env.config).unwrap();
        let names = &NODE_NAMES[..count];
        // Distinct (free_addr never repeats a port in one test): a node
        // started on its peer's address would find it answering (the same
        // CA) while its own daemon exits.
        let addrs: Vec<SocketAddr> = (0..count)
            .map(|i| if i == 0 { env.addr } else { free_addr() })
            .collect();
        let mut principals = String::new();
        for name in names {
            env.pki.client(name);
            principals.push_str(&format!(
                "\n[[principals]]\nname = \"{name}\"\nroles = [\"node\"]\ncert_identity = \"{name}\"\n"
            ));
        }
        principals.push_str(extra_principals);
        let listed: String = names
            .iter()
            .zip(&addrs)
            .map(|(name, addr)| {
                format!("\n[[cluster.nodes]]\nname = \"{name}\"\naddr = \"{addr}\"\n")
            })
            .collect();
        let root = env.tmp.path().to_owned();
        let nodes = names
            .iter()
            .zip(&addrs)
            .map(|(name, addr)| {
                let files = env.pki.client(name);
                // `[[principals]]` may follow any table in TOML: the node
                // principals are appended to the first node's config.
                let text = base
                    .replacen(
                        &format!("addr = \"{}\"", env.addr),
                        &format!("addr = \"{addr}\""),
                        1,
                    )
                    + &principals
                    + &format!(
                        "\n[cluster]\nnode = \"{name}\"\nlease = \"{lease}\"\nclient_cert = \"{}\"\nclient_key = \"{}\"\nserver_ca = \"{}\"\n{listed}",
                        files.cert.display(),
                        files.key.display(),
                        env.pki.ca_pem.display()
                    );
                let config = root.join(format!("{name}.toml"));
                let mut file = fs::File::create(&config).unwrap();
                file.write_all(text.as_bytes()).unwrap();
                fs::set_permissions(&config, fs::Permissions::from_mode(0o600)).unwrap();
                NodeSpec {
                    name: (*name).to_owned(),
                    addr: *addr,
                    config,
                    log: root.join(format!("{name}.log")),
                }
            })
            .collect();
        Self { env, nodes }
    }

    /// Starts node `i` and waits until it answers.
    pub async fn start(&self, i: usize) -> Daemon {
        let node = &self.nodes[i];
        self.env
            .start_node(&node.config, node.addr, &node.log)
            .await
    }

    /// A client of node `i` with principal `name`'s certificate.
    pub fn client(&self, i: usize, name: &str) -> Client {
        Client::new(
            self.nodes[i].addr,
            &self.env.pki.ca_pem,
            Some(&self.env.pki.client(name)),
        )
    }

    /// Every node's address, comma-separated, as `KEYHOLDER_ADDR` takes them.
    pub fn addrs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.addr.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The real `keyholder` CLI as principal `name`, given every node's
    /// address.
    pub fn keyholder_cli(&self, name: &str) -> Command {
        let files = self.env.pki.client(name);
        let mut command = Command::new(binary("keyholder"));
        command
            .env("KEYHOLDER_ADDR", self.addrs())
            .env("KEYHOLDER_CACERT", &self.env.pki.ca_pem)
            .env("KEYHOLDER_CLIENT_CERT", &files.cert)
            .env("KEYHOLDER_CLIENT_KEY", &files.key)
            .env_remove("KEYHOLDER_IDENTITY")
            .stdin(Stdio::null());
        command
    }

    /// Everything node `i` logged so far.
    pub fn log_text(&self, i: usize) -> String {
        strip_ansi(&fs::read_to_string(&self.nodes[i].log).unwrap_or_default())
    }

    /// Node `i`'s status, read as the operator; panics unless it answers.
    pub async fn status(&self, i: usize) -> Status {
        let answer = self.client(i, OPERATOR).get("/v1/status").await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        answer.json()
    }

    /// Polls node `i`'s status until `done` holds; panics after `timeout`
    /// with the status and the node's log.
    pub async fn wait_for(
        &self,
        i: usize,
        what: &str,
        timeout: Duration,
        done: impl Fn(&Status) -> bool,
    ) -> Status {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status(i).await;
            if done(&status) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} never {what}: {status:?}\n{}",
                self.nodes[i].name,
                self.log_text(i)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The whole audit log, read from node 0 as the operator.
    pub async fn audit(&self) -> Vec<AuditEntry> {
        let mut entries = Vec::new();
        let mut since = 0;
        loop {
            let page: AuditLog = self
                .client(0, OPERATOR)
                .get(&format!("/v1/audit?since={since}&limit=1000"))
                .await
                .json();
            entries.extend(page.entries);
            since = page.next_since;
            if !page.more {
                return entries;
            }
        }
    }
}
