//! Nothing: the package holds `tests/fork.rs`, which calls `fork()` (unsafe)
//! and so cannot live in a crate under the workspace's `unsafe_code =
//! "forbid"`.
#![forbid(unsafe_code)]
