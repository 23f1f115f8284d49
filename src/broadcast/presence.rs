//! Who is subscribed, for Mercure's active subscriptions
//! (`--mercure-subscriptions`): every open Mercure subscription with its
//! hub-made subscriber id and its token's payload, on all loops, so that
//! any loop can list them (the subscription API) and each loop can say
//! what ended when a connection closes (the `active: false` events).
//!
//! **Why a shard per loop.** A loop adds and removes only its own
//! connections, under its own lock, which no other loop takes except to
//! list: subscribing costs one uncontended lock. A listing walks the shards
//! a few hundred entries per lock ([`Presence::walk`]), so it neither holds
//! a loop up nor needs a copy of the whole set: what it has read is written
//! out before it reads more.
//!
//! **Why it is this small.** The bound is 64 bytes per subscriber
//! on top of a subscriber's cost without the feature. An entry is indexed
//! by the loop's connection key (dense, so a `Vec`), and holds a serial and
//! a pointer to its subscription (a thin pointer to more, for the few with
//! several): 24 bytes. A subscription (matcher and payload) is interned
//! per shard, so ten thousand subscribers of one topic with the same
//! payload share one. Measured (`benches/compare ... --workloads idle-19k`):
//! 56-byte entries cost 58 bytes of RSS per subscriber.
//!
//! **Subscriber ids** are made here, never taken from a client (the spec's
//! MUST): `urn:uuid:` of a version 8 UUID holding a random node number
//! (fixed when the server starts, so two nodes of a cluster, or two runs,
//! differ), the loop, and the loop's count of subscribers so far, scrambled
//! by a keyed permutation so that an id tells neither how many came before
//! nor the next one. Distinct connections get distinct ids (the
//! permutation is one to one); one connection's subscriptions share one.

use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};

/// How a subscription was made, which decides how it is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// 1.0 `match` / `match_exact`.
    Exact,
    /// 1.0 `match_urlpattern`.
    UrlPattern,
    /// A 0.x `topic=` selector (`--mercure-compat 0`).
    Legacy,
}

impl Kind {
    /// The canonical matcher type name (a 0.x selector's is not written).
    pub fn match_type(self) -> &'static str {
        match self {
            Kind::Exact | Kind::Legacy => "exact",
            Kind::UrlPattern => "urlpattern",
        }
    }
}

/// A subscription as a loop registers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joining {
    pub kind: Kind,
    pub matcher: String,
    /// The token's payload for it, as JSON text.
    pub payload: Option<String>,
}

/// A registered subscription, as [`Presence::walk`] and [`Presence::leave`]
/// show it.
#[derive(Debug, Clone, Copy)]
pub struct Seen<'a> {
    pub kind: Kind,
    pub matcher: &'a str,
    pub payload: Option<&'a str>,
    pub subscriber: &'a SubscriberId,
}

/// A subscriber id: the UUID's text, made once per subscriber.
pub type SubscriberId = str;

/// One subscription (matcher and payload), interned: every subscriber of
/// one matcher with one payload (or none) shares it.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Held {
    kind: Kind,
    matcher: Box<str>,
    payload: Option<Box<str>>,
}

/// One subscriber's subscriptions: 24 bytes.
#[derive(Debug)]
struct Entry {
    /// Its number on its loop (the id is made from it when shown).
    serial: u64,
    first: Arc<Held>,
    /// A thin pointer: almost every subscriber has one subscription.
    #[allow(clippy::box_collection)]
    more: Option<Box<Vec<Arc<Held>>>>,
}

impl Entry {
    fn held(&self) -> impl Iterator<Item = &Held> {
        std::iter::once(&*self.first).chain(self.more.iter().flat_map(|more| more.iter().map(|held| &**held)))
    }
}

#[derive(Debug, Default)]
struct Shard {
    /// By connection key.
    entries: Vec<Option<Entry>>,
    /// Subscriptions in use, shared by the entries.
    interned: HashSet<Arc<Held>>,
    /// Subscribers registered so far (the next serial).
    serials: u64,
    /// Subscribers registered now.
    present: usize,
}

impl Shard {
    fn intern(&mut self, held: Held) -> Arc<Held> {
        if let Some(interned) = self.interned.get(&held) {
            return interned.clone();
        }
        let held = Arc::new(held);
        self.interned.insert(held.clone());
        held
    }

    /// Forgets `held` if this was its last user.
    fn release(&mut self, held: Arc<Held>) {
        // The set holds one reference and `held` another.
        if Arc::strong_count(&held) == 2 {
            self.interned.remove(&*held);
        }
    }
}

/// Where a walk over every subscription is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cursor {
    shard: usize,
    entry: usize,
}

/// The registry: one shard per loop.
#[derive(Debug)]
pub struct Presence {
    /// 48 random bits, fixed for the server's life.
    node: u64,
    /// The key of the serials' permutation (see [`scramble`]).
    key: u64,
    shards: Box<[Mutex<Shard>]>,
}

