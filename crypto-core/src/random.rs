//! Randomness for nonces, keys, split ids and the Shamir polynomials'
//! coefficients, straight from the operating system.
//!
//! Owns one rule: never a generator kept in the process. Such a generator
//! (rand's `ThreadRng`, say) is copied by `fork`: every child of a process
//! that encrypted once would draw the same nonces under the same key, and a
//! repeated AES-GCM nonce gives away the XOR of two plaintexts and lets
//! records be forged. The kernel's generator is never copied.

use rand::TryRng as _;

/// Fills `bytes` from the operating system's generator. Panics only when
/// the system gives no randomness at all, when nothing could be encrypted
/// or generated safely anyway (the message carries no secret).
pub(crate) fn fill(bytes: &mut [u8]) {
    rand::rngs::SysRng
        .try_fill_bytes(bytes)
        .expect("the operating system's random number generator failed");
}

/// The operating system's generator as the `CryptoRng` the Shamir engine
/// draws its polynomials' coefficients from. Panics as [`fill`] does.
pub(crate) fn os_rng() -> impl rand::CryptoRng {
    rand::rand_core::UnwrapErr(rand::rngs::SysRng)
}
