//! One client connection as a state machine, without sockets or clocks.
//!
//! The event loop ([`crate::server`]) reads bytes and hands them to
//! [`Conn::receive`]; the connection parses them, answers what it can answer
//! alone (the demo page, CORS preflights, 401/404/405, malformed requests)
//! into its [`Outbox`], and hands the server an [`Action`] for what needs the
//! rest of the server (a publish, a new subscriber). The server writes the
//! outbox to the socket. Nothing here performs I/O or reads the clock (`now`
//! is passed in), so every path is testable and fuzzable with byte slices.
//!
//! ```text
//!              request head + body complete
//!   ┌──────┐ ───────────────────────────────► answer queued ──┐ (keep-alive)
//!   │ Head │ ◄────────────────────────────────────────────────┘
//!   └──────┘
//!     │ │ │   GET /events          ┌───────────┐
//!     │ │ └──────────────────────► │ Streaming │  output only, until the peer goes
//!     │ │                          └───────────┘
//!     │ │  POST /send-event,       ┌─────────┐  Conn::published(),
//!     │ └─────────────────────────►│ Waiting │ ─────────────────► Head or Closing
//!     │    GET /metrics            └─────────┘  Conn::answer()
//!     │   bad request, timeout,    ┌─────────┐  outbox empty   ┌───────────┐  EOF or
//!     └──────────────────────────► │ Closing │ ──────────────► │ Lingering │ ─────────► done
//!         Connection: close        └─────────┘  (shut down     └───────────┘  timeout
//!                                                our write side)
//! ```
//!
//! `Head` also covers reading a request body (the pending request, which
//! `parse` takes out while it works on it and puts back); every state change
//! goes through `Conn::set_state`.
//!
//! **Timers.** A connection has at most one deadline ([`Conn::deadline`]),
//! and the server calls [`Conn::on_timeout`] when it passes:
//!
//! * idle between requests: closed after `idle_timeout` (no answer owed);
//! * inside a request: the whole head and body must arrive within
//!   `header_timeout` of its first byte, or the answer is 408 and close. The
//!   deadline is not pushed back by each byte, so a client trickling a byte a
//!   minute (slowloris) is cut off like any other;
//! * closing or lingering: the peer gets [`LINGER`] to read our last answer
//!   and close.
//!
//! A stream has no deadline: heartbeats find dead peers.
//!
//! **Why linger?** If we close a socket while the peer's unread bytes sit in
//! our receive buffer, the kernel sends RST, and the peer may lose our error
//! response before reading it. So after the last response we shut down our
//! write side and read (and drop) input until the peer closes too, as nginx's
//! `lingering_close` does, for a bounded time.

use std::time::{Duration, Instant};

use crate::api::{self, Endpoint, Publish};
use crate::http::{self, BodyDecoder, Method, RequestHead, Status};
use crate::outbox::Outbox;

/// Bounds on what one connection may send us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest request head (request line + headers), in bytes.
    pub max_head_bytes: usize,
    /// Longest request body, in bytes (after chunked decoding).
    pub max_body_bytes: usize,
    /// Time for a whole request (head and body) from its first byte.
    pub header_timeout: Duration,
    /// Time a keep-alive connection may sit idle between requests.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_head_bytes: 16 * 1024,
            max_body_bytes: 64 * 1024,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// How connections behave: the limits plus the protocol settings.
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
    /// Note each request and its status for an access log.
    pub access_log: bool,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            limits: Limits::default(),
            retry_ms: 3000,
            cors_origins: vec!["*".to_owned()],
            publish_token: None,
            subscribe_token: None,
            access_log: false,
        }
    }
}

/// How long a closing connection waits for the peer to read our last answer
/// and close its side.
pub const LINGER: Duration = Duration::from_secs(2);

/// While more than this many response bytes wait in the outbox, pipelined
/// requests are not parsed: a client that sends requests but does not read the
/// answers cannot make us buffer without bound.
pub const PIPELINE_PAUSE_BYTES: usize = 64 * 1024;

/// Most bytes one read may bring while streaming or lingering. The input is
/// dropped, so this only sets how much we read per system call.
const DISCARD_READ_BYTES: usize = 16 * 1024;

/// Something the connection needs the server to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Publish this event, then call [`Conn::published`] with its receipt.
    Publish(Publish),
    /// The connection is now an event stream (its response head is already
    /// queued): add it to the subscribers.
    Subscribe(Subscribe),
    /// Render the metrics and answer with [`Conn::answer`].
    Metrics,
    /// Say whether the server is healthy, with [`Conn::answer`].
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

