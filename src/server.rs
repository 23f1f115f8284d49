//! The event loop: the only code that touches sockets.
//!
//! A server runs one event loop per `--threads` (one by default), each on
//! its own thread. A loop's `mio::Poll` watches its listening socket, its
//! waker, and its client connections. Connections live in a [`Slab`], and a
//! connection's slab key is its mio [`Token`]. The loop only moves bytes and
//! readiness; what the bytes mean is decided by [`Conn`] (per connection) and
//! [`Broker`] (broadcast); what the loops share is in [`Hub`].
//!
//! With several loops, each has its own listening socket on the same address
//! (`SO_REUSEPORT`), so the kernel spreads new connections across them with
//! no hand-off between threads; a connection then stays on its loop.
//!
//! Follow one publish from `accept` to the wire:
//!
//! 1. The listener is readable: `Server::accept` takes the pending
//!    connections (until `WouldBlock`, at most 256 a turn) and registers each
//!    for readability, with a fresh [`Conn`].
//! 2. A client is readable: `Server::drive` reads into one scratch buffer
//!    shared by all connections and gives the bytes to [`Conn::receive`].
//! 3. [`Conn::poll`] parses the request. A `POST /send-event` comes back as
//!    [`Action::Publish`]: the loop hands it to [`Hub::publish`], which
//!    numbers it, encodes it once ([`crate::sse::encode`]) and puts the frame
//!    in every loop's inbox; the loop then answers the publisher.
//! 4. When every ready connection has been handled, the loop takes its inbox
//!    into its broker and [`Broker::fan_out_some`] writes the new frames to
//!    the subscribers: one `write()` (or `writev()` for several events) per
//!    subscriber, straight from the loop, in slices of
//!    `FAN_OUT_PER_TURN` subscribers so the loop keeps reading meanwhile.
//!    Other loops, woken by the hub, do the same for theirs.
//! 5. Whatever a socket did not take stays in that connection's
//!    [`crate::outbox::Outbox`]; the loop then asks for `WRITABLE` readiness,
//!    and only until the outbox is empty again.
//!
//! mio's readiness is edge-triggered: an event means "something changed", so
//! every read loops until `WouldBlock`, `Interrupted` is retried, and an event
//! for a key that is no longer in the slab (a connection closed earlier in the
//! same batch) is ignored. When a connection stops reading before
//! `WouldBlock` (its budget ran out, or it is paused behind its own unread
//! answers), the loop itself must come back to it, since no new event will:
//! the `again` list and the flush-then-continue in `Server::drive` do that.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::Receiver;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use crate::api::Publish;
use crate::broker::{Broker, Delivery, EventId, Receipt, Subscriber};
use crate::bus::{Bus, BusConfig};
use crate::config::Config;
use crate::conn::{Action, Conn, Settings, SocketCommand, Subscribe};
use crate::hub::{Gauges, Hub, Message};
use crate::outbox::Flushed;
use crate::sse::Frame;

/// Token of the listening socket. Client keys come from the slab, which never
/// reaches these values.
const LISTENER: Token = Token(usize::MAX - 1);
/// Token of the waker other threads use to reach the loop.
const WAKER: Token = Token(usize::MAX - 2);
/// Token of the SIGINT/SIGTERM source, when signals are handled.
const SIGNALS: Token = Token(usize::MAX - 3);

