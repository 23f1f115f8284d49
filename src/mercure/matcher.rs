//! Topic matchers: the `exact` and `urlpattern` matcher types and the `*`
//! wildcard (spec sections "Matcher Types", "Exact Matching", "URL Pattern").
//!
//! A [`Matcher`] is compiled once and then tested against many topics, so
//! its hot path allocates as little as it can: an exact matcher compares
//! bytes, and a URL pattern tests the components of a [`Topic`] that parses
//! its URL at most once, however many patterns examine it.
//!
//! Matchers compare equal, and hash, by (type, text), so a broker can key a
//! map on them and compile a pattern shared by many subscribers once.

use std::cell::OnceCell;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use url::Url;
use urlpattern::quirks::MatchInput;
use urlpattern::{UrlPattern, UrlPatternInit, UrlPatternMatchInput, UrlPatternOptions};

use super::form::has_forbidden_char;

/// The longest matcher text accepted, in bytes.
///
/// Long enough for any realistic IRI or URL pattern (browsers and most
/// servers cap URLs near 2 KiB to 8 KiB, and a matcher travels in a query
/// string), short enough that compiling one, and holding
/// [`super::subscribe::MAX_MATCHERS`] of them per request, stays cheap. The
/// publish side caps topics at the same length
/// ([`super::update::MAX_TOPIC_BYTES`]), so every publishable topic can be
/// subscribed to exactly.
pub const MAX_MATCHER_BYTES: usize = 2048;

/// The reserved matcher value that matches every topic, whatever the type.
pub const WILDCARD: &str = "*";

/// A topic matcher type, named as in the spec's "Summary of Matcher Types".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MatcherType {
    /// `exact`: byte-for-byte comparison, the default.
    Exact,
    /// `urlpattern`: WHATWG URL Pattern, relative parts resolved against the hub URL.
    UrlPattern,
    /// An RFC 6570 URI template, as the pre-standardization (0.x) protocol's
    /// topic selectors were; only with `--mercure-compat 0`, never by name.
    UriTemplate,
}

impl MatcherType {
    /// The canonical (case-sensitive) name: `exact` or `urlpattern`.
    pub const fn name(self) -> &'static str {
        match self {
            MatcherType::Exact => "exact",
            MatcherType::UrlPattern => "urlpattern",
            MatcherType::UriTemplate => "uritemplate",
        }
    }

    /// The type with this canonical name; names are case-sensitive, so
    /// `Exact` is not a type.
    pub fn from_name(name: &str) -> Option<MatcherType> {
        match name {
            "exact" => Some(MatcherType::Exact),
            "urlpattern" => Some(MatcherType::UrlPattern),
            _ => None,
        }
    }
}

impl fmt::Display for MatcherType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a matcher could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatcherError {
    /// Longer than [`MAX_MATCHER_BYTES`].
    TooLong,
    /// Holds a character that [`has_forbidden_char`] refuses.
    ForbiddenCharacter,
    /// Not a well-formed URL Pattern (for the `urlpattern` type).
    InvalidPattern,
    /// Not a well-formed URI template (for the `uritemplate` type).
    InvalidTemplate,
}

impl MatcherError {
    /// A short explanation, fit for a 400 answer or a log line.
    pub const fn reason(self) -> &'static str {
        match self {
            MatcherError::TooLong => "topic matcher is too long",
            MatcherError::ForbiddenCharacter => "topic matcher contains a forbidden character",
            MatcherError::InvalidPattern => "topic matcher is not a valid URL pattern",
            MatcherError::InvalidTemplate => "topic selector is not a valid URI template",
        }
    }
}

impl fmt::Display for MatcherError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for MatcherError {}

/// A compiled topic matcher.
///
/// Cloning is cheap: a compiled URL pattern is shared. As a map key, clippy's
/// `mutable_key_type` lint fires on it, wrongly: `Hash` and `Eq` read only
/// the type and text, which never change; the interior mutability it sees is
/// the regex engine's scratch cache.
#[derive(Clone)]
pub struct Matcher {
    kind: MatcherType,
    text: Box<str>,
    compiled: Compiled,
}

#[derive(Clone)]
enum Compiled {
    Wildcard,
    Exact,
    Pattern(Arc<HubPattern>),
    /// A URI template, as a linear-time regular expression.
    Template(Arc<regex::Regex>),
}

