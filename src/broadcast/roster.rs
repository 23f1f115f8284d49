//! The cluster's roster of active subscriptions (`--redis` with
//! `--mercure-subscriptions`): each node keeps its own subscriptions in
//! Redis, so that any node can list the whole cluster's.
//!
//! **Layout.** One hash per node, `{prefix}subscriptions:{node}`: a field per
//! subscription (its topic, which is unique: it holds the subscriber id),
//! whose value is the subscription's JSON document. The key expires
//! [`TTL`] after the node last touched it; a live node touches it every
//! [`REFRESH`]. So the entries of a node that crashed (`kill -9`, a lost
//! machine) leave every listing within [`TTL`]. Nobody announces their end
//! (the `active: false` events): the node that could is gone. A node that
//! stops gracefully deletes its key.
//!
//! **Why the writer publishes the events.** A client lists, takes the
//! cursor (the last event id its node has seen, taken before the list is
//! read) and then follows the events after it. That misses nothing only if
//! every change whose event is at or before the cursor is in the list. So a
//! change reaches Redis first, and only once Redis has it does the writer
//! hand its event to the bus: a node that has seen the event reads a
//! roster that has the change.
//!
//! **Two threads, two connections**, like the bus. The *writer* applies
//! the loops' changes in order (a queue per node, in pipelines), then hands
//! their events to the bus and waits for its answers: what the bus refuses
//! (its queue full in a burst of comings and goings, Redis down) is offered
//! again, in order, so a burst delays events rather than losing them.
//! After every (re)connection, and when its key is found gone (Redis lost
//! its data), it rewrites the node's hash from the in-memory registry
//! ([`Presence`]), then sends the events of the changes it held meanwhile.
//! The *reader* answers listings: it scans the node keys and their hashes a
//! command at a time, taking the listings under way in turn, and hands each
//! page to its listing's loop through a small bounded channel (the loop
//! takes a page when the socket has taken the last), so memory stays
//! bounded whatever the cluster's size, and a client that stops reading
//! holds up only its own listing, dropped after [`STALLED_LISTING`]. When
//! Redis cannot be reached, listings fail at once (the loop answers 503, or
//! ends the body unfinished).
//!
//! **What is lost**, and when: the events of a node killed without a word
//! (above); events the bus refused for as long as [`MAX_QUEUED_CHANGES`]
//! more changes came (oldest first: a subscription's later event makes up
//! for it); and a node whose writer cannot reach Redis for more than
//! [`TTL`] drops out of listings until it can. `HSCAN` may return a field
//! twice while Redis rehashes the hash: a listing may then show a
//! subscription twice.
//!
//! Nothing read from Redis is trusted beyond being text: a field or value
//! that is not UTF-8 is skipped.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use redis::{Connection, RedisResult, Value};

use crate::broadcast::bus::{ANSWER_WITHIN, Bus};
use crate::broadcast::event::Publish;
use crate::broadcast::presence::{Cursor, Presence, Seen};

/// How long a node's entries outlive its last refresh.
pub const TTL: Duration = Duration::from_secs(15);

/// How often a node refreshes its key's expiry.
pub const REFRESH: Duration = Duration::from_secs(5);

/// How long the reader waits for a listing's client to take a page.
pub const STALLED_LISTING: Duration = Duration::from_secs(10);

/// Changes waiting for the writer; past this, changes are dropped and the
/// hash is rewritten from the registry instead (a Redis outage, say).
const MAX_QUEUED_CHANGES: usize = 100_000;

/// Changes per pipeline, fields per `HSCAN` page, keys per `SCAN` page.
const BATCH: usize = 256;

/// How long a Redis command may take.
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// Listing requests waiting for the reader; past this, a listing is
/// answered 503 at once.
const MAX_QUEUED_LISTINGS: usize = 64;

