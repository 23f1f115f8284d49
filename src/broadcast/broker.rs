//! The broadcast path on one loop: topics, who is subscribed to what, and
//! how one published frame reaches all of them.
//!
//! A broker belongs to one event loop and knows only that loop's
//! subscribers. Events reach it already numbered and framed, in the one order
//! every loop sees ([`crate::broadcast::hub`] says where ids come from and how that order
//! is kept); the broker retains them, fans them out, and replays them.
//!
//! **History and replay** are kept in [`History`]: every event accepted
//! here is retained there, and a subscriber that sends `Last-Event-ID`
//! first gets the retained events after that id on its topics, then the
//! live stream; an event is in one of the two, never both and never neither
//! (the seam is explained under fan-out below). (A cluster node may take an
//! id a little above its last event as one it has not read yet:
//! [`Broker::subscribe_up_to`].) A new subscriber without `Last-Event-ID`
//! gets the current id in its opening block ([`sse::cursor`]), so even a
//! client that never received an event resumes without a gap.
//!
//! **Fan-out.** Accepting an event writes nothing. It goes into the
//! *unsent* queue, and fan-out passes walk the subscribers of the topics that
//! have unsent events (topic by topic, so an event on a small topic costs
//! only that topic's subscribers), handing each one, in one call, every
//! unsent event on its topics that it has not had yet:
//! one `write()` (or `writev()`) per subscriber per pass, however many events
//! arrived. A pass is done in slices ([`Broker::fan_out_some`], a bounded
//! number of deliveries per loop turn), so the loop keeps reading between
//! slices; events published meanwhile (a sequential publisher's next one, say)
//! join the same pass for the subscribers it has not reached yet. That is
//! where coalescing comes from: the busier the server, the more events each
//! write carries, so the cost per delivery falls as the load rises, and no
//! subscriber waits behind a whole pass to get an event published mid-pass
//! except for the pass itself. Each subscriber remembers how far into the
//! queue it has been served (`Member::sent`); a pass that ends drops the
//! events every subscriber has had. The broker knows subscribers only by
//! key; the server lends it the connections through the [`Subscriber`]
//! trait, so the broadcast loop also runs (and is benchmarked) over
//! in-memory sinks.
//!
//! The replay seam follows: a newcomer starts at the end of the unsent
//! queue, and its replay is taken from the history, which holds every
//! accepted event, sent or not. So an event is in exactly one of the two.
//!
//! **A replay is a cursor** into the history, not a copy of it: the server
//! asks for the next few frames ([`Broker::replay_some`]) as the reader's
//! socket drains, so what one replay puts in flight is bounded, however long
//! the history. Meanwhile the member gets no live events (they go into the
//! history too); once its cursor reaches the last event, it joins the live
//! stream at the end of the unsent queue, which is again exact: every event
//! before that point was in the history, every one after comes live. A
//! reader so slow that the history evicts events it has not had yet loses
//! its replay ([`Replay::Lost`]) and must be dropped, as a slow consumer is.
//!
//! **Heartbeats.** One timer per loop, not one per connection: every interval
//! the server calls [`Broker::heartbeat`], and only subscribers that were sent
//! nothing since the previous beat get a comment line.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use slab::Slab;

use crate::broadcast::event::{EventId, Published};
use crate::broadcast::history::History;
pub use crate::broadcast::history::HistoryLimits;
use crate::sse::{self, Frame};

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
    /// Open Mercure subscriptions (one per matcher of a stream) by matcher
    /// type, in the order of [`MATCHER_TYPES`]: a gauge.
    pub mercure_subscriptions: [u64; 3],
}

/// The matcher types [`Stats::mercure_subscriptions`] counts, by name.
pub const MATCHER_TYPES: [&str; 3] = ["exact", "urlpattern", "uritemplate"];

impl Topic {
    /// Where a subscription to this topic counts in
    /// [`Stats::mercure_subscriptions`]: an exact topic, or a pattern by the
    /// type its key starts with (see [`MercureInterest::patterns`]).
    fn matcher_type(&self) -> Option<usize> {
        match self.kind {
            TopicKind::Seeds => None,
            TopicKind::Mercure => Some(0),
            TopicKind::Pattern => {
                let name = self.name.split_once(' ').map_or(&*self.name, |(kind, _)| kind);
                MATCHER_TYPES.iter().position(|&kind| kind == name)
            }
        }
    }
}

/// Topics, subscribers, history and the batch of frames not yet sent.
#[derive(Debug)]
pub struct Broker {
    history: History,
    /// Topic name to its key in `topic_members`: the seeds' topics, the
    /// Mercure topics subscribed to exactly, and the Mercure patterns (by
    /// key).
    topics: HashMap<Box<str>, usize>,
    mercure_topics: HashMap<Box<str>, usize>,
    patterns: HashMap<Box<str>, usize>,
    /// Each pattern with subscribers, and its key in `topic_members`.
    pattern_list: Vec<(usize, Arc<dyn TopicPattern>)>,
    /// The members that may read private events, and who they are. Rare
    /// (tokens), so kept apart from [`Member`].
    audiences: HashMap<usize, Arc<dyn Audience>>,
    /// Per topic: its subscribers.
    topic_members: Slab<Topic>,
    members: Slab<Member>,
    /// Accepted events not yet handed to every subscriber that wants them,
    /// in order. Only events with a subscriber on this loop are queued.
    unsent: VecDeque<Unsent>,
    /// Position (counting queued events since the start) of `unsent[0]`.
    unsent_base: u64,
    /// Position one past the last queued event.
    unsent_end: u64,
    /// Bytes of the frames in `unsent`.
    unsent_bytes: usize,
    /// The fan-out pass under way, if any.
    pass: Option<Pass>,
    /// Subscribers that resumed from an id this broker has not reached yet
    /// (a cluster node behind another): events up to that id are not sent
    /// to them again. Rare, so kept apart from [`Member`].
    ahead: HashMap<usize, EventId>,
    /// Members catching up on a replay, with their cursor in the history
    /// (the id of the last event looked at). They get no live events until
    /// the cursor reaches the last event. Rare, so kept apart from
    /// [`Member`].
    replaying: HashMap<usize, EventId>,
    /// Counts heartbeat intervals.
    beat: u32,
    /// The frames of the last delivery, reused by the next subscriber when
    /// `gathered_for` matches (see `Broker::serve`), and their bytes.
    gathered: Vec<Frame>,
    gathered_for: Option<(u64, u64, u32, usize)>,
    gathered_bytes: u64,
    heartbeat_frame: Frame,
    stats: Stats,
}

/// A topic pattern (a Mercure URL pattern, say). The broker asks each
/// distinct pattern once per event whether one of the event's topics
/// matches, however many subscribers hold it.
pub trait TopicPattern: Send + Sync + std::fmt::Debug {
    fn matches(&self, topic: &str) -> bool;
}

/// Who may read private events (a Mercure subscriber's token).
pub trait Audience: Send + Sync + std::fmt::Debug {
    /// Whether an event on `topics` may be sent.
    fn may_read(&self, topics: &[Box<str>]) -> bool;
}

