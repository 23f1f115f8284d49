//! The Mercure hub (`/.well-known/mercure`) over real sockets, written from
//! the spec (draft-dunglas-mercure, `spec/mercure.md`): each MUST of the
//! subscription, publication, authorization and reconnection sections that
//! a client can observe, on one loop, on two, and on a Redis cluster.

mod support;

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use support::redis::RedisServer;
use support::{Client, EventStream, Response, TestServer, wait_until};

const SECRET: &str = "a secret of at least thirty-two bytes, for HS256";
const ISSUER: &str = "https://app.example";
const AUDIENCE: &str = "http://test/.well-known/mercure";
const DETAIL: &str = "https://mercure.rocks/authorization-detail";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// A token's claims: the required ones, valid for an hour, with these
/// authorization details.
fn claims(details: Value) -> Value {
    json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "urn:test:someone", "client_id": ISSUER,
        "iat": now(), "exp": now() + 3600, "jti": "urn:test:jti",
        "authorization_details": details,
    })
}

fn grant(actions: &[&str], topics: &[(&str, &str)]) -> Value {
    let topics: Vec<Value> = topics.iter().map(|(m, t)| json!({"match": m, "match_type": t})).collect();
    json!({"type": DETAIL, "actions": actions, "topics": topics})
}

/// Signs `claims` (HS256 with `SECRET`, `typ: at+jwt`).
fn sign(claims: &Value) -> String {
    sign_with(claims, SECRET, Some("at+jwt"))
}

fn sign_with(claims: &Value, secret: &str, typ: Option<&str>) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.typ = typ.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).unwrap()).unwrap()
}

fn publisher_token() -> String {
    sign(&claims(json!([grant(&["publish"], &[("*", "exact")])])))
}

fn hub() -> TestServer {
    hub_with(|_| {})
}

fn hub_with(adjust: impl FnOnce(&mut bare_sse::config::Config)) -> TestServer {
    TestServer::with(|config| {
        config.settings.mercure.issuer = Some(ISSUER.to_owned());
        config.settings.mercure.publisher_key = Some(SECRET.as_bytes().to_vec());
        config.heartbeat_secs = 1;
        adjust(config);
    })
}

/// `application/x-www-form-urlencoded`, as `URLSearchParams` writes it.
fn form(pairs: &[(&str, &str)]) -> String {
    let mut serializer = url::form_urlencoded::Serializer::new(String::new());
    for (name, value) in pairs {
        serializer.append_pair(name, value);
    }
    serializer.finish()
}

/// `POST /.well-known/mercure` with `body` and extra header lines.
fn publish_raw(server: &TestServer, body: &str, headers: &str) -> Response {
    let request = format!(
        "POST /.well-known/mercure HTTP/1.1\r\nHost: test\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         {headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    server.connect().request(request)
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}\r\n")
}

/// Publishes with a token that may publish anything; returns the id.
#[track_caller]
fn publish(server: &TestServer, pairs: &[(&str, &str)]) -> String {
    let response = publish_raw(server, &form(pairs), &bearer(&publisher_token()));
    assert_eq!(response.status, 200, "{response:?} {}", response.text());
    assert_eq!(response.header("content-type"), Some("text/plain; charset=utf-8"));
    response.text()
}

/// `GET /.well-known/mercure?query` with extra header lines.
fn get_raw(server: &TestServer, query: &str, headers: &str) -> Client {
    let mut client = server.connect();
    client.send(format!("GET /.well-known/mercure?{query} HTTP/1.1\r\nHost: test\r\n{headers}\r\n"));
    client
}

/// Opens a stream and waits for it to be open.
#[track_caller]
fn subscribe(server: &TestServer, query: &str, headers: &str) -> EventStream {
    let mut client = server.connect();
    let response = client.request(format!("GET /.well-known/mercure?{query} HTTP/1.1\r\nHost: test\r\n{headers}\r\n"));
    assert_eq!(response.status, 200, "{response:?} {}", response.text());
    support::mercure::stream_after(client, response)
}

/// Where the hub's protected resource metadata is, for requests to `test`.
const METADATA: &str = "http://test/.well-known/oauth-protected-resource/.well-known/mercure";

/// Checks a refusal: its status, and its `WWW-Authenticate: Bearer`
/// challenge with `error` (none: a bare challenge), which always says where
/// the metadata is (RFC 9728 5.1).
#[track_caller]
fn refused(response: &Response, status: u16, error: Option<&str>) {
    assert_eq!(response.status, status, "{response:?} {}", response.text());
    let challenge = match error {
        Some(error) => format!("Bearer error=\"{error}\", resource_metadata=\"{METADATA}\""),
        None => format!("Bearer resource_metadata=\"{METADATA}\""),
    };
    assert_eq!(response.header("www-authenticate"), Some(challenge.as_str()), "{response:?}");
}

// ---- subscription ----

#[test]
fn a_subscriber_gets_each_matching_update_once_in_hub_order() {
    let server = hub();
    let query = form(&[
        ("match", "https://example.com/foo"),
        ("match_exact", "bar"),
        ("match_urlpattern", "https://example.com/books/:id"),
        // Matches the same updates as the pattern above: still once each.
        ("match_urlpattern", "https://example.com/books/*"),
    ]);
    let mut stream = subscribe(&server, &query, "");
    let ids = [
        publish(&server, &[("topic", "https://example.com/foo"), ("data", "1")]),
        publish(&server, &[("topic", "https://example.com/other"), ("data", "not for us")]),
        publish(&server, &[("topic", "bar"), ("data", "2")]),
        publish(&server, &[("topic", "https://example.com/books/7"), ("data", "3")]),
        // An alternate topic is enough.
        publish(&server, &[("topic", "nope"), ("topic", "bar"), ("data", "4")]),
        publish(&server, &[("topic", "https://example.com/foo"), ("topic", "bar"), ("data", "5")]),
    ];
    for (expected, id) in ["1", "2", "3", "4", "5"].iter().zip([&ids[0], &ids[2], &ids[3], &ids[4], &ids[5]]) {
        let event = stream.next_event();
        assert_eq!(event.data, *expected);
        assert_eq!(event.id.as_deref(), Some(id.as_str()), "the SSE id is the id the publisher got");
    }
}

#[test]
fn subscription_requests_the_spec_refuses_get_400() {
    let server = hub();
    let too_many: Vec<(&str, &str)> = (0..65).map(|_| ("match", "x")).collect();
    let long_pattern = format!("https://example.com/{}", "a".repeat(3000));
    for query in [
        String::new(),                                          // no matcher
        form(&[("matchx", "a")]),                               // reserved prefix
        form(&[("MATCH", "a")]),                                // names are case-sensitive
        form(&[("match_regex", "a")]),                          // unknown matcher type
        form(&[("match", "a\u{0007}b")]),                       // C0 control
        form(&[("match", "a\u{0085}b")]),                       // C1 control
        form(&[("match", "a\u{200b}b")]),                       // format character (Cf)
        form(&[("match_urlpattern", "https://example.com/(")]), // not a URL pattern
        form(&too_many),
        form(&[("match", &long_pattern)]),
    ] {
        let response = get_raw(&server, &query, "").read_response();
        assert_eq!(response.status, 400, "{query:?}: {response:?}");
    }
}