/// What the server should do with the socket after handling the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketCommand {
    /// Keep it open.
    Keep,
    /// Everything is written: shut down our write side and call
    /// [`Conn::write_side_closed`].
    ShutdownWrite,
    /// Close it and forget the connection.
    Close,
}

/// The per-connection state machine.
#[derive(Debug)]
pub struct Conn {
    state: State,
    /// Received bytes not yet parsed. Unallocated while streaming.
    input: Vec<u8>,
    /// Bytes at the start of `input` already searched for the end of a head
    /// (at most the head limit, so 32 bits are plenty).
    scanned: u32,
    /// Bytes waiting to go out.
    outbox: Outbox,
    /// The peer closed its write side (we read EOF).
    peer_closed: bool,
    /// What the deadline is for (kept apart from `deadline` so the two pack
    /// with the flags: an idle stream should be small).
    timer: Timer,
    /// When the timer fires; meaningless while `timer` is `Off`.
    deadline: Instant,
    /// A deadline passed where the only thing left to do is close.
    expired: bool,
    /// What was answered since the server last asked (see
    /// [`Conn::take_notes`]); `None`, and free, most of the time.
    notes: Option<Box<Notes>>,
}

/// What a connection answered, for the server's metrics and log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Notes {
    /// Responses by status class: `[1xx, 2xx, 3xx, 4xx, 5xx]`.
    pub by_class: [u32; 5],
    /// The last refusal (4xx/5xx) with its reason.
    pub refusal: Option<(Status, &'static str)>,
    /// With `--access-log`: `METHOD TARGET STATUS` per answered request.
    pub access: Vec<String>,
    /// With `--access-log`: the request being handled, until it is answered.
    open_request: Option<String>,
}

/// What a deadline is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    /// No deadline (streams, and connections waiting for the server).
    Off,
    /// Between requests.
    Idle,
    /// Inside a request.
    Request,
    /// Closing or lingering.
    Linger,
}

#[derive(Debug)]
enum State {
    /// Reading a request: its head, then (if `Some`) its body.
    Head(Option<Box<Pending>>),
    /// A publish or a metrics request was handed to the server; waiting for
    /// [`Conn::published`] or [`Conn::answer`].
    Waiting { keep_alive: bool, head_only: bool, grant: Box<Grant> },
    /// An event stream. Input is read only to notice the peer leaving.
    Streaming,
    /// The last response is queued; once written, our write side shuts down.
    Closing,
    /// Our write side is shut; dropping input until the peer closes.
    Lingering,
}

/// A request whose head is parsed and whose body is being read.
#[derive(Debug)]
struct Pending {
    head: RequestHead,
    /// Where the request goes, or why it is refused once its body is read (a
    /// refused request still has its body read, to keep the framing).
    route: Result<Endpoint, Refusal>,
    grant: Grant,
    decoder: BodyDecoder,
    body: Vec<u8>,
}

/// A well-framed request that is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    NotFound,
    MethodNotAllowed(Endpoint),
    Unauthorized,
}

/// The CORS part of an answer: which origin may read it, and whether the
/// answer depends on the request's `Origin` (then `Vary: Origin`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Grant {
    allow_origin: Option<Box<str>>,
    vary: bool,
}

impl Grant {
    fn for_origin(settings: &Settings, origin: Option<&str>) -> Grant {
        if settings.cors_origins.iter().any(|o| o == "*") {
            return Grant { allow_origin: Some("*".into()), vary: false };
        }
        let allowed = origin.filter(|origin| settings.cors_origins.iter().any(|o| o == origin));
        Grant { allow_origin: allowed.map(Into::into), vary: true }
    }

    fn headers(&self) -> [Option<(&'static str, &str)>; 2] {
        let allow = self.allow_origin.as_deref().map(|origin| ("Access-Control-Allow-Origin", origin));
        [allow, self.vary.then_some(("Vary", "Origin"))]
    }
}

impl Conn {
    /// A connection accepted at `now`.
    pub fn new(settings: &Settings, now: Instant) -> Conn {
        Conn {
            state: State::Head(None),
            input: Vec::new(),
            scanned: 0,
            outbox: Outbox::new(),
            peer_closed: false,
            timer: Timer::Idle,
            deadline: now + settings.limits.idle_timeout,
            expired: false,
            notes: None,
        }
    }

    /// Whether the connection is an open event stream.
    pub fn is_streaming(&self) -> bool {
        matches!(self.state, State::Streaming)
    }

    /// Whether parsing is paused because the peer has not read our answers
    /// ([`PIPELINE_PAUSE_BYTES`]); writing the outbox resumes it.
    pub fn is_paused_by_output(&self) -> bool {
        matches!(self.state, State::Head(_)) && self.outbox.queued_bytes() > PIPELINE_PAUSE_BYTES
    }

