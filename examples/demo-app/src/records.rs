//! The demo table, its synthetic values and its associated-data rule.
//!
//! Values are a pure function of (column, id), so any reader can tell a value
//! that decrypted but is wrong (a ciphertext moved between rows would already
//! fail its associated data). They look like an SSN and a card number but are
//! made up, and are never printed.

use sha2::{Digest, Sha256};

/// The table, as the daemon's target names it.
pub const TABLE: &str = "customers";
/// The encrypted columns, in the order they are stored and digested.
pub const COLUMNS: [&str; 2] = ["ssn", "card"];

/// The associated data of one value: `customers/<column>/<id>`.
pub fn aad(column: &str, id: i64) -> String {
    format!("{TABLE}/{column}/{id}")
}

/// The synthetic plaintext of one value.
pub fn plaintext(column: &str, id: i64) -> String {
    let seed = Sha256::new()
        .chain_update(b"keyholder demo\0")
        .chain_update(column.as_bytes())
        .chain_update(id.to_be_bytes())
        .finalize();
    let digits: String = seed
        .iter()
        .map(|byte| char::from(b'0' + byte % 10))
        .collect();
    match column {
        "ssn" => format!("{}-{}-{}", &digits[0..3], &digits[3..5], &digits[5..9]),
        _ => format!(
            "{} {} {} {}",
            &digits[0..4],
            &digits[4..8],
            &digits[8..12],
            &digits[12..16]
        ),
    }
}
