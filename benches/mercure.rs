//! What a Mercure publish costs in user space, next to a seeds one:
//!
//! - `jwt_verify/*`: [`Verifier::verify`] of a publisher's token (the
//!   loadgen's: `at+jwt`, `iss`, `aud`, `exp`, RFC 9068's claims and one
//!   authorization detail granting `publish` on `*`), per algorithm. HS256
//!   is what `benches/compare` runs; ES256, RS256 and EdDSA use the
//!   throwaway keys of `src/mercure/testdata/` (they protect nothing).
//! - `jwt_parts/*`: where HS256's time goes: the signature check alone
//!   (`jsonwebtoken::crypto::verify`: base64 and HMAC-SHA-256 with a fresh
//!   key schedule), and `jsonwebtoken::decode` into a JSON map with the
//!   validation bare-sse configures (header and claims parsed, signature
//!   checked); `jwt_verify/HS256` minus the latter is bare-sse's own checks.
//! - `publish_body/*`: the body alone: [`parse_update`] of the loadgen's form
//!   body, and the seeds' [`parse_publish`] of its JSON body.
//! - `subscribe_query/*`: [`parse_subscription`] of the loadgen's
//!   subscribe queries, `match=` one topic and `match_urlpattern=` the
//!   shared pattern: what each new subscriber costs before the broker
//!   (a URL pattern is compiled for every subscription, even when the
//!   broker already holds the same one).
//! - `publish_request/*`: a whole publish request through the connection
//!   state machine (head parsing, routing, token, body, response), as the
//!   event loop runs it per POST, for both APIs: their difference is the
//!   Mercure front door's extra cost per publish, without the kernel's.
//! - `private_read/*`: whether a subscriber's token may read a private
//!   update ([`Grants::can_subscribe_any`]), as the broker asks for every
//!   subscriber a private update may reach: a subscription event's topic
//!   against a relative `urlpattern` grant (what a "who is online" page
//!   holds), and against an `exact` one.

use std::time::Instant;

use bare_sse::app::mercure::MercureSettings;
use bare_sse::app::seeds::parse_publish;
use bare_sse::app::{App, Settings};
use bare_sse::broadcast::event::{EventId, Receipt};
use bare_sse::http::conn::Conn;
use bare_sse::mercure::matcher::Topic;
use bare_sse::mercure::subscribe::parse_subscription;
use bare_sse::mercure::token::{Alg, Grants, Role, Verifier, VerifierConfig};
use bare_sse::mercure::update::parse_update;
use criterion::{Criterion, Throughput, black_box, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value, json};
use url::Url;

const ISSUER: &str = "https://bench.bare-sse.invalid";
const HOST: &str = "127.0.0.1:3000";
const RESOURCE: &str = "http://127.0.0.1:3000/.well-known/mercure";
const SECRET: &[u8] = b"bare-sse-bench-only-hs256-secret-0123456789";
const RSA_PRIVATE: &[u8] = include_bytes!("../src/mercure/testdata/rsa-private.pem");
const RSA_PUBLIC: &[u8] = include_bytes!("../src/mercure/testdata/rsa-public.pem");
const EC_PRIVATE: &[u8] = include_bytes!("../src/mercure/testdata/ec-private.pem");
const EC_PUBLIC: &[u8] = include_bytes!("../src/mercure/testdata/ec-public.pem");
const ED_PRIVATE: &[u8] = include_bytes!("../src/mercure/testdata/ed25519-private.pem");
const ED_PUBLIC: &[u8] = include_bytes!("../src/mercure/testdata/ed25519-public.pem");

/// The loadgen's form body: one topic, the message text as data.
const FORM_BODY: &[u8] = b"topic=https%3A%2F%2Fexample.com%2Fitems%2F1&data=1234+0+5678901234";
/// The loadgen's seeds body.
const JSON_BODY: &[u8] = br#"{"message":"1234 0 5678901234"}"#;

fn now() -> u64 {
    bare_sse::app::system_clock()
}

