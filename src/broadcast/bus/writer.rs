//! The writing half of the bus: a connection that `XADD`s publishes, as a
//! state machine that never blocks, driven by whoever owns it.
//!
//! **Why not a thread.** A publish used to go from the event loop to a
//! writer thread and its answer back through the loop's inbox: two thread
//! wake-ups per pipeline, and, all on one core, pipelines about one
//! publish deep. The writer thread cost as much CPU as Redis itself. Now
//! each event loop owns a [`Writer`] on its own poll: the publishes of one
//! turn go out as one pipeline, in one `write`, at the end of the turn
//! ([`Writer::flush`]), and the replies wake the loop like any socket. The
//! bus still has a writer thread, for publishes from other threads
//! ([`super::Bus::submit`]: `Publisher`, `--tick`); it runs the same
//! machine on a poll of its own, and also watches Redis for `/healthz`
//! (reconnecting with backoff and pinging when idle: a `probe`).
//!
//! **The promises of the module docs of [`super`]** hold per connection:
//! every publish is answered once, within its deadline
//! ([`super::ANSWER_WITHIN`] after its submit): the oldest one waiting sets
//! when the connection is given up (`tick`), and everything still waiting
//! is then answered at once. [`BusError::Unavailable`] only for a publish of
//! which not a byte was written to the socket, [`BusError::Unanswered`] for
//! one that was (Redis runs whole commands it received, even after the
//! connection drops), or whose reply was not an id.
//!
//! A loop's writer connects when a publish needs it, and only while the bus
//! is known to be up ([`Health`]); otherwise the publish is refused at once,
//! as before. The handshake (`AUTH`, `SELECT`, `PING`) is written first and
//! nothing else until it is answered: an `XADD` pipelined behind a failed
//! `SELECT` would go to the wrong database.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::event::{Event, Source};
use mio::{Interest, Registry, Token};

use super::resp::{self, Value};
use super::{
    BACKOFF_FIRST, BACKOFF_MAX, BusError, CONNECT_TIMEOUT, IO_TIMEOUT, PING_IDLE, QUEUE_LEN, Role, Shared, Target,
    encode_mercure,
};
use crate::broadcast::event::{EventId, Publish};

/// Most bytes of commands a writer holds that Redis has not taken yet;
/// past this, a publish is refused (as over [`QUEUE_LEN`] publishes).
const OUT_BYTES: usize = 8 * 1024 * 1024;

/// A writer connection and what waits on it; `T` is what the owner needs to
/// answer a publish (the loop's connection key, or the thread's reply).
pub(crate) struct Writer<T> {
    shared: Arc<Shared>,
    token: Token,
    /// Reconnect on its own, with backoff, and ping when idle (the bus's
    /// thread); a loop's writer does neither.
    probe: bool,
    conn: Option<Conn>,
    /// When a probe tries to connect again.
    retry_at: Instant,
    backoff: Duration,
    /// Failed attempts so far: each starts at another of the host's
    /// addresses, so one that refuses (say `::1`) is not the only one tried.
    failures: usize,
    /// Commands not written yet.
    out: Vec<u8>,
    /// Bytes ever written, on any connection: `out` starts there, and a
    /// command went out (at least in part) if `written` is past its start.
    written: u64,
    /// Until the handshake is answered, nothing past it is written.
    hello_end: u64,
    /// What waits for a reply (or to be written), in order.
    waiting: VecDeque<Waiting<T>>,
    /// Bytes read and not parsed yet (part of a reply).
    input: Vec<u8>,
    answers: Vec<Answer<T>>,
    /// When the connection last did something, for the probe's ping.
    active_at: Instant,
}

/// A publish's tag and its stream id, or why not.
pub(crate) type Answer<T> = (T, Result<EventId, BusError>);

struct Conn {
    stream: Stream,
    /// Whether the non-blocking connect completed.
    connected: bool,
}

struct Waiting<T> {
    what: What<T>,
    /// Where its command starts, counted as `Writer::written`.
    start: u64,
    deadline: Instant,
}

enum What<T> {
    /// A command of the handshake (its last is a `PING`).
    Hello,
    /// The probe's idle `PING`.
    Ping,
    Publish(T),
}

impl<T> Writer<T> {
    pub(super) fn new(shared: Arc<Shared>, token: Token, probe: bool) -> Writer<T> {
        let now = Instant::now();
        Writer {
            shared,
            token,
            probe,
            conn: None,
            retry_at: now,
            backoff: BACKOFF_FIRST,
            failures: 0,
            out: Vec::new(),
            written: 0,
            hello_end: 0,
            waiting: VecDeque::new(),
            input: Vec::new(),
            answers: Vec::new(),
            active_at: now,
        }
    }

