//! The event loops: the only code that touches sockets.
//!
//! A server runs one event loop per `--threads` (one by default), each on
//! its own thread (`event_loop.rs`). A loop's `mio::Poll` watches its
//! listening socket, its waker, and its client connections. Connections live
//! in a `Slab`, and a connection's slab key is its mio `Token`. The loop only
//! moves bytes and readiness; what the bytes mean is decided by the HTTP/1.1
//! machine ([`crate::http::conn::Conn`], per connection), the application
//! ([`crate::app::App`], per request) and the broker
//! ([`crate::broadcast::broker::Broker`], broadcast); what the loops share is
//! in the [`Hub`]. Whom to accept is the accept policy's (`accept.rs`).
//!
//! With several loops, each has its own listening socket on the same address
//! (`SO_REUSEPORT`), so the kernel spreads new connections across them with
//! no hand-off between threads; a connection then stays on its loop.
//!
//! Follow one publish from `accept` to the wire:
//!
//! 1. The listener is readable: `Loop::accept` takes the connections the
//!    accept policy lets in (until `WouldBlock`, at most 256 a turn) and
//!    registers each for readability, with a fresh `Conn`.
//! 2. A client is readable: `Loop::drive` reads into the one read buffer
//!    shared by all connections and gives the bytes to `Conn::receive`.
//! 3. `Conn::poll` parses the request and hands it to the application, which
//!    routes it: a `POST /send-event` comes back as `Action::Publish`. The
//!    loop hands the event to [`Hub::publish`], which numbers it, encodes it
//!    once ([`crate::sse::encode`]) and puts the frame in every loop's
//!    inbox; the loop then answers the publisher with the response the
//!    application builds (`App::published`), through `Conn::respond`.
//! 4. When every ready connection has been handled, the loop takes its inbox
//!    into its broker and `Broker::fan_out_some` writes the new frames to
//!    the subscribers: one `write()` (or `writev()` for several events) per
//!    subscriber, straight from the loop, in slices of `FAN_OUT_PER_TURN`
//!    subscribers so the loop keeps reading meanwhile. Other loops, woken by
//!    the hub, do the same for theirs.
//! 5. Whatever a socket did not take stays in that connection's
//!    [`crate::http::outbox::Outbox`]; the loop then asks for `WRITABLE`
//!    readiness, and only until the outbox is empty again.
//!
//! mio's readiness is edge-triggered: an event means "something changed", so
//! every read loops until `WouldBlock`, `Interrupted` is retried, and an event
//! for a key that is no longer in the slab (a connection closed earlier in the
//! same batch) is ignored. When a connection stops reading before
//! `WouldBlock` (its budget ran out, or it is paused behind its own unread
//! answers), the loop itself must come back to it, since no new event will:
//! the `unfinished_reads` list and the flush-then-continue in `Loop::drive`
//! do that.

mod accept;
mod event_loop;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use mio::net::TcpListener;
use mio::{Interest, Poll, Waker};

use crate::broadcast::bus::{Bus, BusConfig};
use crate::broadcast::event::EventId;
use crate::broadcast::hub::Hub;
use crate::broadcast::presence::Presence;
use crate::broadcast::publisher::Publisher;
use crate::broadcast::roster::Roster;
use crate::config::Config;
use event_loop::{LISTENER, Loop, WAKER};

/// Least number of events the cluster's Redis stream keeps (`MAXLEN`),
/// whatever `--history` says.
const MIN_STREAM_EVENTS: usize = 1000;

/// Signals that shut the server down gracefully: SIGINT (Ctrl-C), SIGTERM
/// (systemd, Docker, Kubernetes), and SIGQUIT (nginx's graceful quit,
/// runit's `sv quit`), whose default action would dump core and lose what
/// subscribers have not received yet.
const STOP_SIGNALS: [std::ffi::c_int; 3] =
    [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM, signal_hook::consts::SIGQUIT];

