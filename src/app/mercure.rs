//! The Mercure front door: `/.well-known/mercure`, on the same broker,
//! history and fan-out as the seeds' API.
//!
//! | request                              | what it does |
//! |--------------------------------------|--------------|
//! | `GET /.well-known/mercure?match=...` | subscribe: a `text/event-stream` of the updates whose topics match |
//! | `POST /.well-known/mercure`          | publish a form-encoded update; the answer is its id, `text/plain` |
//! | `OPTIONS /.well-known/mercure`       | CORS preflight |
//!
//! The protocol's rules live in [`crate::mercure`] (forms, matchers, tokens,
//! requests); this module decides, per request, what they mean here: which
//! token applies, which status and `WWW-Authenticate` challenge (RFC 6750)
//! each failure gets, and what the server must do ([`Action`]).
//!
//! **Authorization.** Publishing always needs a token that grants `publish`
//! on every topic of the update. Subscribing needs none by default (an
//! anonymous subscriber gets public updates only); with a token, private
//! updates on topics it may `subscribe` to reach it too, live and in
//! replay (the broker asks the token, through [`Audience`], for every
//! private event), and the stream ends when the token expires.

use std::sync::Arc;

use url::Url;

use super::{Action, App, Cors};
use crate::broadcast::broker::{Audience, MercureInterest, TopicPattern};
use crate::broadcast::event::{MercureFields, Publish};
use crate::http::conn::{Handled, Request};
use crate::http::{Method, RequestHead, Response, Status};
use crate::mercure::matcher::{Matcher, MatcherType};
use crate::mercure::token::{self, Alg, Grants, Role, Verifier, VerifierConfig};
use crate::mercure::{legacy, subscribe, update};

/// The hub's path (the spec's default hub URL).
pub const PATH: &str = "/.well-known/mercure";

/// What `Allow` says for the hub's path.
pub const ALLOW: &str = "GET, HEAD, POST, OPTIONS";

/// Where RFC 9728 puts the protected resource metadata of a resource whose
/// path is [`PATH`]: the well-known prefix, then the resource's path.
pub const METADATA_PATH: &str = "/.well-known/oauth-protected-resource/.well-known/mercure";

/// How the Mercure hub is configured (flags `--mercure-*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MercureSettings {
    /// The trusted token issuer (`iss`); without it (and a key), publishing
    /// answers 401.
    pub issuer: Option<String>,
    /// The publishers' key: an HMAC secret, or a PEM public key.
    pub publisher_key: Option<Vec<u8>>,
    /// The subscribers' key; `None` uses the publishers'.
    pub subscriber_key: Option<Vec<u8>>,
    /// The one accepted signature algorithm.
    pub alg: Alg,
    /// The hub's resource identifier (`aud`), also its URL; `None` derives it
    /// from each request's `Host` as `http://HOST/.well-known/mercure`.
    pub resource: Option<String>,
    /// Refuse subscribers without a token (401).
    pub require_subscriber_token: bool,
    /// The name of the cookie that may carry a token.
    pub cookie_name: String,
    /// Also take what pre-standardization (0.x) clients send
    /// (`--mercure-compat 0`: see [`crate::mercure::legacy`]).
    pub compat_0x: bool,
}

impl Default for MercureSettings {
    fn default() -> MercureSettings {
        MercureSettings {
            issuer: None,
            publisher_key: None,
            subscriber_key: None,
            alg: Alg::HS256,
            resource: None,
            require_subscriber_token: false,
            cookie_name: token::DEFAULT_COOKIE_NAME.to_owned(),
            compat_0x: false,
        }
    }
}

impl MercureSettings {
    /// The hub URL that relative topics and patterns are resolved against:
    /// the configured resource, or a fixed local one. (Resolution only
    /// compares paths and origins, so any fixed base gives every node and
    /// loop the same answers.)
    pub fn hub_url(&self) -> Url {
        let fallback = || Url::parse("http://localhost/.well-known/mercure").expect("a valid URL");
        self.resource.as_deref().and_then(|r| Url::parse(r).ok()).unwrap_or_else(fallback)
    }

    /// The token verifier, if an issuer and a key are configured; an error
    /// says what is wrong with the key.
    pub fn verifier(&self) -> Result<Option<Verifier>, String> {
        let (Some(issuer), Some(publisher_key)) = (&self.issuer, &self.publisher_key) else {
            return Ok(None);
        };
        let hub_url = self.hub_url();
        let config = VerifierConfig {
            issuer,
            alg: self.alg,
            publisher_key,
            subscriber_key: self.subscriber_key.as_deref(),
            hub_url: &hub_url,
        };
        Verifier::new(&config).map(Some).map_err(|e| format!("mercure key: {}", e.reason()))
    }
}

/// A Mercure subscription the server must open.
#[derive(Debug, Clone)]
pub struct MercureSubscribe {
    pub interest: MercureInterest,
    /// The `Last-Event-ID` header, or else the `last_event_id` parameter.
    pub last_event_id: Option<String>,
    /// When the token expires (Unix seconds): the stream must end by then.
    pub expires_at: Option<u64>,
}

