//! The Mercure front door: `/.well-known/mercure`, on the same broker,
//! history and fan-out as the seeds' API.
//!
//! | request                              | what it does |
//! |--------------------------------------|--------------|
//! | `GET /.well-known/mercure?match=...` | subscribe: a `text/event-stream` of the updates whose topics match |
//! | `POST /.well-known/mercure`          | publish a form-encoded update; the answer is its id, `text/plain` |
//! | `OPTIONS /.well-known/mercure`       | CORS preflight |
//! | `GET /.well-known/mercure/subscriptions[/{type}/{match}[/{subscriber}]]` | the active subscriptions (`--mercure-subscriptions`) |
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

use crossbeam_channel::{Receiver, TryRecvError};
use url::Url;

use super::{Action, App, Cors};
use crate::broadcast::broker::{Audience, MercureInterest, TopicPattern};
use crate::broadcast::event::{MercureFields, Publish};
use crate::broadcast::presence::{Cursor, Joining, Kind, Presence, Seen};
use crate::broadcast::roster::Page;
use crate::http::conn::{Handled, Request};
use crate::http::{Method, RequestHead, Response, Status};
use crate::mercure::matcher::{Matcher, MatcherType};
use crate::mercure::subscriptions::{self, Form, Query, Subscription};
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
    /// Active subscriptions (`--mercure-subscriptions`): an event when one
    /// starts or ends, and the subscription API. Off, nothing of it is
    /// made or kept.
    pub subscriptions: bool,
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
            subscriptions: false,
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
    /// With `--mercure-subscriptions`, each subscription with its token's
    /// payload, to register and announce; empty otherwise.
    pub joining: Vec<Joining>,
}

/// A subscription API request the server must answer: with the document of
/// one subscription, or a collection it writes as it reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListSubscriptions {
    pub query: Query,
    /// The requested path: the collection's `id`.
    pub path: String,
    /// The hub's URL, for the `Link` header that carries the cursor.
    pub hub_url: String,
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
            && self.joining == other.joining
    }
}

impl Eq for MercureSubscribe {}

/// The Mercure parts of the application, built once per loop.
#[derive(Debug, Default)]
pub struct Hub {
    pub settings: MercureSettings,
    verifier: Option<Verifier>,
    /// Shared by every subscriber's [`Reader`].
    hub_url: Option<Arc<Url>>,
}

impl Hub {
    /// The hub for `settings`; a key that cannot be read is an error.
    pub fn new(settings: MercureSettings) -> Result<Hub, String> {
        let verifier = settings.verifier()?;
        let hub_url = Some(Arc::new(settings.hub_url()));
        Ok(Hub { settings, verifier, hub_url })
    }

    /// Whether publishing can work at all (an issuer and a key).
    pub fn can_publish(&self) -> bool {
        self.verifier.is_some()
    }

