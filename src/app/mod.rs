//! The application: what requests mean. Routes, credentials, CORS, the demo
//! page, and the answers; the HTTP/1.1 machine ([`crate::http::conn`]) hands
//! us complete requests and frames what we return, and the server carries
//! out the [`Action`]s we cannot answer alone.
//!
//! | path          | methods            | what it does                                     |
//! |---------------|--------------------|--------------------------------------------------|
//! | `/`           | GET, HEAD          | the demo page (embedded in the binary)           |
//! | `/events`     | GET, HEAD, OPTIONS | subscribe: a `text/event-stream` that stays open |
//! | `/send-event` | POST, OPTIONS      | publish `{"message": "..."}` to subscribers      |
//! | `/metrics`    | GET, HEAD          | Prometheus text exposition ([`metrics`])         |
//! | `/healthz`    | GET, HEAD          | `ok`                                             |
//! | `/.well-known/mercure` | GET, HEAD, POST, OPTIONS | the Mercure hub ([`mercure`])          |
//! | `*`           | OPTIONS            | the methods the server implements (`Allow`)      |
//!
//! The seeds' formats (publish body, subscription query, JSON answers) are
//! in [`seeds`]. Everything here is pure: a request in, a [`Response`] or an
//! [`Action`] out.

pub mod mercure;
pub mod metrics;
pub mod seeds;

use crate::broadcast::event::{Publish, Receipt};
use crate::http::conn::{Application, Handled, Limits, Request};
use crate::http::{BodyFraming, Error, Method, RequestHead, Response, Status};

/// The demo page served at `/`: the seeds' EventSource client, made useful.
pub const DEMO_PAGE: &str = include_str!("demo.html");

/// The media type of an event stream (WHATWG HTML 9.2).
pub const EVENT_STREAM: &str = "text/event-stream";

/// How the application answers: the connection limits plus the API's
/// settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub limits: Limits,
    /// The `retry:` (reconnection delay, in milliseconds) sent when a stream
    /// opens.
    pub retry_ms: u32,
    /// Origins allowed to read answers (CORS); `["*"]` allows any.
    pub cors_origins: Vec<String>,
    /// If set, `POST /send-event` needs `Authorization: Bearer <token>`.
    pub publish_token: Option<String>,
    /// If set, `/events` needs the token as a bearer or as `?token=`.
    pub subscribe_token: Option<String>,
    /// If set, `/metrics` (which names the topics clients subscribe to)
    /// needs `Authorization: Bearer <token>`; unset, it is open.
    pub metrics_token: Option<String>,
    /// Log a line per request (peer, method, target, status).
    pub access_log: bool,
    /// The Mercure hub's configuration.
    pub mercure: mercure::MercureSettings,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            limits: Limits::default(),
            retry_ms: 3000,
            cors_origins: vec!["*".to_owned()],
            publish_token: None,
            subscribe_token: None,
            metrics_token: None,
            access_log: false,
            mercure: mercure::MercureSettings::default(),
        }
    }
}

/// Something a request needs the server to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Publish this event, then answer with [`App::published`] (or
    /// [`App::unavailable`]).
    Publish(Publish),
    /// Make the connection an event stream on these topics: subscribe it,
    /// then open the stream with [`App::stream_head`] and
    /// [`App::stream_opening`], followed by what the broker says to send
    /// first.
    Subscribe(Subscribe),
    /// Open a Mercure stream: subscribe it, then open it with
    /// [`App::mercure_stream_head`] (which says where it resumed) and
    /// [`App::stream_opening`], followed by what the broker says to send
    /// first; the stream must end when its token expires.
    SubscribeMercure(Box<mercure::MercureSubscribe>),
    /// Answer a subscription API request: the server has the
    /// subscriptions ([`crate::broadcast::presence`]) and the cursor.
    ListSubscriptions(Box<mercure::ListSubscriptions>),
    /// Render the metrics and answer with [`App::metrics`].
    Metrics,
    /// Say whether the server is healthy, with [`App::health`].
    Health,
}

/// A new subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// Topics, at least one.
    pub topics: Vec<String>,
    /// Where to resume: the `Last-Event-ID` header, or else the `lastEventId`
    /// query parameter.
    pub last_event_id: Option<String>,
}

/// The resources bare-sse serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/`: the demo page.
    Page,
    /// `/events`: the event stream.
    Events,
    /// `/send-event`: publishing.
    Publish,
    /// `/metrics`: Prometheus metrics.
    Metrics,
    /// `/healthz`: liveness.
    Health,
    /// `/.well-known/mercure`: the Mercure hub.
    Mercure,
    /// The hub's protected resource metadata (RFC 9728).
    MercureMetadata,
    /// `/.well-known/mercure/subscriptions...`: the subscription API.
    MercureSubscriptions,
    /// `*` (`OPTIONS *`): the server as a whole (RFC 9110 9.3.7).
    Server,
}

impl Endpoint {
    /// The endpoint at `path`, if any.
    pub fn from_path(path: &str) -> Option<Endpoint> {
        match path {
            "/" | "/index.html" => Some(Endpoint::Page),
            "/events" => Some(Endpoint::Events),
            "/send-event" => Some(Endpoint::Publish),
            "/metrics" => Some(Endpoint::Metrics),
            "/healthz" => Some(Endpoint::Health),
            mercure::PATH => Some(Endpoint::Mercure),
            mercure::METADATA_PATH => Some(Endpoint::MercureMetadata),
            "*" => Some(Endpoint::Server),
            _ if crate::mercure::subscriptions::is_api_path(path) => Some(Endpoint::MercureSubscriptions),
            _ => None,
        }
    }

