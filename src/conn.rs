//! One client connection as a state machine, without sockets.
//!
//! The event loop ([`crate::server`]) reads bytes and hands them to
//! [`Conn::receive`]; the connection parses them, answers what it can answer
//! alone (the demo page, 404, 405, malformed requests) into its [`Outbox`],
//! and hands the server an [`Action`] for what needs the rest of the server
//! (a publish, a new subscriber). The server writes the outbox to the socket.
//! Nothing here performs I/O or reads the clock, so every path is testable and
//! fuzzable with plain byte slices.
//!
//! ```text
//!              request head + body complete
//!   ┌──────┐ ───────────────────────────────► answer queued ──┐ (keep-alive)
//!   │ Head │ ◄────────────────────────────────────────────────┘
//!   └──────┘
//!     │ │ │   GET /events          ┌───────────┐
//!     │ │ └──────────────────────► │ Streaming │  output only, until the peer goes
//!     │ │                          └───────────┘
//!     │ │     POST /send-event     ┌────────────┐  Conn::published()
//!     │ └────────────────────────► │ Publishing │ ─────────────────► Head or Closing
//!     │                            └────────────┘
//!     │   bad request / close      ┌─────────┐  outbox empty   ┌───────────┐  EOF
//!     └──────────────────────────► │ Closing │ ──────────────► │ Lingering │ ─────► done
//!                                  └─────────┘  (shut down     └───────────┘
//!                                                our write side)
//! ```
//!
//! `Head` also covers reading a request body (the `body` field of the pending
//! request); every state change goes through [`Conn::set_state`].
//!
//! **Why linger?** If we close a socket while the peer's unread bytes sit in
//! our receive buffer, the kernel sends RST, and the peer may lose our error
//! response before reading it. So after the last response we shut down our
//! write side and read (and drop) input until the peer closes too, as nginx's
//! `lingering_close` does; the server bounds how long.

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
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { max_head_bytes: 16 * 1024, max_body_bytes: 64 * 1024 }
    }
}

/// How connections behave: the limits plus the protocol settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub limits: Limits,
    /// The `retry:` (reconnection delay, in milliseconds) sent when a stream
    /// opens.
    pub retry_ms: u32,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings { limits: Limits::default(), retry_ms: 3000 }
    }
}

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
    /// Bytes at the start of `input` already searched for the end of a head.
    scanned: usize,
    /// Bytes waiting to go out.
    outbox: Outbox,
    /// The peer closed its write side (we read EOF).
    peer_closed: bool,
}

#[derive(Debug)]
enum State {
    /// Reading a request: its head, then (if `Some`) its body.
    Head(Option<Box<Pending>>),
    /// A publish was handed to the server; waiting for [`Conn::published`].
    Publishing { keep_alive: bool },
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
    /// Where the request goes, or the error status it gets once its body is
    /// read (a refused request still has its body read, to keep the
    /// connection's framing).
    route: Result<Endpoint, Refusal>,
    decoder: BodyDecoder,
    body: Vec<u8>,
}

/// A well-framed request that is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    NotFound,
    MethodNotAllowed(Endpoint),
}

impl Default for Conn {
    fn default() -> Conn {
        Conn::new()
    }
}

impl Conn {
    /// A connection that has just been accepted.
    pub fn new() -> Conn {
        Conn { state: State::Head(None), input: Vec::new(), scanned: 0, outbox: Outbox::new(), peer_closed: false }
    }

