//! A cluster: several nodes (`--redis`) on one real redis-server, started by
//! the tests on a free loopback port. Publish on any node, subscribe on any
//! node, resume on any node; and what happens while Redis is gone.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use bare_sse::broadcast::bus::ANSWER_WITHIN;
use bare_sse::broadcast::event::EventId;
use support::redis::RedisServer;
use support::{Client, EventStream, TestServer, WAIT, get, post, wait_for};

/// A node without heartbeats, so that a read of an event that never comes
/// fails after the client's read timeout rather than skipping heartbeats
/// for ever.
fn node(redis: &RedisServer) -> TestServer {
    node_beating(redis, 0)
}

/// A node that sends a heartbeat every `heartbeat_secs` (0: none).
fn node_beating(redis: &RedisServer, heartbeat_secs: u64) -> TestServer {
    let url = redis.url();
    TestServer::with(move |config| {
        config.redis = Some(url);
        config.heartbeat_secs = heartbeat_secs;
    })
}

/// Opens a stream on `node` once the node knows its history (until then a
/// resuming subscriber would get a `gap`: see the README).
#[track_caller]
fn subscribe(node: &TestServer, path: &str) -> EventStream {
    Client::connect(node.addr).subscribe(path)
}

#[track_caller]
fn publish(node: &TestServer, message: &str) -> String {
    let response = node.connect().publish(message);
    assert_eq!(response.status, 200, "{response:?}");
    response.json()["id"].as_str().expect("an id").to_owned()
}

#[track_caller]
fn health(node: &TestServer) -> String {
    node.connect().request(get("/healthz")).text()
}

/// [`support::wait_until`] with the common bound.
#[track_caller]
fn wait_until(what: &str, done: impl FnMut() -> bool) {
    support::wait_until(what, WAIT, done)
}

fn events(stream: &mut EventStream, n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|_| {
            let event = stream.next_event();
            (event.id.expect("an id"), event.data)
        })
        .collect()
}

