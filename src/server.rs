//! The event loop: the only code that touches sockets.
//!
//! One `mio::Poll` watches the listening socket, a waker, and every client
//! connection. Connections live in a [`Slab`], and a connection's slab key is
//! its mio [`Token`]. The loop only moves bytes and readiness; what the bytes
//! mean is decided by [`Conn`] (per connection) and [`Broker`] (broadcast).
//!
//! Follow one publish from `accept` to the wire:
//!
//! 1. The listener is readable: [`Server::accept`] takes every pending
//!    connection (until `WouldBlock`) and registers each for readability.
//! 2. A client is readable: [`Server::drive`] reads into one scratch buffer
//!    shared by all connections and gives the bytes to [`Conn::receive`].
//! 3. [`Conn::poll`] parses the request. A `POST /send-event` comes back as
//!    [`Action::Publish`]: the loop encodes the event once
//!    ([`sse::encode`]) and hands the frame to [`Broker::publish`], then
//!    answers the publisher.
//! 4. When every ready connection has been handled, [`Broker::fan_out`]
//!    writes the iteration's frames to every subscriber: one `write()` (or
//!    `writev()` for a burst) per subscriber, straight from the loop.
//! 5. Whatever a socket did not take stays in that connection's
//!    [`crate::outbox::Outbox`]; the loop then asks for `WRITABLE` readiness,
//!    and only until the outbox is empty again.
//!
//! mio's readiness is edge-triggered: an event means "something changed", so
//! every read loops until `WouldBlock` (or until the connection wants no more
//! input), `Interrupted` is retried, and an event for a key that is no longer
//! in the slab (a connection closed earlier in the same batch) is ignored.

use std::io::{self, Read};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use crate::api::Publish;
use crate::broker::{Broker, Delivery, Subscriber};
use crate::config::Config;
use crate::conn::{Action, Conn, Settings, SocketCommand, Subscribe};
use crate::outbox::Flushed;
use crate::sse::Frame;

/// Token of the listening socket. Client keys come from the slab, which never
/// reaches these values.
const LISTENER: Token = Token(usize::MAX - 1);
/// Token of the waker other threads use to reach the loop.
const WAKER: Token = Token(usize::MAX - 2);

/// Size of the one read buffer shared by all connections. Connections keep
/// only what they have not parsed yet, so an idle one holds no read buffer.
const SCRATCH_BYTES: usize = 64 * 1024;

/// Most reads from one connection per readiness event. A client that keeps
/// its socket full is put back in line after this many, so it cannot starve
/// the others.
const MAX_READS_PER_EVENT: usize = 16;

/// Readiness events taken per `poll` call.
const EVENTS_CAPACITY: usize = 1024;

/// Publishes from other threads waiting for the loop. When full, a
/// [`Publisher`] waits: back-pressure rather than unbounded memory.
const PUBLISH_QUEUE: usize = 64 * 1024;

/// A bound server, ready to [`run`](Server::run).
pub struct Server {
    poll: Poll,
    listener: TcpListener,
    clients: Slab<Client>,
    broker: Broker,
    settings: Settings,
    /// Unsent bytes a subscriber may have before it is dropped as too slow.
    max_buffered_bytes: usize,
    heartbeat: Option<Duration>,
    tick: bool,
    scratch: Box<[u8]>,
    /// Connections that still had input when their read budget ran out.
    again: Vec<usize>,
    /// Subscribers whose last delivery needs a follow-up (see [`Delivery`]).
    attention: Vec<(usize, Delivery)>,
    publishes: Receiver<Publish>,
    publisher: Publisher,
    handle: Handle,
}

/// A connection as the loop sees it: the socket and its state machine.
struct Client {
    socket: TcpStream,
    conn: Conn,
    /// Membership in the broker while the connection is a subscriber.
    membership: Option<usize>,
    /// Whether WRITABLE interest is registered (only while output is queued).
    wants_writable: bool,
    /// Copied from the server so `deliver` can enforce it.
    max_buffered_bytes: usize,
}

impl Subscriber for Client {
    fn deliver(&mut self, frames: &[Frame]) -> Delivery {
        let outbox = self.conn.outbox();
        match outbox.send(frames, &mut self.socket) {
            // Too far behind: drop it rather than buffer without bound. It can
            // reconnect with Last-Event-ID and replay what it missed.
            Ok(Flushed::Partly) if outbox.queued_bytes() > self.max_buffered_bytes => Delivery::Failed,
            Ok(Flushed::All) => Delivery::Done,
            Ok(Flushed::Partly) if self.wants_writable => Delivery::Done,
            Ok(Flushed::Partly) => Delivery::Queued,
            Err(_) => Delivery::Failed,
        }
    }
}

