//! The cluster bus: nodes started with `--redis URL` share their events
//! through one Redis stream, so any node's publish reaches every node's
//! subscribers, in the same order everywhere.
//!
//! **Why a stream.** A Redis stream (`XADD`/`XREAD`) is an append-only log
//! with ids of the same `<ms>-<seq>` form as [`EventId`], strictly increasing.
//! So the stream is at once the one order of events (each node delivers in
//! stream order, with the stream's ids, so `Last-Event-ID` works against any
//! node), and the shared history (`XADD ... MAXLEN ~ n` keeps at least the
//! last `n`, which a node reads at start to fill its replay ring). Pub/sub would lose
//! events while a node is disconnected; a stream keeps them.
//!
//! **Who talks to Redis.** The event loop must never wait on Redis, so
//! each loop owns a non-blocking *writer* connection ([`Writer`], see
//! [`writer`] for why not a thread): a publish is encoded at once, the
//! publishes of one loop turn go out as one pipeline of `XADD`s at the end
//! of the turn, and each is answered with its own reply (the stream id, or
//! an error), in order, when the replies wake the loop. Publishes from
//! other threads ([`Bus::submit`]) go to the *writer thread*, which runs
//! the same [`Writer`] on a poll of its own. The *reader* thread first
//! hands the newest `max_len` entries to [`BusSink::backfill`] (the
//! stream may hold more, if another writer added them without `MAXLEN`),
//! then loops on `XREAD BLOCK` and hands each page to [`BusSink::deliver`],
//! on a blocking connection of its own ([`link`]) whose replies are parsed
//! in place ([`resp`]), without redis-rs: the reader runs once per page on
//! every node, and redis-rs's owned reply trees were its largest cost.
//! A node sees its own publishes through the reader like anyone else's,
//! which is what makes the order the same on every node.
//!
//! **Exactly once** rests on the stream's ids alone: the reader keeps the id of
//! the last entry it handed on (valid or skipped) and always reads strictly
//! after it, on any connection. Ids only grow, so nothing is handed on twice
//! and nothing retained is skipped, however often the connection drops.
//!
//! **When Redis is down** the reader and the writer thread retry with
//! backoff (100 ms doubling to 2 s); the outage is logged once, and so is
//! its end. Meanwhile a publish fails at once, so publishers get an error
//! rather than a wait, and [`Bus::is_up`] says so for `/healthz` (a loop's
//! writer connects when a publish needs it, and only while the bus is up).
//! **When Redis hangs**, every publish is still answered within
//! [`ANSWER_WITHIN`] of its submit: a connection is given up when the
//! oldest publish waiting on it reaches that deadline, everything else
//! waiting on it is answered at once (not after a reconnect), and a
//! connection attempt, `PING` included, gives up after `CONNECT_TIMEOUT`.
//! After reconnecting the reader
//! resumes from its last id, so entries other nodes added meanwhile still
//! arrive. If some were trimmed away meanwhile, that is logged as lost. If
//! Redis lost its data (restarted empty), the reader reads on: new ids are
//! time-based, so they are mostly still greater than the last one it
//! delivered.
//!
//! **When the stream restarts below the reader.** Not always, though: Redis
//! may fail over to one whose clock is behind, or the last id may have been
//! far ahead (an `XADD` with an explicit id) before the data was lost. Then
//! every new entry is below the reader's position, and an `XREAD` after it
//! would block forever while publishes succeed. So whenever an `XREAD` comes
//! back empty (at most `BLOCK_MS` after the restart, however busy the
//! stream) and after every reconnect, the reader compares the stream's last
//! id with its own; if the stream's is lower, the order starts over: a new
//! history ([`BusSink::backfill`] again, with a floor just below the new
//! stream's first entry), then the new entries, all delivered, from the
//! first. Ids go backwards once, on every node alike.
//!
//! **What a failed publish means.** [`BusError::Unavailable`]: the event is
//! not in the stream and never will be (not a byte of the `XADD` was
//! written, or Redis refused it), so a retry is safe. [`BusError::Unanswered`]:
//! the `XADD` went out and no answer came in time; Redis may have run it,
//! now or once it thaws, so the event may be delivered, and a retry may
//! deliver it twice.
//!
//! **Nothing from Redis is trusted**: an entry that is not a valid publish
//! (see [`Publish::validate`]) is skipped with a warning, and a reply of an
//! unexpected shape is an error that drops the connection, never a panic.
//! So is a reply over [`resp`]'s bounds (bulk strings of Redis's own 512 MiB
//! at most, arrays of 2^20 elements, 8 deep).

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use mio::{Events, Poll, Token, Waker};
use redis::{ConnectionAddr, IntoConnectionInfo};

use crate::broadcast::event::EventId;
use crate::broadcast::event::{MercureFields, Publish};

use link::Link;
use resp::Value;

mod link;
mod resp;
mod writer;

pub(crate) use writer::Writer;

/// Where the bus is and how much history it keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusConfig {
    /// A redis URL, e.g. `redis://127.0.0.1:6379/0`.
    pub url: String,
    /// Key namespace, `bare-sse:` by default; the stream key is `{prefix}events`.
    pub prefix: String,
    /// The `MAXLEN` of `XADD`: the stream retains at least this many
    /// events (Redis trims whole nodes of the stream, so a few more), and
    /// a node reads the newest this many into its history at start.
    pub max_len: usize,
}