#[test]
fn publish_on_a_reaches_subscribers_on_b_and_c_with_the_stream_ids() {
    let redis = RedisServer::start();
    let (a, b, c) = (node(&redis), node(&redis), node(&redis));
    for n in [&a, &b, &c] {
        wait_until("the node reaches redis", || health(n) == "ok\n");
    }
    let mut on_b = subscribe(&b, "/events");
    let mut on_c = subscribe(&c, "/events");
    let ids: Vec<String> = (0..20).map(|i| publish(&a, &format!("m{i}\nline two"))).collect();
    let expected: Vec<(String, String)> =
        ids.iter().enumerate().map(|(i, id)| (id.clone(), format!("m{i}\nline two"))).collect();
    assert_eq!(events(&mut on_b, 20), expected);
    assert_eq!(events(&mut on_c, 20), expected);
    // The ids are the stream's: Redis holds each one, in the same order.
    assert_eq!(redis.command(&["XLEN", "bare-sse:events"]), ":20");
    for id in &ids {
        assert_eq!(redis.command(&["XRANGE", "bare-sse:events", id, id]), "*1", "{id} in the stream");
    }
    let parsed: Vec<EventId> = ids.iter().map(|id| EventId::parse(id).expect("an id")).collect();
    assert!(parsed.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
}

#[test]
fn concurrent_publishes_on_a_and_b_give_one_order_everywhere() {
    let redis = RedisServer::start();
    let nodes = [node(&redis), node(&redis), node(&redis)];
    for n in &nodes {
        wait_until("the node reaches redis", || health(n) == "ok\n");
    }
    let mut streams: Vec<EventStream> = nodes.iter().map(|n| subscribe(n, "/events")).collect();
    let (addr_a, addr_b) = (nodes[0].addr, nodes[1].addr);
    let publishers: Vec<_> = [("a", addr_a), ("b", addr_b)]
        .into_iter()
        .map(|(name, addr)| support::publish_in_background(addr, name.to_owned(), 50))
        .collect();
    let acknowledged: BTreeSet<String> = publishers.into_iter().flat_map(|p| p.join().unwrap()).collect();
    assert_eq!(acknowledged.len(), 100);
    let seen: Vec<Vec<(String, String)>> = streams.iter_mut().map(|s| events(s, 100)).collect();
    let ids: BTreeSet<String> = seen[0].iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(ids, acknowledged, "every acknowledged publish, once");
    for (i, other) in seen.iter().enumerate() {
        assert_eq!(other, &seen[0], "node {i} saw another order");
    }
}

#[test]
fn a_client_resumes_on_another_node_without_gap_or_duplicate() {
    let redis = RedisServer::start();
    let (a, b) = (node(&redis), node(&redis));
    for n in [&a, &b] {
        wait_until("the node reaches redis", || health(n) == "ok\n");
    }
    let mut on_b = subscribe(&b, "/events");
    let first: Vec<String> = (0..10).map(|i| publish(&a, &format!("m{i}"))).collect();
    let got = events(&mut on_b, 10);
    assert_eq!(got.last().map(|(id, _)| id), first.last());
    drop(on_b);
    let missed: Vec<String> = (10..15).map(|i| publish(&a, &format!("m{i}"))).collect();
    // A node started after all that learns the history from the stream.
    let c = node(&redis);
    let resume = format!("/events?lastEventId={}", first[9]);
    // Until the node has read the stream it answers with a gap; a client
    // would retry.
    let mut on_c = wait_for("the new node knows the history", WAIT, || {
        let mut stream = subscribe(&c, &resume);
        let event = stream.next_event();
        if event.event.as_deref() == Some("gap") {
            return Err(event);
        }
        assert_eq!(event.id.as_deref(), Some(missed[0].as_str()));
        Ok(stream)
    });
    let rest = events(&mut on_c, 4);
    assert_eq!(rest.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(), missed[1..]);
    let live = publish(&a, "live");
    assert_eq!(events(&mut on_c, 1), [(live, "live".to_owned())]);
}

#[test]
fn redis_down_at_start_then_up() {
    let mut redis = RedisServer::start();
    redis.stop();
    let a = node(&redis);
    assert_eq!(health(&a), "degraded: redis unavailable\n");
    let mut stream = subscribe(&a, "/events");
    let started = Instant::now();
    let response = a.connect().publish("too early");
    assert_eq!(response.status, 503, "{response:?}");
    assert!(response.json()["error"].as_str().unwrap().contains("redis"), "{response:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "503 took {:?}", started.elapsed());
    redis.start_again();
    wait_until("the node reaches redis", || health(&a) == "ok\n");
    let id = publish(&a, "now");
    assert_eq!(events(&mut stream, 1), [(id, "now".to_owned())]);
}

#[test]
fn redis_killed_mid_stream_then_back() {
    let mut redis = RedisServer::start();
    let (a, b) = (node(&redis), node_beating(&redis, 1));
    for n in [&a, &b] {
        wait_until("the node reaches redis", || health(n) == "ok\n");
    }
    let mut on_b = subscribe(&b, "/events");
    let before = publish(&a, "before");
    assert_eq!(events(&mut on_b, 1), [(before, "before".to_owned())]);
    redis.stop();
    // Publishes fail fast with a JSON error, never hang.
    wait_until("publishes are refused", || {
        let started = Instant::now();
        let response = a.connect().request(post("/send-event", r#"{"message":"lost"}"#));
        assert!(started.elapsed() < Duration::from_secs(5), "a publish took {:?}", started.elapsed());
        response.status == 503 && response.json()["error"].is_string()
    });
    wait_until("both nodes say degraded", || health(&a).starts_with("degraded") && health(&b).starts_with("degraded"));
    // The stream stays open, and heartbeats go on.
    let mut raw = Vec::new();
    wait_until("a heartbeat", || {
        raw.extend(on_b.client.read_some());
        raw.windows(3).any(|w| w == b":\n\n")
    });
    redis.start_again();
    wait_until("the nodes reach redis again", || health(&a) == "ok\n" && health(&b) == "ok\n");
    let after = publish(&a, "after");
    assert_eq!(events(&mut on_b, 1), [(after, "after".to_owned())]);
    let metrics = b.connect().request(get("/metrics")).text();
    assert!(metrics.contains("bare_sse_redis_up 1"), "{metrics}");
}

#[test]
fn bad_entries_in_the_stream_are_skipped() {
    let redis = RedisServer::start();
    let a = node(&redis);
    wait_until("the node reaches redis", || health(&a) == "ok\n");
    let mut stream = subscribe(&a, "/events");
    let good = publish(&a, "good");
    redis.command(&["XADD", "bare-sse:events", "*", "nodata", "x"]);
    redis.command(&["XADD", "bare-sse:events", "*", "data", "x", "topics", "bad topic"]);
    let huge = "x".repeat(2 * 1024 * 1024);
    redis.command(&["XADD", "bare-sse:events", "*", "data", &huge, "topics", "default"]);
    let after = publish(&a, "after");
    assert_eq!(events(&mut stream, 2), [(good, "good".to_owned()), (after, "after".to_owned())]);
}

#[test]
fn pipelined_publishes_on_a_node_are_each_answered_in_order() {
    let redis = RedisServer::start();
    let a = node(&redis);
    wait_until("the node reaches redis", || health(&a) == "ok\n");
    let mut stream = subscribe(&a, "/events");
    let mut client = a.connect();
    let requests: String = (0..5).map(|i| post("/send-event", &format!(r#"{{"message":"p{i}"}}"#))).collect();
    client.send(requests);
    let ids: Vec<String> = (0..5)
        .map(|_| {
            let response = client.read_response();
            assert_eq!(response.status, 200, "{response:?}");
            response.json()["id"].as_str().unwrap().to_owned()
        })
        .collect();
    let expected: Vec<(String, String)> = ids.into_iter().enumerate().map(|(i, id)| (id, format!("p{i}"))).collect();
    assert_eq!(events(&mut stream, 5), expected);
}

#[test]
fn a_publish_redis_may_have_taken_is_answered_504_and_a_503_is_never_published() {
    let redis = RedisServer::start();
    let a = node(&redis);
    wait_until("the node reaches redis", || health(&a) == "ok\n");
    let mut stream = subscribe(&a, "/events");
    // Frozen: the XADD goes into the socket and no answer comes. Redis
    // runs it once thawed, so the publisher must not be told "not published".
    // (The publish before resets the bus's idle timer: no PING, which would
    // hold the next publish back unsent, goes out for a second.)
    publish(&a, "warm");
    redis.signal("-STOP");
    let started = Instant::now();
    let response = a.connect().publish("in flight");
    assert_eq!(response.status, 504, "{response:?}");
    // Within the bus's bound (1.5 s, README), plus slack for a loaded machine.
    let bound = ANSWER_WITHIN + Duration::from_secs(1);
    assert!(started.elapsed() < bound, "504 after {:?}", started.elapsed());
    assert!(response.json()["error"].as_str().unwrap().contains("redis"), "{response:?}");
    // Once the node knows Redis is gone, publishes are refused unsent.
    let mut refused = Vec::new();
    wait_until("publishes are refused", || {
        let message = format!("refused {}", refused.len());
        let status = a.connect().publish(&message).status;
        assert!(status == 503 || status == 504, "{status}");
        refused.push((message, status));
        status == 503
    });
    redis.signal("-CONT");
    wait_until("the node reaches redis again", || health(&a) == "ok\n");
    let after = publish(&a, "after");
    let mut seen = Vec::new();
    while seen.last().and_then(|e: &support::Event| e.id.as_ref()) != Some(&after) {
        seen.push(stream.next_event());
    }
    let seen: Vec<&str> = seen.iter().map(|e| e.data.as_str()).collect();
    assert_eq!(seen[..2], ["warm", "in flight"], "Redis ran the XADD once thawed: {seen:?}");
    for (message, status) in &refused {
        assert!(*status == 504 || !seen.contains(&message.as_str()), "{message:?} answered 503 yet published");
    }
}

#[test]
fn nodes_follow_a_stream_that_restarts_below_them_and_resuming_from_before_gives_a_gap() {
    let redis = RedisServer::start();
    let (a, b) = (node(&redis), node(&redis));
    for n in [&a, &b] {
        wait_until("the node reaches redis", || health(n) == "ok\n");
    }
    let (mut on_a, mut on_b) = (subscribe(&a, "/events"), subscribe(&b, "/events"));
    let far = "99999999999999-0";
    redis.command(&["XADD", "bare-sse:events", far, "data", "far", "topics", "default"]);
    for stream in [&mut on_a, &mut on_b] {
        assert_eq!(events(stream, 1), [(far.to_owned(), "far".to_owned())]);
    }
    // Redis loses everything (or fails over to one whose clock is behind):
    // new ids are below every id the nodes have seen, and still delivered.
    redis.command(&["FLUSHALL"]);
    let on_new_a = publish(&a, "new on a");
    let on_new_b = publish(&b, "new on b");
    let expected = [(on_new_a.clone(), "new on a".to_owned()), (on_new_b.clone(), "new on b".to_owned())];
    assert!(EventId::parse(&on_new_a).unwrap() < EventId::parse(far).unwrap());
    assert_eq!(events(&mut on_a, 2), expected);
    assert_eq!(events(&mut on_b, 2), expected);

    // The history starts over: an id from before the restart is unknown
    // (a gap, then everything retained); one from after it resumes exactly.
    let mut from_before = subscribe(&b, &format!("/events?lastEventId={far}"));
    let gap = from_before.next_event();
    assert_eq!(gap.event.as_deref(), Some("gap"), "{gap:?}");
    assert_eq!(gap.data, format!(r#"{{"lastEventId":"{far}","replayFrom":"{on_new_a}"}}"#));
    assert_eq!(events(&mut from_before, 2), expected);
    let mut from_after = subscribe(&a, &format!("/events?lastEventId={on_new_a}"));
    assert_eq!(events(&mut from_after, 1), expected[1..]);
}

#[test]
fn a_node_that_has_not_taken_in_its_events_yet_resumes_a_client_exactly() {
    let redis = RedisServer::start();
    let (a, b) = (node(&redis), node(&redis));
    for n in [&a, &b] {
        wait_until("the node reaches redis", || health(n) == "ok\n");
    }
    // B has no stream: its loop is not woken for these, which wait in its inbox.
    let ids: Vec<String> = (0..20).map(|i| publish(&a, &format!("m{i}"))).collect();
    let mut resumed = subscribe(&b, &format!("/events?lastEventId={}", ids[9]));
    let mut fresh = subscribe(&b, "/events");
    let expected: Vec<(String, String)> = (10..20).map(|i| (ids[i].clone(), format!("m{i}"))).collect();
    assert_eq!(events(&mut resumed, 10), expected, "exactly what it missed, whether replayed or live");
    let live = publish(&a, "live");
    assert_eq!(events(&mut resumed, 1), [(live.clone(), "live".to_owned())]);
    // A fresh stream starts where the node is: whatever it has not taken in
    // yet, then the live one, in order, nothing twice.
    let mut seen = Vec::new();
    while seen.last().map(|(id, _): &(String, String)| id) != Some(&live) {
        seen.extend(events(&mut fresh, 1));
    }
    assert!(seen.windows(2).all(|w| EventId::parse(&w[0].0) < EventId::parse(&w[1].0)), "{seen:?}");
}
