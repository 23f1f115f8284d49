//! One client connection as an HTTP/1.1 state machine, without sockets,
//! clocks or endpoints.
//!
//! The event loop ([`crate::server`]) reads bytes and hands them to
//! [`Conn::receive`]. The connection parses them into requests, reads their
//! bodies, enforces the limits and timeouts, and writes responses into its
//! [`Outbox`]; the server writes the outbox to the socket. What a request
//! *means* is not decided here: [`Conn::poll`] asks an [`Application`],
//! first on the head alone ([`Application::screen`]: read the body, or
//! refuse now), then on the whole request ([`Application::handle`]: a
//! [`Response`] at once, or an action for the server, which answers later
//! with [`Conn::respond`] or turns the connection into a stream with
//! [`Conn::open_stream`]). So a new endpoint, or a whole second API, never
//! touches this file. Nothing here performs I/O or reads the clock (`now`
//! is passed in), so every path is testable and fuzzable with byte slices.
//!
//! ```text
//!               head + body read; the application answers at once
//!   ┌─────────┐ ─────────────────────────────────────────► response queued ─┐
//!   │ Reading │ ◄──────────────────────────────────────────────────────────┘ (keep-alive)
//!   └─────────┘
//!     │     │  the application hands   ┌─────────┐  Conn::respond     Reading,
//!     │     └────────────────────────► │ Waiting │ ─────────────────► or Closing
//!     │        the server an action    └─────────┘
//!     │                                     │ Conn::open_stream ┌───────────┐
//!     │                                     └─────────────────► │ Streaming │ output only,
//!     │   bad request, timeout,    ┌─────────┐                  └───────────┘ until the peer goes
//!     └──────────────────────────► │ Closing │ outbox empty   ┌───────────┐  EOF or
//!         Connection: close        └─────────┘ ─────────────► │ Lingering │ ─────────► done
//!                                              (shut down     └───────────┘  timeout
//!                                               our write side)
//! ```
//!
//! `Reading` covers a request's head and then its body (the pending
//! request, which `parse` takes out while it works on it and puts back);
//! every state change goes through `Conn::set_state`.
//!
//! **Timers.** A connection has at most one deadline ([`Conn::deadline`]),
//! and the server calls [`Conn::on_timeout`] when it passes:
//!
//! * idle between requests: closed after `idle_timeout` (no answer owed);
//! * inside a request: the whole head and body must arrive within
//!   `header_timeout` of its first byte, or the answer is 408 and close. The
//!   deadline is not pushed back by each byte, so a client trickling a byte a
//!   minute (slowloris) is cut off like any other. A blank line before the
//!   request line (which RFC 9112 2.2 lets us skip) counts as its first
//!   byte, so blank lines alone cannot hold a connection past either timer;
//! * closing or lingering: the peer gets [`LINGER`] to read our last answer
//!   and close.
//!
//! * a stream opened with an end ([`Conn::open_stream_until`]): closed then.
//!
//! Otherwise a stream has no deadline: heartbeats find dead peers.
//!
//! **Why linger?** If we close a socket while the peer's unread bytes sit in
//! our receive buffer, the kernel sends RST, and the peer may lose our error
//! response before reading it. So after the last response we shut down our
//! write side and read (and drop) input until the peer closes too, as nginx's
//! `lingering_close` does, for a bounded time.

use std::time::{Duration, Instant};

use super::outbox::Outbox;
use super::{BodyDecoder, Error, Method, RequestHead, Response, Status};

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

/// A complete request: its head and its decoded body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub head: RequestHead,
    pub body: Vec<u8>,
}

/// What decides what requests mean: the routes, credentials and answers of
/// an API. The connection machine calls it from [`Conn::poll`].
pub trait Application {
    /// What the application needs the server to do for a request it cannot
    /// answer alone (publish, subscribe, ...).
    type Action;

    /// Looks at a request's head before its body is read. A refusal is
    /// answered once the body has been read and dropped (which keeps the
    /// connection's framing), or at once, closing the connection, when the
    /// client waits for `100 Continue` or the response says to close.
    fn screen(&self, head: &RequestHead) -> Result<(), Response>;