impl Presence {
    /// A registry for `loops` loops, with a new random node number.
    pub fn new(loops: usize) -> Presence {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher
            .write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
        hasher.write_u32(std::process::id());
        let node = hasher.finish() & 0xFFFF_FFFF_FFFF;
        hasher.write_u64(node);
        let key = hasher.finish();
        Presence { node, key, shards: (0..loops).map(|_| Mutex::new(Shard::default())).collect() }
    }

    /// Registers connection `key` of loop `index` with its subscriptions;
    /// returns its subscriber id. A key registered already is replaced.
    pub fn join(&self, index: usize, key: usize, subscriptions: &[Joining]) -> String {
        let mut shard = self.shard(index);
        let serial = shard.serials;
        shard.serials += 1;
        let mut held = Vec::with_capacity(subscriptions.len());
        for joining in subscriptions {
            let matcher = joining.matcher.as_str().into();
            let payload = joining.payload.as_deref().map(Into::into);
            held.push(shard.intern(Held { kind: joining.kind, matcher, payload }));
        }
        let mut held = held.into_iter();
        let Some(first) = held.next() else {
            return self.id(index, serial);
        };
        let rest: Vec<Arc<Held>> = held.collect();
        let entry = Entry { serial, first, more: (!rest.is_empty()).then(|| Box::new(rest)) };
        if shard.entries.len() <= key {
            shard.entries.resize_with(key + 1, || None);
        }
        if let Some(old) = shard.entries.get_mut(key).and_then(|slot| slot.replace(entry)) {
            shard.drop_entry(old);
        } else {
            shard.present += 1;
        }
        self.id(index, serial)
    }

