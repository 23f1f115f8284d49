//! Access tokens: how a request presents one, how the hub validates it, and
//! what it grants (spec sections "Presenting the Access Token", "Token
//! Validation", "Authorization Details", "Publishers", "Subscribers",
//! "Topic Matcher List" and "Payloads").
//!
//! A token is a JWT access token (RFC 9068) signed with the one algorithm
//! and the keys the hub is configured with. The `jsonwebtoken` crate checks
//! the signature and that the token's `alg` is the configured one; the
//! claims (`iss`, `aud`, `exp`, `nbf`) are checked here, against the `now`
//! the caller passes, so that tests control time.
//!
//! Every failure is the same [`InvalidToken`] (the hub answers 401
//! `invalid_token` whatever went wrong, so as not to tell an attacker which
//! check failed), carrying a short reason for the logs.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use serde_json::{Map, Value};
use url::Url;

use super::matcher::{Matcher, MatcherType, Topic};

/// The cookie name the spec recommends for browsers' tokens.
pub const DEFAULT_COOKIE_NAME: &str = "__Secure-mercure_access_token";

/// The `type` of a Mercure authorization detail, compared byte by byte.
pub const AUTHORIZATION_DETAIL_TYPE: &str = "https://mercure.rocks/authorization-detail";

/// Most entries in `authorization_details`, of any type; more invalidates
/// the token. A token lists a publisher's or a subscriber's rights in a few
/// details; each costs parsing and compiling on every request.
pub const MAX_AUTHORIZATION_DETAILS: usize = 32;

/// Most entries in one detail's `topics`; more invalidates the token. The
/// same as [`super::subscribe::MAX_MATCHERS`], the matchers a subscriber
/// may route on. Each matcher's length is capped by
/// [`super::matcher::MAX_MATCHER_BYTES`] as everywhere else.
pub const MAX_TOPICS_PER_DETAIL: usize = 64;

/// Seconds of clock skew tolerated on `exp` and `nbf`: none. Issuers and the
/// hub are expected to keep their clocks in sync, and a token expires when
/// it says it does.
pub const LEEWAY_SECS: u64 = 0;

/// A signature algorithm the hub can be configured with. The hub accepts
/// exactly one, so the allowlist is that one; `none` is not among them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(clippy::upper_case_acronyms)] // the JOSE names, as written in the flag
pub enum Alg {
    /// HMAC with SHA-256, a shared secret.
    HS256,
    /// HMAC with SHA-384, a shared secret.
    HS384,
    /// HMAC with SHA-512, a shared secret.
    HS512,
    /// RSASSA-PKCS1-v1_5 with SHA-256, an RSA public key (PEM).
    RS256,
    /// ECDSA on P-256 with SHA-256, an EC public key (PEM).
    ES256,
    /// Ed25519, an Ed25519 public key (PEM).
    EdDSA,
}

impl Alg {
    /// The algorithm with this JOSE name (case-sensitive, as JOSE names are).
    pub fn from_name(name: &str) -> Option<Alg> {
        match name {
            "HS256" => Some(Alg::HS256),
            "HS384" => Some(Alg::HS384),
            "HS512" => Some(Alg::HS512),
            "RS256" => Some(Alg::RS256),
            "ES256" => Some(Alg::ES256),
            "EdDSA" => Some(Alg::EdDSA),
            _ => None,
        }
    }

    /// The JOSE name.
    pub const fn name(self) -> &'static str {
        match self {
            Alg::HS256 => "HS256",
            Alg::HS384 => "HS384",
            Alg::HS512 => "HS512",
            Alg::RS256 => "RS256",
            Alg::ES256 => "ES256",
            Alg::EdDSA => "EdDSA",
        }
    }

    fn jwt_algorithm(self) -> Algorithm {
        match self {
            Alg::HS256 => Algorithm::HS256,
            Alg::HS384 => Algorithm::HS384,
            Alg::HS512 => Algorithm::HS512,
            Alg::RS256 => Algorithm::RS256,
            Alg::ES256 => Algorithm::ES256,
            Alg::EdDSA => Algorithm::EdDSA,
        }
    }

    /// Reads a configured key: a shared secret for HMAC, a PEM public key
    /// otherwise.
    fn decoding_key(self, key: &[u8]) -> Result<DecodingKey, KeyError> {
        let parsed = match self {
            Alg::HS256 | Alg::HS384 | Alg::HS512 => {
                // RFC 7518 3.2: the key MUST be at least as long as the hash.
                let min_bytes = match self {
                    Alg::HS256 => 32,
                    Alg::HS384 => 48,
                    _ => 64,
                };
                if key.len() < min_bytes {
                    return Err(KeyError("an HMAC secret must be at least as long as the hash (RFC 7518 3.2)"));
                }
                DecodingKey::from_secret(key)
            }
            Alg::RS256 => DecodingKey::from_rsa_pem(key),
            Alg::ES256 => DecodingKey::from_ec_pem(key),
            Alg::EdDSA => DecodingKey::from_ed_pem(key),
        };
        parsed.map_err(|_| KeyError("the key is not a PEM public key of the algorithm's type"))
    }
}

/// Which endpoint a token is presented to; it picks the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The publish endpoint: the publisher key.
    Publisher,
    /// The subscribe endpoint and the subscription API: the subscriber key.
    Subscriber,
}

/// A configured key the hub cannot use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyError(&'static str);

impl KeyError {
    /// What is wrong with the key.
    pub fn reason(&self) -> &'static str {
        self.0
    }
}

impl std::fmt::Display for KeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for KeyError {}

/// A token that must be refused with 401 `invalid_token`. Its reason is for
/// logs only; the answer is the same whatever the reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidToken {
    reason: &'static str,
}

impl InvalidToken {
    /// Why the token was refused, for logs.
    pub fn reason(&self) -> &'static str {
        self.reason
    }
}

fn invalid(reason: &'static str) -> InvalidToken {
    InvalidToken { reason }
}

impl std::fmt::Display for InvalidToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid_token ({})", self.reason)
    }
}

impl std::error::Error for InvalidToken {}

/// What the hub trusts: one issuer, its algorithm and keys.
pub struct VerifierConfig<'a> {
    /// The trusted issuer; a token's `iss` must equal it exactly.
    pub issuer: &'a str,
    /// The one accepted signature algorithm.
    pub alg: Alg,
    /// The publisher key: a secret for HMAC, a PEM public key otherwise.
    pub publisher_key: &'a [u8],
    /// The subscriber key; `None` uses the publisher key (the spec
    /// recommends separate keys).
    pub subscriber_key: Option<&'a [u8]>,
    /// The hub URL, the base of relative URL patterns in tokens.
    pub hub_url: &'a Url,
}

/// Validates access tokens against a fixed configuration. Keys come only
/// from the configuration: a token's own `jwk`, `jku`, `x5u` or `x5c` is
/// never used, and a token carrying one is refused.
pub struct Verifier {
    issuer: String,
    hub_url: Url,
    publisher_key: DecodingKey,
    subscriber_key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("issuer", &self.issuer)
            .field("algorithms", &self.validation.algorithms)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// Reads the keys. Fails on a key that is not of the algorithm's type,
    /// or an HMAC secret shorter than its hash.
    pub fn new(config: &VerifierConfig<'_>) -> Result<Verifier, KeyError> {
        let publisher_key = config.alg.decoding_key(config.publisher_key)?;
        let subscriber_key = match config.subscriber_key {
            Some(key) => config.alg.decoding_key(key)?,
            None => publisher_key.clone(),
        };
        // The library checks the signature and that `alg` is exactly the
        // configured one (and fits the key's type); the claims are checked
        // by `verify`, against the caller's clock.
        let mut validation = Validation::new(config.alg.jwt_algorithm());
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.leeway = LEEWAY_SECS;
        Ok(Verifier {
            issuer: config.issuer.to_owned(),
            hub_url: config.hub_url.clone(),
            publisher_key,
            subscriber_key,
            validation,
        })
    }

