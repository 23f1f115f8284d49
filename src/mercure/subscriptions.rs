//! Active subscriptions, as the spec's "Active Subscriptions" section writes
//! them: the topic of a subscription event, its JSON document, the
//! collection documents of the subscription API, and which subscriptions an
//! API path asks for. Strings in, strings out; the server keeps the live
//! subscriptions (`crate::broadcast::presence`) and decides who may read them.
//!
//! **Percent-encoding exactly once.** A topic is the hub's path, then
//! `/subscriptions/{match_type}/{match}/{subscriber}` expanded per RFC 6570
//! simple expansion: every byte of a value outside RFC 3986's unreserved set
//! (`A-Z a-z 0-9 - . _ ~`) is written `%XX`, including a `%` the value
//! already holds. So `a%2Fb` becomes `a%252Fb`, never `a%2Fb` again, and
//! [`parse_path`] decoding each segment once gives back exactly what was
//! encoded.
//!
//! **0.x clients** (`--mercure-compat 0`) knew an older form: the topic
//! `/.well-known/mercure/subscriptions/{topic}/{subscriber}` and a JSON-LD
//! document with `@context`, `type: "Subscription"` and `topic`. A
//! subscription made by a 0.x client (a `topic=` selector) is written in
//! that form, so the 0.x presence pages already deployed keep working; a
//! 1.0 one in the 1.0 form.

use std::fmt::Write as _;

/// The collection of every subscription; the other API paths are below it.
pub const COLLECTION_PATH: &str = "/.well-known/mercure/subscriptions";

/// The JSON-LD context of 0.x documents.
const LEGACY_CONTEXT: &str = "https://mercure.rocks/";

/// Which protocol's form a subscription is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// The 1.0 draft: `{match_type}/{match}/{subscriber}`, JSON.
    Standard,
    /// 0.x: `{topic}/{subscriber}`, JSON-LD.
    Legacy,
}

/// One subscription, as an event or the API describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscription<'a> {
    pub form: Form,
    /// The canonical matcher type name (`exact`, `urlpattern`; a 0.x
    /// selector's type is not written).
    pub match_type: &'a str,
    /// The matcher as the subscriber gave it.
    pub matcher: &'a str,
    /// The hub-made subscriber id.
    pub subscriber: &'a str,
    pub active: bool,
    /// The token's payload for this subscription, as JSON text (an object,
    /// serialized by the hub from a verified token).
    pub payload: Option<&'a str>,
}

impl Subscription<'_> {
    /// The topic of this subscription's events, which is also its `id` and
    /// its URL in the API (relative to the hub's origin).
    pub fn topic(&self) -> String {
        let mut topic = String::with_capacity(COLLECTION_PATH.len() + self.matcher.len() * 2 + 64);
        topic.push_str(COLLECTION_PATH);
        if self.form == Form::Standard {
            topic.push('/');
            topic.push_str(self.match_type);
        }
        topic.push('/');
        encode_into(&mut topic, self.matcher);
        topic.push('/');
        encode_into(&mut topic, self.subscriber);
        topic
    }

    /// The JSON document of the subscription (an event's data, and an item
    /// of a collection).
    pub fn document(&self) -> String {
        let mut out = String::with_capacity(256);
        self.write_document(&mut out);
        out
    }

    /// Appends [`Subscription::document`] to `out`.
    pub fn write_document(&self, out: &mut String) {
        let id = self.topic();
        out.push('{');
        match self.form {
            Form::Standard => {
                field(out, "id", &id);
                out.push_str(",\"type\":\"subscription\",");
                field(out, "match_type", self.match_type);
                out.push(',');
                field(out, "match", self.matcher);
            }
            Form::Legacy => {
                field(out, "@context", LEGACY_CONTEXT);
                out.push(',');
                field(out, "id", &id);
                out.push_str(",\"type\":\"Subscription\",");
                field(out, "topic", self.matcher);
            }
        }
        out.push(',');
        field(out, "subscriber", self.subscriber);
        let _ = write!(out, ",\"active\":{}", self.active);
        if let Some(payload) = self.payload {
            out.push_str(",\"payload\":");
            out.push_str(payload);
        }
        out.push('}');
    }
}

/// Writes `"name":"value"` with the value as a JSON string.
fn field(out: &mut String, name: &str, value: &str) {
    // Serializing a str cannot fail.
    out.push_str(&serde_json::to_string(name).unwrap_or_default());
    out.push(':');
    out.push_str(&serde_json::to_string(value).unwrap_or_default());
}