    /// Whether closing the connection now loses nothing: it owes no bytes and
    /// is not in the middle of a request (for a graceful shutdown).
    pub fn is_quiet(&self) -> bool {
        self.outbox.is_empty()
            && match self.state {
                State::Head(None) => self.input.is_empty(),
                State::Head(Some(_)) | State::Waiting { .. } => false,
                State::Streaming | State::Closing | State::Lingering => true,
            }
    }

    /// Received bytes the connection holds: unparsed input plus the body of
    /// the request being read. Bounded by [`Conn::read_budget`] and the
    /// [`Limits`]; the fuzz targets check that it stays so.
    pub fn buffered_input_bytes(&self) -> usize {
        let body = match &self.state {
            State::Head(Some(pending)) => pending.body.len(),
            _ => 0,
        };
        self.input.len() + body
    }

    /// The bytes waiting to be written to the peer.
    pub fn outbox(&mut self) -> &mut Outbox {
        &mut self.outbox
    }

    /// What the connection answered since the last call: counts by status
    /// class, the last refusal with its reason, and access-log lines.
    pub fn take_notes(&mut self) -> Option<Notes> {
        let notes = self.notes.as_deref_mut()?;
        let open_request = notes.open_request.take();
        let taken = std::mem::take(notes);
        match open_request {
            // A request still in progress keeps its place for its answer.
            Some(_) => notes.open_request = open_request,
            None => self.notes = None,
        }
        Some(taken)
    }

    /// Notes a response's status (and, for a refusal, its reason).
    fn note(&mut self, status: Status, refusal: Option<&'static str>) {
        let notes = self.notes.get_or_insert_default();
        match refusal {
            Some(why) => notes.refusal = Some((status, why)),
            None => {
                if let Some(count) = notes.by_class.get_mut(usize::from(status.0 / 100).wrapping_sub(1)) {
                    *count += 1;
                }
                if let Some(request) = notes.open_request.take() {
                    notes.access.push(format!("{request} {}", status.0));
                }
            }
        }
    }

    /// When the server must call [`Conn::on_timeout`], if ever.
    pub fn deadline(&self) -> Option<Instant> {
        (self.timer != Timer::Off).then_some(self.deadline)
    }

    /// How many bytes the connection is willing to take now; 0 means "don't
    /// read". Bounds every buffer a peer can fill.
    pub fn read_budget(&self, settings: &Settings) -> usize {
        let limits = &settings.limits;
        match &self.state {
            _ if self.peer_closed || self.expired => 0,
            // Waiting for our own answers to drain before reading more.
            State::Head(_) if self.outbox.queued_bytes() > PIPELINE_PAUSE_BYTES => 0,
            // One byte past the limit is enough to know the head is too long.
            State::Head(None) => (limits.max_head_bytes + 1).saturating_sub(self.input.len()),
            // A body is decoded as it arrives; `input` only holds bytes that
            // follow it (the next pipelined request).
            State::Head(Some(_)) => limits.max_head_bytes.saturating_sub(self.input.len()).max(1),
            State::Waiting { .. } => 0,
            State::Streaming | State::Closing | State::Lingering => DISCARD_READ_BYTES,
        }
    }

    /// Takes bytes read from the peer at `now`. Call [`Conn::poll`] afterwards.
    pub fn receive(&mut self, input: &[u8], settings: &Settings, now: Instant) {
        match self.state {
            State::Head(_) | State::Waiting { .. } => self.input.extend_from_slice(input),
            // Nothing a subscriber or a closing peer sends means anything now.
            State::Streaming | State::Closing | State::Lingering => {}
        }
        self.arm_timer(settings, now);
    }

    /// The peer closed its side of the connection (a read returned 0).
    pub fn receive_eof(&mut self) {
        self.peer_closed = true;
    }

    /// Our write side has been shut down, as asked by
    /// [`SocketCommand::ShutdownWrite`].
    pub fn write_side_closed(&mut self) {
        self.set_state(State::Lingering);
    }

    /// The deadline passed: an idle or lingering connection is closed, a
    /// request in progress gets 408. Does nothing if the deadline (which the
    /// server may hold in a timer queue) has since moved past `now`.
    pub fn on_timeout(&mut self, settings: &Settings, now: Instant) {
        if self.timer == Timer::Off || self.deadline > now {
            return;
        }
        if self.timer == Timer::Request {
            self.reply_error(Status::REQUEST_TIMEOUT, "request not received in time", &Grant::default());
            self.arm_timer(settings, now);
        } else {
            self.expired = true;
            self.timer = Timer::Off;
        }
    }

