//! One event loop: readiness, reads and writes, timers, and carrying out
//! what the application asks for. The module doc of [`crate::server`]
//! follows one publish through it.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io::{self, Read};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::Receiver;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use super::accept::Acceptor;
use super::{Handle, Shared};
use crate::app::mercure::{self, Listing, MercureSubscribe, Next};
use crate::app::{Action, App, Subscribe};
use crate::broadcast::broker::{Broker, Delivery, Joined, Replay, Subscriber};
use crate::broadcast::bus::{ANSWER_WITHIN, Bus, BusError, Writer};
use crate::broadcast::event::{EventId, Publish, Receipt};
use crate::broadcast::hub::{Busy, Gauges, Hub, Message, Origin};
use crate::broadcast::presence::{Presence, Seen};
use crate::broadcast::roster::{Change, ListRequest, Roster};
use crate::config::Config;
use crate::http::conn::{Conn, SocketCommand};
use crate::http::outbox::Flushed;
use crate::http::{Response, Status};
use crate::sse::Frame;

/// Token of the listening socket. Client keys come from the slab, which never
/// reaches these values.
pub(super) const LISTENER: Token = Token(usize::MAX - 1);
/// Token of the waker other threads use to reach the loop.
pub(super) const WAKER: Token = Token(usize::MAX - 2);
/// Token of the shutdown signals (SIGINT, SIGTERM, SIGQUIT), when handled.
const SIGNALS: Token = Token(usize::MAX - 3);
/// Token of the loop's own connection to Redis (`--redis`), its bus writer.
const BUS_WRITER: Token = Token(usize::MAX - 4);

/// Size of the one read buffer shared by all connections. Connections keep
/// only what they have not parsed yet, so an idle one holds no read buffer.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// Most reads from one connection per readiness event. A client that keeps
/// its socket full is put back in line after this many, so it cannot starve
/// the others.
const MAX_READS_PER_EVENT: usize = 16;

/// Most messages taken from a loop's inbox per turn, so a flood of events
/// from other loops cannot keep this one from its sockets (the rest wait for
/// the next turn, which then comes at once).
const MAX_INBOX_PER_TURN: usize = 4096;

/// How far past this node's clock a cluster id may be and still be taken as
/// one this node has not read yet: clocks of nodes and Redis differ a little,
/// and a node may lag. A client's id beyond it is treated as unknown (`gap`).
const AHEAD_OF_CLOCK_MS: u64 = 60_000;

/// Most subscribers written to per loop turn. A pass over all subscribers
/// is cut into slices this size, and the loop polls between them: a publish
/// that arrives meanwhile is taken in at once and rides along in the same
/// writes to the subscribers not yet reached (see [`crate::broadcast::broker`]), and
/// other connections are not kept waiting behind a long pass. At some 10 µs
/// per loopback write, a slice is a few milliseconds.
const FAN_OUT_PER_TURN: usize = 256;

/// Most bytes of a replay handed to a connection at a time: the next piece
/// is taken from the history once the socket has taken this one.
const REPLAY_CHUNK_BYTES: usize = 32 * 1024;

/// How long a subscription listing may take to write: a client that stops
/// reading is closed then, rather than holding its connection.
const LISTING_TIMEOUT: Duration = Duration::from_secs(60);

/// Pieces of a replay written per flush of a connection whose socket keeps
/// taking them (a fast reader); then it waits for the next turn, so that one
/// long replay cannot hold up the loop.
const REPLAY_CHUNKS_PER_FLUSH: usize = 16;

/// What a replaying socket may hold unsent in the kernel
/// (`TCP_NOTSENT_LOWAT`): beyond it, writes would block. Without it the
/// kernel would take megabytes per connection (send buffers grow to
/// `tcp_wmem`), so a crowd asking for the whole history at once pinned
/// gigabytes of kernel memory and kept the loop copying. Reset to the
/// system's default once the replay is done.
const REPLAY_NOTSENT_BYTES: u32 = 16 * 1024;

/// The pace at which a shutdown ends streams (all loops together), so that
/// a crowd of clients comes back over seconds rather than all at once.
const SHUTDOWN_ENDS_PER_SEC: u64 = 1000;

/// Fewest streams (all loops together) whose ends a shutdown spreads out;
/// fewer are a burst too small to matter, and are closed at once after
/// their last event, as they always were.
const DRAIN_MIN_STREAMS: usize = 100;

/// Readiness events taken per `poll` call.
const EVENTS_CAPACITY: usize = 1024;

/// Most bytes of events a loop's broker holds unsent (beyond what a pass is
/// delivering). Past it, the loop leaves events in its inbox, which makes
/// the hub refuse publishes: memory stays bounded when subscribers are
/// slower than publishers.
const MAX_UNSENT_BYTES: usize = 32 * 1024 * 1024;

