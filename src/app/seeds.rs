//! The seeds' API: what a publish body and a subscription query must
//! contain, and the JSON answers.
//!
//! | path          | methods            | what it does                                     |
//! |---------------|--------------------|--------------------------------------------------|
//! | `/`           | GET, HEAD          | the demo page (embedded in the binary)           |
//! | `/events`     | GET, HEAD, OPTIONS | subscribe: a `text/event-stream` that stays open |
//! | `/send-event` | POST, OPTIONS      | publish `{"message": "..."}` to subscribers      |
//! | `/metrics`    | GET, HEAD          | Prometheus text exposition                       |
//! | `/healthz`    | GET, HEAD          | `ok`                                             |
//!
//! This module holds the formats: the publish body, the subscription query,
//! the JSON answers. Routing and credentials are in [`crate::app`]. Pure
//! functions only.

use serde::Deserialize;

use crate::broadcast::event::{DEFAULT_TOPIC, MAX_TOPIC_BYTES, MAX_TOPICS, Publish, is_valid_topic};

/// The JSON body of `POST /send-event`. Unknown fields are ignored, as the
/// seeds' Go decoder ignores them.
#[derive(Deserialize)]
struct PublishBody {
    message: String,
    #[serde(default)]
    topic: Option<serde_json::Value>,
    #[serde(default)]
    event: Option<String>,
}

/// Parses a publish body: a JSON object with a string `message`, optionally a
/// `topic` (a string or a list of strings) and an `event` name. On refusal,
/// says what was wrong, for a 400 answer.
///
/// ```
/// use bare_sse::app::seeds::parse_publish;
/// let publish = parse_publish(br#"{"message":"hi","topic":["a","b"],"event":"greet"}"#).unwrap();
/// assert_eq!((publish.message.as_str(), publish.topics.len()), ("hi", 2));
/// assert!(parse_publish(br#"{"message":5}"#).unwrap_err().contains("expected a string"));
/// ```
pub fn parse_publish(body: &[u8]) -> Result<Publish, String> {
    let is_object = body.iter().find(|b| !b" \t\r\n".contains(b)) == Some(&b'{');
    let parsed = match serde_json::from_slice::<PublishBody>(body) {
        // serde also fills a struct from an array (`["hi"]`); we want an object.
        Ok(_) if !is_object => return Err("body must be a JSON object with a string \"message\"".to_owned()),
        Ok(parsed) => parsed,
        Err(e) if e.is_syntax() || e.is_eof() => return Err(format!("body is not valid JSON: {e}")),
        Err(e) => return Err(format!("body must be a JSON object with a string \"message\": {e}")),
    };
    let not_strings = || "\"topic\" must be a string or a list of strings".to_owned();
    let mut topics = match parsed.topic {
        None | Some(serde_json::Value::Null) => vec![DEFAULT_TOPIC.to_owned()],
        Some(serde_json::Value::String(topic)) => vec![topic],
        Some(serde_json::Value::Array(topics)) => topics
            .into_iter()
            .map(|topic| match topic {
                serde_json::Value::String(topic) => Ok(topic),
                _ => Err(not_strings()),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(not_strings()),
    };
    dedup_in_order(&mut topics);
    let publish = Publish { message: parsed.message, topics, event: parsed.event, mercure: None };
    publish.validate()?;
    Ok(publish)
}

/// What a `GET /events` asks for, from its query string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeQuery {
    /// Topics, at least one, no duplicates.
    pub topics: Vec<String>,
    /// The `lastEventId` parameter, for clients that cannot send the
    /// `Last-Event-ID` header.
    pub last_event_id: Option<String>,
}

/// Parses the query of `GET /events`: up to [`MAX_TOPICS`] distinct
/// `topic=NAME` (a repeat counts once; none means the default topic) and an
/// optional `lastEventId=ID`. Other parameters are
/// ignored (clients add cache-busters).
///
/// ```
/// let query = bare_sse::app::seeds::parse_subscribe_query("topic=a&topic=b&lastEventId=7").unwrap();
/// assert_eq!(query.topics, ["a", "b"]);
/// assert_eq!(query.last_event_id.as_deref(), Some("7"));
/// ```
pub fn parse_subscribe_query(query: &str) -> Result<SubscribeQuery, String> {
    let mut topics = Vec::new();
    let mut last_event_id = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "topic" => {
                let topic = percent_decode(value).ok_or("topic is not valid percent-encoded UTF-8")?;
                if !is_valid_topic(&topic) {
                    return Err(format!("invalid topic {topic:?}: use 1-{MAX_TOPIC_BYTES} of A-Z a-z 0-9 - _ . : ~"));
                }
                // Counted once each: a repeat names no new topic. Checked as
                // they come, so an endless query stops at the limit.
                if !topics.contains(&topic) {
                    topics.push(topic);
                }
                if topics.len() > MAX_TOPICS {
                    return Err(format!("at most {MAX_TOPICS} topics per subscription"));
                }
            }
            "lastEventId" => {
                last_event_id = Some(percent_decode(value).ok_or("lastEventId is not valid percent-encoded UTF-8")?);
            }
            _ => {}
        }
    }
    if topics.is_empty() {
        topics.push(DEFAULT_TOPIC.to_owned());
    }
    Ok(SubscribeQuery { topics, last_event_id })
}

