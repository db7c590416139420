//! The end-to-end harness of keyholder: a throwaway PKI, a config, the real
//! `keyholderd` as a child process on a loopback port, and a small mTLS
//! client for its API.
//!
//! The daemon binary is found next to the test executable's directory
//! (`target/debug/keyholderd`): build it first (`cargo build -p
//! keyholder-server`, as `deploy/test.sh` does) before running these tests.
#![forbid(unsafe_code)]

pub mod client;
pub mod cluster;
pub mod daemon;
pub mod mysql;
pub mod pg;
pub mod pg_instance;
pub mod pki;
pub mod proxy;
pub mod records;
pub mod rotation;
pub mod secrets;

pub use client::Client;
pub use cluster::ClusterEnv;
pub use daemon::{Daemon, Env, EnvOptions, TargetSpec};
pub use pki::Pki;
pub use records::Table;
