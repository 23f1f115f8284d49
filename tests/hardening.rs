//! Hardening over real sockets: slow consumers, slowloris, idle connections,
//! the connection cap, running out of file descriptors, publish and subscribe
//! tokens, CORS, and graceful shutdown on SIGTERM.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use support::{Binary, Client, TestServer, WAIT, get, post, wait_for_streams, wait_until};

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses).
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn slow_consumers_are_dropped_and_memory_stays_bounded() {
    let server = Binary::start(&["--max-buffered-bytes", "262144", "--history", "100"]);
    let addr = server.addr;
    // 40 subscribers that never read, with small receive buffers so they
    // fill up fast.
    let stalled: Vec<Client> = (0..40)
        .map(|_| {
            let client = Client::connect(addr);
            socket2::SockRef::from(client.stream()).set_recv_buffer_size(4096).unwrap();
            let mut client = client;
            client.send(get("/events"));
            client
        })
        .collect();
    let mut reader = Client::connect(addr).subscribe("/events");
    // Every stalled one is subscribed before the first publish, so each is
    // sent all 12 MB (far more than the kernel's buffers hold).
    wait_for_streams(addr, 41);
    let rss_before = rss_kb(server.child.id());
    let events = 3000;
    let payload = "x".repeat(4096);
    let reading = std::thread::spawn(move || {
        let all = (0..events).all(|i| reader.next_data() == format!("{i} {payload}"));
        (all, reader)
    });
    let mut publisher = Client::connect(addr);
    let payload = "x".repeat(4096);
    let mut max_rss = 0;
    for i in 0..events {
        assert_eq!(publisher.publish(&format!("{i} {payload}")).status, 200);
        if i % 100 == 0 {
            max_rss = max_rss.max(rss_kb(server.child.id()));
        }
    }
    let (all, _reader) = reading.join().unwrap();
    assert!(all, "the reading subscriber got every event, in order");
    // 40 stalled subscribers x 3000 x 4 KB would be 480 MB without the cap;
    // with a 256 KiB cap each holds at most that much.
    let growth_kb = max_rss.saturating_sub(rss_before);
    assert!(growth_kb < 40 * 1024, "RSS grew by {growth_kb} KiB");
    assert_eq!(publisher.publish("count").json()["subscribers"], 1, "stalled subscribers were dropped");
    drop(stalled);
}

#[test]
fn slowloris_gets_408_and_does_not_delay_others() {
    let server = TestServer::with(|c| c.settings.limits.header_timeout = Duration::from_secs(3));
    // Hundreds of connections that send half a head and stall.
    let mut stalled: Vec<TcpStream> = (0..300)
        .map(|_| {
            let mut s = TcpStream::connect(server.addr).unwrap();
            s.write_all(b"POST /send-event HTTP/1.1\r\nHost: t\r\nContent-Le").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s
        })
        .collect();
    // Everyone else is served meanwhile, not after the stalled ones time out
    // (the bound is the timeout, not a speed: speed is for the benchmarks).
    let started = Instant::now();
    let mut stream = server.subscribe();
    assert_eq!(server.publish("not delayed"), 1);
    assert_eq!(stream.next_data(), "not delayed");
    assert!(started.elapsed() < Duration::from_secs(3), "served only after {:?}", started.elapsed());
    // The stalled ones are answered 408 and closed after the timeout.
    for s in stalled.iter_mut().take(20) {
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 408 "), "{answer:?}");
    }
    // A body that stalls is cut off the same way.
    let mut client = Client::connect(server.addr);
    client.send("POST /send-event HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{\"message\":");
    assert_eq!(client.read_response().status, 408);
}

#[test]
fn idle_keep_alive_connections_are_closed() {
    let server = TestServer::with(|c| c.settings.limits.idle_timeout = Duration::from_secs(1));
    let mut client = server.connect();
    // Before the request: the server's idle clock cannot start earlier.
    let started = Instant::now();
    assert_eq!(client.request(get("/")).status, 200);
    assert!(client.read_to_end().is_empty(), "closed without a word");
    assert!(started.elapsed() >= Duration::from_millis(900));
    // A stream is not idle: it stays open past the idle timeout. Proof that
    // the timeout has passed for it, whatever the machine's speed: a
    // keep-alive connection that went idle after the stream opened is closed.
    let mut stream = server.subscribe();
    let mut marker = server.connect();
    assert_eq!(marker.request(get("/")).status, 200);
    assert!(marker.read_to_end().is_empty(), "the idle connection is closed");
    assert_eq!(server.publish("still here"), 1);
    assert_eq!(stream.next_data(), "still here");
}