/// One entry read from the stream, in stream order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusEvent {
    pub id: EventId,
    pub publish: Publish,
}

/// Where the reader thread hands what it reads. Called from the bus's own thread.
pub trait BusSink: Send + Sync + 'static {
    /// Called after the reader's first successful connection, before any
    /// [`BusSink::deliver`]: `events` are the newest `max_len` entries of
    /// the stream (all of it if it holds no more), oldest first, and `floor`
    /// is the id at or below which events may be missing from `events`:
    /// every event after `floor` is in `events` (up to the last of them;
    /// later ones come through `deliver`). The floor is 0-0 if nothing was
    /// ever trimmed or deleted and nothing older than `events` is left.
    ///
    /// Redis 7 moves `XINFO STREAM`'s `max-deleted-entry-id` on `XDEL` only,
    /// not on trimming, so after any removal the floor is also just below
    /// the first retained entry; and if the stream holds entries older than
    /// `events`, just below the first of `events`.
    ///
    /// Called again if the stream restarts below the last entry handed on
    /// (see the module docs): the one order starts over, with ids lower than
    /// before. Then `events` is empty and the history starts afresh at
    /// `floor`: every entry after it comes through `deliver`.
    fn backfill(&self, floor: EventId, events: Vec<BusEvent>);
    /// Each new entry after the backfill, in stream order, exactly once,
    /// including this node's own and those added while disconnected.
    fn deliver(&self, events: Vec<BusEvent>);
}

/// What [`Bus::submit`] calls with the stream id of the event, or why not.
pub type Reply = Box<dyn FnOnce(Result<EventId, BusError>) + Send>;

/// Why a publish got no stream id: either certainly not published, or
/// perhaps published. A publisher may retry the first; retrying the second
/// may publish the event twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusError {
    /// Not published: the `XADD` was never sent (Redis not reachable, too
    /// many publishes waiting, the bus stopped), or Redis refused it (say
    /// `WRONGTYPE`). The event is not in the stream and never will be.
    Unavailable(String),
    /// Sent, and no answer came: the connection failed or timed out first.
    /// Redis may have run the `XADD` (a frozen Redis runs what its socket
    /// holds once it thaws), so the event may be in the stream and be
    /// delivered everywhere.
    Unanswered(String),
}

impl std::fmt::Display for BusError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BusError::Unavailable(why) => write!(f, "redis unavailable: {why}"),
            BusError::Unanswered(why) => write!(f, "redis did not answer ({why}): the event may have been published"),
        }
    }
}

impl std::error::Error for BusError {}