/// A URL pattern and the hub URL its relative parts, and relative topics,
/// are resolved against.
struct HubPattern {
    /// Always `regex::Regex`, a linear-time engine: matching cannot
    /// backtrack catastrophically, which is the spec's "URL-Pattern Denial of
    /// Service" requirement (a linear-time engine, or a cost limit).
    pattern: UrlPattern<regex::Regex>,
    hub_url: Url,
}

impl Matcher {
    /// Compiles `text` as a matcher of type `kind`.
    ///
    /// `*` is the wildcard whatever `kind` is. An `exact` matcher is kept as
    /// it is: no resolution against the hub URL, no normalisation. A
    /// `urlpattern` matcher is parsed as a WHATWG URL Pattern with `hub_url`
    /// as its base URL (so relative patterns such as
    /// `/.well-known/mercure/subscriptions/exact/:topic/:subscriber` work),
    /// never with `ignoreCase`.
    ///
    /// Regular-expression groups inside a pattern (`:id(\d+)`) use the
    /// `regex` crate's syntax, not ECMAScript's: constructs that need
    /// backtracking (look-around, back-references) make the pattern invalid.
    /// That is the price of the linear-time guarantee.
    pub fn new(kind: MatcherType, text: &str, hub_url: &Url) -> Result<Matcher, MatcherError> {
        if text.len() > MAX_MATCHER_BYTES {
            return Err(MatcherError::TooLong);
        }
        if has_forbidden_char(text) {
            return Err(MatcherError::ForbiddenCharacter);
        }
        let compiled = if text == WILDCARD {
            Compiled::Wildcard
        } else {
            match kind {
                MatcherType::Exact => Compiled::Exact,
                MatcherType::UrlPattern => Compiled::Pattern(compiled_pattern(text, hub_url)?),
                MatcherType::UriTemplate => Compiled::Template(Arc::new(compile_template(text)?)),
            }
        };
        Ok(Matcher { kind, text: text.into(), compiled })
    }

    /// The matcher's type.
    pub fn kind(&self) -> MatcherType {
        self.kind
    }

    /// The matcher's text, as given.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Whether this is the `*` wildcard, which matches every topic.
    pub fn is_wildcard(&self) -> bool {
        matches!(self.compiled, Compiled::Wildcard)
    }

    /// Whether `topic` matches. To test one topic against many matchers,
    /// build a [`Topic`] once and use [`Matcher::matches_topic`].
    pub fn matches(&self, topic: &str) -> bool {
        self.matches_topic(&Topic::new(topic))
    }

    /// Whether `topic` matches, reusing the topic's parsed URL.
    pub fn matches_topic(&self, topic: &Topic<'_>) -> bool {
        match &self.compiled {
            Compiled::Wildcard => true,
            Compiled::Exact => topic.text.as_bytes() == self.text.as_bytes(),
            Compiled::Pattern(hub_pattern) => topic
                .url_components(&hub_pattern.hub_url)
                .is_some_and(|components| pattern_matches(&hub_pattern.pattern, components)),
            Compiled::Template(regex) => regex.is_match(topic.text),
        }
    }
}