#[test]
fn the_query_is_form_urlencoded_plus_is_a_space() {
    let server = hub();
    let mut stream = subscribe(&server, "match=a+b%2Fc", "");
    publish(&server, &[("topic", "a b/c"), ("data", "spaced")]);
    assert_eq!(stream.next_data(), "spaced");
}

#[test]
fn the_seeds_api_and_mercure_do_not_cross() {
    let server = hub();
    let mut mercure = subscribe(&server, "match=news", "");
    let mut seeds = server.connect().subscribe("/events?topic=news");
    assert_eq!(support::mercure::publish_to(&mut server.connect(), "news", "seeds event").status, 200);
    publish(&server, &[("topic", "news"), ("data", "mercure update")]);
    assert_eq!(mercure.next_data(), "mercure update");
    assert_eq!(seeds.next_data(), "seeds event");
    // And each saw nothing of the other: the next events are these.
    assert_eq!(support::mercure::publish_to(&mut server.connect(), "news", "second seeds").status, 200);
    publish(&server, &[("topic", "news"), ("data", "second mercure")]);
    assert_eq!(mercure.next_data(), "second mercure");
    assert_eq!(seeds.next_data(), "second seeds");
}

// ---- publication ----

#[test]
fn a_publish_answers_the_update_id_and_frames_every_field() {
    let server = hub();
    let mut stream = subscribe(&server, "match=t", "");
    let id = publish(
        &server,
        &[
            ("topic", "t"),
            ("data", "line 1\nline 2\r\nline 3"),
            ("type", "tick"),
            ("retry", "1500"),
            ("x-new", "ignored"),
        ],
    );
    assert!(id.starts_with("urn:uuid:"), "a hub-made id is an IRI: {id}");
    let own = publish(&server, &[("topic", "t"), ("data", "mine"), ("id", "https://example.com/ev/1")]);
    assert_eq!(own, "https://example.com/ev/1", "the publisher's own id is the answer");
    // The raw bytes: after the cursor block a fresh stream starts with,
    // the first update, every field in its place.
    let mut raw = String::new();
    while !raw.contains("data: mine\n\n") {
        raw.push_str(&String::from_utf8(stream.client.read_some()).unwrap());
    }
    let expected = format!("id: {id}\nevent: tick\nretry: 1500\ndata: line 1\ndata: line 2\ndata: line 3\n\n");
    assert!(raw.contains(&expected), "{raw:?}");
    assert!(raw.ends_with(&format!("{expected}id: {own}\ndata: mine\n\n")), "{raw:?}");
}

#[test]
fn publish_requests_the_spec_refuses_get_400_or_413() {
    let server = hub();
    let token = bearer(&publisher_token());
    let too_many: Vec<(&str, &str)> = (0..33).map(|_| ("topic", "t")).collect();
    let long_topic = "t".repeat(3000);
    let cases: Vec<(String, u16)> = vec![
        (form(&[("data", "no topic")]), 400),
        (form(&[("topic", "*")]), 400),
        (form(&[("topic", "/.well-known/mercure")]), 400),
        (form(&[("topic", "/.well-known/mercure/subscriptions/x")]), 400),
        (form(&[("topic", "/.well-known/%6Dercure/x")]), 400),
        (form(&[("topic", "/.well-known/mercure/../mercure/x")]), 400),
        (form(&[("topic", "/a/../.well-known/mercure/x")]), 400),
        (form(&[("topic", "https://other.example/.well-known/mercure/subscriptions/y")]), 400),
        (form(&[("topic", "fine"), ("topic", "/.well-known/mercure/x")]), 400),
        (form(&[("topic", "t\u{0001}")]), 400),
        (form(&[("topic", "t\u{202e}")]), 400),
        (form(&[("topic", "t"), ("type", "mercure")]), 400),
        (form(&[("topic", "t"), ("type", "a\u{0085}")]), 400),
        (form(&[("topic", "t"), ("id", "#fragment")]), 400),
        (form(&[("topic", "t"), ("id", "earliest")]), 400),
        (form(&[("topic", "t"), ("id", "a\u{007f}")]), 400),
        (form(&[("topic", "t"), ("retry", "10s")]), 400),
        (form(&[("topic", "t"), ("retry", "-1")]), 400),
        (form(&too_many), 413),
        (form(&[("topic", &long_topic)]), 413),
        (form(&[("topic", "t"), ("id", &"i".repeat(300))]), 413),
        (format!("topic=t&data={}", "d".repeat(70 * 1024)), 413),
    ];
    for (body, status) in cases {
        let response = publish_raw(&server, &body, &token);
        assert_eq!(response.status, status, "{}: {response:?} {}", &body[..body.len().min(80)], response.text());
    }
    // Not refused: a path that only starts like the hub's, and a topic
    // that is not a URL at all.
    publish(&server, &[("topic", "/.well-known/mercurex")]);
    publish(&server, &[("topic", "urn:isbn:123")]);
}

// ---- authorization ----

#[test]
fn publishing_needs_a_valid_token_that_grants_every_topic() {
    let server = hub();
    let body = form(&[("topic", "https://example.com/a"), ("topic", "https://example.com/b"), ("data", "x")]);
    // No token: 401 with a bare challenge.
    refused(&publish_raw(&server, &body, ""), 401, None);
    // Malformed presentation: 400 invalid_request.
    for header in ["Authorization: Basic abc\r\n", "Authorization: Bearer\r\n"] {
        refused(&publish_raw(&server, &body, header), 400, Some("invalid_request"));
    }
    // Every validation failure: the same 401 invalid_token.
    let good = claims(json!([grant(&["publish"], &[("*", "exact")])]));
    let with = |patch: Value| {
        let mut claims = good.clone();
        for (key, value) in patch.as_object().unwrap() {
            if value.is_null() {
                claims.as_object_mut().unwrap().remove(key);
            } else {
                claims[key] = value.clone();
            }
        }
        sign(&claims)
    };
    let invalid = [
        sign_with(&good, "another secret of at least thirty-two bytes!", Some("at+jwt")),
        sign_with(&good, SECRET, None),
        sign_with(&good, SECRET, Some("JWT")),
        with(json!({"exp": now() - 10})),
        with(json!({"exp": null})),
        with(json!({"nbf": now() + 3600})),
        with(json!({"aud": "http://elsewhere/.well-known/mercure"})),
        with(json!({"aud": null})),
        with(json!({"iss": "https://evil.example"})),
        with(json!({"iss": null})),
        with(
            json!({"authorization_details": [{"type": DETAIL, "actions": ["publish"], "topics": [{"match": "x", "match_type": "regex"}]}]}),
        ),
        "not.a.token".to_owned(),
    ];
    for token in invalid {
        refused(&publish_raw(&server, &body, &bearer(&token)), 401, Some("invalid_token"));
    }
    // The audience may be an array holding the hub's.
    let array_aud = with(json!({"aud": ["http://other", AUDIENCE]}));
    assert_eq!(publish_raw(&server, &body, &bearer(&array_aud)).status, 200);
    // Valid, but not for every topic: 403, and nothing is dispatched.
    let mut stream = subscribe(&server, "match=https://example.com/a", "");
    let partial = sign(&claims(json!([grant(&["publish"], &[("https://example.com/a", "exact")])])));
    refused(&publish_raw(&server, &body, &bearer(&partial)), 403, Some("insufficient_scope"));
    let subscribe_only = sign(&claims(json!([grant(&["subscribe"], &[("*", "exact")])])));
    refused(&publish_raw(&server, &body, &bearer(&subscribe_only)), 403, Some("insufficient_scope"));
    // A URL-pattern grant covering both is enough.
    let pattern = sign(&claims(json!([grant(&["publish"], &[("https://example.com/:x", "urlpattern")])])));
    let id = publish_raw(&server, &body, &bearer(&pattern)).text();
    assert_eq!(stream.next_event().id.as_deref(), Some(id.as_str()), "the refused ones never reached the stream");
}

