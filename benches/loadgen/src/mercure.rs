//! The Mercure side of the loadgen (`--api mercure`): the subscribe URL,
//! the form-encoded publish body and the publisher's JWT, all pure.
//!
//! A Mercure subscriber opens `GET /.well-known/mercure?match=TOPIC` (or
//! `?match_urlpattern=PATTERN`); a publisher sends `POST
//! /.well-known/mercure` with `topic=...&data=...` as
//! `application/x-www-form-urlencoded` and `Authorization: Bearer <JWT>`.
//! The data is the loadgen's own message text, so the checks on delivery
//! (missing, duplicated, out of order, latency) read it as they do for the
//! seeds' API; the event ids (`urn:uuid:...`) are ignored.
//!
//! The token is minted once, at start: HS256 (HMAC-SHA-256, RFC 7518 3.2),
//! header `{"alg":"HS256","typ":"at+jwt"}`, and the claims a Mercure hub
//! checks (`iss`, `aud`, `exp`) plus those RFC 9068 lists (`sub`,
//! `client_id`, `iat`, `jti`), with one authorization detail granting
//! `publish` on every topic.

use hmac::{Hmac, KeyInit, Mac};
use serde_json::json;
use sha2::Sha256;

/// The hub's path (the spec's default).
pub const HUB_PATH: &str = "/.well-known/mercure";

/// The topic every message is published on (and that `--match exact`
/// subscribes to).
pub const DEFAULT_TOPIC: &str = "https://example.com/items/1";

/// The one URL pattern every subscriber shares with `--match urlpattern`.
pub const DEFAULT_PATTERN: &str = "https://example.com/items/:id";

/// The `type` of a Mercure authorization detail.
const AUTHORIZATION_DETAIL_TYPE: &str = "https://mercure.rocks/authorization-detail";

/// Seconds a minted token lives: longer than any run.
const TOKEN_LIFETIME_S: u64 = 3600;

/// How subscribers select the updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchKind {
    /// `match=TOPIC`: an exact topic.
    Exact,
    /// `match_urlpattern=PATTERN`: one URL pattern shared by all.
    UrlPattern,
}

impl MatchKind {
    pub fn name(self) -> &'static str {
        match self {
            MatchKind::Exact => "exact",
            MatchKind::UrlPattern => "urlpattern",
        }
    }
}

/// `application/x-www-form-urlencoded` serialization of one value, as
/// `URLSearchParams` does it: unreserved bytes as they are, space as `+`,
/// every other byte as `%XX`.
pub fn form_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for &byte in value.as_bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => out.push(char::from(byte)),
            b' ' => out.push('+'),
            _ => {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                out.push('%');
                out.push(char::from(HEX[usize::from(byte >> 4)]));
                out.push(char::from(HEX[usize::from(byte & 15)]));
            }
        }
    }
    out
}

/// The subscribe request target: the hub path and its one matcher.
pub fn subscribe_target(path: &str, kind: MatchKind, topic: &str, pattern: &str) -> String {
    match kind {
        MatchKind::Exact => format!("{path}?match={}", form_encode(topic)),
        MatchKind::UrlPattern => format!("{path}?match_urlpattern={}", form_encode(pattern)),
    }
}

/// The body that publishes `data` on the topic whose encoded form is
/// `encoded_topic` (encoded once, at start).
pub fn publish_body(encoded_topic: &str, data: &str) -> String {
    format!("topic={encoded_topic}&data={}", form_encode(data))
}

/// The hub's resource identifier as bare-sse derives it without
/// `--mercure-resource`: `http://HOST/.well-known/mercure`, HOST the
/// request's `Host` header.
pub fn default_audience(host: &str) -> String {
    format!("http://{host}{HUB_PATH}")
}