/// Signals a process manager or a terminal may send whose default action
/// kills the process without the graceful flush: SIGHUP (a terminal hanging
/// up; `systemctl reload`, logrotate and `sv hup` asking for a reload) and
/// SIGUSR1, SIGUSR2 and SIGALRM (which runit, s6 and daemontools pass on).
/// bare-sse has nothing to reload (its configuration is its flags, its log
/// is stderr), so they are logged and ignored. SIGPIPE needs nothing: the
/// Rust runtime ignores it before `main`.
pub(crate) const IGNORED_SIGNALS: [std::ffi::c_int; 4] = [
    signal_hook::consts::SIGHUP,
    signal_hook::consts::SIGUSR1,
    signal_hook::consts::SIGUSR2,
    signal_hook::consts::SIGALRM,
];

/// A bound server, ready to [`run`](Server::run): its event loops and what
/// they share.
pub struct Server {
    loops: Vec<Loop>,
    hub: Arc<Hub>,
    bus: Option<Arc<Bus>>,
    roster: Option<Arc<Roster>>,
    tick: bool,
    publisher: Publisher,
    handle: Handle,
}

/// What every loop of a server gets a share of.
struct Shared {
    hub: Arc<Hub>,
    bus: Option<Arc<Bus>>,
    handle: Handle,
    /// Where a lone server's history starts; `None` on a cluster node,
    /// which learns it from Redis (`Message::Backfill`).
    floor: Option<EventId>,
    /// Who is subscribed (`--mercure-subscriptions`); `None` when off.
    presence: Option<Arc<Presence>>,
    /// On a cluster node with `--mercure-subscriptions`: the cluster's.
    roster: Option<Arc<Roster>>,
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

    pub(crate) fn is_stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

impl Server {
    /// Binds the listening sockets (one per loop) and prepares the loops.
    pub fn bind(config: &Config) -> io::Result<Server> {
        // Mercure keys that cannot be read stop the start (the command line
        // checks them too).
        config.settings.mercure.verifier().map_err(|why| io::Error::new(io::ErrorKind::InvalidInput, why))?;
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
        let presence = config.settings.mercure.subscriptions.then(|| Arc::new(Presence::new(polls.len())));
        let roster = match (&presence, &bus, &config.redis) {
            (Some(presence), Some(bus), Some(url)) => {
                let describe = crate::app::mercure::describe;
                let roster = Roster::start(url, &config.redis_prefix, presence.clone(), describe, bus.clone());
                Some(Arc::new(roster.map_err(io::Error::other)?))
            }
            _ => None,
        };
        let shared = Shared {
            hub: hub.clone(),
            bus: bus.clone(),
            handle: handle.clone(),
            floor,
            presence,
            roster: roster.clone(),
        };
        let loops = polls
            .into_iter()
            .zip(listeners)
            .zip(inboxes)
            .enumerate()
            .map(|(index, ((poll, listener), inbox))| Loop::new(config, index, poll, listener, inbox, &shared))
            .collect();
        let publisher = Publisher::new(hub.clone(), bus.clone(), stop);
        Ok(Server { loops, hub, bus, roster, tick: config.tick, publisher, handle })
    }

    /// Makes SIGINT, SIGTERM and SIGQUIT stop the server gracefully, and
    /// SIGHUP, SIGUSR1, SIGUSR2 and SIGALRM do nothing but a log line, so
    /// that no signal a process manager sends kills it without the flush
    /// (the binary does this; a program embedding the server may prefer its
    /// own handling).
    pub fn stop_on_signals(&mut self) -> io::Result<()> {
        // Handled, the ignored ones' default action (termination) no longer
        // applies. All arrive on the first loop, which tells them apart.
        // (A thread of their own, blocked on its signal pipe, measurably
        // slowed the loops pinned to the same core: connecting 1,000
        // subscribers took 55 ms instead of 36 in `benches/compare --quick`.)
        let signals = signal_hook_mio::v1_0::Signals::new(STOP_SIGNALS.into_iter().chain(IGNORED_SIGNALS))?;
        if let Some(first) = self.loops.first_mut() {
            first.take_signals_from(signals)?;
        }
        Ok(())
    }

    /// The address the server listens on (useful after binding port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self.loops.first() {
            Some(first) => first.local_addr(),
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
            let name = format!("bare-sse-loop-{}", event_loop.index());
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
        // The roster hands events to the bus: it stops first.
        if let Some(roster) = &self.roster {
            roster.shutdown();
        }
        if let Some(bus) = &self.bus {
            bus.shutdown();
        }
        result
    }
}

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
