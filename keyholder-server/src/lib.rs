//! keyholderd: the sealed key daemon.
//!
//! The parts, in the order a request meets them: [`config`] (the validated
//! TOML), `transport` (TLS, client identity), `api` (thin handlers),
//! [`daemon`] and [`rotation`] (the I/O around the pure state machines of
//! `keyholder-core`), [`verify`] (fetching the records that prove keys) and
//! [`store`] (the persisted state behind a trait).
#![forbid(unsafe_code)]

pub mod api;
pub mod audit;
pub mod check;
pub mod config;
pub mod daemon;
pub mod exit;
pub mod hygiene;
pub mod init;
pub mod metrics;
pub mod principal;
pub mod rotation;
pub mod run;
pub mod store;
pub mod submissions;
pub mod transport;
pub mod vault;
pub mod verify;