/// How long accepting pauses after the process ran out of file descriptors.
/// The pending connections wait in the kernel's backlog meanwhile; retrying
/// at once would spin the loop at 100% CPU.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The answer to a connection over `--max-connections`, written once and
/// without waiting: a small static response fits any socket buffer.
const OVER_CAPACITY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n\
Content-Length: 32\r\nRetry-After: 1\r\nConnection: close\r\n\r\n{\"error\":\"too many connections\"}";

/// Size of the one read buffer shared by all connections. Connections keep
/// only what they have not parsed yet, so an idle one holds no read buffer.
const SCRATCH_BYTES: usize = 64 * 1024;

/// Most reads from one connection per readiness event. A client that keeps
/// its socket full is put back in line after this many, so it cannot starve
/// the others.
const MAX_READS_PER_EVENT: usize = 16;

/// Most connections accepted per loop turn, so a flood of new connections
/// cannot keep the loop from the ones it has.
const MAX_ACCEPTS_PER_TURN: usize = 256;

/// Most messages taken from a loop's inbox per turn, so a flood of events
/// from other loops cannot keep this one from its sockets (the rest wait for
/// the next turn, which then comes at once).
const MAX_INBOX_PER_TURN: usize = 4096;

/// How far past this node's clock a cluster id may be and still be taken as
/// one this node has not read yet: clocks of nodes and Redis differ a little,
/// and a node may lag. A client's id beyond it is treated as unknown (`gap`).
const AHEAD_OF_CLOCK_MS: u64 = 60_000;

/// Least number of events the cluster's Redis stream keeps (`MAXLEN`),
/// whatever `--history` says.
const MIN_STREAM_EVENTS: usize = 1000;

/// Most subscribers written to per loop turn. A pass over all subscribers
/// is cut into slices this size, and the loop polls between them: a publish
/// that arrives meanwhile is taken in at once and rides along in the same
/// writes to the subscribers not yet reached (see [`crate::broker`]), and
/// other connections are not kept waiting behind a long pass. At some 10 µs
/// per loopback write, a slice is a few milliseconds.
const FAN_OUT_PER_TURN: usize = 256;

/// Readiness events taken per `poll` call.
const EVENTS_CAPACITY: usize = 1024;

/// How long a [`Publisher`] waits for the cluster bus to answer before it
/// gives up (the bus itself answers within its socket timeouts).
const BUS_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// Most bytes of events a loop's broker holds unsent (beyond what a pass is
/// delivering). Past it, the loop leaves events in its inbox, which makes
/// the hub refuse publishes: memory stays bounded when subscribers are
/// slower than publishers.
const MAX_UNSENT_BYTES: usize = 32 * 1024 * 1024;

/// A bound server, ready to [`run`](Server::run): its event loops and what
/// they share.
pub struct Server {
    loops: Vec<Loop>,
    hub: Arc<Hub>,
    bus: Option<Arc<Bus>>,
    tick: bool,
    publisher: Publisher,
    handle: Handle,
}

/// One event loop: a poll, a listening socket, and the connections accepted
/// on it, with their broker and timers. Touched only by its own thread.
struct Loop {
    /// Which loop this is (0 is the first; it also takes the signals).
    index: usize,
    poll: Poll,
    listener: TcpListener,
    clients: Slab<Client>,
    broker: Broker,
    hub: Arc<Hub>,
    inbox: Receiver<Message>,
    /// The cluster bus (`--redis`): publishes go through it, and come back
    /// in the inbox like everyone else's.
    bus: Option<Arc<Bus>>,
    settings: Settings,
    /// Unsent bytes a subscriber may have before it is dropped as too slow.
    max_buffered_bytes: usize,
    heartbeat: Option<Duration>,
    scratch: Box<[u8]>,
    /// Connections that still had input when their read budget ran out.
    again: Vec<usize>,
    /// Subscribers whose last delivery needs a follow-up (see [`Delivery`]).
    attention: Vec<(usize, Delivery)>,
    handle: Handle,
    /// Deadlines of connections, earliest first. An entry is a reminder to
    /// look at the connection, which holds the authoritative deadline, so
    /// stale entries are harmless; each connection has at most a few.
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    /// Set while accepting pauses after running out of file descriptors.
    accept_paused_until: Option<Instant>,
    /// Whether we are in a run of `EMFILE`s (logged once per run).
    out_of_descriptors: bool,
    /// False once shutting down.
    accepting: bool,
    /// The inbox or the fan-out had more work after the last turn's bounded
    /// share: poll again at once.
    backlog_left: bool,
    /// Connections refused since the last log line about it.
    refused: usize,
    last_refusal_log: Option<Instant>,
    /// Counts accepted connections, to tell a connection from a later one
    /// with the same key (see [`Client::serial`]).
    serials: u32,
    signals: Option<signal_hook_mio::v1_0::Signals>,
    /// How long a graceful shutdown may take to flush and finish requests.
    shutdown_timeout: Duration,
    metrics: Metrics,
}

/// A connection as the loop sees it: the socket and its state machine.
struct Client {
    socket: TcpStream,
    conn: Conn,
    /// Membership in the broker while the connection is a subscriber.
    membership: Option<u32>,
    /// Whether WRITABLE interest is registered (only while output is queued).
    wants_writable: bool,
    /// Replay bytes still queued, allowed on top of `--max-buffered-bytes`: a
    /// resuming client gets its whole replay (frames shared with the history,
    /// so they cost no copy) before the cap applies to it.
    replay_grace: u32,
    /// The earliest reminder for this connection in the server's timers.
    scheduled: Option<Instant>,
    /// This connection's number on its loop: an answer that comes back
    /// later (from the cluster bus) names it, so that it cannot reach a
    /// newer connection that reused the slab key.
    serial: u32,
}

impl Subscriber for Client {
    fn deliver(&mut self, frames: &[Frame]) -> Delivery {
        match self.conn.outbox().send(frames, &mut self.socket) {
            Ok(Flushed::All) => Delivery::Done,
            Ok(Flushed::Partly) => Delivery::Queued,
            Err(_) => Delivery::Failed,
        }
    }
}

/// The loop's own counters, for `/metrics`. Plain integers: the loop is one
/// thread, so no atomics or locks are needed on the hot path; once per turn
/// they are copied into the loop's [`Gauges`] in the hub.
#[derive(Debug, Default)]
struct Metrics {
    /// Responses by status class, 1xx to 5xx.
    responses: [u64; 5],
    connections_accepted: u64,
    refused_over_capacity: u64,
    dropped_slow: u64,
}

/// Lets other threads stop a running server. Cheap to clone.
#[derive(Clone)]
pub struct Handle {
    stop: Arc<AtomicBool>,
    hub: Arc<Hub>,
}

impl Handle {
    /// Asks the server to stop; [`Server::run`] returns soon after.
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.hub.wake_all();
    }

    fn is_stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// Publishes into a running server from any thread. Cheap to clone.
///
/// An event goes through the [`Hub`] on the caller's thread, exactly like
/// one published with `POST /send-event`: numbered, framed once, and put in
/// every loop's inbox (each loop is woken through its [`mio::Waker`]) before
/// `publish` returns. On a cluster node it goes to Redis, and `publish`
/// returns once Redis took it.
#[derive(Clone)]
pub struct Publisher {
    hub: Arc<Hub>,
    bus: Option<Arc<Bus>>,
    stop: Arc<AtomicBool>,
}

/// Why a [`Publisher`] could not publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishError {
    /// The event is invalid (topic or event name); says what was wrong.
    Invalid(String),
    /// The server has stopped.
    Stopped,
    /// The cluster bus could not take it (Redis unreachable); says why.
    Unavailable(String),
}