    /// Queues an `XADD` of `publish`, written at the next [`Writer::flush`];
    /// its answer comes out of [`Writer::take_answers`] by `deadline`, with
    /// what `tag` makes of the publish. `Err` if it cannot be sent: never
    /// sent, so not published.
    pub(crate) fn submit(
        &mut self,
        registry: &Registry,
        publish: Publish,
        deadline: Instant,
        tag: impl FnOnce(Publish) -> T,
    ) -> Result<(), (T, BusError)> {
        let refusal = if self.waiting.len() >= QUEUE_LEN || self.out.len() >= OUT_BYTES {
            Some("too many publishes waiting for redis".to_owned())
        } else if self.conn.is_none() {
            let down = self.shared.health().writer_down();
            down.map_or_else(|| self.connect(registry).err(), Some)
        } else {
            None
        };
        if let Some(why) = refusal {
            return Err((tag(publish), BusError::Unavailable(why)));
        }
        let start = self.out.len();
        self.encode_xadd(&publish);
        self.push(What::Publish(tag(publish)), start, deadline);
        Ok(())
    }

    /// Handles readiness of the connection: the end of a connect, replies
    /// to read, room to write.
    pub(crate) fn ready(&mut self, event: &Event) {
        let Some(conn) = &mut self.conn else { return };
        if !conn.connected {
            match conn.stream.connected() {
                Ok(true) => conn.connected = true,
                Ok(false) => return,
                Err(e) => return self.fail(format!("connect: {e}")),
            }
        }
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            self.read();
        }
        self.flush();
    }

    /// Reads the replies that have come, without waiting for a readiness
    /// event: for an owner that was busy since its last poll (Redis may
    /// have answered meanwhile, and the answers need not wait a whole turn).
    pub(crate) fn read_now(&mut self) {
        if self.conn.as_ref().is_some_and(|conn| conn.connected) && !self.waiting.is_empty() {
            self.read();
        }
    }

    /// Gives the connection up if the oldest thing waiting is past its
    /// deadline; a probe also reconnects and pings when it is time.
    pub(crate) fn tick(&mut self, registry: &Registry, now: Instant) {
        if self.waiting.front().is_some_and(|oldest| oldest.deadline <= now) {
            self.fail("timed out".to_owned());
        }
        if !self.probe {
            return;
        }
        match &self.conn {
            None if now >= self.retry_at => {
                // A failure is recorded in `connect`.
                let _ = self.connect(registry);
            }
            Some(_) if self.waiting.is_empty() && now >= self.active_at + PING_IDLE => {
                let start = self.out.len();
                resp::command(&mut self.out, 1);
                resp::arg(&mut self.out, b"PING");
                self.push(What::Ping, start, now + IO_TIMEOUT);
            }
            _ => {}
        }
    }

    /// Writes what is queued, as much as the socket takes now.
    pub(crate) fn flush(&mut self) {
        let Some(conn) = self.conn.as_mut().filter(|conn| conn.connected) else { return };
        let handshaking = matches!(self.waiting.front(), Some(Waiting { what: What::Hello, .. }));
        let limit = if handshaking { (self.hello_end - self.written) as usize } else { self.out.len() };
        let mut sent = 0;
        let mut failed = None;
        while sent < limit {
            match conn.stream.write(&self.out[sent..limit]) {
                Ok(0) => failed = Some("connection closed".to_owned()),
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => failed = Some(e.to_string()),
            }
            if failed.is_some() {
                break;
            }
        }
        self.out.drain(..sent);
        self.written += sent as u64;
        if let Some(why) = failed {
            self.fail(why);
        }
    }

    /// The answers ready since the last call, in the order of the submits.
    pub(crate) fn take_answers(&mut self) -> Vec<Answer<T>> {
        std::mem::take(&mut self.answers)
    }

    /// When [`Writer::tick`] has something to do (and at once if answers
    /// are waiting to be taken).
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        if !self.answers.is_empty() {
            return Some(Instant::now());
        }
        // Deadlines grow along the queue: the handshake's come first, and
        // publishes are queued in the order of their submits.
        let oldest = self.waiting.front().map(|waiting| waiting.deadline);
        let probe = match &self.conn {
            _ if !self.probe => None,
            None => Some(self.retry_at),
            Some(_) if self.waiting.is_empty() => Some(self.active_at + PING_IDLE),
            Some(_) => None,
        };
        oldest.into_iter().chain(probe).min()
    }

    /// Answers everything waiting with `why` (the bus stopped) and closes.
    pub(crate) fn close(&mut self, why: &str) {
        self.drop_connection(why);
    }

    /// Starts a connection: a non-blocking connect, with the handshake
    /// queued. `Err` (recorded as an outage) if it cannot even start.
    fn connect(&mut self, registry: &Registry) -> Result<(), String> {
        let now = Instant::now();
        let attempt = self.shared.target.open(self.failures).and_then(|mut stream| {
            registry.register(&mut stream, self.token, Interest::READABLE | Interest::WRITABLE)?;
            Ok(stream)
        });
        match attempt {
            Ok(stream) => {
                self.conn = Some(Conn { stream, connected: false });
                let start = self.out.len();
                self.out.extend_from_slice(&self.shared.hello);
                for _ in 0..self.shared.hello_commands {
                    self.push(What::Hello, start, now + CONNECT_TIMEOUT);
                }
                self.hello_end = self.written + self.out.len() as u64;
                self.active_at = now;
                Ok(())
            }
            Err(e) => {
                let why = format!("connect: {e}");
                self.give_up(&why);
                Err(why)
            }
        }
    }

    /// Records a command just put in `out` from `start` on.
    fn push(&mut self, what: What<T>, start: usize, deadline: Instant) {
        self.waiting.push_back(Waiting { what, start: self.written + start as u64, deadline });
    }

    /// Reads and handles every reply that has arrived.
    fn read(&mut self) {
        let mut buffer = [0u8; 16 * 1024];
        loop {
            let Some(conn) = &mut self.conn else { return };
            match conn.stream.read(&mut buffer) {
                Ok(0) => return self.fail("connection closed by redis".to_owned()),
                Ok(n) => {
                    self.input.extend_from_slice(&buffer[..n]);
                    // A short read emptied the socket, and what arrives
                    // after it raises a new readiness event (epoll and
                    // kqueue report every arrival in edge mode; nginx stops
                    // on a short read the same way): the read that would
                    // only say WouldBlock, one per pipeline, is saved.
                    if n < buffer.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return self.fail(e.to_string()),
            }
        }
        let mut at = 0;
        let mut worked = false;
        let result = loop {
            match resp::parse(&self.input[at..]) {
                Ok(Some((reply, used))) => {
                    at += used;
                    let Some(waiting) = self.waiting.pop_front() else {
                        break Err("a reply nobody asked for".to_owned());
                    };
                    match answer(waiting.what, reply) {
                        Ok(None) => worked = true,
                        Ok(Some(answer)) => {
                            self.answers.push(answer);
                            worked = true;
                        }
                        Err(why) => break Err(why),
                    }
                }
                Ok(None) => break Ok(()),
                Err(why) => break Err(format!("unexpected reply: {why}")),
            }
        };
        self.input.drain(..at);
        if worked {
            self.active_at = Instant::now();
            self.backoff = BACKOFF_FIRST;
            self.shared.set_up(Role::Writer, Ok(()));
        }
        if let Err(why) = result {
            self.fail(why);
        }
    }

    /// The connection failed: answers everything waiting, and (for a probe)
    /// tries again after the backoff.
    fn fail(&mut self, why: String) {
        self.drop_connection(&why);
        self.give_up(&why);
    }

    fn give_up(&mut self, why: &str) {
        self.failures = self.failures.wrapping_add(1);
        self.retry_at = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        self.shared.set_up(Role::Writer, Err(why.to_owned()));
    }

    /// Closes the connection and answers every publish waiting: perhaps
    /// published if any of its command was written, not published otherwise.
    fn drop_connection(&mut self, why: &str) {
        for waiting in self.waiting.drain(..) {
            if let What::Publish(tag) = waiting.what {
                let error = if self.written > waiting.start {
                    BusError::Unanswered(why.to_owned())
                } else {
                    BusError::Unavailable(why.to_owned())
                };
                self.answers.push((tag, Err(error)));
            }
        }
        self.conn = None;
        self.out.clear();
        self.input.clear();
    }

    /// `XADD key MAXLEN ~ n * data ... topics ...|mercure ... [event ...]`,
    /// encoded straight into `out`.
    fn encode_xadd(&mut self, publish: &Publish) {
        let out = &mut self.out;
        resp::command(out, 10 + if publish.event.is_some() { 2 } else { 0 });
        out.extend_from_slice(&self.shared.xadd_head);
        resp::arg(out, b"data");
        resp::arg(out, publish.message.as_bytes());
        match &publish.mercure {
            // Seeds topics cannot contain a comma; Mercure topics can.
            None => {
                resp::arg(out, b"topics");
                resp::arg_joined(out, &publish.topics, b',');
            }
            Some(mercure) => {
                resp::arg(out, b"mercure");
                resp::arg(out, encode_mercure(publish, mercure).as_bytes());
            }
        }
        if let Some(event) = &publish.event {
            resp::arg(out, b"event");
            resp::arg(out, event.as_bytes());
        }
    }
}

