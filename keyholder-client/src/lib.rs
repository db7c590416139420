//! keyholder's client side: the `keyholder` CLI and the typed client library
//! ([`client::Client`]) it — and the end-to-end tests — use to talk to
//! keyholderd over mutual TLS.
//!
//! Secrets handled here — decrypted share lines, passphrases, the hook's
//! keyring — stay in zeroizing buffers and never reach argv, a log or an
//! error; only the hook prints the keyring (that is its purpose), and only
//! `recover` writes a key (mode 0600, to a new file the user names).
#![forbid(unsafe_code)]

pub mod cli;
pub mod client;
pub mod error;
pub mod files;
pub mod hook;
pub mod identity;
pub mod manual;
pub mod pki;
pub mod recover;
pub mod render;
pub mod run;