/// Lets other threads stop a running server. Cheap to clone.
#[derive(Clone)]
pub struct Handle {
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl Handle {
    /// Asks the server to stop; [`Server::run`] returns soon after.
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::SeqCst);
        // If the wake fails the loop is already gone.
        let _ = self.waker.wake();
    }

    fn is_stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// Publishes into a running server from any thread. Cheap to clone.
///
/// Events cross into the event loop through a bounded channel and a
/// [`mio::Waker`]; the loop frames and fans them out exactly like events
/// published with `POST /send-event`.
#[derive(Clone)]
pub struct Publisher {
    queue: Sender<Publish>,
    waker: Arc<Waker>,
    stop: Arc<AtomicBool>,
}

/// Why a [`Publisher`] could not publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishError {
    /// The event is invalid (topic or event name); says what was wrong.
    Invalid(String),
    /// The server has stopped.
    Stopped,
}

impl std::fmt::Display for PublishError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PublishError::Invalid(why) => write!(f, "invalid event: {why}"),
            PublishError::Stopped => f.write_str("the server has stopped"),
        }
    }
}

impl std::error::Error for PublishError {}

impl Publisher {
    /// Publishes `message` on the default topic, as `POST /send-event` does.
    pub fn send(&self, message: impl Into<String>) -> Result<(), PublishError> {
        self.publish(Publish::message(message))
    }

    /// Publishes an event with topics and an event name. Waits if the loop
    /// is behind by more than [`PUBLISH_QUEUE`] events.
    pub fn publish(&self, publish: Publish) -> Result<(), PublishError> {
        publish.validate().map_err(PublishError::Invalid)?;
        if self.stop.load(Ordering::SeqCst) {
            return Err(PublishError::Stopped);
        }
        let sent = match self.queue.try_send(publish) {
            Ok(()) => true,
            Err(TrySendError::Full(publish)) => {
                // Make sure the loop is draining, then wait for room.
                let _ = self.waker.wake();
                self.queue.send(publish).is_ok()
            }
            Err(TrySendError::Disconnected(_)) => false,
        };
        if !sent || self.waker.wake().is_err() {
            return Err(PublishError::Stopped);
        }
        Ok(())
    }
}

impl Server {
    /// Binds the listening socket and prepares the loop.
    pub fn bind(config: &Config) -> io::Result<Server> {
        let poll = Poll::new()?;
        let mut listener = TcpListener::bind(config.listen)?;
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let stop = Arc::new(AtomicBool::new(false));
        let (queue, publishes) = crossbeam_channel::bounded(PUBLISH_QUEUE);
        Ok(Server {
            poll,
            listener,
            // Reserved, not touched: only pages of slots in use become resident.
            clients: Slab::with_capacity(config.max_connections),
            broker: Broker::new(config.history),
            settings: config.settings.clone(),
            max_buffered_bytes: config.max_buffered_bytes,
            heartbeat: (config.heartbeat_secs > 0).then(|| Duration::from_secs(config.heartbeat_secs)),
            tick: config.tick,
            scratch: vec![0; SCRATCH_BYTES].into_boxed_slice(),
            again: Vec::new(),
            attention: Vec::new(),
            publishes,
            publisher: Publisher { queue, waker: waker.clone(), stop: stop.clone() },
            handle: Handle { stop, waker },
        })
    }

    /// The address the server listens on (useful after binding port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// A handle to stop the server from another thread.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// A handle to publish into the server from another thread.
    pub fn publisher(&self) -> Publisher {
        self.publisher.clone()
    }