/// What a Mercure subscriber listens to: exact topics and patterns (each
/// with the key that tells identical patterns apart, e.g. its type and
/// text), and who it is for private events. It receives Mercure events
/// only, as a seeds subscriber receives seeds events only.
#[derive(Debug, Clone, Default)]
pub struct MercureInterest {
    pub topics: Vec<String>,
    pub patterns: Vec<(String, Arc<dyn TopicPattern>)>,
    /// `None`: public events only.
    pub audience: Option<Arc<dyn Audience>>,
}

/// Where a Mercure subscriber resumes, as `Mercure-Last-Event-ID` says: the
/// id it asked for when the history has it, else `earliest`.
pub const EARLIEST: &str = "earliest";

/// An event waiting in the unsent queue, with its topics as keys of this
/// broker's topics (resolved once, not per subscriber).
#[derive(Debug)]
struct Unsent {
    event: Arc<Published>,
    topics: Box<[u32]>,
}

/// A fan-out pass: it walks the members of `topics`, in order.
#[derive(Debug)]
struct Pass {
    /// Keys of the topics with unsent events, as they came.
    topics: Vec<u32>,
    /// Where the walk is: an index into `topics`, and a slot in that
    /// topic's member slab.
    topic: usize,
    slot: usize,
    /// `unsent_end` when the pass began: once it ends, every member of these
    /// topics has had the events before that.
    start: u64,
}

/// What a topic entry stands for: a seeds topic, a Mercure topic (exact
/// matching), or a Mercure pattern. The three live in separate maps, so a
/// name never crosses from one to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TopicKind {
    Seeds,
    Mercure,
    Pattern,
}

/// One topic with subscribers.
#[derive(Debug)]
struct Topic {
    kind: TopicKind,
    name: Box<str>,
    /// The pattern of a [`TopicKind::Pattern`] entry (for replay: live
    /// events are matched once each, through `Broker::pattern_list`).
    pattern: Option<Arc<dyn TopicPattern>>,
    /// Membership keys (into `Broker::members`).
    members: Slab<u32>,
    /// One past the highest slot `members` has used: where a walk ends.
    slots: usize,
    /// Whether the pass under way includes this topic.
    in_pass: bool,
}

/// One subscriber.
#[derive(Debug)]
struct Member {
    /// The server's key for the connection.
    client: u32,
    /// The last heartbeat interval in which it was sent something (only
    /// compared for equality, so wrapping is harmless).
    beat: u32,
    /// How far into the unsent queue it has been served: the position of
    /// the first event it has not been handed.
    sent: u64,
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

