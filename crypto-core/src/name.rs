//! Identifiers that must never be empty or defaulted (the Turso lesson).

use core::fmt;
use core::str::FromStr;

use crate::Error;

/// The name of one keyring: `[a-z0-9-]{1,64}`, not starting or ending with `-`.
///
/// Every KCV, fingerprint and share line carries it, so a share or a record of
/// one keyring can never be used with another.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct KeyringId(String);

impl KeyringId {
    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Checks `input` against `[a-z0-9-]{1,64}` without leading or trailing `-`;
/// returns the reason when it does not match.
pub(crate) fn check_name(input: &str) -> Result<(), &'static str> {
    if input.is_empty() {
        return Err("is empty");
    }
    if input.len() > 64 {
        return Err("is longer than 64 characters");
    }
    if !input
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err("may hold only a-z, 0-9 and -");
    }
    if input.starts_with('-') || input.ends_with('-') {
        return Err("may not start or end with -");
    }
    Ok(())
}

impl FromStr for KeyringId {
    type Err = Error;

    fn from_str(input: &str) -> Result<Self, Error> {
        check_name(input).map_err(|reason| Error::InvalidKeyringId {
            input: Error::excerpt(input),
            reason,
        })?;
        Ok(Self(input.to_owned()))
    }
}

impl fmt::Display for KeyringId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl serde::Serialize for KeyringId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for KeyringId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_empty_and_odd_names() {
        for bad in [
            "",
            "Orders",
            "or ders",
            "-orders",
            "orders-",
            "ör",
            &"a".repeat(65),
        ] {
            assert!(bad.parse::<KeyringId>().is_err(), "{bad:?}");
        }
        assert_eq!(
            "orders-eu-1".parse::<KeyringId>().unwrap().as_str(),
            "orders-eu-1"
        );
    }
}