/// Compiles an RFC 6570 URI template into an anchored regular expression
/// that matches the URIs it can expand to: literal text as itself, and each
/// expression as what its operator can produce. A simple `{var}` (and
/// `{.var}`, `{;var}`, the label and parameter forms) stays within one path
/// segment; `{+var}` and `{#var}` may span segments, as reserved expansion
/// may; `{/var}` is any number of segments; `{?var}` and `{&var}` a query.
/// This is the pre-standardization selectors' meaning (the reference 0.x
/// hub matched the same way), without variable values.
fn compile_template(text: &str) -> Result<regex::Regex, MatcherError> {
    let mut expression = String::from("^");
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let (literal, after) = rest.split_at(open);
        if literal.contains('}') {
            return Err(MatcherError::InvalidTemplate);
        }
        expression.push_str(&regex::escape(literal));
        let close = after.find('}').ok_or(MatcherError::InvalidTemplate)?;
        let inner = after.get(1..close).ok_or(MatcherError::InvalidTemplate)?;
        let (operator, variables) = match inner.chars().next() {
            Some(op @ ('+' | '#' | '.' | '/' | ';' | '?' | '&')) => (Some(op), &inner[1..]),
            _ => (None, inner),
        };
        let valid_name = |name: &str| {
            let name = name.trim_end_matches('*');
            let name = name.split(':').next().unwrap_or("");
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'%')
        };
        if variables.is_empty() || !variables.split(',').all(valid_name) {
            return Err(MatcherError::InvalidTemplate);
        }
        expression.push_str(match operator {
            None => "[^/?#]*",
            Some('+') => "[^?#]*",
            Some('#') => "(?:#.*)?",
            Some('.') => "(?:\\.[^/?#]*)*",
            Some('/') => "(?:/[^/?#]*)*",
            Some(';') => "(?:;[^/?#]*)*",
            Some('?') => "(?:\\?[^#]*)?",
            _ => "(?:&[^#]*)?",
        });
        rest = &after[close + 1..];
    }
    if rest.contains('}') {
        return Err(MatcherError::InvalidTemplate);
    }
    expression.push_str(&regex::escape(rest));
    expression.push('$');
    regex::Regex::new(&expression).map_err(|_| MatcherError::InvalidTemplate)
}

/// Most compiled patterns remembered per thread before the forgotten ones
/// (no matcher holds them any more) are swept out.
const PATTERN_CACHE_SWEEP: usize = 1024;

/// The compiled URL pattern `text` (relative to `hub_url`): the one already
/// held by a live matcher on this thread if there is one, else newly
/// compiled. Compiling a pattern costs some 250 µs (the `regex` compiler),
/// and many subscribers of a hub often send the same pattern (from the same
/// page): they share one compiled pattern instead of compiling it each.
/// The cache holds weak references, so it keeps nothing alive.
fn compiled_pattern(text: &str, hub_url: &Url) -> Result<Arc<HubPattern>, MatcherError> {
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::sync::Weak;
    /// (pattern, hub URL) to the pattern compiled for them.
    type Cache = HashMap<(Box<str>, Box<str>), Weak<HubPattern>>;
    thread_local! {
        static CACHE: RefCell<Cache> = RefCell::new(HashMap::new());
    }
    let key = (Box::from(text), Box::from(hub_url.as_str()));
    if let Some(pattern) = CACHE.with(|cache| cache.borrow().get(&key).and_then(Weak::upgrade)) {
        return Ok(pattern);
    }
    let pattern = Arc::new(HubPattern { pattern: compile_pattern(text, hub_url)?, hub_url: hub_url.clone() });
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.len() >= PATTERN_CACHE_SWEEP {
            cache.retain(|_, pattern| pattern.strong_count() > 0);
        }
        cache.insert(key, Arc::downgrade(&pattern));
    });
    Ok(pattern)
}

fn compile_pattern(text: &str, hub_url: &Url) -> Result<UrlPattern<regex::Regex>, MatcherError> {
    // The urlpattern crate (0.6) panics where overflow checks are on (debug
    // builds, tests, fuzzing) on a `]` with no `[` before it: its "IPv6
    // bracket depth" goes below zero (found by the mercure_subscribe fuzz
    // target). No valid pattern has one, so it is refused first; and any
    // other panic in the crate is caught and refused too, so a subscriber's
    // pattern can never take the event loop down.
    if has_unopened_bracket(text) {
        return Err(MatcherError::InvalidPattern);
    }
    let compile = || {
        let init = UrlPatternInit::parse_constructor_string::<regex::Regex>(text, Some(hub_url.clone()))
            .map_err(|_| MatcherError::InvalidPattern)?;
        let options = UrlPatternOptions { ignore_case: false, ..UrlPatternOptions::default() };
        UrlPattern::parse(init, options).map_err(|_| MatcherError::InvalidPattern)
    };
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(compile)).unwrap_or(Err(MatcherError::InvalidPattern))
}

/// Whether `text` has a `]` (not escaped with `\`) that no `[` opened.
pub fn has_unopened_bracket(text: &str) -> bool {
    let mut depth = 0usize;
    let mut escaped = false;
    for c in text.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '[' => depth += 1,
            ']' if depth == 0 => return true,
            ']' => depth -= 1,
            _ => {}
        }
    }
    false
}

