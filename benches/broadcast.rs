//! The broadcast loop over in-memory sinks: what one publish (or a burst)
//! costs per subscriber in user space, without the kernel's share.

use std::io::{self, IoSlice, Write};

use std::sync::Arc;

use bare_sse::broadcast::broker::{Broker, Delivery, HistoryLimits, Subscriber};
use bare_sse::broadcast::event::Publish;
use bare_sse::broadcast::event::{EventId, Published};
use bare_sse::http::outbox::{Flushed, Outbox};
use bare_sse::sse::Frame;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use slab::Slab;

/// A subscriber whose "socket" takes everything and keeps nothing: the
/// outbox's fast path, as with a socket that has room.
struct MemorySubscriber {
    outbox: Outbox,
    sink: CountingSink,
}

struct CountingSink(u64);

impl Write for CountingSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let n = bufs.iter().map(|b| b.len()).sum::<usize>();
        self.0 += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Subscriber for MemorySubscriber {
    fn deliver(&mut self, frames: &[Frame]) -> Delivery {
        match self.outbox.send(frames, &mut self.sink) {
            Ok(Flushed::All) => Delivery::Done,
            Ok(Flushed::Partly) => Delivery::Queued,
            Err(_) => Delivery::Failed,
        }
    }
}

fn fan_out(c: &mut Criterion) {
    let mut group = c.benchmark_group("fan_out");
    for subscribers in [1_000usize, 10_000] {
        for burst in [1usize, 10] {
            let mut broker = Broker::new(HistoryLimits::default(), Some(EventId::default()));
            let mut seq = 0;
            let mut sinks = Slab::new();
            for _ in 0..subscribers {
                let key = sinks.insert(MemorySubscriber { outbox: Outbox::new(), sink: CountingSink(0) });
                broker.subscribe(key, &["default".to_owned()], None);
            }
            let publish = Publish::message("the quick brown fox jumps over the lazy dog");
            let mut follow_ups = Vec::new();
            group.throughput(Throughput::Elements((subscribers * burst) as u64));
            let id = BenchmarkId::new(format!("burst{burst}"), subscribers);
            group.bench_with_input(id, &subscribers, |b, _| {
                b.iter(|| {
                    // Numbered and framed once per publish, as the hub does.
                    for _ in 0..burst {
                        seq += 1;
                        broker.push(Arc::new(Published::new(EventId { ms: 1, seq }, &publish)));
                    }
                    broker.fan_out(&mut sinks, &mut follow_ups);
                    follow_ups.clear();
                })
            });
        }
    }
    group.finish();
}

/// An event on a topic with one subscriber among 10,000 idle ones on another
/// topic: a pass walks the topics with unsent events, so this costs one
/// subscriber, not ten thousand.
fn lonely_topic(c: &mut Criterion) {
    let mut broker = Broker::new(HistoryLimits::default(), Some(EventId::default()));
    let mut sinks = Slab::new();
    for _ in 0..10_000 {
        let key = sinks.insert(MemorySubscriber { outbox: Outbox::new(), sink: CountingSink(0) });
        broker.subscribe(key, &["crowd".to_owned()], None);
    }
    let key = sinks.insert(MemorySubscriber { outbox: Outbox::new(), sink: CountingSink(0) });
    broker.subscribe(key, &["lonely".to_owned()], None);
    let publish = Publish { message: "for one".into(), topics: vec!["lonely".into()], event: None, mercure: None };
    let mut follow_ups = Vec::new();
    let mut seq = 0;
    c.bench_function("fan_out/lonely_topic_among_10000", |b| {
        b.iter(|| {
            seq += 1;
            broker.push(Arc::new(Published::new(EventId { ms: 1, seq }, &publish)));
            broker.fan_out(&mut sinks, &mut follow_ups);
            follow_ups.clear();
        })
    });
}

criterion_group!(benches, fan_out, lonely_topic);
criterion_main!(benches);
