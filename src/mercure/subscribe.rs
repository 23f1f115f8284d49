//! The subscription request: topic matcher parameters and `last_event_id`
//! (spec sections "Subscription" and "Reconnection, State Reconciliation,
//! and Event Sourcing").
//!
//! The same grammar serves the query component of a `GET` and the
//! form-urlencoded body of a safe method such as `QUERY`. For a request with
//! both, the spec wants the union of their pairs, with the query's
//! `last_event_id` winning: pass `query + "&" + body`. Pairs keep their
//! order, so the first `last_event_id` is the query's.

use url::Url;

use super::form::{self, FormError};
use super::matcher::{Matcher, MatcherType};

/// Most topic matcher parameters in one request; more is 400. A browser
/// page rarely needs more than a handful, and every publish tests each
/// subscription, so a connection's share of that work stays bounded.
pub const MAX_MATCHERS: usize = 64;

/// Most parameters of any name in one request; more is 400. Room for
/// [`MAX_MATCHERS`] matchers, `last_event_id`, and whatever else a client
/// adds to its URL (cache busters, tracking), which is ignored.
pub const MAX_PARAMETERS: usize = 256;

/// A valid subscription request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionRequest {
    /// The topic matchers, in request order, never empty. Repeats of the same
    /// (type, text) are dropped, keeping the first (the spec allows this
    /// deduplication): one subscription per distinct matcher.
    pub matchers: Vec<Matcher>,
    /// The first `last_event_id`, as given (possibly empty). The
    /// `Last-Event-ID` header, when present, takes precedence over it; that
    /// is the server's choice to make.
    pub last_event_id: Option<String>,
}

/// Parses a subscription query (or body). `hub_url` is the base of relative
/// URL patterns. The error is the reason for a 400 answer.
///
/// `match` and `match_exact` give `exact` matchers, `match_urlpattern`
/// gives `urlpattern` ones; these names are case-sensitive. Any other name
/// in the reserved `match` namespace (equal to, or starting with, `match`
/// in any ASCII case) is refused rather than ignored, so that a typo or an
/// unsupported matcher type fails loudly. Other parameters are ignored,
/// but must be UTF-8 like the rest: the whole query is decoded strictly,
/// which is stricter than the spec (it requires UTF-8 of matcher values)
/// and refuses only queries no browser's `URLSearchParams` would produce.
pub fn parse_subscription(query: &[u8], hub_url: &Url) -> Result<SubscriptionRequest, &'static str> {
    let pairs = form::parse(query, MAX_PARAMETERS).map_err(|error| match error {
        FormError::TooManyPairs => "too many query parameters",
        FormError::InvalidUtf8 => "query parameters must be UTF-8",
    })?;
    let mut matchers: Vec<Matcher> = Vec::new();
    let mut matcher_parameters = 0;
    let mut last_event_id = None;
    for (name, value) in pairs {
        let kind = match &*name {
            "match" | "match_exact" => MatcherType::Exact,
            "match_urlpattern" => MatcherType::UrlPattern,
            _ if is_in_reserved_match_namespace(&name) => {
                return Err("unsupported topic matcher parameter");
            }
            "last_event_id" => {
                last_event_id.get_or_insert(value.into_owned());
                continue;
            }
            _ => continue,
        };
        matcher_parameters += 1;
        if matcher_parameters > MAX_MATCHERS {
            return Err("too many topic matchers");
        }
        let already_there = matchers.iter().any(|matcher| matcher.kind() == kind && matcher.text() == value);
        if !already_there {
            let matcher = Matcher::new(kind, &value, hub_url).map_err(|error| error.reason())?;
            matchers.push(matcher);
        }
    }
    // A subscription is created for each matcher parameter, and the
    // subscriber receives the topics its matchers select: with none, the
    // stream could never carry an update. Such a request is malformed (the
    // spec answers malformed requests with 400), not a valid idle stream.
    if matchers.is_empty() {
        return Err("missing topic matcher");
    }
    Ok(SubscriptionRequest { matchers, last_event_id })
}