    /// The topic key, if there is just one.
    fn single(&self) -> Option<u32> {
        self.rest.is_none().then_some(self.first.0)
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
    /// Frames to send first: the id block for a fresh subscriber, or the
    /// `gap` event before a replay that cannot start where it was asked to.
    pub backlog: Vec<Frame>,
    /// Whether a replay follows the backlog: the server then asks
    /// [`Broker::replay_some`] for its frames, as the socket drains, until
    /// [`Replay::Done`]; no live event is sent meanwhile.
    pub replaying: bool,
    /// For a Mercure subscriber that asked to resume: what
    /// `Mercure-Last-Event-ID` must say (the id it sent when found, else
    /// [`EARLIEST`]).
    pub resumed_after: Option<String>,
}

/// The next piece of a replay, from [`Broker::replay_some`].
#[derive(Debug)]
pub enum Replay {
    /// These frames (maybe none, after a stretch of history with nothing
    /// for this member); more follow.
    More(Vec<Frame>),
    /// These frames end the replay: the member now gets live events.
    Done(Vec<Frame>),
    /// The history has evicted events this member has not had: drop it (it
    /// can reconnect and resume, with a `gap`).
    Lost,
}

impl Broker {
    /// A broker whose history starts at `floor` (see the module docs):
    /// replay from `floor` or later is exact. `None` means the history is
    /// not known yet: [`Broker::backfill`] brings it.
    pub fn new(limits: HistoryLimits, floor: Option<EventId>) -> Broker {
        Broker {
            history: History::new(limits, floor),
            topics: HashMap::new(),
            mercure_topics: HashMap::new(),
            patterns: HashMap::new(),
            pattern_list: Vec::new(),
            audiences: HashMap::new(),
            topic_members: Slab::new(),
            members: Slab::new(),
            unsent: VecDeque::new(),
            unsent_base: 0,
            unsent_end: 0,
            unsent_bytes: 0,
            pass: None,
            ahead: HashMap::new(),
            replaying: HashMap::new(),
            beat: 0,
            gathered: Vec::new(),
            gathered_for: None,
            gathered_bytes: 0,
            heartbeat_frame: sse::heartbeat(),
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
        self.history.last_id()
    }

    /// Where a Mercure client that has read everything so far resumes:
    /// the last event's URN, or [`EARLIEST`] before any.
    pub fn mercure_cursor(&self) -> String {
        self.history.cursor().map_or_else(|| EARLIEST.to_owned(), |id| id.urn())
    }

    /// How many subscribers there are.
    pub fn subscribers(&self) -> usize {
        self.members.len()
    }

    /// The broadcast counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Bytes of the events waiting to be fanned out.
    pub fn unsent_bytes(&self) -> usize {
        self.unsent_bytes
    }

    /// Whether events wait to be fanned out.
    pub fn has_pending(&self) -> bool {
        !self.unsent.is_empty()
    }

    /// Takes the next event of the one order all loops see: retains it and,
    /// if a subscriber here wants it, queues it for fan-out. Ids must
    /// increase.
    pub fn push(&mut self, event: Arc<Published>) {
        let topics: Box<[u32]> = match event.mercure {
            None => event.topics.iter().filter_map(|t| self.topics.get(t).map(|&k| k as u32)).collect(),
            Some(_) => {
                let exact = event.topics.iter().filter_map(|t| self.mercure_topics.get(t).copied());
                // Each distinct pattern is evaluated once per event, here,
                // not once per subscriber.
                let matching = self.pattern_list.iter().filter(|(_, p)| event.topics.iter().any(|t| p.matches(t)));
                exact.chain(matching.map(|(key, _)| *key)).map(|k| k as u32).collect()
            }
        };
        self.history.push(event.clone());
        if topics.is_empty() {
            return;
        }
        // A pass under way takes in the event's topics too, so their
        // members not yet reached get it in the same pass.
        if let Some(pass) = &mut self.pass {
            include_topics(&mut self.topic_members, pass, &topics);
        }
        self.unsent_bytes += event.frame.len();
        self.unsent.push_back(Unsent { event, topics });
        self.unsent_end += 1;
    }

    /// Sets the history of a broker created with no floor: `events` (oldest
    /// first) are what is retained, and every event after `floor` is among
    /// them. Nothing is fanned out: these events happened before the broker
    /// could know of them. Once the history is known, a backfill restarts
    /// it (see [`History::backfill`]), and subscribers that resumed from an
    /// id not read yet are no longer held back to it: that id is from
    /// before the restart.
    pub fn backfill(&mut self, floor: EventId, events: impl IntoIterator<Item = Arc<Published>>) {
        self.ahead.clear();
        self.history.backfill(floor, events);
    }

    /// The topics of a membership returned by [`Broker::subscribe`].
    /// (Seeds topics only: Mercure subscriptions are not counted by topic.)
    pub fn topics_of(&self, membership: usize) -> impl Iterator<Item = &str> {
        let slots = self.members.get(membership).map(|m| m.topics.iter());
        let topics = slots.into_iter().flatten().filter_map(|(topic, _)| self.topic_members.get(topic));
        topics.filter(|t| t.kind == TopicKind::Seeds).map(|t| &*t.name)
    }

    /// Subscribes the connection `client` to `topics`, computing what it must
    /// be sent first (see the module docs on replay). Any time is right: the
    /// newcomer is served from the end of the unsent queue, and everything
    /// before that is in its replay.
    pub fn subscribe(&mut self, client: usize, topics: &[String], last_event_id: Option<&str>) -> Joined {
        self.subscribe_up_to(client, topics, last_event_id, None)
    }

    /// [`Broker::subscribe`], where a `last_event_id` after the last event
    /// this broker has, but not after `newest`, is taken as one it has not
    /// reached yet (a cluster node behind the one the client came from): the
    /// subscriber gets no replay and no `gap`, and live events up to that id
    /// are not sent to it again.
    pub fn subscribe_up_to(
        &mut self,
        client: usize,
        topics: &[String],
        last_event_id: Option<&str>,
        newest: Option<EventId>,
    ) -> Joined {
        assert!(!topics.is_empty(), "a subscription names a topic");
        let ahead = last_event_id.and_then(EventId::parse).filter(|&id| self.history.is_ahead(id, newest));
        let (backlog, replay_after) = match last_event_id.filter(|id| !id.is_empty()) {
            _ if ahead.is_some() => (Vec::new(), None),
            None if !self.history.is_known() => (Vec::new(), None),
            None => (vec![sse::cursor(&self.history.last_id().to_string())], None),
            Some(id) => {
                let (gap, after) = self.history.resume(id);
                (gap.into_iter().collect(), Some(after))
            }
        };
        let keys: Vec<usize> = topics.iter().map(|topic| self.topic_key(TopicKind::Seeds, topic, None)).collect();
        let membership = self.join(client, &keys, ahead, None);
        let replaying = self.start_replay(membership, replay_after);
        Joined { membership, backlog, replaying, resumed_after: None }
    }

    /// Subscribes the connection `client` to Mercure updates: those on
    /// `interest`'s topics or matching its patterns, private ones only if
    /// its audience may read them (live and in the replay alike). Resumes
    /// after `last_event_id` (a hub URN, a publisher's own id, or
    /// [`EARLIEST`]); `newest` as for [`Broker::subscribe_up_to`].
    pub fn subscribe_mercure(
        &mut self,
        client: usize,
        interest: MercureInterest,
        last_event_id: Option<&str>,
        newest: Option<EventId>,
    ) -> Joined {
        let ahead = last_event_id.and_then(EventId::from_urn).filter(|&id| self.history.is_ahead(id, newest));
        let MercureInterest { topics, patterns, audience } = interest;
        let (backlog, resumed_after, replay_after) = match last_event_id {
            _ if ahead.is_some() => (Vec::new(), last_event_id.map(str::to_owned), None),
            None if !self.history.is_known() => (Vec::new(), None, None),
            None => (vec![sse::cursor(&self.history.last_id().urn())], None, None),
            // An empty id asks to resume from nowhere in particular: the
            // stream starts now, after the last event, and says so.
            Some("") => {
                let last = self.history.last_id().urn();
                (vec![sse::cursor(&last)], Some(last), None)
            }
            Some(id) => {
                let (after, found) = self.history.resume_mercure(id);
                (Vec::new(), Some(if found { id.to_owned() } else { EARLIEST.to_owned() }), Some(after))
            }
        };
        let mut keys: Vec<usize> = topics.iter().map(|topic| self.topic_key(TopicKind::Mercure, topic, None)).collect();
        for (key, pattern) in patterns {
            keys.push(self.topic_key(TopicKind::Pattern, &key, Some(pattern)));
        }
        keys.sort_unstable();
        keys.dedup();
        let membership = self.join(client, &keys, ahead, audience);
        let replaying = self.start_replay(membership, replay_after);
        Joined { membership, backlog, replaying, resumed_after }
    }

    /// Makes `membership` catch up from `after` if the history has events
    /// after it; says whether it does.
    fn start_replay(&mut self, membership: usize, after: Option<EventId>) -> bool {
        let replaying = after.is_some_and(|after| after < self.history.last_id());
        if let (true, Some(after)) = (replaying, after) {
            self.replaying.insert(membership, after);
        }
        replaying
    }

    /// The next piece of `membership`'s replay: about `max_bytes` of frames
    /// (see [`Replay`]). A membership that is not replaying is done.
    pub fn replay_some(&mut self, membership: usize, max_bytes: usize) -> Replay {
        let (Some(&after), Some(member)) = (self.replaying.get(&membership), self.members.get_mut(membership)) else {
            self.replaying.remove(&membership);
            return Replay::Done(Vec::new());
        };
        let audience = self.audiences.get(&membership);
        let wanted = |event: &Published| wants(&self.topic_members, audience, member, event);
        match self.history.frames_after(after, max_bytes, wanted) {
            None => {
                self.replaying.remove(&membership);
                Replay::Lost
            }
            Some((frames, cursor)) if cursor >= self.history.last_id() => {
                self.replaying.remove(&membership);
                // Live from here: every event before this point was in the
                // history.
                member.sent = self.unsent_end;
                Replay::Done(frames)
            }
            Some((frames, cursor)) => {
                self.replaying.insert(membership, cursor);
                Replay::More(frames)
            }
        }
    }

    /// The key of the topic entry of `kind` named `name`, made if new.
    fn topic_key(&mut self, kind: TopicKind, name: &str, pattern: Option<Arc<dyn TopicPattern>>) -> usize {
        let map = match kind {
            TopicKind::Seeds => &mut self.topics,
            TopicKind::Mercure => &mut self.mercure_topics,
            TopicKind::Pattern => &mut self.patterns,
        };
        if let Some(&key) = map.get(name) {
            return key;
        }
        let topic =
            Topic { kind, name: name.into(), pattern: pattern.clone(), members: Slab::new(), slots: 0, in_pass: false };
        let key = self.topic_members.insert(topic);
        map.insert(name.into(), key);
        if let Some(pattern) = pattern {
            self.pattern_list.push((key, pattern));
        }
        key
    }

    /// Adds a member on the topic entries `keys` (at least one), served
    /// from the end of the unsent queue.
    fn join(
        &mut self,
        client: usize,
        keys: &[usize],
        ahead: Option<EventId>,
        audience: Option<Arc<dyn Audience>>,
    ) -> usize {
        let membership = self.members.vacant_key();
        let mut slots: Vec<(u32, u32)> = Vec::with_capacity(keys.len());
        for &topic_key in keys {
            let Some(topic) = self.topic_members.get_mut(topic_key) else { continue };
            if let Some(kind) = topic.matcher_type() {
                self.stats.mercure_subscriptions[kind] += 1;
            }
            let slot = topic.members.insert(membership as u32);
            topic.slots = topic.slots.max(slot + 1);
            slots.push((topic_key as u32, slot as u32));
        }
        let topics = Slots::new(&slots);
        self.members.insert(Member { client: client as u32, beat: self.beat, sent: self.unsent_end, topics });
        if let Some(id) = ahead {
            self.ahead.insert(membership, id);
        }
        if let Some(audience) = audience {
            self.audiences.insert(membership, audience);
        }
        membership
    }

    /// Removes a membership returned by [`Broker::subscribe`]; a topic left
    /// without subscribers is forgotten.
    pub fn unsubscribe(&mut self, membership: usize) {
        let Some(member) = self.members.try_remove(membership) else {
            return;
        };
        self.ahead.remove(&membership);
        self.replaying.remove(&membership);
        self.audiences.remove(&membership);
        for (topic_key, slot) in member.topics.iter() {
            let Some(topic) = self.topic_members.get_mut(topic_key) else {
                continue;
            };
            if let Some(kind) = topic.matcher_type() {
                self.stats.mercure_subscriptions[kind] -= 1;
            }
            topic.members.try_remove(slot);
            if topic.members.is_empty() {
                let topic = self.topic_members.remove(topic_key);
                match topic.kind {
                    TopicKind::Seeds => self.topics.remove(&topic.name),
                    TopicKind::Mercure => self.mercure_topics.remove(&topic.name),
                    TopicKind::Pattern => {
                        self.pattern_list.retain(|(key, _)| *key != topic_key);
                        self.patterns.remove(&topic.name)
                    }
                };
            }
        }
    }

    /// Fans out until every subscriber has every event (the whole of what
    /// [`Broker::fan_out_some`] does in slices), for shutdown and tests.
    pub fn fan_out<S: Subscriber>(&mut self, subscribers: &mut Slab<S>, follow_ups: &mut Vec<(usize, Delivery)>) {
        while self.fan_out_some(subscribers, follow_ups, usize::MAX) {}
    }

    /// Goes on with the fan-out pass (starting one if events wait), making
    /// at most `budget` deliveries: each subscriber visited gets, in one
    /// delivery, every unsent event on its topics it has not had. Subscribers
    /// whose delivery needs the server's follow_ups are appended to
    /// `follow_ups`. Returns whether work remains (call again soon).
    pub fn fan_out_some<S: Subscriber>(
        &mut self,
        subscribers: &mut Slab<S>,
        follow_ups: &mut Vec<(usize, Delivery)>,
        budget: usize,
    ) -> bool {
        if self.unsent.is_empty() {
            return false;
        }
        let mut pass = self.pass.take().unwrap_or_else(|| {
            let mut pass = Pass { topics: Vec::new(), topic: 0, slot: 0, start: self.unsent_end };
            for unsent in &self.unsent {
                include_topics(&mut self.topic_members, &mut pass, &unsent.topics);
            }
            pass
        });
        // Skipping a member that has everything costs little, but it counts
        // too, so that a slice stays short whatever the mix.
        let most_visits = budget.saturating_mul(VISITS_PER_DELIVERY);
        let (mut deliveries, mut visits) = (0, 0);
        while let Some(&topic_key) = pass.topics.get(pass.topic) {
            let membership = match self.topic_members.get(topic_key as usize) {
                Some(topic) if pass.slot < topic.slots => topic.members.get(pass.slot).copied(),
                // This topic is done (or gone): on to the next.
                _ => {
                    (pass.topic, pass.slot) = (pass.topic + 1, 0);
                    continue;
                }
            };
            if deliveries == budget || visits == most_visits {
                self.pass = Some(pass);
                return true;
            }
            pass.slot += 1;
            if let Some(membership) = membership {
                visits += 1;
                deliveries += usize::from(self.serve(membership as usize, subscribers, follow_ups));
            }
        }
        // The pass is over: every member of its topics has had the events
        // queued before it began (one that joined since started later still;
        // a member of no topic of the pass wanted none of them).
        for &key in &pass.topics {
            if let Some(topic) = self.topic_members.get_mut(key as usize) {
                topic.in_pass = false;
            }
        }
        // Let go of the last frames gathered, so they are not kept alive.
        self.gathered.clear();
        self.gathered_for = None;
        while self.unsent_base < pass.start {
            let Some(sent) = self.unsent.pop_front() else { break };
            self.unsent_bytes -= sent.event.frame.len();
            self.unsent_base += 1;
        }
        !self.unsent.is_empty()
    }

    /// Hands member `membership`, in one delivery, every unsent event on its
    /// topics that it has not had. Returns whether there was any.
    fn serve<S: Subscriber>(
        &mut self,
        membership: usize,
        subscribers: &mut Slab<S>,
        follow_ups: &mut Vec<(usize, Delivery)>,
    ) -> bool {
        let Some(member) = self.members.get_mut(membership) else { return false };
        if member.sent >= self.unsent_end {
            return false;
        }
        // Catching up on a replay: live events wait in the history.
        if !self.replaying.is_empty() && self.replaying.contains_key(&membership) {
            return false;
        }
        // A member's position is never before the queue's base, except for
        // one no pass has visited since those events, which were then not on
        // its topics: reading from the base is right for it too.
        let from = member.sent.saturating_sub(self.unsent_base) as usize;
        let skip_through = if self.ahead.is_empty() { None } else { self.ahead.get(&membership).copied() };
        let audience = if self.audiences.is_empty() { None } else { self.audiences.get(&membership) };
        // Members in a row mostly want the same frames (one topic, the same
        // place in the queue): the frames gathered for the one before are
        // then reused as they are. Positions in the queue never change
        // meaning, so the key is exact.
        // Private events depend on who reads, so the audience is part of
        // the key (members without one read the same, public, events).
        let reader = audience.map_or(0, |a| Arc::as_ptr(a) as *const () as usize);
        let key = member
            .topics
            .single()
            .filter(|_| skip_through.is_none())
            .map(|t| (member.sent, self.unsent_end, t, reader));
        if key.is_none() || key != self.gathered_for {
            let wants = |unsent: &&Unsent| {
                member.topics.iter().any(|(k, _)| unsent.topics.contains(&(k as u32)))
                    && skip_through.is_none_or(|id| unsent.event.id > id)
                    && (!unsent.event.is_private() || audience.is_some_and(|a| a.may_read(&unsent.event.topics)))
            };
            self.gathered.clear();
            self.gathered.extend(self.unsent.range(from..).filter(wants).map(|u| u.event.frame.clone()));
            self.gathered_bytes = self.gathered.iter().map(|f| f.len() as u64).sum();
            self.gathered_for = key;
        }
        member.sent = self.unsent_end;
        if skip_through.is_some_and(|id| id <= self.history.last_id()) {
            self.ahead.remove(&membership);
        }
        if self.gathered.is_empty() {
            return false;
        }
        member.beat = self.beat;
        deliver(subscribers, member.client as usize, &self.gathered, follow_ups);
        self.stats.frames += self.gathered.len() as u64;
        self.stats.bytes += self.gathered_bytes;
        true
    }

    /// Sends a comment line to every subscriber that was sent nothing during
    /// the interval now ending. The server calls this once per heartbeat
    /// interval: one timer per loop, however many subscribers.
    pub fn heartbeat<S: Subscriber>(&mut self, subscribers: &mut Slab<S>, follow_ups: &mut Vec<(usize, Delivery)>) {
        let frame = std::slice::from_ref(&self.heartbeat_frame);
        for (_, member) in self.members.iter() {
            if member.beat != self.beat {
                deliver(subscribers, member.client as usize, frame, follow_ups);
                self.stats.heartbeats += 1;
            }
        }
        self.beat = self.beat.wrapping_add(1);
    }
}

/// Whether `member` (reading private events as `audience`) wants `event`:
/// the test of the unsent queue's resolved topic keys, for an event from the
/// history.
fn wants(
    topic_members: &Slab<Topic>,
    audience: Option<&Arc<dyn Audience>>,
    member: &Member,
    event: &Published,
) -> bool {
    let named = |name: &str| event.topics.iter().any(|t| **t == *name);
    let on_topic = member.topics.iter().filter_map(|(key, _)| topic_members.get(key)).any(|topic| match topic.kind {
        TopicKind::Seeds => event.mercure.is_none() && named(&topic.name),
        TopicKind::Mercure => event.mercure.is_some() && named(&topic.name),
        TopicKind::Pattern => {
            event.mercure.is_some() && topic.pattern.as_ref().is_some_and(|p| event.topics.iter().any(|t| p.matches(t)))
        }
    });
    on_topic && (!event.is_private() || audience.is_some_and(|a| a.may_read(&event.topics)))
}

/// How many members a fan-out slice may look at per delivery it may make.
const VISITS_PER_DELIVERY: usize = 16;

/// Adds the topics `keys` to `pass`, each once.
fn include_topics(topic_members: &mut Slab<Topic>, pass: &mut Pass, keys: &[u32]) {
    for &key in keys {
        if let Some(topic) = topic_members.get_mut(key as usize).filter(|topic| !topic.in_pass) {
            topic.in_pass = true;
            pass.topics.push(key);
        }
    }
}

fn deliver<S: Subscriber>(
    subscribers: &mut Slab<S>,
    key: usize,
    frames: &[Frame],
    follow_ups: &mut Vec<(usize, Delivery)>,
) {
    if let Some(subscriber) = subscribers.get_mut(key) {
        match subscriber.deliver(frames) {
            Delivery::Done => {}
            other => follow_ups.push((key, other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broadcast::event::Publish;

    /// A subscriber that records the frames it is handed, one entry per
    /// delivery.
    #[derive(Default)]
    struct Recorder(Vec<Vec<String>>);

    impl Subscriber for Recorder {
        fn deliver(&mut self, frames: &[Frame]) -> Delivery {
            self.0.push(frames.iter().map(|f| String::from_utf8_lossy(f).into_owned()).collect());
            Delivery::Done
        }
    }

    const START: EventId = EventId { ms: 7, seq: 0 };

    fn event(seq: u64, topics: &[&str]) -> Arc<Published> {
        let publish = Publish {
            message: format!("m{seq}"),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            event: None,
            mercure: None,
        };
        Arc::new(Published::new(EventId { ms: 7, seq }, &publish))
    }

    /// `n` subscribers on `topics`, keyed 0..n in both the broker and `sinks`.
    fn broker_with(n: usize, topics: &[&str]) -> (Broker, Slab<Recorder>) {
        let mut broker = Broker::new(HistoryLimits::default(), Some(START));
        let mut sinks = Slab::new();
        let topics: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
        for _ in 0..n {
            let key = sinks.insert(Recorder::default());
            broker.subscribe(key, &topics, None);
        }
        (broker, sinks)
    }

    /// What `joined` is sent before any live event: its backlog, then its
    /// replay, taken a frame at a time, as text.
    fn first_frames(broker: &mut Broker, joined: &Joined) -> Vec<String> {
        let mut frames = joined.backlog.clone();
        let mut replaying = joined.replaying;
        while replaying {
            match broker.replay_some(joined.membership, 1) {
                Replay::More(more) => frames.extend(more),
                Replay::Done(last) => {
                    frames.extend(last);
                    replaying = false;
                }
                Replay::Lost => panic!("the replay was lost"),
            }
        }
        frames.iter().map(|f| String::from_utf8_lossy(f).into_owned()).collect()
    }

    fn data(deliveries: &[Vec<String>]) -> Vec<Vec<&str>> {
        fn field(frame: &str) -> &str {
            frame.lines().find_map(|l| l.strip_prefix("data: ")).unwrap_or("?")
        }
        deliveries.iter().map(|d| d.iter().map(|f| field(f)).collect()).collect()
    }

    #[test]
    fn events_accepted_mid_pass_ride_along_to_those_not_yet_reached() {
        let (mut broker, mut sinks) = broker_with(4, &["t"]);
        let mut follow_ups = Vec::new();
        broker.push(event(1, &["t"]));
        // A slice of two: subscribers 0 and 1 get event 1.
        assert!(broker.fan_out_some(&mut sinks, &mut follow_ups, 2));
        broker.push(event(2, &["t"]));
        // The rest of the pass: 2 and 3 get 1 and 2 in one delivery. Then 0
        // and 1 still lack event 2: a second pass gives it to them.
        assert!(broker.fan_out_some(&mut sinks, &mut follow_ups, 10));
        assert!(!broker.fan_out_some(&mut sinks, &mut follow_ups, 10));
        let got: Vec<Vec<Vec<&str>>> = sinks.iter().map(|(_, r)| data(&r.0)).collect();
        assert_eq!(got[0], [vec!["m1"], vec!["m2"]]);
        assert_eq!(got[1], [vec!["m1"], vec!["m2"]]);
        assert_eq!(got[2], [vec!["m1", "m2"]]);
        assert_eq!(got[3], [vec!["m1", "m2"]]);
        assert!(!broker.has_pending(), "the queue empties once everyone has everything");
        assert_eq!(broker.stats().frames, 8);
    }

    #[test]
    fn a_subscriber_joining_mid_pass_gets_each_event_once() {
        let (mut broker, mut sinks) = broker_with(3, &["t"]);
        let mut follow_ups = Vec::new();
        broker.push(event(1, &["t"]));
        broker.push(event(2, &["t"]));
        assert!(broker.fan_out_some(&mut sinks, &mut follow_ups, 1));
        // Resumes after event 1, in the middle of the pass.
        let key = sinks.insert(Recorder::default());
        let joined = broker.subscribe(key, &["t".to_owned()], Some("7-1"));
        let replay = first_frames(&mut broker, &joined);
        assert_eq!(data(&[replay]), [vec!["m2"]]);
        broker.push(event(3, &["t"]));
        broker.fan_out(&mut sinks, &mut follow_ups);
        assert_eq!(data(&sinks[key].0), [vec!["m3"]], "live events only after the replay");
        for (key, recorder) in sinks.iter().take(3) {
            let all: Vec<&str> = data(&recorder.0).concat();
            assert_eq!(all, ["m1", "m2", "m3"], "subscriber {key}");
        }
    }

    #[test]
    fn live_events_wait_for_the_replay_then_follow_it_exactly_once() {
        let (mut broker, mut sinks) = broker_with(1, &["t"]);
        for seq in 1..=3 {
            broker.push(event(seq, &["t"]));
        }
        broker.fan_out(&mut sinks, &mut Vec::new());
        let key = sinks.insert(Recorder::default());
        let joined = broker.subscribe(key, &["t".to_owned()], Some("7-0"));
        assert!(joined.replaying && joined.backlog.is_empty());
        let Replay::More(first) = broker.replay_some(joined.membership, 1) else { panic!("more to come") };
        sinks[key].deliver(&first);
        // Published while it catches up: it waits in the history.
        broker.push(event(4, &["t"]));
        broker.fan_out(&mut sinks, &mut Vec::new());
        assert_eq!(data(&sinks[key].0).concat(), ["m1"], "no live event in the middle of a replay");
        let Replay::Done(rest) = broker.replay_some(joined.membership, usize::MAX) else { panic!("done") };
        sinks[key].deliver(&rest);
        broker.push(event(5, &["t"]));
        broker.fan_out(&mut sinks, &mut Vec::new());
        assert_eq!(data(&sinks[key].0).concat(), ["m1", "m2", "m3", "m4", "m5"]);
        assert_eq!(data(&sinks[0].0).concat(), ["m1", "m2", "m3", "m4", "m5"]);
    }

    #[test]
    fn a_replay_the_history_moves_past_is_lost() {
        let mut broker = Broker::new(HistoryLimits { events: 3, bytes: 1 << 20 }, Some(START));
        for seq in 1..=3 {
            broker.push(event(seq, &["t"]));
        }
        let joined = broker.subscribe(0, &["t".to_owned()], Some("7-0"));
        assert!(matches!(broker.replay_some(joined.membership, 1), Replay::More(frames) if frames.len() == 1));
        broker.push(event(4, &["t"]));
        broker.push(event(5, &["t"]));
        assert!(matches!(broker.replay_some(joined.membership, 1), Replay::Lost), "2 and 3 were evicted unsent");
        assert!(broker.replaying.is_empty());
    }

    #[test]
    fn topics_filter_per_subscriber_and_multi_topic_events_arrive_once() {
        let mut broker = Broker::new(HistoryLimits::default(), Some(START));
        let mut sinks = Slab::new();
        let mut join = |topics: &[&str]| {
            let key = sinks.insert(Recorder::default());
            broker.subscribe(key, &topics.iter().map(|t| t.to_string()).collect::<Vec<_>>(), None);
            key
        };
        let (a, ab, b) = (join(&["a"]), join(&["a", "b"]), join(&["b"]));
        broker.push(event(1, &["a"]));
        broker.push(event(2, &["b"]));
        broker.push(event(3, &["a", "b"]));
        broker.push(event(4, &["nobody"]));
        assert_eq!(broker.unsent.len(), 3, "an event no one here wants is not queued");
        broker.fan_out(&mut sinks, &mut Vec::new());
        assert_eq!(data(&sinks[a].0), [vec!["m1", "m3"]]);
        assert_eq!(data(&sinks[ab].0), [vec!["m1", "m2", "m3"]]);
        assert_eq!(data(&sinks[b].0), [vec!["m2", "m3"]]);
    }

    #[test]
    fn replay_is_exact_from_the_floor_and_a_gap_below_it() {
        let limits = HistoryLimits { events: 3, bytes: 1 << 20 };
        let mut broker = Broker::new(limits, Some(START));
        for seq in 1..=5 {
            broker.push(event(seq, &["t"]));
        }
        let topics = ["t".to_owned()];
        let replay = |broker: &mut Broker, id: &str| {
            let joined = broker.subscribe(0, &topics, Some(id));
            let text = first_frames(broker, &joined);
            (text.first().is_some_and(|f| f.starts_with("event: gap")), data(&[text]).concat().len())
        };
        // History holds 3, 4, 5; the floor is 2.
        assert_eq!(replay(&mut broker, "7-2"), (false, 3));
        assert_eq!(replay(&mut broker, "7-4"), (false, 1));
        assert_eq!(replay(&mut broker, "7-5"), (false, 0));
        assert_eq!(replay(&mut broker, "7-1"), (true, 4), "fell out of the history");
        assert_eq!(replay(&mut broker, "6-9"), (true, 4), "an earlier process");
        assert_eq!(replay(&mut broker, "7-6"), (true, 4), "not issued yet");
        assert_eq!(replay(&mut broker, "junk"), (true, 4));
    }

    #[test]
    fn a_broker_without_history_learns_it_from_a_backfill() {
        let mut broker = Broker::new(HistoryLimits::default(), None);
        let fresh = broker.subscribe(0, &["t".to_owned()], None);
        assert!(fresh.backlog.is_empty(), "no id to offer before the history is known");
        broker.backfill(EventId { ms: 7, seq: 1 }, [event(2, &["t"]), event(3, &["t"])]);
        assert!(!broker.has_pending(), "a backfill is history, not news");
        assert_eq!(broker.last_id(), EventId { ms: 7, seq: 3 });
        let resumed = broker.subscribe(1, &["t".to_owned()], Some("7-2"));
        assert_eq!(first_frames(&mut broker, &resumed).len(), 1);
    }

    #[test]
    fn an_event_on_a_small_topic_costs_only_its_subscribers() {
        let (mut broker, mut sinks) = broker_with(10_000, &["crowd"]);
        let key = sinks.insert(Recorder::default());
        broker.subscribe(key, &["lonely".to_owned()], None);
        broker.push(event(1, &["lonely"]));
        // A slice of one delivery (16 visits) finishes the pass: it walks the
        // lonely topic's one subscriber, not the crowd.
        assert!(!broker.fan_out_some(&mut sinks, &mut Vec::new(), 1));
        assert_eq!(data(&sinks[key].0), [vec!["m1"]]);
        assert!(sinks.iter().take(10_000).all(|(_, r)| r.0.is_empty()));
    }

    #[test]
    fn a_slice_is_bounded_in_visits_too() {
        let (mut broker, mut sinks) = broker_with(100, &["t"]);
        broker.push(event(1, &["t"]));
        broker.fan_out(&mut sinks, &mut Vec::new());
        // Everyone has event 1; event 2 is for a newcomer only, so the walk
        // over the others finds nothing to send but still counts.
        let key = sinks.insert(Recorder::default());
        broker.subscribe(key, &["t".to_owned()], None);
        broker.push(event(2, &["t"]));
        let mut calls = 1;
        while broker.fan_out_some(&mut sinks, &mut Vec::new(), 1) {
            calls += 1;
        }
        assert!(calls > 1, "101 visits in one slice of 16");
        assert!(sinks.iter().all(|(_, r)| data(&r.0).concat().last() == Some(&"m2")));
    }

    #[test]
    fn resuming_from_an_id_not_read_yet_gives_no_gap_and_no_repeat() {
        let (mut broker, mut sinks) = broker_with(0, &["t"]);
        broker.push(event(1, &["t"]));
        let key = sinks.insert(Recorder::default());
        let topics = ["t".to_owned()];
        // The client saw 7-2 elsewhere; this broker has only 7-1 so far.
        let newest = Some(EventId { ms: 7, seq: 100 });
        let joined = broker.subscribe_up_to(key, &topics, Some("7-2"), newest);
        assert!(joined.backlog.is_empty(), "no gap, no replay");
        broker.push(event(2, &["t"]));
        broker.push(event(3, &["t"]));
        broker.fan_out(&mut sinks, &mut Vec::new());
        assert_eq!(data(&sinks[key].0).concat(), ["m3"], "7-2 is not sent again");
        assert!(broker.ahead.is_empty(), "forgotten once passed");
        // Beyond `newest` an id is unknown: a gap, as before.
        let far = broker.subscribe_up_to(key, &topics, Some("7-101"), newest).backlog;
        assert!(String::from_utf8_lossy(&far[0]).starts_with("event: gap"));
        // And a lone server (no `newest`) never takes an id ahead.
        let lone = broker.subscribe(key, &topics, Some("7-4")).backlog;
        assert!(String::from_utf8_lossy(&lone[0]).starts_with("event: gap"));
    }

    #[test]
    fn a_second_backfill_restarts_the_order_below_and_ids_from_before_are_unknown() {
        let (mut broker, mut sinks) = broker_with(0, &["t"]);
        let topics = ["t".to_owned()];
        let newest = Some(EventId { ms: 7, seq: 100 });
        for seq in 10..=12 {
            broker.push(event(seq, &["t"]));
        }
        // This client saw 7-15 on a node further along.
        let waiting = sinks.insert(Recorder::default());
        broker.subscribe_up_to(waiting, &topics, Some("7-15"), newest);
        // The cluster's stream restarts below: the new order is 7-1, 7-2.
        broker.backfill(START, []);
        broker.push(event(1, &["t"]));
        broker.push(event(2, &["t"]));
        broker.fan_out(&mut sinks, &mut Vec::new());
        assert_eq!(data(&sinks[waiting].0).concat(), ["m1", "m2"], "not held back to an id from before");
        let resume = |broker: &mut Broker, id: &str| {
            let joined = broker.subscribe_up_to(0, &topics, Some(id), newest);
            first_frames(broker, &joined)
        };
        let from_before = resume(&mut broker, "7-11");
        assert!(from_before[0].starts_with("event: gap"), "an id from before is unknown, not ahead");
        assert_eq!(data(&[from_before[1..].to_vec()]).concat(), ["m1", "m2"]);
        assert_eq!(data(&[resume(&mut broker, "7-1")]).concat(), ["m2"], "exact within the new order");
    }

    /// Random joins (some resuming), leaves, publishes on random topics and
    /// fan-out slices of random sizes, against a model: every subscriber
    /// gets exactly the events on its topics after the point it joined (or
    /// resumed from), once each and in order; one that left got a prefix.
    #[test]
    fn random_operations_deliver_each_event_once_in_order() {
        const TOPICS: [&str; 4] = ["a", "b", "c", "d"];
        let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        for round in 0..40 {
            let mut broker = Broker::new(HistoryLimits::default(), Some(START));
            let mut sinks: Slab<Recorder> = Slab::new();
            // Per live subscriber: (sink key, membership, topics, events it must get).
            let mut live: Vec<(usize, usize, Vec<String>, Vec<u64>)> = Vec::new();
            let mut published: Vec<(u64, Vec<String>)> = Vec::new();
            let wanted = |published: &[(u64, Vec<String>)], topics: &[String], after: u64| -> Vec<u64> {
                let on = |t: &Vec<String>| t.iter().any(|t| topics.contains(t));
                published.iter().filter(|(seq, t)| *seq > after && on(t)).map(|(seq, _)| *seq).collect()
            };
            let ids = |recorder: &Recorder| -> Vec<u64> {
                let id = |f: &String| f.lines().find_map(|l| l.strip_prefix("id: 7-")).and_then(|n| n.parse().ok());
                recorder.0.iter().flatten().filter(|f| f.contains("data: ")).filter_map(id).collect()
            };
            for _ in 0..400 {
                match next(10) {
                    0 | 1 => {
                        let mut topics: Vec<String> =
                            (0..1 + next(2)).map(|_| TOPICS[next(4) as usize].into()).collect();
                        topics.sort();
                        topics.dedup();
                        let resume = (!published.is_empty() && next(2) == 0).then(|| next(published.len() as u64) + 1);
                        let key = sinks.insert(Recorder::default());
                        let last_event_id = resume.map(|seq| format!("7-{seq}"));
                        let joined = broker.subscribe(key, &topics, last_event_id.as_deref());
                        sinks[key].deliver(&joined.backlog);
                        let after = resume.unwrap_or(published.len() as u64);
                        // Events after the resume point that are already out
                        // come in the replay, a piece at a time (below), and
                        // those published meanwhile too; the rest come live.
                        live.push((key, joined.membership, topics, vec![after]));
                    }
                    2 if !live.is_empty() => {
                        let (key, membership, topics, after) = live.swap_remove(next(live.len() as u64) as usize);
                        broker.unsubscribe(membership);
                        let got = ids(&sinks.remove(key));
                        let all = wanted(&published, &topics, after[0]);
                        assert_eq!(got[..], all[..got.len()], "round {round}: a leaver got a non-prefix");
                    }
                    3..=6 => {
                        let seq = published.len() as u64 + 1;
                        let topics: Vec<&str> = (0..1 + next(2)).map(|_| TOPICS[next(4) as usize]).collect();
                        let mut topics: Vec<String> = topics.into_iter().map(String::from).collect();
                        topics.sort();
                        topics.dedup();
                        broker.push(event_on(seq, &topics));
                        published.push((seq, topics));
                    }
                    7 if !live.is_empty() => {
                        let (key, membership, ..) = live[next(live.len() as u64) as usize];
                        match broker.replay_some(membership, 1 + next(100) as usize) {
                            Replay::More(frames) | Replay::Done(frames) => {
                                sinks[key].deliver(&frames);
                            }
                            Replay::Lost => panic!("round {round}: a replay was lost"),
                        }
                    }
                    _ => {
                        broker.fan_out_some(&mut sinks, &mut Vec::new(), 1 + next(4) as usize);
                    }
                }
            }
            for &(key, membership, ..) in &live {
                let joined = Joined { membership, backlog: Vec::new(), replaying: true, resumed_after: None };
                let rest: Vec<Frame> = first_frames(&mut broker, &joined).iter().map(|f| f.as_bytes().into()).collect();
                sinks[key].deliver(&rest);
            }
            broker.fan_out(&mut sinks, &mut Vec::new());
            for (key, _, topics, after) in &live {
                assert_eq!(ids(&sinks[*key]), wanted(&published, topics, after[0]), "round {round}: subscriber {key}");
            }
            assert!(!broker.has_pending());
        }
    }

    fn event_on(seq: u64, topics: &[String]) -> Arc<Published> {
        let publish = Publish { message: format!("m{seq}"), topics: topics.to_vec(), event: None, mercure: None };
        Arc::new(Published::new(EventId { ms: 7, seq }, &publish))
    }

    // ---- Mercure subscriptions ----

    fn update(seq: u64, topics: &[&str], private: bool, id: Option<&str>) -> Arc<Published> {
        let mercure = crate::broadcast::event::MercureFields { private, id: id.map(str::to_owned), retry: None };
        let publish = Publish {
            message: format!("u{seq}"),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            event: None,
            mercure: Some(mercure),
        };
        Arc::new(Published::new(EventId { ms: 7, seq }, &publish))
    }

    /// A prefix pattern that counts how often it is asked.
    #[derive(Debug, Default)]
    struct Prefix(&'static str, std::sync::atomic::AtomicUsize);

    impl TopicPattern for Prefix {
        fn matches(&self, topic: &str) -> bool {
            self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            topic.starts_with(self.0)
        }
    }

    /// May read private events on topics starting with its prefix.
    #[derive(Debug)]
    struct Reader(&'static str);

    impl Audience for Reader {
        fn may_read(&self, topics: &[Box<str>]) -> bool {
            topics.iter().any(|t| t.starts_with(self.0))
        }
    }

    fn exact(topics: &[&str]) -> MercureInterest {
        MercureInterest { topics: topics.iter().map(|t| t.to_string()).collect(), ..MercureInterest::default() }
    }

    #[test]
    fn seeds_and_mercure_subscribers_never_see_each_others_events() {
        let (mut broker, mut sinks) = broker_with(1, &["t"]);
        let key = sinks.insert(Recorder::default());
        broker.subscribe_mercure(key, exact(&["t"]), None, None);
        broker.push(event(1, &["t"]));
        broker.push(update(2, &["t"], false, None));
        broker.fan_out(&mut sinks, &mut Vec::new());
        assert_eq!(data(&sinks[0].0), [vec!["m1"]]);
        assert_eq!(data(&sinks[key].0), [vec!["u2"]]);
    }

    #[test]
    fn one_pattern_held_by_many_is_matched_once_per_event() {
        let pattern = Arc::new(Prefix("/books/", Default::default()));
        let mut broker = Broker::new(HistoryLimits::default(), Some(START));
        let mut sinks = Slab::new();
        for _ in 0..100 {
            let key = sinks.insert(Recorder::default());
            let interest = MercureInterest {
                patterns: vec![("urlpattern /books/:id".into(), pattern.clone() as Arc<dyn TopicPattern>)],
                ..MercureInterest::default()
            };
            broker.subscribe_mercure(key, interest, None, None);
        }
        broker.push(update(1, &["/books/1"], false, None));
        broker.push(update(2, &["/films/1"], false, None));
        broker.fan_out(&mut sinks, &mut Vec::new());
        assert_eq!(pattern.1.load(std::sync::atomic::Ordering::Relaxed), 2, "once per event, not per subscriber");
        assert!(sinks.iter().all(|(_, r)| data(&r.0) == [vec!["u1"]]));
    }

    #[test]
    fn private_updates_reach_only_their_audience_live_and_in_replay() {
        let mut broker = Broker::new(HistoryLimits::default(), Some(START));
        let mut sinks = Slab::new();
        let anonymous = sinks.insert(Recorder::default());
        broker.subscribe_mercure(anonymous, exact(&["/a", "/b"]), None, None);
        let reader = sinks.insert(Recorder::default());
        let mut interest = exact(&["/a", "/b"]);
        interest.audience = Some(Arc::new(Reader("/a")));
        broker.subscribe_mercure(reader, interest.clone(), None, None);
        broker.push(update(1, &["/a"], true, None));
        broker.push(update(2, &["/b"], true, None));
        broker.push(update(3, &["/b", "/a"], true, None));
        broker.push(update(4, &["/b"], false, None));
        broker.fan_out(&mut sinks, &mut Vec::new());
        assert_eq!(data(&sinks[anonymous].0), [vec!["u4"]]);
        assert_eq!(data(&sinks[reader].0), [vec!["u1", "u3", "u4"]], "an alternate topic is enough");
        // The replay is checked against the token just the same.
        let key = sinks.insert(Recorder::default());
        let joined = broker.subscribe_mercure(key, interest, Some(EARLIEST), None);
        let replay = first_frames(&mut broker, &joined);
        assert_eq!(data(&[replay]), [vec!["u1", "u3", "u4"]]);
        assert_eq!(joined.resumed_after.as_deref(), Some(EARLIEST));
    }

    #[test]
    fn mercure_replay_by_urn_by_own_id_and_earliest() {
        let mut broker = Broker::new(HistoryLimits::default(), Some(START));
        broker.push(update(1, &["/t"], false, Some("first")));
        broker.push(update(2, &["/t"], false, Some("dup")));
        broker.push(update(3, &["/t"], false, None));
        broker.push(update(4, &["/t"], false, Some("dup")));
        broker.push(update(5, &["/t"], false, None));
        let mut replay = |id: &str| {
            let joined = broker.subscribe_mercure(0, exact(&["/t"]), Some(id), None);
            let frames = first_frames(&mut broker, &joined);
            (data(&[frames]).concat().join(" "), joined.resumed_after.unwrap())
        };
        let urn = EventId { ms: 7, seq: 3 }.urn();
        assert_eq!(replay(&urn), ("u4 u5".to_owned(), urn.clone()));
        assert_eq!(replay("first"), ("u2 u3 u4 u5".to_owned(), "first".to_owned()));
        assert_eq!(replay("dup"), ("u3 u4 u5".to_owned(), "dup".to_owned()), "a reused id means its earliest");
        assert_eq!(replay(EARLIEST), ("u1 u2 u3 u4 u5".to_owned(), EARLIEST.to_owned()));
        assert_eq!(replay("unknown"), ("u1 u2 u3 u4 u5".to_owned(), EARLIEST.to_owned()));
        let fresh = broker.subscribe_mercure(0, exact(&["/t"]), None, None);
        let cursor = String::from_utf8_lossy(&fresh.backlog[0]).into_owned();
        assert_eq!(cursor, format!("id: {}\n\n", EventId { ms: 7, seq: 5 }.urn()));
    }
}
