//! The checks of the Mercure targets (`form`, `mercure_subscribe`,
//! `mercure_publish`, `mercure_token`), and what the `request` target needs
//! to judge Mercure answers. Part of the checks module (`fuzz/checks/mod.rs`),
//! shared the same way by the fuzz targets and `tests/fuzz_corpus.rs`.
//!
//! The references here are written from the texts, not from `src/mercure`:
//!
//! * [`reference_form`]: the WHATWG URL Standard's
//!   `application/x-www-form-urlencoded` parser (split on `&`, skip empty
//!   pieces, first `=`, `+` to space, percent-decode leaving an invalid `%`
//!   as it is), with strict UTF-8 at the end as Mercure asks.
//! * [`reference_forbidden`]: the spec's forbidden characters (C0, DEL, C1,
//!   general category `Cf`), with `Cf` from the `regex` crate's own Unicode
//!   tables (`\p{Cf}`), not from the `unicode-properties` crate the code uses.
//! * [`reference_reserved`]: the Publication section's reserved namespace:
//!   resolve with the `url` crate (the WHATWG parser, as the spec says),
//!   decode percent-encoded unreserved characters and remove dot-segments
//!   (RFC 3986 5.2.4, the input-buffer algorithm, for every path), then
//!   compare with the hub's path or the hub's path and `/`.
//! * [`reference_subscription`], [`reference_update`]: the Subscription and
//!   Publication sections over those pairs, with bare-sse's documented bounds
//!   and choices (the first of a single-valued field wins, an empty `id` or
//!   `type` is absent, a whole query or body must be UTF-8).
//! * URL patterns are judged by the `urlpattern` crate's own
//!   `UrlPattern::test`, given the topic and the hub URL as a JavaScript
//!   caller would (`pattern.test(topic, hubURL)`).
//! * [`reference_presented`]: "Presenting the Access Token": the header wins;
//!   `Bearer`, in any case, one space, an RFC 6750 `b64token`; else the first
//!   cookie of the configured name, quotes removed.
//! * Accepted tokens are re-checked from their own bytes: the signature is
//!   what the `jsonwebtoken` crate's signer (not its verifier) makes of the
//!   first two segments, and the header and claims are decoded here.

use std::borrow::Cow;
use std::sync::OnceLock;

use bare_sse::broadcast::event::{EventId, MercureFields, Publish, Published, Receipt};
use bare_sse::mercure::form::{self, FormError};
use bare_sse::mercure::matcher::{MAX_MATCHER_BYTES, Matcher, MatcherType, Topic, WILDCARD};
use bare_sse::mercure::subscribe::{self, MAX_MATCHERS, MAX_PARAMETERS};
use bare_sse::mercure::token::{self, Alg, Role, Verifier, VerifierConfig};
use bare_sse::mercure::update::{self, MAX_FIELDS, MAX_TOPICS, Update, UpdateError};
use jsonwebtoken::{Algorithm, EncodingKey};
use regex::Regex;
use serde_json::Value;
use url::Url;
use urlpattern::quirks::{self, StringOrInit};
use urlpattern::{UrlPattern, UrlPatternInit, UrlPatternOptions};

use super::{SseEvent, normalise_newlines, parse_event_stream, take, tolerated};

/// The hub URL the subscribe and publish targets resolve against (the
/// spec's default hub path, on the spec examples' host).
pub const HUB_URL: &str = "https://example.com/.well-known/mercure";

/// A second hub for the publish target, whose path is `/`: the spec's rule
/// then reserves `/` and paths starting `//` only.
pub const ROOT_HUB_URL: &str = "https://hub.example/";

/// The HMAC secret, issuer and clock of the token target and of the
/// `request` target's Mercure hub (byte 2, bit 3). The committed seeds'
/// tokens are signed with this secret (HS256), and valid at [`TOKEN_NOW`].
pub const TOKEN_SECRET: &[u8] = b"!ChangeThisMercureHubJWTSecretKey!";
pub const TOKEN_ISSUER: &str = "https://issuer.example";
/// 2026-01-01T00:00:00Z.
pub const TOKEN_NOW: u64 = 1_767_225_600;
/// The `aud` the token target's tokens must name.
pub const TOKEN_RESOURCE: &str = HUB_URL;

fn url(text: &str) -> Url {
    Url::parse(text).expect("a valid URL")
}

fn hub() -> &'static Url {
    static HUB: OnceLock<Url> = OnceLock::new();
    HUB.get_or_init(|| url(HUB_URL))
}

fn regex(cell: &'static OnceLock<Regex>, pattern: &str) -> &'static Regex {
    cell.get_or_init(|| Regex::new(pattern).expect("a valid regex"))
}

// ---------------------------------------------------------------------------
// form: mercure::form::parse and has_forbidden_char
// ---------------------------------------------------------------------------

/// URL Standard, "percent-decode" a byte sequence: `%` and two ASCII hex
/// digits is the byte they write; any other `%` is itself.
fn percent_decode(input: &[u8]) -> Vec<u8> {
    let mut output = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        let byte = input[i];
        let hex = |at: usize| input.get(at).and_then(|&b| char::from(b).to_digit(16));
        match (byte, hex(i + 1), hex(i + 2)) {
            (b'%', Some(high), Some(low)) => {
                output.push((high * 16 + low) as u8);
                i += 3;
            }
            _ => {
                output.push(byte);
                i += 1;
            }
        }
    }
    output
}

/// One name/value piece of a form, raw and decoded (not yet UTF-8).
struct RawPair<'a> {
    raw_name: &'a [u8],
    raw_value: &'a [u8],
    name: Vec<u8>,
    value: Vec<u8>,
}

