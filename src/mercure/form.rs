//! `application/x-www-form-urlencoded` decoding, and the character rule that
//! Mercure puts on topics, matchers, ids and event types.
//!
//! [`parse`] follows the WHATWG URL Standard's "application/x-www-form-urlencoded
//! parser" (the one behind `URLSearchParams`, which the Subscription and
//! Publication sections require) step for step, with one deliberate
//! difference: the last step, UTF-8 decoding, is strict. WHATWG replaces
//! invalid sequences with U+FFFD; Mercure requires names and values to be
//! valid UTF-8, so such input is an error here instead.
//!
//! [`has_forbidden_char`] is the rule of the Terminology section (topics) and
//! of the Subscription and Publication sections (matcher values, `id`, `type`).

use std::borrow::Cow;

use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

/// One decoded name/value pair. Borrowed from the input when the raw bytes
/// needed no decoding (no `+`, no `%`), which is the common case.
pub type Pair<'a> = (Cow<'a, str>, Cow<'a, str>);

/// Why a form-urlencoded input was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormError {
    /// More non-empty `&`-separated pieces than the caller's bound.
    TooManyPairs,
    /// A name or value is not valid UTF-8 once percent-decoded.
    InvalidUtf8,
}

/// Decodes `input` into its name/value pairs, in order.
///
/// Splits on `&`, skips empty pieces, splits each piece at its first `=` (a
/// piece without `=` is a name with an empty value), turns `+` into a space,
/// then percent-decodes: `%XX` with two hex digits becomes that byte, any
/// other `%` stays as it is. Names and values must then be valid UTF-8.
///
/// More than `max_pairs` pairs is [`FormError::TooManyPairs`]; the input is
/// not decoded past that point.
pub fn parse(input: &[u8], max_pairs: usize) -> Result<Vec<Pair<'_>>, FormError> {
    let mut pairs = Vec::new();
    for piece in input.split(|&byte| byte == b'&') {
        if piece.is_empty() {
            continue;
        }
        if pairs.len() == max_pairs {
            return Err(FormError::TooManyPairs);
        }
        let mut halves = piece.splitn(2, |&byte| byte == b'=');
        let name = halves.next().unwrap_or_default();
        let value = halves.next().unwrap_or_default();
        pairs.push((decode(name)?, decode(value)?));
    }
    Ok(pairs)
}

/// `+` to space, then percent-decoding, then strict UTF-8.
fn decode(raw: &[u8]) -> Result<Cow<'_, str>, FormError> {
    if !raw.iter().any(|&byte| byte == b'+' || byte == b'%') {
        return std::str::from_utf8(raw).map(Cow::Borrowed).map_err(|_| FormError::InvalidUtf8);
    }
    let mut bytes = Vec::with_capacity(raw.len());
    let mut rest = raw;
    while let Some((&byte, tail)) = rest.split_first() {
        rest = tail;
        match byte {
            b'+' => bytes.push(b' '),
            b'%' => match percent_encoded_byte(rest) {
                Some(decoded) => {
                    bytes.push(decoded);
                    rest = rest.get(2..).unwrap_or_default();
                }
                None => bytes.push(b'%'),
            },
            other => bytes.push(other),
        }
    }
    String::from_utf8(bytes).map(Cow::Owned).map_err(|_| FormError::InvalidUtf8)
}

