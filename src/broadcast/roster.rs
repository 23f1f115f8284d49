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
//! **Two threads, two connections**, like the bus: the *writer* applies the
//! loops' changes in order (a queue per node, in pipelines), and after
//! every (re)connection rewrites the node's hash from the in-memory
//! registry ([`Presence`]), so an outage or a full queue heals. The
//! *reader* answers listings: it scans the node keys and their hashes a
//! page at a time, handing pages to the listing connection's loop through a
//! small bounded channel: the loop takes a page when the socket has taken
//! the last, so memory stays bounded whatever the cluster's size. A
//! listing whose client stops reading is abandoned after
//! [`STALLED_LISTING`].
//!
//! Nothing read from Redis is trusted beyond being text: a field or value
//! that is not UTF-8 is skipped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use redis::{Connection, RedisResult, Value};

use crate::broadcast::bus::Bus;
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
        let (requests, listings) = crossbeam_channel::unbounded();
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

    /// Starts a listing; its pages arrive on the request's channel.
    pub fn list(&self, request: ListRequest) {
        let _ = self.requests.send(request);
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
    /// Connects, retrying with backoff until stopped.
    fn connect(&self) -> Option<Connection> {
        let mut backoff = Duration::from_millis(100);
        loop {
            let connection = self.client.get_connection_with_timeout(IO_TIMEOUT).and_then(|c| {
                c.set_read_timeout(Some(IO_TIMEOUT))?;
                c.set_write_timeout(Some(IO_TIMEOUT))?;
                Ok(c)
            });
            if let Ok(connection) = connection {
                return Some(connection);
            }
            match self.stopped.recv_timeout(backoff) {
                Err(RecvTimeoutError::Timeout) => {}
                _ => return None,
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// The writer thread.
    fn write(&self, queue: &Receiver<Change>) {
        let mut connection: Option<Connection> = None;
        let mut refreshed = Instant::now();
        loop {
            let Some(con) = connection.as_mut() else {
                connection = self.connect();
                let Some(con) = connection.as_mut() else { break };
                // Whatever was queued is in the registry too: rewrite the
                // hash from it, then apply what comes after.
                while queue.try_recv().is_ok() {}
                self.stale.store(false, Ordering::Relaxed);
                if let Err(e) = self.rewrite(con) {
                    log::warn!("roster: {e}");
                    connection = None;
                }
                refreshed = Instant::now();
                continue;
            };
            if self.stale.swap(false, Ordering::Relaxed) {
                while queue.try_recv().is_ok() {}
                if self.rewrite(con).is_err() {
                    connection = None;
                }
                continue;
            }
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
                let alive = redis::cmd("EXISTS").arg(&self.key).query::<i64>(con);
                match alive {
                    Ok(0) => self.stale.store(true, Ordering::Relaxed),
                    Ok(_) => {}
                    Err(e) => written = Err(e),
                }
            }
            refreshed = Instant::now();
            // Redis has the changes (or is unreachable, when the bus will
            // refuse the events as well): now the events may go out.
            for change in batch {
                let event = match change {
                    Change::Join { event, .. } | Change::Leave { event, .. } => event,
                };
                self.bus.submit(event, Box::new(|_| {}));
            }
            if let Err(e) = written {
                log::warn!("roster: {e}");
                connection = None;
            }
        }
        // A graceful stop: this node's subscriptions end with it.
        if let Some(con) = connection.as_mut() {
            let _ = redis::cmd("DEL").arg(&self.key).query::<()>(con);
        }
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

    /// The reader thread: one listing at a time.
    fn read(&self, listings: &Receiver<ListRequest>) {
        let mut connection: Option<Connection> = None;
        loop {
            let request = crossbeam_channel::select! {
                recv(listings) -> request => match request { Ok(request) => request, Err(_) => return },
                recv(self.stopped) -> _ => return,
            };
            if connection.is_none() {
                connection = self.connect();
            }
            let Some(con) = connection.as_mut() else { return };
            match self.answer(con, &request) {
                Ok(true) => {
                    let _ = request.pages.send_timeout(Page::End, STALLED_LISTING);
                }
                // The client left, or stopped reading: nothing to tell.
                Ok(false) => {}
                Err(e) => {
                    // Dropping the channel without `End` tells the loop the
                    // listing failed: it closes the connection mid-body.
                    log::warn!("roster: a listing failed: {e}");
                    connection = None;
                }
            }
            (request.wake)();
        }
    }

    /// Scans every node's hash for the request, sending a page per `HSCAN`
    /// page. `false` when the listing's client left or stopped taking pages.
    fn answer(&self, con: &mut Connection, request: &ListRequest) -> RedisResult<bool> {
        let send = |page| {
            let sent = request.pages.send_timeout(page, STALLED_LISTING).is_ok();
            (request.wake)();
            sent
        };
        let mut keys_cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(keys_cursor)
                .arg("MATCH")
                .arg(&self.pattern)
                .arg("COUNT")
                .arg(BATCH)
                .query(con)?;
            for key in keys {
                if request.exact {
                    let value: Option<Vec<u8>> = redis::cmd("HGET").arg(&key).arg(&request.prefix).query(con)?;
                    if let Some(document) = value.and_then(|v| String::from_utf8(v).ok()) {
                        return Ok(send(Page::Documents(vec![document])));
                    }
                    continue;
                }
                let mut cursor = 0u64;
                loop {
                    let (next, entries): (u64, Value) =
                        redis::cmd("HSCAN").arg(&key).arg(cursor).arg("COUNT").arg(BATCH).query(con)?;
                    let documents = documents_under(&entries, &request.prefix);
                    if !documents.is_empty() && !send(Page::Documents(documents)) {
                        return Ok(false);
                    }
                    if next == 0 {
                        break;
                    }
                    cursor = next;
                }
            }
            if next == 0 {
                return Ok(true);
            }
            keys_cursor = next;
        }
    }
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