    /// Handles a complete request that [`Application::screen`] let through.
    fn handle(&self, request: Request) -> Handled<Self::Action>;

    /// How the request appears in the access log, or `None` for no access
    /// log. The application decides, since it knows which parts are secret.
    fn log_line(&self, head: &RequestHead) -> Option<String>;
}

/// What [`Application::handle`] made of a request.
#[derive(Debug)]
pub enum Handled<A> {
    /// Answer with this now.
    Respond(Response),
    /// The server must carry out `action`, then answer with
    /// [`Conn::respond`] or [`Conn::open_stream`]; `headers` are added to
    /// whatever that answer is (CORS, say), so the server need not know them.
    Defer { action: A, headers: Vec<(&'static str, String)> },
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
    /// Blank lines before a request line were skipped: the request's clock
    /// runs, though `input` may be empty.
    started: bool,
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
    /// [`Conn::take_answered`]); `None`, and free, most of the time.
    answered: Option<Box<Answered>>,
}

/// What a connection answered, for the server's metrics and log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answered {
    /// Responses by status class: `[1xx, 2xx, 3xx, 4xx, 5xx]`.
    pub by_class: [u32; 5],
    /// The last refusal (4xx/5xx) with its reason.
    pub refusal: Option<(Status, &'static str)>,
    /// With an access log: the application's line for each answered
    /// request, followed by its status.
    pub access: Vec<String>,
    /// With an access log: the request being handled, until it is answered.
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
    /// The end of a stream that may last only so long.
    StreamEnd,
}

#[derive(Debug)]
enum State {
    /// Reading a request: its head, then (if `Some`) its body.
    Reading(Option<Box<Pending>>),
    /// The application handed the server an action; waiting for
    /// [`Conn::respond`] or [`Conn::open_stream`].
    Waiting(Box<Deferred>),
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
    /// The application's refusal on the head alone, answered once the body
    /// is read (to keep the framing).
    refusal: Option<Response>,
    decoder: BodyDecoder,
    body: Vec<u8>,
}

/// What the answer to a deferred request needs from its request.
#[derive(Debug)]
struct Deferred {
    keep_alive: bool,
    head_only: bool,
    headers: Vec<(&'static str, String)>,
}

impl Conn {
    /// A connection accepted at `now`.
    pub fn new(limits: &Limits, now: Instant) -> Conn {
        Conn {
            state: State::Reading(None),
            input: Vec::new(),
            scanned: 0,
            started: false,
            outbox: Outbox::new(),
            peer_closed: false,
            timer: Timer::Idle,
            deadline: now + limits.idle_timeout,
            expired: false,
            answered: None,
        }
    }

    /// Whether the connection is an open event stream.
    pub fn is_streaming(&self) -> bool {
        matches!(self.state, State::Streaming)
    }

    /// Whether parsing is paused because the peer has not read our answers
    /// ([`PIPELINE_PAUSE_BYTES`]); writing the outbox resumes it.
    pub fn is_paused_by_output(&self) -> bool {
        matches!(self.state, State::Reading(_)) && self.outbox.queued_bytes() > PIPELINE_PAUSE_BYTES
    }

    /// Whether closing the connection now loses nothing: it owes no bytes and
    /// is not in the middle of a request (for a graceful shutdown).
    pub fn is_quiet(&self) -> bool {
        self.outbox.is_empty()
            && match self.state {
                State::Reading(None) => self.input.is_empty(),
                State::Reading(Some(_)) | State::Waiting(_) => false,
                State::Streaming | State::Closing | State::Lingering => true,
            }
    }

    /// Received bytes the connection holds: unparsed input plus the body of
    /// the request being read. Bounded by [`Conn::read_budget`] and the
    /// [`Limits`]; the fuzz targets check that it stays so.
    pub fn buffered_input_bytes(&self) -> usize {
        let body = match &self.state {
            State::Reading(Some(pending)) => pending.body.len(),
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
    pub fn take_answered(&mut self) -> Option<Answered> {
        let answered = self.answered.as_deref_mut()?;
        let open_request = answered.open_request.take();
        let taken = std::mem::take(answered);
        match open_request {
            // A request still in progress keeps its place for its answer.
            Some(_) => answered.open_request = open_request,
            None => self.answered = None,
        }
        Some(taken)
    }

    /// Counts a response's status (and, for a refusal, its reason).
    fn count(&mut self, status: Status, refusal: Option<&'static str>) {
        let answered = self.answered.get_or_insert_default();
        if let Some(why) = refusal {
            answered.refusal = Some((status, why));
        }
        if let Some(count) = answered.by_class.get_mut(usize::from(status.0 / 100).wrapping_sub(1)) {
            *count += 1;
        }
        if let Some(request) = answered.open_request.take() {
            answered.access.push(format!("{request} {}", status.0));
        }
    }

    /// When the server must call [`Conn::on_timeout`], if ever.
    pub fn deadline(&self) -> Option<Instant> {
        (self.timer != Timer::Off).then_some(self.deadline)
    }

    /// How many bytes the connection is willing to take now; 0 means "don't
    /// read". Bounds every buffer a peer can fill.
    pub fn read_budget(&self, limits: &Limits) -> usize {
        match &self.state {
            _ if self.peer_closed || self.expired => 0,
            // Waiting for our own answers to drain before reading more.
            State::Reading(_) if self.outbox.queued_bytes() > PIPELINE_PAUSE_BYTES => 0,
            // One byte past the limit is enough to know the head is too long.
            State::Reading(None) => (limits.max_head_bytes + 1).saturating_sub(self.input.len()),
            // A body is decoded as it arrives; `input` only holds bytes that
            // follow it (the next pipelined request).
            State::Reading(Some(_)) => limits.max_head_bytes.saturating_sub(self.input.len()).max(1),
            State::Waiting(_) => 0,
            State::Streaming | State::Closing | State::Lingering => DISCARD_READ_BYTES,
        }
    }

    /// Takes bytes read from the peer at `now`. Call [`Conn::poll`] afterwards.
    pub fn receive(&mut self, input: &[u8], limits: &Limits, now: Instant) {
        match self.state {
            State::Reading(_) | State::Waiting(_) => self.input.extend_from_slice(input),
            // Nothing a subscriber or a closing peer sends means anything now.
            State::Streaming | State::Closing | State::Lingering => {}
        }
        self.arm_timer(limits, now);
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
    pub fn on_timeout(&mut self, limits: &Limits, now: Instant) {
        if self.timer == Timer::Off || self.deadline > now {
            return;
        }
        if self.timer == Timer::Request {
            self.write_response(Response::error(Status::REQUEST_TIMEOUT, "request not received in time"), false, false);
            self.arm_timer(limits, now);
        } else {
            self.expired = true;
            self.timer = Timer::Off;
        }
    }

    /// Parses what was received and lets `app` answer it, as far as possible
    /// without the server. Returns the next thing the server must do, if
    /// any; call again until it returns `None`.
    pub fn poll<A: Application>(&mut self, app: &A, limits: &Limits, now: Instant) -> Option<A::Action> {
        let action = self.parse(app, limits);
        self.arm_timer(limits, now);
        action
    }

    fn parse<A: Application>(&mut self, app: &A, limits: &Limits) -> Option<A::Action> {
        loop {
            let State::Reading(pending) = &mut self.state else {
                return None;
            };
            if self.outbox.queued_bytes() > PIPELINE_PAUSE_BYTES {
                return None;
            }
            match pending.take() {
                None => {
                    let head = match self.try_head(limits) {
                        Ok(Some(head)) => head,
                        Ok(None) => return None,
                        Err(error) => {
                            self.refuse(error);
                            return None;
                        }
                    };
                    self.start_request(app, head, limits);
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
                        self.set_state(State::Reading(Some(request)));
                        return None;
                    }
                    // The next request gets a deadline of its own.
                    self.timer = Timer::Off;
                    if let Some(action) = self.finish_request(app, *request) {
                        return Some(action);
                    }
                }
            }
        }
    }

    /// Answers the request handed to the server as an action.
    pub fn respond(&mut self, response: Response, limits: &Limits, now: Instant) {
        let State::Waiting(deferred) = &mut self.state else { return };
        let Deferred { keep_alive, head_only, headers } =
            std::mem::replace(deferred.as_mut(), Deferred { keep_alive: false, head_only: false, headers: Vec::new() });
        self.set_state(State::Reading(None));
        self.write_response(response.with_headers(headers), head_only, keep_alive);
        self.arm_timer(limits, now);
    }

    /// Answers the request handed to the server as an action with the head
    /// of an endless body (an event stream): from now on the connection
    /// only sends what the server queues in its outbox.
    pub fn open_stream(&mut self, head: Response) {
        self.open_stream_until(head, None);
    }

    /// [`Conn::open_stream`] for a stream that must end by `ends_at` (a
    /// token's expiry, say): the connection closes then.
    pub fn open_stream_until(&mut self, head: Response, ends_at: Option<Instant>) {
        let State::Waiting(deferred) = &mut self.state else { return };
        let headers = std::mem::take(&mut deferred.headers);
        let mut head = head.with_headers(headers);
        head.headers.insert(head.headers.len().min(1), ("Connection", "keep-alive".into()));
        let mut out = Vec::with_capacity(256);
        super::write_head(&mut out, head.status, &head.headers, None, false);
        self.outbox.push(out.into());
        self.count(head.status, head.refusal);
        self.set_state(State::Streaming);
        if let Some(at) = ends_at {
            (self.timer, self.deadline) = (Timer::StreamEnd, at);
        }
    }

    /// Answers the request handed to the server as an action with the head
    /// of a body whose length is not known yet (a long listing, written as
    /// it is read): the server queues the body in the outbox, piece by
    /// piece, and ends it by closing the connection, which is what ends a
    /// body without a length (RFC 9112 6.3, rule 8), so the head says
    /// `Connection: close`. The connection closes at `ends_at` whatever is
    /// left, so a peer that stops reading cannot hold it. Returns whether a
    /// body follows: a HEAD request gets the head alone, and the server
    /// closes at once.
    pub fn open_body(&mut self, head: Response, ends_at: Instant) -> bool {
        let State::Waiting(deferred) = &mut self.state else { return false };
        let head_only = deferred.head_only;
        let headers = std::mem::take(&mut deferred.headers);
        let head = head.with_headers(headers);
        let mut out = Vec::with_capacity(256);
        super::write_head(&mut out, head.status, &head.headers, None, true);
        self.outbox.push(out.into());
        self.count(head.status, head.refusal);
        // Like a stream: what the peer sends from now on is read and dropped.
        self.set_state(State::Streaming);
        (self.timer, self.deadline) = (Timer::StreamEnd, ends_at);
        !head_only
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
            State::Reading(_) if self.peer_closed && self.outbox.is_empty() => SocketCommand::Close,
            _ => SocketCommand::Keep,
        }
    }

    /// Sets the deadline the current state calls for, keeping a running one
    /// of the same kind (so bytes trickling in do not extend it).
    fn arm_timer(&mut self, limits: &Limits, now: Instant) {
        let (wanted, after) = match &self.state {
            State::Reading(None) if self.input.is_empty() && !self.started => (Timer::Idle, limits.idle_timeout),
            State::Reading(_) => (Timer::Request, limits.header_timeout),
            // A stream's end, if it has one, was set when it opened.
            State::Streaming if self.timer == Timer::StreamEnd => return,
            State::Waiting(_) | State::Streaming => (Timer::Off, Duration::ZERO),
            State::Closing | State::Lingering => (Timer::Linger, LINGER),
        };
        if wanted != self.timer {
            self.timer = wanted;
            self.deadline = now + after;
        }
    }

    /// Looks for a complete request head in the input.
    fn try_head(&mut self, limits: &Limits) -> Result<Option<RequestHead>, Error> {
        // RFC 9112 2.2: ignore empty lines before a request line (some clients
        // send an extra CRLF after a body), but on the request's clock: a
        // blank line now and then must not hold the connection for ever.
        let scanned = self.scanned as usize;
        if scanned == 0 {
            let blank = super::blank_lines(&self.input);
            self.input.drain(..blank);
            self.started |= blank > 0;
            if self.input == b"\r" {
                // Half a blank line, or a bare CR: the next byte says which.
                return Ok(None);
            }
        }
        let end = super::find_head_end(&self.input, scanned);
        if super::find_bare_cr(&self.input[..end.unwrap_or(self.input.len())], scanned).is_some() {
            return Err(Error::Malformed("bare CR in request head"));
        }
        let Some(end) = end else {
            if self.input.len() > limits.max_head_bytes {
                return Err(Error::HeadTooLarge);
            }
            // Within the head limit, checked just above.
            self.scanned = self.input.len() as u32;
            return Ok(None);
        };
        if end > limits.max_head_bytes {
            return Err(Error::HeadTooLarge);
        }
        let head = super::parse_head(&self.input[..end])?;
        self.input.drain(..end);
        self.scanned = 0;
        self.started = false;
        Ok(Some(head))
    }

    /// Lets the application screen a parsed head, and starts reading its
    /// body.
    fn start_request<A: Application>(&mut self, app: &A, head: RequestHead, limits: &Limits) {
        if let Some(line) = app.log_line(&head) {
            self.answered.get_or_insert_default().open_request = Some(line);
        }
        let refusal = app.screen(&head).err();
        let decoder = match BodyDecoder::new(head.body, limits.max_body_bytes) {
            Ok(decoder) => decoder,
            Err(error) => return self.refuse(error),
        };
        if let Some(refusal) = refusal.as_ref().filter(|refusal| refusal.close) {
            // The response itself ends the connection: no need to read on.
            let head_only = head.method == Method::Head;
            return self.write_response(refusal.clone(), head_only, false);
        }
        if head.expect_continue && !decoder.is_done() {
            if let Some(refusal) = refusal {
                // Refuse before the body is sent; the client may send it
                // anyway, so the framing is lost: close afterwards.
                return self.write_response(refusal, head.method == Method::Head, false);
            }
            self.outbox.push(b"HTTP/1.1 100 Continue\r\n\r\n"[..].into());
        }
        let pending = Pending { head, refusal, decoder, body: Vec::new() };
        self.set_state(State::Reading(Some(Box::new(pending))));
    }

    /// Handles a request whose body has been read completely.
    fn finish_request<A: Application>(&mut self, app: &A, request: Pending) -> Option<A::Action> {
        let Pending { head, refusal, body, .. } = request;
        self.set_state(State::Reading(None));
        let (keep_alive, head_only) = (head.keep_alive, head.method == Method::Head);
        if let Some(refusal) = refusal {
            self.write_response(refusal, head_only, keep_alive);
            return None;
        }
        match app.handle(Request { head, body }) {
            Handled::Respond(response) => {
                self.write_response(response, head_only, keep_alive);
                None
            }
            Handled::Defer { action, headers } => {
                self.set_state(State::Waiting(Box::new(Deferred { keep_alive, head_only, headers })));
                Some(action)
            }
        }
    }

    /// Answers a request that broke the rules of HTTP, then closes: after a
    /// framing error we cannot know where the next request would start.
    fn refuse(&mut self, error: Error) {
        self.write_response(Response::error(error.status(), error.reason()), false, false);
    }

    /// Queues a complete response: no body for a `HEAD` request (the same
    /// head a `GET` gets), and the connection closes after it unless
    /// `keep_alive` (the request's wish) and the response agree.
    fn write_response(&mut self, response: Response, head_only: bool, keep_alive: bool) {
        let keep_alive = keep_alive && !response.close;
        let mut out = Vec::with_capacity(200 + response.body.as_ref().map_or(0, |body| body.len()));
        let mut headers = response.headers;
        if keep_alive {
            // Redundant for HTTP/1.1, needed by HTTP/1.0 clients that asked.
            headers.insert(headers.len().min(1), ("Connection", "keep-alive".into()));
        }
        let length = response.body.as_ref().map(|body| body.len());
        super::write_head(&mut out, response.status, &headers, length, !keep_alive);
        if let (Some(body), false) = (&response.body, head_only) {
            out.extend_from_slice(body);
        }
        self.outbox.push(out.into());
        self.count(response.status, response.refusal);
        if !keep_alive {
            self.set_state(State::Closing);
        }
    }

    /// The one place the state changes. Leaving `Reading` frees the input
    /// buffer, so a stream or a closing connection holds no read memory.
    fn set_state(&mut self, state: State) {
        if !matches!(state, State::Reading(_) | State::Waiting(_)) {
            self.input = Vec::new();
            self.scanned = 0;
            self.started = false;
        }
        self.state = state;
    }
}

#[cfg(test)]
mod tests {
    //! The machine with a stand-in application; the real one's routes,
    //! credentials and answers are tested through this machine in
    //! `crate::app`.

    use super::*;

    /// Answers `GET /now` at once, defers `GET /later` and `GET /stream`,
    /// refuses everything else on its head.
    struct Stub;

    impl Application for Stub {
        type Action = &'static str;

        fn screen(&self, head: &RequestHead) -> Result<(), Response> {
            match head.path.as_str() {
                "/now" | "/later" | "/stream" => Ok(()),
                _ => Err(Response::error(Status::NOT_FOUND, "not found")),
            }
        }

        fn handle(&self, request: Request) -> Handled<&'static str> {
            match request.head.path.as_str() {
                "/now" => Handled::Respond(Response::new(Status::OK, "text/plain", request.body)),
                path => Handled::Defer {
                    action: if path == "/later" { "later" } else { "stream" },
                    headers: vec![("X-Deferred", "yes".to_owned())],
                },
            }
        }

        fn log_line(&self, _: &RequestHead) -> Option<String> {
            None
        }
    }

    fn t0() -> Instant {
        use std::sync::OnceLock;
        static T0: OnceLock<Instant> = OnceLock::new();
        *T0.get_or_init(Instant::now)
    }

    fn written(conn: &mut Conn) -> String {
        let mut out = Vec::new();
        conn.outbox().flush(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn feed(conn: &mut Conn, input: &str) -> Option<&'static str> {
        conn.receive(input.as_bytes(), &Limits::default(), t0());
        conn.poll(&Stub, &Limits::default(), t0())
    }

    #[test]
    fn an_immediate_answer_gets_its_length_and_keeps_the_connection() {
        let mut conn = Conn::new(&Limits::default(), t0());
        let action = feed(&mut conn, "POST /now HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi");
        assert_eq!(action, None);
        let out = written(&mut conn);
        assert!(out.starts_with("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: keep-alive\r\n"), "{out}");
        assert!(out.ends_with("Content-Length: 2\r\n\r\nhi"), "{out}");
        assert_eq!(conn.socket_command(), SocketCommand::Keep);
    }

    #[test]
    fn head_gets_the_same_head_and_no_body() {
        let mut conn = Conn::new(&Limits::default(), t0());
        feed(&mut conn, "HEAD /now HTTP/1.1\r\nHost: x\r\n\r\n");
        let out = written(&mut conn);
        assert!(out.ends_with("Content-Length: 0\r\n\r\n"), "{out}");
    }

    #[test]
    fn a_deferred_request_waits_reads_nothing_and_gets_the_deferred_headers() {
        let mut conn = Conn::new(&Limits::default(), t0());
        let action = feed(&mut conn, "GET /later HTTP/1.1\r\nHost: x\r\n\r\nGET /now HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(action, Some("later"));
        assert_eq!(conn.read_budget(&Limits::default()), 0, "waiting for the server");
        assert_eq!(conn.deadline(), None, "the server answers, not the clock");
        assert_eq!(conn.poll(&Stub, &Limits::default(), t0()), None, "the pipelined request waits its turn");
        assert_eq!(written(&mut conn), "");
        conn.respond(Response::new(Status::OK, "text/plain", &b"done"[..]), &Limits::default(), t0());
        assert_eq!(conn.poll(&Stub, &Limits::default(), t0()), None);
        let out = written(&mut conn);
        assert!(out.contains("X-Deferred: yes\r\n") && out.contains("\r\n\r\ndoneHTTP/1.1 200 OK\r\n"), "{out}");
    }

    #[test]
    fn a_stream_has_no_length_and_no_read_buffer() {
        let mut conn = Conn::new(&Limits::default(), t0());
        assert_eq!(feed(&mut conn, "GET /stream HTTP/1.1\r\nHost: x\r\n\r\nGET /now HTTP/1.1\r\n"), Some("stream"));
        conn.open_stream(Response::stream("text/event-stream"));
        let out = written(&mut conn);
        assert!(out.contains("Connection: keep-alive\r\n") && out.contains("X-Deferred: yes\r\n"), "{out}");
        assert!(!out.contains("Content-Length"), "{out}");
        assert!(conn.is_streaming());
        assert_eq!(conn.input.capacity(), 0, "a stream holds no read buffer");
        assert_eq!(conn.deadline(), None);
    }

    #[test]
    fn a_refusal_reads_the_body_first_and_keeps_the_framing() {
        let mut conn = Conn::new(&Limits::default(), t0());
        let action = feed(
            &mut conn,
            "POST /nope HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET /now HTTP/1.1\r\nHost: x\r\n\r\n",
        );
        assert_eq!(action, None);
        let out = written(&mut conn);
        assert!(out.starts_with("HTTP/1.1 404 Not Found\r\n") && out.contains("HTTP/1.1 200 OK\r\n"), "{out}");
        let answered = conn.take_answered().unwrap();
        assert_eq!(answered.by_class, [0, 1, 0, 1, 0]);
        assert_eq!(answered.refusal, Some((Status::NOT_FOUND, "not found")));
    }

    fn at(secs: u64) -> Instant {
        t0() + Duration::from_secs(secs)
    }

    #[test]
    fn blank_lines_before_a_request_line_start_its_clock() {
        // RFC 9112 2.2 lets a server skip them, not forever: one blank line
        // now and then must not keep a connection without a request open.
        let limits = Limits::default();
        let start = at(1);
        for piece in [usize::MAX, 1] {
            let mut conn = Conn::new(&limits, t0());
            for (i, blank) in ["\r\n", "\n", "\r\n\n"].into_iter().enumerate() {
                let now = start + Duration::from_secs(3 * i as u64);
                for bytes in blank.as_bytes().chunks(piece) {
                    conn.receive(bytes, &limits, now);
                    assert_eq!(conn.poll(&Stub, &limits, now), None);
                }
                assert_eq!(conn.deadline(), Some(start + limits.header_timeout), "{blank:?} in pieces of {piece}");
            }
            conn.on_timeout(&limits, start + limits.header_timeout);
            let out = written(&mut conn);
            assert!(out.starts_with("HTTP/1.1 408 ") && out.contains("Connection: close\r\n"), "{out}");
        }
        // After an answer, blank lines in the same read as the request
        // start the next request's clock too, as if they came later.
        for piece in [usize::MAX, 1] {
            let mut conn = Conn::new(&limits, t0());
            for bytes in b"GET /now HTTP/1.1\r\nHost: x\r\n\r\n\r\n".chunks(piece) {
                conn.receive(bytes, &limits, start);
                conn.poll(&Stub, &limits, start);
            }
            assert_eq!(conn.deadline(), Some(start + limits.header_timeout), "in pieces of {piece}");
        }
    }

    #[test]
    fn a_closing_response_ends_the_connection_whatever_the_request_asked() {
        struct Closing;
        impl Application for Closing {
            type Action = ();
            fn screen(&self, _: &RequestHead) -> Result<(), Response> {
                Err(Response::error(Status::LENGTH_REQUIRED, "length required").closing())
            }
            fn handle(&self, _: Request) -> Handled<()> {
                unreachable!("screened out")
            }
            fn log_line(&self, _: &RequestHead) -> Option<String> {
                None
            }
        }
        let mut conn = Conn::new(&Limits::default(), t0());
        conn.receive(b"POST / HTTP/1.1\r\nHost: x\r\n\r\n", &Limits::default(), t0());
        conn.poll(&Closing, &Limits::default(), t0());
        let out = written(&mut conn);
        assert!(out.starts_with("HTTP/1.1 411 ") && out.contains("Connection: close\r\n"), "{out}");
        assert_eq!(conn.socket_command(), SocketCommand::ShutdownWrite);
    }
}