    fn hub_url(&self) -> Arc<Url> {
        self.hub_url.clone().unwrap_or_else(|| Arc::new(self.settings.hub_url()))
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
            "mercure_subscriptions": self.settings.subscriptions,
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
        let is_legacy = self.settings.compat_0x && legacy::is_legacy_query(query);
        let request = if is_legacy {
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
        let mut joining = Vec::new();
        if self.settings.subscriptions {
            for matcher in &request.matchers {
                let kind = match matcher.kind() {
                    _ if is_legacy => Kind::Legacy,
                    MatcherType::Exact => Kind::Exact,
                    _ => Kind::UrlPattern,
                };
                let payload = grants.as_ref().and_then(|grants| grants.payload_for(matcher.text()));
                let payload = payload.map(serde_json::Value::to_string);
                joining.push(Joining { kind, matcher: matcher.text().to_owned(), payload });
            }
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
        let hub_url = self.hub_url();
        interest.audience = grants.map(|grants| Arc::new(Reader { grants, hub_url }) as Arc<dyn Audience>);
        // The header wins over the parameter; an empty header (some clients
        // send one) does not hide the parameter. An empty value is still a
        // request to resume (the broker answers where the stream starts).
        let header = head.last_event_id.clone();
        let last_event_id = header.clone().filter(|id| !id.is_empty()).or(request.last_event_id).or(header);
        Ok(Action::SubscribeMercure(Box::new(MercureSubscribe { interest, last_event_id, expires_at, joining })))
    }

    /// Handles a request to the subscription API (under
    /// [`subscriptions::COLLECTION_PATH`]).
    pub(super) fn handle_subscriptions(&self, app: &App, head: &RequestHead, cors: Cors) -> Handled<Action> {
        let outcome = match head.method {
            _ if !self.settings.subscriptions => Err(Response::error(Status::NOT_FOUND, "not found")),
            Method::Options => Err(App::no_content()
                .header("Access-Control-Allow-Methods", "GET, HEAD, OPTIONS")
                .header("Access-Control-Allow-Headers", "Authorization, Cache-Control")
                .header("Access-Control-Max-Age", "600")
                .header("Allow", "GET, HEAD, OPTIONS")),
            _ => self.list_subscriptions(head, (app.clock)()),
        };
        // The cursor is in the `Link` header, which a script must be let read.
        let mut headers = cors.headers();
        if headers.iter().any(|(name, _)| *name == "Access-Control-Allow-Origin") {
            headers.push(("Access-Control-Expose-Headers", "Link".to_owned()));
        }
        match outcome {
            Ok(action) => Handled::Defer { action, headers },
            Err(response) => Handled::Respond(response.with_headers(headers)),
        }
    }

    /// A subscription API request, authorized like a subscription to the
    /// requested path as a topic (the form of subscription events'
    /// topics): a token is required, and one of its `subscribe` grants
    /// must match the path.
    fn list_subscriptions(&self, head: &RequestHead, now: u64) -> Result<Action, Response> {
        let query = subscriptions::parse_path(&head.path, self.settings.compat_0x)
            .ok_or_else(|| Response::error(Status::NOT_FOUND, "no such subscription collection"))?;
        let Some(token) = self.presented(head)? else {
            return Err(self.challenge(head, Status::UNAUTHORIZED, "a token is required", None));
        };
        let grants = self.grants(Role::Subscriber, token, head, now)?;
        // Authorized in the form of event topics, however the client
        // encoded it (`%3a` for `%3A`, say).
        let path = query.canonical_path();
        if !grants.can_subscribe_any(&[path.as_str()]) {
            return Err(self.challenge(
                head,
                Status::FORBIDDEN,
                "not allowed to read these subscriptions",
                Some("insufficient_scope"),
            ));
        }
        let listing = ListSubscriptions { query, path, hub_url: self.resource(head) };
        Ok(Action::ListSubscriptions(Box::new(listing)))
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

/// A subscriber's token, as the broker asks it about private events, and
/// the hub URL its URL patterns were built with.
#[derive(Debug)]
struct Reader {
    grants: Grants,
    hub_url: Arc<Url>,
}

thread_local! {
    /// The topics of the private update this thread checked last, each
    /// resolved as a URL once: a fan-out asks every subscriber's token
    /// about the same update in a row, and resolving a topic is most of
    /// the cost of matching it to a URL pattern grant (3.1 against 1.0 µs,
    /// `cargo bench --bench mercure -- private_read`). Keyed by the topics'
    /// text, not their address, which a later update may reuse.
    static LAST_CHECKED: std::cell::RefCell<(Vec<Box<str>>, Vec<crate::mercure::matcher::Resolved>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

impl Audience for Reader {
    fn may_read(&self, topics: &[Box<str>]) -> bool {
        use crate::mercure::matcher::Topic;
        LAST_CHECKED.with_borrow_mut(|(texts, resolved)| {
            if texts.as_slice() != topics {
                *texts = topics.to_vec();
                *resolved = topics.iter().map(|topic| Topic::resolve(topic, &self.hub_url)).collect();
            }
            // One topic at a time, on the stack: nothing is allocated per
            // reader of a private update.
            texts.iter().zip(resolved.iter()).any(|(text, components)| {
                self.grants.can_subscribe_any_topic(std::slice::from_ref(&Topic::resolved(text, components)))
            })
        })
    }
}

/// The update announcing that `seen` started (`active`) or ended: private
/// (only tokens that may read its topic get it), of the reserved type
/// `mercure`, on the subscription's own topic.
pub fn subscription_event(seen: Seen<'_>, active: bool) -> Publish {
    let subscription = subscription_of(seen, active);
    Publish {
        message: subscription.document(),
        topics: vec![subscription.topic()],
        event: Some(SUBSCRIPTION_EVENT_TYPE.to_owned()),
        mercure: Some(MercureFields { private: true, id: None, retry: None }),
    }
}

/// The SSE `event` of subscription events, which publishers cannot use.
pub const SUBSCRIPTION_EVENT_TYPE: &str = "mercure";

fn subscription_of(seen: Seen<'_>, active: bool) -> Subscription<'_> {
    Subscription {
        form: if seen.kind == Kind::Legacy { Form::Legacy } else { Form::Standard },
        match_type: seen.kind.match_type(),
        matcher: seen.matcher,
        subscriber: seen.subscriber,
        active,
        payload: seen.payload,
    }
}

/// Subscribers per piece of a listing: each piece is one lock of a loop's
/// registry and one write, some tens of kilobytes.
const LISTING_SUBSCRIBERS_PER_PIECE: usize = 128;

/// A subscription API answer under way. A collection is written as it is
/// read, a piece each time the socket has taken the last one, so that a
/// listing of any size holds one piece in memory. The subscriptions come
/// from this server's registry, or on a cluster from the roster in Redis
/// ([`crate::broadcast::roster`]), page by page.
#[derive(Debug)]
pub struct Listing {
    request: ListSubscriptions,
    source: Source,
    /// The reconciliation cursor, taken before the walk begins: whatever
    /// changes during the walk comes after it, in events a client resuming
    /// from it gets.
    last_event_id: String,
    started: bool,
    any: bool,
    done: bool,
}

#[derive(Debug)]
enum Source {
    Local(Cursor),
    Cluster(Receiver<Page>),
}

/// What comes next in a collection ([`Listing::next_piece`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// These bytes.
    Piece(Vec<u8>),
    /// Nothing yet: the cluster's roster has not sent the next page (the
    /// loop is woken when it does).
    Wait,
    /// The document is complete.
    Done,
    /// The roster failed mid-way: the document cannot be completed, and
    /// closing the connection without its end tells the client so.
    Failed,
}

impl Listing {
    /// A listing of what `request` asks for from this server's registry,
    /// as of the event `last_event_id`.
    pub fn new(request: ListSubscriptions, last_event_id: String) -> Listing {
        Listing::with_source(request, last_event_id, Source::Local(Cursor::default()))
    }

    /// A listing whose subscriptions arrive as `pages` from the roster, which
    /// must be asked for [`Listing::roster_query`].
    pub fn from_cluster(request: ListSubscriptions, last_event_id: String, pages: Receiver<Page>) -> Listing {
        Listing::with_source(request, last_event_id, Source::Cluster(pages))
    }

    fn with_source(request: ListSubscriptions, last_event_id: String, source: Source) -> Listing {
        Listing { request, source, last_event_id, started: false, any: false, done: false }
    }

    /// The topic prefix (or topic, `true`) to ask the roster for.
    pub fn roster_query(&self) -> (String, bool) {
        self.request.query.topic_prefix()
    }

    /// Whether the subscriptions come from the cluster's roster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.source, Source::Cluster(_))
    }

    /// Whether the answer is one subscription (then [`Listing::single`]).
    pub fn is_single(&self) -> bool {
        self.request.query.is_single()
    }

    /// The head of the answer: JSON (JSON-LD for a 0.x path), with the
    /// cursor on the `rel="mercure"` link, and as the `ETag`, since the
    /// answer changes with it.
    pub fn head(&self, status: Status) -> Response {
        let legacy = self.request.query.is_legacy();
        let content_type = if legacy { "application/ld+json" } else { "application/json" };
        Response::new(status, content_type, Vec::new())
            .header("Link", self.link())
            .header("ETag", format!("\"{}\"", self.last_event_id))
            .header("Cache-Control", "must-revalidate")
    }

    /// The `rel="mercure"` link with the cursor, which every answer of the
    /// API carries (a 404 too: the subscription may appear in the events
    /// after it).
    fn link(&self) -> String {
        format!(
            "<{}>; rel=\"mercure\"; last-event-id=\"{}\"; type=\"mercure\"; content-type=\"application/json\"",
            self.request.hub_url, self.last_event_id
        )
    }

    fn found(&self, document: Option<String>) -> Response {
        match document {
            Some(document) => Response { body: Some(document.into_bytes().into()), ..self.head(Status::OK) },
            None => Response::error(Status::NOT_FOUND, "no such subscription").header("Link", self.link()),
        }
    }

    /// The answer for one subscription: its document, or 404. `None` while
    /// the roster has not answered.
    pub fn single(&mut self, presence: &Presence) -> Option<Response> {
        let document = match &mut self.source {
            Source::Local(cursor) => {
                let mut found = None;
                // In steps, so that no loop's registry is locked for long.
                while found.is_none()
                    && !presence.walk(cursor, LISTING_SUBSCRIBERS_PER_PIECE, |seen| {
                        let subscription = subscription_of(seen, true);
                        if found.is_none() && self.request.query.wants(&subscription) {
                            found = Some(subscription.document());
                        }
                    })
                {}
                found
            }
            Source::Cluster(pages) => match pages.try_recv() {
                Ok(Page::Documents(mut documents)) => documents.pop(),
                Ok(Page::End) => None,
                Err(TryRecvError::Empty) => return None,
                Err(TryRecvError::Disconnected) => {
                    return Some(Response::error(Status::SERVICE_UNAVAILABLE, "the cluster's roster is unavailable"));
                }
            },
        };
        Some(self.found(document))
    }

    /// The next piece of a collection.
    pub fn next_piece(&mut self, presence: &Presence) -> Next {
        if self.done {
            return Next::Done;
        }
        let mut out = String::new();
        if !self.started {
            self.started = true;
            let legacy = self.request.query.is_legacy();
            out = subscriptions::collection_start(&self.request.path, &self.last_event_id, legacy);
        }
        let (query, any) = (&self.request.query, &mut self.any);
        // A comma before every document but the first of the collection.
        let mut separate = |out: &mut String| {
            if std::mem::replace(any, true) {
                out.push(',');
            }
        };
        match &mut self.source {
            Source::Local(cursor) => {
                self.done = presence.walk(cursor, LISTING_SUBSCRIBERS_PER_PIECE, |seen| {
                    let subscription = subscription_of(seen, true);
                    if query.wants(&subscription) {
                        separate(&mut out);
                        subscription.write_document(&mut out);
                    }
                });
            }
            Source::Cluster(pages) => match pages.try_recv() {
                Ok(Page::Documents(documents)) => documents.iter().for_each(|document| {
                    separate(&mut out);
                    out.push_str(document);
                }),
                Ok(Page::End) => self.done = true,
                Err(TryRecvError::Empty) if out.is_empty() => return Next::Wait,
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Disconnected) => return Next::Failed,
            },
        }
        if self.done {
            out.push_str(subscriptions::COLLECTION_END);
        }
        Next::Piece(out.into_bytes())
    }
}

/// How a subscription is kept in the cluster's roster: its topic, and its
/// document while active.
pub fn describe(seen: Seen<'_>) -> (String, String) {
    let subscription = subscription_of(seen, true);
    (subscription.topic(), subscription.document())
}