/// The URL Pattern "match" algorithm over a URL's components, done by each
/// component's compiled matcher, as `UrlPattern::test` does, but without
/// copying the input URL's components again for every pattern.
fn pattern_matches(pattern: &UrlPattern<regex::Regex>, url: &MatchInput) -> bool {
    pattern.protocol.matcher.matches(&url.protocol).is_some()
        && pattern.username.matcher.matches(&url.username).is_some()
        && pattern.password.matcher.matches(&url.password).is_some()
        && pattern.hostname.matcher.matches(&url.hostname).is_some()
        && pattern.port.matcher.matches(&url.port).is_some()
        && pattern.pathname.matcher.matches(&url.pathname).is_some()
        && pattern.search.matcher.matches(&url.search).is_some()
        && pattern.hash.matcher.matches(&url.hash).is_some()
}

impl PartialEq for Matcher {
    fn eq(&self, other: &Matcher) -> bool {
        self.kind == other.kind && self.text == other.text
    }
}

impl Eq for Matcher {}

impl Hash for Matcher {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.kind.hash(state);
        self.text.hash(state);
    }
}

impl fmt::Debug for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Matcher").field("kind", &self.kind).field("text", &self.text).finish()
    }
}

/// A topic about to be tested against matchers.
///
/// The first URL pattern that examines it resolves it against the hub URL
/// and keeps the URL's components; later patterns reuse them. Every matcher
/// of one hub is built with that hub's URL, so the first pattern's hub URL
/// is everyone's.
pub struct Topic<'a> {
    text: &'a str,
    url_components: OnceCell<Option<MatchInput>>,
    /// Components resolved earlier (see [`Topic::resolved`]).
    resolved: Option<&'a Option<MatchInput>>,
}

/// A topic's URL components, resolved against a hub URL once
/// ([`Topic::resolve`]) and lent to [`Topic::resolved`] topics after.
pub type Resolved = Option<MatchInput>;

impl<'a> Topic<'a> {
    /// Wraps a topic; nothing is parsed yet.
    pub fn new(text: &'a str) -> Topic<'a> {
        Topic { text, url_components: OnceCell::new(), resolved: None }
    }

    /// Resolves `text` against `hub_url` as a URL pattern would: what
    /// [`Topic::resolved`] takes, to test the same topic many times (a
    /// private update against each subscriber's token) with one parse.
    pub fn resolve(text: &str, hub_url: &Url) -> Resolved {
        let url = hub_url.join(text).ok()?;
        urlpattern::quirks::parse_match_input(UrlPatternMatchInput::Url(url))
    }

    /// A topic whose components [`Topic::resolve`] gave, against the hub URL
    /// its matchers were built with.
    pub fn resolved(text: &'a str, components: &'a Resolved) -> Topic<'a> {
        Topic { text, url_components: OnceCell::new(), resolved: Some(components) }
    }

    /// The topic as given.
    pub fn as_str(&self) -> &'a str {
        self.text
    }

    /// The topic's URL components once resolved against `hub_url`, or `None`
    /// if it is not a URL reference (then no URL pattern matches it).
    fn url_components(&self, hub_url: &Url) -> Option<&MatchInput> {
        if let Some(resolved) = self.resolved {
            return resolved.as_ref();
        }
        self.url_components.get_or_init(|| Topic::resolve(self.text, hub_url)).as_ref()
    }
}