#[test]
fn without_an_issuer_and_key_publishing_is_refused() {
    let server = TestServer::start();
    refused(&publish_raw(&server, &form(&[("topic", "t")]), ""), 401, None);
    let response = publish_raw(&server, &form(&[("topic", "t")]), &bearer(&publisher_token()));
    refused(&response, 401, Some("invalid_token"));
}

#[test]
fn the_authorization_header_wins_over_the_cookie() {
    let server = hub();
    let body = form(&[("topic", "t")]);
    let cookie = format!("Cookie: other=1; __Secure-mercure_access_token={}\r\n", publisher_token());
    assert_eq!(publish_raw(&server, &body, &cookie).status, 200, "the cookie alone is used");
    let both = format!("{cookie}{}", bearer("bad.token.here"));
    refused(&publish_raw(&server, &body, &both), 401, Some("invalid_token"));
}

#[test]
fn private_updates_reach_only_subscribers_allowed_to_read_them() {
    let server = hub();
    let reader = sign(&claims(json!([grant(
        &["subscribe"],
        &[("https://example.com/users/42/{*}?", "urlpattern"), ("https://example.com/books/1", "exact")]
    )])));
    let query = form(&[("match_urlpattern", "https://example.com/books/:id")]);
    let mut anonymous = subscribe(&server, &query, "");
    let mut allowed = subscribe(&server, &query, &bearer(&reader));
    let cookie = format!("Cookie: __Secure-mercure_access_token={reader}\r\n");
    let mut by_cookie = subscribe(&server, &query, &cookie);
    publish(&server, &[("topic", "https://example.com/books/1"), ("private", ""), ("data", "p1")]);
    publish(&server, &[("topic", "https://example.com/books/2"), ("private", "on"), ("data", "p2 for nobody here")]);
    // Through an alternate topic the token may read.
    publish(
        &server,
        &[
            ("topic", "https://example.com/books/3"),
            ("topic", "https://example.com/users/42/books/3"),
            ("private", "on"),
            ("data", "p3"),
        ],
    );
    publish(&server, &[("topic", "https://example.com/books/4"), ("data", "public")]);
    assert_eq!(anonymous.next_data(), "public");
    for stream in [&mut allowed, &mut by_cookie] {
        assert_eq!([stream.next_data(), stream.next_data(), stream.next_data()], ["p1", "p3", "public"]);
    }
    // Replay is checked against the token just the same.
    let mut replayed = subscribe(&server, &format!("{query}&last_event_id=earliest"), &bearer(&reader));
    assert_eq!([replayed.next_data(), replayed.next_data(), replayed.next_data()], ["p1", "p3", "public"]);
    let mut anonymous_replay = subscribe(&server, &format!("{query}&last_event_id=earliest"), "");
    assert_eq!(anonymous_replay.next_data(), "public");
}

#[test]
fn a_subscriber_token_is_checked_and_its_stream_ends_when_it_expires() {
    let server = hub();
    let bad = sign_with(&claims(json!([])), "another secret of at least thirty-two bytes!", Some("at+jwt"));
    refused(&get_raw(&server, "match=t", &bearer(&bad)).read_response(), 401, Some("invalid_token"));
    refused(&get_raw(&server, "match=t", "Authorization: Token x\r\n").read_response(), 400, Some("invalid_request"));
    let mut short = claims(json!([grant(&["subscribe"], &[("*", "exact")])]));
    short["exp"] = json!(now() + 2);
    // An `exp` too far ahead for the server's clock type is no reason to fail.
    let mut far = claims(json!([grant(&["subscribe"], &[("*", "exact")])]));
    far["exp"] = json!(u64::MAX / 2);
    subscribe(&server, "match=t", &bearer(&sign(&far)));
    let mut stream = subscribe(&server, "match=t", &bearer(&sign(&short)));
    // The server closes the stream by the token's expiry (within the
    // client's read timeout, which fails the test otherwise).
    let rest = stream.client.read_to_end();
    assert!(now() >= short["exp"].as_u64().unwrap(), "closed before the token expired");
    let rest = String::from_utf8_lossy(&rest).into_owned();
    assert!(!rest.contains("data:"), "only the cursor and heartbeats came: {rest:?}");
}

#[test]
fn a_required_subscriber_token_refuses_anonymous_subscribers() {
    let server = hub_with(|config| config.settings.mercure.require_subscriber_token = true);
    refused(&get_raw(&server, "match=t", "").read_response(), 401, None);
    let token = sign(&claims(json!([grant(&["subscribe"], &[("t", "exact")])])));
    subscribe(&server, "match=t", &bearer(&token));
}

#[test]
fn the_protected_resource_metadata_says_what_tokens_must_name() {
    let server = hub();
    let response = server.connect().request(support::get("/.well-known/oauth-protected-resource/.well-known/mercure"));
    assert_eq!(response.status, 200);
    let metadata = response.json();
    assert_eq!(metadata["resource"], AUDIENCE, "the audience tokens must carry");
    assert_eq!(metadata["authorization_details_types_supported"], json!([DETAIL]));
    assert_eq!(metadata["bearer_methods_supported"], json!(["header"]));
    assert_eq!(metadata["mercure_cookie"], "__Secure-mercure_access_token");
    assert_eq!(metadata["mercure_matcher_types_supported"], json!(["exact", "urlpattern"]));
    let configured =
        hub_with(|config| config.settings.mercure.resource = Some("https://hub.example/.well-known/mercure".into()));
    let response = publish_raw(&configured, &form(&[("topic", "t")]), "");
    assert_eq!(
        response.header("www-authenticate"),
        Some(
            "Bearer resource_metadata=\"https://hub.example/.well-known/oauth-protected-resource/.well-known/mercure\""
        )
    );
}

// ---- reconnection ----