/// URL Standard 5.1, "application/x-www-form-urlencoded parsing", up to the
/// UTF-8 decoding.
fn whatwg_pairs(input: &[u8]) -> Vec<RawPair<'_>> {
    let plus_to_space = |bytes: &[u8]| -> Vec<u8> { bytes.iter().map(|&b| if b == b'+' { b' ' } else { b }).collect() };
    input
        .split(|&b| b == b'&')
        .filter(|bytes| !bytes.is_empty())
        .map(|bytes| {
            let (raw_name, raw_value) = match bytes.iter().position(|&b| b == b'=') {
                Some(at) => (&bytes[..at], &bytes[at + 1..]),
                None => (bytes, &b""[..]),
            };
            let name = percent_decode(&plus_to_space(raw_name));
            let value = percent_decode(&plus_to_space(raw_value));
            RawPair { raw_name, raw_value, name, value }
        })
        .collect()
}

/// What `form::parse(input, max_pairs)` must return: the pairs in order, each
/// strictly UTF-8; more than `max_pairs` is an error, found when the pair past
/// the bound is reached (pairs before it are decoded, and may fail first).
pub fn reference_form(input: &[u8], max_pairs: usize) -> Result<Vec<(String, String)>, FormError> {
    let mut pairs = Vec::new();
    for pair in whatwg_pairs(input) {
        if pairs.len() == max_pairs {
            return Err(FormError::TooManyPairs);
        }
        let text = |bytes: Vec<u8>| String::from_utf8(bytes).map_err(|_| FormError::InvalidUtf8);
        pairs.push((text(pair.name)?, text(pair.value)?));
    }
    Ok(pairs)
}

/// Whether `s` holds a character the spec forbids in topics, matchers, ids
/// and types: C0 (U+0000-U+001F), DEL, C1 (U+0080-U+009F), or `Cf`, by the
/// `regex` crate's Unicode tables.
pub fn reference_forbidden(s: &str) -> bool {
    static FORBIDDEN: OnceLock<Regex> = OnceLock::new();
    regex(&FORBIDDEN, r"[\x00-\x1F\x7F-\x{9F}\p{Cf}]").is_match(s)
}

/// `form::has_forbidden_char(s)`, checked against [`reference_forbidden`]. The
/// two Unicode tables may be of different versions: the code may also forbid
/// a character that is unassigned in the reference's version (the spec lets
/// a hub reject characters later versions put in `Cf`), nothing else.
pub fn checked_forbidden(s: &str) -> bool {
    static UNASSIGNED: OnceLock<Regex> = OnceLock::new();
    let actual = form::has_forbidden_char(s);
    if actual != reference_forbidden(s) {
        let mut buf = [0; 4];
        for c in s.chars() {
            let c_text = &*c.encode_utf8(&mut buf);
            let (code, reference) = (form::has_forbidden_char(c_text), reference_forbidden(c_text));
            let later_cf = code && regex(&UNASSIGNED, r"^\p{Cn}$").is_match(c_text);
            assert!(code == reference || later_cf, "has_forbidden_char({c:?} U+{:04X}) is {code}", u32::from(c));
        }
    }
    actual
}

/// `form`: the input, whole, is a form-urlencoded body or query.
/// `form::parse` must agree with [`reference_form`] (pairs, or which error)
/// under no bound, the real bounds (`MAX_FIELDS`, `MAX_PARAMETERS`), and
/// bounds at and just under the number of pairs; a pair needing no decoding
/// is borrowed, as documented. `has_forbidden_char` must agree with
/// [`reference_forbidden`] on the input (invalid UTF-8 replaced) and on every
/// decoded name and value.
pub fn check_form(data: &[u8]) {
    let pieces = whatwg_pairs(data);
    let count = pieces.len();
    let mut bounds = vec![usize::MAX, MAX_FIELDS, MAX_PARAMETERS, count, count.saturating_sub(1), 0];
    bounds.sort_unstable();
    bounds.dedup();
    for max_pairs in bounds {
        let parsed = form::parse(data, max_pairs);
        let owned = parsed
            .as_ref()
            .map_err(|e| *e)
            .map(|pairs| pairs.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect::<Vec<_>>());
        let expected = reference_form(data, max_pairs);
        assert_eq!(owned, expected, "form::parse with at most {max_pairs} pairs");
        let Ok(pairs) = parsed else { continue };
        assert!(pairs.len() <= max_pairs);
        for ((name, value), piece) in pairs.iter().zip(&pieces) {
            let plain = |raw: &[u8]| !raw.contains(&b'+') && !raw.contains(&b'%');
            if plain(piece.raw_name) {
                assert!(matches!(name, Cow::Borrowed(_)), "{name:?} needed no decoding but was copied");
            }
            if plain(piece.raw_value) {
                assert!(matches!(value, Cow::Borrowed(_)), "{value:?} needed no decoding but was copied");
            }
            checked_forbidden(name);
            checked_forbidden(value);
        }
    }
    checked_forbidden(&String::from_utf8_lossy(data));
}

// ---------------------------------------------------------------------------
// mercure_subscribe: mercure::subscribe::parse_subscription and the matchers
// ---------------------------------------------------------------------------

/// The URL pattern `text` compiles to with [`HUB_URL`] as its base, by the
/// `urlpattern` crate (the linear-time `regex` engine, case-sensitive).
fn reference_pattern(text: &str) -> Option<UrlPattern<regex::Regex>> {
    // bare-sse refuses a pattern with a `]` that no `[` opened (not escaped
    // with `\`), anywhere: stricter than URL Pattern, whose parser only
    // objects in a hostname, and there (the `urlpattern` crate) underflows
    // its bracket depth, a panic with overflow checks on. That rule is
    // bare-sse's own, not the spec's: the reference takes it as it is.
    if bare_sse::mercure::matcher::has_unopened_bracket(text) {
        return None;
    }
    let init = UrlPatternInit::parse_constructor_string::<regex::Regex>(text, Some(hub().clone())).ok()?;
    UrlPattern::parse(init, UrlPatternOptions { ignore_case: false, ..UrlPatternOptions::default() }).ok()
}