/// The writer's pause after a failure, doubling up to the most.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// How a subscription is written into the roster: its field (topic) and
/// document, from the application's format.
pub type Describe = fn(Seen<'_>) -> (String, String);

/// A subscription started or ended on this node.
#[derive(Debug)]
pub enum Change {
    Join { field: String, document: String, event: Publish },
    Leave { field: String, event: Publish },
}

/// One page of a listing, or its end.
#[derive(Debug)]
pub enum Page {
    /// Documents of subscriptions.
    Documents(Vec<String>),
    /// The listing is complete.
    End,
}

/// What a listing asks for: subscriptions whose field starts with
/// `prefix` (or is exactly it, for one subscription).
pub struct ListRequest {
    pub prefix: String,
    pub exact: bool,
    pub pages: Sender<Page>,
    /// Wakes the listing's loop when a page is ready.
    pub wake: Box<dyn Fn() + Send>,
}

/// The roster's handle, shared by the loops.
#[derive(Debug)]
pub struct Roster {
    changes: Sender<Change>,
    requests: Sender<ListRequest>,
    /// Set when a change was dropped: the writer rewrites the hash.
    stale: Arc<AtomicBool>,
    /// Dropped to stop the threads.
    stop: Mutex<Option<Sender<()>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for ListRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListRequest").field("prefix", &self.prefix).field("exact", &self.exact).finish()
    }
}

struct Shared {
    client: redis::Client,
    key: String,
    /// Where a rewrite is written before it replaces `key`: outside
    /// `pattern`, so listings never see it.
    rewrite_key: String,
    pattern: String,
    presence: Arc<Presence>,
    describe: Describe,
    bus: Arc<Bus>,
    stale: Arc<AtomicBool>,
    stopped: Receiver<()>,
}

impl Roster {
    /// Starts the writer and reader for the node whose registry is
    /// `presence`, on the Redis at `url` with the bus's key `prefix`.
    pub fn start(
        url: &str,
        prefix: &str,
        presence: Arc<Presence>,
        describe: Describe,
        bus: Arc<Bus>,
    ) -> Result<Roster, String> {
        let client = redis::Client::open(url).map_err(|e| format!("redis: {e}"))?;
        let (changes, queue) = crossbeam_channel::bounded(MAX_QUEUED_CHANGES);
        let (requests, listings) = crossbeam_channel::bounded(MAX_QUEUED_LISTINGS);
        let (stop, stopped) = crossbeam_channel::bounded(0);
        let stale = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared {
            client,
            key: format!("{prefix}subscriptions:{:012x}", presence.node()),
            rewrite_key: format!("{prefix}rewriting-subscriptions:{:012x}", presence.node()),
            pattern: format!("{prefix}subscriptions:*"),
            presence,
            describe,
            bus,
            stale: stale.clone(),
            stopped,
        });
        let writer = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("roster-writer".into())
                .spawn(move || shared.write(&queue))
                .map_err(|e| e.to_string())?
        };
        let reader = std::thread::Builder::new()
            .name("roster-reader".into())
            .spawn(move || shared.read(&listings))
            .map_err(|e| e.to_string())?;
        Ok(Roster { changes, requests, stale, stop: Mutex::new(Some(stop)), threads: Mutex::new(vec![writer, reader]) })
    }

    /// Queues a change; never waits. A change that does not fit is
    /// dropped, and the writer rewrites the hash from the registry.
    pub fn change(&self, change: Change) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.changes.try_send(change) {
            self.stale.store(true, Ordering::Relaxed);
        }
    }

    /// Starts a listing; its pages arrive on the request's channel. `false`
    /// if too many are waiting already (then answer 503).
    pub fn list(&self, request: ListRequest) -> bool {
        self.requests.try_send(request).is_ok()
    }

    /// Stops both threads (the writer deletes this node's hash first).
    pub fn shutdown(&self) {
        // Closing the channel wakes both threads.
        drop(self.stop.lock().unwrap_or_else(|p| p.into_inner()).take());
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for thread in threads {
            let _ = thread.join();
        }
    }
}

impl Drop for Roster {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Shared {
    /// One connection attempt, within [`IO_TIMEOUT`].
    fn connect_once(&self) -> Option<Connection> {
        let connection = self.client.get_connection_with_timeout(IO_TIMEOUT).and_then(|c| {
            c.set_read_timeout(Some(IO_TIMEOUT))?;
            c.set_write_timeout(Some(IO_TIMEOUT))?;
            Ok(c)
        });
        connection.map_err(|e| log::debug!("roster: {e}")).ok()
    }

