//! The broadcast path: event ids, the shared history, topics, who is
//! subscribed to what, and how one published frame reaches all of them.
//!
//! A broker belongs to one event loop and knows only that loop's
//! subscribers. Events reach it already numbered and framed, in the one order
//! every loop sees ([`crate::hub`] says where ids come from and how that order
//! is kept); the broker retains them, fans them out, and replays them.
//!
//! **History.** The last events (bounded in count and in bytes) stay in a ring
//! shared by this loop's subscribers: each entry is the event's frame, already
//! encoded, behind an `Arc`, so retaining it costs one copy however many
//! subscribers (and loops) replay it. Ids in the ring are increasing, so the
//! place to resume from is found by binary search. The broker also keeps a
//! *floor*: every event after the floor is in the ring. It starts at the
//! first id that could ever be issued (so nothing before this process is
//! claimed) and rises as old events are evicted.
//!
//! **Replay.** A subscriber that sends `Last-Event-ID` first gets every retained
//! event after that id on its topics, in order, then the live stream. The
//! server adds a subscriber only between fan-outs (see [`Broker::subscribe`]),
//! so an event is either in the replay or in the live stream, never both and
//! never neither. If the id is below the floor (it fell out of the history, or
//! comes from an earlier process), above the last event (from another
//! process), or not an id at all, the subscriber gets a `gap` event saying
//! so, then everything retained on its topics. A new subscriber without
//! `Last-Event-ID` gets the current id in its opening block (an `id:` field
//! with no data sets the client's last event id without firing an event), so
//! even a client that never received an event resumes without a gap.
//!
//! **Fan-out.** A publish does not write to sockets. It appends its frame
//! (encoded once) to a pending batch; at the end of the event-loop iteration
//! [`Broker::fan_out`] hands each subscriber the batch's frames for its topics
//! in one call: one `write()` per subscriber for one publish, and still one
//! (vectored) write for a burst. The broker knows subscribers only by key; the
//! server lends it the connections through the [`Subscriber`] trait, so the
//! broadcast loop also runs (and is benchmarked) over in-memory sinks.
//!
//! **Heartbeats.** One timer per loop, not one per connection: every interval
//! the server calls [`Broker::heartbeat`], and only subscribers that were sent
//! nothing since the previous beat get a comment line.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use slab::Slab;

use crate::api::{GAP_EVENT, Publish};
use crate::sse::{self, Frame};

/// An event's id, `<ms>-<seq>`, ordered as the pair `(ms, seq)`.
///
/// A lone server's ids are `<start time in Unix ms>-<counter>`; in a cluster
/// they are Redis stream ids, which have the same form and the same order. So
/// replay works the same way in both: find the place in the history by
/// comparing ids.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId {
    pub ms: u64,
    pub seq: u64,
}

impl EventId {
    /// Parses `<ms>-<seq>` (ASCII digits on both sides, nothing else).
    ///
    /// ```
    /// use bare_sse::broker::EventId;
    /// assert_eq!(EventId::parse("1700000000000-7"), Some(EventId { ms: 1_700_000_000_000, seq: 7 }));
    /// assert_eq!(EventId::parse("7"), None);
    /// assert_eq!(EventId::parse("+1-2"), None);
    /// ```
    pub fn parse(id: &str) -> Option<EventId> {
        let (ms, seq) = id.split_once('-')?;
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(ms) || !digits(seq) {
            return None;
        }
        Some(EventId { ms: ms.parse().ok()?, seq: seq.parse().ok()? })
    }
}

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// Something frames can be delivered to: in the server, a connection's
/// outbox in front of its socket.
pub trait Subscriber {
    /// Sends `frames`, in order, after anything already queued.
    fn deliver(&mut self, frames: &[Frame]) -> Delivery;
}

/// What became of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// All written to the kernel.
    Done,
    /// Some bytes wait in the subscriber's queue: the server checks the
    /// slow-consumer cap and asks for writable readiness.
    Queued,
    /// The subscriber's socket failed: the server must close it.
    Failed,
}

/// Counters of the broadcast path, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Event frames handed to subscribers (one per event per subscriber).
    pub frames: u64,
    /// Bytes of those frames.
    pub bytes: u64,
    /// Heartbeat comments sent.
    pub heartbeats: u64,
}

/// Bounds on the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    /// Most events retained.
    pub events: usize,
    /// Most bytes of frames retained.
    pub bytes: usize,
}

impl Default for HistoryLimits {
    fn default() -> HistoryLimits {
        HistoryLimits { events: 1000, bytes: 16 * 1024 * 1024 }
    }
}

