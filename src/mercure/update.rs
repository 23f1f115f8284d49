//! The publish request body: an `application/x-www-form-urlencoded` update
//! (spec section "Publication", with "Reserved Hub Namespace" and
//! "Server-Sent Events Field Injection" from the Security Considerations).
//!
//! [`parse_update`] checks everything the spec makes a 400 or a 413 whatever
//! the access token says. Whether the publisher may publish on the topics is
//! the token's business ([`super::token::Grants::can_publish_all`]).

use url::Url;

use super::form::{self, FormError, has_forbidden_char, percent_encoded_byte};
use super::matcher::WILDCARD;

/// Most fields in one body, all names counted (unknown ones too); more is 413.
/// Room for [`MAX_TOPICS`] topics, the five other fields, and extensions.
pub const MAX_FIELDS: usize = 128;

/// Most `topic` fields in one update; more is 413. Alternate topics widen
/// an update's audience, a few suffice for that, and every topic is tested
/// against every subscription on each publish.
pub const MAX_TOPICS: usize = 32;

/// Longest `topic`, in bytes; longer is 413. The same as
/// [`super::matcher::MAX_MATCHER_BYTES`], so any topic can be subscribed to
/// with an exact matcher.
pub const MAX_TOPIC_BYTES: usize = super::matcher::MAX_MATCHER_BYTES;

/// Longest `id`, in bytes; longer is 413. An id comes back in
/// `Last-Event-ID` headers and `last_event_id` query strings, so it is kept
/// well under common header limits; UUID URNs and IRIs fit easily.
pub const MAX_ID_BYTES: usize = crate::sse::MAX_FIELD_BYTES;

/// Longest `type`, in bytes; longer is 413. An event type is a name.
pub const MAX_TYPE_BYTES: usize = 256;

/// Longest `retry`, in digits; longer is 413. Twenty digits hold every `u64`.
pub const MAX_RETRY_DIGITS: usize = 20;

/// The reserved id that asks for the whole history.
pub const EARLIEST: &str = "earliest";

/// The reserved event type of the hub's own subscription events.
pub const RESERVED_EVENT_TYPE: &str = "mercure";

/// A valid update, ready for authorization and dispatch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// Every `topic`, in order; the first is the canonical topic, the others
    /// are alternate topics. Never empty.
    pub topics: Vec<String>,
    /// The first `data`, or empty. Any UTF-8, line breaks included: the
    /// server must write it as one `data:` line per line.
    pub data: String,
    /// Whether a `private` field was present, whatever its value.
    pub private: bool,
    /// The first `id`, if given and not empty (an empty id is treated as
    /// absent, so the hub generates one: the spec lets a hub ignore a
    /// client-supplied id, and an empty SSE id would reset the subscriber's
    /// reconnection cursor).
    pub id: Option<String>,
    /// The first `type` (the SSE `event`), if given and not empty (an empty
    /// type is the default event type anyway).
    pub event_type: Option<String>,
    /// The first `retry`, in milliseconds; a value past `u64::MAX` saturates.
    pub retry: Option<u64>,
}

/// Why a publish body was refused. Each violation has its own variant;
/// [`UpdateError::status`] is the HTTP status the spec asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateError {
    /// A name or value is not valid UTF-8.
    InvalidUtf8,
    /// No `topic` field.
    MissingTopic,
    /// A topic holds a control or format character.
    TopicForbiddenCharacter,
    /// A topic is exactly `*`, the wildcard, which no matcher could single out.
    TopicIsWildcard,
    /// A topic's path lies in the hub's reserved namespace.
    TopicInReservedNamespace,
    /// The `id` starts with `#`, the form of hub-generated ids.
    IdStartsWithHash,
    /// The `id` is `earliest`, the reserved reconnection value.
    IdIsEarliest,
    /// The `id` holds a control or format character.
    IdForbiddenCharacter,
    /// The `type` holds a control or format character.
    TypeForbiddenCharacter,
    /// The `type` is `mercure`, reserved for the hub's subscription events.
    TypeIsReserved,
    /// The `retry` is not one or more ASCII digits.
    RetryNotDigits,
    /// More than [`MAX_FIELDS`] fields.
    TooManyFields,
    /// More than [`MAX_TOPICS`] topics.
    TooManyTopics,
    /// A topic longer than [`MAX_TOPIC_BYTES`].
    TopicTooLong,
    /// An `id` longer than [`MAX_ID_BYTES`].
    IdTooLong,
    /// A `type` longer than [`MAX_TYPE_BYTES`].
    TypeTooLong,
    /// A `retry` longer than [`MAX_RETRY_DIGITS`].
    RetryTooLong,
}