/// Entries per `XREVRANGE`/`XREAD` page. The reader ([`Link`]) buffers a
/// whole reply before it decodes any of it, so this bounds the memory of
/// one reply: an entry written by a node is at most about 1 MiB (`data` of
/// at most [`MAX_MESSAGE_BYTES`], which `--max-body-bytes` is held to with
/// `--redis`, plus at most 16 topics of 64 bytes and an event name of 256),
/// so a page is at most about 64 MiB (its buffer up to twice that, as it
/// doubles), and its decoded events as much again. Entries from elsewhere
/// may be larger: a field of up to Redis's own 512 MiB is read whole (and
/// its entry skipped, so that the reader's position moves past it), and
/// nothing here bounds their number beyond [`PAGE`].
const PAGE: usize = 64;
/// How long one `XREAD` waits for entries: also how soon the reader notices a stop.
const BLOCK_MS: u64 = 500;
/// After a page that was not full, the reader lets entries gather this
/// long before it reads again. An `XREAD` costs Redis about as much for one
/// entry as for dozens (it seeks into the stream's node and walks it), and
/// the reader as much in round trips and hand-offs to the loops, so when
/// events come faster than round trips this turns one read per event or two
/// into one per page. The first event after a quiet spell is read at once;
/// none waits for longer than this in addition.
const GATHER: Duration = Duration::from_millis(1);
/// How long one connection attempt may take, handshake and first `PING`
/// included (the handshake is one pipeline, for the reader and the writers).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the writer thread's idle `PING` may take.
const IO_TIMEOUT: Duration = Duration::from_millis(1500);
/// Every publish is answered within this of its [`Bus::submit`] (or of its
/// [`Writer::submit`]), whatever Redis does: the connection is given up
/// when the oldest publish waiting on it reaches its deadline, and then
/// everything waiting on it is answered at once.
pub const ANSWER_WITHIN: Duration = Duration::from_millis(1500);
/// The writer thread pings after this long idle, so [`Bus::is_up`] notices
/// an outage even when nobody publishes.
const PING_IDLE: Duration = Duration::from_secs(1);
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Publishes waiting for one writer; past this, a submit fails at once.
const QUEUE_LEN: usize = 1024;
/// Largest `data` accepted from the stream.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// A connection to the cluster bus; see the module docs.
pub struct Bus {
    jobs: Sender<Job>,
    /// Wakes the writer thread for a job (and for the stop).
    waker: Arc<Waker>,
    shared: Arc<Shared>,
    /// Dropped to stop the threads (their `stop` receivers then disconnect).
    stop: Mutex<Option<Sender<()>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// The writer thread's tokens on its poll.
const JOBS: Token = Token(0);
const REDIS: Token = Token(1);

impl Bus {
    /// Spawns the threads and returns at once, even if Redis is down (then it
    /// keeps retrying with backoff). Err only for a URL that cannot be parsed.
    pub fn start(config: BusConfig, sink: Arc<dyn BusSink>) -> Result<Bus, String> {
        let bad_url = |e: redis::RedisError| format!("bad redis URL: {e}");
        let info = config.url.as_str().into_connection_info().map_err(bad_url)?;
        // Only for the URL: every connection is the bus's own, with its own
        // handshake (no `CLIENT SETINFO`), ending in a `PING`.
        let settings = info.redis_settings().clone().set_skip_set_lib_name();
        let (hello, hello_commands) = handshake(&settings);
        let target = match info.addr() {
            ConnectionAddr::Tcp(host, port) => Target::Tcp {
                host: host.clone(),
                port: *port,
                // An address needs no lookup; a name waits for the reader's.
                resolved: Mutex::new(host.parse().map(|ip| vec![SocketAddr::new(ip, *port)]).unwrap_or_default()),
            },
            ConnectionAddr::Unix(path) => Target::Unix(path.clone()),
            _ => return Err("bad redis URL: only redis:// and unix sockets are supported".to_owned()),
        };
        let (jobs, queue) = crossbeam_channel::bounded(QUEUE_LEN);
        let (stop, stopped) = crossbeam_channel::bounded(0);
        let key = format!("{}events", config.prefix);
        let mut xadd_head = Vec::new();
        for arg in [b"XADD".as_slice(), key.as_bytes(), b"MAXLEN", b"~", config.max_len.to_string().as_bytes(), b"*"] {
            resp::arg(&mut xadd_head, arg);
        }
        let shared = Arc::new(Shared {
            target,
            hello,
            hello_commands,
            xadd_head,
            key,
            max_len: config.max_len,
            stopped,
            health: Mutex::new(Health::default()),
        });
        let poll = Poll::new().map_err(|e| format!("writer poll: {e}"))?;
        let waker = Arc::new(Waker::new(poll.registry(), JOBS).map_err(|e| format!("writer waker: {e}"))?);
        let spawn = |name: &str, run: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new().name(name.to_owned()).spawn(run).map_err(|e| format!("spawn {name}: {e}"))
        };
        let (reader, writer) = (shared.clone(), shared.clone());
        let threads = vec![
            spawn("bus-reader", Box::new(move || reader.read(&*sink)))?,
            spawn("bus-writer", Box::new(move || Shared::write(writer, poll, &queue)))?,
        ];
        Ok(Bus { jobs, waker, shared, stop: Mutex::new(Some(stop)), threads: Mutex::new(threads) })
    }

    /// Queues an `XADD` of `publish` for the writer thread; never blocks.
    /// See the module docs. (An event loop has a [`Writer`] of its own.)
    pub fn submit(&self, publish: Publish, reply: Reply) {
        let job = Job { publish, reply: Some(reply), deadline: Instant::now() + ANSWER_WITHIN };
        if let Some(why) = self.shared.health().writer_down() {
            return job.fail(why);
        }
        match self.jobs.try_send(job) {
            Ok(()) => {
                if let Err(e) = self.waker.wake() {
                    log::error!("waking the redis writer thread: {e}");
                }
            }
            Err(TrySendError::Full(job)) => job.fail("too many publishes waiting for redis".to_owned()),
            Err(TrySendError::Disconnected(job)) => job.fail("bus stopped".to_owned()),
        }
    }

    /// A writer for an event loop, whose poll will hear of its connection
    /// under `token` (see [`writer`]).
    pub(crate) fn loop_writer<T>(&self, token: Token) -> Writer<T> {
        Writer::new(self.shared.clone(), token, false)
    }

    /// Whether both the reader and the writer are connected now.
    pub fn is_up(&self) -> bool {
        let health = self.shared.health();
        health.reader && health.writer
    }

    /// Stops the threads; returns within about 1.5 s even if Redis hangs
    /// (the reader's socket timeout, or a connection attempt's).
    pub fn shutdown(&self) {
        drop(lock(&self.stop).take());
        let _ = self.waker.wake();
        for thread in lock(&self.threads).drain(..) {
            if thread.join().is_err() {
                log::error!("a redis bus thread panicked");
            }
        }
    }
}

/// The commands every connection starts with, packed, and how many they
/// are: `AUTH` and `SELECT` as the URL asks (as redis-rs would send them,
/// always RESP2), and a `PING` last, since only an answer shows that Redis
/// itself is there (the kernel of a hung Redis completes the TCP handshake).
fn handshake(settings: &redis::RedisConnectionInfo) -> (Vec<u8>, usize) {
    let mut commands = Vec::new();
    if let Some(password) = settings.password() {
        let mut auth = redis::cmd("AUTH");
        if let Some(username) = settings.username() {
            auth.arg(username);
        }
        commands.push(auth.arg(password).get_packed_command());
    }
    if settings.db() != 0 {
        commands.push(redis::cmd("SELECT").arg(settings.db()).get_packed_command());
    }
    commands.push(redis::cmd("PING").get_packed_command());
    (commands.concat(), commands.len())
}