    /// Validates `token` for `role` at time `now_unix_secs`, and reads its
    /// grants. `resource` is the hub's resource identifier, which `aud` must
    /// name.
    ///
    /// Checks, all of them required by the spec: the signature, made with
    /// the configured algorithm and the role's key; the header `typ` is
    /// `at+jwt` (or `application/at+jwt`, in any case); no key in the
    /// header; `iss` is the trusted issuer; `aud` is `resource` or an array
    /// holding it; `exp` is present and in the future; `nbf`, if present,
    /// is not in the future; `authorization_details` is well formed and
    /// within limits.
    pub fn verify(&self, role: Role, token: &str, resource: &str, now_unix_secs: u64) -> Result<Grants, InvalidToken> {
        let key = match role {
            Role::Publisher => &self.publisher_key,
            Role::Subscriber => &self.subscriber_key,
        };
        let decoded = jsonwebtoken::decode::<Map<String, Value>>(token, key, &self.validation).map_err(|error| {
            match error.kind() {
                ErrorKind::InvalidAlgorithm => invalid("algorithm not allowed"),
                ErrorKind::InvalidSignature => invalid("bad signature"),
                _ => invalid("malformed token, or an unsupported alg such as none"),
            }
        })?;
        check_header(&decoded.header)?;
        let claims = decoded.claims;
        check_issuer(claims.get("iss"), &self.issuer)?;
        check_audience(claims.get("aud"), resource)?;
        let expires_at =
            claims.get("exp").ok_or(invalid("missing exp")).and_then(|exp| numeric_date(exp, Rounding::Down))?;
        if now_unix_secs >= expires_at.saturating_add(LEEWAY_SECS) {
            return Err(invalid("expired"));
        }
        if let Some(nbf) = claims.get("nbf")
            && now_unix_secs.saturating_add(LEEWAY_SECS) < numeric_date(nbf, Rounding::Up)?
        {
            return Err(invalid("not yet valid (nbf)"));
        }
        let subject = match claims.get("sub") {
            None => None,
            Some(Value::String(subject)) => Some(subject.clone()),
            Some(_) => return Err(invalid("sub is not a string")),
        };
        let (publish, subscribe) =
            parse_authorization_details(claims.get("authorization_details"), &self.hub_url).map_err(invalid)?;
        Ok(Grants { expires_at, subject, publish, subscribe, legacy: false })
    }
}

impl Verifier {
    /// Validates a pre-standardization (0.x) token, for `--mercure-compat 0`:
    /// the signature as for [`Verifier::verify`] (the configured algorithm
    /// and the role's key, no key material in the header), `exp` and `nbf`
    /// when present; its grants are the `mercure` claim's `publish` and
    /// `subscribe` lists of topic selectors (exact topics, `*`, or URI
    /// templates) and its `payload`. Such tokens name no issuer or audience
    /// and need no `typ` or `exp`: accepting them is weaker, which is why it
    /// takes a flag.
    pub fn verify_legacy(&self, role: Role, token: &str, now_unix_secs: u64) -> Result<Grants, InvalidToken> {
        let key = match role {
            Role::Publisher => &self.publisher_key,
            Role::Subscriber => &self.subscriber_key,
        };
        let decoded = jsonwebtoken::decode::<Map<String, Value>>(token, key, &self.validation)
            .map_err(|_| invalid("malformed token, bad signature or algorithm"))?;
        let header = &decoded.header;
        if header.jwk.is_some() || header.jku.is_some() || header.x5u.is_some() || header.x5c.is_some() {
            return Err(invalid("the header carries key material"));
        }
        let claims = decoded.claims;
        let expires_at = match claims.get("exp") {
            Some(exp) => numeric_date(exp, Rounding::Down)?,
            None => u64::MAX,
        };
        if now_unix_secs >= expires_at.saturating_add(LEEWAY_SECS) {
            return Err(invalid("expired"));
        }
        if let Some(nbf) = claims.get("nbf")
            && now_unix_secs.saturating_add(LEEWAY_SECS) < numeric_date(nbf, Rounding::Up)?
        {
            return Err(invalid("not yet valid (nbf)"));
        }
        let subject = claims.get("sub").and_then(Value::as_str).map(str::to_owned);
        let Some(Value::Object(mercure)) = claims.get("mercure") else {
            return Err(invalid("no mercure claim"));
        };
        let selectors = |name: &str| -> Result<Vec<Matcher>, InvalidToken> {
            match mercure.get(name) {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(Value::Array(list)) if list.len() <= MAX_TOPICS_PER_DETAIL => list
                    .iter()
                    .map(|selector| {
                        let text = selector.as_str().ok_or(invalid("a selector is not a string"))?;
                        super::legacy::selector(text, &self.hub_url).map_err(|_| invalid("an invalid selector"))
                    })
                    .collect(),
                Some(_) => Err(invalid("publish and subscribe are lists of at most 64 selectors")),
            }
        };
        let publish = selectors("publish")?;
        let payload = mercure.get("payload").cloned();
        let subscribe = vec![SubscribeGrant { topics: selectors("subscribe")?, payload }];
        Ok(Grants { expires_at, subject, publish, subscribe, legacy: true })
    }
}

fn check_header(header: &Header) -> Result<(), InvalidToken> {
    let typ = header.typ.as_deref().ok_or(invalid("missing typ"))?;
    // RFC 7515 4.1.9: compared case-insensitively, `application/` optional.
    const APPLICATION: &str = "application/";
    let media_type = match typ.get(..APPLICATION.len()) {
        Some(prefix) if prefix.eq_ignore_ascii_case(APPLICATION) => typ.get(APPLICATION.len()..),
        _ => Some(typ),
    };
    if !media_type.is_some_and(|media_type| media_type.eq_ignore_ascii_case("at+jwt")) {
        return Err(invalid("typ is not at+jwt"));
    }
    if header.jwk.is_some() || header.jku.is_some() || header.x5u.is_some() || header.x5c.is_some() {
        return Err(invalid("the header carries key material"));
    }
    Ok(())
}

fn check_issuer(iss: Option<&Value>, trusted_issuer: &str) -> Result<(), InvalidToken> {
    match iss {
        Some(Value::String(iss)) if iss == trusted_issuer => Ok(()),
        Some(_) => Err(invalid("untrusted iss")),
        None => Err(invalid("missing iss")),
    }
}

fn check_audience(aud: Option<&Value>, resource: &str) -> Result<(), InvalidToken> {
    let names_resource = match aud {
        Some(Value::String(aud)) => aud == resource,
        Some(Value::Array(auds)) => {
            if !auds.iter().all(Value::is_string) {
                return Err(invalid("aud holds a non-string"));
            }
            auds.iter().any(|aud| aud.as_str() == Some(resource))
        }
        Some(_) => return Err(invalid("aud is neither a string nor an array")),
        None => return Err(invalid("missing aud")),
    };
    if names_resource { Ok(()) } else { Err(invalid("aud does not name this hub")) }
}

/// Which way a fractional NumericDate is rounded: always towards refusing.
enum Rounding {
    Down,
    Up,
}

/// A NumericDate (RFC 7519): seconds since the epoch, possibly fractional.
fn numeric_date(value: &Value, rounding: Rounding) -> Result<u64, InvalidToken> {
    if let Some(seconds) = value.as_u64() {
        return Ok(seconds);
    }
    match value.as_f64() {
        // `as` saturates for floats past u64::MAX
        Some(seconds) if seconds.is_finite() && seconds >= 0.0 => Ok(match rounding {
            Rounding::Down => seconds.floor() as u64,
            Rounding::Up => seconds.ceil() as u64,
        }),
        _ => Err(invalid("a time claim is not a non-negative number")),
    }
}