impl std::fmt::Display for PublishError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PublishError::Invalid(why) => write!(f, "invalid event: {why}"),
            PublishError::Stopped => f.write_str("the server has stopped"),
            PublishError::Unavailable(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for PublishError {}

impl Publisher {
    /// Publishes `message` on the default topic, as `POST /send-event` does.
    pub fn send(&self, message: impl Into<String>) -> Result<(), PublishError> {
        self.publish(Publish::message(message))
    }

    /// Publishes an event with topics and an event name. Waits while a loop
    /// is more than [`crate::hub::MAX_INBOX_BYTES`] behind (back-pressure
    /// rather than unbounded memory); on a cluster node, waits for Redis.
    pub fn publish(&self, publish: Publish) -> Result<(), PublishError> {
        publish.validate().map_err(PublishError::Invalid)?;
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return Err(PublishError::Stopped);
            }
            if let Some(bus) = &self.bus {
                let (answer, answered) = crossbeam_channel::bounded(1);
                bus.submit(publish, Box::new(move |result| drop(answer.send(result))));
                return match answered.recv_timeout(BUS_ANSWER_TIMEOUT) {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(PublishError::Unavailable(e.to_string())),
                    Err(_) => Err(PublishError::Unavailable("redis did not answer in time".to_owned())),
                };
            }
            match self.hub.publish(&publish, None) {
                Ok(_) => return Ok(()),
                Err(crate::hub::Busy) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    }
}

impl Server {
    /// Binds the listening sockets (one per loop) and prepares the loops.
    pub fn bind(config: &Config) -> io::Result<Server> {
        let threads = config.threads();
        let reuse_port = threads > 1;
        let mut polls = Vec::with_capacity(threads);
        let mut listeners = Vec::with_capacity(threads);
        let mut addr = config.listen;
        for _ in 0..threads {
            let poll = Poll::new()?;
            // The first socket resolves port 0; the others share its port.
            let mut listener = listen(addr, reuse_port)?;
            addr = listener.local_addr()?;
            poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
            polls.push(poll);
            listeners.push(listener);
        }
        let wakers =
            polls.iter().map(|poll| Waker::new(poll.registry(), WAKER).map(Arc::new)).collect::<io::Result<_>>()?;
        let (hub, inboxes) = Hub::new(wakers, config.max_connections);
        let stop = Arc::new(AtomicBool::new(false));
        let handle = Handle { stop: stop.clone(), hub: hub.clone() };
        // A cluster node learns its history from Redis (Message::Backfill);
        // a lone server's starts empty at its own first id.
        let bus = match &config.redis {
            None => None,
            Some(url) => {
                // The stream keeps at least a thousand events, so that a node
                // that falls briefly behind (reconnecting) still finds them.
                let max_len = config.history.events.max(MIN_STREAM_EVENTS);
                let bus_config = BusConfig { url: url.clone(), prefix: config.redis_prefix.clone(), max_len };
                let bus = Bus::start(bus_config, hub.clone()).map_err(io::Error::other)?;
                Some(Arc::new(bus))
            }
        };
        let floor = if bus.is_some() { None } else { Some(hub.local_floor()) };
        let loops = polls
            .into_iter()
            .zip(listeners)
            .zip(inboxes)
            .enumerate()
            .map(|(index, ((poll, listener), messages))| {
                let mut broker = Broker::new(config.history, floor);
                broker.reserve(config.max_connections);
                Loop {
                    index,
                    poll,
                    listener,
                    // Reserved, not touched: only pages of slots in use become resident.
                    clients: Slab::with_capacity(config.max_connections),
                    broker,
                    hub: hub.clone(),
                    inbox: messages,
                    bus: bus.clone(),
                    settings: config.settings.clone(),
                    max_buffered_bytes: config.max_buffered_bytes,
                    heartbeat: (config.heartbeat_secs > 0).then(|| Duration::from_secs(config.heartbeat_secs)),
                    scratch: vec![0; SCRATCH_BYTES].into_boxed_slice(),
                    again: Vec::new(),
                    attention: Vec::new(),
                    handle: handle.clone(),
                    timers: BinaryHeap::new(),
                    accept_paused_until: None,
                    out_of_descriptors: false,
                    accepting: true,
                    backlog_left: false,
                    refused: 0,
                    last_refusal_log: None,
                    serials: 0,
                    signals: None,
                    shutdown_timeout: Duration::from_secs(config.shutdown_timeout_secs),
                    metrics: Metrics::default(),
                }
            })
            .collect();
        let publisher = Publisher { hub: hub.clone(), bus: bus.clone(), stop };
        Ok(Server { loops, hub, bus, tick: config.tick, publisher, handle })
    }

    /// Makes SIGINT and SIGTERM stop the server gracefully (the binary does
    /// this; a program embedding the server may prefer its own handling).
    pub fn stop_on_signals(&mut self) -> io::Result<()> {
        let mut signals =
            signal_hook_mio::v1_0::Signals::new([signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM])?;
        if let Some(first) = self.loops.first_mut() {
            first.poll.registry().register(&mut signals, SIGNALS, Interest::READABLE)?;
            first.signals = Some(signals);
        }
        Ok(())
    }

    /// The address the server listens on (useful after binding port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self.loops.first() {
            Some(first) => first.listener.local_addr(),
            None => Err(io::Error::other("no event loop")),
        }
    }

    /// How many event loops the server runs.
    pub fn threads(&self) -> usize {
        self.hub.loops()
    }

    /// A handle to stop the server from another thread.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// A handle to publish into the server from another thread.
    pub fn publisher(&self) -> Publisher {
        self.publisher.clone()
    }

    /// Runs the event loops (the first on this thread, the others on threads
    /// of their own) until [`Handle::shutdown`] or a signal, then shuts down
    /// gracefully (see `Loop::shut_down`). If any loop fails, all stop, and
    /// the first error is returned.
    pub fn run(self) -> io::Result<()> {
        if self.tick {
            let publisher = self.publisher();
            std::thread::Builder::new().name("bare-sse-ticker".into()).spawn(move || crate::ticker::run(publisher))?;
        }
        let mut loops = self.loops.into_iter();
        let first = loops.next();
        let mut others = Vec::new();
        for event_loop in loops {
            let name = format!("bare-sse-loop-{}", event_loop.index);
            match std::thread::Builder::new().name(name).spawn(move || event_loop.run()) {
                Ok(thread) => others.push(thread),
                Err(e) => {
                    self.handle.shutdown();
                    return Err(e);
                }
            }
        }
        let mut result = first.map_or(Ok(()), Loop::run);
        for thread in others {
            let outcome = thread.join().unwrap_or_else(|_| Err(io::Error::other("an event loop panicked")));
            result = result.and(outcome);
        }
        if let Some(bus) = &self.bus {
            bus.shutdown();
        }
        result
    }
}