/// Whether `name` is `match` or starts with it, compared ASCII
/// case-insensitively.
fn is_in_reserved_match_namespace(name: &str) -> bool {
    name.as_bytes().get(..5).is_some_and(|prefix| prefix.eq_ignore_ascii_case(b"match"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mercure::matcher::MAX_MATCHER_BYTES;

    fn hub() -> Url {
        Url::parse("https://example.com/.well-known/mercure").unwrap()
    }

    fn parse(query: &str) -> Result<SubscriptionRequest, &'static str> {
        parse_subscription(query.as_bytes(), &hub())
    }

    fn kinds_and_texts(query: &str) -> Vec<(MatcherType, String)> {
        parse(query).unwrap().matchers.iter().map(|matcher| (matcher.kind(), matcher.text().to_owned())).collect()
    }

    #[test]
    fn match_and_match_exact_give_exact_matchers_and_match_urlpattern_url_patterns() {
        assert_eq!(
            kinds_and_texts(
                "match=https%3A%2F%2Fexample.com%2Ffoo&match_exact=bar\
                 &match_urlpattern=https%3A%2F%2Fexample.com%2Fbar%2F%3Aid"
            ),
            [
                (MatcherType::Exact, "https://example.com/foo".into()),
                (MatcherType::Exact, "bar".into()),
                (MatcherType::UrlPattern, "https://example.com/bar/:id".into()),
            ]
        );
    }

    #[test]
    fn the_matchers_select_topics_by_their_type() {
        let request = parse("match=%2Fbooks%2F1&match_urlpattern=%2Fauthors%2F%3Aid").unwrap();
        let selects = |topic: &str| request.matchers.iter().any(|m| m.matches(topic));
        assert!(selects("/books/1"));
        assert!(!selects("https://example.com/books/1"));
        assert!(selects("https://example.com/authors/7"));
        assert!(selects("/authors/7"));
        assert!(!selects("/authors/"));
    }

    #[test]
    fn the_wildcard_is_accepted_with_any_matcher_parameter() {
        for query in ["match=*", "match_exact=*", "match_urlpattern=*", "match=%2A"] {
            let request = parse(query).unwrap();
            assert!(request.matchers[0].is_wildcard(), "{query}");
        }
    }

    #[test]
    fn matcher_names_are_decoded_before_they_are_recognised() {
        assert_eq!(
            kinds_and_texts("match%5Furlpattern=%2Fa%2F%3Aid&%6Datch=b"),
            [(MatcherType::UrlPattern, "/a/:id".into()), (MatcherType::Exact, "b".into()),]
        );
    }

    #[test]
    fn a_name_in_the_reserved_match_namespace_that_is_not_a_supported_type_must_be_rejected() {
        for name in [
            "MATCH",
            "Match",
            "match_EXACT",
            "Match_exact",
            "match_URLPattern",
            "match_regex",
            "match_",
            "matches",
            "matchx",
            "MATCHING",
            "match%20",
            "match_exact%20",
            "match+",
            "m%61tch_foo",
        ] {
            let query = format!("match=a&{name}=b");
            assert_eq!(parse(&query), Err("unsupported topic matcher parameter"), "{name}");
        }
    }

    #[test]
    fn names_outside_the_match_namespace_are_ignored() {
        let request = parse("topic=x&matc=y&xmatch=z&_=123&lastEventID=1&match=a").unwrap();
        assert_eq!(request.matchers.len(), 1);
        assert_eq!(request.last_event_id, None);
    }

    #[test]
    fn a_request_without_a_matcher_is_rejected() {
        for query in ["", "topic=a", "last_event_id=x", "&&"] {
            assert_eq!(parse(query), Err("missing topic matcher"), "{query:?}");
        }
    }

    #[test]
    fn a_parameter_without_a_value_is_a_matcher_with_an_empty_value() {
        assert_eq!(kinds_and_texts("match"), [(MatcherType::Exact, String::new())]);
    }

    #[test]
    fn matcher_values_must_be_utf8() {
        assert_eq!(parse("match=%FF"), Err("query parameters must be UTF-8"));
        assert_eq!(parse("match=a&x=%C3"), Err("query parameters must be UTF-8"));
    }

    #[test]
    fn matcher_values_must_not_contain_forbidden_characters() {
        for value in ["a%0Ab", "%00", "%1F", "%7F", "%C2%80", "%C2%9F", "%E2%80%AE", "%EF%BB%BF"] {
            for name in ["match", "match_exact", "match_urlpattern"] {
                let query = format!("{name}={value}");
                assert_eq!(parse(&query), Err("topic matcher contains a forbidden character"), "{query}");
            }
        }
    }

    #[test]
    fn a_value_that_is_not_a_valid_url_pattern_must_be_rejected() {
        assert_eq!(
            parse("match_urlpattern=https%3A%2F%2Fexample.com%2F%3Aid("),
            Err("topic matcher is not a valid URL pattern")
        );
        // the same value is a fine exact matcher
        assert!(parse("match=https%3A%2F%2Fexample.com%2F%3Aid(").is_ok());
    }

    #[test]
    fn more_matchers_than_the_limit_must_be_rejected() {
        let at_limit: Vec<String> = (0..MAX_MATCHERS).map(|i| format!("match=t{i}")).collect();
        assert_eq!(parse(&at_limit.join("&")).unwrap().matchers.len(), MAX_MATCHERS);
        let over = format!("{}&match_urlpattern=%2Fx", at_limit.join("&"));
        assert_eq!(parse(&over), Err("too many topic matchers"));
        // repeats count towards the limit too: it bounds parameters
        let repeats = vec!["match=same"; MAX_MATCHERS + 1].join("&");
        assert_eq!(parse(&repeats), Err("too many topic matchers"));
    }

    #[test]
    fn more_parameters_than_the_limit_must_be_rejected() {
        let query = format!("match=a{}", "&x=1".repeat(MAX_PARAMETERS));
        assert_eq!(parse(&query), Err("too many query parameters"));
    }

    #[test]
    fn a_matcher_longer_than_the_limit_must_be_rejected() {
        let at_limit = "m".repeat(MAX_MATCHER_BYTES);
        assert!(parse(&format!("match={at_limit}")).is_ok());
        assert_eq!(parse(&format!("match_urlpattern={at_limit}m")), Err("topic matcher is too long"));
    }

    #[test]
    fn identical_matchers_are_deduplicated_keeping_the_first() {
        assert_eq!(
            kinds_and_texts("match=a&match_exact=a&match_urlpattern=a&match=b&match_urlpattern=a"),
            [(MatcherType::Exact, "a".into()), (MatcherType::UrlPattern, "a".into()), (MatcherType::Exact, "b".into()),]
        );
    }

    #[test]
    fn last_event_id_is_single_valued_and_the_first_wins() {
        let request = parse("last_event_id=first&match=a&last_event_id=second").unwrap();
        assert_eq!(request.last_event_id.as_deref(), Some("first"));
        let request = parse("match=a&last_event_id=urn%3Auuid%3A1").unwrap();
        assert_eq!(request.last_event_id.as_deref(), Some("urn:uuid:1"));
        let request = parse("match=a&last_event_id=earliest").unwrap();
        assert_eq!(request.last_event_id.as_deref(), Some("earliest"));
        let request = parse("match=a&last_event_id").unwrap();
        assert_eq!(request.last_event_id.as_deref(), Some(""));
        // the name is exact
        assert_eq!(parse("match=a&Last_Event_ID=x").unwrap().last_event_id, None);
    }

    #[test]
    fn a_query_and_a_body_joined_with_an_ampersand_give_the_union_with_the_query_id_winning() {
        let query = "match=a&last_event_id=from-query";
        let body = "match_urlpattern=%2Fb%2F%3Aid&last_event_id=from-body";
        let request = parse(&format!("{query}&{body}")).unwrap();
        assert_eq!(request.matchers.len(), 2);
        assert_eq!(request.last_event_id.as_deref(), Some("from-query"));
        let request = parse(&format!("match=a&{body}")).unwrap();
        assert_eq!(request.last_event_id.as_deref(), Some("from-body"));
        // an empty query or body leaves an empty piece, which is skipped
        assert_eq!(parse(&format!("&{body}")).unwrap().matchers.len(), 1);
    }
}
