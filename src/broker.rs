//! The broadcast path: who is subscribed, and how one published frame reaches
//! all of them.
//!
//! A publish does not write to sockets itself. It appends its frame (encoded
//! once, shared by reference count) to a pending batch; at the end of the
//! event-loop iteration [`Broker::fan_out`] hands the whole batch to every
//! subscriber at once. With one publish per iteration that is one `write()`
//! per subscriber; with a burst of publishes it is still one (vectored)
//! write per subscriber, which is how bare-sse can do less work per delivery
//! than a loop that writes each event separately.
//!
//! The broker knows subscribers only by key; the server owns the connections
//! and lends them to `fan_out` through the [`Subscriber`] trait, so the
//! broadcast loop can also be run (and benchmarked) over in-memory sinks.

use slab::Slab;

use crate::sse::Frame;

/// Something frames can be delivered to: in the server, a connection's
/// outbox in front of its socket.
pub trait Subscriber {
    /// Sends `frames`, in order, after anything already queued.
    fn deliver(&mut self, frames: &[Frame]) -> Delivery;
}

/// What became of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Written to the kernel, or queued behind bytes already waiting.
    Done,
    /// Some bytes are queued and the subscriber was not waiting to write
    /// before: the server must ask for writable readiness.
    Queued,
    /// The subscriber's socket failed: the server must close it.
    Failed,
}

/// Subscribers and the batch of frames not yet sent to them.
#[derive(Debug, Default)]
pub struct Broker {
    /// Subscriber keys (the server's connection keys), by membership key.
    members: Slab<usize>,
    /// Frames published since the last fan-out, in publish order.
    pending: Vec<Frame>,
}

impl Broker {
    pub fn new() -> Broker {
        Broker::default()
    }

    /// Adds the connection `key`; returns its membership, for
    /// [`Broker::unsubscribe`].
    pub fn subscribe(&mut self, key: usize) -> usize {
        self.members.insert(key)
    }

    /// Removes a membership returned by [`Broker::subscribe`].
    pub fn unsubscribe(&mut self, membership: usize) {
        self.members.try_remove(membership);
    }

    /// How many subscribers there are.
    pub fn subscribers(&self) -> usize {
        self.members.len()
    }

    /// Queues `frame` for every subscriber; it goes out at the next
    /// [`Broker::fan_out`]. Returns how many subscribers it will reach.
    pub fn publish(&mut self, frame: Frame) -> usize {
        self.pending.push(frame);
        self.members.len()
    }

    /// Whether frames are waiting for a fan-out.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Sends the pending frames to every subscriber. Subscribers whose
    /// delivery needs the server's attention are appended to `attention` with
    /// what happened.
    pub fn fan_out<S: Subscriber>(&mut self, subscribers: &mut Slab<S>, attention: &mut Vec<(usize, Delivery)>) {
        if self.pending.is_empty() {
            return;
        }
        for (_, &key) in self.members.iter() {
            let Some(subscriber) = subscribers.get_mut(key) else {
                continue;
            };
            match subscriber.deliver(&self.pending) {
                Delivery::Done => {}
                other => attention.push((key, other)),
            }
        }
        self.pending.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[derive(Default)]
    struct Sink {
        got: Vec<u8>,
        calls: usize,
        fail: bool,
    }

    impl Subscriber for Sink {
        fn deliver(&mut self, frames: &[Frame]) -> Delivery {
            self.calls += 1;
            if self.fail {
                return Delivery::Failed;
            }
            frames.iter().for_each(|f| self.got.extend_from_slice(f));
            Delivery::Done
        }
    }

    #[test]
    fn a_burst_is_one_delivery_per_subscriber() {
        let mut sinks: Slab<Sink> = Slab::new();
        let mut broker = Broker::new();
        for _ in 0..3 {
            let key = sinks.insert(Sink::default());
            broker.subscribe(key);
        }
        assert_eq!(broker.publish(Arc::from(&b"a"[..])), 3);
        broker.publish(Arc::from(&b"b"[..]));
        let mut attention = Vec::new();
        broker.fan_out(&mut sinks, &mut attention);
        assert!(attention.is_empty());
        for (_, sink) in sinks.iter() {
            assert_eq!((sink.got.as_slice(), sink.calls), (&b"ab"[..], 1));
        }
        assert!(!broker.has_pending());
    }

    #[test]
    fn failures_are_reported_and_unsubscribed_members_skipped() {
        let mut sinks: Slab<Sink> = Slab::new();
        let mut broker = Broker::new();
        let ok = sinks.insert(Sink::default());
        let bad = sinks.insert(Sink { fail: true, ..Sink::default() });
        let gone = sinks.insert(Sink::default());
        broker.subscribe(ok);
        broker.subscribe(bad);
        let membership = broker.subscribe(gone);
        broker.unsubscribe(membership);
        broker.publish(Arc::from(&b"x"[..]));
        let mut attention = Vec::new();
        broker.fan_out(&mut sinks, &mut attention);
        assert_eq!(attention, [(bad, Delivery::Failed)]);
        assert_eq!(sinks[gone].calls, 0);
        assert_eq!(broker.subscribers(), 2);
    }
}
