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
//!
//! A replay is not copied out all at once: it is a cursor, the id of the
//! last event looked at ([`History::resume`] says where it starts), and
//! [`History::frames_after`] hands out the next few frames as the reader's
//! socket drains. So a thousand clients asking for the whole history pin no
//! more than the history itself, plus what each has in flight. A cursor the
//! ring has moved past (the reader was too slow for the history) is lost.

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

    /// The id of the last event as a Mercure cursor, `None` if no event is
    /// known (then the cursor is `earliest`).
    pub fn cursor(&self) -> Option<EventId> {
        let nothing_yet = self.events.is_empty() && self.floor == Some(self.last);
        (self.is_known() && !nothing_yet).then_some(self.last)
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

    /// Where a Mercure subscriber that resumes after `last_event_id` starts:
    /// after a hub URN ([`EventId::urn`]) in the history's range, or after a
    /// publisher's own id (the earliest event that bears it, if several
    /// do). An id the history does not know, or `earliest`, starts before
    /// every retained event. Also says whether the id was found.
    pub fn resume_mercure(&self, last_event_id: &str) -> (EventId, bool) {
        let in_range = |id: &EventId| self.floor.is_some_and(|floor| floor <= *id) && *id <= self.last;
        let after = EventId::from_urn(last_event_id).filter(in_range).or_else(|| {
            let bears = |e: &&Arc<Published>| {
                e.mercure.as_ref().is_some_and(|mark| mark.custom_id.as_deref() == Some(last_event_id))
            };
            self.events.iter().find(bears).map(|e| e.id)
        });
        (after.unwrap_or(self.start()), after.is_some())
    }

    /// Where a subscriber that resumes after `last_event_id` starts, and
    /// the `gap` event to send first when the history cannot say what came
    /// after that id (the replay then starts before every retained event).
    pub fn resume(&self, last_event_id: &str) -> (Option<Frame>, EventId) {
        let resume_after =
            EventId::parse(last_event_id).filter(|id| self.floor.is_some_and(|floor| floor <= *id) && *id <= self.last);
        if let Some(after) = resume_after {
            return (None, after);
        }
        let replay_from = self.events.front().map(|e| e.id.to_string());
        let body = serde_json::json!({ "lastEventId": last_event_id, "replayFrom": replay_from });
        let gap = sse::encode(&sse::Event { name: Some(GAP_EVENT), data: &body.to_string(), ..Default::default() });
        (Some(gap), self.start())
    }

    /// A cursor before every retained event.
    fn start(&self) -> EventId {
        self.floor.unwrap_or_default()
    }

    /// The next frames of a replay whose cursor is `after`: those of the
    /// retained events after it that `wanted` keeps, in order, until they
    /// make `max_bytes` (at least one frame if any is left) or
    /// [`MAX_SCAN`] events have been looked at; with the cursor to go on
    /// from (done once it is [`History::last_id`]). `None` once the ring
    /// has evicted events after `after`: the replay cannot go on.
    pub fn frames_after(
        &self,
        after: EventId,
        max_bytes: usize,
        wanted: impl Fn(&Published) -> bool,
    ) -> Option<(Vec<Frame>, EventId)> {
        if self.floor.is_some_and(|floor| after < floor) {
            return None;
        }
        let start = self.events.partition_point(|e| e.id <= after);
        let (mut frames, mut bytes, mut cursor) = (Vec::new(), 0, after);
        for event in self.events.range(start..).take(MAX_SCAN) {
            if bytes >= max_bytes {
                break;
            }
            cursor = event.id;
            if wanted(event) {
                bytes += event.frame.len();
                frames.push(event.frame.clone());
            }
        }
        // Everything retained was looked at: the cursor is at the end.
        if start + MAX_SCAN >= self.events.len() && bytes < max_bytes {
            cursor = cursor.max(self.last);
        }
        Some((frames, cursor))
    }
}

