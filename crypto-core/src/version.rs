//! Key versions: numbers, never strings.
//!
//! The 2023 outage behind this project came from ordering "v10" before "v9".
//! A [`KeyVersion`] is a `u32` whose `Ord` is numeric; it is parsed strictly
//! and displayed as `v<n>`.

use core::fmt;
use core::str::FromStr;

use crate::Error;

/// The largest version number accepted (2^31).
const MAX_VERSION: u32 = 1 << 31;

/// One version of a keyring's key, ordered numerically.
///
/// Parses `v10`, `V10` and `10`. Refuses the empty string, a bare `v`, signs,
/// leading zeros (`v010`), whitespace, `0` and anything over 2^31.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct KeyVersion(u32);

impl KeyVersion {
    /// Builds a version from its number, refusing 0 and numbers over 2^31.
    pub fn new(number: u32) -> Result<Self, Error> {
        if number == 0 || number > MAX_VERSION {
            return Err(Error::InvalidVersion {
                input: number.to_string(),
                reason: "must be between 1 and 2147483648",
            });
        }
        Ok(Self(number))
    }

    /// The version number.
    pub fn number(self) -> u32 {
        self.0
    }

    /// The next version, if there is one.
    pub fn next(self) -> Result<Self, Error> {
        Self::new(self.0.saturating_add(1))
    }

    /// Parses the digits of a version, without any `v` prefix.
    pub(crate) fn parse_digits(input: &str, shown: &str) -> Result<Self, Error> {
        let refuse = |reason| Error::InvalidVersion {
            input: Error::excerpt(shown),
            reason,
        };
        if input.is_empty() {
            return Err(refuse("has no digits"));
        }
        if !input.bytes().all(|b| b.is_ascii_digit()) {
            return Err(refuse("must be digits after an optional `v`"));
        }
        if input.len() > 1 && input.starts_with('0') {
            return Err(refuse("has a leading zero"));
        }
        let number: u32 = input
            .parse()
            .map_err(|_| refuse("is larger than 2147483648"))?;
        if number == 0 {
            return Err(refuse("must be 1 or more"));
        }
        if number > MAX_VERSION {
            return Err(refuse("is larger than 2147483648"));
        }
        Ok(Self(number))
    }
}

impl FromStr for KeyVersion {
    type Err = Error;

    fn from_str(input: &str) -> Result<Self, Error> {
        let digits = input
            .strip_prefix('v')
            .or_else(|| input.strip_prefix('V'))
            .unwrap_or(input);
        Self::parse_digits(digits, input)
    }
}

impl fmt::Display for KeyVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

impl serde::Serialize for KeyVersion {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u32(self.0)
    }
}

impl<'de> serde::Deserialize<'de> for KeyVersion {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let number = u32::deserialize(deserializer)?;
        KeyVersion::new(number).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_three_spellings() {
        for input in ["v10", "V10", "10"] {
            assert_eq!(input.parse::<KeyVersion>().unwrap().number(), 10);
        }
        assert_eq!(
            "v2147483648".parse::<KeyVersion>().unwrap().number(),
            1 << 31
        );
    }

    #[test]
    fn refuses_everything_else_by_reason() {
        let cases = [
            ("", "has no digits"),
            ("v", "has no digits"),
            ("V", "has no digits"),
            ("+10", "must be digits after an optional `v`"),
            ("-1", "must be digits after an optional `v`"),
            ("v-1", "must be digits after an optional `v`"),
            ("v010", "has a leading zero"),
            ("00", "has a leading zero"),
            (" v10", "must be digits after an optional `v`"),
            ("v10 ", "must be digits after an optional `v`"),
            ("v 10", "must be digits after an optional `v`"),
            ("v1_0", "must be digits after an optional `v`"),
            ("vv10", "must be digits after an optional `v`"),
            ("v0", "must be 1 or more"),
            ("v2147483649", "is larger than 2147483648"),
            ("v99999999999999999999", "is larger than 2147483648"),
            ("v١٠", "must be digits after an optional `v`"),
        ];
        for (input, reason) in cases {
            match input.parse::<KeyVersion>() {
                Err(Error::InvalidVersion { reason: got, .. }) => {
                    assert_eq!(got, reason, "input {input:?}")
                }
                other => panic!("input {input:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn orders_numerically_and_displays_with_v() {
        let v9: KeyVersion = "v9".parse().unwrap();
        let v10: KeyVersion = "v10".parse().unwrap();
        assert!(v9 < v10);
        assert_eq!(v10.to_string(), "v10");
        assert_eq!(
            "v010".parse::<KeyVersion>().unwrap_err().to_string(),
            "`v010` is not a key version: has a leading zero"
        );
    }
}
