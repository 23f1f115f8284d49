//! The pre-standardization (0.x) protocol, for clients already deployed:
//! with `--mercure-compat 0` the hub also takes subscribers' `topic`
//! parameters (exact topics, `*`, or RFC 6570 URI templates), their
//! `lastEventID` parameter, tokens with the old `mercure` claim
//! ([`crate::mercure::token::Verifier::verify_legacy`]), and the
//! `mercureAuthorization` cookie. The 1.0 spec's appendix "Changes from
//! Pre-Standardization Deployments" lists these differences. Without the
//! flag none of this is accepted: a `topic`-only subscription has no
//! matcher, which the 1.0 rules answer with 400.

use url::Url;

use super::form;
use super::matcher::{Matcher, MatcherError, MatcherType};
use super::subscribe::{MAX_MATCHERS, MAX_PARAMETERS, SubscriptionRequest};

/// The 0.x cookie that carried the token.
pub const COOKIE: &str = "mercureAuthorization";

/// A 0.x topic selector: `*`, a URI template (it has an expression, `{...}`),
/// or an exact topic.
pub fn selector(text: &str, hub_url: &Url) -> Result<Matcher, MatcherError> {
    let kind = if text.contains('{') { MatcherType::UriTemplate } else { MatcherType::Exact };
    Matcher::new(kind, text, hub_url)
}

/// Whether a subscription query is in the 0.x form: `topic` parameters
/// and no parameter of the 1.0 `match` namespace.
pub fn is_legacy_query(query: &[u8]) -> bool {
    let Ok(pairs) = form::parse(query, MAX_PARAMETERS) else { return false };
    let matching = |name: &str| name.get(..5).is_some_and(|p| p.eq_ignore_ascii_case("match"));
    pairs.iter().any(|(name, _)| name == "topic") && !pairs.iter().any(|(name, _)| matching(name))
}

/// Parses a 0.x subscription query: one matcher per `topic` (repeats
/// dropped), and `lastEventID` (or the 1.0 `last_event_id`), the first of
/// either. The error is the reason for a 400 answer.
pub fn parse_subscription(query: &[u8], hub_url: &Url) -> Result<SubscriptionRequest, &'static str> {
    let pairs = form::parse(query, MAX_PARAMETERS).map_err(|_| "the query is not valid form-encoded UTF-8")?;
    let mut matchers: Vec<Matcher> = Vec::new();
    let mut last_event_id = None;
    for (name, value) in pairs {
        match &*name {
            "topic" => {
                let matcher = selector(&value, hub_url).map_err(MatcherError::reason)?;
                if !matchers.contains(&matcher) {
                    matchers.push(matcher);
                }
                if matchers.len() > MAX_MATCHERS {
                    return Err("too many topic selectors");
                }
            }
            "lastEventID" | "last_event_id" if last_event_id.is_none() => last_event_id = Some(value.into_owned()),
            _ => {}
        }
    }
    if matchers.is_empty() {
        return Err("a subscription names at least one topic");
    }
    Ok(SubscriptionRequest { matchers, last_event_id })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub() -> Url {
        Url::parse("https://hub.example/.well-known/mercure").unwrap()
    }

    #[test]
    fn selectors_are_exact_topics_the_wildcard_or_uri_templates() {
        let cases: &[(&str, &[&str], &[&str])] = &[
            ("https://example.com/books/1", &["https://example.com/books/1"], &["https://example.com/books/10"]),
            ("*", &["anything", "https://x/y"], &[]),
            (
                "https://example.com/books/{id}",
                &["https://example.com/books/1", "https://example.com/books/"],
                &["https://example.com/books/1/reviews", "https://example.com/films/1"],
            ),
            ("https://example.com/{+path}", &["https://example.com/a/b/c"], &["https://example.com/a?x"]),
            ("https://example.com/users{/id}", &["https://example.com/users", "https://example.com/users/1/2"], &[]),
            ("https://example.com/s{?q,lang}", &["https://example.com/s", "https://example.com/s?q=a&lang=en"], &[]),
            ("a.b{.ext}", &["a.b", "a.b.json"], &["aXb"]),
        ];
        for (text, matching, not) in cases {
            let selector = selector(text, &hub()).unwrap();
            for topic in *matching {
                assert!(selector.matches(topic), "{text} should match {topic}");
            }
            for topic in *not {
                assert!(!selector.matches(topic), "{text} should not match {topic}");
            }
        }
        for bad in ["a{", "a{}", "a{b c}", "a{b}}", "{,}", "{a{b}}"] {
            assert_eq!(selector(bad, &hub()).unwrap_err(), MatcherError::InvalidTemplate, "{bad}");
        }
    }

    #[test]
    fn a_legacy_query_has_topics_and_no_match_parameter() {
        assert!(is_legacy_query(b"topic=a&topic=b"));
        assert!(!is_legacy_query(b"topic=a&match=b"));
        assert!(!is_legacy_query(b"match=a"));
        let request =
            parse_subscription(b"topic=a&topic=https%3A%2F%2Fx%2F%7Bid%7D&topic=a&lastEventID=7", &hub()).unwrap();
        let texts: Vec<&str> = request.matchers.iter().map(Matcher::text).collect();
        assert_eq!(texts, ["a", "https://x/{id}"]);
        assert_eq!(request.matchers[1].kind(), MatcherType::UriTemplate);
        assert_eq!(request.last_event_id.as_deref(), Some("7"));
        assert!(parse_subscription(b"lastEventID=7", &hub()).is_err());
        assert!(parse_subscription(b"topic=a%01", &hub()).is_err());
    }
}