/// The claims the loadgen mints: valid for an hour from now.
fn claims() -> Value {
    let now = now();
    json!({
        "iss": ISSUER,
        "aud": RESOURCE,
        "sub": "urn:uuid:00000000-0000-4000-8000-00000000b5e5",
        "client_id": "bare-sse-loadgen",
        "iat": now,
        "exp": now + 3600,
        "jti": "urn:uuid:00000000-0000-4000-8000-000000000001",
        "authorization_details": [{
            "type": "https://mercure.rocks/authorization-detail",
            "actions": ["publish"],
            "topics": [{"match": "*"}],
        }],
    })
}

fn mint(alg: Algorithm, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.typ = Some("at+jwt".into());
    jsonwebtoken::encode(&header, &claims(), key).expect("a token")
}

fn hub_url() -> Url {
    Url::parse(RESOURCE).expect("a URL")
}

fn jwt_verify(c: &mut Criterion) {
    let hub = hub_url();
    let cases: [(&str, Alg, Algorithm, EncodingKey, &[u8]); 4] = [
        ("HS256", Alg::HS256, Algorithm::HS256, EncodingKey::from_secret(SECRET).unwrap(), SECRET),
        ("ES256", Alg::ES256, Algorithm::ES256, EncodingKey::from_ec_pem(EC_PRIVATE).unwrap(), EC_PUBLIC),
        ("RS256", Alg::RS256, Algorithm::RS256, EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap(), RSA_PUBLIC),
        ("EdDSA", Alg::EdDSA, Algorithm::EdDSA, EncodingKey::from_ed_pem(ED_PRIVATE).unwrap(), ED_PUBLIC),
    ];
    let mut group = c.benchmark_group("jwt_verify");
    for (name, alg, jwt_alg, signing_key, verifying_key) in cases {
        let config =
            VerifierConfig { issuer: ISSUER, alg, publisher_key: verifying_key, subscriber_key: None, hub_url: &hub };
        let verifier = Verifier::new(&config).expect("a verifier");
        let token = mint(jwt_alg, &signing_key);
        let now = now();
        assert!(verifier.verify(Role::Publisher, &token, RESOURCE, now).is_ok(), "{name}");
        group.bench_function(name, |b| {
            b.iter(|| verifier.verify(Role::Publisher, black_box(&token), RESOURCE, now).unwrap())
        });
    }
    group.finish();
}

fn jwt_parts(c: &mut Criterion) {
    let token = mint(Algorithm::HS256, &EncodingKey::from_secret(SECRET).unwrap());
    let key = DecodingKey::from_secret(SECRET).expect("an HMAC key");
    let (message, signature) = token.rsplit_once('.').expect("three parts");
    // What `Verifier::new` sets: the library checks the signature and `alg`.
    let mut validation = Validation::new(Algorithm::HS256);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.leeway = 0;
    assert!(jsonwebtoken::crypto::verify(signature, message.as_bytes(), &key, Algorithm::HS256).unwrap());
    assert!(jsonwebtoken::decode::<Map<String, Value>>(&token, &key, &validation).is_ok());
    let mut group = c.benchmark_group("jwt_parts");
    group.bench_function("hs256_signature_only", |b| {
        b.iter(|| jsonwebtoken::crypto::verify(black_box(signature), message.as_bytes(), &key, Algorithm::HS256))
    });
    group.bench_function("hs256_jsonwebtoken_decode", |b| {
        b.iter(|| jsonwebtoken::decode::<Map<String, Value>>(black_box(&token), &key, &validation).unwrap())
    });
    group.finish();
}

fn publish_body(c: &mut Criterion) {
    let hub = hub_url();
    assert!(parse_update(FORM_BODY, &hub).is_ok());
    assert!(parse_publish(JSON_BODY).is_ok());
    let mut group = c.benchmark_group("publish_body");
    group.bench_function("mercure_parse_update", |b| b.iter(|| parse_update(black_box(FORM_BODY), &hub).unwrap()));
    group.bench_function("seeds_parse_publish", |b| b.iter(|| parse_publish(black_box(JSON_BODY)).unwrap()));
    group.finish();
}

fn subscribe_query(c: &mut Criterion) {
    let hub = hub_url();
    let mut group = c.benchmark_group("subscribe_query");
    for (name, query) in [
        ("exact", &b"match=https%3A%2F%2Fexample.com%2Fitems%2F1"[..]),
        ("urlpattern", &b"match_urlpattern=https%3A%2F%2Fexample.com%2Fitems%2F%3Aid"[..]),
    ] {
        assert_eq!(parse_subscription(query, &hub).unwrap().matchers.len(), 1);
        group.bench_function(name, |b| b.iter(|| parse_subscription(black_box(query), &hub).unwrap()));
    }
    group.finish();
}