    /// Runs the event loop until [`Handle::shutdown`].
    pub fn run(mut self) -> io::Result<()> {
        if self.tick {
            let publisher = self.publisher();
            std::thread::Builder::new().name("bare-sse-ticker".into()).spawn(move || crate::ticker::run(publisher))?;
        }
        let mut events = Events::with_capacity(EVENTS_CAPACITY);
        let mut next_heartbeat = self.heartbeat.map(|every| Instant::now() + every);
        loop {
            // Connections cut short last time are served again at once;
            // otherwise sleep until the next heartbeat, if any.
            let timeout = if self.again.is_empty() {
                next_heartbeat.map(|at| at.saturating_duration_since(Instant::now()))
            } else {
                Some(Duration::ZERO)
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                self.publisher.stop.store(true, Ordering::SeqCst);
                return Err(e);
            }
            for key in std::mem::take(&mut self.again) {
                self.drive(key);
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    WAKER => self.take_publishes(),
                    Token(key) => self.drive(key),
                }
            }
            self.fan_out();
            if let (Some(at), Some(every)) = (next_heartbeat, self.heartbeat) {
                let now = Instant::now();
                if now >= at {
                    self.heartbeat();
                    // After a stall, beat again one interval from now rather
                    // than several times in a row.
                    next_heartbeat = Some(if now - at > every { now + every } else { at + every });
                }
            }
            if self.handle.is_stopped() {
                return Ok(());
            }
        }
    }

    /// Accepts every pending connection.
    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((mut socket, _peer)) => {
                    // Frames are small and must go out now, not wait for the
                    // previous one's ACK (Nagle's algorithm).
                    let _ = socket.set_nodelay(true);
                    let entry = self.clients.vacant_entry();
                    let token = Token(entry.key());
                    if self.poll.registry().register(&mut socket, token, Interest::READABLE).is_ok() {
                        entry.insert(Client {
                            socket,
                            conn: Conn::new(),
                            membership: None,
                            wants_writable: false,
                            max_buffered_bytes: self.max_buffered_bytes,
                        });
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // The peer gave up before we accepted (ECONNABORTED) and the
                // like: nothing to do for that connection; keep accepting.
                Err(_) => continue,
            }
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
                break;
            }
            if reads == MAX_READS_PER_EVENT {
                self.again.push(key);
                break;
            }
            reads += 1;
            match client.socket.read(&mut self.scratch[..budget]) {
                Ok(0) => client.conn.receive_eof(),
                Ok(n) => client.conn.receive(&self.scratch[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.close(key),
            }
        }
        self.flush(key);
    }

    /// Lets a connection handle what it has received, and does what it asks.
    fn carry_out_actions(&mut self, key: usize) {
        loop {
            let Some(client) = self.clients.get_mut(key) else { return };
            let Some(action) = client.conn.poll(&self.settings) else { return };
            match action {
                Action::Publish(publish) => {
                    let receipt = self.broker.publish(&publish);
                    client.conn.published(&receipt.id, receipt.subscribers);
                }
                Action::Subscribe(subscribe) => self.subscribe(key, subscribe),
            }
        }
    }

    /// Adds a new stream to the broker and queues its backlog (replay).
    fn subscribe(&mut self, key: usize, subscribe: Subscribe) {
        // The replay seam: events already published in this iteration go out
        // to the existing subscribers first, so the newcomer's replay (which
        // includes them) and its live stream (which starts after) meet
        // exactly.
        self.fan_out();
        let joined = self.broker.subscribe(key, &subscribe.topics, subscribe.last_event_id.as_deref());
        let Some(client) = self.clients.get_mut(key) else {
            return self.broker.unsubscribe(joined.membership);
        };
        client.membership = Some(joined.membership);
        for frame in joined.backlog {
            client.conn.outbox().push(frame);
        }
    }

    /// Takes the events other threads published through a [`Publisher`].
    fn take_publishes(&mut self) {
        while let Ok(publish) = self.publishes.try_recv() {
            self.broker.publish(&publish);
        }
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

    /// Sends this iteration's published frames to their subscribers and deals
    /// with the subscribers that could not take them all.
    fn fan_out(&mut self) {
        if self.broker.has_pending() {
            let mut attention = std::mem::take(&mut self.attention);
            self.broker.fan_out(&mut self.clients, &mut attention);
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
            match delivery {
                Delivery::Done => {}
                // Registers WRITABLE interest; the rest goes out when the
                // socket drains.
                Delivery::Queued => self.flush(key),
                Delivery::Failed => self.close(key),
            }
        }
        attention.clear();
        self.attention = attention;
    }

    /// Forgets a connection; dropping the socket closes it (and removes it
    /// from the poll set).
    fn close(&mut self, key: usize) {
        if let Some(membership) = self.clients.try_remove(key).and_then(|client| client.membership) {
            self.broker.unsubscribe(membership);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Publishers fail fast once the loop is gone.
        self.publisher.stop.store(true, Ordering::SeqCst);
    }
}