#[test]
fn reconnecting_replays_after_the_id_given_and_says_where_it_resumed() {
    let server = hub();
    let first = publish(&server, &[("topic", "t"), ("data", "1"), ("id", "one")]);
    let second = publish(&server, &[("topic", "t"), ("data", "2")]);
    publish(&server, &[("topic", "t"), ("data", "3"), ("id", "one")]);
    assert_eq!(first, "one");
    let data = |stream: &mut EventStream, n: usize| (0..n).map(|_| stream.next_data()).collect::<Vec<_>>();
    // By the hub's id, in the query.
    let mut stream =
        subscribe(&server, &format!("match=t&last_event_id={}", form(&[("x", &second)])[2..].to_owned()), "");
    assert_eq!(stream.response.header("mercure-last-event-id"), Some(second.as_str()));
    assert_eq!(data(&mut stream, 1), ["3"]);
    // By the publisher's id: a reused id means its earliest.
    let mut stream = subscribe(&server, "match=t", "Last-Event-ID: one\r\n");
    assert_eq!(stream.response.header("mercure-last-event-id"), Some("one"));
    assert_eq!(data(&mut stream, 2), ["2", "3"]);
    // The header wins over the parameter.
    let mut stream = subscribe(&server, "match=t&last_event_id=earliest", "Last-Event-ID: one\r\n");
    assert_eq!(data(&mut stream, 2), ["2", "3"]);
    // earliest, and an id the hub does not know: everything retained.
    for id in ["earliest", "unknown"] {
        let mut stream = subscribe(&server, &format!("match=t&last_event_id={id}"), "");
        assert_eq!(stream.response.header("mercure-last-event-id"), Some("earliest"));
        assert_eq!(data(&mut stream, 3), ["1", "2", "3"]);
    }
    // An empty cursor is still a request to resume: the stream starts now,
    // and says after which update.
    let mut stream = subscribe(&server, "match=t&last_event_id=", "");
    let now = stream.response.header("mercure-last-event-id").expect("the header, for an empty cursor too").to_owned();
    publish(&server, &[("topic", "t"), ("data", "after the empty cursor")]);
    assert_eq!(data(&mut stream, 1), ["after the empty cursor"]);
    assert_eq!(stream_resumes(&server, &now), ["after the empty cursor"], "the id it gave resumes right there");
    // Without a cursor, no header and no replay.
    let mut stream = subscribe(&server, "match=t", "");
    assert_eq!(stream.response.header("mercure-last-event-id"), None);
    publish(&server, &[("topic", "t"), ("data", "live")]);
    assert_eq!(data(&mut stream, 1), ["live"]);
}

/// What a new stream resuming after `id` replays at once (then it closes).
fn stream_resumes(server: &TestServer, id: &str) -> Vec<String> {
    let mut stream = subscribe(server, &form(&[("match", "t"), ("last_event_id", id)]), "");
    let marker = publish(server, &[("topic", "t"), ("data", "marker")]);
    let mut got = Vec::new();
    loop {
        let event = stream.next_event();
        if event.id.as_deref() == Some(marker.as_str()) {
            return got;
        }
        got.push(event.data);
    }
}

// ---- CORS ----

#[test]
fn credentialed_cors_names_only_allowlisted_origins() {
    let server = hub_with(|config| config.settings.cors_origins = vec!["https://app.example".to_owned()]);
    let from = |origin: &str| format!("Origin: {origin}\r\n");
    let response = get_raw(&server, "match=t", &from("https://app.example")).read_response();
    assert_eq!(response.header("access-control-allow-origin"), Some("https://app.example"));
    assert_eq!(response.header("access-control-allow-credentials"), Some("true"));
    let response = get_raw(&server, "match=t", &from("https://evil.example")).read_response();
    assert_eq!(response.header("access-control-allow-origin"), None, "never reflected blindly");
    assert_eq!(response.header("access-control-allow-credentials"), None);
    let preflight = "OPTIONS /.well-known/mercure HTTP/1.1\r\nHost: test\r\nOrigin: https://app.example\r\n\r\n";
    let response = server.connect().request(preflight);
    assert_eq!(response.status, 204);
    assert_eq!(response.header("access-control-allow-credentials"), Some("true"));
    assert!(response.header("access-control-allow-headers").unwrap().contains("Authorization"));
    // With any origin allowed, never `*` with credentials.
    let open = hub();
    let response = get_raw(&open, "match=t", &from("https://app.example")).read_response();
    assert_eq!(response.header("access-control-allow-origin"), Some("*"));
    assert_eq!(response.header("access-control-allow-credentials"), None);
}

// ---- everywhere: two loops, a cluster ----

#[test]
fn with_two_loops_every_subscriber_gets_the_same_updates_in_the_same_order() {
    let server = hub_with(|config| config.threads = 2);
    let mut streams: Vec<EventStream> = (0..8).map(|_| subscribe(&server, "match_urlpattern=/items/:id", "")).collect();
    let ids: Vec<String> =
        (0..20).map(|i| publish(&server, &[("topic", &format!("/items/{i}")), ("data", &i.to_string())])).collect();
    for stream in &mut streams {
        let got: Vec<String> = (0..20).map(|_| stream.next_event().id.unwrap()).collect();
        assert_eq!(got, ids);
    }
}

#[test]
fn on_a_cluster_private_updates_and_replay_by_id_work_on_every_node() {
    let redis = RedisServer::start();
    let node = |redis: &RedisServer| {
        let url = redis.url();
        let node = hub_with(move |config| config.redis = Some(url));
        wait_for_redis(node.addr);
        node
    };
    let (a, b, c) = (node(&redis), node(&redis), node(&redis));
    let reader = sign(&claims(json!([grant(&["subscribe"], &[("https://example.com/secret", "exact")])])));
    let mut allowed = subscribe(&c, "match=https://example.com/secret", &bearer(&reader));
    let mut anonymous = subscribe(&c, "match=https://example.com/secret", "");
    let mut on_b = subscribe(&b, "match=https://example.com/secret", &bearer(&reader));
    publish(&a, &[("topic", "https://example.com/secret"), ("private", "on"), ("data", "for readers"), ("id", "s-1")]);
    publish(&a, &[("topic", "https://example.com/secret"), ("data", "for all")]);
    assert_eq!([allowed.next_data(), allowed.next_data()], ["for readers", "for all"]);
    assert_eq!(on_b.next_data(), "for readers");
    assert_eq!(anonymous.next_data(), "for all");
    // Replay by the publisher's id, on a node that did not take the publish.
    let mut resumed = subscribe(&b, "match=https://example.com/secret", "Last-Event-ID: s-1\r\n");
    assert_eq!(resumed.response.header("mercure-last-event-id"), Some("s-1"));
    assert_eq!(resumed.next_data(), "for all");
}

/// Waits until the node at `addr` reaches Redis: until then it refuses
/// publishes with 503 (not connected yet).
#[track_caller]
fn wait_for_redis(addr: std::net::SocketAddr) {
    wait_until("the node reaches redis", std::time::Duration::from_secs(20), || {
        Client::connect(addr).request(support::get("/healthz")).text() == "ok\n"
    });
}

// ---- 0.x clients ----

/// A pre-standardization token: no `typ`, issuer or audience, the grants in
/// a `mercure` claim.
fn legacy_token(publish: &[&str], subscribe: &[&str]) -> String {
    sign_with(&json!({"mercure": {"publish": publish, "subscribe": subscribe}}), SECRET, None)
}

#[test]
fn without_compat_0x_requests_get_the_answers_of_1_0() {
    let server = hub();
    let response = get_raw(&server, &form(&[("topic", "https://example.com/books/{id}")]), "").read_response();
    assert_eq!(response.status, 400, "a topic-only subscription has no matcher: {response:?}");
    let token = legacy_token(&["*"], &[]);
    refused(&publish_raw(&server, &form(&[("topic", "t")]), &bearer(&token)), 401, Some("invalid_token"));
}