    /// Parses what was received and answers it, as far as possible without
    /// the server. Returns the next thing the server must do, if any; call
    /// again until it returns `None`.
    pub fn poll(&mut self, settings: &Settings, now: Instant) -> Option<Action> {
        let action = self.parse(settings);
        self.arm_timer(settings, now);
        action
    }

    fn parse(&mut self, settings: &Settings) -> Option<Action> {
        loop {
            let State::Head(pending) = &mut self.state else {
                return None;
            };
            if self.outbox.queued_bytes() > PIPELINE_PAUSE_BYTES {
                return None;
            }
            match pending.take() {
                None => {
                    let head = match self.try_head(&settings.limits) {
                        Ok(Some(head)) => head,
                        Ok(None) => return None,
                        Err(error) => {
                            self.refuse(error);
                            return None;
                        }
                    };
                    self.start_request(head, settings);
                }
                Some(mut request) => {
                    let used = match request.decoder.decode(&self.input, &mut request.body) {
                        Ok(used) => used,
                        Err(error) => {
                            self.refuse(error);
                            return None;
                        }
                    };
                    self.input.drain(..used);
                    if !request.decoder.is_done() {
                        self.set_state(State::Head(Some(request)));
                        return None;
                    }
                    // The next request gets a deadline of its own.
                    self.timer = Timer::Off;
                    if let Some(action) = self.finish_request(*request, settings) {
                        return Some(action);
                    }
                }
            }
        }
    }

    /// Answers the publish handed out by [`Conn::poll`]: it got the id `id`
    /// and goes to `subscribers` streams.
    pub fn published(&mut self, id: &str, subscribers: usize, settings: &Settings, now: Instant) {
        let body = api::published_body(id, subscribers);
        self.answer("application/json", body.as_bytes(), settings, now);
    }

    /// Answers the request handed out by [`Conn::poll`] with `200` and `body`.
    pub fn answer(&mut self, content_type: &str, body: &[u8], settings: &Settings, now: Instant) {
        self.answer_waiting(Status::OK, &[], content_type, body, settings, now);
    }

    /// Answers the publish handed out by [`Conn::poll`] with `503` and a JSON
    /// error saying `why`: the cluster bus could not take it. The request was
    /// well framed, so the connection stays open.
    pub fn unavailable(&mut self, why: &str, settings: &Settings, now: Instant) {
        let body = api::error_body(why);
        let headers = [("Retry-After", "1")];
        self.answer_waiting(Status::SERVICE_UNAVAILABLE, &headers, "application/json", body.as_bytes(), settings, now);
    }

    fn answer_waiting(
        &mut self,
        status: Status,
        headers: &[(&str, &str)],
        content_type: &str,
        body: &[u8],
        settings: &Settings,
        now: Instant,
    ) {
        if let State::Waiting { keep_alive, head_only, grant } = &self.state {
            let (keep_alive, head_only, grant) = (*keep_alive, *head_only, grant.clone());
            self.set_state(State::Head(None));
            self.respond(status, &grant, headers, content_type, body, head_only, keep_alive);
            self.arm_timer(settings, now);
        }
    }

    /// What the server should do with the socket now. Call after polling and
    /// after each flush of the outbox.
    pub fn socket_command(&self) -> SocketCommand {
        match self.state {
            _ if self.expired => SocketCommand::Close,
            State::Streaming | State::Lingering if self.peer_closed => SocketCommand::Close,
            State::Closing if self.outbox.is_empty() => {
                if self.peer_closed {
                    SocketCommand::Close
                } else {
                    SocketCommand::ShutdownWrite
                }
            }
            // The peer is gone and no request of theirs is left to answer: a
            // partial request can never complete.
            State::Head(_) if self.peer_closed && self.outbox.is_empty() => SocketCommand::Close,
            _ => SocketCommand::Keep,
        }
    }

    /// Sets the deadline the current state calls for, keeping a running one
    /// of the same kind (so bytes trickling in do not extend it).
    fn arm_timer(&mut self, settings: &Settings, now: Instant) {
        let limits = &settings.limits;
        let (wanted, after) = match &self.state {
            State::Head(None) if self.input.is_empty() => (Timer::Idle, limits.idle_timeout),
            State::Head(_) => (Timer::Request, limits.header_timeout),
            State::Waiting { .. } | State::Streaming => (Timer::Off, Duration::ZERO),
            State::Closing | State::Lingering => (Timer::Linger, LINGER),
        };
        if wanted != self.timer {
            self.timer = wanted;
            self.deadline = now + after;
        }
    }