/// Base64url without padding (RFC 7515 2).
pub fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, &b| n << 8 | u32::from(b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

/// The HS256 signature of `signing_input` (base64url of the MAC).
pub fn hs256(secret: &[u8], signing_input: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(signing_input);
    b64url(&mac.finalize().into_bytes())
}

/// A publisher's access token for a Mercure hub: HS256, `typ: at+jwt`,
/// issued by `issuer` for `audience`, valid from `now_s` for an hour,
/// granting `publish` on every topic.
pub fn publisher_token(secret: &[u8], issuer: &str, audience: &str, now_s: u64) -> String {
    token(secret, issuer, audience, now_s, "publish", json!([{"match": "*"}]))
}

/// The path of the subscription API's collection of every subscription.
pub const SUBSCRIPTIONS_PATH: &str = "/.well-known/mercure/subscriptions";

/// A token that may read the subscription API's whole collection
/// (`--list-subscriptions`): the hub authorizes it like a subscription to
/// the requested path as a topic, so it grants `subscribe` on exactly
/// [`SUBSCRIPTIONS_PATH`]. Otherwise as [`publisher_token`].
pub fn listing_token(secret: &[u8], issuer: &str, audience: &str, now_s: u64) -> String {
    let topics = json!([{"match": SUBSCRIPTIONS_PATH, "match_type": "exact"}]);
    token(secret, issuer, audience, now_s, "subscribe", topics)
}

/// An HS256 access token with one authorization detail granting `action`
/// on `topics`.
fn token(secret: &[u8], issuer: &str, audience: &str, now_s: u64, action: &str, topics: serde_json::Value) -> String {
    let header = json!({"alg": "HS256", "typ": "at+jwt"});
    let claims = json!({
        "iss": issuer,
        "aud": audience,
        "sub": "urn:uuid:00000000-0000-4000-8000-00000000b5e5",
        "client_id": "bare-sse-loadgen",
        "iat": now_s,
        "exp": now_s + TOKEN_LIFETIME_S,
        "jti": format!("urn:uuid:00000000-0000-4000-8000-{:012x}", now_s),
        "authorization_details": [{
            "type": AUTHORIZATION_DETAIL_TYPE,
            "actions": [action],
            "topics": topics,
        }],
    });
    let signing_input = format!("{}.{}", b64url(header.to_string().as_bytes()), b64url(claims.to_string().as_bytes()));
    let signature = hs256(secret, signing_input.as_bytes());
    format!("{signing_input}.{signature}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_without_padding() {
        assert_eq!(b64url(b""), "");
        assert_eq!(b64url(b"f"), "Zg");
        assert_eq!(b64url(b"fo"), "Zm8");
        assert_eq!(b64url(b"foo"), "Zm9v");
        assert_eq!(b64url(b"foob"), "Zm9vYg");
        assert_eq!(b64url(&[0xfb, 0xff]), "-_8");
    }

    /// RFC 7515 appendix A.1: the HS256 example's signature.
    #[test]
    fn hs256_matches_rfc_7515_a1() {
        let key_b64url = "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow";
        let key = b64url_decode(key_b64url);
        let input = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.\
                     eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ";
        assert_eq!(hs256(&key, input.as_bytes()), "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk");
    }

    fn b64url_decode(text: &str) -> Vec<u8> {
        const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut bits = 0u32;
        let mut n = 0;
        let mut out = Vec::new();
        for c in text.bytes() {
            bits = bits << 6 | ALPHABET.iter().position(|&a| a == c).unwrap() as u32;
            n += 6;
            if n >= 8 {
                n -= 8;
                out.push((bits >> n) as u8);
            }
        }
        out
    }

    #[test]
    fn token_has_the_claims_a_hub_checks() {
        let token = publisher_token(&[7; 32], "https://issuer.example", "http://127.0.0.1:9/.well-known/mercure", 1000);
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: serde_json::Value = serde_json::from_slice(&b64url_decode(parts[0])).unwrap();
        assert_eq!(header, json!({"alg": "HS256", "typ": "at+jwt"}));
        let claims: serde_json::Value = serde_json::from_slice(&b64url_decode(parts[1])).unwrap();
        assert_eq!(claims["iss"], "https://issuer.example");
        assert_eq!(claims["aud"], "http://127.0.0.1:9/.well-known/mercure");
        assert_eq!(claims["exp"], 1000 + TOKEN_LIFETIME_S);
        assert_eq!(claims["authorization_details"][0]["actions"], json!(["publish"]));
        assert_eq!(claims["authorization_details"][0]["topics"], json!([{"match": "*"}]));
        assert_eq!(parts[2], hs256(&[7; 32], format!("{}.{}", parts[0], parts[1]).as_bytes()));
    }

    #[test]
    fn listing_token_grants_subscribe_on_the_collection() {
        let token = listing_token(&[7; 32], "https://issuer.example", "http://127.0.0.1:9/.well-known/mercure", 1000);
        let parts: Vec<&str> = token.split('.').collect();
        let claims: serde_json::Value = serde_json::from_slice(&b64url_decode(parts[1])).unwrap();
        assert_eq!(claims["authorization_details"][0]["actions"], json!(["subscribe"]));
        assert_eq!(
            claims["authorization_details"][0]["topics"],
            json!([{"match": "/.well-known/mercure/subscriptions", "match_type": "exact"}])
        );
        assert_eq!(parts[2], hs256(&[7; 32], format!("{}.{}", parts[0], parts[1]).as_bytes()));
    }

    #[test]
    fn form_encoding_and_targets() {
        assert_eq!(form_encode("https://example.com/items/:id"), "https%3A%2F%2Fexample.com%2Fitems%2F%3Aid");
        assert_eq!(form_encode("12 3 456"), "12+3+456");
        assert_eq!(form_encode("é&="), "%C3%A9%26%3D");
        assert_eq!(
            subscribe_target(HUB_PATH, MatchKind::Exact, DEFAULT_TOPIC, DEFAULT_PATTERN),
            "/.well-known/mercure?match=https%3A%2F%2Fexample.com%2Fitems%2F1"
        );
        assert_eq!(
            subscribe_target(HUB_PATH, MatchKind::UrlPattern, DEFAULT_TOPIC, DEFAULT_PATTERN),
            "/.well-known/mercure?match_urlpattern=https%3A%2F%2Fexample.com%2Fitems%2F%3Aid"
        );
        assert_eq!(
            publish_body(&form_encode(DEFAULT_TOPIC), "7 0 99"),
            "topic=https%3A%2F%2Fexample.com%2Fitems%2F1&data=7+0+99"
        );
    }
}