#[test]
fn with_compat_0x_old_subscribers_tokens_and_cookies_work() {
    let server = hub_with(|config| config.settings.mercure.compat_0x = true);
    let template = form(&[("topic", "https://example.com/books/{id}")]);
    let mut old = subscribe(&server, &template, "");
    let reader = legacy_token(&[], &["https://example.com/books/{id}"]);
    let mut by_cookie = subscribe(&server, &template, &format!("Cookie: mercureAuthorization={reader}\r\n"));
    let mut new = subscribe(&server, "match=https://example.com/books/1", "");
    let token = bearer(&legacy_token(&["https://example.com/books/{id}"], &[]));
    let public = publish_raw(&server, &form(&[("topic", "https://example.com/books/1"), ("data", "public")]), &token);
    assert_eq!(public.status, 200, "{}", public.text());
    let private = form(&[("topic", "https://example.com/books/2"), ("data", "private"), ("private", "on")]);
    assert_eq!(publish_raw(&server, &private, &token).status, 200);
    // The old token may publish on its selectors only.
    let elsewhere = form(&[("topic", "https://example.com/films/1")]);
    refused(&publish_raw(&server, &elsewhere, &token), 403, Some("insufficient_scope"));
    assert_eq!(old.next_data(), "public");
    assert_eq!(new.next_data(), "public");
    assert_eq!([by_cookie.next_data(), by_cookie.next_data()], ["public", "private"]);
    // 1.0 tokens still work beside them.
    publish(&server, &[("topic", "https://example.com/books/3"), ("data", "from 1.0")]);
    assert_eq!(old.next_data(), "from 1.0");
}

#[test]
fn a_pattern_the_url_pattern_crate_chokes_on_is_a_400_not_a_crash() {
    // Found by the mercure_subscribe fuzz target: an unmatched `]` made the
    // `urlpattern` crate's parser underflow (a panic where overflow checks
    // are on, as in this test build).
    let server = hub();
    let response = get_raw(&server, "match_urlpattern=http%3A%5D", "").read_response();
    assert_eq!(response.status, 400, "{response:?}");
    let mut stream = subscribe(&server, "match=t", "");
    publish(&server, &[("topic", "t"), ("data", "still serving")]);
    assert_eq!(stream.next_data(), "still serving");
}

#[test]
fn a_host_that_makes_no_url_gets_a_challenge_without_resource_metadata() {
    // Found by the request fuzz target: the metadata URL was built from the
    // Host as it came, into the challenge's quoted string.
    let server = hub();
    for host in ["t: \"x", "x/.well-known", "u@x", "x?y"] {
        let request = format!("POST /.well-known/mercure HTTP/1.1\r\nHost: {host}\r\nContent-Length: 7\r\n\r\ntopic=t");
        let response = server.connect().request(request);
        assert_eq!(response.status, 401, "{host}: {response:?}");
        assert_eq!(response.header("www-authenticate"), Some("Bearer"), "{host}");
    }
}

// ---- active subscriptions (--mercure-subscriptions) ----

/// Where subscription events and the API live.
const SUBSCRIPTIONS: &str = "/.well-known/mercure/subscriptions";

/// A relative URL pattern for every subscription event of the hub.
const EVERY_SUBSCRIPTION: &str = "/.well-known/mercure/subscriptions/:type/:match/:subscriber";

fn presence_hub(adjust: impl FnOnce(&mut bare_sse::config::Config)) -> TestServer {
    hub_with(|config| {
        config.settings.mercure.subscriptions = true;
        adjust(config);
    })
}

/// A token that may read every subscription event and the whole API.
fn watcher_token() -> String {
    sign(&claims(json!([grant(
        &["subscribe"],
        &[
            (EVERY_SUBSCRIPTION, "urlpattern"),
            (SUBSCRIPTIONS, "exact"),
            ("/.well-known/mercure/subscriptions/:type/:match", "urlpattern")
        ]
    )])))
}

/// A subscriber's token that may read `topic` and carries `payload` for it.
fn token_with_payload(topic: &str, payload: Value) -> String {
    let mut detail = grant(&["subscribe"], &[(topic, "exact")]);
    detail["payload"] = payload;
    sign(&claims(json!([detail])))
}

/// A subscription event: checks it is one (SSE type `mercure`, JSON whose
/// `id` is the event's topic form), and returns its document.
#[track_caller]
fn subscription_event(stream: &mut EventStream) -> Value {
    let event = stream.next_event();
    assert_eq!(event.event.as_deref(), Some("mercure"), "{event:?}");
    let document: Value = serde_json::from_str(&event.data).unwrap();
    assert_eq!(document["type"], "subscription", "{document}");
    let id = document["id"].as_str().unwrap();
    let expected = format!(
        "{SUBSCRIPTIONS}/{}/{}/{}",
        document["match_type"].as_str().unwrap(),
        encode(document["match"].as_str().unwrap()),
        encode(document["subscriber"].as_str().unwrap())
    );
    assert_eq!(id, expected, "the id is the topic, each variable percent-encoded once");
    document
}

/// RFC 6570 simple expansion of one value: all but unreserved characters
/// percent-encoded (written here independently of the server's code).
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `GET path` on the subscription API with `headers`; reads a body of no
/// stated length to the close that ends it.
#[track_caller]
fn api_get(server: &TestServer, path: &str, headers: &str) -> Response {
    let mut client = server.connect();
    let mut response = client.request(format!("GET {path} HTTP/1.1\r\nHost: test\r\n{headers}\r\n"));
    if response.header("content-length").is_none() {
        assert_eq!(response.header("connection"), Some("close"), "a body without a length ends with the connection");
        response.body = client.read_to_end();
    }
    response
}

/// The `last-event-id` of the answer's `rel="mercure"` link, checking the
/// link's other attributes.
#[track_caller]
fn link_cursor(response: &Response) -> String {
    let link = response.header("link").unwrap_or_else(|| panic!("no Link: {response:?}"));
    assert!(link.starts_with("<http://test/.well-known/mercure>; rel=\"mercure\"; last-event-id=\""), "{link}");
    assert!(link.ends_with("; type=\"mercure\"; content-type=\"application/json\""), "{link}");
    let cursor = link.split("last-event-id=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    assert_eq!(response.header("etag"), Some(format!("\"{cursor}\"").as_str()));
    cursor
}

/// A 404 of the API carries the cursor too (the spec: every endpoint).
#[track_caller]
fn link_cursor_of_404(response: &Response) {
    let link = response.header("link").unwrap_or_else(|| panic!("no Link: {response:?}"));
    assert!(link.contains("rel=\"mercure\"; last-event-id=\""), "{link}");
}