/// `pattern.test(topic, hubURL)`, as the URL Pattern standard's JavaScript
/// API has it: the topic is parsed as a URL against the hub URL; if it is
/// not one, nothing matches.
fn reference_test(pattern: &UrlPattern<regex::Regex>, topic: &str) -> bool {
    match quirks::process_match_input(StringOrInit::String(Cow::Borrowed(topic)), Some(HUB_URL)) {
        Ok(Some((input, _))) => pattern.test(input).expect("a URL is a valid match input"),
        Ok(None) => false,
        Err(e) => panic!("process_match_input({topic:?}): {e}"),
    }
}

/// Runs `f` and says whether it panicked, keeping the panic from the panic
/// hook (libFuzzer's aborts the process).
fn panics(f: impl FnOnce()) -> bool {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err();
    std::panic::set_hook(hook);
    panicked
}

/// Whether one of `values`, compiled as a URL pattern, panics in the
/// `urlpattern` crate itself (bug `urlpattern-bracket-underflow`: its
/// constructor-string parser takes one from its hostname's IPv6 bracket depth
/// for every unmatched `]`, which overflows below zero with overflow checks
/// on). The references here use that crate, so they cannot judge such an
/// input; the code under test must refuse it without panicking, which the
/// callers check before they skip the rest.
pub fn crate_panics_on<'a>(values: impl IntoIterator<Item = &'a str>) -> bool {
    let underflows = |text: &str| {
        text.contains(']')
            && panics(|| {
                let _ = UrlPatternInit::parse_constructor_string::<regex::Regex>(text, Some(hub().clone()));
            })
    };
    values.into_iter().any(underflows)
}

/// Whether `name` is in the reserved `match` namespace: `match`, or starting
/// with it, in any ASCII case.
fn in_match_namespace(name: &str) -> bool {
    name.len() >= 5 && name.as_bytes()[..5].eq_ignore_ascii_case(b"match")
}

/// A subscription: its matchers, by type and text, and its `last_event_id`.
pub type Subscription = (Vec<(MatcherType, String)>, Option<String>);

/// What a subscription query must give: its matchers (type and text, in
/// order, repeats dropped) and its first `last_event_id`; `None` for a 400.
///
/// Subscription section: the pairs of [`reference_form`] (at most
/// `MAX_PARAMETERS`, all UTF-8); `match` and `match_exact` are `exact`,
/// `match_urlpattern` is `urlpattern`, any other name in the `match`
/// namespace is refused; at most `MAX_MATCHERS` matcher parameters, each at
/// most `MAX_MATCHER_BYTES`, none with a forbidden character, every URL
/// pattern well formed (but `*`, the wildcard); at least one matcher.
pub fn reference_subscription(query: &[u8]) -> Option<Subscription> {
    let pairs = reference_form(query, MAX_PARAMETERS).ok()?;
    let mut matchers: Vec<(MatcherType, String)> = Vec::new();
    let mut parameters = 0;
    let mut last_event_id = None;
    for (name, value) in pairs {
        let kind = match name.as_str() {
            "match" | "match_exact" => MatcherType::Exact,
            "match_urlpattern" => MatcherType::UrlPattern,
            _ if in_match_namespace(&name) => return None,
            "last_event_id" => {
                last_event_id.get_or_insert(value);
                continue;
            }
            _ => continue,
        };
        parameters += 1;
        if parameters > MAX_MATCHERS || value.len() > MAX_MATCHER_BYTES || checked_forbidden(&value) {
            return None;
        }
        if kind == MatcherType::UrlPattern && value != WILDCARD && reference_pattern(&value).is_none() {
            return None;
        }
        let matcher = (kind, value);
        if !matchers.contains(&matcher) {
            matchers.push(matcher);
        }
    }
    (!matchers.is_empty()).then_some((matchers, last_event_id))
}

/// Topics to try a matcher on: fixed ones, the query's values, and the
/// matcher's text with its groups filled in (so that patterns match some).
fn candidate_topics(values: &[String], matcher_text: &str) -> Vec<String> {
    static GROUP: OnceLock<Regex> = OnceLock::new();
    let mut topics: Vec<String> = [
        "https://example.com/books/1",
        "/books/1",
        "bar",
        "",
        "*",
        "https://example.com/.well-known/mercure/subscriptions/exact/a/b",
        "urn:uuid:bb3de268-05b0-4c65-b44e-8f9acefc29d6",
        "http://[::1",
    ]
    .map(str::to_owned)
    .to_vec();
    topics.extend(values.iter().take(4).cloned());
    topics.push(matcher_text.to_owned());
    let filled = regex(&GROUP, r":[A-Za-z_$][A-Za-z0-9_$]*(\([^)]*\))?|\([^)]*\)").replace_all(matcher_text, "1");
    topics.push(filled.replace(['{', '}', '?'], "").replace('*', "x"));
    topics
}

