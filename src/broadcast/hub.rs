//! The hub: what the event loops of one server share, and the one way an
//! event reaches all of them.
//!
//! With `--threads N` a server runs N event loops, each with its own poll,
//! connections, timers and [`Broker`](crate::broadcast::broker::Broker). A connection
//! lives on one loop for its whole life. What they must agree on lives here:
//!
//! * **One order of events.** [`Hub::publish`] takes one lock, gives the event
//!   the next id, frames it once ([`Published::new`]), and sends the same
//!   `Arc` down every loop's inbox (a crossbeam channel) before it lets go.
//!   Since ids are handed out and sends are made under the same lock, every
//!   inbox receives events in id order, so every loop, and every subscriber
//!   on any loop, sees a topic's events in the same order with the same ids.
//!   The lock is held per publish, never per subscriber: a publish costs
//!   O(loops) sends plus a wake of each other loop, and each loop then does
//!   O(its own subscribers) work to fan it out.
//! * **Replay.** Each loop keeps its own history of those shared `Arc`s (a
//!   pointer each, not a copy), fed from its inbox in the same order, so
//!   `Last-Event-ID` gets the same answer on any loop. The seam stays exact
//!   per loop: every event the loop has taken from its inbox is in the
//!   newcomer's replay, and every event still in the inbox reaches the
//!   newcomer live. A client may come back on a loop that has not yet taken
//!   the event it last got (from another loop); since that event was in
//!   every inbox before its publisher was answered, the loop takes its inbox
//!   in before a resuming subscribe, and then knows the id. Nothing races,
//!   because a loop's broker is touched only by that loop's thread.
//! * **Back-pressure.** The inboxes are unbounded channels, since a loop that
//!   publishes must never wait on a loop that may be waiting on it; instead
//!   the hub counts the bytes of events waiting in each inbox and refuses
//!   publishes while any loop is [`MAX_INBOX_BYTES`] behind.
//! * **Shutdown.** The first loop to begin shutting down closes the hub
//!   ([`Hub::close`]), under the same lock: from then on every publish is
//!   refused, so every event a publisher was answered for is already in
//!   every inbox, and a loop that drains its inbox before it closes its
//!   streams has handed them every such event, whichever loop (or
//!   [`Publisher`](crate::broadcast::publisher::Publisher) thread) took the publish. Without this, a loop could
//!   close its streams while another still answered publishes that those
//!   streams would never see.
//! * **Counts and caps.** The subscription registry (streams per topic) is in
//!   the same lock, updated when a stream opens or closes, so a publish can
//!   answer how many streams it reaches, on all loops, without asking them,
//!   and the stream cap (`--max-streams`) is checked against it as a stream
//!   opens. The connection count behind `--max-connections` is one atomic. Each loop
//!   copies its counters into its [`Gauges`] once per turn; `/metrics` adds
//!   them up.
//!
//! In a cluster ([`crate::broadcast::bus`]) the order comes from a Redis stream instead
//! of the lock's counter: the bus's reader hands events to
//! [`Hub::distribute`], the same path a local publish takes after numbering.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender};
use mio::Waker;

use crate::broadcast::bus::{BusEvent, BusSink};
use crate::broadcast::event::Publish;
use crate::broadcast::event::{EventId, Published, Receipt};

/// What a loop finds in its inbox.
#[derive(Debug)]
pub enum Message {
    /// The next event of the one order.
    Event(Arc<Published>),
    /// A cluster node's history, before any event, and again if the
    /// cluster's order restarts (see
    /// [`crate::broadcast::broker::Broker::backfill`]).
    Backfill(EventId, Arc<[Arc<Published>]>),
}

/// A loop's counters, copied in by the loop itself once per turn (plain
/// stores; nothing on the hot path is atomic) and summed by `/metrics`.
#[derive(Debug, Default)]
pub struct Gauges {
    /// Open connections on this loop (the total is the hub's own count).
    pub connections: AtomicU64,
    /// Open event streams on this loop.
    pub streams: AtomicU64,
    pub frames: AtomicU64,
    pub bytes: AtomicU64,
    pub heartbeats: AtomicU64,
    pub dropped_slow: AtomicU64,
    pub responses: [AtomicU64; 5],
    pub accepted: AtomicU64,
    pub refused: AtomicU64,
    /// Subscribers turned away with a `retry:` (over `--max-streams`, or
    /// while shutting down).
    pub turned_away: AtomicU64,
    /// Bytes queued to this loop's subscribers (frames and queue entries,
    /// per subscriber), checked against `--max-queued-bytes`.
    pub queued: AtomicU64,
    /// Open Mercure subscriptions by matcher type (see
    /// [`crate::broadcast::broker::MATCHER_TYPES`]).
    pub mercure_subscriptions: [AtomicU64; 3],
}