impl UpdateError {
    /// 413 for exceeded limits, 400 for everything else.
    pub const fn status(self) -> u16 {
        match self {
            UpdateError::TooManyFields
            | UpdateError::TooManyTopics
            | UpdateError::TopicTooLong
            | UpdateError::IdTooLong
            | UpdateError::TypeTooLong
            | UpdateError::RetryTooLong => 413,
            _ => 400,
        }
    }

    /// A short explanation, fit for the answer's body or a log line.
    pub const fn reason(self) -> &'static str {
        match self {
            UpdateError::InvalidUtf8 => "fields must be UTF-8",
            UpdateError::MissingTopic => "missing topic",
            UpdateError::TopicForbiddenCharacter => "topic contains a forbidden character",
            UpdateError::TopicIsWildcard => "topic must not be *",
            UpdateError::TopicInReservedNamespace => "topic is in the hub's reserved namespace",
            UpdateError::IdStartsWithHash => "id must not start with #",
            UpdateError::IdIsEarliest => "id must not be earliest",
            UpdateError::IdForbiddenCharacter => "id contains a forbidden character",
            UpdateError::TypeForbiddenCharacter => "type contains a forbidden character",
            UpdateError::TypeIsReserved => "type must not be mercure",
            UpdateError::RetryNotDigits => "retry must be ASCII digits",
            UpdateError::TooManyFields => "too many fields",
            UpdateError::TooManyTopics => "too many topics",
            UpdateError::TopicTooLong => "topic is too long",
            UpdateError::IdTooLong => "id is too long",
            UpdateError::TypeTooLong => "type is too long",
            UpdateError::RetryTooLong => "retry is too long",
        }
    }
}

impl std::fmt::Display for UpdateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for UpdateError {}

/// Parses and validates a publish body. `hub_url` is the hub's URL, the
/// base of relative topics and the root of the reserved namespace.
///
/// Fields the spec does not define are ignored (but count towards
/// [`MAX_FIELDS`]); `data`, `id`, `type` and `retry` take their first
/// occurrence and ignore the rest unexamined. Violations are reported in
/// body order, the first one wins.
pub fn parse_update(body: &[u8], hub_url: &Url) -> Result<Update, UpdateError> {
    let fields = form::parse(body, MAX_FIELDS).map_err(|error| match error {
        FormError::TooManyPairs => UpdateError::TooManyFields,
        FormError::InvalidUtf8 => UpdateError::InvalidUtf8,
    })?;
    let reserved = ReservedNamespace::of(hub_url);
    let mut topics = Vec::new();
    let mut data = None;
    let mut private = false;
    let mut id = None;
    let mut event_type = None;
    let mut retry = None;
    for (name, value) in fields {
        match &*name {
            "topic" => {
                if topics.len() == MAX_TOPICS {
                    return Err(UpdateError::TooManyTopics);
                }
                check_topic(&value, hub_url, &reserved)?;
                topics.push(value.into_owned());
            }
            "data" if data.is_none() => data = Some(value.into_owned()),
            "private" => private = true,
            "id" if id.is_none() => {
                check_id(&value)?;
                id = Some(value.into_owned());
            }
            "type" if event_type.is_none() => {
                check_event_type(&value)?;
                event_type = Some(value.into_owned());
            }
            "retry" if retry.is_none() => retry = Some(parse_retry(&value)?),
            _ => {}
        }
    }
    if topics.is_empty() {
        return Err(UpdateError::MissingTopic);
    }
    Ok(Update {
        topics,
        data: data.unwrap_or_default(),
        private,
        id: id.filter(|id| !id.is_empty()),
        event_type: event_type.filter(|event_type| !event_type.is_empty()),
        retry,
    })
}