/// One published event, numbered and framed once, shared by every loop's
/// pending batch and history.
#[derive(Debug)]
pub struct Published {
    pub id: EventId,
    pub topics: Box<[Box<str>]>,
    /// The encoded event, `id:` field included.
    pub frame: Frame,
}

impl Published {
    /// Frames `publish` (which must be valid, [`Publish::validate`]) with `id`.
    pub fn new(id: EventId, publish: &Publish) -> Published {
        let id_text = id.to_string();
        let frame =
            sse::encode(&sse::Event { id: Some(&id_text), name: publish.event.as_deref(), data: &publish.message });
        Published { id, topics: publish.topics.iter().map(|t| t.as_str().into()).collect(), frame }
    }
}

/// What a publish returns to its publisher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The event's id.
    pub id: EventId,
    /// How many subscribers it will be sent to.
    pub subscribers: usize,
}

/// Topics, subscribers, history and the batch of frames not yet sent.
#[derive(Debug)]
pub struct Broker {
    /// Every event after this id is in `history` (see the module docs);
    /// `None` while the history is not known yet (a cluster node that has not
    /// reached Redis).
    floor: Option<EventId>,
    /// The last event accepted, or the floor.
    last: EventId,
    history: VecDeque<Arc<Published>>,
    history_bytes: usize,
    limits: HistoryLimits,
    /// Topic name to its key in `topic_members`.
    topics: HashMap<Box<str>, usize>,
    /// Per topic: its subscribers.
    topic_members: Slab<Topic>,
    members: Slab<Member>,
    /// Events published since the last fan-out, in publish order.
    pending: Vec<Arc<Published>>,
    /// Counts fan-outs, to send each subscriber a batch only once.
    round: u64,
    /// Counts heartbeat intervals.
    beat: u32,
    /// Reused per subscriber during a fan-out, to avoid an allocation each.
    scratch: Vec<Frame>,
    heartbeat_frame: Frame,
    stats: Stats,
}

/// One topic with subscribers.
#[derive(Debug)]
struct Topic {
    name: Box<str>,
    /// Membership keys (into `Broker::members`).
    members: Slab<u32>,
}

/// One subscriber.
#[derive(Debug)]
struct Member {
    /// The server's key for the connection.
    client: u32,
    /// The last heartbeat interval in which it was sent something (only
    /// compared for equality, so wrapping is harmless).
    beat: u32,
    /// The last fan-out round that reached this subscriber.
    round: u64,
    /// `(topic key, key in that topic's member slab)` per topic.
    topics: Slots,
}

/// A subscriber's places in its topics' member lists. Most subscribers have
/// one topic, kept inline so they cost no allocation. Keys are 32-bit: a
/// loop holds far fewer than 4 billion connections or topics.
#[derive(Debug)]
struct Slots {
    first: (u32, u32),
    /// A thin pointer (8 bytes; a boxed slice would be 16), since every
    /// subscriber carries this field and almost all leave it `None`.
    #[allow(clippy::box_collection)]
    rest: Option<Box<Vec<(u32, u32)>>>,
}

impl Slots {
    fn new(slots: &[(u32, u32)]) -> Slots {
        let (first, rest) = slots.split_first().map_or(((0, 0), &[][..]), |(f, r)| (*f, r));
        Slots { first, rest: (!rest.is_empty()).then(|| Box::new(rest.to_vec())) }
    }

    fn iter(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        let rest = self.rest.as_deref().map_or(&[][..], |r| &r[..]);
        std::iter::once(&self.first).chain(rest).map(|&(topic, slot)| (topic as usize, slot as usize))
    }
}

/// A new subscription, as returned by [`Broker::subscribe`].
#[derive(Debug)]
pub struct Joined {
    /// Pass to [`Broker::unsubscribe`] when the connection closes.
    pub membership: usize,
    /// Frames to send before any live event: the id block for a fresh
    /// subscriber, or the replay (maybe preceded by a `gap` event).
    pub backlog: Vec<Frame>,
}

impl Broker {
    /// A broker whose history starts at `floor` (see the module docs):
    /// replay from `floor` or later is exact. `None` means the history is
    /// not known yet: [`Broker::backfill`] brings it.
    pub fn new(limits: HistoryLimits, floor: Option<EventId>) -> Broker {
        Broker {
            floor,
            last: floor.unwrap_or_default(),
            history: VecDeque::new(),
            history_bytes: 0,
            limits,
            topics: HashMap::new(),
            topic_members: Slab::new(),
            members: Slab::new(),
            pending: Vec::new(),
            round: 0,
            beat: 0,
            scratch: Vec::new(),
            heartbeat_frame: Arc::from(&b":\n\n"[..]),
            stats: Stats::default(),
        }
    }