/// Appends `value` percent-encoded as RFC 6570 simple expansion does: every
/// byte but the unreserved ones as `%XX` (upper-case hex).
pub fn encode_into(out: &mut String, value: &str) {
    for &byte in value.as_bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
}

/// `value` percent-encoded (see [`encode_into`]).
pub fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    encode_into(&mut out, value);
    out
}

/// Decodes one path segment's `%XX` escapes, once. `None` for a bad escape
/// or bytes that are not UTF-8.
pub fn decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while let Some(&byte) = bytes.get(at) {
        if byte == b'%' {
            // Two hex digits, exactly (`from_str_radix` alone would also
            // take a sign: `%+1`).
            let hex = bytes.get(at + 1..at + 3).filter(|hex| hex.iter().all(u8::is_ascii_hexdigit))?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            at += 3;
        } else {
            out.push(byte);
            at += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// What a subscription API path asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    /// `/subscriptions`: every subscription.
    All,
    /// `/subscriptions/{match_type}/{match}`: those of one matcher.
    Matcher { match_type: String, matcher: String },
    /// `/subscriptions/{match_type}/{match}/{subscriber}`: one.
    One { match_type: String, matcher: String, subscriber: String },
    /// 0.x `/subscriptions/{topic}`: those of one topic selector.
    LegacyTopic { topic: String },
    /// 0.x `/subscriptions/{topic}/{subscriber}`: one.
    LegacyOne { topic: String, subscriber: String },
}

impl Query {
    /// Whether the subscription is one the query asks for.
    pub fn wants(&self, subscription: &Subscription<'_>) -> bool {
        let standard = subscription.form == Form::Standard;
        match self {
            Query::All => true,
            Query::Matcher { match_type, matcher } => {
                standard && subscription.match_type == match_type && subscription.matcher == matcher
            }
            Query::One { match_type, matcher, subscriber } => {
                standard
                    && subscription.match_type == match_type
                    && subscription.matcher == matcher
                    && subscription.subscriber == subscriber
            }
            Query::LegacyTopic { topic } => !standard && subscription.matcher == topic,
            Query::LegacyOne { topic, subscriber } => {
                !standard && subscription.matcher == topic && subscription.subscriber == subscriber
            }
        }
    }

    /// Whether the answer is one subscription's document, not a collection.
    pub fn is_single(&self) -> bool {
        matches!(self, Query::One { .. } | Query::LegacyOne { .. })
    }

    /// The canonical topic form of what the query asks for, as the start
    /// of the topics it wants (`false`), or the one topic (`true`): how a
    /// store keyed by topic (the cluster's roster) selects them.
    pub fn topic_prefix(&self) -> (String, bool) {
        let mut out = String::from(COLLECTION_PATH);
        out.push('/');
        let exact = match self {
            Query::All => false,
            Query::Matcher { match_type, matcher } => {
                out.push_str(match_type);
                out.push('/');
                encode_into(&mut out, matcher);
                out.push('/');
                false
            }
            Query::One { match_type, matcher, subscriber } => {
                out.push_str(match_type);
                out.push('/');
                encode_into(&mut out, matcher);
                out.push('/');
                encode_into(&mut out, subscriber);
                true
            }
            Query::LegacyTopic { topic } => {
                encode_into(&mut out, topic);
                out.push('/');
                false
            }
            Query::LegacyOne { topic, subscriber } => {
                encode_into(&mut out, topic);
                out.push('/');
                encode_into(&mut out, subscriber);
                true
            }
        };
        (out, exact)
    }

    /// The path of what the query asks for, in canonical form (each
    /// variable encoded as in event topics): how it is authorized, as a
    /// topic, and the `id` of the answer, however the client encoded it.
    pub fn canonical_path(&self) -> String {
        match self.topic_prefix() {
            (path, true) => path,
            (prefix, false) => prefix.strip_suffix('/').unwrap_or(&prefix).to_owned(),
        }
    }

    /// Whether the answer is in the 0.x form (JSON-LD).
    pub fn is_legacy(&self) -> bool {
        matches!(self, Query::LegacyTopic { .. } | Query::LegacyOne { .. })
    }
}

/// Whether `path` is the subscription API's (the collection or below it).
pub fn is_api_path(path: &str) -> bool {
    path.strip_prefix(COLLECTION_PATH).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// What an API `path` (as sent, still percent-encoded) asks for; `None` if
/// it names nothing (a 404). `legacy` also takes the 0.x shapes: one
/// segment (a topic), or two whose first is not a matcher type.
pub fn parse_path(path: &str, legacy: bool) -> Option<Query> {
    let rest = path.strip_prefix(COLLECTION_PATH)?;
    if rest.is_empty() {
        return Some(Query::All);
    }
    let segments: Vec<&str> = rest.strip_prefix('/')?.split('/').collect();
    let is_type = |segment: &str| matches!(segment, "exact" | "urlpattern");
    match segments[..] {
        [match_type, matcher] if is_type(match_type) => {
            Some(Query::Matcher { match_type: match_type.to_owned(), matcher: decode(matcher)? })
        }
        [match_type, matcher, subscriber] if is_type(match_type) => Some(Query::One {
            match_type: match_type.to_owned(),
            matcher: decode(matcher)?,
            subscriber: decode(subscriber)?,
        }),
        // (A 0.x topic spelled like a matcher type would read as the 1.0
        // collection of that type: refused, rather than ambiguous.)
        [topic] if legacy && !topic.is_empty() && !is_type(topic) => Some(Query::LegacyTopic { topic: decode(topic)? }),
        [topic, subscriber] if legacy && !subscriber.is_empty() => {
            Some(Query::LegacyOne { topic: decode(topic)?, subscriber: decode(subscriber)? })
        }
        _ => None,
    }
}

/// The opening of a collection document, up to the array's `[`: `id` is the
/// requested path, `last_event_id` the reconciliation cursor (also in the
/// `Link` header; the body's `lastEventID` is what 0.x clients read, and
/// the 1.0 document may carry more properties).
pub fn collection_start(id: &str, last_event_id: &str, legacy: bool) -> String {
    let mut out = String::with_capacity(160);
    out.push('{');
    if legacy {
        field(&mut out, "@context", LEGACY_CONTEXT);
        out.push(',');
    }
    field(&mut out, "id", id);
    out.push_str(if legacy { ",\"type\":\"Subscriptions\"," } else { ",\"type\":\"subscriptions\"," });
    field(&mut out, "lastEventID", last_event_id);
    out.push_str(",\"subscriptions\":[");
    out
}

/// The end of a collection document.
pub const COLLECTION_END: &str = "]}";

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    fn sample(form: Form, active: bool, payload: Option<&'static str>) -> Subscription<'static> {
        Subscription {
            form,
            match_type: "urlpattern",
            matcher: "https://example.com/:selector",
            subscriber: "urn:uuid:bb3de268-05b0-4c65-b44e-8f9acefc29d6",
            active,
            payload,
        }
    }

    #[test]
    fn the_topic_is_the_spec_example() {
        assert_eq!(
            sample(Form::Standard, true, None).topic(),
            "/.well-known/mercure/subscriptions/urlpattern/https%3A%2F%2Fexample.com%2F%3Aselector/urn%3Auuid%3Abb3de268-05b0-4c65-b44e-8f9acefc29d6"
        );
    }

    #[test]
    fn values_are_encoded_exactly_once() {
        assert_eq!(encode("a%2Fb c/ü~._-"), "a%252Fb%20c%2F%C3%BC~._-");
        for value in ["a%2Fb", "https://x/{id}", "ü %", "", "/a/b?c#d"] {
            assert_eq!(decode(&encode(value)).as_deref(), Some(value), "{value}");
        }
        assert_eq!(decode("%2"), None);
        assert_eq!(decode("%zz"), None);
        assert_eq!(decode("%FF"), None, "not UTF-8");
        assert_eq!(decode("%+1"), None, "two hex digits, no sign");
        assert_eq!(decode("%2f"), Some("/".to_owned()), "either case");
    }

    #[test]
    fn the_document_has_every_property_and_parses() {
        let doc = sample(Form::Standard, false, Some("{\"foo\":\"bar\"}")).document();
        let json: Value = serde_json::from_str(&doc).unwrap();
        assert_eq!(json["id"], sample(Form::Standard, true, None).topic());
        assert_eq!(json["type"], "subscription");
        assert_eq!(json["match_type"], "urlpattern");
        assert_eq!(json["match"], "https://example.com/:selector");
        assert_eq!(json["subscriber"], "urn:uuid:bb3de268-05b0-4c65-b44e-8f9acefc29d6");
        assert_eq!(json["active"], false);
        assert_eq!(json["payload"]["foo"], "bar");
        let without: Value = serde_json::from_str(&sample(Form::Standard, true, None).document()).unwrap();
        assert!(without.get("payload").is_none());
    }

    #[test]
    fn the_legacy_form_is_the_0x_one() {
        let subscription =
            Subscription { matcher: "https://example.com/{selector}", ..sample(Form::Legacy, true, None) };
        assert_eq!(
            subscription.topic(),
            "/.well-known/mercure/subscriptions/https%3A%2F%2Fexample.com%2F%7Bselector%7D/urn%3Auuid%3Abb3de268-05b0-4c65-b44e-8f9acefc29d6"
        );
        let json: Value = serde_json::from_str(&subscription.document()).unwrap();
        assert_eq!(json["@context"], "https://mercure.rocks/");
        assert_eq!(json["type"], "Subscription");
        assert_eq!(json["topic"], "https://example.com/{selector}");
        assert!(json.get("match").is_none());
    }

    #[test]
    fn api_paths() {
        let one = sample(Form::Standard, true, None);
        assert_eq!(parse_path(COLLECTION_PATH, false), Some(Query::All));
        let query = parse_path(&one.topic(), false).unwrap();
        assert!(query.is_single() && query.wants(&one));
        assert!(!query.wants(&Subscription { subscriber: "urn:other", ..one }));
        let matcher = parse_path(&format!("{COLLECTION_PATH}/urlpattern/{}", encode(one.matcher)), false).unwrap();
        assert!(!matcher.is_single() && matcher.wants(&one) && matcher.wants(&Subscription { subscriber: "x", ..one }));
        assert!(!matcher.wants(&Subscription { match_type: "exact", ..one }));
        for nothing in [
            "/.well-known/mercure/subscriptionsX",
            "/.well-known/mercure/subscriptions/",
            "/.well-known/mercure/subscriptions/Exact/a",
            "/.well-known/mercure/subscriptions/exact/a/b/c",
            "/.well-known/mercure/subscriptions/exact/%zz",
            "/.well-known/mercure/subscriptions/a",
            "/.well-known/mercure/subscriptions/exact/%+1",
        ] {
            assert_eq!(parse_path(nothing, false), None, "{nothing}");
        }
        let legacy = Subscription { form: Form::Legacy, ..one };
        let query = parse_path(&legacy.topic(), true).unwrap();
        assert!(query.is_legacy() && query.is_single() && query.wants(&legacy) && !query.wants(&one));
        assert_eq!(parse_path(&legacy.topic(), false), None, "0.x shapes need the flag");
        assert_eq!(parse_path("/.well-known/mercure/subscriptions/exact", true), None, "0.x topic or 1.0 type");
        for path in [COLLECTION_PATH.to_owned(), one.topic(), legacy.topic(), format!("{COLLECTION_PATH}/exact/a")] {
            assert_eq!(parse_path(&path, true).unwrap().canonical_path(), path);
        }
        let lower = one.topic().replace("%3A", "%3a");
        assert_eq!(parse_path(&lower, false).unwrap().canonical_path(), one.topic(), "canonical whatever the case");
        assert!(is_api_path(COLLECTION_PATH) && is_api_path(&one.topic()) && !is_api_path("/.well-known/mercurex"));
    }

    #[test]
    fn the_topic_prefix_selects_what_the_query_wants() {
        let one = sample(Form::Standard, true, None);
        let legacy = Subscription { form: Form::Legacy, ..one };
        let queries = [
            Query::All,
            Query::Matcher { match_type: "urlpattern".into(), matcher: one.matcher.into() },
            Query::One {
                match_type: "urlpattern".into(),
                matcher: one.matcher.into(),
                subscriber: one.subscriber.into(),
            },
            Query::LegacyTopic { topic: one.matcher.into() },
            Query::LegacyOne { topic: one.matcher.into(), subscriber: one.subscriber.into() },
        ];
        for query in queries {
            let (prefix, exact) = query.topic_prefix();
            for subscription in [one, legacy, Subscription { subscriber: "urn:x", ..one }] {
                let topic = subscription.topic();
                let selected = if exact { topic == prefix } else { topic.starts_with(&prefix) };
                assert_eq!(selected, query.wants(&subscription), "{query:?} {topic}");
            }
            assert_eq!(exact, query.is_single());
        }
    }

    #[test]
    fn a_collection_is_valid_json() {
        for legacy in [false, true] {
            let one = sample(if legacy { Form::Legacy } else { Form::Standard }, true, None);
            let text = format!(
                "{}{},{}{COLLECTION_END}",
                collection_start(COLLECTION_PATH, "earliest", legacy),
                one.document(),
                one.document()
            );
            let json: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(json["lastEventID"], "earliest");
            assert_eq!(json["subscriptions"].as_array().unwrap().len(), 2);
            assert_eq!(json["type"], if legacy { "Subscriptions" } else { "subscriptions" });
        }
    }
}