/// The loadgen's requests, byte for byte (but for the seq and nanos).
fn requests() -> (Vec<u8>, Vec<u8>) {
    let token = mint(Algorithm::HS256, &EncodingKey::from_secret(SECRET).unwrap());
    let mut mercure = format!(
        "POST /.well-known/mercure HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n",
        FORM_BODY.len()
    )
    .into_bytes();
    mercure.extend_from_slice(FORM_BODY);
    let mut seeds = format!(
        "POST /send-event HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        JSON_BODY.len()
    )
    .into_bytes();
    seeds.extend_from_slice(JSON_BODY);
    (seeds, mercure)
}

fn publish_request(c: &mut Criterion) {
    let mercure = MercureSettings {
        issuer: Some(ISSUER.to_owned()),
        publisher_key: Some(SECRET.to_vec()),
        ..MercureSettings::default()
    };
    let app = App::new(Settings { mercure, ..Settings::default() });
    let limits = app.settings.limits;
    let now = Instant::now();
    let (seeds, mercure) = requests();
    let id = EventId { ms: 1, seq: 1 };
    let cases = [
        ("seeds", seeds, Receipt { id, subscribers: 1, mercure_id: None }),
        ("mercure", mercure, Receipt { id, subscribers: 1, mercure_id: Some(id.urn()) }),
    ];
    let mut group = c.benchmark_group("publish_request");
    for (name, request, receipt) in cases {
        // Each must come out as a publish, not as a refusal.
        let mut conn = Conn::new(&limits, now);
        conn.receive(&request, &limits, now);
        assert!(conn.poll(&app, &limits, now).is_some(), "{name}: no publish action");
        group.throughput(Throughput::Bytes(request.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut conn = Conn::new(&limits, now);
                conn.receive(black_box(&request), &limits, now);
                let action = conn.poll(&app, &limits, now);
                conn.respond(app.published(&receipt), &limits, now);
                action
            })
        });
    }
    group.finish();
}

/// A subscriber's grants: `subscribe` on `topic`, of `match_type`.
fn subscriber_grants(topic: &str, match_type: &str) -> Grants {
    let mut claims = claims();
    claims["authorization_details"] = json!([{
        "type": "https://mercure.rocks/authorization-detail",
        "actions": ["subscribe"],
        "topics": [{"match": topic, "match_type": match_type}],
    }]);
    let mut header = Header::new(Algorithm::HS256);
    header.typ = Some("at+jwt".into());
    let token = jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(SECRET).unwrap()).unwrap();
    let hub = hub_url();
    let config =
        VerifierConfig { issuer: ISSUER, alg: Alg::HS256, publisher_key: SECRET, subscriber_key: None, hub_url: &hub };
    Verifier::new(&config).unwrap().verify(Role::Subscriber, &token, RESOURCE, now()).expect("valid grants")
}

fn private_read(c: &mut Criterion) {
    let topic = [
        "/.well-known/mercure/subscriptions/exact/https%3A%2F%2Fexample.com%2Fdoc/urn%3Auuid%3A0195d0c2-8b00-8000-8000-000000000001",
    ];
    let cases = [
        ("urlpattern", subscriber_grants("/.well-known/mercure/subscriptions/:type/:match/:subscriber", "urlpattern")),
        ("exact", subscriber_grants(topic[0], "exact")),
    ];
    let mut group = c.benchmark_group("private_read");
    for (name, grants) in &cases {
        assert!(grants.can_subscribe_any(&topic), "{name}");
        group.bench_function(*name, |b| b.iter(|| grants.can_subscribe_any(black_box(&topic))));
    }
    // The topic parsed once for every reader, as the broker can do per event.
    let prepared = [Topic::new(topic[0])];
    group.bench_function("urlpattern_topic_prepared", |b| {
        b.iter(|| cases[0].1.can_subscribe_any_topic(black_box(&prepared)))
    });
    group.finish();
}

criterion_group!(benches, jwt_verify, jwt_parts, publish_body, subscribe_query, publish_request, private_read);
criterion_main!(benches);