/// What a valid token allows.
#[derive(Debug, Clone)]
pub struct Grants {
    /// The token's `exp`: a subscriber's connection must be closed by then.
    pub expires_at: u64,
    /// The token's `sub`, if any.
    pub subject: Option<String>,
    publish: Vec<Matcher>,
    subscribe: Vec<SubscribeGrant>,
    /// A 0.x token ([`Verifier::verify_legacy`]): its one payload goes with
    /// every subscription.
    legacy: bool,
}

/// One Mercure authorization detail with the `subscribe` action. Kept per
/// detail, in token order, for payload selection.
#[derive(Debug, Clone)]
struct SubscribeGrant {
    topics: Vec<Matcher>,
    payload: Option<Value>,
}

impl Grants {
    /// Whether the token may publish an update on these topics: every one,
    /// canonical and alternate, must be matched by a `publish` grant. An
    /// empty list is not publishable.
    pub fn can_publish_all(&self, topics: &[impl AsRef<str>]) -> bool {
        !topics.is_empty()
            && topics.iter().all(|topic| {
                let topic = Topic::new(topic.as_ref());
                self.publish.iter().any(|grant| grant.matches_topic(&topic))
            })
    }

    /// Whether the token may read a private update on these topics: at
    /// least one must be matched by a `subscribe` grant.
    pub fn can_subscribe_any(&self, topics: &[impl AsRef<str>]) -> bool {
        topics.iter().any(|topic| {
            let topic = Topic::new(topic.as_ref());
            self.subscribe_grant_matches(&topic)
        })
    }

    /// [`Grants::can_subscribe_any`] for topics prepared once and tested for
    /// many subscribers.
    pub fn can_subscribe_any_topic(&self, topics: &[Topic<'_>]) -> bool {
        topics.iter().any(|topic| self.subscribe_grant_matches(topic))
    }

    fn subscribe_grant_matches(&self, topic: &Topic<'_>) -> bool {
        self.subscribe.iter().any(|grant| grant.topics.iter().any(|matcher| matcher.matches_topic(topic)))
    }

    /// The payload to publish with a subscription: that of the first
    /// `subscribe` detail whose topics match the subscription's matcher
    /// string, treated as a topic (whatever the subscription's matcher
    /// type). `None` if no detail matches, or the first that does has no
    /// payload.
    pub fn payload_for(&self, subscription_matcher_text: &str) -> Option<&Value> {
        if self.legacy {
            // 0.x: `mercure.payload`, whatever the topic.
            return self.subscribe.first().and_then(|grant| grant.payload.as_ref());
        }
        let as_topic = Topic::new(subscription_matcher_text);
        self.subscribe
            .iter()
            .find(|grant| grant.topics.iter().any(|matcher| matcher.matches_topic(&as_topic)))
            .and_then(|grant| grant.payload.as_ref())
    }
}

/// Reads the Mercure details of `authorization_details` into publish
/// matchers and subscribe grants. Details of other types are skipped; one
/// invalid Mercure detail invalidates the whole token (acting on the others
/// would silently change what the token grants).
fn parse_authorization_details(
    claim: Option<&Value>,
    hub_url: &Url,
) -> Result<(Vec<Matcher>, Vec<SubscribeGrant>), &'static str> {
    let mut publish = Vec::new();
    let mut subscribe = Vec::new();
    let details = match claim {
        None => return Ok((publish, subscribe)),
        Some(Value::Array(details)) => details,
        Some(_) => return Err("authorization_details is not an array"),
    };
    if details.len() > MAX_AUTHORIZATION_DETAILS {
        return Err("too many authorization details");
    }
    for detail in details {
        if detail.get("type").and_then(Value::as_str) != Some(AUTHORIZATION_DETAIL_TYPE) {
            continue;
        }
        let (may_publish, may_subscribe) = parse_actions(detail.get("actions"))?;
        let topics = parse_topics(detail.get("topics"), hub_url)?;
        let payload = match detail.get("payload") {
            None => None,
            Some(payload @ Value::Object(_)) => Some(payload.clone()),
            Some(_) => return Err("payload is not an object"),
        };
        if may_publish {
            publish.extend(topics.iter().cloned());
        }
        if may_subscribe {
            subscribe.push(SubscribeGrant { topics, payload });
        }
    }
    Ok((publish, subscribe))
}

/// `actions`: a non-empty array of strings; unknown actions grant nothing.
/// Returns whether `publish` and `subscribe` are among them.
fn parse_actions(actions: Option<&Value>) -> Result<(bool, bool), &'static str> {
    let actions = match actions {
        Some(Value::Array(actions)) if !actions.is_empty() => actions,
        _ => return Err("actions is not a non-empty array"),
    };
    let (mut publish, mut subscribe) = (false, false);
    for action in actions {
        match action.as_str() {
            Some("publish") => publish = true,
            Some("subscribe") => subscribe = true,
            Some(_) => {}
            None => return Err("an action is not a string"),
        }
    }
    Ok((publish, subscribe))
}

/// `topics`: a non-empty array of `{"match": string, "match_type"?: string}`.
fn parse_topics(topics: Option<&Value>, hub_url: &Url) -> Result<Vec<Matcher>, &'static str> {
    let topics = match topics {
        Some(Value::Array(topics)) if !topics.is_empty() => topics,
        _ => return Err("topics is not a non-empty array"),
    };
    if topics.len() > MAX_TOPICS_PER_DETAIL {
        return Err("too many topics in an authorization detail");
    }
    topics
        .iter()
        .map(|topic| {
            let Value::Object(topic) = topic else {
                return Err("a topic matcher is not an object");
            };
            let text = topic.get("match").and_then(Value::as_str).ok_or("a topic matcher has no string match")?;
            let kind = match topic.get("match_type") {
                None => MatcherType::Exact,
                Some(name) => name.as_str().and_then(MatcherType::from_name).ok_or("unsupported match_type")?,
            };
            Matcher::new(kind, text, hub_url).map_err(|error| error.reason())
        })
        .collect()
}

/// The `Authorization` header was present but not `Bearer <token>`: the
/// server answers 400 with `error="invalid_request"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MalformedCredentials;

impl std::fmt::Display for MalformedCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the Authorization header is not Bearer <token>")
    }
}

impl std::error::Error for MalformedCredentials {}

/// The access token a request presents, if any.
///
/// `authorization` is the `Authorization` field value and `cookie_header`
/// the `Cookie` field value (several `Cookie` fields joined with `"; "`),
/// each without surrounding whitespace. An `Authorization` header wins, and
/// any cookie is then ignored, as the spec requires; it must be `Bearer`
/// (any case), one space, and an RFC 6750 `b64token`. Without it, the token
/// is the value of the cookie named `cookie_name` (the first one, quotes
/// removed); an empty cookie counts as no token.
pub fn token_from_request<'a>(
    authorization: Option<&'a str>,
    cookie_header: Option<&'a str>,
    cookie_name: &str,
) -> Result<Option<&'a str>, MalformedCredentials> {
    if let Some(authorization) = authorization {
        let (scheme, token) = authorization.split_once(' ').ok_or(MalformedCredentials)?;
        if !scheme.eq_ignore_ascii_case("Bearer") || !is_b64token(token) {
            return Err(MalformedCredentials);
        }
        return Ok(Some(token));
    }
    Ok(cookie_header.and_then(|cookies| cookie_value(cookies, cookie_name)).filter(|token| !token.is_empty()))
}

/// RFC 6750: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn is_b64token(token: &str) -> bool {
    let body = token.trim_end_matches('=');
    !body.is_empty() && body.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"-._~+/".contains(&byte))
}