    /// Looks for a complete request head in the input.
    fn try_head(&mut self, limits: &Limits) -> Result<Option<RequestHead>, http::Error> {
        // RFC 9112 2.2: ignore empty lines before a request line (some clients
        // send an extra CRLF after a body).
        let scanned = self.scanned as usize;
        if scanned == 0 {
            let blank = self.input.iter().take_while(|&&b| b == b'\r' || b == b'\n').count();
            self.input.drain(..blank);
        }
        let Some(end) = http::find_head_end(&self.input, scanned) else {
            if self.input.len() > limits.max_head_bytes {
                return Err(http::Error::HeadTooLarge);
            }
            // Within the head limit, checked just above.
            self.scanned = self.input.len() as u32;
            return Ok(None);
        };
        if end > limits.max_head_bytes {
            return Err(http::Error::HeadTooLarge);
        }
        let head = http::parse_head(&self.input[..end])?;
        self.input.drain(..end);
        self.scanned = 0;
        Ok(Some(head))
    }

    /// Routes a parsed head, checks its credentials, and starts reading its
    /// body.
    fn start_request(&mut self, head: RequestHead, settings: &Settings) {
        if settings.access_log {
            let query = if head.query.is_empty() { String::new() } else { format!("?{}", redact_token(&head.query)) };
            let request = format!("{} {}{query}", head.method_name, head.path);
            self.notes.get_or_insert_default().open_request = Some(request);
        }
        let grant = Grant::for_origin(settings, head.origin.as_deref());
        let route = match Endpoint::from_path(&head.path) {
            None => Err(Refusal::NotFound),
            Some(endpoint) if !endpoint.allows(head.method) => Err(Refusal::MethodNotAllowed(endpoint)),
            Some(endpoint) if !authorized(endpoint, &head, settings) => Err(Refusal::Unauthorized),
            Some(endpoint) => Ok(endpoint),
        };
        let decoder = match BodyDecoder::new(head.body, settings.limits.max_body_bytes) {
            Ok(decoder) => decoder,
            Err(error) => return self.refuse(error),
        };
        // A publish must say how long its body is (411, RFC 9110 15.5.12). In
        // HTTP/1.0 its body would otherwise run to EOF, so we close after.
        if route == Ok(Endpoint::Publish) && head.method == Method::Post && head.body == http::BodyFraming::None {
            return self.refuse(http::Error::LengthRequired);
        }
        if head.expect_continue && !decoder.is_done() {
            if let Err(refusal) = route {
                // Refuse before the body is sent; the client may send it
                // anyway, so the framing is lost: close afterwards.
                return self.answer_refusal(refusal, &head, &grant, true);
            }
            self.outbox.push(b"HTTP/1.1 100 Continue\r\n\r\n"[..].into());
        }
        let pending = Pending { head, route, grant, decoder, body: Vec::new() };
        self.set_state(State::Head(Some(Box::new(pending))));
    }

    /// Handles a request whose body has been read completely.
    fn finish_request(&mut self, request: Pending, settings: &Settings) -> Option<Action> {
        let Pending { head, route, grant, body, .. } = request;
        self.set_state(State::Head(None));
        let endpoint = match route {
            Ok(endpoint) => endpoint,
            Err(refusal) => {
                self.answer_refusal(refusal, &head, &grant, !head.keep_alive);
                return None;
            }
        };
        let head_only = head.method == Method::Head;
        match endpoint {
            _ if head.method == Method::Options => {
                self.answer_preflight(endpoint, &head, &grant);
                None
            }
            Endpoint::Health | Endpoint::Metrics => {
                let grant = Box::new(grant);
                self.set_state(State::Waiting { keep_alive: head.keep_alive, head_only, grant });
                Some(if endpoint == Endpoint::Health { Action::Health } else { Action::Metrics })
            }
            Endpoint::Page => {
                let page = api::DEMO_PAGE.as_bytes();
                let content_type = "text/html; charset=utf-8";
                self.respond(Status::OK, &grant, &[], content_type, page, head_only, head.keep_alive);
                None
            }
            Endpoint::Events => {
                let query = match api::parse_subscribe_query(&head.query) {
                    Ok(query) => query,
                    Err(why) => {
                        self.reply(Status::BAD_REQUEST, &why, &grant, &head);
                        self.note(Status::BAD_REQUEST, Some("invalid subscription query"));
                        return None;
                    }
                };
                self.queue_stream_head(&grant, head_only && !head.keep_alive);
                if head_only {
                    // The same head a GET gets, and no body.
                    if !head.keep_alive {
                        self.set_state(State::Closing);
                    }
                    return None;
                }
                // A comment so clients see the stream open at once, and the
                // reconnection delay.
                let opening = format!(": ok\nretry: {}\n\n", settings.retry_ms);
                self.outbox.push(opening.into_bytes().into());
                self.set_state(State::Streaming);
                // An empty header (some clients send one) does not hide the
                // query parameter.
                let header = head.last_event_id.filter(|id| !id.is_empty());
                let last_event_id = header.or(query.last_event_id);
                Some(Action::Subscribe(Subscribe { topics: query.topics, last_event_id }))
            }
            Endpoint::Publish => match api::parse_publish(&body) {
                Ok(publish) => {
                    let grant = Box::new(grant);
                    self.set_state(State::Waiting { keep_alive: head.keep_alive, head_only: false, grant });
                    Some(Action::Publish(publish))
                }
                Err(why) => {
                    self.reply(Status::BAD_REQUEST, &why, &grant, &head);
                    self.note(Status::BAD_REQUEST, Some("invalid publish body"));
                    None
                }
            },
        }
    }