    /// Whether the endpoint answers `method`.
    pub fn allows(self, method: Method) -> bool {
        match self {
            Endpoint::Page | Endpoint::Metrics | Endpoint::Health => matches!(method, Method::Get | Method::Head),
            Endpoint::MercureMetadata | Endpoint::MercureSubscriptions => {
                matches!(method, Method::Get | Method::Head | Method::Options)
            }
            Endpoint::Events => matches!(method, Method::Get | Method::Head | Method::Options),
            Endpoint::Publish => matches!(method, Method::Post | Method::Options),
            Endpoint::Mercure => matches!(method, Method::Get | Method::Head | Method::Post | Method::Options),
            // The parser lets `*` through for OPTIONS only.
            Endpoint::Server => method == Method::Options,
        }
    }

    /// The `Allow` header value for a 405; for `*`, every method the
    /// server implements.
    pub fn allow_header(self) -> &'static str {
        match self {
            Endpoint::Page | Endpoint::Metrics | Endpoint::Health => "GET, HEAD",
            Endpoint::MercureMetadata | Endpoint::MercureSubscriptions => "GET, HEAD, OPTIONS",
            Endpoint::Events => "GET, HEAD, OPTIONS",
            Endpoint::Publish => "POST, OPTIONS",
            Endpoint::Mercure => mercure::ALLOW,
            Endpoint::Server => "GET, HEAD, POST, OPTIONS",
        }
    }
}

/// The application, as the connection machine sees it.
#[derive(Debug)]
pub struct App {
    pub settings: Settings,
    mercure: mercure::Hub,
    /// The wall clock, in Unix seconds (token expiry); a parameter so that
    /// tests can set the time.
    pub clock: fn() -> u64,
}

impl Default for App {
    fn default() -> App {
        App::new(Settings::default())
    }
}