/// The sum of every loop's [`Gauges`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub frames: u64,
    pub bytes: u64,
    pub heartbeats: u64,
    pub dropped_slow: u64,
    pub responses: [u64; 5],
    pub accepted: u64,
    pub refused: u64,
    pub turned_away: u64,
    pub queued: u64,
    pub mercure_subscriptions: [u64; 3],
}

/// Most bytes of event frames waiting in one loop's inbox. While any loop is
/// this far behind, publishes are refused (`POST` gets 503, a [`Publisher`]
/// waits): the inboxes are unbounded channels (a publishing loop must never
/// wait on a loop that may be waiting on it), so this is what bounds them.
///
/// [`Publisher`]: crate::broadcast::publisher::Publisher
pub const MAX_INBOX_BYTES: usize = 32 * 1024 * 1024;

/// Bytes of events an inbox may hold before a loop with no streams is woken
/// to take them in (see `Hub::needs_wake`).
const WAKE_IDLE_LOOP_BYTES: usize = 1024 * 1024;

/// Why the hub refused a publish: a loop is too far behind, or the hub is
/// closed ([`Hub::is_closed`]: the server is shutting down).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

/// Shared by every loop of a server (and its publishers) behind an `Arc`.
pub struct Hub {
    state: Mutex<State>,
    inboxes: Box<[LoopInbox]>,
    gauges: Box<[Gauges]>,
    /// Open connections on all loops.
    connections: AtomicUsize,
    max_connections: usize,
    /// Events distributed so far.
    events: AtomicU64,
    started: Instant,
}

/// The hub's end of one loop's inbox.
struct LoopInbox {
    messages: Sender<Message>,
    waker: Arc<Waker>,
    /// Bytes of event frames sent to this loop and not yet taken by it.
    queued_bytes: AtomicUsize,
    /// Whether the loop has streams, so must be woken for every local
    /// publish (see `Hub::needs_wake`). Set by [`Hub::stream_opening`] before
    /// the loop takes its inbox in for a new stream, and kept up to date by
    /// the loop each turn ([`Hub::set_listening`]).
    listening: AtomicBool,
}

/// Where an event comes from, which decides which loops are woken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A publish made on this loop, which takes its inbox in at the end of
    /// the turn without a wake-up.
    Loop(usize),
    /// A publish from another thread (a [`Publisher`]).
    ///
    /// [`Publisher`]: crate::broadcast::publisher::Publisher
    Thread,
    /// The cluster bus, which reads events in pages: the sender wakes the
    /// loops once per page ([`Hub::distribute`]), not once per event.
    Bus,
}

/// What the lock guards.
struct State {
    /// The `ms` part of local ids: the time the server started.
    epoch: u64,
    /// The `seq` of the next local id.
    next_seq: u64,
    registry: Registry,
    /// Set by [`Hub::close`]: publishes are refused from then on.
    closed: bool,
}

impl Hub {
    /// A hub for one loop per waker; returns it and each loop's inbox, in the
    /// order of `wakers`.
    pub fn new(wakers: Vec<Arc<Waker>>, max_connections: usize) -> (Arc<Hub>, Vec<Receiver<Message>>) {
        let epoch = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let mut senders = Vec::with_capacity(wakers.len());
        let mut inboxes = Vec::with_capacity(wakers.len());
        for waker in wakers {
            // Unbounded: a publishing loop must never wait on a loop that may
            // be waiting on it. What bounds an inbox is the pace of the
            // publishers, each held back by its own connection or queue.
            let (messages, receiver) = crossbeam_channel::unbounded();
            senders.push(LoopInbox {
                messages,
                waker,
                queued_bytes: AtomicUsize::new(0),
                listening: AtomicBool::new(false),
            });
            inboxes.push(receiver);
        }
        let gauges = (0..senders.len()).map(|_| Gauges::default()).collect();
        let hub = Hub {
            state: Mutex::new(State { epoch, next_seq: 1, registry: Registry::default(), closed: false }),
            inboxes: senders.into(),
            gauges,
            connections: AtomicUsize::new(0),
            max_connections,
            events: AtomicU64::new(0),
            started: Instant::now(),
        };
        (Arc::new(hub), inboxes)
    }

    /// How many loops share this hub.
    pub fn loops(&self) -> usize {
        self.inboxes.len()
    }