impl fmt::Debug for Topic<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Topic").field(&self.text).finish()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn hub() -> Url {
        Url::parse("https://example.com/.well-known/mercure").unwrap()
    }

    fn exact(text: &str) -> Matcher {
        Matcher::new(MatcherType::Exact, text, &hub()).unwrap()
    }

    fn pattern(text: &str) -> Matcher {
        Matcher::new(MatcherType::UrlPattern, text, &hub()).unwrap()
    }

    #[test]
    fn matcher_type_names_are_exact_and_urlpattern_and_case_sensitive() {
        assert_eq!(MatcherType::Exact.name(), "exact");
        assert_eq!(MatcherType::UrlPattern.name(), "urlpattern");
        assert_eq!(MatcherType::from_name("exact"), Some(MatcherType::Exact));
        assert_eq!(MatcherType::from_name("urlpattern"), Some(MatcherType::UrlPattern));
        for unknown in ["Exact", "EXACT", "URLPattern", "url_pattern", "regex", ""] {
            assert_eq!(MatcherType::from_name(unknown), None, "{unknown}");
        }
    }

    #[test]
    fn the_wildcard_matches_every_topic_whatever_the_matcher_type() {
        for kind in [MatcherType::Exact, MatcherType::UrlPattern] {
            let wildcard = Matcher::new(kind, "*", &hub()).unwrap();
            assert!(wildcard.is_wildcard());
            for topic in [
                "https://example.com/books/1",
                "bar",
                "",
                "*",
                "/.well-known/mercure/subscriptions/exact/x/y",
                "http://[not a url",
            ] {
                assert!(wildcard.matches(topic), "{kind} * vs {topic:?}");
            }
        }
    }

    #[test]
    fn exact_matching_must_compare_bytes_case_sensitively() {
        let matcher = exact("https://example.com/Books/1");
        assert!(matcher.matches("https://example.com/Books/1"));
        assert!(!matcher.matches("https://example.com/books/1"));
        assert!(!matcher.matches("https://EXAMPLE.com/Books/1"));
        assert!(!matcher.matches("https://example.com/Books/1/"));
        assert!(!matcher.matches("https://example.com/Books/"));
    }

    #[test]
    fn exact_matching_must_not_resolve_relative_values_against_the_hub_url() {
        let relative = exact("/books/1");
        assert!(relative.matches("/books/1"));
        assert!(!relative.matches("https://example.com/books/1"));
        let absolute = exact("https://example.com/books/1");
        assert!(!absolute.matches("/books/1"));
    }

    #[test]
    fn exact_matching_must_not_normalise_unicode_or_iris() {
        // NFC "é" versus "e" + combining acute accent
        assert!(!exact("caf\u{e9}").matches("cafe\u{301}"));
        // percent-encoding and IRI forms are different bytes
        assert!(!exact("https://example.com/caf\u{e9}").matches("https://example.com/caf%C3%A9"));
        assert!(!exact("https://example.com/a/../b").matches("https://example.com/b"));
        assert!(!exact("https://example.com:443/b").matches("https://example.com/b"));
    }

    #[test]
    fn absolute_url_patterns_must_match_as_the_url_pattern_standard_says() {
        let books = pattern("https://example.com/books/:id");
        assert!(books.matches("https://example.com/books/1"));
        assert!(books.matches("https://example.com/books/abc"));
        assert!(!books.matches("https://example.com/books/1/chapters/2"));
        assert!(!books.matches("https://example.com/books/"));
        assert!(!books.matches("https://example.org/books/1"));
        assert!(!books.matches("http://example.com/books/1"));
        // the default port is the same URL
        assert!(books.matches("https://example.com:443/books/1"));

        let users = pattern("https://example.com/users/42/*");
        assert!(users.matches("https://example.com/users/42/books/1"));
        assert!(!users.matches("https://example.com/users/43/books/1"));

        let digits = pattern("https://example.com/books/:id(\\d+)");
        assert!(digits.matches("https://example.com/books/12"));
        assert!(!digits.matches("https://example.com/books/twelve"));
    }

    #[test]
    fn url_patterns_must_not_ignore_case_except_in_the_host() {
        let books = pattern("https://example.com/books/:id");
        assert!(!books.matches("https://example.com/BOOKS/1"));
        // hosts are case-insensitive through URL canonicalisation
        assert!(books.matches("https://EXAMPLE.com/books/1"));
        assert!(pattern("https://EXAMPLE.COM/books/:id").matches("https://example.com/books/1"));
    }

    #[test]
    fn relative_url_patterns_must_be_resolved_against_the_hub_url() {
        let events = pattern("/.well-known/mercure/subscriptions/exact/:topic/:subscriber");
        assert!(
            events.matches("/.well-known/mercure/subscriptions/exact/https%3A%2F%2Fexample.com%2Ffoo/urn%3Auuid%3A1")
        );
        assert!(events.matches("https://example.com/.well-known/mercure/subscriptions/exact/a/b"));
        assert!(!events.matches("https://other.example/.well-known/mercure/subscriptions/exact/a/b"));
        assert!(!events.matches("/.well-known/mercure/subscriptions/urlpattern/a/b"));

        let books = pattern("/books/:id");
        assert!(books.matches("https://example.com/books/1"));
        assert!(books.matches("/books/1"));
        assert!(!books.matches("https://example.org/books/1"));
    }

    #[test]
    fn relative_topics_must_be_resolved_against_the_hub_url() {
        let books = pattern("https://example.com/books/:id");
        assert!(books.matches("/books/1"));
        assert!(books.matches("../books/1"));
        // a bare name is relative to the hub URL's directory
        assert!(pattern("https://example.com/.well-known/:name").matches("bar"));
    }

    #[test]
    fn a_topic_that_is_not_a_url_reference_must_never_match_a_url_pattern() {
        let anything = pattern("*://*");
        assert!(anything.matches("https://example.com/x"));
        for topic in ["http://[::1", "https://exa mple.com/", "http://a:99999/"] {
            assert!(hub().join(topic).is_err(), "{topic:?} should not parse");
            assert!(!anything.matches(topic), "{topic:?}");
        }
    }

    #[test]
    fn invalid_url_patterns_must_be_refused() {
        let hub = hub();
        for text in [
            "https://example.com/books/:id(",
            "https://example.com/(unclosed",
            "https://example.com/:id(a)(b",
            "https://example.com/:",
            "https://example.com/{",
        ] {
            assert_eq!(
                Matcher::new(MatcherType::UrlPattern, text, &hub).err(),
                Some(MatcherError::InvalidPattern),
                "{text:?}"
            );
            // the same text is a fine exact matcher
            assert!(Matcher::new(MatcherType::Exact, text, &hub).is_ok());
        }
    }

    #[test]
    fn regular_expression_groups_that_need_backtracking_are_refused() {
        let hub = hub();
        for text in [
            "https://example.com/:a((?=x)x)", // look-ahead
            "https://example.com/:a((x)\\2)", // back-reference
        ] {
            assert_eq!(
                Matcher::new(MatcherType::UrlPattern, text, &hub).err(),
                Some(MatcherError::InvalidPattern),
                "{text:?}"
            );
        }
    }

    #[test]
    fn url_patterns_must_be_matched_in_linear_time_even_when_pathological() {
        // (a+)+$ backtracks exponentially on "aaaa…b" in a backtracking engine
        let matcher = pattern("https://example.com/:x((?:a+)+)");
        let topic = format!("https://example.com/{}b", "a".repeat(MAX_MATCHER_BYTES));
        let started = std::time::Instant::now();
        assert!(!matcher.matches(&topic));
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn matchers_longer_than_the_limit_are_refused() {
        let hub = hub();
        let at_limit = format!("https://example.com/{}", "a".repeat(MAX_MATCHER_BYTES - 20));
        assert_eq!(at_limit.len(), MAX_MATCHER_BYTES);
        assert!(Matcher::new(MatcherType::Exact, &at_limit, &hub).is_ok());
        assert!(Matcher::new(MatcherType::UrlPattern, &at_limit, &hub).is_ok());
        let over = format!("{at_limit}a");
        for kind in [MatcherType::Exact, MatcherType::UrlPattern] {
            assert_eq!(Matcher::new(kind, &over, &hub).err(), Some(MatcherError::TooLong));
        }
    }

    #[test]
    fn matchers_with_forbidden_characters_are_refused() {
        let hub = hub();
        for text in ["a\nb", "https://example.com/\u{202E}x", "\u{0}"] {
            for kind in [MatcherType::Exact, MatcherType::UrlPattern] {
                assert_eq!(Matcher::new(kind, text, &hub).err(), Some(MatcherError::ForbiddenCharacter));
            }
        }
    }

    #[test]
    // Hash and Eq read only the type and text, which never change; the
    // interior mutability clippy sees is the regex engine's scratch cache.
    #[allow(clippy::mutable_key_type)]
    fn matchers_are_equal_and_hash_alike_by_type_and_text() {
        let mut set = HashSet::new();
        assert!(set.insert(pattern("https://example.com/books/:id")));
        assert!(!set.insert(pattern("https://example.com/books/:id")));
        assert!(set.insert(exact("https://example.com/books/:id")));
        assert!(set.insert(pattern("https://example.com/books/:name")));
        assert_eq!(set.len(), 3);
        assert_eq!(exact("*"), exact("*"));
        assert_ne!(exact("*"), pattern("*"));

        let books = pattern("https://example.com/books/:id");
        assert_eq!(books.kind(), MatcherType::UrlPattern);
        assert_eq!(books.text(), "https://example.com/books/:id");
        assert_eq!(books.clone(), books);
    }

    #[test]
    fn a_topic_is_resolved_once_for_many_patterns() {
        let topic = Topic::new("/books/1");
        assert!(topic.url_components.get().is_none());
        assert!(!exact("/books/2").matches_topic(&topic));
        assert!(topic.url_components.get().is_none(), "exact needs no URL");
        assert!(pattern("/books/:id").matches_topic(&topic));
        assert!(topic.url_components.get().is_some());
        assert!(pattern("https://example.com/*").matches_topic(&topic));
        assert!(!pattern("/authors/:id").matches_topic(&topic));
        assert_eq!(topic.as_str(), "/books/1");
    }

    /// Guards `pattern_matches`, which tests components one by one, against
    /// the crate's own `UrlPattern::test`.
    #[test]
    fn component_matching_agrees_with_the_url_pattern_crate() {
        let hub = hub();
        let patterns = [
            "https://example.com/books/:id",
            "https://example.com/books/:id?",
            "https://example.com/books/*",
            "/books/:id(\\d+)",
            "https://:sub.example.com/*",
            "https://example.com/search?q=:q",
            "https://example.com/page#:section",
            "*://*/books/:id",
            "urn:*",
            "https://user:pass@example.com/*",
            "https://example.com:8443/*",
            "https://example.com/{books/}?:id",
            "/.well-known/mercure/subscriptions/:type/:topic/:subscriber",
        ];
        let topics = [
            "https://example.com/books/1",
            "https://example.com/books/",
            "https://example.com/books",
            "https://example.com/books/12/x",
            "/books/7",
            "/books/x",
            "https://a.example.com/x",
            "https://example.com/search?q=rust",
            "https://example.com/page#intro",
            "http://example.org/books/3",
            "urn:uuid:bb3de268-05b0-4c65-b44e-8f9acefc29d6",
            "https://user:pass@example.com/",
            "https://example.com:8443/x",
            "bar",
            "/.well-known/mercure/subscriptions/exact/a%2Fb/urn%3Ax",
        ];
        let mut agreed_matches = 0;
        for text in patterns {
            let matcher = Matcher::new(MatcherType::UrlPattern, text, &hub).unwrap();
            let init = UrlPatternInit::parse_constructor_string::<regex::Regex>(text, Some(hub.clone())).unwrap();
            let reference: UrlPattern = UrlPattern::parse(init, Default::default()).unwrap();
            for topic in topics {
                let url = hub.join(topic).unwrap();
                let expected = reference.test(UrlPatternMatchInput::Url(url)).unwrap();
                assert_eq!(matcher.matches(topic), expected, "{text} vs {topic}");
                agreed_matches += usize::from(expected);
            }
        }
        assert!(agreed_matches >= patterns.len(), "the table should exercise matches too");
    }

    #[test]
    fn identical_patterns_share_one_compiled_pattern_while_one_is_alive() {
        let hub = Url::parse("https://hub.example/.well-known/mercure").unwrap();
        let compiled = |m: &Matcher| match &m.compiled {
            Compiled::Pattern(pattern) => Arc::as_ptr(pattern),
            _ => panic!("a pattern"),
        };
        let first = Matcher::new(MatcherType::UrlPattern, "https://example.com/shared/:id", &hub).unwrap();
        let second = Matcher::new(MatcherType::UrlPattern, "https://example.com/shared/:id", &hub).unwrap();
        assert_eq!(compiled(&first), compiled(&second), "compiled once");
        let other = Matcher::new(MatcherType::UrlPattern, "https://example.com/other/:id", &hub).unwrap();
        assert_ne!(compiled(&first), compiled(&other));
        assert!(second.matches("https://example.com/shared/7") && !other.matches("https://example.com/shared/7"));
    }
}
