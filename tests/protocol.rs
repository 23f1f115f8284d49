//! The SSE protocol over real sockets: ids, Last-Event-ID replay (and its seam
//! under concurrent publishing), topics, event names, retry, heartbeats, the
//! ticker and the embedding Publisher.

mod support;

use std::time::Duration;

use bare_sse::broadcast::event::Publish;
use support::{Client, TestServer, post, wait_until};

fn publish_json(server: &TestServer, body: serde_json::Value) -> serde_json::Value {
    let response = server.connect().request(post("/send-event", &body.to_string()));
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()
}

fn seq(id: &str) -> u64 {
    id.rsplit('-').next().unwrap().parse().unwrap()
}

#[test]
fn ids_are_strictly_increasing_and_match_the_answer() {
    let server = TestServer::start();
    let mut stream = server.subscribe();
    let mut answers = Vec::new();
    for i in 0..10 {
        answers.push(publish_json(&server, serde_json::json!({ "message": i.to_string() }))["id"].clone());
    }
    let mut last = 0;
    for answer in answers {
        let event = stream.next_event();
        let id = event.id.unwrap();
        assert_eq!(answer.as_str(), Some(id.as_str()));
        assert!(seq(&id) > last);
        last = seq(&id);
    }
}

#[test]
fn replay_after_last_event_id_header_and_query() {
    let server = TestServer::start();
    let ids: Vec<String> = (0..5)
        .map(|i| {
            publish_json(&server, serde_json::json!({ "message": format!("m{i}") }))["id"].as_str().unwrap().into()
        })
        .collect();
    for path_and_header in [
        format!("GET /events HTTP/1.1\r\nHost: t\r\nLast-Event-ID: {}\r\n\r\n", ids[1]),
        format!("GET /events?lastEventId={} HTTP/1.1\r\nHost: t\r\n\r\n", ids[1]),
    ] {
        let mut client = Client::connect(server.addr);
        let response = client.request(path_and_header);
        assert_eq!(response.status, 200);
        let mut stream = support::EventStream { client, response };
        for (i, id) in ids.iter().enumerate().skip(2) {
            let event = stream.next_event();
            assert_eq!((event.id.as_deref(), event.data.as_str()), (Some(id.as_str()), format!("m{i}").as_str()));
        }
        // Then live.
        server.publish("live");
        assert_eq!(stream.next_data(), "live");
    }
}