/// The first value of parameter `name` in a query string, percent-decoded.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| percent_decode(value)).flatten()
    })
}

/// Decodes `%XX` escapes and `+` (space, as in HTML forms). `None` if an
/// escape is malformed or the result is not UTF-8.
pub fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        match byte {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                // Checked first: from_str_radix would also accept a sign.
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn dedup_in_order(items: &mut Vec<String>) {
    let mut seen = std::collections::HashSet::new();
    items.retain(|item| seen.insert(item.clone()));
}

/// The answer to a publish: the event's id and how many subscriber streams
/// it was sent to.
pub fn published_body(id: &str, subscribers: usize) -> String {
    serde_json::json!({ "id": id, "subscribers": subscribers }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn publish_topics_and_event_names() {
        let p = parse_publish(br#"{"message":"m"}"#).unwrap();
        assert_eq!((p.topics, p.event), (vec![DEFAULT_TOPIC.to_owned()], None));
        let p = parse_publish(br#"{"message":"m","topic":"news","event":"update"}"#).unwrap();
        assert_eq!((p.topics, p.event.as_deref()), (vec!["news".to_owned()], Some("update")));
        let p = parse_publish(br#"{"message":"m","topic":["a","b","a"]}"#).unwrap();
        assert_eq!(p.topics, ["a", "b"]);
        for (body, why) in [
            (&br#"{"message":"m","topic":""}"#[..], "invalid topic"),
            (br#"{"message":"m","topic":"a b"}"#, "invalid topic"),
            (br#"{"message":"m","topic":[]}"#, "1 to 16 topics"),
            (br#"{"message":"m","topic":5}"#, "string or a list"),
            (br#"{"message":"m","event":"a\nb"}"#, "invalid event name"),
            (br#"{"message":"m","event":""}"#, "invalid event name"),
            (br#"{"message":"m","event":7}"#, "expected a string"),
            (br#"{"message":"m","event":"gap"}"#, "reserved"),
        ] {
            let err = parse_publish(body).unwrap_err();
            assert!(err.contains(why), "{}: {err}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn subscribe_queries() {
        let q = parse_subscribe_query("").unwrap();
        assert_eq!((q.topics, q.last_event_id), (vec![DEFAULT_TOPIC.to_owned()], None));
        let q = parse_subscribe_query("topic=a&_=123&topic=b&topic=a&lastEventId=1%2D2").unwrap();
        assert_eq!((q.topics, q.last_event_id.as_deref()), (vec!["a".to_owned(), "b".to_owned()], Some("1-2")));
        assert!(parse_subscribe_query("topic=").is_err());
        assert!(parse_subscribe_query("topic=a%20b").is_err());
        assert!(parse_subscribe_query("topic=%zz").is_err());
        assert!(parse_subscribe_query("topic=%ff").is_err());
        let many: Vec<String> = (0..17).map(|i| format!("topic=t{i}")).collect();
        assert!(parse_subscribe_query(&many.join("&")).is_err());
    }

    #[test]
    fn topics_are_counted_once_each() {
        let mut sixteen: Vec<String> = (0..16).map(|i| format!("topic=t{i}")).collect();
        sixteen.push("topic=t3".to_owned());
        let q = parse_subscribe_query(&sixteen.join("&")).unwrap();
        assert_eq!(q.topics, (0..16).map(|i| format!("t{i}")).collect::<Vec<_>>());
        let repeated = vec!["topic=a"; 100].join("&");
        assert_eq!(parse_subscribe_query(&repeated).unwrap().topics, ["a"]);
        sixteen.push("topic=t16".to_owned());
        assert_eq!(
            parse_subscribe_query(&sixteen.join("&")),
            Err(format!("at most {MAX_TOPICS} topics per subscription"))
        );
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Fb+c").as_deref(), Some("a/b c"));
        assert_eq!(percent_decode("%C3%A9").as_deref(), Some("\u{e9}"));
        assert_eq!(percent_decode("%"), None);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%+1"), None);
    }

    #[test]
    fn json_answers() {
        assert_eq!(published_body("1-2", 3), r#"{"id":"1-2","subscribers":3}"#);
    }
}