    /// Reserves room for `subscribers` (address space only: pages are touched
    /// as subscribers arrive), so the list never reallocates and copies.
    pub fn reserve(&mut self, subscribers: usize) {
        self.members.reserve(subscribers);
    }

    /// The id of the last event accepted (the floor before any).
    pub fn last_id(&self) -> EventId {
        self.last
    }

    /// How many subscribers there are.
    pub fn subscribers(&self) -> usize {
        self.members.len()
    }

    /// The broadcast counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Whether frames are waiting for a fan-out. The server must fan out
    /// before [`Broker::subscribe`] so the replay seam is exact.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Takes the next event of the one order all loops see: retains it and
    /// queues it for the next [`Broker::fan_out`]. Ids must increase.
    pub fn accept(&mut self, event: Arc<Published>) {
        debug_assert!(event.id > self.last || self.floor.is_none(), "events arrive in id order");
        self.last = self.last.max(event.id);
        self.retain(event.clone());
        self.pending.push(event);
    }

    /// Sets the history of a broker created with no floor: `events` (oldest
    /// first) are what is retained, and every event after `floor` is among
    /// them. Nothing is fanned out: these events happened before the broker
    /// could know of them. Ignored once the history is known.
    pub fn backfill(&mut self, floor: EventId, events: impl IntoIterator<Item = Arc<Published>>) {
        if self.floor.is_some() {
            return;
        }
        self.floor = Some(floor);
        self.last = self.last.max(floor);
        for event in events {
            if event.id > self.last {
                self.last = event.id;
                self.retain(event);
            }
        }
    }

    /// The topics of a membership returned by [`Broker::subscribe`].
    pub fn topics_of(&self, membership: usize) -> impl Iterator<Item = &str> {
        let slots = self.members.get(membership).map(|m| m.topics.iter());
        slots.into_iter().flatten().filter_map(|(topic, _)| self.topic_members.get(topic).map(|t| &*t.name))
    }

    /// Subscribes the connection `client` to `topics`, computing what it must
    /// be sent first (see the module docs on replay). Call only when nothing
    /// is pending (after [`Broker::fan_out`]).
    pub fn subscribe(&mut self, client: usize, topics: &[String], last_event_id: Option<&str>) -> Joined {
        debug_assert!(self.pending.is_empty(), "subscribe between fan-outs only");
        let backlog = match last_event_id.filter(|id| !id.is_empty()) {
            None if self.floor.is_none() => Vec::new(),
            None => vec![Arc::from(format!("id: {}\n\n", self.last).into_bytes())],
            Some(id) => self.replay(topics, id),
        };
        let membership = self.members.vacant_key();
        let mut keys: Vec<(u32, u32)> = Vec::with_capacity(topics.len());
        for topic in topics {
            let topic_key = match self.topics.get(topic.as_str()) {
                Some(&key) => key,
                None => {
                    let key = self.topic_members.insert(Topic { name: topic.as_str().into(), members: Slab::new() });
                    self.topics.insert(topic.as_str().into(), key);
                    key
                }
            };
            let slot = self.topic_members[topic_key].members.insert(membership as u32);
            keys.push((topic_key as u32, slot as u32));
        }
        let topics = Slots::new(&keys);
        self.members.insert(Member { client: client as u32, beat: self.beat, round: self.round, topics });
        Joined { membership, backlog }
    }

    /// Removes a membership returned by [`Broker::subscribe`]; a topic left
    /// without subscribers is forgotten.
    pub fn unsubscribe(&mut self, membership: usize) {
        let Some(member) = self.members.try_remove(membership) else {
            return;
        };
        for (topic_key, slot) in member.topics.iter() {
            let Some(topic) = self.topic_members.get_mut(topic_key) else {
                continue;
            };
            topic.members.try_remove(slot);
            if topic.members.is_empty() {
                let topic = self.topic_members.remove(topic_key);
                self.topics.remove(&topic.name);
            }
        }
    }