impl PartialEq for MercureSubscribe {
    fn eq(&self, other: &MercureSubscribe) -> bool {
        // Patterns and audiences are compared by what they were built from.
        let patterns = |s: &MercureSubscribe| s.interest.patterns.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
        self.interest.topics == other.interest.topics
            && patterns(self) == patterns(other)
            && self.interest.audience.is_some() == other.interest.audience.is_some()
            && self.last_event_id == other.last_event_id
            && self.expires_at == other.expires_at
    }
}

impl Eq for MercureSubscribe {}

/// The Mercure parts of the application, built once per loop.
#[derive(Debug, Default)]
pub struct Hub {
    pub settings: MercureSettings,
    verifier: Option<Verifier>,
    hub_url: Option<Url>,
}

impl Hub {
    /// The hub for `settings`; a key that cannot be read is an error.
    pub fn new(settings: MercureSettings) -> Result<Hub, String> {
        let verifier = settings.verifier()?;
        let hub_url = Some(settings.hub_url());
        Ok(Hub { settings, verifier, hub_url })
    }

    /// Whether publishing can work at all (an issuer and a key).
    pub fn can_publish(&self) -> bool {
        self.verifier.is_some()
    }

    fn hub_url(&self) -> Url {
        self.hub_url.clone().unwrap_or_else(|| self.settings.hub_url())
    }

    /// The resource identifier tokens must name in `aud`.
    fn resource(&self, head: &RequestHead) -> String {
        match &self.settings.resource {
            Some(resource) => resource.clone(),
            None => format!("http://{}{PATH}", head.host.as_deref().unwrap_or("localhost")),
        }
    }

    /// Where the protected resource metadata of the hub is (RFC 9728 3.1:
    /// the well-known prefix goes between the resource's origin and path).
    /// `None` when the request's `Host` makes no URL (then the challenge
    /// goes without it: a client's bytes never go into the header's
    /// quoted string unchecked). Found by the request fuzz target.
    fn metadata_url(&self, head: &RequestHead) -> Option<String> {
        let url = Url::parse(&self.resource(head)).ok()?;
        // From the Host, the URL must be just an origin and the hub's path:
        // a Host with a path, user or query in it is not one.
        let odd = url.path() != PATH
            || url.query().is_some()
            || url.fragment().is_some()
            || !url.username().is_empty()
            || url.password().is_some();
        if self.settings.resource.is_none() && odd {
            return None;
        }
        let origin = url.origin();
        if !origin.is_tuple() {
            return None;
        }
        let path = url.path().trim_end_matches('/');
        Some(format!("{}/.well-known/oauth-protected-resource{path}", origin.ascii_serialization()))
    }

    /// A refusal with a `WWW-Authenticate: Bearer` challenge (RFC 6750 3),
    /// with `error` when there is one to give, and where the metadata is
    /// (RFC 9728 5.1), so a client can find what the token must say.
    fn challenge(&self, head: &RequestHead, status: Status, why: &'static str, error: Option<&str>) -> Response {
        let metadata = self.metadata_url(head).map(|url| format!("resource_metadata=\"{url}\""));
        let challenge = match (error, metadata) {
            (Some(error), Some(metadata)) => format!("Bearer error=\"{error}\", {metadata}"),
            (Some(error), None) => format!("Bearer error=\"{error}\""),
            (None, Some(metadata)) => format!("Bearer {metadata}"),
            (None, None) => "Bearer".to_owned(),
        };
        Response::error(status, why).header("WWW-Authenticate", challenge)
    }

    /// The protected resource metadata (RFC 9728) of the hub.
    pub(super) fn metadata(&self, head: &RequestHead) -> Response {
        let body = serde_json::json!({
            "resource": self.resource(head),
            "authorization_details_types_supported": [token::AUTHORIZATION_DETAIL_TYPE],
            "bearer_methods_supported": ["header"],
            "mercure_cookie": self.settings.cookie_name,
            "mercure_matcher_types_supported": ["exact", "urlpattern"],
        });
        Response::new(Status::OK, "application/json", body.to_string().into_bytes())
    }

