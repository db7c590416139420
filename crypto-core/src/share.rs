//! The share line: one Shamir share of one version's key as one
//! copy-paste-safe line of text, and the fingerprint the daemon keeps of it.
//!
//! ```text
//! khs1 keyring=orders version=v10 set=<32 hex> threshold=2 count=3 index=3 data=<base64url> check=<8 hex>
//! ```
//!
//! Parsing is strict: fields in this order, single spaces, canonical numbers,
//! and the checksum verified before any field is trusted. A share's bytes are
//! only ever shown by [`Share::to_line`], which returns a zeroizing string.

use core::fmt;
use core::str::FromStr;

use base64::Engine as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::{Error, KeyVersion, KeyringId};

const BASE64URL: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;
const CHECK_MARK: &str = " check=";

/// The length of a share's data: one GF(256) evaluation per key byte.
const DATA_LEN: usize = 32;

/// Identifies one split of one version: a re-split gets a new set, so shares
/// of two splits can never be mixed.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct SetId([u8; 16]);

impl SetId {
    /// A fresh random set id.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 16];
        crate::random::fill(&mut bytes);
        Self(bytes)
    }

    /// Lowercase hex, 32 characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub(crate) fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for SetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl FromStr for SetId {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        Ok(Self(parse_lower_hex(text, "set")?))
    }
}

/// Decodes exactly `N` bytes of lowercase hex, naming `field` when it fails.
fn parse_lower_hex<const N: usize>(text: &str, field: &'static str) -> Result<[u8; N], Error> {
    let malformed = |reason: String| Error::MalformedShare { field, reason };
    if text.len() != 2 * N {
        return Err(malformed(format!(
            "must be {} hex characters, found {}",
            2 * N,
            text.len()
        )));
    }
    if !text
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(malformed("must be lowercase hex".to_owned()));
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(text, &mut out)
        .map_err(|_| malformed("must be lowercase hex".to_owned()))?;
    Ok(out)
}

/// `SHA-256("keyholder share" || 0x00 || keyring || 0x00 || version as u32 BE
/// || set || index || data)`: what the daemon records per dealt share index, so
/// an altered or foreign share is caught on arrival, not after the threshold.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ShareFingerprint([u8; 32]);

impl ShareFingerprint {
    /// Lowercase hex, 64 characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Whether `share` is the one this fingerprint was taken of, compared in
    /// constant time.
    pub fn matches(&self, share: &Share) -> bool {
        share.fingerprint().0.ct_eq(&self.0).into()
    }

    /// Checks `share`, naming its index when it does not match.
    pub fn verify(&self, share: &Share) -> Result<(), Error> {
        if self.matches(share) {
            Ok(())
        } else {
            Err(Error::FingerprintMismatch { index: share.index })
        }
    }
}

impl fmt::Debug for ShareFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ShareFingerprint({})", self.to_hex())
    }
}

impl FromStr for ShareFingerprint {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        Ok(Self(parse_lower_hex(text, "fingerprint")?))
    }
}

/// One Shamir share of one version's key. Its data is zeroized on drop and
/// never shown by `Debug`.
#[derive(Clone)]
pub struct Share {
    keyring: KeyringId,
    version: KeyVersion,
    set: SetId,
    threshold: u8,
    count: u8,
    index: u8,
    data: Zeroizing<[u8; DATA_LEN]>,
}

impl Share {
    pub(crate) fn new(
        keyring: KeyringId,
        version: KeyVersion,
        set: SetId,
        threshold: u8,
        count: u8,
        index: u8,
        data: Zeroizing<[u8; DATA_LEN]>,
    ) -> Self {
        Self {
            keyring,
            version,
            set,
            threshold,
            count,
            index,
            data,
        }
    }

