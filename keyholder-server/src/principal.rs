//! Principals: the configured people and hosts that may call the daemon, and
//! their roles.
//!
//! A principal is resolved once per TLS connection from its verified client
//! certificate (see `transport::identity`) and handed to handlers; handlers
//! only ask it for a role, they never look at a certificate.

use core::fmt;
use std::collections::BTreeSet;

/// What a principal may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Holds shares: unseals, fetches and verifies new shares.
    Keyholder,
    /// Runs the daemon: seal, rotation, audit.
    Operator,
    /// A database host: fetches the keyring through the hook.
    Database,
    /// Another keyholderd of the same cluster (`[cluster]`): relays shares
    /// and seals, and takes the keyring from an unsealed peer.
    Node,
}

impl Role {
    /// The name used in the config and in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Keyholder => "keyholder",
            Self::Operator => "operator",
            Self::Database => "database",
            Self::Node => "node",
        }
    }

    /// Parses a role name as written in the config.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "keyholder" => Some(Self::Keyholder),
            "operator" => Some(Self::Operator),
            "database" => Some(Self::Database),
            "node" => Some(Self::Node),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One configured principal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// Its unique name (`alice`).
    pub name: String,
    /// Its roles, never empty.
    pub roles: BTreeSet<Role>,
    /// The CN or DNS SAN its client certificate carries.
    pub cert_identity: String,
    /// Its age recipient (keyholders only): shares are encrypted to it.
    pub age_recipient: Option<String>,
}

impl Principal {
    /// Whether it holds `role`.
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// Its roles as `keyholder, operator`, or `no role`.
    pub fn roles_text(&self) -> String {
        if self.roles.is_empty() {
            return "no role".to_owned();
        }
        self.roles
            .iter()
            .map(|r| r.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}
