//! keyholder's client side: the `keyholder` CLI and the typed client library
//! it (and the end-to-end tests) use to talk to keyholderd over mutual TLS.
//!
//! Secrets handled here — decrypted share lines, passphrases, the hook's
//! keyring — stay in zeroizing buffers, never reach argv, a log or stdout
//! (except the hook hand-over, which is its purpose), and are never written
//! to disk in the clear.
#![forbid(unsafe_code)]

pub mod cli;
pub mod error;
pub mod files;
pub mod pki;
pub mod run;