    /// The floor of a new local history: before the first id this server
    /// will issue (see [`crate::broadcast::broker`]).
    pub fn local_floor(&self) -> EventId {
        EventId { ms: self.lock().epoch, seq: 0 }
    }

    /// Numbers `publish` (which must be valid), frames it once, and sends it
    /// to every loop; `origin` says which loops need a wake-up. Refused while a loop
    /// is more than [`MAX_INBOX_BYTES`] behind, and once the hub is closed.
    pub fn publish(&self, publish: &Publish, origin: Origin) -> Result<Receipt, Busy> {
        if self.is_congested() {
            return Err(Busy);
        }
        let mut state = self.lock();
        if state.closed {
            return Err(Busy);
        }
        let id = EventId { ms: state.epoch, seq: state.next_seq };
        state.next_seq += 1;
        // Mercure answers with the update's id, not a count.
        let subscribers = if publish.mercure.is_some() { 0 } else { state.registry.count(&publish.topics) };
        let event = Arc::new(Published::new(id, publish));
        self.send_to_all(&state, Message::Event, event, origin);
        self.events.fetch_add(1, Ordering::Relaxed);
        Ok(Receipt::new(id, subscribers, publish))
    }

    /// Refuses every publish from now on (see the module docs on shutdown).
    /// When this returns, every publish that was accepted has put its event
    /// in every inbox.
    pub fn close(&self) {
        self.lock().closed = true;
    }

    /// Whether [`Hub::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Whether some loop has more than [`MAX_INBOX_BYTES`] of events waiting.
    pub fn is_congested(&self) -> bool {
        self.inboxes.iter().any(|inbox| inbox.queued_bytes.load(Ordering::Relaxed) > MAX_INBOX_BYTES)
    }

    /// Loop `index` took an event of `bytes` from its inbox.
    pub fn taken(&self, index: usize, bytes: usize) {
        if let Some(inbox) = self.inboxes.get(index) {
            inbox.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
        }
    }

    /// Sends events that already have their ids (a page the cluster bus
    /// read), in order, to every loop, then wakes each loop at most once
    /// for all of them, by the rule of a publish from another thread.
    pub fn distribute(&self, events: impl IntoIterator<Item = Arc<Published>>) {
        let state = self.lock();
        let mut sent = false;
        for event in events {
            self.send_to_all(&state, Message::Event, event, Origin::Bus);
            self.events.fetch_add(1, Ordering::Relaxed);
            sent = true;
        }
        if sent {
            for inbox in self.inboxes.iter().filter(|inbox| self.needs_wake(inbox)) {
                let _ = inbox.waker.wake();
            }
        }
    }

    /// Sends a cluster node's history to every loop (see [`Message::Backfill`]).
    pub fn backfill(&self, floor: EventId, events: Vec<Arc<Published>>) {
        let state = self.lock();
        let events: Arc<[Arc<Published>]> = events.into();
        self.send_to_all(&state, |events| Message::Backfill(floor, events), events, Origin::Bus);
        self.wake_all();
    }

    /// How many streams, on all loops, an event on `topics` would reach.
    pub fn count_subscribers(&self, topics: &[String]) -> usize {
        self.lock().registry.count(topics)
    }

    /// Wakes loop `index` (for a page of a listing, say).
    pub fn wake(&self, index: usize) {
        if let Some(inbox) = self.inboxes.get(index) {
            let _ = inbox.waker.wake();
        }
    }

    /// Wakes every loop (to notice a shutdown).
    pub fn wake_all(&self) {
        for inbox in self.inboxes.iter() {
            let _ = inbox.waker.wake();
        }
    }

    /// Loop `index` is about to open a stream: from now on it is woken for
    /// every publish (its [`Hub::set_listening`] at the end of the turn
    /// would come too late for an event published meanwhile). Call before
    /// the loop takes its inbox in for the new stream.
    pub fn stream_opening(&self, index: usize) {
        self.set_listening(index, true);
        std::sync::atomic::fence(Ordering::SeqCst);
    }

    /// Says whether loop `index` has streams (so must be woken for local
    /// publishes).
    pub fn set_listening(&self, index: usize, listening: bool) {
        if let Some(inbox) = self.inboxes.get(index) {
            inbox.listening.store(listening, Ordering::SeqCst);
        }
    }

