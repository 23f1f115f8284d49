//! Resource limits under hostile clients, over real sockets: subscribers
//! cannot take the slots publishers and health checks need, and a subscriber
//! turned away is told when to come back.

mod support;

use std::collections::BTreeSet;

use support::{Client, TestServer, WAIT, get, wait_for_streams, wait_until};

/// The `retry:` value of a stream that the server ended, with its head
/// checked: a 200 event stream, as EventSource needs to reconnect.
#[track_caller]
fn turned_away_retry(client: &mut Client) -> u32 {
    let response = client.request(get("/events"));
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.header("content-type"), Some("text/event-stream"));
    let body = String::from_utf8(client.read_to_end()).unwrap();
    let retry = body.lines().find_map(|line| line.strip_prefix("retry: "));
    retry.and_then(|ms| ms.parse().ok()).unwrap_or_else(|| panic!("no retry: in {body:?}"))
}

#[test]
fn subscribers_cannot_lock_out_publishers_and_health_checks() {
    let server = TestServer::with(|config| {
        config.max_connections = 50;
        config.heartbeat_secs = 0;
    });
    // 47 streams: the default stream cap leaves 3 of 50 slots to others.
    let streams: Vec<_> = (0..47).map(|_| server.subscribe()).collect();
    wait_for_streams(server.addr, 47);
    // Subscribers over the cap get a 200 stream with a jittered `retry:`
    // (one to two --retry-ms), then its end: an EventSource comes back.
    let retries: Vec<u32> = (0..12).map(|_| turned_away_retry(&mut server.connect())).collect();
    let retry_ms = bare_sse::app::Settings::default().retry_ms;
    assert!(retries.iter().all(|ms| (retry_ms..2 * retry_ms).contains(ms)), "{retries:?}");
    assert!(retries.iter().collect::<BTreeSet<_>>().len() > 1, "jittered: {retries:?}");
    // A turned-away connection holds its slot until the server reads its
    // close: wait for the server to count only the streams (and the asker).
    wait_until("the server holds only the streams", WAIT, || {
        let response = server.connect().request(get("/metrics"));
        response.status == 200 && response.text().contains("\nbare_sse_connections 48\n")
    });
    // Health checks and publishers are served with the streams at their cap.
    assert_eq!(server.connect().request(get("/healthz")).status, 200);
    assert_eq!(server.publish("still publishing"), 47);
    assert_eq!(server.metric("bare_sse_streams_turned_away_total"), 12);
    drop(streams);
}
