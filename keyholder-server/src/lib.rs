//! keyholderd: the sealed key daemon.
//!
//! The parts, in the order a request meets them: [`config`] (the validated
//! TOML), [`transport`] (TLS, client identity), `api` (thin handlers),
//! `daemon` (seal, unseal, the keyring hand-over) and `rotation` (the
//! orchestrator task that owns the rotation machine), both doing the I/O
//! around the pure state machines of `keyholder-core`, `verify` (fetching
//! the records that prove keys) and [`store`] (the persisted state behind a
//! trait). docs/architecture.md draws the arrows between them.
//!
//! Public only what the `keyholderd` binary, the fuzz targets and the store
//! tests use; the rest is `pub(crate)`.
#![forbid(unsafe_code)]

pub(crate) mod api;
pub(crate) mod audit;
pub mod check;
pub mod cluster;
pub mod config;
pub(crate) mod daemon;
pub mod exit;
pub mod hygiene;
pub mod init;
pub mod manual;
pub(crate) mod metrics;
pub mod principal;
pub(crate) mod reload;
pub(crate) mod rotation;
pub mod run;
pub mod store;
pub(crate) mod submissions;
pub mod transport;
pub(crate) mod usage;
pub(crate) mod vault;
pub(crate) mod verify;
