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

/// Most topics one Mercure update may name (canonical and alternates).
pub const MAX_MERCURE_TOPICS: usize = 32;

/// Longest Mercure topic, in bytes.
pub const MAX_MERCURE_TOPIC_BYTES: usize = 2048;

/// A valid publish request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Publish {
    /// The text subscribers receive; any string, line breaks included.
    pub message: String,
    /// The topics it goes to (at least one, no duplicates).
    pub topics: Vec<String>,
    /// The event name (`event:` field), if any.
    pub event: Option<String>,
    /// For a Mercure update, what it carries beyond a seeds event; its
    /// topics are then Mercure topics (IRIs), reaching Mercure subscribers
    /// only, and the seeds' subscribers never see it (nor the reverse).
    pub mercure: Option<MercureFields>,
}

/// What a Mercure update carries beyond a seeds event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MercureFields {
    /// Only subscribers whose token allows one of its topics may read it.
    pub private: bool,
    /// The publisher's own id for it (the SSE `id:`); without one, the
    /// update is known by [`EventId::urn`].
    pub id: Option<String>,
    /// The SSE `retry:` it sets, in milliseconds.
    pub retry: Option<u64>,
}

impl Publish {
    /// A message on the default topic, with no event name.
    pub fn message(message: impl Into<String>) -> Publish {
        Publish { message: message.into(), topics: vec![DEFAULT_TOPIC.to_owned()], ..Publish::default() }
    }