#[test]
fn connections_over_the_cap_get_503() {
    let server = TestServer::with(|c| c.max_connections = 5);
    let streams: Vec<_> = (0..5).map(|_| server.subscribe()).collect();
    let mut extra = server.connect();
    let response = extra.read_response();
    assert_eq!(response.status, 503);
    assert_eq!(response.json()["error"], "too many connections");
    drop(streams);
    // Once below the cap, connections are served again.
    wait_until("a connection is served again", WAIT, || server.connect().request(get("/")).status == 200);
}

#[test]
fn running_out_of_file_descriptors_does_not_spin_or_crash() {
    // A server with only 40 descriptors (hard limit too, so it cannot raise
    // it) and a cap it cannot reach: accept() fails with EMFILE.
    let bin = env!("CARGO_BIN_EXE_bare-sse");
    let shell = format!("ulimit -n 40 && exec {bin} --listen 127.0.0.1:0 --max-connections 1000");
    let mut server = Binary::spawn(Command::new("sh").args(["-c", &shell]));
    let addr = server.addr;
    let pid = server.child.id();
    let held: Vec<TcpStream> = (0..80).filter_map(|_| TcpStream::connect(addr).ok()).collect();
    server.wait_for_log("the server runs out of descriptors", |log| log.contains("out of file descriptors"));
    let before = cpu_ticks(pid);
    // Not a wait for anything: the window the server's CPU time is measured
    // over. A server that waits uses next to nothing in it however loaded the
    // machine is; one that spins uses all the CPU it is given.
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(pid) - before;
    // 100 ticks a second is a whole core; a spinning loop would use ~100.
    assert!(used < 20, "the server used {used} ticks in 1 s while out of descriptors");
    drop(held);
    // It recovers once descriptors are free.
    wait_until("the server serves a publish again", WAIT, || {
        let mut client = Client::connect(addr);
        client.publish("after EMFILE").status == 200
    });
    assert!(server.child.try_wait().unwrap().is_none(), "still running");
    server.kill();
    let log = server.whole_log();
    assert!(log.contains("out of file descriptors"), "logged once per pause: {log}");
}

