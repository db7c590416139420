//! The API version exchange: both sides send their version and refuse an
//! incompatible peer with a message naming both.

use core::fmt;

/// The API version this build speaks. A minor version may add fields to
/// responses (clients ignore fields they do not know) and optional fields to
/// requests; requests stay strict, so an unknown request field is refused.
pub const API_VERSION: &str = "1.9.0";

/// The header that carries it on every request and response.
pub const API_VERSION_HEADER: &str = "keyholder-api-version";

/// A peer speaks an API this build cannot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncompatibleVersion {
    /// What the peer sent (or `None` when it sent nothing usable).
    pub peer: Option<String>,
}

impl fmt::Display for IncompatibleVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.peer {
            Some(peer) => write!(
                f,
                "the peer speaks keyholder API {peer}, this build speaks {API_VERSION}; upgrade the older side"
            ),
            None => write!(
                f,
                "the peer sent no usable `{API_VERSION_HEADER}` header; it is not keyholder {API_VERSION} or compatible"
            ),
        }
    }
}

impl std::error::Error for IncompatibleVersion {}

/// Accepts a peer with the same major version (and the same minor while the
/// major is 0), as semver promises.
pub fn check_compatible(peer: Option<&str>) -> Result<(), IncompatibleVersion> {
    let ours = semver::Version::parse(API_VERSION).expect("API_VERSION is semver");
    let refuse = || IncompatibleVersion {
        peer: peer.map(str::to_owned),
    };
    let theirs = peer
        .and_then(|p| semver::Version::parse(p.trim()).ok())
        .ok_or(IncompatibleVersion { peer: None })?;
    let requirement = if ours.major == 0 {
        semver::VersionReq::parse(&format!("^0.{}", ours.minor))
    } else {
        semver::VersionReq::parse(&format!("^{}", ours.major))
    }
    .expect("a caret requirement parses");
    if requirement.matches(&theirs) {
        Ok(())
    } else {
        Err(refuse())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_major_is_compatible_and_others_are_named() {
        assert!(check_compatible(Some("1.0.0")).is_ok());
        assert!(check_compatible(Some("1.7.2")).is_ok());
        let err = check_compatible(Some("2.0.0")).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "the peer speaks keyholder API 2.0.0, this build speaks {API_VERSION}; upgrade the older side"
            )
        );
        assert_eq!(check_compatible(None).unwrap_err().peer, None);
        assert_eq!(check_compatible(Some("one")).unwrap_err().peer, None);
    }
}
