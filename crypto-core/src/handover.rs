//! The hook hand-over: the one place keys are serialised.
//!
//! `{"keyring": "orders", "write_version": 10, "keys": [{"version": 9, "key": "<base64>"}, ...]}`

use core::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

use crate::{Error, Key, KeyVersion, Keyring, KeyringId};

/// What `keyholder hook` hands to the database: every live key and the write
/// version. It crosses a process boundary through a pipe, never a file.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookHandover {
    /// The keyring's name.
    pub keyring: KeyringId,
    /// The version new records are written with.
    pub write_version: KeyVersion,
    /// The live keys, in numeric order when written by keyholder.
    #[serde(deserialize_with = "objects")]
    pub keys: Vec<HandoverKey>,
}

/// One key of the hand-over.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandoverKey {
    /// Its version.
    pub version: KeyVersion,
    /// The key, as standard base64 on the wire.
    #[serde(serialize_with = "serialize_key", deserialize_with = "deserialize_key")]
    pub key: Key,
}

impl HookHandover {
    /// Parses the hand-over strictly. Errors say where the JSON was wrong but
    /// never echo a value from it.
    pub fn from_json(text: &str) -> Result<Self, Error> {
        let mut json = serde_json::Deserializer::from_str(text);
        Object::<Self>::deserialize(&mut json)
            .and_then(|Object(handover)| json.end().map(|()| handover))
            .map_err(|e| Error::MalformedHandover {
                reason: describe_json_error(&e),
            })
    }

    /// The hand-over as JSON, in a buffer that is zeroized on drop.
    pub fn to_json(&self) -> Zeroizing<String> {
        Zeroizing::new(serde_json::to_string(self).expect("the hand-over always serialises"))
    }

    /// Builds the keyring: versions ordered numerically; a repeated version,
    /// one key under two versions or a write version without a key refused.
    pub fn into_keyring(self) -> Result<Keyring, Error> {
        Keyring::new(
            self.keyring,
            self.write_version,
            self.keys.into_iter().map(|k| (k.version, k.key)),
        )
    }
}

impl fmt::Debug for HookHandover {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HookHandover")
            .field("keyring", &self.keyring)
            .field("write_version", &self.write_version)
            .field(
                "versions",
                &self.keys.iter().map(|k| k.version).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// serde_json's messages quote the offending value, which in this document
/// may be a key: keep only messages known to name the schema, never a value.
/// A `T` read only from a JSON object: serde also reads a struct from an
/// array of its fields in order (`["orders", 9, [[9, "..."]]]`), a second
/// spelling of the same hand-over that keyholder never writes.
struct Object<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Only<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for Only<T> {
            type Value = Object<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(Object)
            }
        }
        deserializer.deserialize_map(Only(std::marker::PhantomData))
    }
}

/// A list of objects only (see [`Object`]).
fn objects<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Vec<T>, D::Error> {
    let objects: Vec<Object<T>> = Vec::deserialize(deserializer)?;
    Ok(objects.into_iter().map(|Object(item)| item).collect())
}

fn describe_json_error(e: &serde_json::Error) -> String {
    let message = e.to_string();
    let head = message.split(" at line ").next().unwrap_or_default();
    let safe = ["missing field", "duplicate field", "a key is not"];
    let shown = if safe.iter().any(|prefix| head.starts_with(prefix)) {
        head
    } else {
        match e.classify() {
            serde_json::error::Category::Syntax => "not valid JSON",
            serde_json::error::Category::Eof => "ends early",
            serde_json::error::Category::Data => {
                "a field is unknown or has a value of the wrong type"
            }
            serde_json::error::Category::Io => "could not be read",
        }
    };
    format!("{shown} (line {}, column {})", e.line(), e.column())
}

fn serialize_key<S: Serializer>(key: &Key, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&key.expose_base64_for_handover())
}