#[test]
fn publish_token_from_the_environment() {
    let server = Binary::spawn(
        Command::new(env!("CARGO_BIN_EXE_bare-sse"))
            .args(["--listen", "127.0.0.1:0"])
            .env("BARE_SSE_PUBLISH_TOKEN", "hunter2"),
    );
    let mut client = Client::connect(server.addr);
    let body = r#"{"message":"secret"}"#;
    let response = client.request(post("/send-event", body));
    assert_eq!(response.status, 401);
    assert_eq!(response.header("www-authenticate"), Some("Bearer"));
    let authorized = format!(
        "POST /send-event HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer hunter2\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    assert_eq!(client.request(authorized).status, 200);
}

#[test]
fn cors_preflight_over_the_wire() {
    let server = TestServer::with(|c| c.settings.cors_origins = vec!["https://app.example".into()]);
    let mut client = server.connect();
    let response = client.request(
        "OPTIONS /send-event HTTP/1.1\r\nHost: t\r\nOrigin: https://app.example\r\n\
         Access-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: content-type\r\n\r\n",
    );
    assert_eq!(response.status, 204);
    assert_eq!(response.header("access-control-allow-origin"), Some("https://app.example"));
    assert_eq!(response.header("vary"), Some("Origin"));
    assert!(response.header("access-control-allow-headers").unwrap().contains("Last-Event-ID"));
    let response = client.request(
        "POST /send-event HTTP/1.1\r\nHost: t\r\nOrigin: https://other.example\r\nContent-Length: 15\r\n\r\n{\"message\":\"m\"}",
    );
    assert_eq!(response.status, 200);
    assert_eq!(response.header("access-control-allow-origin"), None);
}

#[test]
fn sigterm_shuts_down_gracefully_with_open_streams() {
    let server = Binary::start(&[]);
    let mut streams: Vec<_> = (0..20).map(|_| Client::connect(server.addr).subscribe("/events")).collect();
    let mut publisher = Client::connect(server.addr);
    assert_eq!(publisher.publish("last words").json()["subscribers"], 20);
    let mut server = server;
    let status = server.terminate();
    assert!(status.success(), "exit status {status:?}");
    // Every stream got the acknowledged event, then the end of the stream.
    for stream in &mut streams {
        assert_eq!(stream.next_data(), "last words");
        assert!(stream.client.read_to_end().is_empty());
    }
    let log = server.whole_log();
    assert!(log.contains("shutting down"), "{log}");
}

#[test]
fn a_warning_when_publishing_is_open_to_the_network() {
    let server = Binary::spawn(Command::new(env!("CARGO_BIN_EXE_bare-sse")).args(["--listen", "0.0.0.0:0"]));
    let log = server.wait_for_log("a line after the start line", |log| log.contains('\n'));
    let warning = log.lines().next().unwrap();
    assert!(warning.contains("WITHOUT --publish-token"), "{warning:?}");
}

#[test]
fn shutdown_is_bounded_by_the_shutdown_timeout() {
    // A subscriber that never reads keeps bytes queued; shutdown must not
    // wait for it longer than --shutdown-timeout.
    let mut server =
        Binary::start(&["--shutdown-timeout", "1", "--max-buffered-bytes", "67108864", "--max-body-bytes", "1048576"]);
    let stalled = Client::connect(server.addr);
    socket2::SockRef::from(stalled.stream()).set_recv_buffer_size(4096).unwrap();
    let mut stalled = stalled;
    stalled.send(get("/events"));
    // Subscribed before the first publish, so that it is sent all of them.
    wait_for_streams(server.addr, 1);
    let mut publisher = Client::connect(server.addr);
    // More than the kernel's socket buffers can absorb.
    let big = "y".repeat(500_000);
    for _ in 0..20 {
        assert_eq!(publisher.publish(&big).status, 200);
    }
    let started = Instant::now();
    let status = server.terminate_within(Duration::from_secs(8));
    assert!(status.success());
    assert!(started.elapsed() >= Duration::from_millis(900), "it did wait for the flush: {:?}", started.elapsed());
}

#[test]
fn history_is_bounded_in_bytes_too() {
    let server = TestServer::with(|c| {
        c.history.events = 1000;
        c.history.bytes = 200;
    });
    let first = server.connect().publish("first").json()["id"].as_str().unwrap().to_owned();
    for i in 0..10 {
        server.publish(&format!("event number {i}"));
    }
    // Each frame is about 40 bytes, so only the last few fit in 200 bytes.
    let mut stream = Client::connect(server.addr).subscribe(&format!("/events?lastEventId={first}"));
    let gap = stream.next_event();
    assert_eq!(gap.event.as_deref(), Some("gap"));
    let mut replayed = Vec::new();
    server.publish("live");
    loop {
        let data = stream.next_data();
        if data == "live" {
            break;
        }
        replayed.push(data);
    }
    assert!((3..=6).contains(&replayed.len()), "{replayed:?}");
    assert_eq!(replayed.last().map(String::as_str), Some("event number 9"));
}

#[test]
fn a_long_replay_is_not_mistaken_for_a_slow_consumer() {
    // 12 MB of replay is far over the 1 MiB cap, but it is shared history,
    // not memory the client made us allocate: a client that reads must get
    // all of it, and live events after it.
    let server = TestServer::with(|c| c.history.bytes = 64 * 1024 * 1024);
    let big = "z".repeat(60_000);
    let first = server.connect().publish("first").json()["id"].as_str().unwrap().to_owned();
    let mut publisher = server.connect();
    for i in 0..200 {
        assert_eq!(publisher.publish(&format!("{i} {big}")).status, 200);
    }
    let mut stream = Client::connect(server.addr).subscribe(&format!("/events?lastEventId={first}"));
    // The whole replay is queued when the stream opens; a live event now
    // comes after all of it.
    assert_eq!(publisher.publish("live").status, 200);
    for i in 0..200 {
        assert_eq!(stream.next_data(), format!("{i} {big}"));
    }
    assert_eq!(stream.next_data(), "live");
}
