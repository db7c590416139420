//! keyholderd: the sealed key daemon.
//!
//! The parts, in the order a request meets them: [`config`] (the validated
//! TOML), `transport` (TLS, client identity), `api` (thin handlers), the
//! [`seal`] and [`rotation`] state machines (pure), [`verify`] (proving keys
//! on real records) and [`store`] (the persisted state behind a trait).
#![forbid(unsafe_code)]

pub mod api;
pub mod audit;
pub mod check;
pub mod config;
pub mod daemon;
pub mod hygiene;
pub mod init;
pub mod manual;
pub mod metrics;
pub mod principal;
pub mod rotation;
pub mod run;
pub mod seal;
pub mod store;
pub mod submissions;
pub mod transport;
pub mod vault;
pub mod verify;
