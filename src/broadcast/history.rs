//! One loop's history of recent events, and replay from it.
//!
//! The last events (bounded in count and in bytes, [`HistoryLimits`]) stay
//! in a ring: each entry is the event as published, frame already encoded,
//! behind an `Arc`, so retaining it costs one copy however many subscribers
//! (and loops) replay it. Ids in the ring are increasing, so the place to
//! resume from is found by binary search.
//!
//! The history also keeps a *floor*: every event after the floor is in the
//! ring. It starts at the first id that could ever be issued (so nothing
//! before this process is claimed) and rises as old events are evicted. A
//! cluster node starts with no floor at all, until the bus has read the
//! stream's history from Redis ([`History::backfill`]).
//!
//! **Replay.** A subscriber that sends `Last-Event-ID` first gets every
//! retained event after that id that it wants, in order. If the id is below
//! the floor (it fell out of the history, or comes from an earlier process),
//! above the last event (from another process), or not an id at all, the
//! replay starts with a `gap` event saying so, then everything retained
//! that it wants.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::broadcast::event::{EventId, GAP_EVENT, Published};
use crate::sse::{self, Frame};

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

/// The retained events and the floor below them.
#[derive(Debug)]
pub struct History {
    /// Every event after this id is in `events`; `None` while the history
    /// is not known yet (a cluster node that has not reached Redis).
    floor: Option<EventId>,
    /// The last event pushed, or the floor.
    last: EventId,
    /// The last event before the order last restarted (see
    /// [`History::backfill`]), 0-0 if it never did.
    restarted_below: EventId,
    events: VecDeque<Arc<Published>>,
    bytes: usize,
    limits: HistoryLimits,
}

impl History {
    /// A history starting at `floor` (`None`: not known yet).
    pub fn new(limits: HistoryLimits, floor: Option<EventId>) -> History {
        let last = floor.unwrap_or_default();
        History { floor, last, restarted_below: EventId::default(), events: VecDeque::new(), bytes: 0, limits }
    }

    /// Whether the floor is known.
    pub fn is_known(&self) -> bool {
        self.floor.is_some()
    }

    /// The id of the last event pushed (the floor before any).
    pub fn last_id(&self) -> EventId {
        self.last
    }

    /// Keeps `event`, the next in the one order, evicting the oldest beyond
    /// the bounds (which raises the floor).
    pub fn push(&mut self, event: Arc<Published>) {
        debug_assert!(event.id > self.last || self.floor.is_none(), "events arrive in id order");
        self.last = self.last.max(event.id);
        if self.limits.events == 0 {
            self.floor = Some(event.id);
            return;
        }
        self.bytes += event.frame.len();
        self.events.push_back(event);
        while self.events.len() > self.limits.events || self.bytes > self.limits.bytes {
            let Some(old) = self.events.pop_front() else { break };
            self.bytes -= old.frame.len();
            self.floor = Some(old.id);
        }
    }

    /// Sets a history created with no floor: `events` (oldest first) are
    /// what is retained, and every event after `floor` is among them.
    ///
    /// Once the history is known, restarts it: the cluster's stream
    /// restarted below the last event (see [`crate::broadcast::bus`]), so the
    /// one order starts over with lower ids. What was retained goes, and an
    /// id from before the restart is never taken for one not read yet
    /// ([`History::is_ahead`]): it may lie above the new events.
    pub fn backfill(&mut self, floor: EventId, events: impl IntoIterator<Item = Arc<Published>>) {
        if self.floor.is_some() {
            self.restarted_below = self.restarted_below.max(self.last);
            self.events.clear();
            self.bytes = 0;
            self.last = floor;
        }
        self.floor = Some(floor);
        self.last = self.last.max(floor);
        for event in events {
            if event.id > self.last {
                self.push(event);
            }
        }
    }

    /// Whether `id` is after the last event here but not after `newest`: an
    /// event this loop or node has not read yet (a cluster node behind the
    /// one the client came from).
    pub fn is_ahead(&self, id: EventId, newest: Option<EventId>) -> bool {
        self.floor.is_some() && id > self.last.max(self.restarted_below) && newest.is_some_and(|newest| id <= newest)
    }

    /// Frames for a Mercure subscriber that resumes after `last_event_id`:
    /// a hub URN ([`EventId::urn`]) in the history's range, or a publisher's
    /// own id (the earliest event that bears it, if several do), then every
    /// retained event after it that `wanted` keeps. An id the history does
    /// not know, or `earliest`, replays every retained event that `wanted`
    /// keeps. Also says whether the id was found.
    pub fn replay_mercure(&self, last_event_id: &str, wanted: impl Fn(&Published) -> bool) -> (Vec<Frame>, bool) {
        let in_range = |id: &EventId| self.floor.is_some_and(|floor| floor <= *id) && *id <= self.last;
        let after = EventId::from_urn(last_event_id).filter(in_range).or_else(|| {
            let bears = |e: &&Arc<Published>| {
                e.mercure.as_ref().is_some_and(|mark| mark.custom_id.as_deref() == Some(last_event_id))
            };
            self.events.iter().find(bears).map(|e| e.id)
        });
        let start = after.map_or(0, |after| self.events.partition_point(|e| e.id <= after));
        let frames = self.events.range(start..).filter(|e| wanted(e)).map(|e| e.frame.clone()).collect();
        (frames, after.is_some())
    }

    /// Frames for a subscriber that resumes after `last_event_id`: every
    /// retained event after it that `wanted` keeps, preceded by a `gap`
    /// event when the history cannot say what came after that id.
    pub fn replay(&self, last_event_id: &str, wanted: impl Fn(&Published) -> bool) -> Vec<Frame> {
        let resume_after =
            EventId::parse(last_event_id).filter(|id| self.floor.is_some_and(|floor| floor <= *id) && *id <= self.last);
        let mut frames = Vec::new();
        let start = match resume_after {
            Some(after) => self.events.partition_point(|e| e.id <= after),
            None => {
                let replay_from = self.events.front().map(|e| e.id.to_string());
                let body = serde_json::json!({ "lastEventId": last_event_id, "replayFrom": replay_from });
                let gap =
                    sse::encode(&sse::Event { name: Some(GAP_EVENT), data: &body.to_string(), ..Default::default() });
                frames.push(gap);
                0
            }
        };
        frames.extend(self.events.range(start..).filter(|e| wanted(e)).map(|e| e.frame.clone()));
        frames
    }
}
