//! What an event is, before and after it is published: the [`Publish`] a
//! publisher asks for (message, topics, event name), its [`EventId`] in the
//! one order every loop and node shares, and the [`Published`] event, framed
//! once and shared by every subscriber, loop and history that holds it.
//!
//! These types belong to the broadcast core, not to an API: the seeds' JSON
//! body ([`crate::app::seeds`]), an embedding program's
//! [`Publisher`](crate::broadcast::publisher::Publisher) and the cluster bus
//! all produce a [`Publish`], and the broker, hub and bus only ever see that.

use crate::sse::{self, Frame};

/// The topic of a plain `GET /events` and of a publish that names none, so
/// the seeds' API works unchanged.
pub const DEFAULT_TOPIC: &str = "default";

/// The event name the server uses to tell a resuming client that events were
/// lost (see [`crate::broadcast::broker`]); publishers may not use it.
pub const GAP_EVENT: &str = "gap";

/// Longest topic name, in bytes.
pub const MAX_TOPIC_BYTES: usize = 64;

/// Most topics one subscription or one publish may name.
pub const MAX_TOPICS: usize = 16;

/// Whether `name` is a valid topic: 1 to [`MAX_TOPIC_BYTES`] bytes of ASCII
/// letters, digits and `-_.:~` (safe in a URL query without escaping).
pub fn is_valid_topic(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TOPIC_BYTES
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:~".contains(&b))
}

/// A valid publish request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// The text subscribers receive; any string, line breaks included.
    pub message: String,
    /// The topics it goes to (at least one, no duplicates).
    pub topics: Vec<String>,
    /// The event name (`event:` field), if any.
    pub event: Option<String>,
}

impl Publish {
    /// A message on the default topic, with no event name.
    pub fn message(message: impl Into<String>) -> Publish {
        Publish { message: message.into(), topics: vec![DEFAULT_TOPIC.to_owned()], event: None }
    }

    /// Checks topics and event name; on refusal, says what was wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.topics.is_empty() || self.topics.len() > MAX_TOPICS {
            return Err(format!("a publish names 1 to {MAX_TOPICS} topics"));
        }
        if let Some(bad) = self.topics.iter().find(|t| !is_valid_topic(t)) {
            return Err(format!("invalid topic {bad:?}: use 1-{MAX_TOPIC_BYTES} of A-Z a-z 0-9 - _ . : ~"));
        }
        if self.event.as_deref() == Some(GAP_EVENT) {
            return Err(format!("the event name {GAP_EVENT:?} is reserved for the server's replay gaps"));
        }
        if self.event.as_deref().is_some_and(|event| !crate::sse::is_valid_name(event)) {
            return Err(format!("invalid event name: 1-{} bytes without CR or LF", crate::sse::MAX_FIELD_BYTES));
        }
        Ok(())
    }
}

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
    /// use bare_sse::broadcast::event::EventId;
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