/// What a reply means for what waited on it: `Ok(Some)` an answer to hand
/// on, `Ok(None)` nothing to hand on, `Err` the connection must go.
fn answer<T>(what: What<T>, reply: Value<'_>) -> Result<Option<Answer<T>>, String> {
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    match (what, reply) {
        (What::Hello | What::Ping, Value::SimpleString(_)) => Ok(None),
        (What::Hello | What::Ping, Value::Error(e)) => Err(text(e)),
        (What::Hello | What::Ping, _) => Err("unexpected reply to the handshake or PING".to_owned()),
        // Refused (say WRONGTYPE): not in the stream.
        (What::Publish(tag), Value::Error(e)) => Ok(Some((tag, Err(BusError::Unavailable(text(e)))))),
        (What::Publish(tag), reply) => {
            let id = match reply {
                Value::BulkString(id) => std::str::from_utf8(id).ok().and_then(EventId::parse),
                _ => None,
            };
            // Something came back, just not an id: Redis may still have
            // added the entry.
            let result = id.ok_or_else(|| BusError::Unanswered("unexpected reply to XADD".to_owned()));
            Ok(Some((tag, result)))
        }
    }
}

/// A TCP or Unix socket to Redis, non-blocking.
pub(super) enum Stream {
    Tcp(mio::net::TcpStream),
    Unix(mio::net::UnixStream),
}