/// The system's wall clock, in Unix seconds.
pub fn system_clock() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl App {
    /// The application for `settings`. A Mercure key that cannot be read
    /// leaves Mercure publishing off (with an error in the log); the server
    /// checks the keys before it starts ([`mercure::MercureSettings::verifier`]).
    pub fn new(settings: Settings) -> App {
        let mercure = mercure::Hub::new(settings.mercure.clone()).unwrap_or_else(|why| {
            log::error!("{why}: Mercure publishing is off");
            mercure::Hub::default()
        });
        App { settings, mercure, clock: system_clock }
    }

    /// The answer to a publish: its id and how many streams it goes to;
    /// for a Mercure update, its id alone, as text.
    pub fn published(&self, receipt: &Receipt) -> Response {
        if let Some(id) = &receipt.mercure_id {
            return Response::new(Status::OK, "text/plain; charset=utf-8", id.clone().into_bytes());
        }
        let body = seeds::published_body(&receipt.id.to_string(), receipt.subscribers);
        Response::new(Status::OK, "application/json", body.into_bytes())
    }

    /// The answer to a publish that could not be made (the cluster bus is
    /// down, or subscribers are too far behind). The request was well
    /// framed, so the connection stays open.
    pub fn unavailable(&self, why: &str) -> Response {
        Response::refusal(Status::SERVICE_UNAVAILABLE, "unavailable", why).header("Retry-After", "1")
    }

    /// The answer to `/metrics`.
    pub fn metrics(&self, text: String) -> Response {
        Response::new(Status::OK, metrics::CONTENT_TYPE, text.into_bytes())
    }

    /// The answer to `/healthz`.
    pub fn health(&self, degraded: Option<&str>) -> Response {
        let body = match degraded {
            None => "ok\n".to_owned(),
            Some(why) => format!("degraded: {why}\n"),
        };
        Response::new(Status::OK, "text/plain; charset=utf-8", body.into_bytes())
    }

    /// The head of an event stream. `Cache-Control` keeps proxies and
    /// browsers from caching it; `X-Accel-Buffering: no` tells nginx not to
    /// buffer it.
    pub fn stream_head(&self) -> Response {
        App::event_stream_head()
    }

    /// The head of a Mercure stream: with `Mercure-Last-Event-ID` when the
    /// subscriber asked to resume (the spec's MUST), saying where it did.
    pub fn mercure_stream_head(&self, resumed_after: Option<&str>) -> Response {
        let head = App::event_stream_head();
        match resumed_after {
            Some(id) => head.header("Mercure-Last-Event-ID", id),
            None => head,
        }
    }

    fn event_stream_head() -> Response {
        Response::stream(EVENT_STREAM).header("Cache-Control", "no-cache").header("X-Accel-Buffering", "no")
    }

    /// A 204: no body, and no `Content-Length` (RFC 9110 8.6).
    fn no_content() -> Response {
        Response { status: Status::NO_CONTENT, ..Response::stream(EVENT_STREAM) }.without_headers()
    }

    /// Whether Mercure publishing is on (an issuer and a key).
    pub fn mercure_publishing(&self) -> bool {
        self.mercure.can_publish()
    }

    /// What a stream starts with: a comment, so clients see it open at once,
    /// and the reconnection delay.
    pub fn stream_opening(&self) -> crate::sse::Frame {
        crate::sse::opening(self.settings.retry_ms)
    }

    /// The CORS answer for a request from `origin`. With `credentials`
    /// (the Mercure hub, whose browsers send a cookie), an allowed origin
    /// is named and `Access-Control-Allow-Credentials: true` added; a
    /// credentialed answer is never `*`, and never an origin that is not in
    /// the list.
    fn cors(&self, origin: Option<&str>, credentials: bool) -> Cors {
        let origins = &self.settings.cors_origins;
        if origins.iter().any(|o| o == "*") {
            return Cors { allow_origin: Some("*".into()), vary: false, credentials: false };
        }
        let allowed = origin.filter(|origin| origins.iter().any(|o| o == origin));
        Cors { credentials: credentials && allowed.is_some(), allow_origin: allowed.map(Into::into), vary: true }
    }

    /// Whether the request carries the token its endpoint needs, if any.
    /// Tokens are compared in constant time.
    fn authorized(&self, endpoint: Endpoint, head: &RequestHead) -> bool {
        if head.method == Method::Options {
            return true; // Preflights carry no credentials.
        }
        let required = match endpoint {
            Endpoint::Publish => self.settings.publish_token.as_deref(),
            Endpoint::Events => self.settings.subscribe_token.as_deref(),
            // A scraper sets a header (Prometheus: `authorization`), so no
            // `?token=`, which would end up in logs.
            Endpoint::Metrics => self.settings.metrics_token.as_deref(),
            Endpoint::Page
            | Endpoint::Health
            | Endpoint::Mercure
            | Endpoint::MercureMetadata
            | Endpoint::MercureSubscriptions
            | Endpoint::Server => None,
        };
        let Some(required) = required else {
            return true;
        };
        let bearer = head.authorization.as_deref().and_then(|value| {
            let (scheme, token) = value.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
        // EventSource cannot set headers, so streams also take `?token=`.
        let from_query = || match endpoint {
            Endpoint::Events => seeds::query_param(&head.query, "token"),
            _ => None,
        };
        match bearer.map(str::to_owned).or_else(from_query) {
            Some(given) => constant_time_eq(given.as_bytes(), required.as_bytes()),
            None => false,
        }
    }

    /// Answers a CORS preflight (`OPTIONS`) with what a browser may send.
    fn preflight(&self, endpoint: Endpoint) -> Response {
        App::no_content()
            .header("Access-Control-Allow-Methods", endpoint.allow_header())
            .header("Access-Control-Allow-Headers", "Content-Type, Authorization, Last-Event-ID")
            .header("Access-Control-Max-Age", "600")
            .header("Allow", endpoint.allow_header())
    }
}

impl Application for App {
    type Action = Action;

    fn screen(&self, head: &RequestHead) -> Result<(), Response> {
        let mercure =
            matches!(Endpoint::from_path(&head.path), Some(Endpoint::Mercure | Endpoint::MercureSubscriptions));
        let cors = self.cors(head.origin.as_deref(), mercure);
        let refusal = match Endpoint::from_path(&head.path) {
            None => Response::error(Status::NOT_FOUND, "not found"),
            Some(endpoint) if !endpoint.allows(head.method) => {
                Response::error(Status::METHOD_NOT_ALLOWED, "method not allowed")
                    .header("Allow", endpoint.allow_header())
            }
            Some(endpoint) if !self.authorized(endpoint, head) => {
                Response::error(Status::UNAUTHORIZED, "a valid bearer token is required")
                    .header("WWW-Authenticate", "Bearer")
            }
            // A publish must say how long its body is (411, RFC 9110
            // 15.5.12). In HTTP/1.0 its body would otherwise run to EOF, so
            // we close after.
            Some(Endpoint::Publish) if head.method == Method::Post && head.body == BodyFraming::None => {
                return Err(Response::error(Error::LengthRequired.status(), Error::LengthRequired.reason()).closing());
            }
            Some(_) => return Ok(()),
        };
        Err(refusal.with_headers(cors.headers()))
    }

    fn handle(&self, request: Request) -> Handled<Action> {
        // Screened already: the route exists and allows the method.
        let Some(endpoint) = Endpoint::from_path(&request.head.path) else {
            return Handled::Respond(Response::error(Status::NOT_FOUND, "not found"));
        };
        let credentials = matches!(endpoint, Endpoint::Mercure | Endpoint::MercureSubscriptions);
        let cors = self.cors(request.head.origin.as_deref(), credentials);
        let defer = |action| Handled::Defer { action, headers: cors.headers() };
        let Request { head, body } = match endpoint {
            // The second front door: its own module.
            Endpoint::Mercure => return self.mercure.handle(self, request, cors),
            Endpoint::MercureSubscriptions => return self.mercure.handle_subscriptions(self, &request.head, cors),
            _ => request,
        };
        let response = match endpoint {
            // Not a CORS preflight: browsers never send `OPTIONS *`.
            Endpoint::Server => App::no_content().header("Allow", endpoint.allow_header()),
            _ if head.method == Method::Options => self.preflight(endpoint),
            Endpoint::Mercure | Endpoint::MercureSubscriptions => Response::error(Status::NOT_FOUND, "not found"),
            Endpoint::MercureMetadata => self.mercure.metadata(&head),
            Endpoint::Health => return defer(Action::Health),
            Endpoint::Metrics => return defer(Action::Metrics),
            Endpoint::Page => Response::new(Status::OK, "text/html; charset=utf-8", DEMO_PAGE.as_bytes()),
            Endpoint::Events => match seeds::parse_subscribe_query(&head.query) {
                Err(why) => Response::refusal(Status::BAD_REQUEST, "invalid subscription query", &why),
                // The same head a GET gets, and no body.
                Ok(_) if head.method == Method::Head => self.stream_head(),
                Ok(query) => {
                    // An empty header (some clients send one) does not hide
                    // the query parameter.
                    let header = head.last_event_id.filter(|id| !id.is_empty());
                    let last_event_id = header.or(query.last_event_id);
                    return defer(Action::Subscribe(Subscribe { topics: query.topics, last_event_id }));
                }
            },
            Endpoint::Publish => match seeds::parse_publish(&body) {
                Ok(publish) => return defer(Action::Publish(publish)),
                Err(why) => Response::refusal(Status::BAD_REQUEST, "invalid publish body", &why),
            },
        };
        Handled::Respond(response.with_headers(cors.headers()))
    }

    fn log_line(&self, head: &RequestHead) -> Option<String> {
        if !self.settings.access_log {
            return None;
        }
        let query = if head.query.is_empty() { String::new() } else { format!("?{}", redact_token(&head.query)) };
        Some(format!("{} {}{query}", head.method_name, head.path))
    }
}

/// The CORS part of an answer: which origin may read it, whether with
/// credentials (cookies), and whether the answer depends on the request's
/// `Origin` (then `Vary: Origin`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Cors {
    allow_origin: Option<Box<str>>,
    vary: bool,
    credentials: bool,
}

impl Cors {
    fn headers(&self) -> Vec<(&'static str, String)> {
        let allow = self.allow_origin.as_deref().map(|origin| ("Access-Control-Allow-Origin", origin.to_owned()));
        let credentials = self.credentials.then(|| ("Access-Control-Allow-Credentials", "true".to_owned()));
        allow.into_iter().chain(credentials).chain(self.vary.then(|| ("Vary", "Origin".to_owned()))).collect()
    }
}

/// A query string with the value of `token=` hidden, for the access log.
fn redact_token(query: &str) -> String {
    let pairs = query.split('&').map(|pair| if pair.starts_with("token=") { "token=REDACTED" } else { pair });
    pairs.collect::<Vec<_>>().join("&")
}

/// Compares two byte strings in time that depends only on their lengths, so
/// a timing attack cannot find a token byte by byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::broadcast::event::{DEFAULT_TOPIC, EventId};
    use crate::http::conn::{Conn, LINGER, PIPELINE_PAUSE_BYTES, SocketCommand};

    fn t0() -> Instant {
        // One fixed instant per test run is enough: tests move time explicitly.
        use std::sync::OnceLock;
        static T0: OnceLock<Instant> = OnceLock::new();
        *T0.get_or_init(Instant::now)
    }

    /// Polls `conn` and carries out the actions as the server would:
    /// publishes reach `subscribers` streams, subscriptions open streams.
    fn carry_out(conn: &mut Conn, app: &App, subscribers: usize, actions: &mut Vec<Action>) {
        carry_out_at(conn, app, subscribers, actions, t0());
    }

    fn carry_out_at(conn: &mut Conn, app: &App, subscribers: usize, actions: &mut Vec<Action>, now: Instant) {
        let limits = &app.settings.limits;
        while let Some(action) = conn.poll(app, limits, now) {
            match &action {
                Action::Publish(_) => {
                    let receipt = Receipt { id: EventId { ms: 1, seq: 1 }, subscribers, mercure_id: None };
                    conn.respond(app.published(&receipt), limits, t0());
                }
                Action::Subscribe(_) => {
                    conn.open_stream(app.stream_head());
                    conn.outbox().push(app.stream_opening());
                }
                Action::SubscribeMercure(_) => {
                    conn.open_stream(app.mercure_stream_head(None));
                    conn.outbox().push(app.stream_opening());
                }
                Action::Health => conn.respond(app.health(None), limits, t0()),
                Action::Metrics => conn.respond(app.metrics(String::new()), limits, t0()),
                Action::ListSubscriptions(_) => {
                    conn.respond(Response::error(Status::NOT_FOUND, "none"), limits, t0());
                }
            }
            actions.push(action);
        }
    }

    /// Polls `conn` once through, at `now`, as the server would.
    fn step(conn: &mut Conn, settings: &Settings, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        carry_out_at(conn, &App::new(settings.clone()), 0, &mut actions, now);
        actions
    }

    /// Feeds `input` in pieces of `piece` bytes (respecting the read budget,
    /// as the server does), answers publishes with 7 subscribers, and returns
    /// everything the connection wrote, the actions, and the last command.
    fn run(input: &[u8], piece: usize) -> (String, Vec<Action>, SocketCommand) {
        let limits = Limits { max_head_bytes: 1024, max_body_bytes: 64, ..Limits::default() };
        let app = App::new(Settings { limits, retry_ms: 1500, ..Settings::default() });
        let mut conn = Conn::new(&limits, t0());
        let mut actions = Vec::new();
        let mut out = Vec::new();
        let mut rest = input;
        loop {
            carry_out(&mut conn, &app, 7, &mut actions);
            conn.outbox().flush(&mut out).unwrap();
            let budget = conn.read_budget(&limits).min(piece);
            if rest.is_empty() || budget == 0 {
                break;
            }
            let (now, later) = rest.split_at(budget.min(rest.len()));
            conn.receive(now, &limits, t0());
            rest = later;
        }
        (String::from_utf8(out).unwrap(), actions, conn.socket_command())
    }

    /// Runs `input` whole and byte by byte; both must give the same result.
    fn check(input: &str) -> (String, Vec<Action>, SocketCommand) {
        let whole = run(input.as_bytes(), usize::MAX);
        let bytewise = run(input.as_bytes(), 1);
        assert_eq!(whole, bytewise, "fed whole vs byte by byte: {input:?}");
        whole
    }

    fn statuses(output: &str) -> Vec<u16> {
        output
            .match_indices("HTTP/1.1 ")
            .filter_map(|(at, _)| output.get(at + 9..at + 12)?.parse().ok())
            .filter(|&status| status != 100)
            .collect()
    }

    const HOST: &str = "Host: x\r\n";

    fn publish(body: &str) -> String {
        format!("POST /send-event HTTP/1.1\r\n{HOST}Content-Length: {}\r\n\r\n{body}", body.len())
    }

    // ---- routing and answers ----

    #[test]
    fn status_for_each_route() {
        let cases: &[(&str, u16)] = &[
            ("GET / HTTP/1.1\r\nHost: x\r\n\r\n", 200),
            ("HEAD / HTTP/1.1\r\nHost: x\r\n\r\n", 200),
            ("GET /nope HTTP/1.1\r\nHost: x\r\n\r\n", 404),
            ("POST /events HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 405),
            ("GET /send-event HTTP/1.1\r\nHost: x\r\n\r\n", 405),
            ("DELETE / HTTP/1.1\r\nHost: x\r\n\r\n", 405),
            ("POST /send-event HTTP/1.1\r\nHost: x\r\n\r\n", 411),
            ("POST /send-event HTTP/1.1\r\nHost: x\r\nContent-Length: 65\r\n\r\n", 413),
            ("POST /send-event HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}", 400),
            ("POST /send-event HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n{x}", 400),
            ("POST /send-event HTTP/1.1\r\nHost: x\r\nContent-Length: 16\r\n\r\n{\"message\":\"hi\"}", 200),
            ("GET / HTTP/1.1\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            ("GET / HTTP/3.0\r\nHost: x\r\n\r\n", 505),
        ];
        for (input, status) in cases {
            let (output, _, _) = check(input);
            assert_eq!(statuses(&output), [*status], "{input:?}\n{output}");
        }
    }

    #[test]
    fn options_asterisk_says_what_the_server_allows() {
        // RFC 9110 9.3.7: `OPTIONS *` asks about the server as a whole.
        let (output, actions, command) = check("OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(output.starts_with("HTTP/1.1 204 No Content\r\n"), "{output}");
        assert!(output.contains("Allow: GET, HEAD, POST, OPTIONS\r\n"), "{output}");
        assert!(!output.contains("Content-Length") && !output.contains("Access-Control-Allow-Methods"), "{output}");
        assert!(actions.is_empty());
        assert_eq!(command, SocketCommand::Keep);
    }

    #[test]
    fn method_not_allowed_says_what_is() {
        let (output, _, _) = check("PUT /send-event HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
        assert!(output.contains("Allow: POST, OPTIONS\r\n"), "{output}");
        let (output, _, _) = check("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
        assert!(output.contains("Allow: GET, HEAD\r\n"), "{output}");
    }

    #[test]
    fn publish_hands_the_message_to_the_server() {
        let (output, actions, command) = check(&publish(r#"{"message":"a\nb"}"#));
        assert_eq!(actions, [Action::Publish(Publish::message("a\nb"))]);
        assert!(output.ends_with("\r\n\r\n{\"id\":\"1-1\",\"subscribers\":7}"), "{output}");
        assert!(output.contains("Content-Type: application/json\r\n"));
        assert_eq!(command, SocketCommand::Keep);
    }

    #[test]
    fn bad_json_is_a_400_that_keeps_the_connection() {
        let (output, actions, command) = check(&publish(r#"{"message":1}"#));
        assert!(actions.is_empty());
        assert!(output.starts_with("HTTP/1.1 400 ") && output.contains("expected a string"), "{output}");
        assert_eq!(command, SocketCommand::Keep);
    }

    // ---- streams ----

    #[test]
    fn subscribe_opens_a_stream_and_drops_the_read_buffer() {
        let request = "GET /events HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 5\r\n\r\nGET / HTTP/1.1\r\n\r\n";
        let (output, actions, command) = check(request);
        let topics = vec![DEFAULT_TOPIC.to_owned()];
        assert_eq!(actions, [Action::Subscribe(Subscribe { topics, last_event_id: Some("5".into()) })]);
        let (head, body) = output.split_once("\r\n\r\n").unwrap();
        for header in [
            "Content-Type: text/event-stream",
            "Cache-Control: no-cache",
            "Connection: keep-alive",
            "Access-Control-Allow-Origin: *",
            "X-Accel-Buffering: no",
        ] {
            assert!(head.contains(header), "{header} missing from {head}");
        }
        assert!(!head.contains("Content-Length"));
        assert_eq!(body, ": ok\nretry: 1500\n\n", "pipelined bytes after a subscribe are ignored");
        assert_eq!(command, SocketCommand::Keep);

        let mut conn = Conn::new(&Limits::default(), t0());
        conn.receive(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n", &Limits::default(), t0());
        step(&mut conn, &Settings::default(), t0());
        assert!(conn.is_streaming());
        assert_eq!(conn.buffered_input_bytes(), 0, "a stream holds no read buffer");
    }

    #[test]
    fn a_stream_closes_when_the_peer_does() {
        let mut conn = Conn::new(&Limits::default(), t0());
        conn.receive(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n", &Limits::default(), t0());
        step(&mut conn, &Settings::default(), t0());
        conn.receive(b"ignored", &Limits::default(), t0());
        assert_eq!(conn.socket_command(), SocketCommand::Keep);
        conn.receive_eof();
        assert_eq!(conn.socket_command(), SocketCommand::Close);
    }

    #[test]
    fn head_of_events_is_headers_only_and_keeps_alive() {
        let (output, actions, command) = check("HEAD /events HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(actions.is_empty());
        assert!(output.ends_with("Access-Control-Allow-Origin: *\r\n\r\n"), "{output}");
        assert_eq!(command, SocketCommand::Keep);
    }

    // ---- HTTP/1.1 connection management ----

    #[test]
    fn pipelined_requests_are_answered_in_order() {
        let input =
            format!("GET /nope HTTP/1.1\r\n{HOST}\r\n{}GET / HTTP/1.1\r\n{HOST}\r\n", publish(r#"{"message":"x"}"#));
        let (output, actions, _) = check(&input);
        assert_eq!(statuses(&output), [404, 200, 200]);
        assert_eq!(actions.len(), 1);
    }

    #[test]
    fn chunked_publish_and_leading_blank_lines() {
        let body = r#"{"message":"chunky"}"#;
        let input = format!(
            "\r\nPOST /send-event HTTP/1.1\r\n{HOST}Transfer-Encoding: chunked\r\n\r\n5\r\n{}\r\n{:x}\r\n{}\r\n0\r\n\r\n",
            &body[..5],
            body.len() - 5,
            &body[5..]
        );
        let (output, actions, _) = check(&input);
        assert_eq!(actions, [Action::Publish(Publish::message("chunky"))]);
        assert_eq!(statuses(&output), [200]);
    }

    #[test]
    fn connection_close_and_http10() {
        let (output, _, command) = check("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        assert!(output.contains("Connection: close\r\n"));
        assert_eq!(command, SocketCommand::ShutdownWrite);
        let (_, _, command) = check("GET / HTTP/1.0\r\n\r\n");
        assert_eq!(command, SocketCommand::ShutdownWrite);
        let (output, _, command) = check("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert!(output.contains("Connection: keep-alive\r\n"));
        assert_eq!(command, SocketCommand::Keep);
    }

    #[test]
    fn expect_continue() {
        let body = r#"{"message":"e"}"#;
        let input = format!(
            "POST /send-event HTTP/1.1\r\n{HOST}Expect: 100-continue\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let (output, actions, _) = check(&input);
        assert!(output.starts_with("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"), "{output}");
        assert_eq!(actions.len(), 1);
        // Too large: refused at once, no 100, and closed.
        let (output, _, command) =
            check(&format!("POST /send-event HTTP/1.1\r\n{HOST}Expect: 100-continue\r\nContent-Length: 1000\r\n\r\n"));
        assert!(output.starts_with("HTTP/1.1 413 "), "{output}");
        assert_eq!(command, SocketCommand::ShutdownWrite);
        // Wrong route: refused before the body, and closed.
        let (output, _, command) =
            check(&format!("POST /nope HTTP/1.1\r\n{HOST}Expect: 100-continue\r\nContent-Length: 5\r\n\r\n"));
        assert!(output.starts_with("HTTP/1.1 404 "), "{output}");
        assert_eq!(command, SocketCommand::ShutdownWrite);
    }

    #[test]
    fn framing_errors_close_the_connection() {
        for input in [
            "GET / HTTP/1.1\r\nHost: x\r\n bad fold\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n".to_owned(),
            format!("POST /send-event HTTP/1.1\r\n{HOST}Transfer-Encoding: chunked\r\n\r\nzz\r\n"),
            format!("POST /send-event HTTP/1.1\r\n{HOST}Content-Length: 1\r\nContent-Length: 2\r\n\r\n"),
        ] {
            let (output, actions, command) = check(&input);
            assert_eq!(statuses(&output).len(), 1, "one answer, then nothing: {output}");
            assert!(output.contains("Connection: close\r\n"));
            assert!(actions.is_empty());
            assert_eq!(command, SocketCommand::ShutdownWrite);
        }
    }

    #[test]
    fn a_bare_cr_in_a_head_is_refused_at_once() {
        // RFC 9112 2.2: a bare CR is invalid. A head whose lines end in CR
        // alone used to wait for an LF until the request timer ran out.
        for input in [
            "GET / HTTP/1.1\rHost: x\r\r",
            "GET / HTTP/1.1\r\nHost: x\rX: y\r\n\r\n",
            "\rGET / HTTP/1.1\r\nHost: x\r\n\r\n",
            "\r\n\n\r\rGET / HTTP/1.1\r\n",
        ] {
            let (output, actions, command) = check(input);
            assert_eq!(statuses(&output), [400], "{input:?}: {output}");
            assert!(output.contains("bare CR in request head"), "{input:?}: {output}");
            assert!(actions.is_empty());
            assert_eq!(command, SocketCommand::ShutdownWrite);
        }
        // Blank lines of CRLF or LF before a request are still skipped, and
        // a CR in a body is the body's business.
        let (output, _, _) = check("\r\n\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(statuses(&output), [200], "{output}");
        let (output, actions, _) = check(&format!("\n{}\r\n", publish(r#"{"message":"a\rb"}"#)));
        assert_eq!((statuses(&output), actions.len()), (vec![200], 1), "{output}");
    }

    #[test]
    fn head_limit_is_431_and_bounded() {
        let long = format!("GET / HTTP/1.1\r\n{HOST}X-Long: {}\r\n\r\n", "a".repeat(2000));
        let (output, _, _) = check(&long);
        assert_eq!(statuses(&output), [431]);
        // Never terminated: refused as soon as the limit is passed.
        let endless = "GET / HTTP/1.1\r\nX: ".to_owned() + &"a".repeat(5000);
        let (output, _, _) = check(&endless);
        assert_eq!(statuses(&output), [431]);
    }

    #[test]
    fn read_budget_bounds_every_buffer() {
        let limits = Limits { max_head_bytes: 100, max_body_bytes: 10, ..Limits::default() };
        let settings = Settings { limits, ..Settings::default() };
        let mut conn = Conn::new(&Limits::default(), t0());
        assert_eq!(conn.read_budget(&settings.limits), 101);
        conn.receive(b"GET / HTTP/1.1\r\n", &settings.limits, t0());
        assert_eq!(conn.read_budget(&settings.limits), 101 - 16);
        conn.receive_eof();
        assert_eq!(conn.read_budget(&settings.limits), 0);
    }

    #[test]
    fn a_client_that_does_not_read_answers_is_paused() {
        let settings = Settings::default();
        let mut conn = Conn::new(&Limits::default(), t0());
        let request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        let pipelined: Vec<u8> = request.iter().copied().cycle().take(request.len() * 2000).collect();
        conn.receive(&pipelined, &Limits::default(), t0());
        assert!(step(&mut conn, &settings, t0()).is_empty());
        assert!(conn.outbox().queued_bytes() > PIPELINE_PAUSE_BYTES);
        assert!(conn.outbox().queued_bytes() < PIPELINE_PAUSE_BYTES + 2 * DEMO_PAGE.len() + 1024);
        assert_eq!(conn.read_budget(&settings.limits), 0);
    }

    #[test]
    fn eof_mid_request_closes() {
        let mut conn = Conn::new(&Limits::default(), t0());
        conn.receive(b"GET / HTT", &Limits::default(), t0());
        step(&mut conn, &Settings::default(), t0());
        conn.receive_eof();
        assert_eq!(conn.socket_command(), SocketCommand::Close);
    }

    #[test]
    fn lingering_after_an_error() {
        let mut conn = Conn::new(&Limits::default(), t0());
        conn.receive(b"BAD\r\n\r\n", &Limits::default(), t0());
        step(&mut conn, &Settings::default(), t0());
        conn.outbox().flush(&mut Vec::new()).unwrap();
        assert_eq!(conn.socket_command(), SocketCommand::ShutdownWrite);
        conn.write_side_closed();
        assert!(conn.read_budget(&Limits::default()) > 0, "keeps reading to see the peer close");
        assert_eq!(conn.socket_command(), SocketCommand::Keep);
        conn.receive_eof();
        assert_eq!(conn.socket_command(), SocketCommand::Close);
    }

    // ---- timers ----

    fn at(secs: u64) -> Instant {
        t0() + Duration::from_secs(secs)
    }

    #[test]
    fn idle_connections_close_after_the_idle_timeout() {
        let settings = Settings::default();
        let mut conn = Conn::new(&Limits::default(), t0());
        assert_eq!(conn.deadline(), Some(at(60)));
        conn.on_timeout(&settings.limits, at(59));
        assert_eq!(conn.socket_command(), SocketCommand::Keep);
        conn.on_timeout(&settings.limits, at(60));
        assert_eq!(conn.socket_command(), SocketCommand::Close);
        assert_eq!(conn.read_budget(&settings.limits), 0);
    }

    #[test]
    fn a_trickled_request_gets_408_at_the_header_timeout() {
        let settings = Settings::default();
        let mut conn = Conn::new(&Limits::default(), t0());
        // A byte a second does not push the deadline back.
        for (i, byte) in b"GET / HTTP/1.1\r\n".iter().take(9).enumerate() {
            conn.receive(std::slice::from_ref(byte), &settings.limits, at(i as u64 + 1));
            step(&mut conn, &settings, at(i as u64 + 1));
        }
        assert_eq!(conn.deadline(), Some(at(11)));
        conn.on_timeout(&settings.limits, at(11));
        let mut out = Vec::new();
        conn.outbox().flush(&mut out).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(out.starts_with("HTTP/1.1 408 Request Timeout\r\n") && out.contains("Connection: close"), "{out}");
        let notes = conn.take_answered().unwrap();
        assert_eq!(notes.refusal.map(|(s, _)| s), Some(Status::REQUEST_TIMEOUT));
        assert_eq!(notes.by_class, [0, 0, 0, 1, 0]);
        assert_eq!(conn.socket_command(), SocketCommand::ShutdownWrite);
        // Then it lingers, bounded too.
        conn.write_side_closed();
        assert_eq!(conn.deadline(), Some(at(11) + LINGER));
        conn.on_timeout(&settings.limits, at(11) + LINGER);
        assert_eq!(conn.socket_command(), SocketCommand::Close);
    }

    #[test]
    fn each_pipelined_request_gets_its_own_deadline() {
        let settings = Settings::default();
        let mut conn = Conn::new(&Limits::default(), t0());
        conn.receive(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HT", &settings.limits, at(1));
        step(&mut conn, &settings, at(5));
        assert_eq!(conn.deadline(), Some(at(15)), "the second request started at 5");
    }

    #[test]
    fn streams_have_no_deadline() {
        let settings = Settings::default();
        let mut conn = Conn::new(&Limits::default(), t0());
        conn.receive(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n", &settings.limits, at(1));
        step(&mut conn, &settings, at(1));
        assert!(conn.is_streaming());
        assert_eq!(conn.deadline(), None);
    }

    // ---- auth and CORS ----

    fn answer(settings: &Settings, request: &str) -> (String, Vec<Action>) {
        let app = App::new(settings.clone());
        let mut conn = Conn::new(&settings.limits, t0());
        conn.receive(request.as_bytes(), &settings.limits, t0());
        let mut actions = Vec::new();
        carry_out(&mut conn, &app, 0, &mut actions);
        let mut out = Vec::new();
        conn.outbox().flush(&mut out).unwrap();
        (String::from_utf8(out).unwrap(), actions)
    }

    #[test]
    fn publish_token() {
        let settings = Settings { publish_token: Some("s3cret".into()), ..Settings::default() };
        let body = r#"{"message":"m"}"#;
        let with = |auth: &str| {
            format!("POST /send-event HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {}\r\n\r\n{body}", body.len())
        };
        for auth in [
            "",
            "Authorization: Bearer wrong\r\n",
            "Authorization: Basic s3cret\r\n",
            "Authorization: Bearer s3cre\r\n",
        ] {
            let (out, actions) = answer(&settings, &with(auth));
            assert!(out.starts_with("HTTP/1.1 401 ") && out.contains("WWW-Authenticate: Bearer\r\n"), "{auth}: {out}");
            assert!(actions.is_empty());
        }
        let (out, actions) = answer(&settings, &with("Authorization: bearer s3cret\r\n"));
        assert!(out.starts_with("HTTP/1.1 200 "), "{out}");
        assert_eq!(actions.len(), 1);
        // Streams are open unless a subscribe token is set.
        let (out, _) = answer(&settings, "GET /events HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 200 "));
    }

    #[test]
    fn subscribe_token_as_header_or_query() {
        let settings = Settings { subscribe_token: Some("t0k".into()), ..Settings::default() };
        let (out, _) = answer(&settings, "GET /events HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 401 "), "{out}");
        let (out, _) = answer(&settings, "GET /events?token=nope HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 401 "), "{out}");
        let (_, actions) = answer(&settings, "GET /events?token=t0k&topic=a HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(matches!(&actions[..], [Action::Subscribe(s)] if s.topics == ["a"]));
        let (_, actions) = answer(&settings, "GET /events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t0k\r\n\r\n");
        assert_eq!(actions.len(), 1);
    }

    #[test]
    fn metrics_token() {
        let get = |settings: &Settings, request: &str| {
            let (out, actions) = answer(settings, request);
            (out.get(9..12).unwrap_or_default().to_owned(), out, actions)
        };
        // Without one, /metrics is open, as it always was.
        let (status, _, actions) = get(&Settings::default(), "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!((status.as_str(), &actions[..]), ("200", &[Action::Metrics][..]));
        let settings = Settings { metrics_token: Some("m3trics".into()), ..Settings::default() };
        for request in [
            "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\n\r\n",
            "GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Basic m3trics\r\n\r\n",
            "GET /metrics?token=m3trics HTTP/1.1\r\nHost: x\r\n\r\n",
            "HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        ] {
            let (status, out, actions) = get(&settings, request);
            assert_eq!(status, "401", "{request:?}: {out}");
            assert!(out.contains("WWW-Authenticate: Bearer\r\n") && actions.is_empty(), "{request:?}: {out}");
        }
        let (_, out, actions) =
            get(&settings, "GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer m3trics\r\n\r\n");
        assert_eq!(actions, [Action::Metrics], "{out}");
        // Health checks (load balancers) need no token; other tokens do not open /metrics.
        let (status, _, _) = get(&settings, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(status, "200");
        let both = Settings { publish_token: Some("p".into()), ..settings };
        let (status, _, _) = get(&both, "GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer p\r\n\r\n");
        assert_eq!(status, "401");
    }

    #[test]
    fn cors_preflight_and_origins() {
        let settings = Settings {
            cors_origins: vec!["https://a.example".into(), "https://b.example".into()],
            publish_token: Some("x".into()),
            ..Settings::default()
        };
        let preflight = "OPTIONS /send-event HTTP/1.1\r\nHost: x\r\nOrigin: https://b.example\r\n\
                         Access-Control-Request-Method: POST\r\n\r\n";
        let (out, _) = answer(&settings, preflight);
        assert!(out.starts_with("HTTP/1.1 204 No Content\r\n"), "preflight needs no token: {out}");
        for header in [
            "Access-Control-Allow-Origin: https://b.example\r\n",
            "Vary: Origin\r\n",
            "Access-Control-Allow-Methods: POST, OPTIONS\r\n",
            "Access-Control-Allow-Headers: Content-Type, Authorization, Last-Event-ID\r\n",
        ] {
            assert!(out.contains(header), "{header} missing: {out}");
        }
        let (out, _) = answer(&settings, "GET /events HTTP/1.1\r\nHost: x\r\nOrigin: https://evil.example\r\n\r\n");
        assert!(!out.contains("Access-Control-Allow-Origin") && out.contains("Vary: Origin"), "{out}");
        let (out, _) =
            answer(&Settings::default(), "GET /events HTTP/1.1\r\nHost: x\r\nOrigin: https://any.example\r\n\r\n");
        assert!(out.contains("Access-Control-Allow-Origin: *\r\n") && !out.contains("Vary"), "{out}");
    }

    #[test]
    fn constant_time_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
