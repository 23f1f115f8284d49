//! Request parsing: finding and parsing a head, and a whole publish request
//! through the connection state machine (what the loop does per POST).

use std::time::Instant;

use bare_sse::app::App;
use bare_sse::broadcast::event::{EventId, Receipt};
use bare_sse::http;
use bare_sse::http::conn::Conn;
use criterion::{Criterion, Throughput, black_box, criterion_group, criterion_main};

/// What a browser's EventSource sends.
const BROWSER_GET: &[u8] = b"GET /events?topic=news HTTP/1.1\r\nHost: localhost:3000\r\n\
Connection: keep-alive\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0 Safari/537.36\r\n\
Origin: http://localhost:3000\r\nSec-Fetch-Site: same-origin\r\nSec-Fetch-Mode: cors\r\n\
Referer: http://localhost:3000/\r\nAccept-Encoding: gzip, deflate, br\r\nAccept-Language: en-US,en;q=0.9\r\n\r\n";

/// What `curl -d '{"message":"..."}'` sends.
const CURL_POST: &[u8] = b"POST /send-event HTTP/1.1\r\nHost: 127.0.0.1:3000\r\nUser-Agent: curl/7.88.1\r\n\
Accept: */*\r\nContent-Length: 40\r\nContent-Type: application/x-www-form-urlencoded\r\n\r\n\
{\"message\":\"the quick brown fox jumps\"}";

fn heads(c: &mut Criterion) {
    let mut group = c.benchmark_group("head");
    for (name, request) in [("browser_get", BROWSER_GET), ("curl_post", CURL_POST)] {
        let end = http::find_head_end(request, 0).expect("complete head");
        group.throughput(Throughput::Bytes(end as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                let end = http::find_head_end(black_box(request), 0).unwrap();
                http::parse_head(&request[..end]).unwrap()
            })
        });
    }
    group.finish();
}

fn publish_request(c: &mut Criterion) {
    let app = App::default();
    let limits = app.settings.limits;
    let receipt = Receipt { id: EventId { ms: 1, seq: 1 }, subscribers: 1, mercure_id: None };
    let now = Instant::now();
    let mut group = c.benchmark_group("conn");
    group.throughput(Throughput::Bytes(CURL_POST.len() as u64));
    group.bench_function("publish_request", |b| {
        b.iter(|| {
            let mut conn = Conn::new(&limits, now);
            conn.receive(black_box(CURL_POST), &limits, now);
            let action = conn.poll(&app, &limits, now);
            conn.respond(app.published(&receipt), &limits, now);
            action
        })
    });
    group.finish();
}

criterion_group!(benches, heads, publish_request);
criterion_main!(benches);