impl Loop {
    /// Runs this loop until the server stops, then shuts it down gracefully.
    fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(EVENTS_CAPACITY);
        let mut next_heartbeat = self.heartbeat.map(|every| Instant::now() + every);
        while !self.handle.is_stopped() {
            if let Err(e) = self.turn(&mut events, next_heartbeat) {
                self.handle.shutdown();
                return Err(e);
            }
            if let (Some(at), Some(every)) = (next_heartbeat, self.heartbeat) {
                let now = Instant::now();
                if now >= at {
                    self.heartbeat();
                    // After a stall, beat again one interval from now rather
                    // than several times in a row.
                    next_heartbeat = Some(if now - at > every { now + every } else { at + every });
                }
            }
        }
        self.shut_down(&mut events)
    }

    /// One turn of the loop: wait for readiness (or the next deadline), handle
    /// it, expire timers, and fan out what was published.
    fn turn(&mut self, events: &mut Events, next_heartbeat: Option<Instant>) -> io::Result<()> {
        // Connections cut short last time are served again at once;
        // otherwise sleep until the earliest deadline, if any.
        let wake_at = [next_heartbeat, self.timers.peek().map(|Reverse((at, _))| *at), self.accept_paused_until]
            .into_iter()
            .flatten()
            .min();
        let timeout = if self.again.is_empty() && !self.backlog_left {
            wake_at.map(|at| at.saturating_duration_since(Instant::now()))
        } else {
            Some(Duration::ZERO)
        };
        match self.poll.poll(events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        for key in std::mem::take(&mut self.again) {
            self.drive(key);
        }
        for event in events.iter() {
            match event.token() {
                LISTENER => self.accept(),
                // Publisher queue and inbox are taken every turn (below).
                WAKER => {}
                SIGNALS => self.take_signals(),
                Token(key) => self.drive(key),
            }
        }
        self.backlog_left = false;
        self.take_inbox();
        let now = Instant::now();
        if self.accept_paused_until.is_some_and(|until| now >= until) {
            self.accept_paused_until = None;
            self.accept();
        }
        self.expire_timers(now);
        self.fan_out(FAN_OUT_PER_TURN);
        self.store_gauges();
        Ok(())
    }

    /// Graceful shutdown: stop accepting, let requests in flight finish and
    /// queued events drain to subscribers for at most the shutdown timeout,
    /// then close everything. Every event a publisher was answered for has
    /// been handed to the subscribers' sockets by then, unless a subscriber
    /// could not take it within the bound.
    fn shut_down(mut self, events: &mut Events) -> io::Result<()> {
        let _ = self.poll.registry().deregister(&mut self.listener);
        // From now on publishes are refused (503), so what is queued can only
        // shrink.
        self.accepting = false;
        let deadline = Instant::now() + self.shutdown_timeout;
        loop {
            self.send_everything_queued(deadline);
            let quiet: Vec<usize> =
                self.clients.iter_mut().filter(|(_, client)| client.conn.is_quiet()).map(|(key, _)| key).collect();
            for key in quiet {
                self.close(key);
            }
            if self.clients.is_empty() || Instant::now() >= deadline {
                self.store_gauges();
                return Ok(());
            }
            // Wake at least every 50 ms to check the deadline and quiet
            // connections.
            let soon = Instant::now() + Duration::from_millis(50);
            self.timers.push(Reverse((soon.min(deadline), usize::MAX)));
            self.turn(events, None)?;
        }
    }

    /// Hands every event published so far (in the inbox and the broker's
    /// unsent queue) to the subscribers' outboxes, so
    /// that no stream counts as quiet, and is closed, while an event it
    /// should get is still on its way. Every event answered before the stop
    /// is in this loop's inbox by then (the hub puts it in every inbox before
    /// the publisher is answered). Bounded by `deadline`.
    fn send_everything_queued(&mut self, deadline: Instant) {
        loop {
            self.take_inbox();
            if (!self.broker.has_pending() && self.inbox.is_empty()) || Instant::now() >= deadline {
                return;
            }
            self.fan_out(usize::MAX);
        }
    }

    /// Accepts every pending connection, within the connection cap.
    fn accept(&mut self) {
        if self.accept_paused_until.is_some() || !self.accepting {
            return;
        }
        for _ in 0..MAX_ACCEPTS_PER_TURN {
            match self.listener.accept() {
                Ok((mut socket, _peer)) if !self.hub.try_connect() => {
                    // Over the cap: a short answer, then close. A static
                    // response fits the fresh socket's buffer, so one
                    // non-blocking write suffices.
                    let _ = socket.write(OVER_CAPACITY);
                    let _ = socket.shutdown(Shutdown::Write);
                    self.metrics.refused_over_capacity += 1;
                    self.metrics.responses[4] += 1;
                    self.note_refused_connection();
                }
                Ok((mut socket, _peer)) => {
                    if std::mem::take(&mut self.out_of_descriptors) {
                        log::warn!("file descriptors available again; accepting");
                    }
                    // Frames are small and must go out now, not wait for the
                    // previous one's ACK (Nagle's algorithm).
                    let _ = socket.set_nodelay(true);
                    let entry = self.clients.vacant_entry();
                    let key = entry.key();
                    if self.poll.registry().register(&mut socket, Token(key), Interest::READABLE).is_ok() {
                        let now = Instant::now();
                        self.serials = self.serials.wrapping_add(1);
                        entry.insert(Client {
                            socket,
                            conn: Conn::new(&self.settings, now),
                            membership: None,
                            wants_writable: false,
                            replay_grace: 0,
                            scheduled: None,
                            serial: self.serials,
                        });
                        self.metrics.connections_accepted += 1;
                        self.schedule(key);
                    } else {
                        self.hub.disconnected();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.raw_os_error(), Some(EMFILE | ENFILE)) => {
                    if !std::mem::replace(&mut self.out_of_descriptors, true) {
                        log::warn!("out of file descriptors ({e}); retrying accept every {ACCEPT_BACKOFF:?}");
                    }
                    self.accept_paused_until = Some(Instant::now() + ACCEPT_BACKOFF);
                    return;
                }
                // The peer gave up before we accepted: nothing to do for that
                // connection; keep accepting.
                Err(e) if matches!(e.kind(), io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset) => {
                    continue;
                }
                // Anything else (ENOBUFS, ENOMEM...) may persist: back off
                // rather than spin.
                Err(e) => {
                    log::warn!("accept failed: {e}; retrying in {ACCEPT_BACKOFF:?}");
                    self.accept_paused_until = Some(Instant::now() + ACCEPT_BACKOFF);
                    return;
                }
            }
        }
        // A flood of connections: take the rest next turn, after serving the
        // connections we have. The listener will not signal again for them.
        self.accept_paused_until = Some(Instant::now());
    }

    /// Counts a connection refused for the cap, logging at most once a second.
    fn note_refused_connection(&mut self) {
        self.refused += 1;
        let now = Instant::now();
        if self.last_refusal_log.is_none_or(|at| now - at >= Duration::from_secs(1)) {
            log::warn!("refused {} connection(s): over --max-connections {}", self.refused, self.hub.max_connections());
            self.refused = 0;
            self.last_refusal_log = Some(now);
        }
    }

    fn take_signals(&mut self) {
        if let Some(signals) = &mut self.signals {
            for signal in signals.pending() {
                log::info!("signal {signal}: shutting down gracefully");
                self.handle.shutdown();
            }
        }
    }

    /// Puts a reminder in the timer queue for the connection's deadline,
    /// unless an earlier one is already there.
    fn schedule(&mut self, key: usize) {
        let Some(client) = self.clients.get_mut(key) else { return };
        if let Some(deadline) = client.conn.deadline().filter(|&d| client.scheduled.is_none_or(|at| d < at)) {
            client.scheduled = Some(deadline);
            self.timers.push(Reverse((deadline, key)));
        }
    }

    /// Handles the connections whose deadlines have passed.
    fn expire_timers(&mut self, now: Instant) {
        while let Some(&Reverse((at, key))) = self.timers.peek() {
            if at > now {
                return;
            }
            self.timers.pop();
            let Some(client) = self.clients.get_mut(key) else { continue };
            if client.scheduled == Some(at) {
                client.scheduled = None;
            }
            client.conn.on_timeout(&self.settings, now);
            self.take_notes(key);
            self.flush(key);
            self.schedule(key);
        }
    }

    /// Moves bytes for one connection: reads what it wants, lets it handle
    /// them, writes what it has queued, and closes it when it is finished.
    fn drive(&mut self, key: usize) {
        let mut reads = 0;
        loop {
            self.carry_out_actions(key);
            let Some(client) = self.clients.get_mut(key) else {
                return; // Closed earlier in this batch of events.
            };
            let budget = client.conn.read_budget(&self.settings).min(self.scratch.len());
            if budget == 0 {
                // Paused behind its own unread answers (pipelining): write
                // them now, and if that made room, parse and read on. Bytes
                // already received bring no new readiness event, so waiting
                // for one would stall the connection.
                if client.conn.is_paused_by_output() {
                    match client.conn.outbox().flush(&mut client.socket) {
                        Ok(_) if !client.conn.is_paused_by_output() => continue,
                        Ok(_) => {}
                        Err(_) => return self.close(key),
                    }
                }
                break;
            }
            if reads == MAX_READS_PER_EVENT {
                self.again.push(key);
                break;
            }
            reads += 1;
            match client.socket.read(&mut self.scratch[..budget]) {
                Ok(0) => client.conn.receive_eof(),
                Ok(n) => client.conn.receive(&self.scratch[..n], &self.settings, Instant::now()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.close(key),
            }
        }
        self.flush(key);
        self.schedule(key);
    }

    /// Lets a connection handle what it has received, and does what it asks.
    fn carry_out_actions(&mut self, key: usize) {
        loop {
            let Some(client) = self.clients.get_mut(key) else { return };
            let action = client.conn.poll(&self.settings, Instant::now());
            let Some(action) = action else { return self.take_notes(key) };
            match action {
                Action::Publish(_) if !self.accepting => {
                    client.conn.unavailable("shutting down", &self.settings, Instant::now());
                }
                Action::Publish(publish) => match &self.bus {
                    None => match self.hub.publish(&publish, Some(self.index)) {
                        Ok(receipt) => {
                            let id = receipt.id.to_string();
                            client.conn.published(&id, receipt.subscribers, &self.settings, Instant::now());
                        }
                        Err(crate::hub::Busy) => {
                            let why = "server busy: subscribers are behind; retry later";
                            client.conn.unavailable(why, &self.settings, Instant::now());
                        }
                    },
                    // The connection waits (Conn's Waiting state) until the
                    // bus's answer comes back through the inbox.
                    Some(bus) => {
                        let (hub, index, serial) = (self.hub.clone(), self.index, client.serial);
                        let topics = publish.topics.clone();
                        bus.submit(
                            publish,
                            Box::new(move |result| {
                                let answer = result
                                    .map(|id| Receipt { id, subscribers: hub.count_subscribers(&topics) })
                                    .map_err(|e| e.to_string());
                                hub.answer(index, key, serial, answer);
                            }),
                        );
                    }
                },
                Action::Health => {
                    let degraded = self.bus.as_ref().is_some_and(|bus| !bus.is_up());
                    let body: &[u8] = if degraded { b"degraded: redis unavailable\n" } else { b"ok\n" };
                    client.conn.answer("text/plain; charset=utf-8", body, &self.settings, Instant::now());
                }
                Action::Subscribe(subscribe) => self.subscribe(key, subscribe),
                Action::Metrics => {
                    self.store_gauges();
                    let text = self.render_metrics();
                    if let Some(client) = self.clients.get_mut(key) {
                        client.conn.answer(METRICS_CONTENT_TYPE, text.as_bytes(), &self.settings, Instant::now());
                    }
                }
            }
        }
    }

    /// Adds a new stream to the broker and queues its backlog (replay). The
    /// broker makes the seam between the two exact at any time, even in the
    /// middle of a fan-out pass.
    fn subscribe(&mut self, key: usize, subscribe: Subscribe) {
        let last_event_id = subscribe.last_event_id.as_deref();
        // The stream starts after every event sent so far: take the inbox
        // in first (a loop without streams is not woken for each publish).
        // And a client resuming here may have come from a loop further
        // along: every event another loop has sent out is in this loop's
        // inbox already (the hub fills every inbox before anyone is
        // answered), so after this its id is known here. A cluster node may
        // be behind the node the client came from by more than its inbox:
        // an id up to a minute past the node's clock is taken as one not
        // read yet (see Broker::subscribe_up_to).
        let newest = match &self.bus {
            None => {
                // (Only events come in a lone server's inbox; bounded by
                // the hub's backlog bound.) Announced first, so that no
                // event can slip in between unseen and unwoken.
                self.hub.stream_opening(self.index);
                while let Ok(message) = self.inbox.try_recv() {
                    self.take_message(message);
                }
                None
            }
            Some(_) => {
                let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
                Some(EventId { ms: now_ms.saturating_add(AHEAD_OF_CLOCK_MS), seq: u64::MAX })
            }
        };
        let joined = self.broker.subscribe_up_to(key, &subscribe.topics, last_event_id, newest);
        let Some(client) = self.clients.get_mut(key) else {
            return self.broker.unsubscribe(joined.membership);
        };
        self.hub.stream_opened(subscribe.topics.iter().map(String::as_str));
        client.membership = Some(joined.membership as u32);
        let backlog_bytes: usize = joined.backlog.iter().map(|frame| frame.len()).sum();
        client.replay_grace = u32::try_from(backlog_bytes).unwrap_or(u32::MAX);
        for frame in joined.backlog {
            client.conn.outbox().push(frame);
        }
    }

    /// Takes what the hub sent this loop: events into the broker (to go out
    /// at the next fan-out), and answers for waiting publishers. Bounded per
    /// turn, so a flood of events from other loops cannot keep this one from
    /// its sockets.
    fn take_inbox(&mut self) {
        for _ in 0..MAX_INBOX_PER_TURN {
            if self.broker.unsent_bytes() > MAX_UNSENT_BYTES {
                // Fan out first; what stays in the inbox holds publishers back.
                break;
            }
            let Ok(message) = self.inbox.try_recv() else { return };
            self.take_message(message);
        }
        self.backlog_left = true;
    }

    fn take_message(&mut self, message: Message) {
        match message {
            Message::Event(event) => {
                self.hub.taken(self.index, event.frame.len());
                self.broker.accept(event);
            }
            Message::Backfill(floor, events) => self.broker.backfill(floor, events.iter().cloned()),
            Message::Answer { key, serial, answer } => self.answer_publish(key, serial, answer),
        }
    }

    /// Answers a publish that waited for the cluster bus, if the connection
    /// that made it is still there.
    fn answer_publish(&mut self, key: usize, serial: u32, answer: Result<crate::broker::Receipt, String>) {
        let Some(client) = self.clients.get_mut(key).filter(|client| client.serial == serial) else { return };
        let now = Instant::now();
        match answer {
            Ok(receipt) => client.conn.published(&receipt.id.to_string(), receipt.subscribers, &self.settings, now),
            Err(why) => client.conn.unavailable(&why, &self.settings, now),
        }
        // A pipelined request may be waiting behind this one, in the
        // connection's input or still in the socket, and no readiness event
        // will come for bytes that have already arrived: go on as after a read.
        self.drive(key);
    }

    /// Copies this loop's counters into its gauges in the hub.
    fn store_gauges(&self) {
        let Some(gauges) = self.hub.gauges(self.index) else { return };
        let stats = self.broker.stats();
        let store = |gauge: &std::sync::atomic::AtomicU64, value: u64| gauge.store(value, Ordering::Relaxed);
        let Gauges { connections, streams, frames, bytes, heartbeats, dropped_slow, responses, accepted, refused } =
            gauges;
        store(connections, self.clients.len() as u64);
        store(streams, self.broker.subscribers() as u64);
        store(frames, stats.frames);
        store(bytes, stats.bytes);
        store(heartbeats, stats.heartbeats);
        store(dropped_slow, self.metrics.dropped_slow);
        for (gauge, &value) in responses.iter().zip(&self.metrics.responses) {
            store(gauge, value);
        }
        store(accepted, self.metrics.connections_accepted);
        store(refused, self.metrics.refused_over_capacity);
    }

    /// Writes a connection's queued output and applies its socket command.
    fn flush(&mut self, key: usize) {
        let Some(client) = self.clients.get_mut(key) else {
            return;
        };
        let flushed = match client.conn.outbox().flush(&mut client.socket) {
            Ok(flushed) => flushed,
            Err(_) => return self.close(key),
        };
        // The replay sits at the front of the queue, so once fewer bytes than
        // the grace are queued, that much of the replay has gone out.
        let queued = u32::try_from(client.conn.outbox().queued_bytes()).unwrap_or(u32::MAX);
        client.replay_grace = client.replay_grace.min(queued);
        let wants_writable = flushed == Flushed::Partly;
        if wants_writable != client.wants_writable {
            let interest = if wants_writable { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
            if self.poll.registry().reregister(&mut client.socket, Token(key), interest).is_err() {
                return self.close(key);
            }
            client.wants_writable = wants_writable;
        }
        match client.conn.socket_command() {
            SocketCommand::Keep => {}
            SocketCommand::ShutdownWrite => {
                let _ = client.socket.shutdown(Shutdown::Write);
                client.conn.write_side_closed();
            }
            SocketCommand::Close => self.close(key),
        }
    }

    /// Goes on with the fan-out for one slice of at most `budget` deliveries,
    /// and deals with the subscribers that could not take theirs at once.
    /// Notes when more is left, so the next turn comes at once.
    fn fan_out(&mut self, budget: usize) {
        if self.broker.has_pending() {
            let mut attention = std::mem::take(&mut self.attention);
            let more = self.broker.fan_out_some(&mut self.clients, &mut attention, budget);
            self.backlog_left |= more;
            self.attend(attention);
        }
    }

    /// Sends a heartbeat to the streams that were idle for an interval.
    fn heartbeat(&mut self) {
        let mut attention = std::mem::take(&mut self.attention);
        self.broker.heartbeat(&mut self.clients, &mut attention);
        self.attend(attention);
    }

    fn attend(&mut self, mut attention: Vec<(usize, Delivery)>) {
        for &(key, delivery) in &attention {
            let Some(client) = self.clients.get_mut(key) else { continue };
            match delivery {
                Delivery::Done => {}
                // Too far behind: drop it rather than buffer without bound. It
                // can reconnect with Last-Event-ID and replay what it missed.
                Delivery::Queued
                    if client.conn.outbox().queued_bytes()
                        > self.max_buffered_bytes.saturating_add(client.replay_grace as usize) =>
                {
                    self.metrics.dropped_slow += 1;
                    log::info!(
                        "{}: dropped, {} bytes behind",
                        peer(&client.socket),
                        client.conn.outbox().queued_bytes()
                    );
                    self.close(key);
                }
                // Registers WRITABLE interest; the rest goes out when the
                // socket drains.
                Delivery::Queued if !client.wants_writable => self.flush(key),
                Delivery::Queued => {}
                Delivery::Failed => self.close(key),
            }
        }
        attention.clear();
        self.attention = attention;
    }

    /// Counts a connection's answers and logs its refusal, if any.
    fn take_notes(&mut self, key: usize) {
        let Some(client) = self.clients.get_mut(key) else { return };
        let Some(notes) = client.conn.take_notes() else { return };
        for (total, count) in self.metrics.responses.iter_mut().zip(notes.by_class) {
            *total += u64::from(count);
        }
        if let Some((status, why)) = notes.refusal {
            log::info!("{}: {} {why}", peer(&client.socket), status.0);
        }
        for line in notes.access {
            log::info!("{} {line}", peer(&client.socket));
        }
    }

    /// The Prometheus text exposition of the server's state: sums over all
    /// loops (each loop's counters as of its last turn, this one's as of now).
    fn render_metrics(&self) -> String {
        use std::fmt::Write as _;
        let totals = self.hub.totals();
        let mut out = String::with_capacity(2048);
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let one = |value: u64| [(String::new(), value)];
        metric("bare_sse_connections", "gauge", "Open client connections.", &one(self.hub.connections() as u64));
        // Topics are named by clients, so their number is unbounded: only the
        // largest get a series of their own, which keeps this answer (and a
        // Prometheus server's memory) small whatever clients do.
        let (streams, topic_count, topics) = self.hub.streams(MAX_TOPIC_SERIES);
        metric("bare_sse_streams", "gauge", "Open event streams.", &one(streams as u64));
        metric("bare_sse_topics", "gauge", "Topics with subscribers.", &one(topic_count as u64));
        let topics: Vec<(String, u64)> =
            topics.into_iter().map(|(topic, n)| (format!("{{topic=\"{topic}\"}}"), n as u64)).collect();
        metric("bare_sse_subscribers", "gauge", "Open event streams by topic, for the largest topics only.", &topics);
        metric("bare_sse_events_published_total", "counter", "Events published.", &one(self.hub.events()));
        metric(
            "bare_sse_frames_delivered_total",
            "counter",
            "Event frames handed to subscribers.",
            &one(totals.frames),
        );
        metric(
            "bare_sse_delivered_bytes_total",
            "counter",
            "Bytes of event frames handed to subscribers.",
            &one(totals.bytes),
        );
        metric("bare_sse_heartbeats_total", "counter", "Heartbeat comments sent.", &one(totals.heartbeats));
        metric(
            "bare_sse_subscribers_dropped_slow_total",
            "counter",
            "Subscribers closed for falling more than --max-buffered-bytes behind.",
            &one(totals.dropped_slow),
        );
        let classes: Vec<(String, u64)> =
            totals.responses.iter().enumerate().map(|(i, &n)| (format!("{{class=\"{}xx\"}}", i + 1), n)).collect();
        metric("bare_sse_responses_total", "counter", "Responses sent, by status class.", &classes);
        metric("bare_sse_connections_accepted_total", "counter", "Connections accepted.", &one(totals.accepted));
        metric(
            "bare_sse_connections_refused_total",
            "counter",
            "Connections refused with 503 for being over --max-connections.",
            &one(totals.refused),
        );
        let per_loop = self.hub.per_loop();
        let by_loop = |pick: fn(&(u64, u64)) -> u64| -> Vec<(String, u64)> {
            per_loop.iter().enumerate().map(|(index, n)| (format!("{{loop=\"{index}\"}}"), pick(n))).collect()
        };
        metric("bare_sse_loop_connections", "gauge", "Open connections per event loop.", &by_loop(|n| n.0));
        metric("bare_sse_loop_streams", "gauge", "Open event streams per event loop.", &by_loop(|n| n.1));
        if let Some(bus) = &self.bus {
            metric("bare_sse_redis_up", "gauge", "1 while the cluster bus reaches Redis.", &one(bus.is_up() as u64));
        }
        metric("bare_sse_uptime_seconds", "gauge", "Seconds since the server started.", &one(self.hub.uptime_secs()));
        let version = format!("{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"));
        metric("bare_sse_build_info", "gauge", "Build information; always 1.", &[(version, 1)]);
        out
    }

    /// Forgets a connection; dropping the socket closes it (and removes it
    /// from the poll set).
    fn close(&mut self, key: usize) {
        let Some(client) = self.clients.try_remove(key) else { return };
        self.hub.disconnected();
        if let Some(membership) = client.membership.map(|m| m as usize) {
            self.hub.stream_closed(self.broker.topics_of(membership));
            self.broker.unsubscribe(membership);
        }
    }
}

/// Most topics given a `bare_sse_subscribers` series of their own.
const MAX_TOPIC_SERIES: usize = 100;

/// The listen backlog: connections the kernel completes before we accept them.
/// mio's default of 128 overflows when a thousand clients reconnect at once
/// (after a restart, say); the kernel caps this at `net.core.somaxconn`.
const LISTEN_BACKLOG: i32 = 4096;

/// A non-blocking listening socket with a deep backlog and `SO_REUSEADDR`
/// (so a restarted server can bind while old connections sit in TIME_WAIT),
/// and `SO_REUSEPORT` when there are several loops.
fn listen(addr: SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    // One listening socket per loop on the same port; the kernel spreads
    // new connections across them.
    socket.set_reuse_port(reuse_port)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(TcpListener::from_std(socket.into()))
}

/// The content type of the Prometheus text exposition format.
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The peer's address for a log line.
fn peer(socket: &TcpStream) -> String {
    socket.peer_addr().map_or_else(|_| "unknown peer".to_owned(), |addr| addr.to_string())
}

/// `EMFILE` and `ENFILE` on Linux: the process or the system is out of file
/// descriptors.
const EMFILE: i32 = 24;
const ENFILE: i32 = 23;

impl Drop for Loop {
    fn drop(&mut self) {
        // Once any loop is gone (done or failed) the others stop too, and
        // publishers fail fast.
        self.handle.shutdown();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn over_capacity_answer_is_well_formed() {
        let text = std::str::from_utf8(super::OVER_CAPACITY).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}\r\n", body.len())));
        assert!(serde_json::from_str::<serde_json::Value>(body).is_ok());
    }
}