    /// Waits `pause` unless stopped meanwhile; says whether stopped.
    fn pause(&self, pause: Duration) -> bool {
        !matches!(self.stopped.recv_timeout(pause), Err(RecvTimeoutError::Timeout))
    }

    /// The writer thread. Each change goes to Redis, then its event to the
    /// bus, in order; what the bus refuses is offered again (the events
    /// of one subscription stay in order, and one offered twice is
    /// harmless: a client applies each as the state it describes).
    fn write(&self, queue: &Receiver<Change>) {
        let mut connection: Option<Connection> = None;
        let mut refreshed = Instant::now();
        let mut backoff = BACKOFF_FIRST;
        // Events whose changes Redis has, waiting for the bus to take them.
        let mut owed: VecDeque<Publish> = VecDeque::new();
        // Whether Redis may not reflect the registry (at start, after an
        // error): the hash is rewritten before anything else.
        let mut rewrite = true;
        loop {
            let Some(con) = connection.as_mut() else {
                connection = self.connect_once();
                if connection.is_none() && self.pause(backoff) {
                    break;
                }
                backoff = if connection.is_some() { BACKOFF_FIRST } else { (backoff * 2).min(BACKOFF_MAX) };
                continue;
            };
            if rewrite || self.stale.swap(false, Ordering::Relaxed) {
                // Whatever is queued is in the registry already: the
                // rewrite writes it, and its events go out after.
                while let Ok(change) = queue.try_recv() {
                    owe(&mut owed, change.into_event());
                }
                match self.rewrite(con) {
                    Ok(()) => rewrite = false,
                    Err(e) => {
                        log::warn!("roster: {e}");
                        (connection, rewrite) = (None, true);
                        continue;
                    }
                }
                refreshed = Instant::now();
            }
            if !owed.is_empty() && !self.offer(&mut owed) {
                // The bus is full or Redis is down: try again shortly.
                if self.pause(backoff) {
                    break;
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
            backoff = BACKOFF_FIRST;
            let first = crossbeam_channel::select! {
                recv(queue) -> change => match change { Ok(change) => Some(change), Err(_) => break },
                recv(self.stopped) -> _ => break,
                default(REFRESH) => None,
            };
            let mut batch: Vec<Change> = first.into_iter().collect();
            while batch.len() < BATCH {
                let Ok(change) = queue.try_recv() else { break };
                batch.push(change);
            }
            let refresh = refreshed.elapsed() >= REFRESH;
            if batch.is_empty() && !refresh {
                continue;
            }
            let mut pipe = redis::pipe();
            for change in &batch {
                match change {
                    Change::Join { field, document, .. } => pipe.hset(&self.key, field, document).ignore(),
                    Change::Leave { field, .. } => pipe.hdel(&self.key, field).ignore(),
                };
            }
            pipe.pexpire(&self.key, TTL.as_millis() as i64).ignore();
            let mut written = pipe.query::<()>(con);
            if refresh && written.is_ok() && self.presence.subscribers() > 0 {
                // The key is gone though this node has subscribers: Redis
                // lost its data (a restart, FLUSHALL). Rewrite it.
                match redis::cmd("EXISTS").arg(&self.key).query::<i64>(con) {
                    Ok(0) => rewrite = true,
                    Ok(_) => {}
                    Err(e) => written = Err(e),
                }
            }
            refreshed = Instant::now();
            // The events are owed either way: after a failure, once the
            // rewrite has put their changes in Redis.
            batch.into_iter().for_each(|change| owe(&mut owed, change.into_event()));
            if let Err(e) = written {
                log::warn!("roster: {e}");
                (connection, rewrite) = (None, true);
            }
        }
        // A graceful stop: this node's subscriptions end with it.
        if let Some(con) = connection.as_mut() {
            let _ = redis::cmd("DEL").arg(&self.key).query::<()>(con);
        }
    }

    /// Hands the first owed events to the bus and waits for its answers;
    /// those it took leave `owed`. Returns whether it took them all.
    fn offer(&self, owed: &mut VecDeque<Publish>) -> bool {
        let count = owed.len().min(BATCH);
        let (answers, answered) = crossbeam_channel::unbounded();
        for (index, event) in owed.iter().take(count).enumerate() {
            let answers = answers.clone();
            self.bus.submit(
                event.clone(),
                Box::new(move |result| {
                    let _ = answers.send((index, result.is_ok()));
                }),
            );
        }
        drop(answers);
        let mut taken = vec![false; count];
        let deadline = Instant::now() + ANSWER_WITHIN + Duration::from_secs(1);
        while let Ok((index, ok)) = answered.recv_deadline(deadline) {
            if let Some(slot) = taken.get_mut(index) {
                *slot = ok;
            }
        }
        // Up to the first refused; from there on, again (in order).
        let accepted = taken.iter().take_while(|&&ok| ok).count();
        owed.drain(..accepted);
        accepted == count
    }

    /// Rewrites this node's hash from the registry: into a new key, which
    /// then replaces the old one at once (`RENAME`), so a listing meanwhile
    /// sees the old entries or the new, never a hash half written.
    fn rewrite(&self, con: &mut Connection) -> RedisResult<()> {
        let new = &self.rewrite_key;
        redis::cmd("DEL").arg(new).query::<()>(con)?;
        let mut cursor = Cursor::default();
        let mut written = 0;
        loop {
            let mut pipe = redis::pipe();
            let done = self.presence.walk(&mut cursor, BATCH, |seen| {
                let (field, document) = (self.describe)(seen);
                pipe.hset(new, field, document).ignore();
                written += 1;
            });
            pipe.pexpire(new, TTL.as_millis() as i64).ignore();
            pipe.query::<()>(con)?;
            if done {
                break;
            }
        }
        match written {
            0 => redis::cmd("DEL").arg(&self.key).query(con),
            _ => redis::cmd("RENAME").arg(new).arg(&self.key).query(con),
        }
    }

    /// The reader thread: answers every listing under way a Redis command
    /// at a time, in turn, so that a client that stops reading holds up
    /// only its own listing (dropped after [`STALLED_LISTING`]).
    fn read(&self, requests: &Receiver<ListRequest>) {
        let mut connection: Option<Connection> = None;
        let mut listings: Vec<Scan> = Vec::new();
        loop {
            if listings.is_empty() {
                let request = crossbeam_channel::select! {
                    recv(requests) -> request => match request { Ok(request) => request, Err(_) => return },
                    recv(self.stopped) -> _ => return,
                };
                listings.push(Scan::new(request));
            }
            while let Ok(request) = requests.try_recv() {
                listings.push(Scan::new(request));
            }
            if connection.is_none() {
                connection = self.connect_once();
            }
            let Some(con) = connection.as_mut() else {
                // Redis is unreachable: the listings fail now, not later.
                log::warn!("roster: redis unreachable, {} listings failed", listings.len());
                listings.clear();
                continue;
            };
            let mut moved = false;
            for scan in &mut listings {
                match scan.step(con, &self.pattern) {
                    Ok(step) => moved |= step,
                    Err(e) => {
                        log::warn!("roster: listings failed: {e}");
                        connection = None;
                        break;
                    }
                }
            }
            if connection.is_none() {
                listings.clear();
                continue;
            }
            // Dropping a listing wakes its loop: its channel is closed,
            // after `End` if it was complete.
            listings.retain(|scan| !scan.finished);
            if !moved && !listings.is_empty() && self.pause(Duration::from_millis(5)) {
                return;
            }
        }
    }
}

/// One listing under way in the reader.
struct Scan {
    request: ListRequest,
    /// Where `SCAN` over the node keys is; `None` once it has gone round.
    keys_cursor: Option<u64>,
    /// Node keys found and not read yet, and all those found (`SCAN` may
    /// return a key twice).
    keys: VecDeque<String>,
    seen_keys: HashSet<String>,
    /// The hash being read, and where `HSCAN` is in it.
    hash: Option<(String, u64)>,
    /// A page the loop has not taken yet, and since when.
    pending: Option<(Page, Instant)>,
    /// Sent `End`, or given up: to be dropped.
    finished: bool,
}

impl Scan {
    fn new(request: ListRequest) -> Scan {
        let (keys, seen_keys) = (VecDeque::new(), HashSet::new());
        Scan { request, keys_cursor: Some(0), keys, seen_keys, hash: None, pending: None, finished: false }
    }

    /// Does one thing: hands on the pending page, or runs one command.
    /// Returns whether it got anywhere.
    fn step(&mut self, con: &mut Connection, pattern: &str) -> RedisResult<bool> {
        if let Some((page, since)) = self.pending.take() {
            let end = matches!(page, Page::End);
            return Ok(match self.request.pages.try_send(page) {
                Ok(()) => {
                    (self.request.wake)();
                    self.finished = end;
                    true
                }
                Err(TrySendError::Full(page)) if since.elapsed() < STALLED_LISTING => {
                    self.pending = Some((page, since));
                    false
                }
                // The client left, or stopped reading.
                Err(_) => {
                    self.finished = true;
                    true
                }
            });
        }
        let page = if let Some((key, cursor)) = self.hash.take() {
            let (next, entries): (u64, Value) =
                redis::cmd("HSCAN").arg(&key).arg(cursor).arg("COUNT").arg(BATCH).query(con)?;
            if next != 0 {
                self.hash = Some((key, next));
            }
            Some(Page::Documents(documents_under(&entries, &self.request.prefix)))
        } else if let Some(key) = self.keys.pop_front() {
            if self.request.exact {
                let value: Option<Vec<u8>> = redis::cmd("HGET").arg(&key).arg(&self.request.prefix).query(con)?;
                let found = value.and_then(|v| String::from_utf8(v).ok());
                found.map(|document| {
                    // One subscription: found, no need to look further.
                    (self.keys_cursor, self.keys) = (None, VecDeque::new());
                    Page::Documents(vec![document])
                })
            } else {
                self.hash = Some((key, 0));
                None
            }
        } else if let Some(cursor) = self.keys_cursor {
            let (next, keys): (u64, Vec<String>) =
                redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(BATCH).query(con)?;
            self.keys_cursor = (next != 0).then_some(next);
            for key in keys {
                if self.seen_keys.insert(key.clone()) {
                    self.keys.push_back(key);
                }
            }
            None
        } else {
            Some(Page::End)
        };
        match page {
            Some(Page::Documents(documents)) if documents.is_empty() => {}
            Some(page) => self.pending = Some((page, Instant::now())),
            None => {}
        }
        Ok(true)
    }
}

/// A listing dropped, complete or not, closes its channel: its loop is
/// woken to see that (and answer, or end the body unfinished).
impl Drop for Scan {
    fn drop(&mut self) {
        // Closed first, woken after: woken first, the loop could look
        // before the channel is closed, and wait for a wake that never
        // comes (found by `on_a_cluster_a_lookup_while_redis_is_down_...`).
        let (closed, _) = crossbeam_channel::bounded(0);
        drop(std::mem::replace(&mut self.request.pages, closed));
        (self.request.wake)();
    }
}

impl Change {
    fn into_event(self) -> Publish {
        match self {
            Change::Join { event, .. } | Change::Leave { event, .. } => event,
        }
    }
}

/// Adds an event to those owed to the bus. Past [`MAX_QUEUED_CHANGES`]
/// (the bus refusing for that long: Redis down) the oldest is dropped,
/// which its subscription's later events make up for, if it has any.
fn owe(owed: &mut VecDeque<Publish>, event: Publish) {
    if owed.len() >= MAX_QUEUED_CHANGES {
        owed.pop_front();
        log::warn!("roster: a subscription event was dropped, the bus refused it for too long");
    }
    owed.push_back(event);
}

/// The values of an `HSCAN` page (field, value, field, value...) whose
/// field starts with `prefix`.
fn documents_under(entries: &Value, prefix: &str) -> Vec<String> {
    let Value::Array(entries) = entries else { return Vec::new() };
    let text = |value: &Value| match value {
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok().map(str::to_owned),
        _ => None,
    };
    entries
        .chunks_exact(2)
        .filter_map(|pair| {
            let [field, value] = pair else { return None };
            text(field)?.starts_with(prefix).then(|| text(value)).flatten()
        })
        .collect()
}
