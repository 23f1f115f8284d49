//! The seeds' API: which paths exist, which methods they take, what a publish
//! body must contain, and the JSON answers.
//!
//! | path          | methods   | what it does                                   |
//! |---------------|-----------|------------------------------------------------|
//! | `/`           | GET, HEAD | the demo page (embedded in the binary)         |
//! | `/events`     | GET, HEAD | subscribe: a `text/event-stream` that stays open |
//! | `/send-event` | POST      | publish `{"message": "..."}` to every subscriber |
//!
//! Pure functions only; [`crate::conn`] calls them while handling a request.

use serde::Deserialize;

use crate::http::Method;

/// The demo page served at `/`: the seeds' EventSource client, made useful.
pub const DEMO_PAGE: &str = include_str!("demo.html");

/// The resources bare-sse serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/`: the demo page.
    Page,
    /// `/events`: the event stream.
    Events,
    /// `/send-event`: publishing.
    Publish,
}

impl Endpoint {
    /// The endpoint at `path`, if any.
    pub fn from_path(path: &str) -> Option<Endpoint> {
        match path {
            "/" | "/index.html" => Some(Endpoint::Page),
            "/events" => Some(Endpoint::Events),
            "/send-event" => Some(Endpoint::Publish),
            _ => None,
        }
    }

    /// Whether the endpoint answers `method`.
    pub fn allows(self, method: Method) -> bool {
        match self {
            Endpoint::Page | Endpoint::Events => matches!(method, Method::Get | Method::Head),
            Endpoint::Publish => method == Method::Post,
        }
    }

    /// The `Allow` header value for a 405.
    pub fn allow_header(self) -> &'static str {
        match self {
            Endpoint::Page | Endpoint::Events => "GET, HEAD",
            Endpoint::Publish => "POST",
        }
    }
}

/// A valid publish request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// The text every subscriber receives; any string, line breaks included.
    pub message: String,
}

/// The JSON body of `POST /send-event`. Unknown fields are ignored, as the
/// seeds' Go decoder ignores them.
#[derive(Deserialize)]
struct PublishBody {
    message: String,
}

/// Parses a publish body: a JSON object with a string `message`. On refusal,
/// says what was wrong, for a 400 answer.
///
/// ```
/// use bare_sse::api::parse_publish;
/// assert_eq!(parse_publish(br#"{"message":"hi"}"#).unwrap().message, "hi");
/// assert!(parse_publish(br#"{"message":5}"#).unwrap_err().contains("expected a string"));
/// ```
pub fn parse_publish(body: &[u8]) -> Result<Publish, String> {
    let is_object = body.iter().find(|b| !b" \t\r\n".contains(b)) == Some(&b'{');
    match serde_json::from_slice::<PublishBody>(body) {
        // serde also fills a struct from an array (`["hi"]`); we want an object.
        Ok(_) if !is_object => Err("body must be a JSON object with a string \"message\"".to_owned()),
        Ok(parsed) => Ok(Publish { message: parsed.message }),
        Err(e) if e.is_syntax() || e.is_eof() => Err(format!("body is not valid JSON: {e}")),
        Err(e) => Err(format!("body must be a JSON object with a string \"message\": {e}")),
    }
}

/// `{"error": why}`.
pub fn error_body(why: &str) -> String {
    serde_json::json!({ "error": why }).to_string()
}

/// The answer to a publish: how many subscriber streams the event was sent to.
pub fn published_body(subscribers: usize) -> String {
    serde_json::json!({ "subscribers": subscribers }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(Endpoint::from_path("/events"), Some(Endpoint::Events));
        assert_eq!(Endpoint::from_path("/events/"), None);
        assert!(Endpoint::Events.allows(Method::Head));
        assert!(!Endpoint::Publish.allows(Method::Get));
    }

    #[test]
    fn publish_bodies() {
        let ok: &[(&[u8], &str)] = &[
            (br#"{"message":"hi"}"#, "hi"),
            (b" {\"message\" : \"a\\nb\", \"extra\": [1,2]} \n", "a\nb"),
            (br#"{"message":""}"#, ""),
            (br#"{"message":"\u00e9\ud83d\ude00"}"#, "\u{e9}\u{1f600}"),
        ];
        for (body, message) in ok {
            assert_eq!(parse_publish(body).map(|p| p.message).as_deref(), Ok(*message));
        }
        let bad: &[(&[u8], &str)] = &[
            (b"", "not valid JSON"),
            (b"{", "not valid JSON"),
            (b"message=hi", "not valid JSON"),
            (br#"{"message":"a"} x"#, "not valid JSON"),
            (br#"{}"#, "missing field `message`"),
            (br#"{"message":null}"#, "expected a string"),
            (br#"{"message":["a"]}"#, "expected a string"),
            (br#""hi""#, "JSON object"),
            (br#"["hi"]"#, "JSON object"),
            (&[b'['; 10_000], "JSON object"),
            (&[b'{'; 10_000], "not valid JSON"),
        ];
        for (body, why) in bad {
            let err = parse_publish(body).unwrap_err();
            assert!(err.contains(why), "{:?}: {err}", String::from_utf8_lossy(&body[..body.len().min(20)]));
        }
    }

    #[test]
    fn json_answers() {
        assert_eq!(error_body("a \"b\""), r#"{"error":"a \"b\""}"#);
        assert_eq!(published_body(3), r#"{"subscribers":3}"#);
    }
}