/// `mercure_subscribe`: the input, whole, is the query of a
/// `GET /.well-known/mercure`, parsed against [`HUB_URL`].
/// `parse_subscription` must agree with [`reference_subscription`] (accept or
/// refuse with a reason; the matchers by type and text; `last_event_id`), and
/// what it accepts must be within the bounds. Each accepted matcher (the first
/// eight) is tried on [`candidate_topics`]: never a panic, the wildcard
/// matches all, `exact` compares bytes, `urlpattern` agrees with the
/// `urlpattern` crate's `test`; a [`Topic`] shared by all matchers gives the
/// same answers as a fresh one.
pub fn check_mercure_subscribe(query: &[u8]) {
    let pairs = reference_form(query, MAX_PARAMETERS).unwrap_or_default();
    let patterns = pairs.iter().filter(|(name, _)| name == "match_urlpattern").map(|(_, value)| value.as_str());
    if crate_panics_on(patterns) {
        assert!(subscribe::parse_subscription(query, hub()).is_err(), "a pattern the crate cannot parse is refused");
        return;
    }
    let parsed = subscribe::parse_subscription(query, hub());
    let request = match (parsed, reference_subscription(query)) {
        (Ok(request), Some((matchers, last_event_id))) => {
            let got: Vec<(MatcherType, String)> =
                request.matchers.iter().map(|m| (m.kind(), m.text().to_owned())).collect();
            assert_eq!(got, matchers, "matchers of {:?}", String::from_utf8_lossy(query));
            assert_eq!(request.last_event_id, last_event_id, "last_event_id");
            request
        }
        (Err(why), None) => {
            assert!(!why.is_empty(), "a refusal without a reason");
            return;
        }
        (parsed, expected) => {
            panic!(
                "query {:?}: parse_subscription gave {parsed:?}, expected {expected:?}",
                String::from_utf8_lossy(query)
            )
        }
    };
    assert!((1..=MAX_MATCHERS).contains(&request.matchers.len()));
    for matcher in &request.matchers {
        assert!(matcher.text().len() <= MAX_MATCHER_BYTES && !form::has_forbidden_char(matcher.text()));
        assert_eq!(matcher.is_wildcard(), matcher.text() == WILDCARD);
    }

    let values: Vec<String> = pairs.into_iter().map(|(_, value)| value).filter(|value| value.len() <= 512).collect();
    check_subscription_documents(&request.matchers, &values);
    for matcher in request.matchers.iter().take(8) {
        let topics = candidate_topics(&values, matcher.text());
        let shared: Vec<Topic> = topics.iter().map(|topic| Topic::new(topic)).collect();
        let pattern = match (matcher.kind(), matcher.is_wildcard()) {
            (MatcherType::UrlPattern, false) => Some(reference_pattern(matcher.text()).expect("compiled before")),
            _ => None,
        };
        for (topic, shared) in topics.iter().zip(&shared) {
            let matches = matcher.matches(topic);
            assert_eq!(matcher.matches_topic(shared), matches, "{matcher:?} on a shared topic {topic:?}");
            let expected = match &pattern {
                _ if matcher.is_wildcard() => true,
                Some(pattern) => reference_test(pattern, topic),
                None => topic == matcher.text(),
            };
            assert_eq!(matches, expected, "{matcher:?} matching {topic:?}");
        }
    }
}

/// Active subscriptions: for each matcher (the first eight) and each value
/// of the query taken as a subscriber id, in both forms, the event's topic
/// is an API path that names exactly that subscription (every variable
/// percent-encoded once, so decoding gives back the very strings), its
/// document is JSON with the spec's properties, and a roster selects it by
/// the query's topic prefix. Each value is also tried as an API path:
/// never a panic, and what it names agrees with the prefix.
fn check_subscription_documents(matchers: &[Matcher], values: &[String]) {
    use bare_sse::mercure::subscriptions::{self, Form, Subscription};
    // Hub-made ids are never empty.
    let subscribers: Vec<&str> =
        values.iter().map(String::as_str).filter(|v| !v.is_empty()).chain(["urn:uuid:x"]).take(4).collect();
    for matcher in matchers.iter().take(8) {
        for &subscriber in &subscribers {
            for form in [Form::Standard, Form::Legacy] {
                let subscription = Subscription {
                    form,
                    match_type: matcher.kind().name(),
                    matcher: matcher.text(),
                    subscriber,
                    active: true,
                    payload: Some("{\"a\":[1]}"),
                };
                let topic = subscription.topic();
                let legacy = form == Form::Legacy;
                let query = subscriptions::parse_path(&topic, legacy);
                // A 0.x topic that spells a matcher type reads as 1.0.
                let spells_a_type = legacy && matches!(matcher.text(), "exact" | "urlpattern");
                if !spells_a_type {
                    let query = query.unwrap_or_else(|| panic!("{topic:?} is not an API path"));
                    assert!(query.is_single() && query.wants(&subscription), "{topic:?} names {query:?}");
                    assert_eq!(query.topic_prefix(), (topic.clone(), true));
                }
                let document: serde_json::Value =
                    serde_json::from_str(&subscription.document()).expect("a subscription document is JSON");
                assert_eq!(document["id"], topic.as_str());
                assert_eq!(document["subscriber"], subscriber);
                assert_eq!(document[if legacy { "topic" } else { "match" }], matcher.text());
            }
        }
    }
    for value in values.iter().take(4) {
        for legacy in [false, true] {
            if let Some(query) = subscriptions::parse_path(value, legacy) {
                let (prefix, exact) = query.topic_prefix();
                assert!(prefix.starts_with(subscriptions::COLLECTION_PATH) && exact == query.is_single());
            }
        }
    }
}

// ---------------------------------------------------------------------------
// mercure_publish: mercure::update::parse_update, then framing
// ---------------------------------------------------------------------------

/// RFC 3986 6.2.2.2: percent-encoded unreserved characters decoded, other
/// percent-encodings with upper-case hex.
fn decode_unreserved(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |at: usize| bytes.get(at).and_then(|&b| char::from(b).to_digit(16));
        if let (b'%', Some(high), Some(low)) = (bytes[i], hex(i + 1), hex(i + 2)) {
            let byte = (high * 16 + low) as u8;
            if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
                out.push(byte);
            } else {
                out.extend_from_slice(format!("%{byte:02X}").as_bytes());
            }
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).expect("only ASCII was changed")
}

/// RFC 3986 5.2.4, "Remove Dot Segments", step by step with its input and
/// output buffers.
fn remove_dot_segments(path: &str) -> String {
    let mut input = path.to_owned();
    let mut output = String::new();
    let drop_last_segment = |output: &mut String| {
        let at = output.rfind('/').unwrap_or(0);
        output.truncate(at);
    };
    while !input.is_empty() {
        if input.starts_with("../") {
            input.drain(..3); // A
        } else if input.starts_with("./") {
            input.drain(..2); // A
        } else if input.starts_with("/./") {
            input.drain(..2); // B: "/./" becomes "/"
        } else if input == "/." {
            input = "/".to_owned(); // B
        } else if input.starts_with("/../") {
            input.drain(..3); // C: "/../" becomes "/"
            drop_last_segment(&mut output);
        } else if input == "/.." {
            input = "/".to_owned(); // C
            drop_last_segment(&mut output);
        } else if input == "." || input == ".." {
            input.clear(); // D
        } else {
            // E: the first segment, with its leading "/" if any.
            let start = usize::from(input.starts_with('/'));
            let end = input[start..].find('/').map_or(input.len(), |at| start + at);
            output.extend(input.drain(..end));
        }
    }
    output
}