fn check_topic(topic: &str, hub_url: &Url, reserved: &ReservedNamespace) -> Result<(), UpdateError> {
    if topic.len() > MAX_TOPIC_BYTES {
        Err(UpdateError::TopicTooLong)
    } else if has_forbidden_char(topic) {
        Err(UpdateError::TopicForbiddenCharacter)
    } else if topic == WILDCARD {
        Err(UpdateError::TopicIsWildcard)
    } else if reserved.contains(topic, hub_url) {
        Err(UpdateError::TopicInReservedNamespace)
    } else {
        Ok(())
    }
}

fn check_id(id: &str) -> Result<(), UpdateError> {
    if id.len() > MAX_ID_BYTES {
        Err(UpdateError::IdTooLong)
    } else if id.starts_with('#') {
        Err(UpdateError::IdStartsWithHash)
    } else if id == EARLIEST {
        Err(UpdateError::IdIsEarliest)
    } else if has_forbidden_char(id) {
        Err(UpdateError::IdForbiddenCharacter)
    } else {
        Ok(())
    }
}

fn check_event_type(event_type: &str) -> Result<(), UpdateError> {
    if event_type.len() > MAX_TYPE_BYTES {
        Err(UpdateError::TypeTooLong)
    } else if has_forbidden_char(event_type) {
        Err(UpdateError::TypeForbiddenCharacter)
    } else if event_type == RESERVED_EVENT_TYPE {
        Err(UpdateError::TypeIsReserved)
    } else {
        Ok(())
    }
}

fn parse_retry(retry: &str) -> Result<u64, UpdateError> {
    if retry.is_empty() || !retry.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(UpdateError::RetryNotDigits);
    }
    if retry.len() > MAX_RETRY_DIGITS {
        return Err(UpdateError::RetryTooLong);
    }
    Ok(retry.bytes().fold(0u64, |value, digit| value.saturating_mul(10).saturating_add(u64::from(digit - b'0'))))
}

/// The hub URL's path subtree, which only the hub may publish in.
///
/// A topic is in it when its path, once resolved against the hub URL by the
/// WHATWG URL parser and normalised (see [`normalized_path`]), equals the
/// hub URL's normalised path or starts with that path followed by `/`,
/// whatever its scheme and authority. A topic that is not a URL reference
/// names no hub path and is not in it.
///
/// The rule is the spec's, to the letter, which has one oddity: a hub whose
/// path is `/` reserves `/` and paths starting `//`, not everything.
///
/// The path the hub is served at, [`SERVED_PATH`], is reserved too, even
/// when the hub URL (`--mercure-resource`) names another (a proxy's): it
/// is where this hub's own subscription events are published.
struct ReservedNamespace {
    paths: [String; 2],
}

/// The path this server serves the hub at, whatever its URL says.
pub const SERVED_PATH: &str = "/.well-known/mercure";

impl ReservedNamespace {
    fn of(hub_url: &Url) -> ReservedNamespace {
        ReservedNamespace { paths: [normalized_path(hub_url.path()), SERVED_PATH.to_owned()] }
    }