    /// Queues the response head of an event stream. The body has no length:
    /// it ends when the connection closes.
    fn queue_stream_head(&mut self, grant: &Grant, close: bool) {
        let mut headers = vec![
            ("Content-Type", "text/event-stream"),
            ("Cache-Control", "no-cache"),
            ("Connection", if close { "close" } else { "keep-alive" }),
            ("X-Accel-Buffering", "no"),
        ];
        headers.extend(grant.headers().into_iter().flatten());
        let mut out = Vec::with_capacity(200);
        http::write_head(&mut out, Status::OK, &headers, None, false);
        self.outbox.push(out.into());
        self.note(Status::OK, None);
    }

    /// Answers a CORS preflight (`OPTIONS`) with what a browser may send.
    fn answer_preflight(&mut self, endpoint: Endpoint, head: &RequestHead, grant: &Grant) {
        let headers = [
            ("Access-Control-Allow-Methods", endpoint.allow_header()),
            ("Access-Control-Allow-Headers", "Content-Type, Authorization, Last-Event-ID"),
            ("Access-Control-Max-Age", "600"),
            ("Allow", endpoint.allow_header()),
        ];
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        all.extend(grant.headers().into_iter().flatten());
        let mut out = Vec::with_capacity(300);
        http::write_head(&mut out, Status::NO_CONTENT, &all, None, !head.keep_alive);
        self.outbox.push(out.into());
        self.note(Status::NO_CONTENT, None);
        if !head.keep_alive {
            self.set_state(State::Closing);
        }
    }

    fn answer_refusal(&mut self, refusal: Refusal, head: &RequestHead, grant: &Grant, close: bool) {
        let (status, why, extra) = match refusal {
            Refusal::NotFound => (Status::NOT_FOUND, "not found", None),
            Refusal::MethodNotAllowed(endpoint) => {
                (Status::METHOD_NOT_ALLOWED, "method not allowed", Some(("Allow", endpoint.allow_header())))
            }
            Refusal::Unauthorized => {
                (Status::UNAUTHORIZED, "a valid bearer token is required", Some(("WWW-Authenticate", "Bearer")))
            }
        };
        self.note(status, Some(why));
        let body = api::error_body(why);
        let extra: Vec<(&str, &str)> = extra.into_iter().collect();
        let head_only = head.method == Method::Head;
        self.respond(status, grant, &extra, "application/json", body.as_bytes(), head_only, !close);
    }

    /// Answers a request that broke the rules of HTTP, then closes: after a
    /// framing error we cannot know where the next request would start.
    fn refuse(&mut self, error: http::Error) {
        self.reply_error(error.status(), error.reason(), &Grant::default());
    }

    /// A JSON error answer, then close.
    fn reply_error(&mut self, status: Status, why: &'static str, grant: &Grant) {
        let body = api::error_body(why);
        self.respond(status, grant, &[], "application/json", body.as_bytes(), false, false);
        self.note(status, Some(why));
    }

    /// A JSON error answer to a well-framed request (no body for HEAD).
    fn reply(&mut self, status: Status, why: &str, grant: &Grant, head: &RequestHead) {
        let body = api::error_body(why);
        let head_only = head.method == Method::Head;
        self.respond(status, grant, &[], "application/json", body.as_bytes(), head_only, head.keep_alive);
    }