/// Where Redis is, for the writers' own connections.
enum Target {
    Tcp {
        host: String,
        port: u16,
        /// The addresses of `host`, as the reader last looked them up
        /// (writers run in event loops, which must not wait on a lookup).
        resolved: Mutex<Vec<SocketAddr>>,
    },
    Unix(PathBuf),
}

impl Target {
    /// Looks the host up again (a blocking call: the reader thread's).
    fn resolve(&self) {
        if let Target::Tcp { host, port, resolved } = self {
            match (host.as_str(), *port).to_socket_addrs() {
                Ok(addrs) => *lock(resolved) = addrs.collect(),
                Err(e) => log::debug!("looking up redis host {host}: {e}"),
            }
        }
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A queued publish. Its reply is called exactly once: with the result, or
/// with an error if the job is dropped unanswered (say, at shutdown).
struct Job {
    publish: Publish,
    reply: Option<Reply>,
    /// [`ANSWER_WITHIN`] after the submit.
    deadline: Instant,
}

impl Job {
    fn answer(mut self, result: Result<EventId, BusError>) {
        if let Some(reply) = self.reply.take() {
            reply(result);
        }
    }

    /// Not published (see [`BusError::Unavailable`]).
    fn fail(self, why: String) {
        self.answer(Err(BusError::Unavailable(why)));
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        if let Some(reply) = self.reply.take() {
            reply(Err(BusError::Unavailable("bus stopped".to_owned())));
        }
    }
}

/// Which connection a health change is about.
#[derive(Clone, Copy)]
enum Role {
    Reader,
    Writer,
}

/// The state of the connections, and of the current outage.
#[derive(Default)]
struct Health {
    reader: bool,
    /// As the last writer to hear from Redis found it: the writer thread,
    /// which pings when idle, or a loop's.
    writer: bool,
    /// During an outage (logged at its start): which roles have worked since.
    /// It ends when both have, so a drop one thread notices late (the
    /// writer, at its next PING) is not logged as a second outage.
    outage: Option<[bool; 2]>,
    last_error: String,
}

impl Health {
    /// Why a submit must fail now, if the writer is not connected.
    fn writer_down(&self) -> Option<String> {
        let why = if self.last_error.is_empty() { "not connected yet" } else { &self.last_error };
        (!self.writer).then(|| why.to_owned())
    }
}

/// What the threads and the writers share.
struct Shared {
    /// For every connection, the reader's (a [`Link`]) and the writers'.
    target: Target,
    /// See [`handshake`].
    hello: Vec<u8>,
    hello_commands: usize,
    /// The packed arguments of every `XADD` up to its fields.
    xadd_head: Vec<u8>,
    key: String,
    max_len: usize,
    /// Disconnects when the bus stops.
    stopped: Receiver<()>,
    health: Mutex<Health>,
}

impl Shared {
    fn health(&self) -> MutexGuard<'_, Health> {
        lock(&self.health)
    }

    fn is_stopped(&self) -> bool {
        self.stopped.try_recv().is_err_and(|e| e.is_disconnected())
    }

    /// Records that `role` worked or failed, logging an outage's start and end once.
    fn set_up(&self, role: Role, up: Result<(), String>) {
        let mut health = self.health();
        let flag = match role {
            Role::Reader => &mut health.reader,
            Role::Writer => &mut health.writer,
        };
        *flag = up.is_ok();
        match (up, &mut health.outage) {
            (Err(why), outage) => {
                if outage.is_none() {
                    log::warn!("redis unavailable: {why}");
                    *outage = Some([false; 2]);
                }
                health.last_error = why;
            }
            (Ok(()), Some(worked)) => {
                worked[role as usize] = true;
                if *worked == [true; 2] {
                    log::info!("redis reachable again");
                    health.outage = None;
                }
            }
            (Ok(()), None) => {}
        }
    }

    /// Connects the reader, retrying with backoff; `pause` waits between
    /// tries and says whether the bus stopped meanwhile. `None` once stopped.
    /// Looks the host up again first, for the writers too.
    fn connect(&self, mut pause: impl FnMut(Duration) -> bool) -> Option<Link> {
        let mut backoff = BACKOFF_FIRST;
        loop {
            if self.is_stopped() {
                return None;
            }
            self.target.resolve();
            let timeout = Duration::from_millis(BLOCK_MS) + Duration::from_secs(1);
            let connection = Link::open(&self.target, &self.hello, self.hello_commands, CONNECT_TIMEOUT, timeout);
            match connection {
                Ok(connection) => {
                    self.set_up(Role::Reader, Ok(()));
                    return Some(connection);
                }
                Err(e) => self.set_up(Role::Reader, Err(reason(&e))),
            }
            if pause(backoff) {
                return None;
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// The reader thread: backfill once, then follow the stream until stopped.
    fn read(&self, sink: &dyn BusSink) {
        let wait = |pause| matches!(self.stopped.recv_timeout(pause), Err(RecvTimeoutError::Disconnected));
        // The last entry handed on; `None` until the backfill was.
        let mut cursor: Option<EventId> = None;
        while let Some(mut connection) = self.connect(wait) {
            match self.follow(&mut connection, sink, &mut cursor) {
                Ok(()) => return,
                Err(e) => self.set_up(Role::Reader, Err(reason(&e))),
            }
        }
    }

    /// Reads on one connection until it fails (`Err`) or the bus stops (`Ok`).
    fn follow(&self, con: &mut Link, sink: &dyn BusSink, cursor: &mut Option<EventId>) -> io::Result<()> {
        let mut last = match *cursor {
            Some(last) => self.resume(con, sink, last, true)?,
            None => {
                let (floor, events, last) = self.backfill(con)?;
                sink.backfill(floor, events);
                last
            }
        };
        *cursor = Some(last);
        let (page, block) = (PAGE.to_string(), BLOCK_MS.to_string());
        while !self.is_stopped() {
            let after = last.to_string();
            let args = [b"XREAD".as_slice(), b"COUNT", page.as_bytes(), b"BLOCK", block.as_bytes(), b"STREAMS"];
            let reply = con.query(&[&args[..], &[self.key.as_bytes(), after.as_bytes()]].concat())?;
            // Nothing new for a while: the time to check that the stream
            // did not restart below `last`, which no XREAD would show.
            if reply == Value::Nil {
                drop(reply);
                last = self.resume(con, sink, last, false)?;
                *cursor = Some(last);
                continue;
            }
            let entries = xread_entries(&reply)?;
            let (events, page_last) = decode(entries);
            if let Some(page_last) = page_last {
                last = page_last.max(last);
            }
            if !events.is_empty() {
                sink.deliver(events);
            }
            *cursor = Some(last);
            if entries.len() < PAGE && self.stopped.recv_timeout(GATHER).is_err_and(|e| e.is_disconnected()) {
                break;
            }
        }
        Ok(())
    }

    /// The newest `max_len` entries (at least one: the reader resumes after
    /// the newest), read newest first in pages and returned oldest first,
    /// with the floor below which some may be missing and the newest id.
    /// Older entries are never read, however many the stream holds.
    ///
    /// The floor is read last: anything trimmed during the paging is then at
    /// or below it, so the promise holds without a lock. If entries older
    /// than the oldest read are left (`first-entry` is below it), the floor
    /// is just below the oldest read; entries added during the paging are
    /// above the newest id, so the reader's `XREAD` brings them.
    fn backfill(&self, con: &mut Link) -> io::Result<(EventId, Vec<BusEvent>, EventId)> {
        let keep = self.max_len.max(1);
        let (mut events, mut read, mut end) = (Vec::new(), 0, "+".to_owned());
        let (mut newest, mut oldest) = (None, None);
        while read < keep {
            let count = PAGE.min(keep - read);
            let count_arg = count.to_string();
            let args =
                [b"XREVRANGE".as_slice(), self.key.as_bytes(), end.as_bytes(), b"-", b"COUNT", count_arg.as_bytes()];
            let page = con.query(&args)?;
            let entries = list_or_empty(&page)?;
            if entries.is_empty() {
                break;
            }
            let page_oldest = entries.iter().filter_map(entry_id).min().ok_or_else(|| malformed("XREVRANGE"))?;
            let (mut batch, page_newest) = decode(entries);
            events.append(&mut batch);
            newest = newest.max(page_newest);
            oldest = Some(page_oldest);
            read += entries.len();
            if entries.len() < count {
                break;
            }
            end = format!("({page_oldest}");
        }
        // Pages came newest first, each newest first, and each below the last.
        events.reverse();
        let floor = match (self.info(con)?, oldest) {
            (None, _) => EventId::default(),
            (Some(info), Some(oldest)) if info.first.is_some_and(|first| first < oldest) => {
                info.floor.max(before(oldest))
            }
            (Some(info), _) => info.floor,
        };
        Ok((floor, events, newest.unwrap_or_default()))
    }

    /// Where to read on from after `last`, the last entry handed on: `last`
    /// itself, unless the stream restarted below it; then [`Shared::restart`].
    /// After a reconnect (`reconnected`), also warns if entries after `last`
    /// are gone for good.
    fn resume(&self, con: &mut Link, sink: &dyn BusSink, last: EventId, reconnected: bool) -> io::Result<EventId> {
        let key = &self.key;
        match self.info(con)? {
            Some(info) if info.last_generated < last => return self.restart(con, sink, last),
            None if reconnected && last != EventId::default() => {
                log::warn!("redis stream {key} is gone (redis lost its data?)")
            }
            Some(info) if reconnected && info.floor > last => {
                log::warn!("events after {last} up to {} may have been trimmed while disconnected: lost", info.floor)
            }
            _ => {}
        }
        Ok(last)
    }

    /// The stream restarted below `last` (Redis lost its data and its clock
    /// is behind, or failed over to one that is, or `last` was far ahead):
    /// every entry it holds came after the restart, and no `XREAD` after
    /// `last` would ever return one. So the one order starts over: the sink
    /// gets a new, empty history whose floor is just below the first of
    /// them (a second [`BusSink::backfill`]), then the newest `max_len` of
    /// them as news. Returns the new position.
    fn restart(&self, con: &mut Link, sink: &dyn BusSink, last: EventId) -> io::Result<EventId> {
        let (floor, events, newest) = self.backfill(con)?;
        let start = events.first().map_or(newest, |event| before(event.id));
        log::warn!("redis stream {} restarted below {last}: the order starts over after {start}", self.key);
        if floor != EventId::default() {
            log::warn!("events of the restarted stream up to {floor} were removed before they were read: lost");
        }
        sink.backfill(floor.max(start), Vec::new());
        if !events.is_empty() {
            sink.deliver(events);
        }
        Ok(newest)
    }

    /// `XINFO STREAM`, or `None` if the stream does not exist.
    fn info(&self, con: &mut Link) -> io::Result<Option<StreamInfo>> {
        // Asked first, rather than read from XINFO's error text ("no such
        // key"), which is not part of any contract. Should the stream vanish
        // in between, XINFO fails and the caller retries like any error.
        match con.query(&[b"EXISTS", self.key.as_bytes()])? {
            Value::Int(0) => return Ok(None),
            Value::Int(1) => {}
            _ => return Err(malformed("EXISTS")),
        }
        let reply = con.query(&[b"XINFO", b"STREAM", self.key.as_bytes()])?;
        let pairs: Vec<(&Value, &Value)> = match &reply {
            Value::Array(flat) => flat.chunks_exact(2).filter_map(|kv| kv.first().zip(kv.get(1))).collect(),
            _ => return Err(malformed("XINFO STREAM")),
        };
        let field = |name: &str| pairs.iter().find(|(k, _)| text(k) == Some(name)).map(|(_, v)| *v);
        let id = |name| field(name).and_then(text).and_then(EventId::parse);
        let int = |name| match field(name) {
            Some(Value::Int(n)) => Some(*n),
            _ => None,
        };
        let first = field("first-entry").and_then(entry_id);
        let (Some(max_deleted), Some(last_generated), Some(added), Some(length)) =
            (id("max-deleted-entry-id"), id("last-generated-id"), int("entries-added"), int("length"))
        else {
            return Err(malformed("XINFO STREAM (redis 7 or newer needed)"));
        };
        // Trimming moves the head but not max-deleted-entry-id (only XDEL
        // does): if entries were removed, all below the first retained one
        // may be gone too (all of them if none is left).
        let head = first.map_or(last_generated, before);
        let floor = if added > length { max_deleted.max(head) } else { max_deleted };
        Ok(Some(StreamInfo { floor, first, last_generated }))
    }

    /// The writer thread: a [`Writer`] on a poll of its own, for the jobs
    /// of [`Bus::submit`]; as a probe, it also keeps [`Health`] current
    /// when nobody publishes.
    fn write(shared: Arc<Shared>, mut poll: Poll, queue: &Receiver<Job>) {
        let mut writer: Writer<Reply> = Writer::new(shared.clone(), REDIS, true);
        let mut events = Events::with_capacity(8);
        while !shared.is_stopped() {
            let timeout = writer.next_deadline().map(|at| at.saturating_duration_since(Instant::now()));
            match poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::error!("redis writer thread: poll: {e}");
                    break;
                }
            }
            for event in events.iter().filter(|event| event.token() == REDIS) {
                writer.ready(event);
            }
            while let Ok(mut job) = queue.try_recv() {
                let Some(reply) = job.reply.take() else { continue };
                let publish = std::mem::take(&mut job.publish);
                if let Err((reply, e)) = writer.submit(poll.registry(), publish, job.deadline, |_| reply) {
                    reply(Err(e));
                }
            }
            writer.tick(poll.registry(), Instant::now());
            writer.flush();
            for (reply, result) in writer.take_answers() {
                reply(result);
            }
        }
        writer.close("bus stopped");
        for (reply, result) in writer.take_answers() {
            reply(result);
        }
        let mut health = shared.health();
        (health.writer, health.last_error) = (false, "bus stopped".to_owned());
        drop(health);
        while let Ok(job) = queue.try_recv() {
            job.fail("bus stopped".to_owned());
        }
    }
}

/// What the reader needs from `XINFO STREAM`.
struct StreamInfo {
    /// The id at or below which entries may have been removed (0-0 if none was).
    floor: EventId,
    /// The id of the oldest entry retained, if any.
    first: Option<EventId>,
    last_generated: EventId,
}

/// The greatest id below `id`.
fn before(id: EventId) -> EventId {
    match (id.ms, id.seq) {
        (ms, 0) if ms > 0 => EventId { ms: ms - 1, seq: u64::MAX },
        (ms, seq) => EventId { ms, seq: seq.saturating_sub(1) },
    }
}

/// The entries of an `XREAD` reply of one stream that is not `nil`: `[[key, entries]]`.
fn xread_entries<'v, 'a>(reply: &'v Value<'a>) -> io::Result<&'v [Value<'a>]> {
    let entries = list(reply).and_then(|streams| list(streams.first()?)?.get(1));
    list_or_empty(entries.ok_or_else(|| malformed("XREAD"))?)
}

/// Turns stream entries into events, skipping with a warning each that is
/// not a valid publish; also returns the largest id seen, skipped or not.
fn decode(entries: &[Value]) -> (Vec<BusEvent>, Option<EventId>) {
    let (mut events, mut last) = (Vec::with_capacity(entries.len()), None);
    for entry in entries {
        let fields = match list(entry).map(Vec::as_slice) {
            Some([_, fields]) => fields,
            _ => &Value::Nil,
        };
        let Some(id) = entry_id(entry) else {
            log::warn!("skipped a redis stream entry without a valid id");
            continue;
        };
        last = last.max(Some(id));
        match decode_publish(fields) {
            Ok(publish) => events.push(BusEvent { id, publish }),
            Err(why) => log::warn!("skipped redis stream entry {id}: {why}"),
        }
    }
    (events, last)
}

/// The id of a stream entry (`[id, fields]`), if it has a valid one.
fn entry_id(entry: &Value) -> Option<EventId> {
    match list(entry).map(Vec::as_slice) {
        Some([id, _]) => text(id).and_then(EventId::parse),
        _ => None,
    }
}

/// The `mercure` field of a Mercure update's entry: its topics and what it
/// carries beyond a seeds event, as JSON.
fn encode_mercure(publish: &Publish, mercure: &MercureFields) -> String {
    serde_json::json!({
        "topics": publish.topics,
        "private": mercure.private,
        "id": mercure.id,
        "retry": mercure.retry,
    })
    .to_string()
}

/// The `mercure` field back: topics and the Mercure fields.
fn decode_mercure(json: &str) -> Result<(Vec<String>, MercureFields), String> {
    #[derive(serde::Deserialize)]
    struct Fields {
        topics: Vec<String>,
        private: bool,
        id: Option<String>,
        retry: Option<u64>,
    }
    let fields: Fields = serde_json::from_str(json).map_err(|e| format!("bad mercure field: {e}"))?;
    Ok((fields.topics, MercureFields { private: fields.private, id: fields.id, retry: fields.retry }))
}

/// One entry's fields, `data`, `topics` (comma-separated) or `mercure` (for
/// a Mercure update), and `event` (optional), as a valid publish; unknown
/// fields are ignored.
fn decode_publish(fields: &Value) -> Result<Publish, String> {
    let fields = list(fields).ok_or("fields are not a list")?;
    let (mut data, mut topics, mut event, mut mercure) = (None, None, None, None);
    for pair in fields.chunks(2) {
        let [name, value] = pair else { return Err("odd number of fields".to_owned()) };
        let slot = match text(name) {
            Some("data") => &mut data,
            Some("topics") => &mut topics,
            Some("event") => &mut event,
            Some("mercure") => &mut mercure,
            _ => continue,
        };
        let &Value::BulkString(bytes) = value else { return Err("a field value is not a string".to_owned()) };
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Err(format!("a field is over {MAX_MESSAGE_BYTES} bytes"));
        }
        *slot = Some(std::str::from_utf8(bytes).map_err(|_| "a field is not UTF-8")?.to_owned());
    }
    let (listed, mercure) = match mercure {
        Some(json) => {
            let (topics, fields) = decode_mercure(&json)?;
            (topics, Some(fields))
        }
        None => (topics.ok_or("no topics field")?.split(',').map(str::to_owned).collect(), None),
    };
    let mut topic_list: Vec<String> = Vec::new();
    for topic in listed {
        if !topic_list.contains(&topic) {
            topic_list.push(topic);
        }
    }
    let publish = Publish { message: data.ok_or("no data field")?, topics: topic_list, event, mercure };
    publish.validate()?;
    Ok(publish)
}