/// The value of the first cookie called `name` in a `Cookie` field value
/// (RFC 6265 5.4: `name=value` pairs separated by `; `).
fn cookie_value<'a>(cookies: &'a str, name: &str) -> Option<&'a str> {
    cookies.split(';').find_map(|pair| {
        let (pair_name, value) = pair.split_once('=')?;
        if pair_name.trim_matches([' ', '\t']) != name {
            return None;
        }
        let value = value.trim_matches([' ', '\t']);
        Some(value.strip_prefix('"').and_then(|quoted| quoted.strip_suffix('"')).unwrap_or(value))
    })
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::EncodingKey;
    use serde_json::json;

    use super::*;

    const NOW: u64 = 1_767_225_400;
    const ISSUER: &str = "https://example.com";
    const RESOURCE: &str = "https://example.com/.well-known/mercure";
    const SECRET: &[u8] = b"!ChangeThisMercureHubJWTSecretKey!";
    const SUBSCRIBER_SECRET: &[u8] = b"a-different-secret-for-subscribers!!";
    const RSA_PRIVATE: &[u8] = include_bytes!("testdata/rsa-private.pem");
    const RSA_PUBLIC: &[u8] = include_bytes!("testdata/rsa-public.pem");
    const EC_PRIVATE: &[u8] = include_bytes!("testdata/ec-private.pem");
    const EC_PUBLIC: &[u8] = include_bytes!("testdata/ec-public.pem");
    const ED_PRIVATE: &[u8] = include_bytes!("testdata/ed25519-private.pem");
    const ED_PUBLIC: &[u8] = include_bytes!("testdata/ed25519-public.pem");

    fn hub() -> Url {
        Url::parse(RESOURCE).unwrap()
    }

    fn verifier(alg: Alg, publisher_key: &[u8], subscriber_key: Option<&[u8]>) -> Verifier {
        Verifier::new(&VerifierConfig { issuer: ISSUER, alg, publisher_key, subscriber_key, hub_url: &hub() }).unwrap()
    }

    fn hs256() -> Verifier {
        verifier(Alg::HS256, SECRET, None)
    }

    fn detail(actions: &[&str], topics: Value) -> Value {
        json!({"type": AUTHORIZATION_DETAIL_TYPE, "actions": actions, "topics": topics})
    }

    /// Valid claims: trusted issuer, this hub as audience, five minutes to
    /// live, and the given authorization details.
    fn claims(details: Value) -> Value {
        json!({
            "iss": ISSUER,
            "aud": RESOURCE,
            "sub": "urn:uuid:bb3de268-05b0-4c65-b44e-8f9acefc29d6",
            "client_id": ISSUER,
            "iat": NOW - 100,
            "exp": NOW + 200,
            "jti": "urn:uuid:e70ff8d7-59d5-4a92-b0b7-505e8f6d09fa",
            "authorization_details": details,
        })
    }

    fn everything() -> Value {
        json!([detail(&["publish", "subscribe"], json!([{"match": "*"}]))])
    }

    fn header(alg: Algorithm) -> Header {
        let mut header = Header::new(alg);
        header.typ = Some("at+jwt".into());
        header
    }

    fn mint(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
        jsonwebtoken::encode(&header(alg), claims, key).unwrap()
    }

    fn mint_hs256(claims: &Value) -> String {
        mint(Algorithm::HS256, &EncodingKey::from_secret(SECRET).unwrap(), claims)
    }

    fn b64url(bytes: &[u8]) -> String {
        const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk.iter().fold(0u32, |n, &b| n << 8 | u32::from(b)) << (8 * (3 - chunk.len()));
            for i in 0..=chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            }
        }
        out
    }

    /// A token with a hand-written header, signed with `alg` and `key`, or
    /// unsigned when `key` is `None`.
    fn mint_raw(header: &Value, claims: &Value, signer: Option<(Algorithm, &EncodingKey)>) -> String {
        let message = format!("{}.{}", b64url(header.to_string().as_bytes()), b64url(claims.to_string().as_bytes()));
        let signature = match signer {
            Some((alg, key)) => jsonwebtoken::crypto::sign(message.as_bytes(), key, alg).unwrap(),
            None => String::new(),
        };
        format!("{message}.{signature}")
    }

    fn rejection(verifier: &Verifier, token: &str) -> &'static str {
        verifier.verify(Role::Publisher, token, RESOURCE, NOW).unwrap_err().reason()
    }

    #[test]
    fn algorithms_parse_from_their_jose_names_only() {
        for alg in [Alg::HS256, Alg::HS384, Alg::HS512, Alg::RS256, Alg::ES256, Alg::EdDSA] {
            assert_eq!(Alg::from_name(alg.name()), Some(alg));
        }
        for name in ["none", "hs256", "RS384", "PS256", "ES384", "EDDSA", ""] {
            assert_eq!(Alg::from_name(name), None, "{name}");
        }
    }

    #[test]
    fn a_valid_token_is_accepted_and_reads_its_expiry_and_subject() {
        let grants = hs256().verify(Role::Publisher, &mint_hs256(&claims(everything())), RESOURCE, NOW).unwrap();
        assert_eq!(grants.expires_at, NOW + 200);
        assert_eq!(grants.subject.as_deref(), Some("urn:uuid:bb3de268-05b0-4c65-b44e-8f9acefc29d6"));
        assert!(grants.can_publish_all(&["https://example.com/books/1"]));
    }

    #[test]
    fn every_configurable_algorithm_verifies_its_own_tokens() {
        let cases: [(Alg, Algorithm, EncodingKey, &[u8]); 6] = [
            (Alg::HS256, Algorithm::HS256, EncodingKey::from_secret(&[7; 32]).unwrap(), &[7; 32]),
            (Alg::HS384, Algorithm::HS384, EncodingKey::from_secret(&[7; 48]).unwrap(), &[7; 48]),
            (Alg::HS512, Algorithm::HS512, EncodingKey::from_secret(&[7; 64]).unwrap(), &[7; 64]),
            (Alg::RS256, Algorithm::RS256, EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap(), RSA_PUBLIC),
            (Alg::ES256, Algorithm::ES256, EncodingKey::from_ec_pem(EC_PRIVATE).unwrap(), EC_PUBLIC),
            (Alg::EdDSA, Algorithm::EdDSA, EncodingKey::from_ed_pem(ED_PRIVATE).unwrap(), ED_PUBLIC),
        ];
        for (alg, jwt_alg, signing_key, verifying_key) in cases {
            let verifier = verifier(alg, verifying_key, None);
            let token = mint(jwt_alg, &signing_key, &claims(everything()));
            assert!(verifier.verify(Role::Publisher, &token, RESOURCE, NOW).is_ok(), "{alg:?}");
            assert!(verifier.verify(Role::Subscriber, &token, RESOURCE, NOW).is_ok());
        }
    }

    #[test]
    fn hmac_secrets_shorter_than_the_hash_are_refused() {
        for (alg, length) in [(Alg::HS256, 32), (Alg::HS384, 48), (Alg::HS512, 64)] {
            let short = vec![1; length - 1];
            let config =
                VerifierConfig { issuer: ISSUER, alg, publisher_key: &short, subscriber_key: None, hub_url: &hub() };
            assert!(Verifier::new(&config).is_err(), "{alg:?}");
            let long_enough = vec![1; length];
            let subscriber = VerifierConfig { publisher_key: &long_enough, subscriber_key: Some(&short), ..config };
            assert!(Verifier::new(&subscriber).is_err(), "{alg:?} subscriber key");
        }
    }

    #[test]
    fn keys_of_the_wrong_type_for_the_algorithm_are_refused() {
        for (alg, key) in [
            (Alg::RS256, SECRET),
            (Alg::RS256, EC_PUBLIC),
            (Alg::ES256, RSA_PUBLIC),
            (Alg::EdDSA, RSA_PUBLIC),
            (Alg::ES256, b"not a pem".as_slice()),
        ] {
            let config =
                VerifierConfig { issuer: ISSUER, alg, publisher_key: key, subscriber_key: None, hub_url: &hub() };
            assert!(Verifier::new(&config).is_err(), "{alg:?}");
        }
    }

    #[test]
    fn the_role_picks_the_key_and_the_subscriber_key_defaults_to_the_publisher_key() {
        let separate = verifier(Alg::HS256, SECRET, Some(SUBSCRIBER_SECRET));
        let publisher_token = mint_hs256(&claims(everything()));
        let subscriber_token =
            mint(Algorithm::HS256, &EncodingKey::from_secret(SUBSCRIBER_SECRET).unwrap(), &claims(everything()));
        assert!(separate.verify(Role::Publisher, &publisher_token, RESOURCE, NOW).is_ok());
        assert!(separate.verify(Role::Subscriber, &subscriber_token, RESOURCE, NOW).is_ok());
        assert_eq!(
            separate.verify(Role::Subscriber, &publisher_token, RESOURCE, NOW).unwrap_err().reason(),
            "bad signature"
        );
        assert_eq!(
            separate.verify(Role::Publisher, &subscriber_token, RESOURCE, NOW).unwrap_err().reason(),
            "bad signature"
        );
        let shared = hs256();
        assert!(shared.verify(Role::Subscriber, &publisher_token, RESOURCE, NOW).is_ok());
    }

    #[test]
    fn the_typ_header_must_be_at_jwt_in_any_case_with_an_optional_application_prefix() {
        for typ in ["at+jwt", "AT+JWT", "At+Jwt", "application/at+jwt", "Application/AT+JWT"] {
            let mut header = header(Algorithm::HS256);
            header.typ = Some(typ.into());
            let token =
                jsonwebtoken::encode(&header, &claims(everything()), &EncodingKey::from_secret(SECRET).unwrap())
                    .unwrap();
            assert!(hs256().verify(Role::Publisher, &token, RESOURCE, NOW).is_ok(), "{typ}");
        }
    }

    #[test]
    fn a_token_whose_typ_is_not_at_jwt_must_be_rejected() {
        for typ in ["JWT", "jwt", "at+jwt ", "application/jwt", "application/", "text/at+jwt", "at+jwtx", ""] {
            let mut header = header(Algorithm::HS256);
            header.typ = Some(typ.into());
            let token =
                jsonwebtoken::encode(&header, &claims(everything()), &EncodingKey::from_secret(SECRET).unwrap())
                    .unwrap();
            assert_eq!(rejection(&hs256(), &token), "typ is not at+jwt", "{typ:?}");
        }
    }

    #[test]
    fn a_token_without_typ_must_be_rejected() {
        let mut header = header(Algorithm::HS256);
        header.typ = None;
        let token =
            jsonwebtoken::encode(&header, &claims(everything()), &EncodingKey::from_secret(SECRET).unwrap()).unwrap();
        assert_eq!(rejection(&hs256(), &token), "missing typ");
    }

    #[test]
    fn a_token_with_alg_none_must_be_rejected() {
        for alg in ["none", "None", "NONE"] {
            let token = mint_raw(&json!({"alg": alg, "typ": "at+jwt"}), &claims(everything()), None);
            assert_eq!(rejection(&hs256(), &token), "malformed token, or an unsupported alg such as none", "{alg}");
        }
        // even with a signature attached
        let signed = mint_raw(
            &json!({"alg": "none", "typ": "at+jwt"}),
            &claims(everything()),
            Some((Algorithm::HS256, &EncodingKey::from_secret(SECRET).unwrap())),
        );
        assert!(hs256().verify(Role::Publisher, &signed, RESOURCE, NOW).is_err());
    }

    #[test]
    fn a_token_with_critical_header_parameters_the_hub_does_not_understand_is_rejected() {
        let key = EncodingKey::from_secret(SECRET).unwrap();
        let token = mint_raw(
            &json!({"alg": "HS256", "typ": "at+jwt", "crit": ["exp"], "exp": 1}),
            &claims(everything()),
            Some((Algorithm::HS256, &key)),
        );
        assert!(hs256().verify(Role::Publisher, &token, RESOURCE, NOW).is_err());
    }

    #[test]
    fn a_token_whose_alg_is_not_the_configured_one_must_be_rejected() {
        // same secret, other HMAC hash
        let key = EncodingKey::from_secret(SECRET).unwrap();
        let hs512 = mint(Algorithm::HS512, &key, &claims(everything()));
        assert_eq!(rejection(&hs256(), &hs512), "algorithm not allowed");
        // other asymmetric algorithms against an RS256 hub
        let rs256 = verifier(Alg::RS256, RSA_PUBLIC, None);
        let es256 = mint(Algorithm::ES256, &EncodingKey::from_ec_pem(EC_PRIVATE).unwrap(), &claims(everything()));
        assert_eq!(rejection(&rs256, &es256), "algorithm not allowed");
        let ps256 = mint(Algorithm::PS256, &EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap(), &claims(everything()));
        assert_eq!(rejection(&rs256, &ps256), "algorithm not allowed");
    }

    #[test]
    fn an_hmac_token_keyed_with_the_rsa_public_key_must_be_rejected() {
        // the classic algorithm-confusion attack: sign HS256 with the public
        // key's bytes, hoping the hub verifies with them as an HMAC secret
        let rs256 = verifier(Alg::RS256, RSA_PUBLIC, None);
        let forged = mint(Algorithm::HS256, &EncodingKey::from_secret(RSA_PUBLIC).unwrap(), &claims(everything()));
        assert_eq!(rejection(&rs256, &forged), "algorithm not allowed");
        let ed = verifier(Alg::EdDSA, ED_PUBLIC, None);
        let forged = mint(Algorithm::HS256, &EncodingKey::from_secret(ED_PUBLIC).unwrap(), &claims(everything()));
        assert_eq!(rejection(&ed, &forged), "algorithm not allowed");
    }

    #[test]
    fn a_token_with_a_bad_signature_must_be_rejected() {
        let other_secret = mint(
            Algorithm::HS256,
            &EncodingKey::from_secret(b"another-secret-that-is-long-enough").unwrap(),
            &claims(everything()),
        );
        assert_eq!(rejection(&hs256(), &other_secret), "bad signature");

        // claims swapped after signing
        let rs256 = verifier(Alg::RS256, RSA_PUBLIC, None);
        let genuine = mint(Algorithm::RS256, &EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap(), &claims(json!([])));
        let mut parts: Vec<&str> = genuine.split('.').collect();
        let escalated = b64url(claims(everything()).to_string().as_bytes());
        parts[1] = &escalated;
        assert_eq!(rejection(&rs256, &parts.join(".")), "bad signature");
    }

    #[test]
    fn malformed_tokens_are_rejected() {
        for token in ["", "a", "a.b", "a.b.c", "a.b.c.d", "..", "\u{e9}.\u{e9}.\u{e9}"] {
            assert!(hs256().verify(Role::Publisher, token, RESOURCE, NOW).is_err(), "{token:?}");
        }
        let not_an_object = mint_raw(
            &json!({"alg": "HS256", "typ": "at+jwt"}),
            &json!([1, 2]),
            Some((Algorithm::HS256, &EncodingKey::from_secret(SECRET).unwrap())),
        );
        assert!(hs256().verify(Role::Publisher, &not_an_object, RESOURCE, NOW).is_err());
    }

    #[test]
    fn key_material_in_the_header_must_never_be_used_and_the_token_is_rejected() {
        let key = EncodingKey::from_secret(SECRET).unwrap();
        for (name, value) in [
            ("jwk", json!({"kty": "oct", "k": "c2VjcmV0"})),
            ("jku", json!("https://attacker.example/jwks.json")),
            ("x5u", json!("https://attacker.example/cert.pem")),
            ("x5c", json!(["MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"])),
        ] {
            let mut header = json!({"alg": "HS256", "typ": "at+jwt"});
            header[name] = value;
            let token = mint_raw(&header, &claims(everything()), Some((Algorithm::HS256, &key)));
            assert_eq!(rejection(&hs256(), &token), "the header carries key material", "{name}");
        }
        // a kid is only a hint, and harmless
        let token = mint_raw(
            &json!({"alg": "HS256", "typ": "at+jwt", "kid": "k1"}),
            &claims(everything()),
            Some((Algorithm::HS256, &key)),
        );
        assert!(hs256().verify(Role::Publisher, &token, RESOURCE, NOW).is_ok());
    }

    #[test]
    fn a_token_must_have_the_trusted_issuer() {
        let mut claims = claims(everything());
        for iss in [
            json!("https://example.org"),
            json!("https://example.com/"),
            json!("HTTPS://EXAMPLE.COM"),
            json!(""),
            json!(["https://example.com"]),
            json!(null),
        ] {
            claims["iss"] = iss.clone();
            assert_eq!(rejection(&hs256(), &mint_hs256(&claims)), "untrusted iss", "{iss}");
        }
        claims.as_object_mut().unwrap().remove("iss");
        assert_eq!(rejection(&hs256(), &mint_hs256(&claims)), "missing iss");
    }

    #[test]
    fn aud_must_name_the_hub_as_a_string_or_in_an_array() {
        let mut claims = claims(everything());
        for aud in [json!(RESOURCE), json!([RESOURCE]), json!(["https://other.example", RESOURCE])] {
            claims["aud"] = aud.clone();
            assert!(hs256().verify(Role::Publisher, &mint_hs256(&claims), RESOURCE, NOW).is_ok(), "{aud}");
        }
        for aud in [
            json!("https://other.example/.well-known/mercure"),
            json!(format!("{RESOURCE}/")),
            json!([]),
            json!(["https://other.example"]),
        ] {
            claims["aud"] = aud.clone();
            assert_eq!(rejection(&hs256(), &mint_hs256(&claims)), "aud does not name this hub", "{aud}");
        }
        claims["aud"] = json!([RESOURCE, 42]);
        assert_eq!(rejection(&hs256(), &mint_hs256(&claims)), "aud holds a non-string");
        claims["aud"] = json!({"aud": RESOURCE});
        assert_eq!(rejection(&hs256(), &mint_hs256(&claims)), "aud is neither a string nor an array");
        claims.as_object_mut().unwrap().remove("aud");
        assert_eq!(rejection(&hs256(), &mint_hs256(&claims)), "missing aud");
    }

    #[test]
    fn a_token_without_exp_must_be_rejected() {
        let mut claims = claims(everything());
        claims.as_object_mut().unwrap().remove("exp");
        assert_eq!(rejection(&hs256(), &mint_hs256(&claims)), "missing exp");
        claims["exp"] = json!(null);
        assert!(hs256().verify(Role::Publisher, &mint_hs256(&claims), RESOURCE, NOW).is_err());
        claims["exp"] = json!("1767225600");
        assert!(hs256().verify(Role::Publisher, &mint_hs256(&claims), RESOURCE, NOW).is_err());
        claims["exp"] = json!(-1);
        assert!(hs256().verify(Role::Publisher, &mint_hs256(&claims), RESOURCE, NOW).is_err());
    }

    #[test]
    fn exp_must_be_enforced_against_the_given_time_without_leeway() {
        let token = mint_hs256(&claims(everything()));
        let exp = NOW + 200;
        assert!(hs256().verify(Role::Publisher, &token, RESOURCE, exp - 1).is_ok());
        for now in [exp, exp + 1, u64::MAX] {
            assert_eq!(hs256().verify(Role::Publisher, &token, RESOURCE, now).unwrap_err().reason(), "expired");
        }
        // a fractional exp is rounded towards expiry
        let mut fractional = claims(everything());
        fractional["exp"] = json!(NOW as f64 + 0.5);
        let token = mint_hs256(&fractional);
        assert!(hs256().verify(Role::Publisher, &token, RESOURCE, NOW - 1).is_ok());
        assert!(hs256().verify(Role::Publisher, &token, RESOURCE, NOW).is_err());
    }

    #[test]
    fn nbf_must_be_enforced_when_present() {
        let mut claims = claims(everything());
        claims["nbf"] = json!(NOW + 10);
        let token = mint_hs256(&claims);
        assert_eq!(hs256().verify(Role::Publisher, &token, RESOURCE, NOW).unwrap_err().reason(), "not yet valid (nbf)");
        assert!(hs256().verify(Role::Publisher, &token, RESOURCE, NOW + 9).is_err());
        assert!(hs256().verify(Role::Publisher, &token, RESOURCE, NOW + 10).is_ok());
        claims["nbf"] = json!(NOW);
        assert!(hs256().verify(Role::Publisher, &mint_hs256(&claims), RESOURCE, NOW).is_ok());
        claims["nbf"] = json!(NOW as f64 + 0.5);
        assert!(hs256().verify(Role::Publisher, &mint_hs256(&claims), RESOURCE, NOW).is_err());
        claims["nbf"] = json!("soon");
        assert!(hs256().verify(Role::Publisher, &mint_hs256(&claims), RESOURCE, NOW).is_err());
    }

    #[test]
    fn a_non_string_sub_is_rejected_and_a_missing_one_is_none() {
        let mut claims = claims(everything());
        claims["sub"] = json!(42);
        assert_eq!(rejection(&hs256(), &mint_hs256(&claims)), "sub is not a string");
        claims.as_object_mut().unwrap().remove("sub");
        let grants = hs256().verify(Role::Publisher, &mint_hs256(&claims), RESOURCE, NOW).unwrap();
        assert_eq!(grants.subject, None);
    }

    fn grants(details: Value) -> Grants {
        hs256().verify(Role::Subscriber, &mint_hs256(&claims(details)), RESOURCE, NOW).unwrap()
    }

    fn details_rejection(details: Value) -> &'static str {
        rejection(&hs256(), &mint_hs256(&claims(details)))
    }

    #[test]
    fn a_token_without_authorization_details_is_valid_and_grants_nothing() {
        let mut claims = claims(json!(null));
        claims.as_object_mut().unwrap().remove("authorization_details");
        let grants = hs256().verify(Role::Publisher, &mint_hs256(&claims), RESOURCE, NOW).unwrap();
        assert!(!grants.can_publish_all(&["a"]));
        assert!(!grants.can_subscribe_any(&["a"]));
        let empty = self::grants(json!([]));
        assert!(!empty.can_publish_all(&["a"]));
        assert!(!empty.can_subscribe_any(&["a"]));
    }

    #[test]
    fn authorization_details_that_are_not_an_array_invalidate_the_token() {
        for details in [json!(null), json!({}), json!("x"), json!(detail(&["publish"], json!([{"match": "*"}])))] {
            assert_eq!(details_rejection(details), "authorization_details is not an array");
        }
    }

    #[test]
    fn the_detail_type_must_be_compared_byte_by_byte_and_other_types_ignored() {
        let grants = grants(json!([
            {"type": "https://example.com/other", "actions": ["publish"], "topics": [{"match": "*"}]},
            {"type": "https://mercure.rocks/authorization-detail/", "actions": ["publish"], "topics": [{"match": "*"}]},
            {"type": "HTTPS://MERCURE.ROCKS/AUTHORIZATION-DETAIL", "actions": ["publish"], "topics": [{"match": "*"}]},
            {"actions": ["publish"], "topics": [{"match": "*"}]},
            {"type": "payment_initiation", "actions": 7, "topics": "not validated"},
            "not even an object",
            42,
        ]));
        assert!(!grants.can_publish_all(&["a"]));
    }

    #[test]
    fn actions_must_be_a_non_empty_array_of_strings() {
        let topics = json!([{"match": "*"}]);
        for actions in [json!(null), json!([]), json!("publish"), json!({"publish": true})] {
            let details = json!([{"type": AUTHORIZATION_DETAIL_TYPE, "actions": actions, "topics": topics}]);
            assert_eq!(details_rejection(details), "actions is not a non-empty array", "{actions}");
        }
        let missing = json!([{"type": AUTHORIZATION_DETAIL_TYPE, "topics": topics}]);
        assert_eq!(details_rejection(missing), "actions is not a non-empty array");
    }

    #[test]
    fn a_non_string_action_must_invalidate_the_token() {
        for actions in [json!(["publish", 1]), json!([null]), json!([["publish"]]), json!([{"action": "publish"}])] {
            let details = json!([{"type": AUTHORIZATION_DETAIL_TYPE, "actions": actions, "topics": [{"match": "*"}]}]);
            assert_eq!(details_rejection(details), "an action is not a string", "{actions}");
        }
    }

    #[test]
    fn unknown_actions_must_be_ignored_granting_nothing_and_keeping_the_token_valid() {
        let grants = grants(json!([
            detail(&["read", "Publish", "SUBSCRIBE"], json!([{"match": "*"}])),
            detail(&["subscribe", "future-action"], json!([{"match": "a"}])),
        ]));
        assert!(!grants.can_publish_all(&["a"]));
        assert!(!grants.can_subscribe_any(&["b"]));
        assert!(grants.can_subscribe_any(&["a"]));
    }

    #[test]
    fn topics_must_be_a_non_empty_array_of_matcher_objects() {
        for topics in [json!(null), json!([]), json!("*"), json!({"match": "*"})] {
            assert_eq!(
                details_rejection(json!([detail(&["publish"], topics.clone())])),
                "topics is not a non-empty array",
                "{topics}"
            );
        }
        let missing = json!([{"type": AUTHORIZATION_DETAIL_TYPE, "actions": ["publish"]}]);
        assert_eq!(details_rejection(missing), "topics is not a non-empty array");
        for entry in [json!("*"), json!(null), json!(["*"])] {
            assert_eq!(
                details_rejection(json!([detail(&["publish"], json!([{"match": "a"}, entry]))])),
                "a topic matcher is not an object"
            );
        }
        for entry in [json!({}), json!({"match": 1}), json!({"match": null}), json!({"pattern": "*"})] {
            assert_eq!(
                details_rejection(json!([detail(&["publish"], json!([entry]))])),
                "a topic matcher has no string match"
            );
        }
    }

    #[test]
    fn a_topic_matcher_without_match_type_must_be_exact() {
        let grants = grants(json!([detail(&["subscribe"], json!([{"match": "https://example.com/books/:id"}]))]));
        assert!(grants.can_subscribe_any(&["https://example.com/books/:id"]));
        assert!(!grants.can_subscribe_any(&["https://example.com/books/1"]));
        let explicit = self::grants(json!([detail(
            &["subscribe"],
            json!([{"match": "https://example.com/books/:id", "match_type": "urlpattern"}])
        )]));
        assert!(explicit.can_subscribe_any(&["https://example.com/books/1"]));
    }

    #[test]
    fn an_unsupported_match_type_must_invalidate_the_token() {
        for match_type in [json!("regex"), json!("Exact"), json!("URLPATTERN"), json!(""), json!(null), json!(1)] {
            let details = json!([detail(&["publish"], json!([{"match": "a", "match_type": match_type}]))]);
            assert_eq!(details_rejection(details), "unsupported match_type", "{match_type}");
        }
    }

    #[test]
    fn an_invalid_url_pattern_in_a_detail_must_invalidate_the_token() {
        let details =
            json!([detail(&["subscribe"], json!([{"match": "https://example.com/:id(", "match_type": "urlpattern"}]))]);
        assert_eq!(details_rejection(details), "topic matcher is not a valid URL pattern");
    }

    #[test]
    fn one_invalid_mercure_detail_must_invalidate_the_whole_token() {
        let details =
            json!([detail(&["publish", "subscribe"], json!([{"match": "*"}])), detail(&["publish"], json!([])),]);
        assert!(hs256().verify(Role::Publisher, &mint_hs256(&claims(details)), RESOURCE, NOW).is_err());
    }

    #[test]
    fn a_payload_must_be_an_object_or_the_token_is_invalid() {
        for payload in [json!("x"), json!([1]), json!(null), json!(1)] {
            let mut entry = detail(&["subscribe"], json!([{"match": "*"}]));
            entry["payload"] = payload.clone();
            assert_eq!(details_rejection(json!([entry])), "payload is not an object", "{payload}");
        }
    }

    #[test]
    fn more_details_than_the_limit_must_invalidate_the_token() {
        let one = detail(&["subscribe"], json!([{"match": "a"}]));
        let at_limit = vec![one.clone(); MAX_AUTHORIZATION_DETAILS];
        assert!(grants(json!(at_limit)).can_subscribe_any(&["a"]));
        let over = vec![one; MAX_AUTHORIZATION_DETAILS + 1];
        assert_eq!(details_rejection(json!(over)), "too many authorization details");
    }

    #[test]
    fn more_topics_in_a_detail_than_the_limit_must_invalidate_the_token() {
        let topics: Vec<Value> = (0..MAX_TOPICS_PER_DETAIL).map(|i| json!({"match": format!("t{i}")})).collect();
        assert!(grants(json!([detail(&["subscribe"], json!(topics))])).can_subscribe_any(&["t0"]));
        let mut over = topics;
        over.push(json!({"match": "one-more"}));
        assert_eq!(
            details_rejection(json!([detail(&["subscribe"], json!(over))])),
            "too many topics in an authorization detail"
        );
    }

    #[test]
    fn a_pattern_longer_than_the_limit_must_invalidate_the_token() {
        let long = "p".repeat(crate::mercure::matcher::MAX_MATCHER_BYTES + 1);
        assert_eq!(
            details_rejection(json!([detail(&["publish"], json!([{"match": long}]))])),
            "topic matcher is too long"
        );
    }

    #[test]
    fn a_publisher_must_be_granted_publish_on_every_topic_of_the_update() {
        let grants = grants(json!([
            detail(&["publish"], json!([{"match": "https://example.com/books/1"}])),
            detail(&["publish"], json!([{"match": "https://example.com/users/42/*", "match_type": "urlpattern"}])),
            detail(&["subscribe"], json!([{"match": "*"}])),
        ]));
        assert!(grants.can_publish_all(&["https://example.com/books/1"]));
        assert!(grants.can_publish_all(&["https://example.com/books/1", "https://example.com/users/42/books/1"]));
        assert!(!grants.can_publish_all(&["https://example.com/books/1", "https://example.com/books/2"]));
        assert!(!grants.can_publish_all(&["https://example.com/books/2"]));
        assert!(!grants.can_publish_all(&[] as &[&str]));
        // subscribe grants do not allow publishing
        assert!(!grants.can_publish_all(&["anything"]));
    }

    #[test]
    fn a_subscriber_needs_subscribe_on_at_least_one_topic_of_the_update() {
        let grants = grants(json!([
            detail(
                &["subscribe"],
                json!([
                    {"match": "https://example.com/books/1", "match_type": "exact"},
                    {"match": "https://example.com/users/42/*", "match_type": "urlpattern"}
                ])
            ),
            detail(&["publish"], json!([{"match": "*"}])),
        ]));
        assert!(grants.can_subscribe_any(&["https://example.com/books/1"]));
        assert!(!grants.can_subscribe_any(&["https://example.com/books/2"]));
        // the alternate topic grants access to the whole update
        assert!(grants.can_subscribe_any(&["https://example.com/books/2", "https://example.com/users/42/books/2"]));
        assert!(!grants.can_subscribe_any(&[] as &[&str]));
        let topics = [Topic::new("https://example.com/books/9"), Topic::new("/users/42/x")];
        assert!(grants.can_subscribe_any_topic(&topics));
        assert!(!grants.can_subscribe_any_topic(&topics[..1]));
    }

    #[test]
    fn the_wildcard_grants_every_topic_whatever_the_match_type() {
        for topics in [json!([{"match": "*"}]), json!([{"match": "*", "match_type": "urlpattern"}])] {
            let grants = grants(json!([detail(&["publish", "subscribe"], topics)]));
            assert!(grants.can_publish_all(&["a", "https://example.com/x", "/.well-known/mercure/subscriptions"]));
            assert!(grants.can_subscribe_any(&["a"]));
        }
    }

    #[test]
    fn relative_url_pattern_grants_cover_the_subscription_api_paths() {
        let grants = grants(json!([detail(
            &["subscribe"],
            json!([{"match": "/.well-known/mercure/subscriptions{/:type}?{/:topic}?{/:subscriber}?", "match_type": "urlpattern"}])
        )]));
        assert!(grants.can_subscribe_any(&["/.well-known/mercure/subscriptions"]));
        assert!(grants.can_subscribe_any(&["/.well-known/mercure/subscriptions/exact/a%2Fb"]));
        assert!(grants.can_subscribe_any(&["/.well-known/mercure/subscriptions/exact/a%2Fb/urn%3Ax"]));
        assert!(!grants.can_subscribe_any(&["/.well-known/mercure/other"]));
    }

    #[test]
    fn the_payload_must_be_that_of_the_first_subscribe_detail_matching_the_subscription() {
        let mut specific = detail(&["subscribe"], json!([{"match": "https://example.com/foo"}]));
        specific["payload"] = json!({"custom1": "foo"});
        let mut pattern =
            detail(&["subscribe"], json!([{"match": "https://example.com/bar/:id", "match_type": "urlpattern"}]));
        pattern["payload"] = json!({"custom2": "bar"});
        let no_payload = detail(&["subscribe"], json!([{"match": "https://example.com/none"}]));
        let mut publish_only = detail(&["publish"], json!([{"match": "*"}]));
        publish_only["payload"] = json!({"ignored": true});
        let mut default = detail(&["subscribe"], json!([{"match": "*"}]));
        default["payload"] = json!({"custom3": "default"});
        let grants = grants(json!([publish_only, specific, pattern, no_payload, default]));

        assert_eq!(grants.payload_for("https://example.com/foo"), Some(&json!({"custom1": "foo"})));
        // the subscription's own matcher string is treated as a topic
        assert_eq!(grants.payload_for("https://example.com/bar/:id"), Some(&json!({"custom2": "bar"})));
        assert_eq!(grants.payload_for("https://example.com/bar/7"), Some(&json!({"custom2": "bar"})));
        // the first matching detail wins, even without a payload
        assert_eq!(grants.payload_for("https://example.com/none"), None);
        assert_eq!(grants.payload_for("https://example.com/other"), Some(&json!({"custom3": "default"})));
    }

    #[test]
    fn a_broad_detail_placed_first_masks_the_payloads_after_it() {
        let mut broad = detail(&["subscribe"], json!([{"match": "*"}]));
        broad["payload"] = json!({"broad": true});
        let mut specific = detail(&["subscribe"], json!([{"match": "a"}]));
        specific["payload"] = json!({"specific": true});
        let grants = grants(json!([broad, specific]));
        assert_eq!(grants.payload_for("a"), Some(&json!({"broad": true})));
    }

    #[test]
    fn no_payload_without_a_matching_subscribe_detail() {
        let grants = grants(json!([detail(&["subscribe"], json!([{"match": "a"}]))]));
        assert_eq!(grants.payload_for("b"), None);
        assert_eq!(grants.payload_for("a"), None);
    }

    #[test]
    fn a_bearer_authorization_header_presents_the_token() {
        for header in ["Bearer abc.def.ghi", "bearer abc.def.ghi", "BEARER abc.def.ghi", "BeArEr abc.def.ghi"] {
            assert_eq!(token_from_request(Some(header), None, DEFAULT_COOKIE_NAME), Ok(Some("abc.def.ghi")));
        }
        // the whole b64token alphabet, with trailing padding
        assert_eq!(
            token_from_request(Some("Bearer aZ09-._~+/=="), None, DEFAULT_COOKIE_NAME),
            Ok(Some("aZ09-._~+/=="))
        );
    }

    #[test]
    fn the_authorization_header_wins_and_the_cookie_must_then_be_ignored() {
        let cookies = format!("{DEFAULT_COOKIE_NAME}=from.cookie.token");
        assert_eq!(
            token_from_request(Some("Bearer from.header.token"), Some(&cookies), DEFAULT_COOKIE_NAME),
            Ok(Some("from.header.token"))
        );
        // even a malformed header is not rescued by the cookie
        assert_eq!(
            token_from_request(Some("Basic dXNlcjpwYXNz"), Some(&cookies), DEFAULT_COOKIE_NAME),
            Err(MalformedCredentials)
        );
    }

    #[test]
    fn an_authorization_header_that_is_not_bearer_space_token_must_be_refused_as_malformed() {
        for header in [
            "",
            "Bearer",
            "Bearer ",
            "Bearer  abc",
            "Bearer abc def",
            "Bearer abc ",
            "Bearer\tabc",
            "Bearerabc",
            " Bearer abc",
            "Basic dXNlcjpwYXNz",
            "Bearers abc",
            "Bearer ab=c",
            "Bearer =",
            "Bearer a,b",
            "Bearer \"abc\"",
            "Bearer ab\u{e9}",
        ] {
            assert_eq!(
                token_from_request(Some(header), None, DEFAULT_COOKIE_NAME),
                Err(MalformedCredentials),
                "{header:?}"
            );
        }
    }

    #[test]
    fn without_an_authorization_header_the_named_cookie_must_be_used() {
        let name = DEFAULT_COOKIE_NAME;
        let table: &[(&str, Option<&str>)] = &[
            ("__Secure-mercure_access_token=a.b.c", Some("a.b.c")),
            ("theme=dark; __Secure-mercure_access_token=a.b.c; lang=fr", Some("a.b.c")),
            ("theme=dark;__Secure-mercure_access_token=a.b.c", Some("a.b.c")),
            ("__Secure-mercure_access_token=\"a.b.c\"", Some("a.b.c")),
            ("__Secure-mercure_access_token=first; __Secure-mercure_access_token=second", Some("first")),
            // a value may contain `=`
            ("__Secure-mercure_access_token=a.b.c==", Some("a.b.c==")),
            ("theme=dark", None),
            ("", None),
            ("__Secure-mercure_access_token", None),
            ("__secure-mercure_access_token=a.b.c", None),
            ("x__Secure-mercure_access_token=a.b.c", None),
            ("mercureAuthorization=a.b.c", None),
            // an empty cookie is no token
            ("__Secure-mercure_access_token=", None),
            ("__Secure-mercure_access_token=\"\"", None),
        ];
        for (cookies, expected) in table {
            assert_eq!(token_from_request(None, Some(cookies), name), Ok(*expected), "{cookies:?}");
        }
        assert_eq!(token_from_request(None, None, name), Ok(None));
    }

    #[test]
    fn the_cookie_name_is_configurable() {
        assert_eq!(
            token_from_request(None, Some("hub2_token=x.y.z; __Secure-mercure_access_token=a.b.c"), "hub2_token"),
            Ok(Some("x.y.z"))
        );
    }

    #[test]
    fn invalid_token_errors_say_invalid_token_and_keep_their_reason() {
        let error = hs256().verify(Role::Publisher, "a.b.c", RESOURCE, NOW).unwrap_err();
        assert!(error.to_string().starts_with("invalid_token"));
        assert!(!error.reason().is_empty());
    }
}