    /// Queues a complete response. With `keep_alive` false the connection
    /// closes after it.
    #[allow(clippy::too_many_arguments)]
    fn respond(
        &mut self,
        status: Status,
        grant: &Grant,
        headers: &[(&str, &str)],
        content_type: &str,
        body: &[u8],
        head_only: bool,
        keep_alive: bool,
    ) {
        let mut all = Vec::with_capacity(headers.len() + 4);
        all.push(("Content-Type", content_type));
        all.extend(grant.headers().into_iter().flatten());
        if keep_alive {
            // Redundant for HTTP/1.1, needed by HTTP/1.0 clients that asked.
            all.push(("Connection", "keep-alive"));
        }
        all.extend_from_slice(headers);
        let mut out = Vec::with_capacity(200 + body.len());
        http::write_head(&mut out, status, &all, Some(body.len()), !keep_alive);
        if !head_only {
            out.extend_from_slice(body);
        }
        self.outbox.push(out.into());
        self.note(status, None);
        if !keep_alive {
            self.set_state(State::Closing);
        }
    }

    /// The one place the state changes. Leaving `Head` frees the input
    /// buffer, so a stream or a closing connection holds no read memory.
    fn set_state(&mut self, state: State) {
        if !matches!(state, State::Head(_) | State::Waiting { .. }) {
            self.input = Vec::new();
            self.scanned = 0;
        }
        self.state = state;
    }
}

/// Whether the request carries the token its endpoint needs, if any. Tokens
/// are compared in constant time.
fn authorized(endpoint: Endpoint, head: &RequestHead, settings: &Settings) -> bool {
    if head.method == Method::Options {
        return true; // Preflights carry no credentials.
    }
    let required = match endpoint {
        Endpoint::Publish => settings.publish_token.as_deref(),
        Endpoint::Events => settings.subscribe_token.as_deref(),
        Endpoint::Page | Endpoint::Metrics | Endpoint::Health => None,
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
        Endpoint::Events => api::query_param(&head.query, "token"),
        _ => None,
    };
    match bearer.map(str::to_owned).or_else(from_query) {
        Some(given) => constant_time_eq(given.as_bytes(), required.as_bytes()),
        None => false,
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
    use super::*;

    fn t0() -> Instant {
        // One fixed instant per test run is enough: tests move time explicitly.
        use std::sync::OnceLock;
        static T0: OnceLock<Instant> = OnceLock::new();
        *T0.get_or_init(Instant::now)
    }

    /// Feeds `input` in pieces of `piece` bytes (respecting the read budget,
    /// as the server does), answers publishes with 7 subscribers, and returns
    /// everything the connection wrote, the actions, and the last command.
    fn run(input: &[u8], piece: usize) -> (String, Vec<Action>, SocketCommand) {
        let limits = Limits { max_head_bytes: 1024, max_body_bytes: 64, ..Limits::default() };
        let settings = Settings { limits, retry_ms: 1500, ..Settings::default() };
        let mut conn = Conn::new(&Settings::default(), t0());
        let mut actions = Vec::new();
        let mut out = Vec::new();
        let mut rest = input;
        loop {
            while let Some(action) = conn.poll(&settings, t0()) {
                if let Action::Publish(_) = action {
                    conn.published("1-1", 7, &settings, t0());
                }
                actions.push(action);
            }
            conn.outbox().flush(&mut out).unwrap();
            let budget = conn.read_budget(&settings).min(piece);
            if rest.is_empty() || budget == 0 {
                break;
            }
            let (now, later) = rest.split_at(budget.min(rest.len()));
            conn.receive(now, &settings, t0());
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
        let topics = vec![api::DEFAULT_TOPIC.to_owned()];
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

        let mut conn = Conn::new(&Settings::default(), t0());
        conn.receive(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n", &Settings::default(), t0());
        conn.poll(&Settings::default(), t0());
        assert!(conn.is_streaming());
        assert_eq!(conn.input.capacity(), 0, "a stream holds no read buffer");
    }

    #[test]
    fn a_stream_closes_when_the_peer_does() {
        let mut conn = Conn::new(&Settings::default(), t0());
        conn.receive(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n", &Settings::default(), t0());
        conn.poll(&Settings::default(), t0());
        conn.receive(b"ignored", &Settings::default(), t0());
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
        let mut conn = Conn::new(&Settings::default(), t0());
        assert_eq!(conn.read_budget(&settings), 101);
        conn.receive(b"GET / HTTP/1.1\r\n", &settings, t0());
        assert_eq!(conn.read_budget(&settings), 101 - 16);
        conn.receive_eof();
        assert_eq!(conn.read_budget(&settings), 0);
    }

    #[test]
    fn a_client_that_does_not_read_answers_is_paused() {
        let settings = Settings::default();
        let mut conn = Conn::new(&Settings::default(), t0());
        let request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        let pipelined: Vec<u8> = request.iter().copied().cycle().take(request.len() * 2000).collect();
        conn.receive(&pipelined, &Settings::default(), t0());
        assert_eq!(conn.poll(&settings, t0()), None);
        assert!(conn.outbox().queued_bytes() > PIPELINE_PAUSE_BYTES);
        assert!(conn.outbox().queued_bytes() < PIPELINE_PAUSE_BYTES + 2 * api::DEMO_PAGE.len() + 1024);
        assert_eq!(conn.read_budget(&settings), 0);
    }

    #[test]
    fn eof_mid_request_closes() {
        let mut conn = Conn::new(&Settings::default(), t0());
        conn.receive(b"GET / HTT", &Settings::default(), t0());
        conn.poll(&Settings::default(), t0());
        conn.receive_eof();
        assert_eq!(conn.socket_command(), SocketCommand::Close);
    }

    #[test]
    fn lingering_after_an_error() {
        let mut conn = Conn::new(&Settings::default(), t0());
        conn.receive(b"BAD\r\n\r\n", &Settings::default(), t0());
        conn.poll(&Settings::default(), t0());
        conn.outbox().flush(&mut Vec::new()).unwrap();
        assert_eq!(conn.socket_command(), SocketCommand::ShutdownWrite);
        conn.write_side_closed();
        assert!(conn.read_budget(&Settings::default()) > 0, "keeps reading to see the peer close");
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
        let mut conn = Conn::new(&Settings::default(), t0());
        assert_eq!(conn.deadline(), Some(at(60)));
        conn.on_timeout(&settings, at(59));
        assert_eq!(conn.socket_command(), SocketCommand::Keep);
        conn.on_timeout(&settings, at(60));
        assert_eq!(conn.socket_command(), SocketCommand::Close);
        assert_eq!(conn.read_budget(&settings), 0);
    }

    #[test]
    fn a_trickled_request_gets_408_at_the_header_timeout() {
        let settings = Settings::default();
        let mut conn = Conn::new(&Settings::default(), t0());
        // A byte a second does not push the deadline back.
        for (i, byte) in b"GET / HTTP/1.1\r\n".iter().take(9).enumerate() {
            conn.receive(std::slice::from_ref(byte), &settings, at(i as u64 + 1));
            conn.poll(&settings, at(i as u64 + 1));
        }
        assert_eq!(conn.deadline(), Some(at(11)));
        conn.on_timeout(&settings, at(11));
        let mut out = Vec::new();
        conn.outbox().flush(&mut out).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(out.starts_with("HTTP/1.1 408 Request Timeout\r\n") && out.contains("Connection: close"), "{out}");
        let notes = conn.take_notes().unwrap();
        assert_eq!(notes.refusal.map(|(s, _)| s), Some(Status::REQUEST_TIMEOUT));
        assert_eq!(notes.by_class, [0, 0, 0, 1, 0]);
        assert_eq!(conn.socket_command(), SocketCommand::ShutdownWrite);
        // Then it lingers, bounded too.
        conn.write_side_closed();
        assert_eq!(conn.deadline(), Some(at(11) + LINGER));
        conn.on_timeout(&settings, at(11) + LINGER);
        assert_eq!(conn.socket_command(), SocketCommand::Close);
    }

    #[test]
    fn each_pipelined_request_gets_its_own_deadline() {
        let settings = Settings::default();
        let mut conn = Conn::new(&Settings::default(), t0());
        conn.receive(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HT", &settings, at(1));
        conn.poll(&settings, at(5));
        assert_eq!(conn.deadline(), Some(at(15)), "the second request started at 5");
    }

    #[test]
    fn streams_have_no_deadline() {
        let settings = Settings::default();
        let mut conn = Conn::new(&Settings::default(), t0());
        conn.receive(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n", &settings, at(1));
        conn.poll(&settings, at(1));
        assert!(conn.is_streaming());
        assert_eq!(conn.deadline(), None);
    }

    // ---- auth and CORS ----

    fn answer(settings: &Settings, request: &str) -> (String, Vec<Action>) {
        let mut conn = Conn::new(&Settings::default(), t0());
        conn.receive(request.as_bytes(), settings, t0());
        let mut actions = Vec::new();
        while let Some(action) = conn.poll(settings, t0()) {
            match action {
                Action::Publish(_) => conn.published("1-1", 0, settings, t0()),
                Action::Health => conn.answer("text/plain; charset=utf-8", b"ok\n", settings, t0()),
                _ => {}
            }
            actions.push(action);
        }
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