    /// Parses one share line strictly, verifying its checksum first.
    pub fn parse(line: &str) -> Result<Self, Error> {
        let (body, check) = line
            .rsplit_once(CHECK_MARK)
            .ok_or_else(|| Error::MalformedShare {
                field: "check",
                reason: "the line has no ` check=` field; copy the whole line".to_owned(),
            })?;
        let check: [u8; 4] = parse_lower_hex(check, "check")?;
        let digest = Sha256::digest(body.as_bytes());
        if !bool::from(digest[..4].ct_eq(&check)) {
            return Err(Error::ShareChecksum);
        }
        let mut fields = body.split(' ');
        if fields.next() != Some("khs1") {
            return Err(Error::MalformedShare {
                field: "line",
                reason: "must start with `khs1 `".to_owned(),
            });
        }
        let mut next = |name: &'static str| -> Result<&str, Error> {
            let field = fields.next().ok_or_else(|| Error::MalformedShare {
                field: name,
                reason: "is missing".to_owned(),
            })?;
            field
                .strip_prefix(name)
                .and_then(|rest| rest.strip_prefix('='))
                .ok_or_else(|| Error::MalformedShare {
                    field: name,
                    reason: format!("expected `{name}=` here, found {}", field_name(field)),
                })
        };
        let keyring: KeyringId =
            next("keyring")?
                .parse()
                .map_err(|e: Error| Error::MalformedShare {
                    field: "keyring",
                    reason: e.to_string(),
                })?;
        let version_text = next("version")?;
        let version = version_text
            .strip_prefix('v')
            .ok_or_else(|| Error::MalformedShare {
                field: "version",
                reason: "must be written `v<n>`".to_owned(),
            })
            .and_then(|digits| KeyVersion::parse_digits(digits, version_text))?;
        let set: SetId = next("set")?.parse()?;
        let threshold = parse_small(next("threshold")?, "threshold")?;
        let count = parse_small(next("count")?, "count")?;
        let index = parse_small(next("index")?, "index")?;
        let data_text = next("data")?;
        if fields.next().is_some() {
            return Err(Error::MalformedShare {
                field: "line",
                reason: "has fields after `data=`".to_owned(),
            });
        }
        if !(2 <= threshold && threshold <= count) {
            return Err(Error::InvalidThreshold { threshold, count });
        }
        if index == 0 || index > count {
            return Err(Error::MalformedShare {
                field: "index",
                reason: format!("must be between 1 and count {count}, found {index}"),
            });
        }
        let decoded =
            Zeroizing::new(
                BASE64URL
                    .decode(data_text)
                    .map_err(|_| Error::MalformedShare {
                        field: "data",
                        reason: "is not unpadded base64url".to_owned(),
                    })?,
            );
        let mut data = Zeroizing::new([0u8; DATA_LEN]);
        if decoded.len() != DATA_LEN {
            return Err(Error::MalformedShare {
                field: "data",
                reason: format!("must decode to {DATA_LEN} bytes, found {}", decoded.len()),
            });
        }
        data.copy_from_slice(&decoded);
        Ok(Self::new(
            keyring, version, set, threshold, count, index, data,
        ))
    }

    /// The share as one line, checksum included. The one way a share's bytes
    /// leave this type; the string is zeroized when dropped.
    pub fn to_line(&self) -> Zeroizing<String> {
        let mut line = Zeroizing::new(format!(
            "khs1 keyring={} version={} set={} threshold={} count={} index={} data=",
            self.keyring, self.version, self.set, self.threshold, self.count, self.index
        ));
        line.push_str(&Zeroizing::new(BASE64URL.encode(*self.data)));
        let digest = Sha256::digest(line.as_bytes());
        line.push_str(CHECK_MARK);
        line.push_str(&hex::encode(&digest[..4]));
        line
    }

    /// The fingerprint the daemon records for this share when it deals it.
    pub fn fingerprint(&self) -> ShareFingerprint {
        let mut hash = Sha256::new();
        hash.update(b"keyholder share\0");
        hash.update(self.keyring.as_str().as_bytes());
        hash.update([0]);
        hash.update(self.version.number().to_be_bytes());
        hash.update(self.set.as_bytes());
        hash.update([self.index]);
        hash.update(*self.data);
        ShareFingerprint(hash.finalize().into())
    }

    /// Refuses a share of another keyring, version or split set, naming both.
    pub fn check_belongs_to(
        &self,
        keyring: &KeyringId,
        version: KeyVersion,
        set: SetId,
    ) -> Result<(), Error> {
        if &self.keyring != keyring {
            return Err(Error::ShareFromOtherKeyring {
                expected: keyring.to_string(),
                found: self.keyring.to_string(),
            });
        }
        if self.version != version {
            return Err(Error::ShareFromOtherVersion {
                expected: version,
                found: self.version,
            });
        }
        if self.set != set {
            return Err(Error::ShareFromOtherSet {
                expected: set.to_hex(),
                found: self.set.to_hex(),
            });
        }
        Ok(())
    }

    /// The keyring this share belongs to.
    pub fn keyring(&self) -> &KeyringId {
        &self.keyring
    }

    /// The key version this share rebuilds.
    pub fn version(&self) -> KeyVersion {
        self.version
    }

    /// The split this share came from.
    pub fn set(&self) -> SetId {
        self.set
    }

    /// How many shares rebuild the key.
    pub fn threshold(&self) -> u8 {
        self.threshold
    }

    /// How many shares were dealt.
    pub fn count(&self) -> u8 {
        self.count
    }

    /// This share's index (its x coordinate, never 0).
    pub fn index(&self) -> u8 {
        self.index
    }

    pub(crate) fn data(&self) -> &[u8; DATA_LEN] {
        &self.data
    }
}