/// The byte written by the two hex digits at the start of `after_percent`, if
/// they are there.
pub(crate) fn percent_encoded_byte(after_percent: &[u8]) -> Option<u8> {
    match after_percent {
        [high, low, ..] => Some((hex_value(*high)? << 4) | hex_value(*low)?),
        _ => None,
    }
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

/// Whether `s` holds a character Mercure forbids in topics, matcher values,
/// update ids and event types: a C0 control (U+0000–U+001F), DEL (U+007F), a
/// C1 control (U+0080–U+009F), or a format character (general category `Cf`,
/// such as bidirectional and zero-width controls, which are invisible and
/// enable spoofing).
///
/// The forbidden controls include CR, LF and NUL, so a value that passes
/// cannot inject fields into an event stream.
///
/// `Cf` comes from the `unicode-properties` crate, whose tables follow a
/// Unicode version at least as recent as the one the spec cites (17.0); the
/// spec allows rejecting characters that later versions add to `Cf`.
pub fn has_forbidden_char(s: &str) -> bool {
    s.chars().any(is_forbidden)
}

fn is_forbidden(c: char) -> bool {
    matches!(c, '\u{0}'..='\u{1F}' | '\u{7F}'..='\u{9F}')
        || (!c.is_ascii() && c.general_category() == GeneralCategory::Format)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(input: &str) -> Vec<(String, String)> {
        parse(input.as_bytes(), 100)
            .unwrap()
            .into_iter()
            .map(|(name, value)| (name.into_owned(), value.into_owned()))
            .collect()
    }

    fn owned(expected: &[(&str, &str)]) -> Vec<(String, String)> {
        expected.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect()
    }

    #[test]
    fn pairs_decode_as_the_whatwg_urlencoded_parser_does() {
        let table: &[(&str, &[(&str, &str)])] = &[
            ("", &[]),
            ("a=1", &[("a", "1")]),
            ("a=1&b=2", &[("a", "1"), ("b", "2")]),
            ("a=1&a=2", &[("a", "1"), ("a", "2")]),
            // empty pieces are skipped
            ("&&a=1&&&b=2&", &[("a", "1"), ("b", "2")]),
            // a name without `=` has an empty value
            ("private", &[("private", "")]),
            ("private&topic=x", &[("private", ""), ("topic", "x")]),
            ("a=", &[("a", "")]),
            ("=v", &[("", "v")]),
            ("=", &[("", "")]),
            // the split is at the first `=`; later ones belong to the value
            ("a=b=c", &[("a", "b=c")]),
            ("a==", &[("a", "=")]),
            // `+` is a space, in names and values
            ("a+b=c+d", &[("a b", "c d")]),
            // `%2B` is a literal plus: `+` is replaced before percent-decoding
            ("a=%2B", &[("a", "+")]),
            ("a=%2b", &[("a", "+")]),
            ("a=%26%3D", &[("a", "&=")]),
            ("%61=%62", &[("a", "b")]),
            ("a=%20x%20", &[("a", " x ")]),
            // invalid percent sequences stay literal
            ("a=%", &[("a", "%")]),
            ("a=%2", &[("a", "%2")]),
            ("a=%zz", &[("a", "%zz")]),
            ("a=%2g", &[("a", "%2g")]),
            ("a=%%41", &[("a", "%A")]),
            ("a=100%", &[("a", "100%")]),
            // raw `;` is not a separator
            ("a=1;b=2", &[("a", "1;b=2")]),
            // UTF-8, raw or percent-encoded
            ("t=caf\u{e9}", &[("t", "caf\u{e9}")]),
            ("t=caf%C3%A9", &[("t", "caf\u{e9}")]),
            // percent-decoding may produce control characters; the caller checks them
            ("t=%0A", &[("t", "\n")]),
        ];
        for (input, expected) in table {
            assert_eq!(pairs(input), owned(expected), "input {input:?}");
        }
    }

    #[test]
    fn invalid_utf8_is_an_error_rather_than_a_replacement_character() {
        let table: &[&[u8]] = &[
            b"a=%FF",
            b"a=%C3",
            b"a=%C3%28",
            b"%FF=a",
            b"a=\xff",
            b"\xc3=1",
            b"a=%ED%A0%80", // an encoded surrogate
        ];
        for input in table {
            assert_eq!(parse(input, 10), Err(FormError::InvalidUtf8), "input {input:?}");
        }
    }

    #[test]
    fn pairs_borrow_from_the_input_when_nothing_needs_decoding() {
        let parsed = parse(b"topic=https://example.com/a", 10).unwrap();
        assert!(matches!(parsed[0].0, Cow::Borrowed(_)));
        assert!(matches!(parsed[0].1, Cow::Borrowed(_)));
    }

    #[test]
    fn more_pairs_than_the_bound_is_an_error() {
        assert_eq!(parse(b"a&b&c", 3).map(|p| p.len()), Ok(3));
        assert_eq!(parse(b"a&b&c&d", 3), Err(FormError::TooManyPairs));
        // empty pieces do not count
        assert_eq!(parse(b"a&&&b&&&c&&&", 3).map(|p| p.len()), Ok(3));
        assert_eq!(parse(b"", 0).map(|p| p.len()), Ok(0));
        assert_eq!(parse(b"a", 0), Err(FormError::TooManyPairs));
    }

    #[test]
    fn forbidden_characters_are_controls_del_c1_and_format_characters() {
        let forbidden = [
            "\u{0}",
            "\t",
            "\n",
            "\r",
            "\u{1F}",
            "\u{7F}",
            "\u{80}",
            "\u{85}", // NEL
            "\u{9F}",
            "\u{AD}",    // soft hyphen, Cf
            "\u{600}",   // Arabic number sign, Cf
            "\u{200B}",  // zero width space, Cf
            "\u{200D}",  // zero width joiner, Cf
            "\u{200E}",  // left-to-right mark, Cf
            "\u{202E}",  // right-to-left override, Cf
            "\u{2066}",  // left-to-right isolate, Cf
            "\u{FEFF}",  // byte order mark / zero width no-break space, Cf
            "\u{FFF9}",  // interlinear annotation anchor, Cf
            "\u{E0001}", // language tag, Cf
            "\u{E007F}", // cancel tag, Cf
        ];
        for c in forbidden {
            assert!(has_forbidden_char(c), "{c:?} should be forbidden");
            assert!(has_forbidden_char(&format!("https://example.com/{c}x")));
        }
    }

    #[test]
    fn ordinary_characters_are_allowed() {
        let allowed = [
            "",
            " ",
            "https://example.com/books/1?x=y#z",
            "~!@#$%^&*()_+{}|:\"<>?`-=[]\\;',./",
            "caf\u{e9}",
            "\u{A0}",    // no-break space, Zs
            "\u{2028}",  // line separator, Zl (not Cf)
            "\u{1F600}", // emoji
            "\u{4E2D}\u{6587}",
            "\u{FFFD}",
        ];
        for s in allowed {
            assert!(!has_forbidden_char(s), "{s:?} should be allowed");
        }
    }
}