    /// The token the request presents (the header wins over the cookie;
    /// with 0.x compatibility, the 0.x cookie comes last).
    fn presented<'h>(&self, head: &'h RequestHead) -> Result<Option<&'h str>, Response> {
        let (authorization, cookie) = (head.authorization.as_deref(), head.cookie.as_deref());
        let malformed = |_| self.challenge(head, Status::BAD_REQUEST, "malformed credentials", Some("invalid_request"));
        let presented =
            token::token_from_request(authorization, cookie, &self.settings.cookie_name).map_err(malformed)?;
        if presented.is_none() && self.settings.compat_0x {
            return token::token_from_request(None, cookie, legacy::COOKIE).map_err(malformed);
        }
        Ok(presented)
    }

    /// Validates the presented token for `role`.
    fn grants(&self, role: Role, token: &str, head: &RequestHead, now: u64) -> Result<Grants, Response> {
        let invalid = || self.challenge(head, Status::UNAUTHORIZED, "invalid token", Some("invalid_token"));
        let verifier = self.verifier.as_ref().ok_or_else(invalid)?;
        let verified = verifier.verify(role, token, &self.resource(head), now);
        let verified = match verified {
            Err(_) if self.settings.compat_0x => verifier.verify_legacy(role, token, now),
            verified => verified,
        };
        verified.map_err(|e| {
            log::debug!("refused a token: {}", e.reason());
            invalid()
        })
    }

    /// Handles a request to the hub's path.
    pub(super) fn handle(&self, app: &App, request: Request, cors: Cors) -> Handled<Action> {
        let Request { head, body } = request;
        let now = (app.clock)();
        let outcome = match head.method {
            Method::Options => Err(preflight()),
            Method::Get | Method::Head => self.subscribe(&head, now),
            _ => self.publish(&head, &body, now),
        };
        match outcome {
            Ok(action) => Handled::Defer { action, headers: cors.headers() },
            Err(response) => Handled::Respond(response.with_headers(cors.headers())),
        }
    }

    fn subscribe(&self, head: &RequestHead, now: u64) -> Result<Action, Response> {
        let token = self.presented(head)?;
        let query = head.query.as_bytes();
        let request = if self.settings.compat_0x && legacy::is_legacy_query(query) {
            legacy::parse_subscription(query, &self.hub_url())
        } else {
            subscribe::parse_subscription(query, &self.hub_url())
        };
        let request = request.map_err(|why| Response::refusal(Status::BAD_REQUEST, "invalid subscription", why))?;
        let grants = match token {
            Some(token) => Some(self.grants(Role::Subscriber, token, head, now)?),
            None if self.settings.require_subscriber_token => {
                return Err(self.challenge(head, Status::UNAUTHORIZED, "a token is required", None));
            }
            None => None,
        };
        if head.method == Method::Head {
            return Err(App::event_stream_head());
        }
        let mut interest = MercureInterest::default();
        for matcher in request.matchers {
            if matcher.kind() == MatcherType::Exact && !matcher.is_wildcard() {
                interest.topics.push(matcher.text().to_owned());
            } else {
                let key = format!("{} {}", matcher.kind().name(), matcher.text());
                interest.patterns.push((key, Arc::new(Pattern(matcher))));
            }
        }
        let expires_at = grants.as_ref().map(|grants| grants.expires_at);
        interest.audience = grants.map(|grants| Arc::new(Reader(grants)) as Arc<dyn Audience>);
        // The header wins over the parameter; an empty header (some clients
        // send one) does not hide the parameter. An empty value is still a
        // request to resume (the broker answers where the stream starts).
        let header = head.last_event_id.clone();
        let last_event_id = header.clone().filter(|id| !id.is_empty()).or(request.last_event_id).or(header);
        Ok(Action::SubscribeMercure(Box::new(MercureSubscribe { interest, last_event_id, expires_at })))
    }

    fn publish(&self, head: &RequestHead, body: &[u8], now: u64) -> Result<Action, Response> {
        let Some(token) = self.presented(head)? else {
            return Err(self.challenge(head, Status::UNAUTHORIZED, "a token is required to publish", None));
        };
        let grants = self.grants(Role::Publisher, token, head, now)?;
        let update = update::parse_update(body, &self.hub_url()).map_err(|e| {
            let status = Status(e.status());
            Response::refusal(status, "invalid update", e.reason())
        })?;
        if !grants.can_publish_all(&update.topics) {
            return Err(self.challenge(
                head,
                Status::FORBIDDEN,
                "not allowed to publish on these topics",
                Some("insufficient_scope"),
            ));
        }
        let mercure = MercureFields { private: update.private, id: update.id, retry: update.retry };
        let publish =
            Publish { message: update.data, topics: update.topics, event: update.event_type, mercure: Some(mercure) };
        // Checked by the core too; a refusal here would be a bug, not a 500.
        publish.validate().map_err(|why| Response::refusal(Status::BAD_REQUEST, "invalid update", &why))?;
        Ok(Action::Publish(publish))
    }
}

/// The answer to a preflight on the hub's path.
fn preflight() -> Response {
    App::no_content()
        .header("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
        .header("Access-Control-Allow-Headers", "Authorization, Content-Type, Last-Event-ID, Cache-Control")
        .header("Access-Control-Max-Age", "600")
        .header("Allow", ALLOW)
}

/// A URL pattern (or the wildcard), as the broker matches it.
#[derive(Debug)]
struct Pattern(Matcher);

impl TopicPattern for Pattern {
    fn matches(&self, topic: &str) -> bool {
        self.0.matches(topic)
    }
}

/// A subscriber's token, as the broker asks it about private events.
#[derive(Debug)]
struct Reader(Grants);

impl Audience for Reader {
    fn may_read(&self, topics: &[Box<str>]) -> bool {
        self.0.can_subscribe_any(topics)
    }
}