    /// Whether the connection is an open event stream.
    pub fn is_streaming(&self) -> bool {
        matches!(self.state, State::Streaming)
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

    /// How many bytes the connection is willing to take now; 0 means "don't
    /// read". Bounds every buffer a peer can fill.
    pub fn read_budget(&self, settings: &Settings) -> usize {
        let limits = &settings.limits;
        match &self.state {
            _ if self.peer_closed => 0,
            // Waiting for our own answers to drain before reading more.
            State::Head(_) if self.outbox.queued_bytes() > PIPELINE_PAUSE_BYTES => 0,
            // One byte past the limit is enough to know the head is too long.
            State::Head(None) => (limits.max_head_bytes + 1).saturating_sub(self.input.len()),
            // A body is decoded as it arrives; `input` only holds a partial
            // chunk line between reads.
            State::Head(Some(_)) => limits.max_head_bytes.saturating_sub(self.input.len()).max(1),
            State::Publishing { .. } => 0,
            State::Streaming | State::Closing | State::Lingering => DISCARD_READ_BYTES,
        }
    }

    /// Takes bytes read from the peer. Call [`Conn::poll`] afterwards.
    pub fn receive(&mut self, input: &[u8]) {
        match self.state {
            State::Head(_) | State::Publishing { .. } => self.input.extend_from_slice(input),
            // Nothing a subscriber or a closing peer sends means anything now.
            State::Streaming | State::Closing | State::Lingering => {}
        }
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

    /// Parses what was received and answers it, as far as possible without
    /// the server. Returns the next thing the server must do, if any; call
    /// again until it returns `None`.
    pub fn poll(&mut self, settings: &Settings) -> Option<Action> {
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
                    self.start_request(head, &settings.limits);
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
                        self.state = State::Head(Some(request));
                        return None;
                    }
                    if let Some(action) = self.finish_request(*request, settings) {
                        return Some(action);
                    }
                }
            }
        }
    }

    /// Answers the publish handed out by [`Conn::poll`]: it got the id `id`
    /// and goes to `subscribers` streams.
    pub fn published(&mut self, id: &str, subscribers: usize) {
        if let State::Publishing { keep_alive } = self.state {
            let body = api::published_body(id, subscribers);
            self.respond(Status::OK, &[], "application/json", body.as_bytes(), false, keep_alive);
        }
    }

    /// What the server should do with the socket now. Call after polling and
    /// after each flush of the outbox.
    pub fn socket_command(&self) -> SocketCommand {
        match self.state {
            State::Streaming if self.peer_closed => SocketCommand::Close,
            State::Lingering if self.peer_closed => SocketCommand::Close,
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

    /// Looks for a complete request head in the input.
    fn try_head(&mut self, limits: &Limits) -> Result<Option<RequestHead>, http::Error> {
        // RFC 9112 2.2: ignore empty lines before a request line (some clients
        // send an extra CRLF after a body).
        if self.scanned == 0 {
            let blank = self.input.iter().take_while(|&&b| b == b'\r' || b == b'\n').count();
            self.input.drain(..blank);
        }
        let Some(end) = http::find_head_end(&self.input, self.scanned) else {
            if self.input.len() > limits.max_head_bytes {
                return Err(http::Error::HeadTooLarge);
            }
            self.scanned = self.input.len();
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

    /// Routes a parsed head and starts reading its body.
    fn start_request(&mut self, head: RequestHead, limits: &Limits) {
        let route = match Endpoint::from_path(&head.path) {
            None => Err(Refusal::NotFound),
            Some(endpoint) if !endpoint.allows(head.method) => Err(Refusal::MethodNotAllowed(endpoint)),
            Some(endpoint) => Ok(endpoint),
        };
        let decoder = match BodyDecoder::new(head.body, limits.max_body_bytes) {
            Ok(decoder) => decoder,
            Err(error) => return self.refuse(error),
        };
        // A publish must say how long its body is (411, RFC 9110 15.5.12). In
        // HTTP/1.0 its body would otherwise run to EOF, so we close after.
        if route == Ok(Endpoint::Publish) && head.body == http::BodyFraming::None {
            return self.refuse(http::Error::LengthRequired);
        }
        if head.expect_continue && !decoder.is_done() {
            if let Err(refusal) = route {
                // Refuse before the body is sent; the client may send it
                // anyway, so the framing is lost: close afterwards.
                self.state = State::Head(None);
                return self.answer_refusal(refusal, &head, true);
            }
            self.outbox.push(b"HTTP/1.1 100 Continue\r\n\r\n"[..].into());
        }
        let pending = Pending { head, route, decoder, body: Vec::new() };
        self.set_state(State::Head(Some(Box::new(pending))));
    }

    /// Handles a request whose body has been read completely.
    fn finish_request(&mut self, request: Pending, settings: &Settings) -> Option<Action> {
        let Pending { head, route, body, .. } = request;
        let endpoint = match route {
            Ok(endpoint) => endpoint,
            Err(refusal) => {
                self.set_state(State::Head(None));
                self.answer_refusal(refusal, &head, !head.keep_alive);
                return None;
            }
        };
        let head_only = head.method == Method::Head;
        match endpoint {
            Endpoint::Page => {
                let page = api::DEMO_PAGE.as_bytes();
                self.set_state(State::Head(None));
                self.respond(Status::OK, &[], "text/html; charset=utf-8", page, head_only, head.keep_alive);
                None
            }
            Endpoint::Events if head_only => {
                // The same head a GET gets, and no body.
                self.queue_stream_head(!head.keep_alive);
                self.set_state(if head.keep_alive { State::Head(None) } else { State::Closing });
                None
            }
            Endpoint::Events => {
                let query = match api::parse_subscribe_query(&head.query) {
                    Ok(query) => query,
                    Err(why) => {
                        self.set_state(State::Head(None));
                        let body = api::error_body(&why);
                        self.respond(
                            Status::BAD_REQUEST,
                            &[],
                            "application/json",
                            body.as_bytes(),
                            false,
                            head.keep_alive,
                        );
                        return None;
                    }
                };
                self.queue_stream_head(false);
                // A comment so clients see the stream open at once, and the
                // reconnection delay.
                let opening = format!(": ok\nretry: {}\n\n", settings.retry_ms);
                self.outbox.push(opening.into_bytes().into());
                self.set_state(State::Streaming);
                let last_event_id = head.last_event_id.or(query.last_event_id);
                Some(Action::Subscribe(Subscribe { topics: query.topics, last_event_id }))
            }
            Endpoint::Publish => match api::parse_publish(&body) {
                Ok(publish) => {
                    self.set_state(State::Publishing { keep_alive: head.keep_alive });
                    Some(Action::Publish(publish))
                }
                Err(why) => {
                    self.set_state(State::Head(None));
                    let body = api::error_body(&why);
                    self.respond(Status::BAD_REQUEST, &[], "application/json", body.as_bytes(), false, head.keep_alive);
                    None
                }
            },
        }
    }

    /// Queues the response head of an event stream. The body has no length:
    /// it ends when the connection closes.
    fn queue_stream_head(&mut self, close: bool) {
        let headers = [
            ("Content-Type", "text/event-stream"),
            ("Cache-Control", "no-cache"),
            ("Connection", if close { "close" } else { "keep-alive" }),
            ("Access-Control-Allow-Origin", "*"),
            ("X-Accel-Buffering", "no"),
        ];
        let mut out = Vec::with_capacity(200);
        http::write_head(&mut out, Status::OK, &headers, None, false);
        self.outbox.push(out.into());
    }

    fn answer_refusal(&mut self, refusal: Refusal, head: &RequestHead, close: bool) {
        let (status, allow) = match refusal {
            Refusal::NotFound => (Status::NOT_FOUND, None),
            Refusal::MethodNotAllowed(endpoint) => (Status::METHOD_NOT_ALLOWED, Some(endpoint.allow_header())),
        };
        let why = if allow.is_some() { "method not allowed" } else { "not found" };
        let body = api::error_body(why);
        let allow_header = allow.map(|value| ("Allow", value));
        let headers: Vec<(&str, &str)> = allow_header.into_iter().collect();
        let head_only = head.method == Method::Head;
        self.respond(status, &headers, "application/json", body.as_bytes(), head_only, !close);
    }

    /// Answers a request that broke the rules of HTTP, then closes: after a
    /// framing error we cannot know where the next request would start.
    fn refuse(&mut self, error: http::Error) {
        let body = api::error_body(error.reason());
        self.respond(error.status(), &[], "application/json", body.as_bytes(), false, false);
    }

    /// Queues a complete response. With `keep_alive` false the connection
    /// closes after it.
    fn respond(
        &mut self,
        status: Status,
        headers: &[(&str, &str)],
        content_type: &str,
        body: &[u8],
        head_only: bool,
        keep_alive: bool,
    ) {
        let mut all = Vec::with_capacity(headers.len() + 3);
        all.push(("Content-Type", content_type));
        all.push(("Access-Control-Allow-Origin", "*"));
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
        if keep_alive {
            if let State::Publishing { .. } = self.state {
                self.set_state(State::Head(None));
            }
        } else {
            self.set_state(State::Closing);
        }
    }

    /// The one place the state changes. Leaving `Head` frees the input
    /// buffer, so a stream or a closing connection holds no read memory.
    fn set_state(&mut self, state: State) {
        if !matches!(state, State::Head(_) | State::Publishing { .. }) {
            self.input = Vec::new();
            self.scanned = 0;
        }
        self.state = state;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `piece` bytes (respecting the read budget,
    /// as the server does), answers publishes with 7 subscribers, and returns
    /// everything the connection wrote, the actions, and the last command.
    fn run(input: &[u8], piece: usize) -> (String, Vec<Action>, SocketCommand) {
        let settings = Settings { limits: Limits { max_head_bytes: 1024, max_body_bytes: 64 }, retry_ms: 1500 };
        let mut conn = Conn::new();
        let mut actions = Vec::new();
        let mut out = Vec::new();
        let mut rest = input;
        loop {
            while let Some(action) = conn.poll(&settings) {
                if let Action::Publish(_) = action {
                    conn.published("1-1", 7);
                }
                actions.push(action);
            }
            conn.outbox().flush(&mut out).unwrap();
            let budget = conn.read_budget(&settings).min(piece);
            if rest.is_empty() || budget == 0 {
                break;
            }
            let (now, later) = rest.split_at(budget.min(rest.len()));
            conn.receive(now);
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
        assert!(output.contains("Allow: POST\r\n"), "{output}");
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

        let mut conn = Conn::new();
        conn.receive(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n");
        conn.poll(&Settings::default());
        assert!(conn.is_streaming());
        assert_eq!(conn.input.capacity(), 0, "a stream holds no read buffer");
    }

    #[test]
    fn a_stream_closes_when_the_peer_does() {
        let mut conn = Conn::new();
        conn.receive(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n");
        conn.poll(&Settings::default());
        conn.receive(b"ignored");
        assert_eq!(conn.socket_command(), SocketCommand::Keep);
        conn.receive_eof();
        assert_eq!(conn.socket_command(), SocketCommand::Close);
    }

    #[test]
    fn head_of_events_is_headers_only_and_keeps_alive() {
        let (output, actions, command) = check("HEAD /events HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(actions.is_empty());
        assert!(output.ends_with("X-Accel-Buffering: no\r\n\r\n"), "{output}");
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
        let settings = Settings { limits: Limits { max_head_bytes: 100, max_body_bytes: 10 }, ..Settings::default() };
        let mut conn = Conn::new();
        assert_eq!(conn.read_budget(&settings), 101);
        conn.receive(b"GET / HTTP/1.1\r\n");
        assert_eq!(conn.read_budget(&settings), 101 - 16);
        conn.receive_eof();
        assert_eq!(conn.read_budget(&settings), 0);
    }

    #[test]
    fn a_client_that_does_not_read_answers_is_paused() {
        let settings = Settings::default();
        let mut conn = Conn::new();
        let request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        let pipelined: Vec<u8> = request.iter().copied().cycle().take(request.len() * 2000).collect();
        conn.receive(&pipelined);
        assert_eq!(conn.poll(&settings), None);
        assert!(conn.outbox().queued_bytes() > PIPELINE_PAUSE_BYTES);
        assert!(conn.outbox().queued_bytes() < PIPELINE_PAUSE_BYTES + 2 * api::DEMO_PAGE.len() + 1024);
        assert_eq!(conn.read_budget(&settings), 0);
    }

    #[test]
    fn eof_mid_request_closes() {
        let mut conn = Conn::new();
        conn.receive(b"GET / HTT");
        conn.poll(&Settings::default());
        conn.receive_eof();
        assert_eq!(conn.socket_command(), SocketCommand::Close);
    }

    #[test]
    fn lingering_after_an_error() {
        let mut conn = Conn::new();
        conn.receive(b"BAD\r\n\r\n");
        conn.poll(&Settings::default());
        conn.outbox().flush(&mut Vec::new()).unwrap();
        assert_eq!(conn.socket_command(), SocketCommand::ShutdownWrite);
        conn.write_side_closed();
        assert!(conn.read_budget(&Settings::default()) > 0, "keeps reading to see the peer close");
        assert_eq!(conn.socket_command(), SocketCommand::Keep);
        conn.receive_eof();
        assert_eq!(conn.socket_command(), SocketCommand::Close);
    }
}
