//! Event framing: one publish encoded once into the bytes every subscriber
//! gets.

use bare_sse::sse::{Event, encode};
use criterion::{Criterion, Throughput, black_box, criterion_group, criterion_main};

fn framing(c: &mut Criterion) {
    let short = "the quick brown fox jumps over the lazy dog";
    let lines = "line one\nline two\r\nline three\rline four\n".repeat(4);
    let large = "x".repeat(4096);
    let mut group = c.benchmark_group("frame");
    for (name, data) in [("short", short), ("multi_line", lines.as_str()), ("4k", large.as_str())] {
        group.throughput(Throughput::Bytes(data.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| encode(&Event { id: Some("1764300000000-42"), name: None, data: black_box(data), retry: None }))
        });
    }
    group.finish();
}

criterion_group!(benches, framing);
criterion_main!(benches);