impl Target {
    /// Starts a non-blocking connect to the first address that takes one,
    /// from the `first`th on, round (a host name is resolved by the reader
    /// thread, never here).
    fn open(&self, first: usize) -> io::Result<Stream> {
        match self {
            Target::Unix(path) => mio::net::UnixStream::connect(path).map(Stream::Unix),
            Target::Tcp { resolved, .. } => {
                let mut addrs: Vec<SocketAddr> = super::lock(resolved).clone();
                let mut last = io::Error::new(io::ErrorKind::NotFound, "redis host not resolved yet");
                if !addrs.is_empty() {
                    let len = addrs.len();
                    addrs.rotate_left(first % len);
                }
                for addr in addrs {
                    match mio::net::TcpStream::connect(addr) {
                        Ok(stream) => {
                            let _ = stream.set_nodelay(true);
                            return Ok(Stream::Tcp(stream));
                        }
                        Err(e) => last = e,
                    }
                }
                Err(last)
            }
        }
    }
}

impl Stream {
    /// Whether the non-blocking connect completed (`Err` if it failed), as
    /// mio says to ask: the socket's error first, then its peer.
    fn connected(&mut self) -> io::Result<bool> {
        let (error, peer) = match self {
            Stream::Tcp(stream) => (stream.take_error()?, stream.peer_addr().map(drop)),
            Stream::Unix(stream) => (stream.take_error()?, stream.peer_addr().map(drop)),
        };
        if let Some(e) = error {
            return Err(e);
        }
        match peer {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
            Err(e) => Err(e),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(stream) => stream.read(buf),
            Stream::Unix(stream) => stream.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(stream) => stream.write(buf),
            Stream::Unix(stream) => stream.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Source for Stream {
    fn register(&mut self, registry: &Registry, token: Token, interests: Interest) -> io::Result<()> {
        match self {
            Stream::Tcp(stream) => stream.register(registry, token, interests),
            Stream::Unix(stream) => stream.register(registry, token, interests),
        }
    }

    fn reregister(&mut self, registry: &Registry, token: Token, interests: Interest) -> io::Result<()> {
        match self {
            Stream::Tcp(stream) => stream.reregister(registry, token, interests),
            Stream::Unix(stream) => stream.reregister(registry, token, interests),
        }
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        match self {
            Stream::Tcp(stream) => stream.deregister(registry),
            Stream::Unix(stream) => stream.deregister(registry),
        }
    }
}