#[test]
fn each_subscription_that_starts_or_ends_is_announced_privately() {
    let server = presence_hub(|_| {});
    let pattern = form(&[("match_urlpattern", EVERY_SUBSCRIPTION), ("match", "marker")]);
    let mut watcher = subscribe(&server, &pattern, &bearer(&watcher_token()));
    let mut anonymous = subscribe(&server, &pattern, "");
    // The watcher's own subscriptions come first: it is registered before
    // it is announced.
    let own: Vec<Value> = (0..2).map(|_| subscription_event(&mut watcher)).collect();
    assert_eq!(own[0]["subscriber"], own[1]["subscriber"], "one connection, one subscriber id");
    assert_eq!(
        (own[0]["match_type"].as_str(), own[0]["match"].as_str()),
        (Some("urlpattern"), Some(EVERY_SUBSCRIPTION))
    );
    assert_eq!((own[1]["match_type"].as_str(), own[1]["match"].as_str()), (Some("exact"), Some("marker")));
    let theirs: Vec<Value> = (0..2).map(|_| subscription_event(&mut watcher)).collect();
    assert_ne!(theirs[0]["subscriber"], own[0]["subscriber"], "another connection, another id");

    let topic = "https://example.com/doc/1?x=a%2Fb";
    let token = token_with_payload(topic, json!({"name": "alice"}));
    let query = form(&[("match", topic), ("match_urlpattern", "https://example.com/doc/:id")]);
    let alice = subscribe(&server, &query, &bearer(&token));
    let started: Vec<Value> = (0..2).map(|_| subscription_event(&mut watcher)).collect();
    let subscriber = started[0]["subscriber"].as_str().unwrap().to_owned();
    assert!(subscriber.starts_with("urn:uuid:") && subscriber != own[0]["subscriber"], "{subscriber}");
    assert_eq!(started[0]["match"], topic);
    assert_eq!(started[0]["active"], true);
    assert_eq!(started[0]["payload"], json!({"name": "alice"}), "the first detail that matches the matcher");
    assert_eq!(
        (started[1]["match_type"].as_str(), started[1]["subscriber"].as_str()),
        (Some("urlpattern"), Some(&*subscriber))
    );
    assert!(started[1].get("payload").is_none(), "no detail matches the pattern as a topic: {}", started[1]);
    // A client-supplied id changes nothing.
    let forged = format!("{query}&subscriber=urn:forged");
    let forger = subscribe(&server, &forged, "");
    let forged_event = subscription_event(&mut watcher);
    assert_ne!(forged_event["subscriber"], "urn:forged");
    assert!(forged_event.get("payload").is_none(), "an anonymous subscriber has no payload");
    let _ = subscription_event(&mut watcher);

    drop(alice);
    let ended: Vec<Value> = (0..2).map(|_| subscription_event(&mut watcher)).collect();
    for (end, start) in ended.iter().zip(&started) {
        assert_eq!(end["active"], false);
        assert_eq!((&end["id"], &end["payload"]), (&start["id"], &start["payload"]));
    }
    drop(forger);
    let _ = (subscription_event(&mut watcher), subscription_event(&mut watcher));
    // None of it reached the anonymous subscriber: the next thing it gets
    // is the public marker published after.
    publish(&server, &[("topic", "marker"), ("data", "after")]);
    assert_eq!(anonymous.next_data(), "after");
    assert_eq!(watcher.next_data(), "after");
}

#[test]
fn without_active_subscriptions_nothing_is_announced_or_listed() {
    let server = hub();
    let pattern = form(&[("match_urlpattern", EVERY_SUBSCRIPTION), ("match", "marker")]);
    let mut watcher = subscribe(&server, &pattern, &bearer(&watcher_token()));
    let _other = subscribe(&server, "match=x", "");
    publish(&server, &[("topic", "marker"), ("data", "first")]);
    assert_eq!(watcher.next_data(), "first", "no subscription event came before");
    let response = api_get(&server, SUBSCRIPTIONS, &bearer(&watcher_token()));
    assert_eq!(response.status, 404, "{response:?}");
    let metadata = server.connect().request(support::get("/.well-known/oauth-protected-resource/.well-known/mercure"));
    assert_eq!(metadata.json()["mercure_subscriptions"], false);
    let on = presence_hub(|_| {});
    let metadata = on.connect().request(support::get("/.well-known/oauth-protected-resource/.well-known/mercure"));
    assert_eq!(metadata.json()["mercure_subscriptions"], true);
}

#[test]
fn the_subscription_api_lists_every_loop_and_resumes_without_loss() {
    let server = presence_hub(|config| config.threads = 2);
    let watcher = bearer(&watcher_token());
    // Enough subscribers for the collection to be written in many pieces.
    let count = 300;
    let subscribers: Vec<EventStream> = (0..count)
        .map(|i| {
            let topic = format!("https://example.com/room/{}", i % 3);
            let token = token_with_payload(&topic, json!({"n": i}));
            subscribe(&server, &form(&[("match", &topic)]), &bearer(&token))
        })
        .collect();
    let response = api_get(&server, SUBSCRIPTIONS, &watcher);
    assert_eq!(response.status, 200, "{response:?} {}", response.text());
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert_eq!(response.header("cache-control"), Some("must-revalidate"));
    let cursor = link_cursor(&response);
    let all = response.json();
    assert_eq!((all["id"].as_str(), all["type"].as_str()), (Some(SUBSCRIPTIONS), Some("subscriptions")));
    assert_eq!(all["lastEventID"], cursor.as_str());
    let listed = all["subscriptions"].as_array().unwrap();
    assert_eq!(listed.len(), count);
    let mut numbers: Vec<u64> = listed.iter().map(|s| s["payload"]["n"].as_u64().unwrap()).collect();
    numbers.sort_unstable();
    assert_eq!(numbers, (0..count as u64).collect::<Vec<_>>(), "each subscriber once, with its payload");

    // One matcher's collection, and one subscription.
    let room = format!("{SUBSCRIPTIONS}/exact/{}", encode("https://example.com/room/1"));
    let response = api_get(&server, &room, &watcher);
    let in_room = response.json();
    assert_eq!(in_room["id"], room.as_str());
    let in_room = in_room["subscriptions"].as_array().unwrap();
    assert_eq!(in_room.len(), count / 3);
    let one = in_room[0].clone();
    let response = api_get(&server, one["id"].as_str().unwrap(), &watcher);
    assert_eq!(response.status, 200, "{response:?}");
    link_cursor(&response);
    assert_eq!(response.json(), one, "the same document as the event's");
    let unknown = format!("{room}/{}", encode("urn:uuid:00000000-0000-8000-8000-000000000000"));
    let missing = api_get(&server, &unknown, &watcher);
    assert_eq!(missing.status, 404);
    link_cursor_of_404(&missing);
    assert_eq!(api_get(&server, &format!("{SUBSCRIPTIONS}/nonsense"), &watcher).status, 404);

    // Authorized like a subscription to the path as a topic.
    refused(&api_get(&server, SUBSCRIPTIONS, ""), 401, None);
    let elsewhere = bearer(&sign(&claims(json!([grant(&["subscribe"], &[("https://example.com/room/1", "exact")])]))));
    refused(&api_get(&server, SUBSCRIPTIONS, &elsewhere), 403, Some("insufficient_scope"));
    let only_room = bearer(&sign(&claims(json!([grant(&["subscribe"], &[(&room, "exact")])]))));
    assert_eq!(api_get(&server, &room, &only_room).status, 200);
    refused(&api_get(&server, SUBSCRIPTIONS, &only_room), 403, Some("insufficient_scope"));

    // Resuming the events from the listing's cursor misses nothing: the
    // subscriber that leaves and the one that comes after the listing.
    let cursor = link_cursor(&api_get(&server, SUBSCRIPTIONS, &watcher));
    let mut subscribers = subscribers;
    drop(subscribers.swap_remove(0)); // the one with payload {"n": 0}
    let _late = subscribe(&server, "match=late", "");
    let query = form(&[("match_urlpattern", EVERY_SUBSCRIPTION), ("last_event_id", &cursor)]);
    let mut events = subscribe(&server, &query, &watcher);
    assert_eq!(events.response.header("mercure-last-event-id"), Some(cursor.as_str()));
    let mut seen = Vec::new();
    while !seen.iter().any(|d: &Value| d["match"] == "late") {
        seen.push(subscription_event(&mut events));
    }
    let ended: Vec<&Value> = seen.iter().filter(|d| d["active"] == false).collect();
    assert_eq!(ended.len(), 1, "{seen:?}");
    assert_eq!(ended[0]["payload"], json!({"n": 0}));
    // And the listing follows.
    wait_until("the listing loses the one that left", std::time::Duration::from_secs(10), || {
        let listed = api_get(&server, SUBSCRIPTIONS, &watcher).json();
        listed["subscriptions"].as_array().unwrap().len() == count - 1 + 2
    });
}