#[test]
fn a_fresh_subscriber_is_told_the_current_id() {
    // So a client that never received an event still resumes without a gap.
    let server = TestServer::start();
    let first = publish_json(&server, serde_json::json!({ "message": "before" }));
    let mut client = Client::connect(server.addr);
    let response = client.request("GET /events HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(response.status, 200);
    let mut raw = String::new();
    while !raw.contains(&format!("id: {}\n\n", first["id"].as_str().unwrap())) {
        raw.push_str(std::str::from_utf8(&client.read_some()).unwrap());
    }
    assert!(!raw.contains("data:"), "the id block carries no event: {raw:?}");
}

#[test]
fn unknown_or_too_old_ids_get_a_gap_event_then_everything_retained() {
    let server = TestServer::with(|c| c.history.events = 3);
    let ids: Vec<String> = (0..6)
        .map(|i| {
            publish_json(&server, serde_json::json!({ "message": format!("m{i}") }))["id"].as_str().unwrap().into()
        })
        .collect();
    for last in [ids[0].clone(), "nonsense".to_owned(), "1-1".to_owned()] {
        let mut stream = Client::connect(server.addr).subscribe(&format!("/events?lastEventId={last}"));
        let gap = stream.next_event();
        assert_eq!(gap.event.as_deref(), Some("gap"), "for {last}");
        assert_eq!(gap.id, None);
        let detail: serde_json::Value = serde_json::from_str(&gap.data).unwrap();
        assert_eq!(detail["lastEventId"], last.as_str());
        assert_eq!(detail["replayFrom"], ids[3].as_str());
        for i in 3..6 {
            assert_eq!(stream.next_data(), format!("m{i}"));
        }
    }
    // The newest id replays nothing and shows no gap.
    let mut stream = Client::connect(server.addr).subscribe(&format!("/events?lastEventId={}", ids[5]));
    server.publish("next");
    assert_eq!(stream.next_data(), "next");
}

#[test]
fn replay_seam_under_concurrent_publishing() {
    // Publishers run flat out while a subscriber keeps dropping its
    // connection and resuming from the last id it saw: it must see every
    // event exactly once, in order.
    let server = TestServer::with(|c| c.history.events = 100_000);
    let addr = server.addr;
    let mut stream = server.subscribe();
    let total = 600;
    let publishers: Vec<_> = (0..3)
        .map(|p| {
            std::thread::spawn(move || {
                let mut client = Client::connect(addr);
                for i in 0..total / 3 {
                    assert_eq!(client.publish(&format!("{p}:{i}")).status, 200);
                }
            })
        })
        .collect();
    let mut seqs = Vec::new();
    let mut rejoined = 0;
    while seqs.len() < total {
        let id = stream.next_event().id.unwrap();
        seqs.push(seq(&id));
        if seqs.len() % 50 == 0 {
            drop(stream);
            let mut client = Client::connect(addr);
            let response = client.request(format!("GET /events HTTP/1.1\r\nHost: t\r\nLast-Event-ID: {id}\r\n\r\n"));
            assert_eq!(response.status, 200);
            stream = support::EventStream { client, response };
            rejoined += 1;
        }
    }
    for publisher in publishers {
        publisher.join().unwrap();
    }
    assert!(rejoined >= 10);
    assert_eq!(seqs, (1..=total as u64).collect::<Vec<_>>(), "a gap or a duplicate at a seam");
}

#[test]
fn topics_reach_only_their_subscribers() {
    let server = TestServer::start();
    let mut plain = server.subscribe();
    let mut a = Client::connect(server.addr).subscribe("/events?topic=a");
    let mut ab = Client::connect(server.addr).subscribe("/events?topic=a&topic=b");
    let mut b = Client::connect(server.addr).subscribe("/events?topic=b");
    assert_eq!(publish_json(&server, serde_json::json!({ "message": "to a", "topic": "a" }))["subscribers"], 2);
    assert_eq!(publish_json(&server, serde_json::json!({ "message": "to b", "topic": ["b"] }))["subscribers"], 2);
    assert_eq!(
        publish_json(&server, serde_json::json!({ "message": "to both", "topic": ["a", "b"] }))["subscribers"],
        3
    );
    assert_eq!(publish_json(&server, serde_json::json!({ "message": "default" }))["subscribers"], 1);
    assert_eq!(plain.next_data(), "default");
    assert_eq!((a.next_data(), a.next_data()), ("to a".into(), "to both".into()));
    assert_eq!((ab.next_data(), ab.next_data(), ab.next_data()), ("to a".into(), "to b".into(), "to both".into()));
    assert_eq!((b.next_data(), b.next_data()), ("to b".into(), "to both".into()));
    // Replay respects topics too.
    let mut late = Client::connect(server.addr).subscribe("/events?topic=b&lastEventId=0-0");
    assert_eq!(late.next_event().event.as_deref(), Some("gap"));
    assert_eq!((late.next_data(), late.next_data()), ("to b".into(), "to both".into()));
}

#[test]
fn invalid_topics_are_400() {
    let server = TestServer::start();
    for path in ["/events?topic=", "/events?topic=a%20b", "/events?topic=%ff"] {
        let response = server.connect().request(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n"));
        assert_eq!(response.status, 400, "{path}");
    }
    let response = server.connect().request(post("/send-event", r#"{"message":"m","topic":"no spaces"}"#));
    assert_eq!(response.status, 400);
    assert!(response.json()["error"].as_str().unwrap().contains("invalid topic"));
}

#[test]
fn event_names() {
    let server = TestServer::start();
    let mut stream = server.subscribe();
    publish_json(&server, serde_json::json!({ "message": "m", "event": "update" }));
    assert_eq!(stream.next_event().event.as_deref(), Some("update"));
    let response = server.connect().request(post("/send-event", r#"{"message":"m","event":"a\nb"}"#));
    assert_eq!(response.status, 400);
}

#[test]
fn retry_is_sent_at_stream_start() {
    let server = TestServer::with(|c| c.settings.retry_ms = 1234);
    let mut client = Client::connect(server.addr);
    client.send("GET /events HTTP/1.1\r\nHost: t\r\n\r\n");
    let response = client.read_response();
    assert_eq!(response.status, 200);
    let mut got = Vec::new();
    while got.len() < 20 {
        got.extend(client.read_some());
    }
    assert!(got.starts_with(b": ok\nretry: 1234\n\n"), "{:?}", String::from_utf8_lossy(&got));
}

#[test]
fn heartbeats_reach_idle_streams_only() {
    let server = TestServer::with(|c| c.heartbeat_secs = 1);
    let mut idle = Client::connect(server.addr);
    idle.send("GET /events HTTP/1.1\r\nHost: t\r\n\r\n");
    idle.read_response();
    let mut got = Vec::new();
    // Five heartbeat intervals.
    wait_until("a heartbeat comes", Duration::from_secs(5), || {
        got.extend(idle.read_some());
        String::from_utf8_lossy(&got).contains(":\n\n")
    });
}

#[test]
fn the_ticker_publishes_the_time_on_its_topic() {
    let server = TestServer::with(|c| c.tick = true);
    let mut time = Client::connect(server.addr).subscribe("/events?topic=time");
    let tick = time.next_data();
    // "Nov 23 07:45:01": month, space-padded day, time.
    assert_eq!(tick.len(), 15, "{tick:?}");
    assert!(tick[..3].chars().all(|c| c.is_ascii_alphabetic()), "{tick:?}");
    assert_eq!(&tick[9..10], ":", "{tick:?}");
    let next = time.next_data();
    assert_ne!(tick, next);
}

#[test]
fn publisher_from_another_thread() {
    let server = TestServer::start();
    let mut stream = server.subscribe();
    let mut news = Client::connect(server.addr).subscribe("/events?topic=news");
    let publisher = server.publisher();
    let thread = std::thread::spawn(move || {
        for i in 0..100 {
            publisher.send(format!("p{i}")).unwrap();
        }
        let event =
            Publish { message: "hot".into(), topics: vec!["news".into()], event: Some("flash".into()), mercure: None };
        publisher.publish(event).unwrap();
        let bad = Publish { message: "x".into(), topics: vec!["bad topic".into()], event: None, mercure: None };
        assert!(publisher.publish(bad).is_err());
    });
    thread.join().unwrap();
    for i in 0..100 {
        assert_eq!(stream.next_data(), format!("p{i}"));
    }
    let event = news.next_event();
    assert_eq!((event.event.as_deref(), event.data.as_str()), (Some("flash"), "hot"));
}

#[test]
fn publisher_fails_once_the_server_stopped() {
    let server = TestServer::start();
    let publisher = server.publisher();
    drop(server);
    assert!(publisher.send("too late").is_err());
}