fn deserialize_key<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Key, D::Error> {
    struct KeyVisitor;
    impl Visitor<'_> for KeyVisitor {
        type Value = Key;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("32 bytes as standard base64")
        }
        fn visit_str<E: de::Error>(self, text: &str) -> Result<Key, E> {
            Key::from_base64(text)
                .map_err(|_| E::custom("a key is not 32 bytes of standard base64"))
        }
    }
    deserializer.deserialize_str(KeyVisitor)
}

#[cfg(test)]
mod tests {
    use super::*;

    const K9: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const K10: &str = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";

    #[test]
    fn loads_the_design_shape_in_any_order() {
        let text = format!(
            r#"{{"keyring":"orders","write_version":10,"keys":[{{"version":10,"key":"{K10}"}},{{"version":9,"key":"{K9}"}}]}}"#
        );
        let ring = Keyring::from_handover_json(&text).unwrap();
        let order: Vec<u32> = ring.versions().map(KeyVersion::number).collect();
        assert_eq!(order, [9, 10]);
        assert_eq!(ring.write_version().number(), 10);
        let back = ring.to_handover().to_json();
        assert!(
            back.starts_with(r#"{"keyring":"orders","write_version":10,"keys":[{"version":9,"#)
        );
    }

    #[test]
    fn only_objects_spell_a_hand_over() {
        let arrays = [
            format!(r#"["orders",9,[{{"version":9,"key":"{K9}"}}]]"#),
            format!(r#"{{"keyring":"orders","write_version":9,"keys":[[9,"{K9}"]]}}"#),
            format!(r#"["orders",9,[[9,"{K9}"]]]"#),
        ];
        for text in &arrays {
            let err = HookHandover::from_json(text).expect_err(text);
            assert!(!err.to_string().contains(K9), "{err}");
        }
        let object = format!(
            r#"{{"keyring":"orders","write_version":9,"keys":[{{"version":9,"key":"{K9}"}}]}}"#
        );
        assert!(HookHandover::from_json(&object).is_ok());
        assert!(HookHandover::from_json(&format!("{object} {{}}")).is_err());
        let twice = r#"{"keyring":"orders","keyring":"orders","write_version":9,"keys":[]}"#;
        assert!(HookHandover::from_json(twice).is_err());
    }

    #[test]
    fn errors_never_echo_key_text() {
        let secretish = "c2VjcmV0LWtleS1tYXRlcmlhbC10aGF0LWlzLXRvby1zaG9ydA";
        let cases = [
            format!(
                r#"{{"keyring":"orders","write_version":9,"keys":[{{"version":9,"key":"{secretish}"}}]}}"#
            ),
            format!(
                r#"{{"keyring":"orders","write_version":9,"keys":[{{"version":"{secretish}","key":"{K9}"}}]}}"#
            ),
            format!(r#"{{"keyring":"orders","write_version":9,"keys":"{secretish}"}}"#),
            format!(r#"{{"keyring":"orders","write_version":9,"{secretish}":1,"keys":[]}}"#),
        ];
        for text in cases {
            let err = Keyring::from_handover_json(&text).unwrap_err().to_string();
            assert!(!err.contains(secretish), "{err}");
            assert!(!err.contains(K9), "{err}");
            assert!(err.starts_with("keyring hand-over is malformed"), "{err}");
        }
    }

    #[test]
    fn refuses_one_key_under_two_versions() {
        let text = format!(
            r#"{{"keyring":"orders","write_version":10,"keys":[{{"version":9,"key":"{K9}"}},{{"version":10,"key":"{K9}"}}]}}"#
        );
        assert_eq!(
            Keyring::from_handover_json(&text).unwrap_err(),
            Error::SameKeyForTwoVersions {
                first: KeyVersion::new(9).unwrap(),
                second: KeyVersion::new(10).unwrap()
            }
        );
    }

    #[test]
    fn refuses_a_version_given_twice() {
        let text = format!(
            r#"{{"keyring":"orders","write_version":9,"keys":[{{"version":9,"key":"{K9}"}},{{"version":9,"key":"{K9}"}}]}}"#
        );
        assert_eq!(
            Keyring::from_handover_json(&text).unwrap_err(),
            Error::DuplicateVersion {
                version: KeyVersion::new(9).unwrap()
            }
        );
    }
}