/// Whether `topic` addresses the hub's reserved namespace (Publication
/// section): resolved against the hub URL, its normalised path is the hub's
/// normalised path or starts with it and `/`, whatever the scheme and host. A
/// topic that is not a URL reference does not.
pub fn reference_reserved(topic: &str, hub_url: &Url) -> bool {
    reserved_by(topic, hub_url, Rootless::Normalised)
}

/// Whether a rootless (opaque) path, such as `x/../y` in `urn:x/../y`, has
/// its dot-segments removed (RFC 3986 5.2.4 is defined for every path, and
/// 5.2.2 applies it to a rootless one) or is left as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rootless {
    Normalised,
    AsIs,
}

fn reserved_by(topic: &str, hub_url: &Url, rootless: Rootless) -> bool {
    let Ok(resolved) = hub_url.join(topic) else {
        return false;
    };
    let normalise = |path: &str| match rootless {
        Rootless::AsIs if !path.starts_with('/') => path.to_owned(),
        _ => remove_dot_segments(&decode_unreserved(path)),
    };
    let path = normalise(resolved.path());
    // The hub URL's path, and the path this server serves the hub at.
    [normalise(hub_url.path()), "/.well-known/mercure".to_owned()].iter().any(|reserved| {
        path == *reserved || path.strip_prefix(reserved.as_str()).is_some_and(|rest| rest.starts_with('/'))
    })
}

/// What `parse_update` must make of a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateVerdict {
    Accept(Update),
    /// Refused; the error is one of these: the violations of the first field
    /// in body order that has any (or of the whole body).
    Reject(Vec<UpdateError>),
}

/// Publication section, over the pairs of [`reference_form`] (at most
/// `MAX_FIELDS`, else 413; all UTF-8): `topic` repeatable (at most
/// `MAX_TOPICS`, each at most `MAX_TOPIC_BYTES`, no forbidden character, not
/// `*`, not in the reserved namespace), at least one; `data`, `id`, `type`,
/// `retry` single-valued, the first wins and later ones are not examined;
/// `private` by its name alone; `id` at most 256 bytes, not starting with
/// `#`, not `earliest`, no forbidden character, and absent when empty; `type`
/// at most 256 bytes, no forbidden character, not `mercure`, absent when
/// empty; `retry` 1 to 20 ASCII digits, saturating at `u64::MAX`; other
/// fields ignored.
pub fn reference_update(body: &[u8], hub_url: &Url) -> UpdateVerdict {
    reference_update_by(body, hub_url, Rootless::Normalised)
}

fn reference_update_by(body: &[u8], hub_url: &Url, rootless: Rootless) -> UpdateVerdict {
    let pairs = match reference_form(body, MAX_FIELDS) {
        Ok(pairs) => pairs,
        Err(FormError::TooManyPairs) => return UpdateVerdict::Reject(vec![UpdateError::TooManyFields]),
        Err(FormError::InvalidUtf8) => return UpdateVerdict::Reject(vec![UpdateError::InvalidUtf8]),
    };
    let mut topics: Vec<String> = Vec::new();
    let (mut data, mut id, mut event_type, mut retry) = (None, None, None, None);
    let mut private = false;
    for (name, value) in pairs {
        let mut violations = Vec::new();
        let mut violates = |yes: bool, error: UpdateError| {
            if yes {
                violations.push(error);
            }
        };
        match name.as_str() {
            "topic" => {
                violates(topics.len() == MAX_TOPICS, UpdateError::TooManyTopics);
                violates(value.len() > update::MAX_TOPIC_BYTES, UpdateError::TopicTooLong);
                violates(checked_forbidden(&value), UpdateError::TopicForbiddenCharacter);
                violates(value == WILDCARD, UpdateError::TopicIsWildcard);
                violates(reserved_by(&value, hub_url, rootless), UpdateError::TopicInReservedNamespace);
                topics.push(value);
            }
            "data" if data.is_none() => data = Some(value),
            "private" => private = true,
            "id" if id.is_none() => {
                violates(value.len() > update::MAX_ID_BYTES, UpdateError::IdTooLong);
                violates(value.starts_with('#'), UpdateError::IdStartsWithHash);
                violates(value == update::EARLIEST, UpdateError::IdIsEarliest);
                violates(checked_forbidden(&value), UpdateError::IdForbiddenCharacter);
                id = Some(value);
            }
            "type" if event_type.is_none() => {
                violates(value.len() > update::MAX_TYPE_BYTES, UpdateError::TypeTooLong);
                violates(checked_forbidden(&value), UpdateError::TypeForbiddenCharacter);
                violates(value == update::RESERVED_EVENT_TYPE, UpdateError::TypeIsReserved);
                event_type = Some(value);
            }
            "retry" if retry.is_none() => {
                let digits = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
                violates(!digits, UpdateError::RetryNotDigits);
                violates(value.len() > update::MAX_RETRY_DIGITS, UpdateError::RetryTooLong);
                // At most 20 digits: a u128 holds it.
                let number = if digits && value.len() <= 20 { value.parse::<u128>().unwrap_or(0) } else { 0 };
                retry = Some(u64::try_from(number).unwrap_or(u64::MAX));
            }
            _ => {}
        }
        if !violations.is_empty() {
            return UpdateVerdict::Reject(violations);
        }
    }
    if topics.is_empty() {
        return UpdateVerdict::Reject(vec![UpdateError::MissingTopic]);
    }
    UpdateVerdict::Accept(Update {
        topics,
        data: data.unwrap_or_default(),
        private,
        id: id.filter(|id| !id.is_empty()),
        event_type: event_type.filter(|t| !t.is_empty()),
        retry,
    })
}