impl fmt::Debug for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Share")
            .field("keyring", &self.keyring)
            .field("version", &self.version)
            .field("set", &self.set)
            .field("threshold", &self.threshold)
            .field("count", &self.count)
            .field("index", &self.index)
            .field("data", &"<redacted>")
            .finish()
    }
}

/// Names the field found where another was expected, never its value: in a
/// line whose fields are out of place that value may be share data.
fn field_name(field: &str) -> String {
    match field.split_once('=') {
        Some((name, _))
            if (1..=16).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_lowercase()) =>
        {
            format!("`{name}=`")
        }
        _ => "another field".to_owned(),
    }
}

/// Parses a small decimal number strictly: digits only, no leading zero.
fn parse_small(text: &str, field: &'static str) -> Result<u8, Error> {
    let malformed = |reason: &str| Error::MalformedShare {
        field,
        reason: format!("{reason}, found `{}`", Error::excerpt(text)),
    };
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed("must be a decimal number"));
    }
    if text.len() > 1 && text.starts_with('0') {
        return Err(malformed("has a leading zero"));
    }
    text.parse().map_err(|_| malformed("must be at most 255"))
}

/// Parses a share file: one share line per version in any order; blank lines
/// and lines starting with `#` are ignored. A version given twice is refused,
/// never silently replaced. Errors name the line number.
pub fn parse_share_file(text: &str) -> Result<Vec<Share>, (usize, Error)> {
    let mut shares: Vec<Share> = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let share = Share::parse(line).map_err(|e| (number + 1, e))?;
        if shares.iter().any(|s| s.version == share.version) {
            return Err((
                number + 1,
                Error::DuplicateShareVersion {
                    version: share.version,
                },
            ));
        }
        shares.push(share);
    }
    Ok(shares)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Share {
        Share::new(
            "orders".parse().unwrap(),
            KeyVersion::new(10).unwrap(),
            SetId([7; 16]),
            2,
            3,
            3,
            Zeroizing::new([42; DATA_LEN]),
        )
    }

    #[test]
    fn line_round_trips() {
        let share = sample();
        let line = share.to_line();
        assert!(line.starts_with("khs1 keyring=orders version=v10 set=07070707070707070707070707070707 threshold=2 count=3 index=3 data="));
        let back = Share::parse(&line).unwrap();
        assert_eq!(back.to_line(), line);
        assert_eq!(back.fingerprint(), share.fingerprint());
    }

    #[test]
    fn debug_redacts_data() {
        let text = format!("{:?}", sample());
        assert!(text.contains("<redacted>"));
        assert!(!text.contains("42"));
    }

    /// Rewrites one field and recomputes the checksum, so only the field's
    /// own rule can refuse it.
    fn with_field(line: &str, field: &str, value: &str) -> String {
        let body = line.rsplit_once(CHECK_MARK).unwrap().0;
        let body: Vec<String> = body
            .split(' ')
            .map(|f| {
                if f.starts_with(&format!("{field}=")) {
                    format!("{field}={value}")
                } else {
                    f.to_owned()
                }
            })
            .collect();
        let body = body.join(" ");
        let digest = Sha256::digest(body.as_bytes());
        format!("{body}{CHECK_MARK}{}", hex::encode(&digest[..4]))
    }

    #[test]
    fn each_bad_field_is_named() {
        let line = sample().to_line();
        let cases = [
            ("version", "10", "version"),
            ("version", "v010", "version"),
            ("index", "0", "index"),
            ("index", "4", "index"),
            ("index", "03", "index"),
            ("set", "ABCD", "set"),
            ("data", "AAAA", "data"),
            ("keyring", "", "keyring"),
        ];
        for (field, value, named) in cases {
            let err = Share::parse(&with_field(&line, field, value)).unwrap_err();
            let text = err.to_string();
            match &err {
                Error::MalformedShare { field, .. } => assert_eq!(*field, named, "{text}"),
                Error::InvalidVersion { .. } => assert_eq!(named, "version", "{text}"),
                other => panic!("{field}={value}: unexpected {other}"),
            }
        }
        assert_eq!(
            Share::parse(&with_field(&line, "threshold", "1")).unwrap_err(),
            Error::InvalidThreshold {
                threshold: 1,
                count: 3
            }
        );
    }

    /// A line whose checksum holds but whose fields are out of place is
    /// refused naming the field found, never echoing the share data there.
    #[test]
    fn a_misplaced_field_is_named_without_its_value() {
        let line = sample().to_line();
        let data = line
            .split(" data=")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap();
        let body = line.rsplit_once(CHECK_MARK).unwrap().0;
        let without = |field: &str| -> String {
            let kept: Vec<&str> = body
                .split(' ')
                .filter(|f| !f.starts_with(&format!("{field}=")))
                .collect();
            let body = kept.join(" ");
            let digest = Sha256::digest(body.as_bytes());
            format!("{body}{CHECK_MARK}{}", hex::encode(&digest[..4]))
        };
        let err = Share::parse(&without("index")).unwrap_err();
        assert_eq!(
            err,
            Error::MalformedShare {
                field: "index",
                reason: "expected `index=` here, found `data=`".to_owned()
            }
        );
        let shifted = {
            let body = body.replace("index=3 data=", "");
            let digest = Sha256::digest(body.as_bytes());
            format!("{body}{CHECK_MARK}{}", hex::encode(&digest[..4]))
        };
        let err = Share::parse(&shifted).unwrap_err();
        assert_eq!(
            err,
            Error::MalformedShare {
                field: "index",
                reason: "expected `index=` here, found another field".to_owned()
            }
        );
        for text in [without("index"), shifted] {
            let shown = Share::parse(&text).unwrap_err().to_string();
            assert!(!shown.contains(&data[..8]), "{shown}");
        }
    }

    #[test]
    fn checksum_is_checked_before_fields() {
        let line = sample().to_line();
        let altered = line.replacen("index=3", "index=2", 1);
        assert_eq!(Share::parse(&altered).unwrap_err(), Error::ShareChecksum);
    }

    #[test]
    fn share_file_refuses_duplicate_version_and_names_line() {
        let line = sample().to_line();
        let file = format!("# alice\n{}\n\n{}\n", *line, *line);
        let (number, err) = parse_share_file(&file).unwrap_err();
        assert_eq!(number, 4);
        assert_eq!(
            err,
            Error::DuplicateShareVersion {
                version: KeyVersion::new(10).unwrap()
            }
        );
    }
}