    /// Counts a stream opening on `topics`, unless `max_streams` are open
    /// already on all loops (then returns false and counts nothing).
    pub fn try_open_stream<'a>(&self, topics: impl IntoIterator<Item = &'a str>, max_streams: usize) -> bool {
        let mut state = self.lock();
        if state.registry.streams >= max_streams {
            return false;
        }
        state.registry.add(topics);
        true
    }

    /// Counts a stream on `topics` that closed.
    pub fn stream_closed<'a>(&self, topics: impl IntoIterator<Item = &'a str>) {
        self.lock().registry.remove(topics);
    }

    /// Open streams on all loops, and per topic (largest first, at most
    /// `most` topics) with the number of topics in all.
    pub fn streams(&self, most: usize) -> (usize, usize, Vec<(String, usize)>) {
        let state = self.lock();
        let registry = &state.registry;
        let mut topics: Vec<(&str, usize)> = registry.per_topic.iter().map(|(t, &n)| (&**t, n)).collect();
        topics.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let largest = topics.iter().take(most).map(|&(t, n)| (t.to_owned(), n)).collect();
        (registry.streams, topics.len(), largest)
    }

    /// Takes a connection slot under `--max-connections`; false when full.
    pub fn try_connect(&self) -> bool {
        let max = self.max_connections;
        self.connections.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).is_ok()
    }

    /// Gives back a slot taken by [`Hub::try_connect`].
    pub fn disconnected(&self) {
        self.connections.fetch_sub(1, Ordering::AcqRel);
    }

    /// Open connections on all loops.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }

    /// The connection cap shared by all loops.
    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    /// Seconds since the hub (the server) was created.
    pub fn uptime_secs(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// Events distributed since the start.
    pub fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    /// Loop `index`'s counters, for it to store into.
    pub fn gauges(&self, index: usize) -> Option<&Gauges> {
        self.gauges.get(index)
    }

    /// Open connections and streams per loop, as of each loop's last turn.
    pub fn per_loop(&self) -> Vec<(u64, u64)> {
        let load = |n: &AtomicU64| n.load(Ordering::Relaxed);
        self.gauges.iter().map(|gauges| (load(&gauges.connections), load(&gauges.streams))).collect()
    }

    /// Bytes queued to subscribers on every loop but `index`, as of each
    /// loop's last turn.
    pub fn queued_elsewhere(&self, index: usize) -> usize {
        let others = self.gauges.iter().enumerate().filter(|&(i, _)| i != index);
        others.map(|(_, gauges)| gauges.queued.load(Ordering::Relaxed) as usize).sum()
    }

    /// Every loop's counters, summed.
    pub fn totals(&self) -> Totals {
        let mut totals = Totals::default();
        let load = |n: &AtomicU64| n.load(Ordering::Relaxed);
        for gauges in self.gauges.iter() {
            totals.frames += load(&gauges.frames);
            totals.bytes += load(&gauges.bytes);
            totals.heartbeats += load(&gauges.heartbeats);
            totals.dropped_slow += load(&gauges.dropped_slow);
            for (total, n) in totals.responses.iter_mut().zip(&gauges.responses) {
                *total += load(n);
            }
            totals.accepted += load(&gauges.accepted);
            totals.refused += load(&gauges.refused);
            totals.turned_away += load(&gauges.turned_away);
            totals.queued += load(&gauges.queued);
            for (total, n) in totals.mercure_subscriptions.iter_mut().zip(&gauges.mercure_subscriptions) {
                *total += load(n);
            }
        }
        totals
    }

    /// Sends `item` (wrapped by `wrap`) to every loop, under the lock held as
    /// `_state` (which is what keeps the order the same in every inbox).
    /// Which loops are woken depends on where the item comes from: see
    /// [`Origin`] and `Hub::needs_wake`.
    fn send_to_all<T: Clone>(&self, _state: &State, wrap: impl Fn(T) -> Message, item: T, origin: Origin) {
        for (index, inbox) in self.inboxes.iter().enumerate() {
            let message = wrap(item.clone());
            let bytes = match &message {
                Message::Event(event) => event.frame.len(),
                _ => 0,
            };
            // Counted before the send, so the loop's `taken` never runs first.
            inbox.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
            // A send fails only when the loop has exited (shut down).
            if inbox.messages.send(message).is_err() {
                inbox.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            } else if match origin {
                Origin::Bus => false,
                Origin::Loop(from) if from == index => false,
                Origin::Loop(_) | Origin::Thread => self.needs_wake(inbox),
            } {
                let _ = inbox.waker.wake();
            }
        }
    }

    /// Whether loop `index` must be woken for a local publish (or a page
    /// from the cluster bus): not if it has no streams (as of its last
    /// turn), unless its inbox is filling up. A wake-up is a system call here
    /// and a context switch there, as much as the publish itself when nobody
    /// listens. Nothing is lost by waiting: a lone server's loop takes its
    /// inbox in every turn and before every subscribe, so a new stream
    /// starts after every event sent so far; a cluster node's new stream
    /// starts where its broker is, and gets what waits in the inbox live.
    fn needs_wake(&self, inbox: &LoopInbox) -> bool {
        // Pairs with the fence in `Hub::stream_opening`: either this load
        // sees the new stream (and wakes the loop), or the loop's inbox
        // drain after its store sees the event just sent.
        std::sync::atomic::fence(Ordering::SeqCst);
        inbox.listening.load(Ordering::SeqCst) || inbox.queued_bytes.load(Ordering::Relaxed) > WAKE_IDLE_LOOP_BYTES
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves only counters half-updated:
        // carry on with them rather than take every loop down.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The cluster bus's reader hands the stream to the loops through the hub:
/// each event is framed once, here, on the bus's thread, and then takes the
/// same path as a local publish.
impl BusSink for Hub {
    fn backfill(&self, floor: EventId, events: Vec<BusEvent>) {
        let events = events.iter().map(|e| Arc::new(Published::new(e.id, &e.publish))).collect();
        Hub::backfill(self, floor, events);
    }

    fn deliver(&self, events: Vec<BusEvent>) {
        self.distribute(events.iter().map(|e| Arc::new(Published::new(e.id, &e.publish))));
    }
}

/// Who is subscribed to what, on all loops, kept so that a publish can say
/// how many streams it reaches without asking the loops.
#[derive(Debug, Default)]
struct Registry {
    streams: usize,
    /// Streams per topic (a stream on several topics counts under each).
    per_topic: HashMap<Box<str>, usize>,
    /// Streams on more than one topic, per set of topics (sorted), so an
    /// event on several topics counts each stream once. Rare, and bounded by
    /// the number of streams.
    multi: HashMap<Box<[Box<str>]>, usize>,
}

impl Registry {
    fn add<'a>(&mut self, topics: impl IntoIterator<Item = &'a str>) {
        let set = Self::set(topics);
        self.streams += 1;
        for topic in set.iter() {
            *self.per_topic.entry(topic.clone()).or_default() += 1;
        }
        if set.len() > 1 {
            *self.multi.entry(set).or_default() += 1;
        }
    }

    fn remove<'a>(&mut self, topics: impl IntoIterator<Item = &'a str>) {
        let set = Self::set(topics);
        self.streams = self.streams.saturating_sub(1);
        for topic in set.iter() {
            decrement(&mut self.per_topic, topic);
        }
        if set.len() > 1 {
            decrement(&mut self.multi, &set);
        }
    }

    /// Streams subscribed to any of `topics`, each counted once.
    fn count(&self, topics: &[impl AsRef<str>]) -> usize {
        let per_topic = |t: &str| self.per_topic.get(t).copied().unwrap_or(0);
        match topics {
            [one] => per_topic(one.as_ref()),
            _ => {
                // Each topic's streams, less those on several of the topics,
                // which are then counted once each.
                let wanted = |t: &str| topics.iter().any(|w| w.as_ref() == t);
                let mut count: usize = topics.iter().map(|t| per_topic(t.as_ref())).sum();
                for (set, &n) in &self.multi {
                    let hits = set.iter().filter(|t| wanted(t)).count();
                    count = count.saturating_sub(hits.saturating_sub(1) * n);
                }
                count
            }
        }
    }

    fn set<'a>(topics: impl IntoIterator<Item = &'a str>) -> Box<[Box<str>]> {
        let mut set: Vec<Box<str>> = topics.into_iter().map(Box::from).collect();
        set.sort();
        set.dedup();
        set.into()
    }
}

fn decrement<K: std::hash::Hash + Eq + ?Sized>(map: &mut HashMap<Box<K>, usize>, key: &K) {
    if let Some(n) = map.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            map.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_counts_each_stream_once() {
        let mut registry = Registry::default();
        registry.add(["a"]);
        registry.add(["b", "a"]);
        registry.add(["b"]);
        registry.add(["a", "b", "c"]);
        assert_eq!(registry.count(&["a"]), 3);
        assert_eq!(registry.count(&["b"]), 3);
        assert_eq!(registry.count(&["a", "b"]), 4);
        assert_eq!(registry.count(&["c", "a"]), 3);
        assert_eq!(registry.count(&["nobody"]), 0);
        registry.remove(["a", "b"]);
        registry.remove(["a", "c", "b"]);
        assert_eq!(registry.count(&["a", "b"]), 2);
        assert_eq!((registry.streams, registry.multi.len(), registry.per_topic.len()), (2, 0, 2));
    }
}