/// What every Mercure update handed to the core must be, for `hub_url`.
pub fn check_valid_mercure_publish(publish: &Publish, hub_url: &Url) {
    let mercure = publish.mercure.as_ref().expect("a Mercure update");
    let topics = &publish.topics;
    assert!((1..=MAX_TOPICS).contains(&topics.len()), "{} topics", topics.len());
    for topic in topics {
        assert!(topic.len() <= update::MAX_TOPIC_BYTES, "a topic of {} bytes", topic.len());
        assert!(topic != WILDCARD && !reference_forbidden(topic), "topic {topic:?}");
        // Unless only the known `reserved-opaque-path` makes it reserved.
        let known = tolerated("reserved-opaque-path") && !reserved_by(topic, hub_url, Rootless::AsIs);
        assert!(
            !reference_reserved(topic, hub_url) || known,
            "topic {topic:?} is in the reserved namespace of {hub_url}"
        );
    }
    if let Some(id) = &mercure.id {
        assert!(!id.is_empty() && id.len() <= update::MAX_ID_BYTES, "id of {} bytes", id.len());
        assert!(!id.starts_with('#') && id != update::EARLIEST && !reference_forbidden(id), "id {id:?}");
    }
    if let Some(event_type) = &publish.event {
        assert!(!event_type.is_empty() && event_type.len() <= update::MAX_TYPE_BYTES);
        assert!(event_type != update::RESERVED_EVENT_TYPE && !reference_forbidden(event_type), "type {event_type:?}");
    }
}

/// Frames a valid Mercure update as the hub does, numbered `id`, and checks
/// that a client gets back its id (its own, or the hub's URN), type and data
/// (line endings normalised), with one `retry:` field if it set one; and that
/// the publisher is answered that same id. Returns the id.
pub fn check_mercure_framing(publish: &Publish, id: EventId) -> String {
    let mercure = publish.mercure.as_ref().expect("a Mercure update");
    publish.validate().unwrap_or_else(|why| panic!("a valid update fails Publish::validate: {why}"));
    let published = Published::new(id, publish);
    let public_id = mercure.id.clone().unwrap_or_else(|| id.urn());
    assert_eq!(published.public_id(), public_id);
    assert_eq!(published.is_private(), mercure.private);
    assert_eq!(Receipt::new(id, 0, publish).mercure_id.as_deref(), Some(public_id.as_str()), "the publisher's answer");

    let expected = SseEvent {
        kind: publish.event.clone().unwrap_or_else(|| "message".to_owned()),
        data: normalise_newlines(&publish.message),
        id: public_id.clone(),
    };
    let parsed = parse_event_stream(&published.frame);
    assert!(!parsed.pending, "the frame leaves an event open: {:?}", String::from_utf8_lossy(&published.frame));
    assert_eq!(parsed.events, [expected], "frame {:?}", String::from_utf8_lossy(&published.frame));
    assert_eq!(parsed.retries, mercure.retry.into_iter().collect::<Vec<_>>(), "retry");
    public_id
}

/// `mercure_publish`: the input, whole, is the body of a
/// `POST /.well-known/mercure`, parsed against [`HUB_URL`] and against
/// [`ROOT_HUB_URL`]. `parse_update` must agree with [`reference_update`]:
/// the same update, or a refusal (400 or 413) for a violation of the first
/// field that has one. An accepted update passes
/// [`check_valid_mercure_publish`] and [`check_mercure_framing`].
pub fn check_mercure_publish(body: &[u8]) {
    static ROOT_HUB: OnceLock<Url> = OnceLock::new();
    for hub_url in [hub(), ROOT_HUB.get_or_init(|| url(ROOT_HUB_URL))] {
        let parsed = update::parse_update(body, hub_url);
        if let Err(error) = &parsed {
            assert!(matches!(error.status(), 400 | 413), "{error:?} is a {}", error.status());
            assert!(!error.reason().is_empty());
        }
        let agrees = |expected: &UpdateVerdict| match (&parsed, expected) {
            (Ok(update), UpdateVerdict::Accept(expected)) => update == expected,
            (Err(error), UpdateVerdict::Reject(violations)) => violations.contains(error),
            _ => false,
        };
        let mut expected = reference_update(body, hub_url);
        if !agrees(&expected) && tolerated("reserved-opaque-path") {
            expected = reference_update_by(body, hub_url, Rootless::AsIs);
        }
        let update = match (parsed, expected) {
            (Ok(update), UpdateVerdict::Accept(expected)) => {
                assert_eq!(update, expected, "hub {hub_url}");
                update
            }
            (Err(error), UpdateVerdict::Reject(violations)) if violations.contains(&error) => continue,
            (parsed, expected) => panic!(
                "body {:?}, hub {hub_url}: parse_update gave {parsed:?}, expected {expected:?}",
                String::from_utf8_lossy(body)
            ),
        };
        let mercure = MercureFields { private: update.private, id: update.id.clone(), retry: update.retry };
        let publish = Publish {
            message: update.data.clone(),
            topics: update.topics.clone(),
            event: update.event_type.clone(),
            mercure: Some(mercure),
        };
        check_valid_mercure_publish(&publish, hub_url);
        check_mercure_framing(&publish, EventId { ms: 1_764_300_000_000, seq: 42 });
    }
}

// ---------------------------------------------------------------------------
// mercure_token: token::token_from_request and Verifier::verify
// ---------------------------------------------------------------------------

/// RFC 6750 2.1 `b64token`: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn is_b64token(token: &str) -> bool {
    static B64TOKEN: OnceLock<Regex> = OnceLock::new();
    regex(&B64TOKEN, r"^[A-Za-z0-9._~+/-]+=*$").is_match(token)
}