#[test]
fn metrics_count_mercure_subscriptions_by_matcher_type() {
    let server = hub_with(|config| config.settings.mercure.compat_0x = true);
    let series = |kind: &str| format!("bare_sse_mercure_subscriptions{{match_type=\"{kind}\"}}");
    let both = subscribe(&server, &form(&[("match", "a"), ("match_urlpattern", "/items/:id"), ("match", "*")]), "");
    let old = subscribe(&server, &form(&[("topic", "https://example.com/books/{id}")]), "");
    let counts = || ["exact", "urlpattern", "uritemplate"].map(|kind| server.metric(&series(kind)));
    wait_until("the subscriptions are counted", std::time::Duration::from_secs(10), || counts() == [2, 1, 1]);
    drop((both, old));
    wait_until("and uncounted when they end", std::time::Duration::from_secs(10), || counts() == [0, 0, 0]);
}

#[test]
fn with_compat_0x_subscriptions_of_old_clients_are_announced_and_listed_in_the_old_form() {
    let server = presence_hub(|config| config.settings.mercure.compat_0x = true);
    let watch = "/.well-known/mercure/subscriptions/{topic}/{subscriber}";
    let reader = sign_with(
        &json!({"mercure": {"subscribe": [watch, "/.well-known/mercure/subscriptions/{topic}"]}}),
        SECRET,
        None,
    );
    let mut watcher = subscribe(&server, &form(&[("topic", watch)]), &bearer(&reader));
    let own = watcher.next_event();
    assert_eq!(own.event.as_deref(), Some("mercure"));
    let template = "https://example.com/books/{id}";
    let token = sign_with(&json!({"mercure": {"subscribe": [template], "payload": {"name": "bob"}}}), SECRET, None);
    let _bob = subscribe(&server, &form(&[("topic", template)]), &bearer(&token));
    let event = watcher.next_event();
    assert_eq!(event.event.as_deref(), Some("mercure"));
    let document: Value = serde_json::from_str(&event.data).unwrap();
    assert_eq!(document["@context"], "https://mercure.rocks/");
    assert_eq!(document["type"], "Subscription");
    assert_eq!(document["topic"], template);
    assert_eq!(document["payload"], json!({"name": "bob"}), "0.x: the token's one payload");
    let subscriber = document["subscriber"].as_str().unwrap();
    assert_eq!(document["id"], format!("{SUBSCRIPTIONS}/{}/{}", encode(template), encode(subscriber)).as_str());
    // The 0.x API path for a topic selector: JSON-LD, with lastEventID.
    let path = format!("{SUBSCRIPTIONS}/{}", encode(template));
    let response = api_get(&server, &path, &bearer(&reader));
    assert_eq!(response.status, 200, "{response:?} {}", response.text());
    assert_eq!(response.header("content-type"), Some("application/ld+json"));
    let listed = response.json();
    assert_eq!(
        (listed["type"].as_str(), listed["@context"].as_str()),
        (Some("Subscriptions"), Some("https://mercure.rocks/"))
    );
    assert_eq!(listed["subscriptions"], json!([document]));
    assert_eq!(listed["lastEventID"], link_cursor(&response).as_str());
}

/// Opens a stream on the server at `addr` and waits for it to be open.
#[track_caller]
fn subscribe_at(addr: std::net::SocketAddr, query: &str, headers: &str) -> EventStream {
    let mut client = Client::connect(addr);
    let response = client.request(format!("GET /.well-known/mercure?{query} HTTP/1.1\r\nHost: test\r\n{headers}\r\n"));
    assert_eq!(response.status, 200, "{response:?} {}", response.text());
    support::mercure::stream_after(client, response)
}

/// The subscription documents the API of the server at `addr` lists.
#[track_caller]
fn listed_at(addr: std::net::SocketAddr, path: &str) -> Vec<Value> {
    let mut client = Client::connect(addr);
    let response = client.request(format!("GET {path} HTTP/1.1\r\nHost: test\r\n{}\r\n", bearer(&watcher_token())));
    assert_eq!(response.status, 200, "{response:?}");
    let body = client.read_to_end();
    let document: Value =
        serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&body)));
    document["subscriptions"].as_array().unwrap().clone()
}

#[test]
fn a_cluster_lists_every_nodes_subscriptions_and_forgets_a_killed_node() {
    let redis = RedisServer::start();
    let url = redis.url();
    let a = presence_hub(|config| config.redis = Some(url.clone()));
    let mut b = support::Binary::start(&[
        "--redis",
        &url,
        "--mercure-subscriptions",
        "--mercure-issuer",
        ISSUER,
        "--mercure-publisher-key",
        SECRET,
    ]);
    wait_for_redis(a.addr);
    wait_for_redis(b.addr);
    let names = |listed: &[Value]| -> Vec<String> {
        let mut names: Vec<String> =
            listed.iter().filter_map(|d| d["payload"]["name"].as_str().map(str::to_owned)).collect();
        names.sort();
        names
    };
    let user = |name: &str| bearer(&token_with_payload("https://example.com/doc", json!({"name": name})));
    let doc = form(&[("match", "https://example.com/doc")]);
    let query = form(&[("match_urlpattern", EVERY_SUBSCRIPTION)]);
    let mut watcher = subscribe(&a, &query, &bearer(&watcher_token()));
    let _ann = subscribe(&a, &doc, &user("ann"));
    let _bea = subscribe_at(b.addr, &doc, &user("bea"));
    let cid = subscribe_at(b.addr, &doc, &user("cid"));
    // Every node lists every node's subscriptions.
    let room = format!("{SUBSCRIPTIONS}/exact/{}", encode("https://example.com/doc"));
    let everyone = ["ann", "bea", "cid"].map(str::to_owned).to_vec();
    for addr in [a.addr, b.addr] {
        wait_until("the node lists the cluster", std::time::Duration::from_secs(20), || {
            names(&listed_at(addr, &room)) == everyone
        });
    }
    assert_eq!(listed_at(a.addr, SUBSCRIPTIONS).len(), 4, "and the watcher's own");
    // One subscription of another node, by its id.
    let on_b = listed_at(a.addr, &room).into_iter().find(|d| d["payload"]["name"] == "cid").unwrap();
    let one = api_get(&a, on_b["id"].as_str().unwrap(), &bearer(&watcher_token()));
    assert_eq!((one.status, one.json()), (200, on_b.clone()));
    // A subscription that ends on B is announced on A.
    let mut ended = None;
    drop(cid);
    while ended.is_none() {
        let event = subscription_event(&mut watcher);
        if event["active"] == false {
            ended = Some(event);
        }
    }
    assert_eq!(ended.unwrap()["id"], on_b["id"]);
    // B dies without a word: within the roster's expiry, its entries go.
    b.kill();
    wait_until("the killed node's subscriptions expire", std::time::Duration::from_secs(40), || {
        names(&listed_at(a.addr, &room)) == ["ann"]
    });
}