/// One event loop: a poll, a listening socket, and the connections accepted
/// on it, with their broker and timers. Touched only by its own thread.
pub(super) struct Loop {
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
    /// This loop's connection to the bus, which `XADD`s its publishes: the
    /// ones of a turn go out together at its end (see `Loop::bus_turn`).
    bus_writer: Option<Writer<BusPublish>>,
    app: App,
    /// Unsent bytes a subscriber may have before it is dropped as too slow.
    max_buffered_bytes: usize,
    /// Bytes all subscribers of all loops may have queued (see
    /// `Loop::keep_within_budget`).
    max_queued_bytes: usize,
    /// What this loop's streams have queued: the sum of their
    /// [`Client::pinned`].
    pinned: usize,
    /// Most open streams on all loops (`Config::stream_cap`).
    max_streams: usize,
    /// Spreads the `retry:` of the streams the server ends.
    jitter: Jitter,
    heartbeat: Option<Duration>,
    /// The one read buffer, shared by all connections.
    read_buffer: Box<[u8]>,
    /// Connections that still had input when their read budget ran out:
    /// served again next turn, since no readiness event will come for them.
    unfinished_reads: Vec<usize>,
    /// Replaying connections whose socket was still taking bytes when their
    /// share of a flush ran out: flushed again next turn, since no
    /// readiness event will come for them.
    unfinished_replays: Vec<usize>,
    /// Subscribers whose last delivery needs a follow-up (see [`Delivery`]).
    follow_ups: Vec<(usize, Delivery)>,
    handle: Handle,
    /// Deadlines of connections, earliest first. An entry is a reminder to
    /// look at the connection, which holds the authoritative deadline, so
    /// stale entries are harmless; each connection has at most a few.
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    acceptor: Acceptor,
    /// False once shutting down: publishes are refused from then on.
    accepting: bool,
    /// The inbox or the fan-out had more work after the last turn's bounded
    /// share: poll again at once.
    backlog_left: bool,
    /// Counts accepted connections, to tell a connection from a later one
    /// with the same key (see [`Client::serial`]).
    serials: u32,
    signals: Option<signal_hook_mio::v1_0::Signals>,
    /// How long a graceful shutdown may take to flush and finish requests.
    shutdown_timeout: Duration,
    counters: Counters,
    /// Who is subscribed, on every loop (`--mercure-subscriptions`).
    presence: Option<Arc<Presence>>,
    /// On a cluster node: every node's subscriptions, in Redis.
    roster: Option<Arc<Roster>>,
    /// Subscription API answers being written, by connection: each goes
    /// out a piece at a time as the socket takes it (like a replay).
    listings: HashMap<usize, Listing>,
}

/// A publish waiting for the bus: who made it, and what its receipt needs
/// (the publish without its message).
struct BusPublish {
    key: usize,
    serial: u32,
    publish: Publish,
}

/// A connection as the loop sees it: the socket and its state machine.
struct Client {
    socket: TcpStream,
    conn: Conn,
    /// Membership in the broker while the connection is a subscriber.
    membership: Option<u32>,
    /// Whether WRITABLE interest is registered (only while output is queued).
    wants_writable: bool,
    /// Whether the connection is catching up on a replay, which goes out as
    /// the socket drains (see `Loop::flush`).
    replaying: bool,
    /// The earliest reminder for this connection in the server's timers.
    scheduled: Option<Instant>,
    /// This connection's number on its loop: an answer that comes back
    /// later (from the cluster bus) names it, so that it cannot reach a
    /// newer connection that reused the slab key.
    serial: u32,
    /// What this stream's outbox holds, as of the last time the loop looked
    /// ([`crate::http::outbox::Outbox::pinned_bytes`]); 0 for other
    /// connections.
    pinned: u32,
    /// A stream the server is ending (turned away, or at shutdown): once its
    /// outbox, which ends with a `retry:`, is written, it closes.
    ending: bool,
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
struct Counters {
    /// Responses by status class, 1xx to 5xx.
    responses: [u64; 5],
    connections_accepted: u64,
    dropped_slow: u64,
    /// Streams turned away over `--max-streams` (or while shutting down).
    turned_away: u64,
    /// Subscription events the hub refused (see `Loop::announce`).
    announcements_dropped: u64,
}

/// A small xorshift generator for jitter; nothing here needs more.
#[derive(Debug)]
struct Jitter(u64);

impl Jitter {
    fn new() -> Jitter {
        use std::hash::{BuildHasher, Hasher};
        // RandomState's keys differ per process and per instance.
        let seed = std::collections::hash_map::RandomState::new().build_hasher().finish();
        Jitter(seed | 1)
    }

    /// A number in `0..bound` (0 for a bound of 0).
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0.checked_rem(bound).unwrap_or(0)
    }
}

impl Loop {
    /// A loop on its own poll and listener, taking events from `inbox`.
    pub(super) fn new(
        config: &Config,
        index: usize,
        poll: Poll,
        listener: TcpListener,
        inbox: Receiver<Message>,
        shared: &Shared,
    ) -> Loop {
        let mut broker = Broker::new(config.history, shared.floor);
        broker.reserve(config.max_connections);
        Loop {
            index,
            poll,
            listener,
            // Reserved, not touched: only pages of slots in use become resident.
            clients: Slab::with_capacity(config.max_connections),
            broker,
            hub: shared.hub.clone(),
            inbox,
            bus: shared.bus.clone(),
            bus_writer: shared.bus.as_ref().map(|bus| bus.loop_writer(BUS_WRITER)),
            app: App::new(config.settings.clone()),
            max_buffered_bytes: config.max_buffered_bytes,
            max_queued_bytes: config.max_queued_bytes,
            pinned: 0,
            max_streams: config.stream_cap(),
            jitter: Jitter::new(),
            heartbeat: (config.heartbeat_secs > 0).then(|| Duration::from_secs(config.heartbeat_secs)),
            read_buffer: vec![0; READ_BUFFER_BYTES].into_boxed_slice(),
            unfinished_reads: Vec::new(),
            unfinished_replays: Vec::new(),
            follow_ups: Vec::new(),
            handle: shared.handle.clone(),
            timers: BinaryHeap::new(),
            acceptor: Acceptor::new(),
            accepting: true,
            backlog_left: false,
            serials: 0,
            signals: None,
            shutdown_timeout: Duration::from_secs(config.shutdown_timeout_secs),
            counters: Counters::default(),
            presence: shared.presence.clone(),
            roster: shared.roster.clone(),
            listings: HashMap::new(),
        }
    }