    /// Sends the pending frames to their subscribers: each subscriber gets, in
    /// one delivery, the frames of the batch on its topics. Subscribers whose
    /// delivery needs the server's attention are appended to `attention`.
    pub fn fan_out<S: Subscriber>(&mut self, subscribers: &mut Slab<S>, attention: &mut Vec<(usize, Delivery)>) {
        if self.pending.is_empty() {
            return;
        }
        self.round += 1;
        let pending = std::mem::take(&mut self.pending);
        // Topic keys of each pending event, resolved once per fan-out.
        let event_topics: Vec<Vec<usize>> =
            pending.iter().map(|e| e.topics.iter().filter_map(|t| self.topics.get(t).copied()).collect()).collect();
        let single_topic = match event_topics.first() {
            Some(first) if first.len() == 1 && event_topics.iter().all(|t| t == first) => Some(first[0]),
            _ => None,
        };
        if let Some(topic) = single_topic {
            // The common case: every event of the batch is for one topic, so
            // all its subscribers get all the frames.
            self.scratch.extend(pending.iter().map(|e| e.frame.clone()));
            let batch_bytes: usize = self.scratch.iter().map(|f| f.len()).sum();
            for (_, &membership) in self.topic_members[topic].members.iter() {
                let Some(member) = self.members.get_mut(membership as usize) else { continue };
                member.round = self.round;
                member.beat = self.beat;
                deliver(subscribers, member.client as usize, &self.scratch, attention);
                self.stats.frames += self.scratch.len() as u64;
                self.stats.bytes += batch_bytes as u64;
            }
            self.scratch.clear();
        } else {
            for topics in &event_topics {
                for &topic in topics {
                    for (_, &membership) in self.topic_members[topic].members.iter() {
                        let Some(member) = self.members.get_mut(membership as usize) else { continue };
                        if member.round == self.round {
                            continue; // Already sent the batch via another topic.
                        }
                        member.round = self.round;
                        member.beat = self.beat;
                        let wants = |keys: &Vec<usize>| member.topics.iter().any(|(k, _)| keys.contains(&k));
                        let frames = pending.iter().zip(&event_topics).filter(|(_, keys)| wants(keys));
                        self.scratch.extend(frames.map(|(e, _)| e.frame.clone()));
                        deliver(subscribers, member.client as usize, &self.scratch, attention);
                        self.stats.frames += self.scratch.len() as u64;
                        self.stats.bytes += self.scratch.iter().map(|f| f.len() as u64).sum::<u64>();
                        self.scratch.clear();
                    }
                }
            }
        }
        self.pending = pending;
        self.pending.clear();
    }

    /// Sends a comment line to every subscriber that was sent nothing during
    /// the interval now ending. The server calls this once per heartbeat
    /// interval: one timer per loop, however many subscribers.
    pub fn heartbeat<S: Subscriber>(&mut self, subscribers: &mut Slab<S>, attention: &mut Vec<(usize, Delivery)>) {
        let frame = std::slice::from_ref(&self.heartbeat_frame);
        for (_, member) in self.members.iter() {
            if member.beat != self.beat {
                deliver(subscribers, member.client as usize, frame, attention);
                self.stats.heartbeats += 1;
            }
        }
        self.beat = self.beat.wrapping_add(1);
    }

    /// Frames to send a subscriber that resumes after `last_event_id`.
    fn replay(&self, topics: &[String], last_event_id: &str) -> Vec<Frame> {
        let resume_after =
            EventId::parse(last_event_id).filter(|id| self.floor.is_some_and(|floor| floor <= *id) && *id <= self.last);
        let mut frames = Vec::new();
        let start = match resume_after {
            Some(after) => self.history.partition_point(|e| e.id <= after),
            None => {
                let replay_from = self.history.front().map(|e| e.id.to_string());
                let body = serde_json::json!({ "lastEventId": last_event_id, "replayFrom": replay_from });
                let gap = sse::encode(&sse::Event { name: Some(GAP_EVENT), data: &body.to_string(), id: None });
                frames.push(gap);
                0
            }
        };
        let on_topic = |e: &&Arc<Published>| e.topics.iter().any(|t| topics.iter().any(|s| s.as_str() == &**t));
        frames.extend(self.history.range(start..).filter(on_topic).map(|e| e.frame.clone()));
        frames
    }

    /// Keeps `event` in the history, evicting the oldest beyond the bounds
    /// (which raises the floor).
    fn retain(&mut self, event: Arc<Published>) {
        if self.limits.events == 0 {
            self.floor = Some(event.id);
            return;
        }
        self.history_bytes += event.frame.len();
        self.history.push_back(event);
        while self.history.len() > self.limits.events || self.history_bytes > self.limits.bytes {
            let Some(old) = self.history.pop_front() else { break };
            self.history_bytes -= old.frame.len();
            self.floor = Some(old.id);
        }
    }
}

fn deliver<S: Subscriber>(
    subscribers: &mut Slab<S>,
    key: usize,
    frames: &[Frame],
    attention: &mut Vec<(usize, Delivery)>,
) {
    if let Some(subscriber) = subscribers.get_mut(key) {
        match subscriber.deliver(frames) {
            Delivery::Done => {}
            other => attention.push((key, other)),
        }
    }
}