    fn contains(&self, topic: &str, hub_url: &Url) -> bool {
        let Ok(resolved) = hub_url.join(topic) else {
            return false;
        };
        let path = normalized_path(resolved.path());
        self.paths.iter().any(|reserved| {
            path.strip_prefix(reserved.as_str()).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
    }
}

/// RFC 3986 normalisation of a URL path: percent-encoded unreserved
/// characters decoded (so `%6D` is `m`), other percent-encodings with
/// upper-case hex, then dot-segments removed (again: decoding `%2E` can make
/// new ones, though the WHATWG parser has already removed the usual ones).
fn normalized_path(path: &str) -> String {
    remove_dot_segments(&decode_unreserved(path))
}

fn decode_unreserved(path: &str) -> String {
    let mut decoded = String::with_capacity(path.len());
    let mut pieces = path.split('%');
    decoded.push_str(pieces.next().unwrap_or_default());
    for piece in pieces {
        // two hex digits are ASCII, so `get(2..)` is on a char boundary
        match (percent_encoded_byte(piece.as_bytes()), piece.get(2..)) {
            (Some(byte), Some(after)) if is_unreserved(byte) => {
                decoded.push(char::from(byte));
                decoded.push_str(after);
            }
            (Some(byte), Some(after)) => {
                decoded.push_str(&format!("%{byte:02X}"));
                decoded.push_str(after);
            }
            _ => {
                decoded.push('%');
                decoded.push_str(piece);
            }
        }
    }
    decoded
}

fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986 5.2.4, "Remove Dot Segments", step by step as the RFC gives it,
/// for any path: rooted (`/a/../b`) or rootless (`x/../.well-known/...`,
/// the opaque path of a `urn:`), whose `..` can make it rooted.
fn remove_dot_segments(path: &str) -> String {
    let mut input = path.to_owned();
    let mut output = String::with_capacity(path.len());
    // The last segment of the output, and the "/" before it, go.
    let pop = |output: &mut String| output.truncate(output.rfind('/').unwrap_or(0));
    while !input.is_empty() {
        if input.starts_with("../") {
            input.drain(..3);
        } else if input.starts_with("./") {
            input.drain(..2);
        } else if input.starts_with("/./") {
            input.replace_range(..3, "/");
        } else if input == "/." {
            input.replace_range(.., "/");
        } else if input.starts_with("/../") {
            input.replace_range(..4, "/");
            pop(&mut output);
        } else if input == "/.." {
            input.replace_range(.., "/");
            pop(&mut output);
        } else if input == "." || input == ".." {
            input.clear();
        } else {
            // The first segment, with its leading "/" if any, up to the next "/".
            let from = usize::from(input.starts_with('/'));
            let end = input[from..].find('/').map_or(input.len(), |at| at + from);
            output.push_str(&input[..end]);
            input.drain(..end);
        }
    }
    output
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub() -> Url {
        Url::parse("https://example.com/.well-known/mercure").unwrap()
    }

    fn parse(body: &str) -> Result<Update, UpdateError> {
        parse_update(body.as_bytes(), &hub())
    }

    fn error(body: &str) -> UpdateError {
        parse(body).unwrap_err()
    }

    #[test]
    fn a_full_update_parses_into_its_fields() {
        let update = parse(
            "topic=https%3A%2F%2Fexample.com%2Fbooks%2F1&topic=https://example.com/users/42/books/1\
             &data=the+content%0Aline+2&private=on&id=urn:uuid:1&type=book&retry=3000",
        )
        .unwrap();
        assert_eq!(
            update,
            Update {
                topics: vec!["https://example.com/books/1".into(), "https://example.com/users/42/books/1".into()],
                data: "the content\nline 2".into(),
                private: true,
                id: Some("urn:uuid:1".into()),
                event_type: Some("book".into()),
                retry: Some(3000),
            }
        );
    }

    #[test]
    fn a_minimal_update_is_one_topic() {
        let update = parse("topic=bar").unwrap();
        assert_eq!(update.topics, ["bar"]);
        assert_eq!(update.data, "");
        assert!(!update.private);
        assert_eq!(update.id, None);
        assert_eq!(update.event_type, None);
        assert_eq!(update.retry, None);
    }

    #[test]
    fn an_update_must_contain_at_least_one_topic() {
        for body in ["", "data=x", "topics=x", "Topic=x", "&&", "private"] {
            assert_eq!(error(body), UpdateError::MissingTopic, "{body:?}");
            assert_eq!(error(body).status(), 400);
        }
    }

    #[test]
    fn the_first_topic_is_canonical_and_the_others_alternate_in_order() {
        let update = parse("topic=c&data=x&topic=a1&topic=a2").unwrap();
        assert_eq!(update.topics, ["c", "a1", "a2"]);
    }

    #[test]
    fn fields_must_be_utf8() {
        assert_eq!(error("topic=%FF"), UpdateError::InvalidUtf8);
        assert_eq!(error("topic=a&data=%C3%28"), UpdateError::InvalidUtf8);
        assert_eq!(error("topic=a&%FF=x"), UpdateError::InvalidUtf8);
        assert_eq!(UpdateError::InvalidUtf8.status(), 400);
    }

    #[test]
    fn topics_must_not_contain_forbidden_characters() {
        for topic in ["a%0Ab", "a%0D", "%00", "a%7F", "a%C2%85", "a%E2%80%AE", "a%E2%80%8B"] {
            let body = format!("topic=ok&topic={topic}");
            assert_eq!(error(&body), UpdateError::TopicForbiddenCharacter, "{topic}");
        }
        assert_eq!(UpdateError::TopicForbiddenCharacter.status(), 400);
    }

    #[test]
    fn a_topic_must_not_be_exactly_the_wildcard() {
        assert_eq!(error("topic=*"), UpdateError::TopicIsWildcard);
        assert_eq!(error("topic=a&topic=%2A"), UpdateError::TopicIsWildcard);
        assert_eq!(UpdateError::TopicIsWildcard.status(), 400);
        // only exactly `*`
        assert!(parse("topic=**").is_ok());
        assert!(parse("topic=https://example.com/*").is_ok());
    }

    #[test]
    fn the_served_path_is_reserved_whatever_the_hub_url_says() {
        let proxied = Url::parse("https://example.com/hub").unwrap();
        for topic in ["/.well-known/mercure/subscriptions/exact/a/b", "/hub/x", "https://x/.well-known/mercure"] {
            let body = format!("topic={}&data=x", crate::mercure::subscriptions::encode(topic));
            assert_eq!(
                parse_update(body.as_bytes(), &proxied).err(),
                Some(UpdateError::TopicInReservedNamespace),
                "{topic}"
            );
        }
    }

    #[test]
    fn topics_must_not_address_the_reserved_namespace() {
        let reserved = [
            "/.well-known/mercure",
            "/.well-known/mercure/",
            "/.well-known/mercure/subscriptions/exact/a/b",
            "https://example.com/.well-known/mercure/subscriptions/x",
            // whatever the scheme or authority
            "https://other.example/.well-known/mercure/subscriptions/x",
            "http://example.com:8080/.well-known/mercure",
            "urn:/.well-known/mercure/x",
            // percent-encoded unreserved characters are decoded first
            "/.well-known/%6Dercure/x",
            "/.well-known/%6dercure",
            "/%2Ewell-known/mercure/x",
            "/.well%2Dknown/mercure/x",
            // dot-segments are removed first
            "/.well-known/mercure/../mercure/x",
            "/.well-known/x/../mercure/subscriptions",
            "/a/b/../../.well-known/mercure/x",
            "/.well-known/./mercure/x",
            "/.well-known/mercure/%2E%2E/mercure/x",
            "/.well-known/%2e%2e/.well-known/mercure/x",
            // relative references resolve against the hub URL
            "mercure/x",
            "./mercure",
            "../.well-known/mercure/x",
            "",
            "?x=1",
            "#fragment",
            "//other.example/.well-known/mercure/x",
            // the WHATWG parser turns backslashes into slashes in http(s) URLs
            "\\.well-known\\mercure\\x",
        ];
        for topic in reserved {
            let body = format!("topic={}", topic.replace('%', "%25").replace('#', "%23"));
            assert_eq!(parse(&body), Err(UpdateError::TopicInReservedNamespace), "{topic:?}");
        }
        assert_eq!(UpdateError::TopicInReservedNamespace.status(), 400);
    }

    #[test]
    fn topics_near_the_reserved_namespace_are_fine() {
        let fine = [
            "/.well-known/mercurex",
            "/.well-known/mercure-x/y",
            "/.well-known/merc",
            "/.well-known/",
            "/.WELL-KNOWN/mercure/x",
            "/.well-known/Mercure/x",
            // an encoded slash is not a path separator
            "/.well-known%2Fmercure/x",
            "https://example.com/books/1",
            "https://example.com/books/.well-known/mercure",
            "bar",
            "urn:uuid:bb3de268-05b0-4c65-b44e-8f9acefc29d6",
            "mailto:.well-known/mercure",
        ];
        for topic in fine {
            let body = format!("topic={}", topic.replace('%', "%25"));
            assert!(parse(&body).is_ok(), "{topic:?}");
        }
    }

    #[test]
    fn a_topic_that_is_not_a_url_reference_is_not_refused_by_the_namespace_rule() {
        for topic in ["http://[::1", "https://exa mple.com/.well-known/mercure"] {
            assert!(hub().join(topic).is_err(), "{topic:?} should not parse");
            let body = format!("topic={}", topic.replace(' ', "+"));
            assert!(parse(&body).is_ok(), "{topic:?}");
        }
    }

    #[test]
    fn the_reserved_namespace_follows_the_hub_url_path() {
        let hub = Url::parse("https://example.com/prefix/hub").unwrap();
        let parse = |topic: &str| parse_update(format!("topic={topic}").as_bytes(), &hub);
        assert_eq!(parse("/prefix/hub"), Err(UpdateError::TopicInReservedNamespace));
        assert_eq!(parse("hub/x"), Err(UpdateError::TopicInReservedNamespace));
        assert_eq!(
            parse("https://other.example/prefix/%68ub/subscriptions"),
            Err(UpdateError::TopicInReservedNamespace)
        );
        // (The path the hub is served at stays reserved: see below.)
        assert_eq!(parse("/.well-known/mercure/x"), Err(UpdateError::TopicInReservedNamespace));
        assert!(parse("/prefix/hubx").is_ok());
        assert!(parse("/prefix").is_ok());
    }

    #[test]
    fn private_must_be_set_by_the_field_name_and_its_value_must_not_be_interpreted() {
        for body in [
            "topic=a&private=on",
            "topic=a&private=",
            "topic=a&private",
            "topic=a&private=false",
            "topic=a&private=0",
            "private=off&topic=a",
        ] {
            assert!(parse(body).unwrap().private, "{body:?}");
        }
        assert!(!parse("topic=a&Private=on").unwrap().private);
        assert!(!parse("topic=a&privates").unwrap().private);
    }

    #[test]
    fn an_id_must_not_start_with_a_hash() {
        assert_eq!(error("topic=a&id=%23123"), UpdateError::IdStartsWithHash);
        assert_eq!(error("topic=a&id=%23"), UpdateError::IdStartsWithHash);
        assert_eq!(UpdateError::IdStartsWithHash.status(), 400);
        assert_eq!(parse("topic=a&id=a%23b").unwrap().id.as_deref(), Some("a#b"));
    }

    #[test]
    fn an_id_must_not_be_earliest() {
        assert_eq!(error("topic=a&id=earliest"), UpdateError::IdIsEarliest);
        assert_eq!(UpdateError::IdIsEarliest.status(), 400);
        assert!(parse("topic=a&id=Earliest").is_ok());
        assert!(parse("topic=a&id=earliest2").is_ok());
    }

    #[test]
    fn an_id_must_not_contain_forbidden_characters() {
        for id in ["a%0Ab", "%0D", "a%00", "%7F", "%C2%80", "%E2%80%8F", "%EF%BB%BF"] {
            let body = format!("topic=a&id={id}");
            assert_eq!(error(&body), UpdateError::IdForbiddenCharacter, "{id}");
        }
        assert_eq!(UpdateError::IdForbiddenCharacter.status(), 400);
    }

    #[test]
    fn an_empty_id_is_treated_as_absent() {
        assert_eq!(parse("topic=a&id=").unwrap().id, None);
        assert_eq!(parse("topic=a&id").unwrap().id, None);
    }

    #[test]
    fn a_type_must_not_contain_forbidden_characters() {
        for event_type in ["a%0Ab", "%0D", "%00", "%7F", "%C2%9F", "%E2%81%A6"] {
            let body = format!("topic=a&type={event_type}");
            assert_eq!(error(&body), UpdateError::TypeForbiddenCharacter, "{event_type}");
        }
        assert_eq!(UpdateError::TypeForbiddenCharacter.status(), 400);
    }

    #[test]
    fn a_type_must_not_be_mercure() {
        assert_eq!(error("topic=a&type=mercure"), UpdateError::TypeIsReserved);
        assert_eq!(UpdateError::TypeIsReserved.status(), 400);
        assert!(parse("topic=a&type=Mercure").is_ok());
        assert!(parse("topic=a&type=mercure2").is_ok());
    }

    #[test]
    fn retry_must_be_ascii_digits_only() {
        for retry in ["", "-1", "+1", "1.5", "1e3", " 1", "1 ", "0x10", "%EF%BC%91"] {
            let body = format!("topic=a&retry={retry}");
            assert_eq!(error(&body), UpdateError::RetryNotDigits, "{retry:?}");
        }
        assert_eq!(error("topic=a&retry"), UpdateError::RetryNotDigits);
        assert_eq!(UpdateError::RetryNotDigits.status(), 400);
        assert_eq!(parse("topic=a&retry=0").unwrap().retry, Some(0));
        assert_eq!(parse("topic=a&retry=007").unwrap().retry, Some(7));
        assert_eq!(parse("topic=a&retry=18446744073709551615").unwrap().retry, Some(u64::MAX));
        assert_eq!(parse("topic=a&retry=99999999999999999999").unwrap().retry, Some(u64::MAX));
    }

    #[test]
    fn unknown_fields_must_be_ignored() {
        let update = parse("topic=a&foo=bar&Topic=b&TYPE=mercure&retry_ms=x&id_=%23").unwrap();
        assert_eq!(update.topics, ["a"]);
        assert_eq!(update.event_type, None);
        assert_eq!(update.retry, None);
        assert_eq!(update.id, None);
    }

    #[test]
    fn single_valued_fields_take_their_first_occurrence() {
        let update = parse("topic=a&data=1&data=2&id=x&id=y&type=t&type=u&retry=1&retry=2").unwrap();
        assert_eq!(update.data, "1");
        assert_eq!(update.id.as_deref(), Some("x"));
        assert_eq!(update.event_type.as_deref(), Some("t"));
        assert_eq!(update.retry, Some(1));
        // later occurrences are not examined
        let update = parse("topic=a&id=x&id=earliest&type=t&type=mercure&retry=1&retry=no").unwrap();
        assert_eq!(update.id.as_deref(), Some("x"));
    }

    #[test]
    fn data_may_hold_any_utf8_including_line_breaks() {
        let update = parse("topic=a&data=%7B%22a%22%3A1%7D%0D%0Aid%3A+x%0Aevent%3A+y%00").unwrap();
        assert_eq!(update.data, "{\"a\":1}\r\nid: x\nevent: y\0");
    }

    #[test]
    fn more_fields_than_the_limit_must_be_refused_with_413() {
        let at_limit = format!("topic=a{}", "&x=1".repeat(MAX_FIELDS - 1));
        assert!(parse(&at_limit).is_ok());
        let over = format!("{at_limit}&x=1");
        assert_eq!(error(&over), UpdateError::TooManyFields);
        assert_eq!(UpdateError::TooManyFields.status(), 413);
    }

    #[test]
    fn more_topics_than_the_limit_must_be_refused_with_413() {
        let at_limit: Vec<String> = (0..MAX_TOPICS).map(|i| format!("topic=t{i}")).collect();
        assert_eq!(parse(&at_limit.join("&")).unwrap().topics.len(), MAX_TOPICS);
        let over = format!("{}&topic=one-more", at_limit.join("&"));
        assert_eq!(error(&over), UpdateError::TooManyTopics);
        assert_eq!(UpdateError::TooManyTopics.status(), 413);
    }

    #[test]
    fn a_topic_longer_than_the_limit_must_be_refused_with_413() {
        let at_limit = "t".repeat(MAX_TOPIC_BYTES);
        assert!(parse(&format!("topic={at_limit}")).is_ok());
        assert_eq!(error(&format!("topic={at_limit}t")), UpdateError::TopicTooLong);
        assert_eq!(UpdateError::TopicTooLong.status(), 413);
    }

    #[test]
    fn an_id_longer_than_the_limit_must_be_refused_with_413() {
        let at_limit = "i".repeat(MAX_ID_BYTES);
        assert!(parse(&format!("topic=a&id={at_limit}")).is_ok());
        assert_eq!(error(&format!("topic=a&id={at_limit}i")), UpdateError::IdTooLong);
        assert_eq!(UpdateError::IdTooLong.status(), 413);
    }

    #[test]
    fn a_type_longer_than_the_limit_must_be_refused_with_413() {
        let at_limit = "e".repeat(MAX_TYPE_BYTES);
        assert!(parse(&format!("topic=a&type={at_limit}")).is_ok());
        assert_eq!(error(&format!("topic=a&type={at_limit}e")), UpdateError::TypeTooLong);
        assert_eq!(UpdateError::TypeTooLong.status(), 413);
    }

    #[test]
    fn a_retry_longer_than_the_limit_must_be_refused_with_413() {
        let at_limit = "1".repeat(MAX_RETRY_DIGITS);
        assert!(parse(&format!("topic=a&retry={at_limit}")).is_ok());
        assert_eq!(error(&format!("topic=a&retry={at_limit}1")), UpdateError::RetryTooLong);
        assert_eq!(UpdateError::RetryTooLong.status(), 413);
    }

    #[test]
    fn every_error_has_a_reason() {
        assert_eq!(UpdateError::MissingTopic.to_string(), "missing topic");
        assert_eq!(UpdateError::TopicInReservedNamespace.reason(), "topic is in the hub's reserved namespace");
    }

    #[test]
    fn path_normalisation_decodes_unreserved_characters_and_removes_dot_segments() {
        let table = [
            ("/", "/"),
            ("", ""),
            ("x", "x"),
            ("/a/b", "/a/b"),
            ("/%61/%7e%2D%2e%5F", "/a/~-._"),
            ("/a%2fb", "/a%2Fb"),
            ("/a%3ab%20", "/a%3Ab%20"),
            ("/a%zz%4", "/a%zz%4"),
            ("/a/./b", "/a/b"),
            ("/a/../b", "/b"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/..", "/"),
            ("/../../a", "/a"),
            ("/a/%2E%2E/b", "/b"),
            ("/a/.%2e", "/"),
            ("/a//b", "/a//b"),
            // Rootless (opaque) paths too; a `..` can make one rooted.
            ("x/../.well-known/mercure/y", "/.well-known/mercure/y"),
            ("a/./b", "a/b"),
            ("../a", "a"),
            ("./a", "a"),
            (".", ""),
            ("..", ""),
        ];
        for (path, expected) in table {
            assert_eq!(normalized_path(path), expected, "{path:?}");
        }
    }
}