    /// Makes this loop take SIGINT and SIGTERM (the first loop does).
    pub(super) fn take_signals_from(&mut self, mut signals: signal_hook_mio::v1_0::Signals) -> io::Result<()> {
        self.poll.registry().register(&mut signals, SIGNALS, Interest::READABLE)?;
        self.signals = Some(signals);
        Ok(())
    }

    /// The address this loop listens on.
    pub(super) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub(super) fn index(&self) -> usize {
        self.index
    }

    /// Runs this loop until the server stops, then shuts it down gracefully.
    pub(super) fn run(mut self) -> io::Result<()> {
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
        let wake_at = [next_heartbeat, self.timers.peek().map(|Reverse((at, _))| *at), self.acceptor.resume_at()]
            .into_iter()
            .chain([self.bus_writer.as_ref().and_then(Writer::next_deadline)])
            .flatten()
            .min();
        let timeout = if self.unfinished_reads.is_empty() && self.unfinished_replays.is_empty() && !self.backlog_left {
            wake_at.map(|at| at.saturating_duration_since(Instant::now()))
        } else {
            Some(Duration::ZERO)
        };
        match self.poll.poll(events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        for key in std::mem::take(&mut self.unfinished_reads) {
            self.drive(key);
        }
        for key in std::mem::take(&mut self.unfinished_replays) {
            self.flush(key);
        }
        for event in events.iter() {
            match event.token() {
                LISTENER => self.accept(),
                // Publisher queue and inbox are taken every turn (below).
                WAKER => self.pull_listings(),
                SIGNALS => self.take_signals(),
                BUS_WRITER => self.bus_writer.iter_mut().for_each(|writer| writer.ready(event)),
                Token(key) => self.drive(key),
            }
        }
        self.backlog_left = false;
        self.take_inbox();
        let now = Instant::now();
        if self.acceptor.resume_at().is_some_and(|at| now >= at) {
            self.accept();
        }
        self.expire_timers(now);
        self.bus_turn(now);
        let fanning_out = self.bus_writer.is_some() && self.broker.has_pending();
        self.fan_out(FAN_OUT_PER_TURN);
        if fanning_out {
            // Redis ran while the fan-out wrote: answer its replies now,
            // not a whole turn later (a waiting connection's next
            // pipelined publish waits for that answer).
            self.bus_writer.iter_mut().for_each(Writer::read_now);
            self.bus_turn(now);
        }
        self.keep_within_budget();
        self.store_gauges();
        // Whether other threads must wake this loop for their publishes.
        self.hub.set_listening(self.index, self.broker.subscribers() > 0);
        Ok(())
    }

    /// Graceful shutdown: stop accepting, let requests in flight finish and
    /// queued events drain to subscribers for at most the shutdown timeout,
    /// then close everything. Every event a publisher was answered for has
    /// been handed to the subscribers' sockets by then, unless a subscriber
    /// could not take it within the bound.
    ///
    /// A crowd of streams is not closed at once, which would bring every
    /// client back in the same second: their ends are spread at random over
    /// a drain window ([`Loop::drain_window`]), and each stream is first
    /// told a jittered `retry:`, so clients return over seconds.
    fn shut_down(mut self, events: &mut Events) -> io::Result<()> {
        let _ = self.poll.registry().deregister(&mut self.listener);
        // From now on publishes are refused (503) on every loop and by every
        // `Publisher`, so every event answered for is in this loop's inbox
        // already, and what is queued can only shrink.
        self.hub.close();
        self.accepting = false;
        self.acceptor.close();
        let started = Instant::now();
        let deadline = started + self.shutdown_timeout;
        self.send_everything_queued(deadline);
        let window = self.drain_window();
        // When each stream ends, latest first (taken from the back).
        let mut ends: Vec<(Instant, usize)> = Vec::new();
        if !window.is_zero() {
            let micros = u64::try_from(window.as_micros()).unwrap_or(u64::MAX);
            for key in self.clients.iter().filter(|(_, client)| client.conn.is_streaming()).map(|(key, _)| key) {
                ends.push((started + Duration::from_micros(self.jitter.below(micros)), key));
            }
            ends.sort_unstable_by(|a, b| b.cmp(a));
        }
        loop {
            self.send_everything_queued(deadline);
            let now = Instant::now();
            while let Some(&(_, key)) = ends.last().filter(|(at, _)| *at <= now) {
                ends.pop();
                self.end_stream(key);
            }
            // Within a drain window, a stream closes only once it has been
            // ended (and so is no longer streaming).
            let quiet: Vec<usize> = self
                .clients
                .iter()
                .filter(|(_, client)| {
                    client.conn.is_quiet() && !client.replaying && (window.is_zero() || !client.conn.is_streaming())
                })
                .map(|(key, _)| key)
                .collect();
            for key in quiet {
                self.close(key);
            }
            if self.clients.is_empty() || now >= deadline {
                self.store_gauges();
                return Ok(());
            }
            // Wake at the next end, and at least every 50 ms to check the
            // deadline and quiet connections.
            let next_end = ends.last().map_or(deadline, |&(at, _)| at);
            let soon = (now + Duration::from_millis(50)).min(next_end).min(deadline);
            self.timers.push(Reverse((soon, usize::MAX)));
            self.turn(events, None)?;
        }
    }

    /// How long a shutdown spreads the ends of streams over: the time
    /// [`SHUTDOWN_ENDS_PER_SEC`] takes for the streams of all loops, at most
    /// half the shutdown timeout (the rest is for flushing); none for fewer
    /// than [`DRAIN_MIN_STREAMS`].
    fn drain_window(&self) -> Duration {
        let (streams, _, _) = self.hub.streams(0);
        if streams < DRAIN_MIN_STREAMS {
            return Duration::ZERO;
        }
        let window = Duration::from_millis(streams as u64 * 1000 / SHUTDOWN_ENDS_PER_SEC);
        window.min(self.shutdown_timeout / 2)
    }

    /// Ends a stream at shutdown: a replay stops where it is (whole events
    /// are sent, so the client resumes from its last id), a jittered
    /// `retry:` follows what is queued, then the stream closes.
    fn end_stream(&mut self, key: usize) {
        if self.listings.contains_key(&key) {
            // A subscription listing, not an event stream: no `retry:` in
            // its JSON. It closes with the rest.
            return;
        }
        let retry = self.jittered_retry();
        let Some(client) = self.clients.get_mut(key).filter(|client| client.conn.is_streaming() && !client.ending)
        else {
            return;
        };
        client.replaying = false;
        client.conn.outbox().push(crate::sse::opening(retry));
        client.ending = true;
        self.flush(key);
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

    /// Takes the pending connections the accept policy lets in, and
    /// registers each for readability with a fresh [`Conn`].
    fn accept(&mut self) {
        let now = Instant::now();
        let refused_before = self.acceptor.refused_over_capacity;
        for mut socket in self.acceptor.accept(&self.listener, &self.hub, now) {
            // Frames are small and must go out now, not wait for the
            // previous one's ACK (Nagle's algorithm).
            let _ = socket.set_nodelay(true);
            let entry = self.clients.vacant_entry();
            let key = entry.key();
            if self.poll.registry().register(&mut socket, Token(key), Interest::READABLE).is_err() {
                self.hub.disconnected();
                continue;
            }
            self.serials = self.serials.wrapping_add(1);
            entry.insert(Client {
                socket,
                conn: Conn::new(&self.app.settings.limits, now),
                membership: None,
                wants_writable: false,
                replaying: false,
                scheduled: None,
                serial: self.serials,
                pinned: 0,
                ending: false,
            });
            self.counters.connections_accepted += 1;
            self.schedule(key);
        }
        // Each refusal was a 503 answer.
        self.counters.responses[4] += self.acceptor.refused_over_capacity - refused_before;
    }

    fn take_signals(&mut self) {
        if let Some(signals) = &mut self.signals {
            for signal in signals.pending() {
                let name = signal_hook::low_level::signal_name(signal).unwrap_or("unknown");
                if super::IGNORED_SIGNALS.contains(&signal) {
                    log::info!("signal {name} ignored: only SIGTERM, SIGINT and SIGQUIT stop bare-sse (gracefully)");
                } else {
                    log::info!("signal {name}: shutting down gracefully");
                    self.handle.shutdown();
                }
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
            client.conn.on_timeout(&self.app.settings.limits, now);
            self.count_answers(key);
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
            let budget = client.conn.read_budget(&self.app.settings.limits).min(self.read_buffer.len());
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
                self.unfinished_reads.push(key);
                break;
            }
            reads += 1;
            match client.socket.read(&mut self.read_buffer[..budget]) {
                Ok(0) => client.conn.receive_eof(),
                Ok(n) => client.conn.receive(&self.read_buffer[..n], &self.app.settings.limits, Instant::now()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.close(key),
            }
        }
        self.flush(key);
        self.schedule(key);
    }

    /// Lets a connection handle what it has received, and does what the
    /// application asks.
    fn carry_out_actions(&mut self, key: usize) {
        loop {
            let Some(client) = self.clients.get_mut(key) else { return };
            let limits = &self.app.settings.limits;
            let Some(action) = client.conn.poll(&self.app, limits, Instant::now()) else {
                return self.count_answers(key);
            };
            let response = match action {
                Action::Publish(_) if !self.accepting => self.app.unavailable("shutting down"),
                Action::Publish(publish) => match self.bus_writer.as_mut() {
                    None => match self.hub.publish(&publish, Origin::Loop(self.index)) {
                        Ok(receipt) => self.app.published(&receipt),
                        Err(Busy) if self.hub.is_closed() => self.app.unavailable("shutting down"),
                        Err(Busy) => self.app.unavailable("server busy: subscribers are behind; retry later"),
                    },
                    // The connection waits (Conn's Waiting state) until the
                    // bus writer answers (`Loop::bus_turn`).
                    Some(writer) => {
                        let deadline = Instant::now() + ANSWER_WITHIN;
                        // The receipt needs the topics and Mercure fields, not the message.
                        let serial = client.serial;
                        let waiting = |publish| BusPublish {
                            key,
                            serial,
                            publish: Publish { message: String::new(), ..publish },
                        };
                        match writer.submit(self.poll.registry(), publish, deadline, waiting) {
                            Ok(()) => continue,
                            Err((_, e)) => self.app.unavailable(&e.to_string()),
                        }
                    }
                },
                Action::Health => {
                    let degraded = self.bus.as_ref().is_some_and(|bus| !bus.is_up());
                    self.app.health(degraded.then_some("redis unavailable"))
                }
                Action::Subscribe(subscribe) => {
                    self.subscribe(key, subscribe);
                    continue;
                }
                Action::SubscribeMercure(subscribe) => {
                    self.subscribe_mercure(key, *subscribe);
                    continue;
                }
                Action::ListSubscriptions(request) => match (&self.presence, &self.roster) {
                    (None, _) => Response::error(Status::NOT_FOUND, "not found"),
                    (Some(presence), None) => {
                        let mut listing = Listing::new(*request, self.broker.mercure_cursor());
                        if !listing.is_single() {
                            self.list(key, listing);
                            continue;
                        }
                        // From the registry, the answer is there at once.
                        let missing = || Response::error(Status::NOT_FOUND, "no such subscription");
                        listing.single(presence).unwrap_or_else(missing)
                    }
                    (Some(_), Some(roster)) => {
                        // The roster's reader answers in pages, waking
                        // this loop for each (see `Loop::pull_listings`).
                        let (pages, receiver) = crossbeam_channel::bounded(2);
                        let listing = Listing::from_cluster(*request, self.broker.mercure_cursor(), receiver);
                        let (prefix, exact) = listing.roster_query();
                        let (hub, index) = (self.hub.clone(), self.index);
                        let wake = Box::new(move || hub.wake(index));
                        if !roster.list(ListRequest { prefix, exact, pages, wake }) {
                            self.app.unavailable("too many subscription listings under way")
                        } else {
                            if listing.is_single() {
                                self.listings.insert(key, listing);
                            } else {
                                self.list(key, listing);
                            }
                            continue;
                        }
                    }
                },
                Action::Metrics => {
                    self.store_gauges();
                    let redis_up = self.bus.as_ref().map(|bus| bus.is_up());
                    self.app.metrics(crate::app::metrics::render(&self.hub, redis_up))
                }
            };
            if let Some(client) = self.clients.get_mut(key) {
                client.conn.respond(response, &self.app.settings.limits, Instant::now());
            }
        }
    }

    /// Adds a new stream to the broker and queues its backlog (replay). The
    /// broker makes the seam between the two exact at any time, even in the
    /// middle of a fan-out pass.
    fn subscribe(&mut self, key: usize, subscribe: Subscribe) {
        if !self.may_open_stream(subscribe.topics.iter().map(String::as_str)) {
            return self.turn_away(key, self.app.stream_head());
        }
        let newest = self.prepare_stream();
        let last_event_id = subscribe.last_event_id.as_deref();
        let joined = self.broker.subscribe_up_to(key, &subscribe.topics, last_event_id, newest);
        self.open_stream(key, joined, self.app.stream_head(), None);
    }

    /// [`Loop::subscribe`] for a Mercure stream, which must end when its
    /// token expires.
    fn subscribe_mercure(&mut self, key: usize, subscribe: MercureSubscribe) {
        // Counted as a stream, with no seeds topic.
        if !self.may_open_stream(std::iter::empty()) {
            return self.turn_away(key, self.app.mercure_stream_head(None));
        }
        let newest = self.prepare_stream();
        let MercureSubscribe { interest, last_event_id, expires_at, joining } = subscribe;
        let joined = self.broker.subscribe_mercure(key, interest, last_event_id.as_deref(), newest);
        let head = self.app.mercure_stream_head(joined.resumed_after.as_deref());
        // A token's `exp` is the client's number: one too far ahead to be an
        // Instant (or a 0.x token without one) sets no end.
        let ends_at = expires_at.and_then(|at| {
            let left = at.saturating_sub((self.app.clock)());
            Instant::now().checked_add(Duration::from_secs(left))
        });
        self.open_stream(key, joined, head, ends_at);
        // Registered before it is announced: a listing that starts after
        // the announcement's id is in the history shows it.
        if let Some(presence) = self.presence.as_ref().filter(|_| !joining.is_empty() && self.clients.contains(key)) {
            let subscriber = presence.join(self.index, key, &joining);
            for joined in &joining {
                let seen = Seen {
                    kind: joined.kind,
                    matcher: &joined.matcher,
                    payload: joined.payload.as_deref(),
                    subscriber: &subscriber,
                };
                self.announce(mercure::subscription_event(seen, true), true);
            }
        }
    }

    /// Goes on with the listings waiting for pages from the cluster's
    /// roster: a single subscription is answered once its page came, a
    /// collection writes what came.
    fn pull_listings(&mut self) {
        let waiting: Vec<usize> = self.listings.iter().filter(|(_, l)| l.is_cluster()).map(|(&key, _)| key).collect();
        let Some(presence) = self.presence.clone() else { return };
        for key in waiting {
            let single = self.listings.get_mut(&key).filter(|listing| listing.is_single());
            match single.map(|listing| listing.single(&presence)) {
                None => self.flush(key),
                Some(None) => {}
                Some(Some(response)) => {
                    self.listings.remove(&key);
                    if let Some(client) = self.clients.get_mut(key) {
                        client.conn.respond(response, &self.app.settings.limits, Instant::now());
                        self.drive(key);
                    }
                }
            }
        }
    }

    /// Publishes a subscription event (see [`crate::broadcast::presence`]).
    /// Nobody waits for it: one the hub refuses (the server is stopping, or
    /// a loop is far behind) is dropped, with a line in the log. On a
    /// cluster the roster publishes it, once Redis has the change.
    fn announce(&mut self, publish: Publish, active: bool) {
        if let (Some(roster), Some(field)) = (&self.roster, publish.topics.first()) {
            let field = field.clone();
            let change = match active {
                true => Change::Join { field, document: publish.message.clone(), event: publish },
                false => Change::Leave { field, event: publish },
            };
            return roster.change(change);
        }
        // (A cluster node with `--mercure-subscriptions` always has a roster.)
        if self.hub.publish(&publish, Origin::Loop(self.index)).is_err() && !self.hub.is_closed() {
            // A burst of connections while subscribers are behind would
            // otherwise be a burst of log lines.
            if self.counters.announcements_dropped.is_multiple_of(1000) {
                let dropped = self.counters.announcements_dropped + 1;
                log::warn!("subscription events dropped, subscribers are behind ({dropped} on this loop)");
            }
            self.counters.announcements_dropped += 1;
        }
    }

    /// Starts writing a subscription collection to connection `key`: its
    /// head now, its pieces as the socket takes them (see [`Loop::flush`]),
    /// within `LISTING_TIMEOUT`.
    fn list(&mut self, key: usize, listing: Listing) {
        let Some(client) = self.clients.get_mut(key) else { return };
        let head = listing.head(Status::OK);
        if client.conn.open_body(head, Instant::now() + LISTING_TIMEOUT) {
            self.listings.insert(key, listing);
            client.replaying = true;
            // As for a replay: the next piece when the kernel has sent
            // most of the last, not megabytes queued in the socket.
            let _ = socket2::SockRef::from(&client.socket).set_tcp_notsent_lowat(REPLAY_NOTSENT_BYTES);
        } else {
            client.ending = true;
        }
        self.schedule(key);
        self.flush(key);
    }

    /// Whether a stream on `topics` may open: not while shutting down, nor
    /// over the stream cap. If so, it is counted in the hub.
    fn may_open_stream<'a>(&self, topics: impl IntoIterator<Item = &'a str>) -> bool {
        self.accepting && self.hub.try_open_stream(topics, self.max_streams)
    }

    /// Answers a subscriber that may not open a stream now, in a way an
    /// EventSource survives: a browser never reconnects after a non-200
    /// answer, so a 503 would lose it for good. It gets a 200 stream that
    /// carries a jittered `retry:` and ends, and comes back seconds later,
    /// spread out rather than in a burst.
    fn turn_away(&mut self, key: usize, head: Response) {
        let retry = self.jittered_retry();
        let Some(client) = self.clients.get_mut(key) else { return };
        client.conn.open_stream(head);
        client.conn.outbox().push(crate::sse::opening(retry));
        client.ending = true;
        self.counters.turned_away += 1;
    }

    /// A reconnection delay of one to two `--retry-ms`, at random.
    fn jittered_retry(&mut self) -> u32 {
        let base = self.app.settings.retry_ms.max(1);
        let extra = self.jitter.below(u64::from(base)) as u32;
        base.saturating_add(extra)
    }

    /// Before a subscribe: the stream starts after every event sent so far,
    /// so take the inbox in first (a loop without streams is not woken for
    /// each publish). And a client resuming here may have come from a loop
    /// further along: every event another loop has sent out is in this
    /// loop's inbox already (the hub fills every inbox before anyone is
    /// answered), so after this its id is known here. A cluster node may be
    /// behind the node the client came from by more than its inbox: the id
    /// returned, a minute past the node's clock, bounds the ids taken as
    /// ones not read yet (see `Broker::subscribe_up_to`).
    fn prepare_stream(&mut self) -> Option<EventId> {
        match &self.bus {
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
                // Bus events wake only loops with streams: from now on this one.
                self.hub.stream_opening(self.index);
                let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
                Some(EventId { ms: now_ms.saturating_add(AHEAD_OF_CLOCK_MS), seq: u64::MAX })
            }
        }
    }

    /// Makes connection `key` the stream the broker just joined: its head,
    /// the opening, then the backlog (replay). Ends at `ends_at`, if set.
    fn open_stream(&mut self, key: usize, joined: Joined, head: Response, ends_at: Option<Instant>) {
        let Some(client) = self.clients.get_mut(key) else {
            return self.broker.unsubscribe(joined.membership);
        };
        client.membership = Some(joined.membership as u32);
        client.conn.open_stream_until(head, ends_at);
        client.conn.outbox().push(self.app.stream_opening());
        for frame in joined.backlog {
            client.conn.outbox().push(frame);
        }
        if joined.replaying {
            client.replaying = true;
            let _ = socket2::SockRef::from(&client.socket).set_tcp_notsent_lowat(REPLAY_NOTSENT_BYTES);
        }
        self.account(key);
        self.schedule(key);
    }

    /// Takes what the hub sent this loop: events into the broker (to go out
    /// at the next fan-out), and a cluster node's history. Bounded per
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
                self.broker.push(event);
            }
            Message::Backfill(floor, events) => self.broker.backfill(floor, events.iter().cloned()),
        }
    }

    /// The bus writer's share of a turn: answers what Redis answered (or
    /// what timed out), then writes the publishes of this turn to Redis,
    /// all in one pipeline.
    fn bus_turn(&mut self, now: Instant) {
        let Some(writer) = self.bus_writer.as_mut() else { return };
        writer.tick(self.poll.registry(), now);
        loop {
            let Some(writer) = self.bus_writer.as_mut() else { return };
            let mut answers = writer.take_answers();
            if answers.is_empty() {
                writer.flush();
                // A failed write answers what was waiting, at once.
                answers = writer.take_answers();
                if answers.is_empty() {
                    return;
                }
            }
            // Answering may carry out pipelined requests, and so submit more.
            for (BusPublish { key, serial, publish }, result) in answers {
                let answer = result.map(|id| {
                    let count = if publish.mercure.is_some() { 0 } else { self.hub.count_subscribers(&publish.topics) };
                    Receipt::new(id, count, &publish)
                });
                self.answer_publish(key, serial, answer);
            }
        }
    }

    /// Answers a publish that waited for the cluster bus, if the connection
    /// that made it is still there.
    fn answer_publish(&mut self, key: usize, serial: u32, answer: Result<Receipt, BusError>) {
        let Some(client) = self.clients.get_mut(key).filter(|client| client.serial == serial) else { return };
        let response = match answer {
            Ok(receipt) => self.app.published(&receipt),
            Err(e @ BusError::Unavailable(_)) => self.app.unavailable(&e.to_string()),
            // 504, not 503: the event may have been published, so a retry
            // may publish it twice.
            Err(e @ BusError::Unanswered(_)) => {
                Response::refusal(Status::GATEWAY_TIMEOUT, "outcome unknown", &e.to_string())
            }
        };
        client.conn.respond(response, &self.app.settings.limits, Instant::now());
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
        let Gauges {
            connections,
            streams,
            frames,
            bytes,
            heartbeats,
            dropped_slow,
            responses,
            accepted,
            refused,
            turned_away,
            queued,
            mercure_subscriptions,
        } = gauges;
        store(connections, self.clients.len() as u64);
        store(streams, self.broker.subscribers() as u64);
        store(frames, stats.frames);
        store(bytes, stats.bytes);
        store(heartbeats, stats.heartbeats);
        store(dropped_slow, self.counters.dropped_slow);
        for (gauge, &value) in responses.iter().zip(&self.counters.responses) {
            store(gauge, value);
        }
        store(accepted, self.counters.connections_accepted);
        store(refused, self.acceptor.refused_over_capacity);
        store(turned_away, self.counters.turned_away);
        store(queued, self.pinned as u64);
        for (gauge, &value) in mercure_subscriptions.iter().zip(&stats.mercure_subscriptions) {
            store(gauge, value);
        }
    }

    /// Writes a connection's queued output (and the next pieces of its
    /// replay, while its socket takes them) and applies its socket command.
    fn flush(&mut self, key: usize) {
        let Some(client) = self.clients.get_mut(key) else {
            return;
        };
        let mut flushed = match client.conn.outbox().flush(&mut client.socket) {
            Ok(flushed) => flushed,
            Err(_) => return self.close(key),
        };
        let mut chunks = 0;
        while flushed == Flushed::All && client.replaying {
            if chunks == REPLAY_CHUNKS_PER_FLUSH {
                self.unfinished_replays.push(key);
                break;
            }
            chunks += 1;
            let membership = client.membership.map_or(usize::MAX, |m| m as usize);
            let listing = self.listings.get_mut(&key).zip(self.presence.as_deref());
            let replay = match listing {
                Some((listing, presence)) => match listing.next_piece(presence) {
                    Next::Piece(piece) => Replay::More(vec![piece.into()]),
                    // The loop is woken when the next page is there.
                    Next::Wait => break,
                    Next::Done => {
                        // Written: it ends as a turned-away stream does.
                        self.listings.remove(&key);
                        client.ending = true;
                        Replay::Done(Vec::new())
                    }
                    Next::Failed => return self.close(key),
                },
                None => self.broker.replay_some(membership, REPLAY_CHUNK_BYTES),
            };
            let frames = match replay {
                Replay::More(frames) => frames,
                Replay::Done(frames) => {
                    client.replaying = false;
                    let _ = socket2::SockRef::from(&client.socket).set_tcp_notsent_lowat(0);
                    frames
                }
                Replay::Lost => return self.drop_slow(key, "its replay fell out of the history"),
            };
            frames.into_iter().for_each(|frame| client.conn.outbox().push(frame));
            flushed = match client.conn.outbox().flush(&mut client.socket) {
                Ok(flushed) => flushed,
                Err(_) => return self.close(key),
            };
        }
        self.account(key);
        let Some(client) = self.clients.get_mut(key) else { return };
        if client.ending && flushed == Flushed::All && client.conn.is_streaming() {
            // Its last words are out. It closes at once rather than lingering
            // for the peer's close, so that its slot is free for the
            // newcomers it was turned away for: a stream reads (and drops)
            // its peer's input as it comes, so no unread bytes make the
            // close a reset (and an EventSource comes back even after one).
            let _ = client.socket.shutdown(Shutdown::Write);
            return self.close(key);
        }
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
            let mut follow_ups = std::mem::take(&mut self.follow_ups);
            let more = self.broker.fan_out_some(&mut self.clients, &mut follow_ups, budget);
            self.backlog_left |= more;
            self.follow_up(follow_ups);
        }
    }

    /// Sends a heartbeat to the streams that were idle for an interval.
    fn heartbeat(&mut self) {
        let mut follow_ups = std::mem::take(&mut self.follow_ups);
        self.broker.heartbeat(&mut self.clients, &mut follow_ups);
        self.follow_up(follow_ups);
    }

    /// Deals with the subscribers whose delivery did not simply go out:
    /// asks for writable readiness, drops the too slow, closes the failed.
    fn follow_up(&mut self, mut follow_ups: Vec<(usize, Delivery)>) {
        for &(key, delivery) in &follow_ups {
            if delivery == Delivery::Queued {
                self.account(key);
            }
            let Some(client) = self.clients.get_mut(key) else { continue };
            match delivery {
                Delivery::Done => {}
                // Too far behind: drop it rather than buffer without bound. It
                // can reconnect with Last-Event-ID and replay what it missed.
                Delivery::Queued if client.pinned as usize > self.max_buffered_bytes => {
                    self.drop_slow(key, "over --max-buffered-bytes");
                }
                // Registers WRITABLE interest; the rest goes out when the
                // socket drains.
                Delivery::Queued if !client.wants_writable => self.flush(key),
                Delivery::Queued => {}
                Delivery::Failed => self.close(key),
            }
        }
        follow_ups.clear();
        self.follow_ups = follow_ups;
    }

    /// Drops a subscriber that fell too far behind, saying why.
    fn drop_slow(&mut self, key: usize, why: &str) {
        let Some(client) = self.clients.get(key) else { return };
        self.counters.dropped_slow += 1;
        log::info!("{}: dropped, {} bytes behind: {why}", peer(&client.socket), client.pinned);
        self.close(key);
    }

    /// Brings a connection's share of [`Loop::pinned`] up to date; call
    /// whenever a stream's outbox may have changed.
    fn account(&mut self, key: usize) {
        let Some(client) = self.clients.get_mut(key) else { return };
        let pinned = match client.conn.is_streaming() {
            true => u32::try_from(client.conn.outbox().pinned_bytes()).unwrap_or(u32::MAX),
            false => 0,
        };
        self.pinned = self.pinned - client.pinned as usize + pinned as usize;
        client.pinned = pinned;
    }

    /// Keeps the bytes queued to subscribers, on all loops together, within
    /// `--max-queued-bytes`: when they are over it, this loop drops its
    /// streams furthest behind until it has given up its part of the excess
    /// (in proportion to what it holds, so that loops dropping at once do
    /// not drop more than needed). Other loops' totals are as of their last
    /// turn, so the bound can be passed by a turn's fan-out, no more.
    fn keep_within_budget(&mut self) {
        let total = self.hub.queued_elsewhere(self.index) + self.pinned;
        if total <= self.max_queued_bytes {
            return;
        }
        let excess = (total - self.max_queued_bytes) as u128;
        let mut to_free = (excess * self.pinned as u128).div_ceil(total as u128) as usize;
        let mut behind: Vec<(u32, usize)> =
            self.clients.iter().filter(|(_, client)| client.pinned > 0).map(|(key, c)| (c.pinned, key)).collect();
        behind.sort_unstable_by(|a, b| b.cmp(a));
        for (pinned, key) in behind {
            if to_free == 0 {
                break;
            }
            to_free = to_free.saturating_sub(pinned as usize);
            self.drop_slow(key, "the server's queues are over --max-queued-bytes");
        }
    }

    /// Counts a connection's answers and logs its refusal, if any.
    fn count_answers(&mut self, key: usize) {
        let Some(client) = self.clients.get_mut(key) else { return };
        let Some(notes) = client.conn.take_answered() else { return };
        for (total, count) in self.counters.responses.iter_mut().zip(notes.by_class) {
            *total += u64::from(count);
        }
        if let Some((status, why)) = notes.refusal {
            log::info!("{}: {} {why}", peer(&client.socket), status.0);
        }
        for line in notes.access {
            log::info!("{} {line}", peer(&client.socket));
        }
    }

    /// Forgets a connection; dropping the socket closes it (and removes it
    /// from the poll set).
    fn close(&mut self, key: usize) {
        let Some(client) = self.clients.try_remove(key) else { return };
        self.pinned -= client.pinned as usize;
        self.hub.disconnected();
        self.listings.remove(&key);
        if let Some(membership) = client.membership.map(|m| m as usize) {
            self.hub.stream_closed(self.broker.topics_of(membership));
            self.broker.unsubscribe(membership);
            if let Some(presence) = &self.presence {
                let mut ended = Vec::new();
                presence.leave(self.index, key, |seen| ended.push(mercure::subscription_event(seen, false)));
                for publish in ended {
                    self.announce(publish, false);
                }
            }
        }
    }
}

/// The peer's address for a log line.
fn peer(socket: &TcpStream) -> String {
    socket.peer_addr().map_or_else(|_| "unknown peer".to_owned(), |addr| addr.to_string())
}

impl Drop for Loop {
    fn drop(&mut self) {
        // Once any loop is gone (done or failed) the others stop too, and
        // publishers fail fast.
        self.handle.shutdown();
    }
}