#[test]
fn curl_reads_a_listing_written_in_pieces_to_its_end() {
    let server = presence_hub(|_| {});
    let count = 500; // about four pieces
    let _subscribers: Vec<EventStream> =
        (0..count).map(|i| subscribe(&server, &form(&[("match", &format!("https://example.com/{i}"))]), "")).collect();
    let url = format!("http://{}{SUBSCRIPTIONS}", server.addr);
    // The token's audience is the hub at `test`.
    let header = format!("Authorization: Bearer {}", watcher_token());
    let out = std::process::Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "20", "-H", "Host: test", "-H", &header, &url])
        .output()
        .expect("curl must be installed");
    assert!(out.status.success(), "curl: {}", String::from_utf8_lossy(&out.stderr));
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed["subscriptions"].as_array().unwrap().len(), count);
    // HEAD: the same head, no body.
    let out = std::process::Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "20", "-I", "-H", "Host: test", "-H", &header, &url])
        .output()
        .expect("curl must be installed");
    assert!(out.status.success(), "curl -I: {}", String::from_utf8_lossy(&out.stderr));
    let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(
        head.starts_with("http/1.1 200") && head.contains("link: <http://") && head.contains("connection: close"),
        "{head}"
    );
}

#[test]
fn a_node_rewrites_its_roster_when_redis_loses_it() {
    let redis = RedisServer::start();
    let url = redis.url();
    let node = presence_hub(|config| config.redis = Some(url.clone()));
    wait_for_redis(node.addr);
    let _ann = subscribe(&node, &form(&[("match", "https://example.com/doc")]), "");
    let listed = || listed_at(node.addr, SUBSCRIPTIONS).len();
    wait_until("the node lists its subscriber", std::time::Duration::from_secs(20), || listed() == 1);
    redis.command(&["FLUSHALL"]);
    assert_eq!(listed(), 0, "Redis lost the roster");
    // The next refresh finds its key gone and writes it again.
    wait_until("the node rewrites its roster", std::time::Duration::from_secs(30), || listed() == 1);
}

#[test]
fn on_a_cluster_a_burst_of_subscriptions_is_announced_whole() {
    // Thousands of subscriptions starting and ending at once (a node
    // restarting, its clients coming back): the bus's queue is smaller
    // than the burst, and every event must still go out, once Redis has
    // the change.
    let redis = RedisServer::start();
    let url = redis.url();
    let node = |url: String| {
        let node = presence_hub(move |config| {
            config.redis = Some(url);
            config.history.events = 20_000;
            // No heartbeats: a missing event fails the read (after the
            // client's timeout) instead of waiting forever.
            config.heartbeat_secs = 0;
        });
        wait_for_redis(node.addr);
        node
    };
    let (a, b) = (node(url.clone()), node(url));
    let mut watcher = subscribe(
        &b,
        &form(&[("match_urlpattern", "/.well-known/mercure/subscriptions/exact/:match/:subscriber")]),
        &bearer(&watcher_token()),
    );
    let (connections, matchers) = (300, 20);
    let query = |c: usize| {
        let pairs: Vec<(String, String)> =
            (0..matchers).map(|m| ("match".to_owned(), format!("https://example.com/{c}/{m}"))).collect();
        let pairs: Vec<(&str, &str)> = pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        form(&pairs)
    };
    let streams: Vec<EventStream> = (0..connections).map(|c| subscribe(&a, &query(c), "")).collect();
    drop(streams);
    let total = connections * matchers;
    let (mut started, mut ended) = (std::collections::HashSet::new(), std::collections::HashSet::new());
    while started.len() < total || ended.len() < total {
        let event = subscription_event(&mut watcher);
        let id = event["id"].as_str().unwrap().to_owned();
        if event["active"] == true {
            started.insert(id)
        } else {
            ended.insert(id)
        };
    }
    assert_eq!(started, ended, "each subscription started and ended");
}

#[test]
fn on_a_cluster_a_lookup_while_redis_is_down_is_answered_not_held() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let node = presence_hub(|config| config.redis = Some(url));
    wait_for_redis(node.addr);
    let one = format!("{SUBSCRIPTIONS}/exact/a/{}", encode("urn:uuid:00000000-0000-8000-8000-000000000000"));
    assert_eq!(api_get(&node, &one, &bearer(&watcher_token())).status, 404);
    redis.stop();
    // Within the test client's read timeout: 503, not a connection held.
    let response = api_get(&node, &one, &bearer(&watcher_token()));
    assert_eq!(response.status, 503, "{response:?}");
    let collection = Client::connect(node.addr)
        .send(format!("GET {SUBSCRIPTIONS} HTTP/1.1\r\nHost: test\r\n{}\r\n", bearer(&watcher_token())))
        .read_to_end();
    let text = String::from_utf8_lossy(&collection);
    assert!(text.starts_with("HTTP/1.1 200") && !text.ends_with("]}"), "a collection ends unfinished: {text}");
}

#[test]
fn the_subscription_api_says_earliest_before_any_event_and_lets_cross_origin_scripts_read_the_link() {
    let origin = "https://app.example";
    let server = presence_hub(|config| config.settings.cors_origins = vec![origin.to_owned()]);
    let watcher = bearer(&watcher_token());
    // No event dispatched yet: the cursor is `earliest`.
    let response = api_get(&server, SUBSCRIPTIONS, &watcher);
    assert_eq!(link_cursor(&response), "earliest");
    assert_eq!(response.json()["lastEventID"], "earliest");
    // The query is not part of the topic that is authorized.
    let only_collection = bearer(&sign(&claims(json!([grant(&["subscribe"], &[(SUBSCRIPTIONS, "exact")])]))));
    assert_eq!(api_get(&server, &format!("{SUBSCRIPTIONS}?cache=1"), &only_collection).status, 200);
    // A script on an allowed origin may read the Link header.
    let response = api_get(&server, SUBSCRIPTIONS, &format!("{watcher}Origin: {origin}\r\n"));
    assert_eq!(response.header("access-control-allow-origin"), Some(origin));
    assert_eq!(response.header("access-control-expose-headers"), Some("Link"));
}