/// Most events [`History::frames_after`] looks at per call, so that a
/// replay of a rare topic from a long history is done in bounded steps.
pub const MAX_SCAN: usize = 4096;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broadcast::event::Publish;

    fn event(seq: u64, topic: &str, bytes: usize) -> Arc<Published> {
        let publish = Publish { message: "x".repeat(bytes), topics: vec![topic.into()], event: None, mercure: None };
        Arc::new(Published::new(EventId { ms: 7, seq }, &publish))
    }

    fn seqs(frames: &[Frame]) -> Vec<u64> {
        let id = |f: &Frame| String::from_utf8_lossy(f).lines().find_map(|l| l.strip_prefix("id: 7-")?.parse().ok());
        frames.iter().filter_map(id).collect()
    }

    #[test]
    fn a_replay_is_handed_out_in_pieces_as_a_cursor() {
        let mut history = History::new(HistoryLimits::default(), Some(EventId { ms: 7, seq: 0 }));
        for seq in 1..=10 {
            history.push(event(seq, if seq % 2 == 0 { "even" } else { "odd" }, 100));
        }
        let even = |e: &Published| &*e.topics[0] == "even";
        let (gap, mut cursor) = history.resume("7-1");
        assert!(gap.is_none());
        let mut got = Vec::new();
        while cursor < history.last_id() {
            // About one frame's worth at a time.
            let (frames, next) = history.frames_after(cursor, 50, even).unwrap();
            assert!(frames.len() <= 1 && next > cursor, "{frames:?} {next}");
            got.extend(seqs(&frames));
            cursor = next;
        }
        assert_eq!(got, [2, 4, 6, 8, 10]);
        // An unknown id: a gap first, then everything retained.
        let (gap, cursor) = history.resume("junk");
        assert!(String::from_utf8_lossy(&gap.unwrap()).starts_with("event: gap"));
        let (frames, next) = history.frames_after(cursor, usize::MAX, |_| true).unwrap();
        assert_eq!((seqs(&frames), next), ((1..=10).collect(), history.last_id()));
    }

    #[test]
    fn a_cursor_the_ring_has_moved_past_is_lost() {
        let limits = HistoryLimits { events: 3, bytes: 1 << 20 };
        let mut history = History::new(limits, Some(EventId { ms: 7, seq: 0 }));
        for seq in 1..=3 {
            history.push(event(seq, "t", 10));
        }
        let (_, cursor) = history.resume("7-1");
        let (frames, cursor) = history.frames_after(cursor, 1, |_| true).unwrap();
        assert_eq!(seqs(&frames), [2]);
        history.push(event(4, "t", 10));
        history.push(event(5, "t", 10));
        assert!(history.frames_after(cursor, 1, |_| true).is_some(), "3, 4 and 5 are still there");
        history.push(event(6, "t", 10));
        assert!(history.frames_after(cursor, 1, |_| true).is_none(), "3 was evicted unsent");
    }

    #[test]
    fn a_rare_topic_is_scanned_in_bounded_steps() {
        let limits = HistoryLimits { events: 3 * MAX_SCAN, bytes: 1 << 30 };
        let mut history = History::new(limits, Some(EventId { ms: 7, seq: 0 }));
        for seq in 1..=3 * MAX_SCAN as u64 {
            history.push(event(seq, if seq == 2 * MAX_SCAN as u64 { "rare" } else { "busy" }, 1));
        }
        let rare = |e: &Published| &*e.topics[0] == "rare";
        let (_, mut cursor) = history.resume("7-0");
        let mut calls = Vec::new();
        while cursor < history.last_id() {
            let (frames, next) = history.frames_after(cursor, usize::MAX, rare).unwrap();
            calls.push(seqs(&frames));
            cursor = next;
        }
        assert_eq!(calls, [vec![], vec![2 * MAX_SCAN as u64], vec![]]);
    }
}
