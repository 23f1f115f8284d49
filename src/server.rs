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

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use slab::Slab;

use crate::broker::{Broker, Delivery, Subscriber};
use crate::config::Config;
use crate::conn::{Action, Conn, Limits, SocketCommand};
use crate::outbox::Flushed;
use crate::sse::{self, Frame};

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

/// A bound server, ready to [`run`](Server::run).
pub struct Server {
    poll: Poll,
    listener: TcpListener,
    clients: Slab<Client>,
    broker: Broker,
    limits: Limits,
    scratch: Box<[u8]>,
    /// Connections that still had input when their read budget ran out.
    again: Vec<usize>,
    /// Subscribers whose last delivery needs a follow-up (see [`Delivery`]).
    attention: Vec<(usize, Delivery)>,
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
}

impl Subscriber for Client {
    fn deliver(&mut self, frames: &[Frame]) -> Delivery {
        match self.conn.outbox().send(frames, &mut self.socket) {
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
}

impl Server {
    /// Binds the listening socket and prepares the loop.
    pub fn bind(config: &Config) -> io::Result<Server> {
        let poll = Poll::new()?;
        let mut listener = TcpListener::bind(config.listen)?;
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        Ok(Server {
            poll,
            listener,
            // Reserved, not touched: only pages of slots in use become resident.
            clients: Slab::with_capacity(config.max_connections),
            broker: Broker::new(),
            limits: config.limits,
            scratch: vec![0; SCRATCH_BYTES].into_boxed_slice(),
            again: Vec::new(),
            attention: Vec::new(),
            handle: Handle { stop: Arc::new(AtomicBool::new(false)), waker },
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

    /// Runs the event loop until [`Handle::shutdown`].
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(EVENTS_CAPACITY);
        loop {
            // Connections cut short last time are served again at once.
            let timeout = if self.again.is_empty() { None } else { Some(std::time::Duration::ZERO) };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for key in std::mem::take(&mut self.again) {
                self.drive(key);
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    WAKER => {}
                    Token(key) => self.drive(key),
                }
            }
            self.fan_out();
            if self.handle.stop.load(Ordering::SeqCst) {
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
                        entry.insert(Client { socket, conn: Conn::new(), membership: None, wants_writable: false });
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
        let Some(client) = self.clients.get_mut(key) else {
            return; // Closed earlier in this batch of events.
        };
        let mut reads = 0;
        loop {
            handle_actions(client, key, &mut self.broker, &self.limits);
            let budget = client.conn.read_budget(&self.limits).min(self.scratch.len());
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
            if reregister(self.poll.registry(), client, Token(key), interest).is_err() {
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

    /// Sends this iteration's published frames to every subscriber and deals
    /// with the subscribers that could not take them all.
    fn fan_out(&mut self) {
        if !self.broker.has_pending() {
            return;
        }
        let mut attention = std::mem::take(&mut self.attention);
        self.broker.fan_out(&mut self.clients, &mut attention);
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

/// Lets the connection handle what it has received, carrying out its actions.
fn handle_actions(client: &mut Client, key: usize, broker: &mut Broker, limits: &Limits) {
    while let Some(action) = client.conn.poll(limits) {
        match action {
            Action::Publish(publish) => {
                let frame = sse::encode(&sse::Event { data: &publish.message, ..sse::Event::default() });
                let subscribers = broker.publish(frame);
                client.conn.published(subscribers);
            }
            Action::Subscribe(_) => {
                client.membership = Some(broker.subscribe(key));
            }
        }
    }
}

fn reregister(registry: &Registry, client: &mut Client, token: Token, interest: Interest) -> io::Result<()> {
    registry.reregister(&mut client.socket, token, interest)
}