    /// Checks topics and event name; on refusal, says what was wrong. A
    /// Mercure update is checked for what framing and routing need (the
    /// protocol's own rules are the Mercure front door's, `crate::mercure`).
    pub fn validate(&self) -> Result<(), String> {
        if let Some(mercure) = &self.mercure {
            return validate_mercure(self, mercure);
        }
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

fn validate_mercure(publish: &Publish, mercure: &MercureFields) -> Result<(), String> {
    if publish.topics.is_empty() || publish.topics.len() > MAX_MERCURE_TOPICS {
        return Err(format!("an update names 1 to {MAX_MERCURE_TOPICS} topics"));
    }
    let bad_topic = |t: &String| t.is_empty() || t.len() > MAX_MERCURE_TOPIC_BYTES || t.contains(char::is_control);
    if publish.topics.iter().any(bad_topic) {
        return Err("invalid topic".to_owned());
    }
    if mercure.id.as_deref().is_some_and(|id| !sse::is_valid_id(id) || id.starts_with('#') || id.is_empty()) {
        return Err("invalid id".to_owned());
    }
    if publish.event.as_deref().is_some_and(|event| !sse::is_valid_name(event)) {
        return Err("invalid type".to_owned());
    }
    Ok(())
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

impl EventId {
    /// The id as a URN of a version 7 UUID (RFC 9562), which is how Mercure
    /// knows an update that has no id of its own: the 48-bit Unix time in
    /// milliseconds, then `seq` where a v7 UUID has random bits (the
    /// "counter" method of RFC 9562 6.2). Ids in the same millisecond keep
    /// their order, and the URN converts back ([`EventId::from_urn`]), so
    /// resuming from it needs no lookup.
    ///
    /// ```
    /// use bare_sse::broadcast::event::EventId;
    /// let id = EventId { ms: 1_764_300_000_000, seq: 42 };
    /// assert_eq!(id.urn(), "urn:uuid:019ac879-8b00-7000-8000-00000000002a");
    /// assert_eq!(EventId::from_urn(&id.urn()), Some(id));
    /// ```
    pub fn urn(&self) -> String {
        // 12 bits after the version, then 62 after the variant: 74 bits of seq.
        let high = (self.seq >> 62) & 0xfff;
        let low = self.seq & ((1 << 62) - 1);
        let ms = self.ms & 0xffff_ffff_ffff;
        format!(
            "urn:uuid:{:08x}-{:04x}-7{:03x}-{:04x}-{:012x}",
            ms >> 16,
            ms & 0xffff,
            high,
            0x8000 | (low >> 48),
            low & 0xffff_ffff_ffff
        )
    }

    /// The id of a URN made by [`EventId::urn`], if `text` is one.
    pub fn from_urn(text: &str) -> Option<EventId> {
        let hex = text.strip_prefix("urn:uuid:")?;
        let groups: Vec<&str> = hex.split('-').collect();
        let [a, b, c, d, e] = groups.as_slice() else { return None };
        let sizes_ok = [(a, 8), (b, 4), (c, 4), (d, 4), (e, 12)]
            .iter()
            .all(|(g, n)| g.len() == *n && g.bytes().all(|x| x.is_ascii_digit() || (b'a'..=b'f').contains(&x)));
        if !sizes_ok || !c.starts_with('7') {
            return None;
        }
        let number = |g: &str| u64::from_str_radix(g, 16).ok();
        let ms = (number(a)? << 16) | number(b)?;
        let high = number(c)? & 0xfff;
        let d = number(d)?;
        if d & 0xc000 != 0x8000 {
            return None;
        }
        let seq_high = high.checked_shl(62).filter(|_| high < 4)?;
        let seq = seq_high | ((d & 0x3fff) << 48) | number(e)?;
        Some(EventId { ms, seq })
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
    /// For a Mercure update: whether it is private, and its own id if the
    /// publisher gave one (replay finds it by that id).
    pub mercure: Option<Box<MercureMark>>,
}

/// What the broker and history need to know of a Mercure update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MercureMark {
    pub private: bool,
    pub custom_id: Option<Box<str>>,
}

impl Published {
    /// Frames `publish` (which must be valid, [`Publish::validate`]) with `id`.
    pub fn new(id: EventId, publish: &Publish) -> Published {
        let topics = publish.topics.iter().map(|t| t.as_str().into()).collect();
        let Some(mercure) = &publish.mercure else {
            let id_text = id.to_string();
            let event =
                sse::Event { id: Some(&id_text), name: publish.event.as_deref(), data: &publish.message, retry: None };
            return Published { id, topics, frame: sse::encode(&event), mercure: None };
        };
        let id_text = mercure.id.clone().unwrap_or_else(|| id.urn());
        let event = sse::Event {
            id: Some(&id_text),
            name: publish.event.as_deref(),
            data: &publish.message,
            retry: mercure.retry,
        };
        let mark = MercureMark { private: mercure.private, custom_id: mercure.id.as_deref().map(Into::into) };
        Published { id, topics, frame: sse::encode(&event), mercure: Some(Box::new(mark)) }
    }

    /// The id subscribers see: the publisher's own for a Mercure update that
    /// has one, else the hub's (as a URN for Mercure).
    pub fn public_id(&self) -> String {
        match &self.mercure {
            None => self.id.to_string(),
            Some(mark) => mark.custom_id.as_deref().map_or_else(|| self.id.urn(), str::to_owned),
        }
    }

    /// Whether only authorized subscribers may read it.
    pub fn is_private(&self) -> bool {
        self.mercure.as_ref().is_some_and(|mark| mark.private)
    }
}

/// What a publish returns to its publisher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The event's id.
    pub id: EventId,
    /// How many subscribers it will be sent to.
    pub subscribers: usize,
    /// For a Mercure update, the id its subscribers see (its own, or the
    /// hub's URN), which is what its publisher is answered.
    pub mercure_id: Option<String>,
}

impl Receipt {
    /// The receipt for `publish`, numbered `id`.
    pub fn new(id: EventId, subscribers: usize, publish: &Publish) -> Receipt {
        let mercure_id = publish.mercure.as_ref().map(|m| m.id.clone().unwrap_or_else(|| id.urn()));
        Receipt { id, subscribers, mercure_id }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urns_are_version_7_uuids_that_convert_back_and_keep_the_order() {
        let ids = [
            EventId { ms: 0, seq: 0 },
            EventId { ms: 1_764_300_000_000, seq: 1 },
            EventId { ms: 1_764_300_000_000, seq: (1 << 62) + 5 },
            EventId { ms: 1_764_300_000_001, seq: u64::MAX },
            EventId { ms: (1 << 48) - 1, seq: 7 },
        ];
        for id in ids {
            let urn = id.urn();
            assert_eq!(urn.len(), "urn:uuid:".len() + 36, "{urn}");
            assert_eq!(urn.as_bytes()["urn:uuid:".len() + 14], b'7', "version 7: {urn}");
            assert!(b"89ab".contains(&urn.as_bytes()["urn:uuid:".len() + 19]), "RFC 9562 variant: {urn}");
            assert_eq!(EventId::from_urn(&urn), Some(id), "{urn}");
        }
        let urns: Vec<String> = ids.iter().map(EventId::urn).collect();
        assert!(urns.windows(2).all(|w| w[0] < w[1]), "the text sorts as the ids do: {urns:?}");
    }

    #[test]
    fn only_urns_of_this_form_convert() {
        for text in [
            "",
            "urn:uuid:",
            "1764300000000-1",
            "urn:uuid:019ac879-8b00-4000-8000-00000000002a", // version 4
            "urn:uuid:019ac879-8b00-7000-c000-00000000002a", // another variant
            "urn:uuid:019AC879-8B00-7000-8000-00000000002A", // upper case is not ours
            "urn:uuid:019ac879-8b00-7000-8000-00000000002",
            "urn:uuid:019ac879-8b00-7000-8000-00000000002a-",
            "urn:uuid:019ac879-8b00-7fff-bfff-ffffffffffff", // seq past 64 bits
            "urn:uuid:+19ac879-8b00-7000-8000-00000000002a",
        ] {
            assert_eq!(EventId::from_urn(text), None, "{text:?}");
        }
    }
}
