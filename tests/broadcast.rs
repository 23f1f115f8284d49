//! Subscribing and publishing over real sockets: every subscriber gets every
//! message, intact, and subscribers that leave are forgotten.

mod support;

use std::time::Duration;

use support::{Client, TestServer, WAIT, get, wait_for};

#[test]
fn every_subscriber_gets_every_message_in_order() {
    let server = TestServer::start();
    let mut subscribers: Vec<_> = (0..5).map(|_| server.subscribe()).collect();
    for i in 0..20 {
        assert_eq!(server.publish(&format!("message {i}")), 5);
    }
    for subscriber in &mut subscribers {
        for i in 0..20 {
            assert_eq!(subscriber.next_data(), format!("message {i}"));
        }
    }
}

#[test]
fn stream_response_head() {
    let server = TestServer::start();
    let stream = server.subscribe();
    let response = &stream.response;
    assert_eq!(response.header("content-type"), Some("text/event-stream"));
    assert_eq!(response.header("cache-control"), Some("no-cache"));
    assert_eq!(response.header("connection"), Some("keep-alive"));
    assert_eq!(response.header("access-control-allow-origin"), Some("*"));
    assert_eq!(response.header("x-accel-buffering"), Some("no"));
    assert_eq!(response.header("content-length"), None, "the stream has no length");
}

#[test]
fn publishing_with_no_subscriber_is_fine() {
    let server = TestServer::start();
    let response = server.connect().publish("nobody listens");
    assert_eq!(response.status, 200);
    let answer = response.json();
    assert_eq!(answer["subscribers"], 0);
    assert!(answer["id"].as_str().is_some_and(|id| id.ends_with("-1")), "{answer}");
    assert_eq!(response.header("content-type"), Some("application/json"));
}

#[test]
fn messages_arrive_exactly_as_published() {
    let server = TestServer::start();
    let mut subscriber = server.subscribe();
    let cases = [
        ("plain", "plain"),
        ("two\nlines", "two\nlines"),
        ("crlf\r\nline", "crlf\nline"),
        ("cr\ronly", "cr\nonly"),
        ("trailing\n", "trailing\n"),
        ("", ""),
        (" leading space", " leading space"),
        ("\n\nevent: injected\nid: 666\ndata: nope", "\n\nevent: injected\nid: 666\ndata: nope"),
        ("unicode \u{e9}\u{1f600} and \u{0} nul", "unicode \u{e9}\u{1f600} and \u{0} nul"),
        (": not a comment", ": not a comment"),
    ];
    for (sent, _) in cases {
        server.publish(sent);
    }
    for (sent, expected) in cases {
        let event = subscriber.next_event();
        assert_eq!(event.data, expected, "published {sent:?}");
        assert_eq!(event.event, None, "no field can be injected by {sent:?}");
    }
}

#[test]
fn a_large_message_to_a_subscriber_that_reads_late() {
    // Bigger than the socket buffers: the server must queue the rest and
    // send it when the socket is writable, without blocking anyone. How much
    // the kernel takes at once varies, so each subscriber may have nearly
    // all of it queued: allow that (the cap on it, --max-buffered-bytes, is
    // 1 MiB by default and has tests of its own in hardening.rs).
    let server = TestServer::with(|c| {
        c.settings.limits.max_body_bytes = 8 * 1024 * 1024;
        c.max_buffered_bytes = 8 * 1024 * 1024;
    });
    let mut slow = server.subscribe();
    let mut quick = server.subscribe();
    let big = "x".repeat(3 * 1024 * 1024);
    assert_eq!(server.publish(&big), 2);
    assert_eq!(server.publish("after"), 2);
    // The quick one gets everything while the slow one has read nothing yet.
    assert_eq!(quick.next_data().len(), big.len());
    assert_eq!(quick.next_data(), "after");
    assert_eq!(slow.next_data(), big);
    assert_eq!(slow.next_data(), "after");
}

#[test]
fn subscribers_that_leave_are_removed() {
    let server = TestServer::start();
    let keep = server.subscribe();
    let leaving: Vec<_> = (0..50).map(|_| server.subscribe()).collect();
    assert_eq!(server.publish("all here"), 51);
    drop(leaving);
    server.wait_for_subscribers(1);
    drop(keep);
    server.wait_for_subscribers(0);
}

#[test]
fn a_subscriber_reset_is_removed() {
    let server = TestServer::start();
    let stream = server.subscribe();
    // SO_LINGER 0 makes close() send RST instead of FIN.
    socket2::SockRef::from(stream.client.stream()).set_linger(Some(Duration::ZERO)).unwrap();
    drop(stream);
    server.wait_for_subscribers(0);
}

#[test]
fn connect_disconnect_cycles_leave_nothing_behind() {
    // Counted by the server itself, not as this process's descriptors: other
    // tests run in this process at the same time. A connection's slot is
    // given back, and its socket closed, in one place (the loop's close()).
    let server = TestServer::start();
    for round in 0..20 {
        let batch: Vec<_> = (0..100).map(|_| server.subscribe()).collect();
        assert_eq!(server.publish(&format!("round {round}")), 100);
        drop(batch);
        server.wait_for_subscribers(0);
    }
    // Closed connections are released promptly: all 2,000 streams and the
    // publishers' connections (the server sees each close when it reads it).
    wait_for("the server has no connection open but the one asking", WAIT, || {
        let open = server.open_connections();
        if open == 0 { Ok(()) } else { Err(format!("{open} other connections")) }
    });
    assert!(server.metric("bare_sse_connections_accepted_total") > 2000, "every cycle was counted");
    assert_eq!(server.metric("bare_sse_streams"), 0);
    assert_eq!(server.metric("bare_sse_topics"), 0);
}

#[test]
fn the_demo_page_is_served() {
    let server = TestServer::start();
    let response = server.connect().request(get("/"));
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("text/html; charset=utf-8"));
    let page = response.text();
    assert!(page.contains("new EventSource('/events')"));
    assert!(page.contains("/send-event"));
}

#[test]
fn a_subscriber_and_a_publisher_on_one_keep_alive_connection_each() {
    let server = TestServer::start();
    let mut subscriber = server.subscribe();
    let mut publisher = Client::connect(server.addr);
    for i in 0..100 {
        assert_eq!(publisher.publish(&i.to_string()).status, 200);
    }
    for i in 0..100 {
        assert_eq!(subscriber.next_data(), i.to_string());
    }
}
