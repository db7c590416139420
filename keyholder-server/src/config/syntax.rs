//! What a config file that does not parse is reported with: where (line and
//! column) and what kind of error, never the file's text.
//!
//! The TOML parser's own message quotes the offending line under a caret and
//! serde's repeats the value it refused (`invalid type: string "postgres://
//! app:secret@db/app", expected ...`); a config line may hold a database
//! URL with its password, and a parse error goes to the log, the reload
//! API's answer, the audit log and stderr. This module must never let any
//! of the file's text through: a key is text too (a typo shows only where
//! it is).

use std::fmt;

/// A place in the config file, both counted from 1 (columns in characters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    /// The line.
    pub line: usize,
    /// The column.
    pub column: usize,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

/// Where `error` is in `text`, when the parser says.
pub(super) fn position(text: &str, error: &toml::de::Error) -> Option<Position> {
    let before = text.get(..error.span()?.start)?;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    Some(Position {
        line: before.matches('\n').count() + 1,
        column: before[line_start..].chars().count() + 1,
    })
}

/// The kind of error `message` (a TOML parser's) names, with everything it
/// quotes from the file left out.
///
/// Both the TOML parser's and serde's messages read `<what is wrong>[,]
/// expected <what the schema wants>`. Only the first part can hold the
/// file's text (`unknown field `x``, `invalid type: string "x"`, `invalid
/// type: integer `5``), always quoted: it is cut at its first quote. The
/// last `expected ...` comes from the schema or the TOML grammar and is
/// kept; a value holding the word `expected` comes before it, so it is cut,
/// and when that last `expected` is inside a quote (no part from the schema
/// follows it) the quotes before it do not pair up and it is cut too.
pub(super) fn kind(message: &str) -> String {
    const EXPECTED: &str = "expected ";
    let first = message.lines().next().unwrap_or_default().trim();
    let paired = |text: &str| ['"', '`'].iter().all(|q| text.matches(*q).count() % 2 == 0);
    let (what, expected) = match first.rfind(EXPECTED) {
        Some(at) if paired(&first[..at]) => (&first[..at], Some(&first[at..])),
        _ => (first, None),
    };
    // serde's names of the schema's own fields, the only quotes kept.
    let schema = ["missing field `", "duplicate field `"]
        .iter()
        .any(|p| what.starts_with(p))
        && expected.is_none();
    let what = if schema {
        what
    } else {
        what.find(['"', '\'', '`'])
            .map_or(what, |quote| &what[..quote])
    };
    let what = what.trim_end_matches([' ', ',', ':']);
    let what = if what.is_empty() {
        "not valid TOML"
    } else {
        what
    };
    match expected {
        Some(expected) => format!("{what}, {expected}"),
        None => what.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    #[expect(dead_code, reason = "only the errors are looked at")]
    struct Schema {
        keyring: String,
        size: Option<i64>,
        aad: Option<keyholder_reencrypt::AadRule>,
    }

    /// Where and what, for `text` parsed as [`Schema`].
    fn report(text: &str) -> String {
        let error = toml::from_str::<Schema>(text).err().expect("refused");
        let at = position(text, &error).expect("the parser gives a span");
        format!("{at}: {}", kind(error.message()))
    }

    const SECRET: &str = "Pw-S3cret-4711";

    #[test]
    fn a_parse_error_says_where_and_what_and_never_the_text() {
        let cases = [
            (
                format!("keyring = \"postgres://app:{SECRET}@db/app\nsize = 1\n"),
                "line 1, column 48: invalid basic string, expected `\"`",
            ),
            (
                format!("keyring = 'a{SECRET}\n"),
                "line 1, column 27: invalid literal string, expected `'`",
            ),
            (
                format!("keyring = \"a\"\nsize = \"postgres://app:{SECRET}@db/app\"\n"),
                "line 2, column 8: invalid type: string, expected i64",
            ),
            (
                format!("keyring = \"a\"\nsize = postgres://app:{SECRET}@db\n"),
                "line 2, column 8: string values must be quoted, expected literal string",
            ),
            (
                format!("keyring = \"a\"\n{SECRET} = 1\n"),
                "line 2, column 1: unknown field, expected one of `keyring`, `size`, `aad`",
            ),
            (
                format!("keyring = \"a\"\n\"{SECRET}, expected x\" = 1\n"),
                "line 2, column 1: unknown field, expected one of `keyring`, `size`, `aad`",
            ),
            (
                format!("keyring = \"a\"\naad = \"{SECRET}\"\n"),
                "line 2, column 7: unknown variant, expected `none` or `row`",
            ),
            (
                format!("keyring = \"a\"\nsize = \"{SECRET} expected \"\n"),
                "line 2, column 8: invalid type: string, expected i64",
            ),
            (
                "keyring = \"a\"\nsize = 4711.5\n".to_owned(),
                "line 2, column 8: invalid type: floating point, expected i64",
            ),
            (
                format!("keyring = \"a\"\nkeyring = \"{SECRET}\"\n"),
                "line 2, column 1: duplicate key",
            ),
            (
                "size = 1\n".to_owned(),
                "line 1, column 1: missing field `keyring`",
            ),
        ];
        let got: Vec<String> = cases.iter().map(|(text, _)| report(text)).collect();
        let expected: Vec<&str> = cases.iter().map(|(_, e)| *e).collect();
        assert_eq!(got, expected);
        for report in got {
            assert!(
                !report.contains("S3cret") && !report.contains("4711"),
                "{report}"
            );
        }
    }

    #[test]
    fn columns_count_characters_and_a_message_of_quotes_only_still_names_a_kind() {
        let text = "keyring = \"é\"\nsize = \"ü\n";
        let error = toml::from_str::<Schema>(text).err().expect("refused");
        assert_eq!(
            position(text, &error),
            Some(Position {
                line: 2,
                column: 10
            })
        );
        assert_eq!(kind("`x` is odd"), "not valid TOML");
        assert_eq!(kind("unknown field `a, expected b`"), "unknown field");
        assert_eq!(
            kind("invalid type: string \"a`b expected c\""),
            "invalid type: string"
        );
        assert_eq!(kind(""), "not valid TOML");
    }
}