/// The token a request presents, by "Presenting the Access Token": with an
/// `Authorization` field, its token (the field must be `Bearer`, in any
/// case, one space and a `b64token`, else the request is malformed); without
/// one, the value of the first cookie named `cookie_name` (pairs split at
/// `;`, names and values trimmed of SP and HTAB, one pair of surrounding
/// double quotes removed), an empty one counting as none.
pub fn reference_presented<'a>(
    authorization: Option<&'a str>,
    cookie: Option<&'a str>,
    cookie_name: &str,
) -> Result<Option<&'a str>, ()> {
    if let Some(value) = authorization {
        let bytes = value.as_bytes();
        if bytes.len() < 7 || !bytes[..6].eq_ignore_ascii_case(b"Bearer") || bytes[6] != b' ' {
            return Err(());
        }
        let token = &value[7..];
        return if is_b64token(token) { Ok(Some(token)) } else { Err(()) };
    }
    let Some(cookie) = cookie else { return Ok(None) };
    let wsp: &[char] = &[' ', '\t'];
    let value = cookie.split(';').find_map(|pair| {
        let at = pair.find('=')?;
        (pair[..at].trim_matches(wsp) == cookie_name).then(|| pair[at + 1..].trim_matches(wsp))
    });
    let unquoted =
        value.map(|v| if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') { &v[1..v.len() - 1] } else { v });
    Ok(unquoted.filter(|token| !token.is_empty()))
}

/// The verifier of the token target: [`TOKEN_ISSUER`], HS256, [`TOKEN_SECRET`]
/// for both roles, relative patterns against [`HUB_URL`].
fn verifier() -> &'static Verifier {
    static VERIFIER: OnceLock<Verifier> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        let config = VerifierConfig {
            issuer: TOKEN_ISSUER,
            alg: Alg::HS256,
            publisher_key: TOKEN_SECRET,
            subscriber_key: None,
            hub_url: hub(),
        };
        Verifier::new(&config).expect("a valid key")
    })
}

/// RFC 4648 5, base64url without padding.
pub fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len() * 4 / 3 + 3);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, &b| (n << 8) | u32::from(b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

/// The bytes of unpadded base64url `text`, if it is the canonical encoding of
/// some bytes (no padding, unused bits zero).
fn from_base64url(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    for chunk in text.as_bytes().chunks(4) {
        if chunk.len() == 1 {
            return None;
        }
        let n = chunk.iter().try_fold(0u32, |n, &c| Some((n << 6) | value(c)?))? << (6 * (4 - chunk.len()));
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..chunk.len() - 1]);
    }
    (base64url(&out) == text).then_some(out)
}

/// The HS256 signature [`TOKEN_SECRET`] makes of `message`, base64url, by
/// `jsonwebtoken`'s signer.
fn sign(message: &str) -> String {
    let key = EncodingKey::from_secret(TOKEN_SECRET).expect("a valid secret");
    jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256).expect("HS256 signs")
}

/// A NumericDate (RFC 7519 2): a non-negative number of seconds, rounded
/// down (for `exp`) or up (for `nbf`) to the refusing side.
fn numeric_date(value: &Value, round_up: bool) -> Option<u64> {
    if let Some(seconds) = value.as_u64() {
        return Some(seconds);
    }
    let seconds = value.as_f64().filter(|s| s.is_finite() && *s >= 0.0)?;
    Some(if round_up { seconds.ceil() } else { seconds.floor() } as u64)
}

/// What must hold of the header and claims of a token the hub accepts, by
/// "Token Validation" (RFC 9068 and RFC 7519): `alg` the configured one,
/// `typ` `at+jwt` or `application/at+jwt` in any case, no key material;
/// `iss` the trusted issuer, `aud` naming the hub, `exp` in the future, `nbf`
/// (if any) not, `sub` (if any) a string. Returns the `exp` and `sub`.
fn claims_must_hold(header: &Value, claims: &Value) -> (u64, Option<String>) {
    assert_eq!(header.get("alg"), Some(&Value::from("HS256")), "accepted header {header}");
    let typ = header.get("typ").and_then(Value::as_str).expect("accepted a token without typ").to_ascii_lowercase();
    assert!(typ == "at+jwt" || typ == "application/at+jwt", "accepted typ {typ:?}");
    for key in ["jwk", "jku", "x5u", "x5c"] {
        assert!(header.get(key).is_none(), "accepted a header with {key}");
    }
    assert_eq!(claims.get("iss"), Some(&Value::from(TOKEN_ISSUER)), "accepted claims {claims}");
    let aud_ok = match claims.get("aud") {
        Some(Value::String(aud)) => aud == TOKEN_RESOURCE,
        Some(Value::Array(auds)) => auds.iter().all(Value::is_string) && auds.contains(&Value::from(TOKEN_RESOURCE)),
        _ => false,
    };
    assert!(aud_ok, "accepted aud {:?}", claims.get("aud"));
    let exp = claims.get("exp").and_then(|exp| numeric_date(exp, false)).expect("accepted without a valid exp");
    assert!(TOKEN_NOW < exp, "accepted an expired token: exp {exp}");
    if let Some(nbf) = claims.get("nbf") {
        let nbf = numeric_date(nbf, true).expect("accepted an nbf that is not a NumericDate");
        assert!(nbf <= TOKEN_NOW, "accepted a token before its nbf {nbf}");
    }
    let sub = match claims.get("sub") {
        None => None,
        Some(Value::String(sub)) => Some(sub.clone()),
        Some(other) => panic!("accepted sub {other}"),
    };
    (exp, sub)
}