fn list<'v, 'a>(value: &'v Value<'a>) -> Option<&'v Vec<Value<'a>>> {
    match value {
        Value::Array(items) => Some(items),
        _ => None,
    }
}

/// A list of entries, where `nil` means none.
fn list_or_empty<'v, 'a>(value: &'v Value<'a>) -> io::Result<&'v [Value<'a>]> {
    match value {
        Value::Nil => Ok(&[]),
        other => list(other).map(Vec::as_slice).ok_or_else(|| malformed("entries")),
    }
}

fn text<'a>(value: &Value<'a>) -> Option<&'a str> {
    match *value {
        Value::BulkString(bytes) | Value::SimpleString(bytes) => std::str::from_utf8(bytes).ok(),
        _ => None,
    }
}

fn malformed(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("unexpected reply to {what}"))
}

/// A short text for an error (a timeout reads "Resource temporarily unavailable" otherwise).
fn reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => "timed out".to_owned(),
        _ => e.to_string(),
    }
}

/// Locks, ignoring poisoning: the data behind these locks stays consistent
/// at every step, so a panic elsewhere leaves nothing half-done.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    //! The reply decoding, on replies built by hand: what a live Redis
    //! sends is covered by `tests/bus.rs`; here, every malformed shape.

    use super::*;

    fn bulk(text: &str) -> Value<'_> {
        Value::BulkString(text.as_bytes())
    }

    fn entry<'a>(id: &'a str, fields: &[&'a str]) -> Value<'a> {
        Value::Array(vec![bulk(id), Value::Array(fields.iter().map(|f| bulk(f)).collect())])
    }

    #[test]
    fn an_entry_decodes_to_its_publish() {
        let entries = [entry("5-1", &["data", "two\nlines", "topics", "a,b,a", "event", "update", "extra", "x"])];
        let (events, last) = decode(&entries);
        assert_eq!(last, Some(EventId { ms: 5, seq: 1 }));
        let publish = &events[0].publish;
        assert_eq!(publish.message, "two\nlines");
        assert_eq!(publish.topics, ["a", "b"], "repeated topics are dropped, order kept");
        assert_eq!(publish.event.as_deref(), Some("update"));
    }

    #[test]
    fn bad_entries_are_skipped_but_their_ids_still_count() {
        let entries = [
            entry("1-1", &["data", "ok", "topics", "t"]),
            entry("2-1", &["data", "no topics"]),
            entry("3-1", &["topics", "t"]),
            entry("4-1", &["data", "x", "topics", "not a topic!"]),
            entry("5-1", &["data", "x", "topics", "t", "event", "gap"]),
            entry("6-1", &["data", "odd", "topics"]),
            Value::Array(vec![bulk("7-1"), Value::Array(vec![bulk("data"), Value::Int(1), bulk("topics"), bulk("t")])]),
            Value::Array(vec![
                bulk("8-1"),
                Value::Array(vec![bulk("data"), Value::BulkString(&[0xff]), bulk("topics"), bulk("t")]),
            ]),
            Value::Array(vec![bulk("9-1"), Value::Nil]),
            entry("not-an-id", &["data", "x", "topics", "t"]),
            Value::Int(3),
        ];
        let (events, last) = decode(&entries);
        assert_eq!(events.len(), 1, "only the first entry is a valid publish");
        assert_eq!(events[0].id, EventId { ms: 1, seq: 1 });
        assert_eq!(last, Some(EventId { ms: 9, seq: 1 }), "skipped entries with an id still move the cursor");
    }

    #[test]
    fn a_mercure_update_travels_whole() {
        let mercure = MercureFields { private: true, id: Some("urn:x:1".into()), retry: Some(5) };
        let publish = Publish {
            message: "m".into(),
            topics: vec!["https://a.example/b,c".into(), "/d".into()],
            event: Some("t".into()),
            mercure: Some(mercure.clone()),
        };
        let json = encode_mercure(&publish, &mercure);
        let entries = [entry("1-1", &["data", "m", "mercure", &json, "event", "t"])];
        let (events, _) = decode(&entries);
        assert_eq!(events[0].publish, publish, "a comma in a Mercure topic splits nothing");
        let (events, _) = decode(&[entry("2-1", &["data", "m", "mercure", "{\"topics\":[]}"])]);
        assert!(events.is_empty(), "a mercure field that is not whole is refused");
    }

    #[test]
    fn a_field_over_the_message_bound_is_refused() {
        let big = "x".repeat(MAX_MESSAGE_BYTES + 1);
        let (events, _) = decode(&[entry("1-1", &["data", &big, "topics", "t"])]);
        assert!(events.is_empty());
    }

    #[test]
    fn entry_lists_and_texts() {
        assert_eq!(list_or_empty(&Value::Nil).map(<[Value]>::len).ok(), Some(0));
        assert!(list_or_empty(&Value::Int(1)).is_err());
        assert_eq!(text(&Value::SimpleString(b"OK")), Some("OK"));
        assert_eq!(text(&Value::BulkString(&[0xff])), None);
        assert_eq!(entry_id(&entry("12-3", &[])), Some(EventId { ms: 12, seq: 3 }));
        assert_eq!(entry_id(&Value::Array(vec![bulk("12-3")])), None);
    }

    #[test]
    fn an_xread_reply_from_the_wire_decodes() {
        let wire = b"*1\r\n*2\r\n$6\r\nevents\r\n*3\r\n\
            *2\r\n$3\r\n1-1\r\n*4\r\n$4\r\ndata\r\n$2\r\nhi\r\n$6\r\ntopics\r\n$3\r\na,b\r\n\
            *2\r\n$3\r\n2-0\r\n*2\r\n$4\r\ndata\r\n$1\r\nx\r\n\
            *2\r\n$3\r\n3-0\r\n*-1\r\n";
        let (reply, _) = resp::parse_nested(wire).unwrap().unwrap();
        let (events, last) = decode(xread_entries(&reply).unwrap());
        assert_eq!(last, Some(EventId { ms: 3, seq: 0 }), "skipped entries still move the cursor");
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].id, EventId { ms: 1, seq: 1 });
        assert_eq!(events[0].publish.message, "hi");
        assert_eq!(events[0].publish.topics, ["a", "b"]);
        for shape in [&b"*0\r\n"[..], b"*1\r\n*1\r\n$1\r\nk\r\n", b":1\r\n", b"*1\r\n*2\r\n$1\r\nk\r\n:1\r\n"] {
            let (reply, _) = resp::parse_nested(shape).unwrap().unwrap();
            assert!(xread_entries(&reply).is_err(), "{:?}", String::from_utf8_lossy(shape));
        }
        let (reply, _) = resp::parse_nested(b"*1\r\n*2\r\n$1\r\nk\r\n*-1\r\n").unwrap().unwrap();
        assert_eq!(xread_entries(&reply).map(<[Value]>::len).ok(), Some(0), "no entries");
    }

    #[test]
    fn before_is_the_greatest_id_below() {
        assert_eq!(before(EventId { ms: 5, seq: 3 }), EventId { ms: 5, seq: 2 });
        assert_eq!(before(EventId { ms: 5, seq: 0 }), EventId { ms: 4, seq: u64::MAX });
        assert_eq!(before(EventId { ms: 0, seq: 0 }), EventId { ms: 0, seq: 0 });
    }
}
