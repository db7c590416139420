//! The key material of keyholder, with no I/O.
//!
//! This crate owns the formats every other part relies on: numeric
//! [`KeyVersion`]s, the version-prefixed AES-256-GCM [`envelope`], the
//! [`Keyring`] the database side encrypts and decrypts with, the key check
//! value ([`Kcv`]) and checked Shamir [`Share`]s.
//!
//! It never reads a file, a socket or the clock, and never formats secret bytes
//! into an error or a `Debug` string: the only place a key leaves as text is the
//! hook hand-over ([`HookHandover`]), which is named so.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod error;
mod handover;
mod kcv;
mod key;
mod keyring;
mod locked;
mod name;
mod random;
mod shamir;
mod share;
mod version;

pub mod envelope;

pub use error::Error;
pub use handover::{HandoverKey, HookHandover};
pub use kcv::Kcv;
pub use key::Key;
pub use keyring::{Keyring, NONCE_HARD_LIMIT, NONCE_WARN_LIMIT};
pub use locked::{MemoryLockReport, memory_lock_report};
pub use name::KeyringId;
pub use shamir::{SplitOutcome, combine, split};
pub use share::{SetId, Share, ShareFingerprint, parse_share_file};
pub use version::KeyVersion;

/// The result type of this crate.
pub type Result<T, E = Error> = core::result::Result<T, E>;