/// Verifies `token` for `role`; if accepted, it must be what the signer
/// makes (no other encoding of the signature passes), and its own header and
/// claims must say what [`claims_must_hold`] asks. Returns whether accepted.
fn check_verify(token: &str, role: Role) -> bool {
    let Ok(grants) = verifier().verify(role, token, TOKEN_RESOURCE, TOKEN_NOW) else {
        return false;
    };
    let segments: Vec<&str> = token.split('.').collect();
    let [header, claims, signature] = segments[..] else {
        panic!("accepted a token of {} segments: {token:?}", segments.len());
    };
    assert_eq!(signature, sign(&format!("{header}.{claims}")), "accepted a signature the key did not make");
    let json = |segment: &str| -> Value {
        let bytes =
            from_base64url(segment).unwrap_or_else(|| panic!("accepted a segment not in base64url: {segment:?}"));
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("accepted a segment not JSON: {e}"))
    };
    let (exp, sub) = claims_must_hold(&json(header), &json(claims));
    assert_eq!((grants.expires_at, grants.subject), (exp, sub));
    true
}

/// Every string in a JSON value.
fn strings(value: &Value) -> Vec<String> {
    match value {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items.iter().flat_map(strings).collect(),
        Value::Object(members) => members.values().flat_map(strings).collect(),
        _ => Vec::new(),
    }
}

/// Whether `bytes` are the JSON text serde_json writes for the value they
/// hold (so no repeated member, which a struct would refuse and a map not).
fn canonical_json(bytes: &[u8]) -> Option<Value> {
    let value: Value = serde_json::from_slice(bytes).ok()?;
    (serde_json::to_vec(&value).ok()? == bytes).then_some(value)
}

/// Whether the hub must accept a token of this header and these claims,
/// correctly signed: both canonical JSON objects, the header exactly `alg`
/// HS256 and an `at+jwt` `typ`, the claims valid by [`claims_must_hold`] and
/// without `authorization_details`.
fn must_accept(header: &[u8], claims: &[u8]) -> bool {
    let (Some(header), Some(claims)) = (canonical_json(header), canonical_json(claims)) else {
        return false;
    };
    let (Value::Object(header_members), Value::Object(claim_members)) = (&header, &claims) else {
        return false;
    };
    let typ = header.get("typ").and_then(Value::as_str).map(str::to_ascii_lowercase);
    let aud_ok = match claims.get("aud") {
        Some(Value::String(aud)) => aud == TOKEN_RESOURCE,
        Some(Value::Array(auds)) => auds.iter().all(Value::is_string) && auds.contains(&Value::from(TOKEN_RESOURCE)),
        _ => false,
    };
    header_members.len() == 2
        && header.get("alg") == Some(&Value::from("HS256"))
        && matches!(typ.as_deref(), Some("at+jwt" | "application/at+jwt"))
        && claims.get("iss") == Some(&Value::from(TOKEN_ISSUER))
        && aud_ok
        && claims.get("exp").and_then(|exp| numeric_date(exp, false)).is_some_and(|exp| TOKEN_NOW < exp)
        && claims.get("nbf").is_none_or(|nbf| numeric_date(nbf, true).is_some_and(|nbf| nbf <= TOKEN_NOW))
        && claims.get("sub").is_none_or(Value::is_string)
        && !claim_members.contains_key("authorization_details")
}

/// `mercure_token`. Byte 0: bits 0-1 the mode, bit 2 the role (subscriber,
/// else publisher), bit 3 the cookie name (`tok`, else the default), bit 4 an
/// `Authorization` field is sent, bit 5 a `Cookie` field. The rest, by mode:
///
/// * 0 and 3: the `Authorization` value, `0xFF`, the `Cookie` value (invalid
///   UTF-8 replaced). `token_from_request` must agree with
///   [`reference_presented`]; a token found is then verified as in mode 1.
/// * 1: a token. `Verifier::verify` never panics, and accepts only a token
///   that passes [`check_verify`] (the fuzzer cannot sign: in practice, only
///   the seeds' own tokens).
/// * 2: a JOSE header, `0xFF`, claims (raw bytes), which the check encodes
///   and signs with [`TOKEN_SECRET`]: the verifier must accept what
///   [`must_accept`] says it must, and what it accepts passes
///   [`check_verify`].
pub fn check_mercure_token(data: &[u8]) {
    let mut data = data;
    let flags = take(&mut data, 1).first().copied().unwrap_or(0);
    let role = if flags & 4 != 0 { Role::Subscriber } else { Role::Publisher };
    match flags & 3 {
        1 => {
            check_verify(&String::from_utf8_lossy(data), role);
        }
        2 => {
            let (header, claims) = match data.iter().position(|&b| b == 0xFF) {
                Some(at) => (&data[..at], &data[at + 1..]),
                None => (data, &b""[..]),
            };
            // Matchers in authorization details are compiled too.
            let claim_strings = serde_json::from_slice::<Value>(claims).map(|v| strings(&v)).unwrap_or_default();
            if crate_panics_on(claim_strings.iter().map(String::as_str)) {
                return;
            }
            let message = format!("{}.{}", base64url(header), base64url(claims));
            let token = format!("{message}.{}", sign(&message));
            let accepted = check_verify(&token, role);
            if must_accept(header, claims) {
                assert!(
                    accepted,
                    "refused a valid token: {} / {}",
                    String::from_utf8_lossy(header),
                    String::from_utf8_lossy(claims)
                );
            }
        }
        _ => {
            let cookie_name = if flags & 8 != 0 { "tok" } else { token::DEFAULT_COOKIE_NAME };
            let mut parts = data.splitn(2, |&b| b == 0xFF).map(String::from_utf8_lossy);
            let (authorization, cookie) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
            let authorization = (flags & 16 != 0).then_some(&*authorization);
            let cookie = (flags & 32 != 0).then_some(&*cookie);
            let presented = token::token_from_request(authorization, cookie, cookie_name);
            let expected = reference_presented(authorization, cookie, cookie_name);
            assert_eq!(presented.map_err(|_| ()), expected, "Authorization {authorization:?}, Cookie {cookie:?}");
            if let Ok(Some(token)) = presented {
                check_verify(token, role);
            }
        }
    }
}