    /// Unregisters connection `key` of loop `index`, and calls `ended` with
    /// each of its subscriptions (for the `active: false` events).
    pub fn leave(&self, index: usize, key: usize, mut ended: impl FnMut(Seen<'_>)) {
        let mut shard = self.shard(index);
        let Some(entry) = shard.entries.get_mut(key).and_then(Option::take) else { return };
        shard.present -= 1;
        let id = self.id(index, entry.serial);
        for held in entry.held() {
            ended(Seen { kind: held.kind, matcher: &held.matcher, payload: held.payload.as_deref(), subscriber: &id });
        }
        shard.drop_entry(entry);
        // A burst of connections leaves a long tail of empty slots.
        while shard.entries.last().is_some_and(Option::is_none) {
            shard.entries.pop();
        }
        let (len, capacity) = (shard.entries.len(), shard.entries.capacity());
        if capacity > 64 && len < capacity / 4 {
            shard.entries.shrink_to(len * 2);
        }
    }

    /// This server's random node number (48 bits).
    pub fn node(&self) -> u64 {
        self.node
    }

    /// Subscribers registered now, on all loops.
    pub fn subscribers(&self) -> usize {
        self.shards.iter().map(|shard| lock(shard).present).sum()
    }

    /// Shows `f` the subscriptions of at most `most` subscribers, from
    /// `cursor` on, and moves the cursor past them; returns whether the
    /// walk has reached the end. A subscriber that comes or goes during a
    /// walk may be shown or not; one present throughout is shown once.
    pub fn walk(&self, cursor: &mut Cursor, most: usize, mut f: impl FnMut(Seen<'_>)) -> bool {
        let mut left = most;
        while let Some(shard) = self.shards.get(cursor.shard) {
            let shard = lock(shard);
            while let Some(slot) = shard.entries.get(cursor.entry) {
                if left == 0 {
                    return false;
                }
                cursor.entry += 1;
                let Some(entry) = slot else { continue };
                left -= 1;
                let id = self.id(cursor.shard, entry.serial);
                for held in entry.held() {
                    f(Seen {
                        kind: held.kind,
                        matcher: &held.matcher,
                        payload: held.payload.as_deref(),
                        subscriber: &id,
                    });
                }
            }
            *cursor = Cursor { shard: cursor.shard + 1, entry: 0 };
        }
        true
    }

    /// The id of subscriber `serial` of loop `index`: a version 8 UUID of
    /// the node number (48 bits), the loop (12 bits) and the scrambled
    /// serial (62).
    fn id(&self, index: usize, serial: u64) -> String {
        let high = (self.node << 16) | 0x8000 | (index as u64 & 0xFFF);
        let low = scramble(serial, self.key) | 0x8000_0000_0000_0000;
        format!(
            "urn:uuid:{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            high >> 32,
            (high >> 16) & 0xFFFF,
            high & 0xFFFF,
            low >> 48,
            low & 0xFFFF_FFFF_FFFF
        )
    }

    fn shard(&self, index: usize) -> MutexGuard<'_, Shard> {
        // A server has one shard per loop; an index beyond is a bug, and
        // the last shard still keeps the entry rather than losing it.
        let at = index.min(self.shards.len().saturating_sub(1));
        lock(&self.shards[at])
    }
}

impl Shard {
    fn drop_entry(&mut self, entry: Entry) {
        let Entry { first, more, .. } = entry;
        for held in std::iter::once(first).chain(more.into_iter().flat_map(|more| *more)) {
            self.release(held);
        }
    }
}

/// A keyed one-to-one map of 62-bit numbers onto themselves: each step
/// is invertible modulo 2^62 (xor with a constant, multiplication by an
/// odd number, xor with a right shift of itself), so distinct serials stay
/// distinct, while consecutive ones come out unrelated to an observer
/// without the key. Not cryptography: it hides a count, not a secret.
fn scramble(serial: u64, key: u64) -> u64 {
    const MASK: u64 = (1 << 62) - 1;
    let mut x = (serial ^ key) & MASK;
    x = x.wrapping_mul(0x9E37_79B9_7F4A_7C15) & MASK;
    x ^= x >> 29;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9) & MASK;
    x ^= x >> 32;
    x
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A loop that panicked holding the lock left the registry as it was;
    // the rest still read it.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joining(kind: Kind, matcher: &str, payload: Option<&str>) -> Joining {
        Joining { kind, matcher: matcher.to_owned(), payload: payload.map(str::to_owned) }
    }

    fn all(presence: &Presence, most: usize) -> Vec<(String, String)> {
        let mut cursor = Cursor::default();
        let mut seen = Vec::new();
        while !presence.walk(&mut cursor, most, |s| seen.push((s.matcher.to_owned(), s.subscriber.to_owned()))) {}
        seen
    }

    #[test]
    fn ids_are_uuids_distinct_per_connection() {
        let presence = Presence::new(2);
        let a = presence.join(0, 0, &[joining(Kind::Exact, "t", None)]);
        let b = presence.join(0, 1, &[joining(Kind::Exact, "t", None)]);
        let c = presence.join(1, 0, &[joining(Kind::Exact, "t", None)]);
        assert!(a != b && b != c && a != c);
        let uuid = a.strip_prefix("urn:uuid:").unwrap();
        assert_eq!(uuid.len(), 36);
        assert_eq!(&uuid[14..15], "8", "version 8");
        assert!(matches!(&uuid[19..20], "8" | "9" | "a" | "b"), "RFC 9562 variant");
        assert_ne!(Presence::new(1).join(0, 0, &[joining(Kind::Exact, "t", None)]), a, "another node");
    }

    #[test]
    fn a_walk_in_small_steps_sees_everyone_once() {
        let presence = Presence::new(3);
        for key in 0..50 {
            let subscriptions = [joining(Kind::Exact, "a", None), joining(Kind::UrlPattern, "/b/:x", Some("{}"))];
            presence.join(key % 3, key, &subscriptions[..1 + key % 2]);
        }
        presence.leave(1, 4, |_| {});
        let seen = all(&presence, 7);
        assert_eq!(seen.len(), 49 + 25, "49 subscribers, the 25 odd keys with two subscriptions");
        assert_eq!(presence.subscribers(), 49);
        let mut ids: Vec<_> = seen.iter().filter(|(m, _)| m == "a").map(|(_, id)| id.clone()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 49);
    }

    #[test]
    fn leaving_shows_what_ended_and_frees_the_strings() {
        let presence = Presence::new(1);
        let id =
            presence.join(0, 3, &[joining(Kind::Exact, "a", Some("{\"x\":1}")), joining(Kind::Legacy, "b/{c}", None)]);
        presence.join(0, 5, &[joining(Kind::Exact, "a", None)]);
        let mut ended = Vec::new();
        presence.leave(0, 3, |s| {
            ended.push((s.kind, s.matcher.to_owned(), s.payload.map(str::to_owned), s.subscriber.to_owned()))
        });
        assert_eq!(
            ended,
            [
                (Kind::Exact, "a".to_owned(), Some("{\"x\":1}".to_owned()), id.clone()),
                (Kind::Legacy, "b/{c}".to_owned(), None, id)
            ]
        );
        presence.leave(0, 3, |_| panic!("gone already"));
        let shard = presence.shard(0);
        assert_eq!(shard.interned.len(), 1, "only `a` without a payload is still in use");
        assert_eq!(shard.present, 1);
    }

    #[test]
    fn scrambled_serials_stay_distinct_and_look_unrelated() {
        let key = 0x1234_5678_9ABC_DEF0;
        let mut seen: Vec<u64> = (0..100_000).map(|serial| scramble(serial, key)).collect();
        assert!(seen.iter().all(|&x| x < 1 << 62));
        assert!(seen.windows(2).filter(|w| w[0].abs_diff(w[1]) < 1 << 40).count() < 10, "consecutive look apart");
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 100_000, "one to one");
    }

    #[test]
    fn an_entry_is_small() {
        assert_eq!(std::mem::size_of::<Option<Entry>>(), 24);
    }
}
