//! Resource limits under hostile clients, over real sockets: subscribers
//! cannot take the slots publishers and health checks need, and a subscriber
//! turned away is told when to come back.

mod support;

use std::collections::BTreeSet;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};

use support::{Binary, Client, TestServer, WAIT, get, post, wait_for_streams, wait_until};

/// The `retry:` value of a stream that the server ended, with its head
/// checked: a 200 event stream, as EventSource needs to reconnect.
#[track_caller]
fn turned_away_retry(client: &mut Client) -> u32 {
    let response = client.read_response();
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
    // (one to two --retry-ms), then its end: an EventSource comes back. A
    // dozen, more than the 3 free slots, whose clients keep their end open:
    // one turned away gives its slot back at once, not when its client gets
    // round to closing, so none gets a 503.
    let mut crowd = Vec::new();
    let retries: Vec<u32> = (0..12)
        .map(|_| {
            let mut client = server.connect();
            client.send(get("/events"));
            let retry = turned_away_retry(&mut client);
            crowd.push(client);
            retry
        })
        .collect();
    let retry_ms = bare_sse::app::Settings::default().retry_ms;
    assert!(retries.iter().all(|ms| (retry_ms..2 * retry_ms).contains(ms)), "{retries:?}");
    assert!(retries.iter().collect::<BTreeSet<_>>().len() > 1, "jittered: {retries:?}");
    drop(crowd);
    // The askers' closes reach the server in their own time: wait for it to
    // count only the streams (and the one asking).
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

/// A field of `/proc/PID/status`, in kB (`VmRSS`, `VmHWM`).
fn proc_status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap_or_else(|| panic!("no {field} in {status}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A subscriber that never reads, whose connection the kernel can buffer
/// little for: a small MSS keeps the server's send buffer near its initial
/// size and a small receive buffer keeps the window shut, so what the
/// server sends it piles up in the server's own queues (where a real slow
/// client's backlog would be, once its kernel buffers are full), and the
/// test pins little kernel memory on a shared machine.
fn non_reader(addr: SocketAddr) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.set_tcp_mss(536).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&addr.into()).unwrap();
    let mut stream: TcpStream = socket.into();
    stream.write_all(get("/events").as_bytes()).unwrap();
    stream
}

/// Publishes `{prefix}0` .. `{prefix}{count - 1}` on one connection, 64
/// requests pipelined at a time.
fn publish_pipelined(addr: SocketAddr, prefix: String, count: usize) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut client = Client::connect(addr);
        for start in (0..count).step_by(64) {
            let batch: String = (start..count.min(start + 64))
                .map(|i| post("/send-event", &format!(r#"{{"message":"{prefix}{i}"}}"#)))
                .collect();
            client.send(batch);
            for _ in start..count.min(start + 64) {
                let response = client.read_response();
                assert_eq!(response.status, 200, "{response:?}");
            }
        }
    })
}

#[test]
fn subscribers_that_never_read_cannot_take_unbounded_memory() {
    const NON_READERS: usize = 1500;
    const PUBLISHERS: usize = 4;
    const EACH: usize = 10_000;
    let _ = rlimit::increase_nofile_limit(8192);
    // The defaults: --max-buffered-bytes 1 MiB per subscriber,
    // --max-queued-bytes 256 MiB for all.
    let server = Binary::start(&["--heartbeat", "0"]);
    let addr = server.addr;
    let pid = server.child.id();
    let non_readers: Vec<TcpStream> = (0..NON_READERS).map(|_| non_reader(addr)).collect();
    let mut reader = Client::connect(addr).subscribe("/events");
    wait_for_streams(addr, NON_READERS as u64 + 1);
    let before_kb = proc_status_kb(pid, "VmRSS:");
    let reading = std::thread::spawn(move || {
        let mut next = [0; PUBLISHERS];
        for _ in 0..PUBLISHERS * EACH {
            let data = reader.next_data();
            let (publisher, i) = data.split_once('-').unwrap();
            let publisher: usize = publisher.parse().unwrap();
            assert_eq!(i.parse::<usize>().unwrap(), next[publisher], "publisher {publisher}'s events in order");
            next[publisher] += 1;
        }
        reader
    });
    // Tiny events, so that the queue entries, not the frames, are what a
    // subscriber that never reads costs: before they were counted, and with
    // no bound on all subscribers together, the peak RSS grew by 687 MB.
    let publishers: Vec<_> = (0..PUBLISHERS).map(|p| publish_pipelined(addr, format!("{p}-"), EACH)).collect();
    for publisher in publishers {
        publisher.join().unwrap();
    }
    let _reader = reading.join().unwrap();
    let growth_mb = proc_status_kb(pid, "VmHWM:").saturating_sub(before_kb) / 1024;
    eprintln!("peak RSS grew by {growth_mb} MB with {NON_READERS} subscribers that never read");
    assert!(growth_mb < 400, "peak RSS grew by {growth_mb} MB");
    // The reader got everything; the ones that never read were dropped.
    wait_for_streams(addr, 1);
    drop(non_readers);
}

/// Bytes the kernel holds for the connections to `port`, both ends: what
/// the server's sockets have not had acknowledged and what the clients'
/// sockets have received but not read (`/proc/net/tcp`, IPv4).
fn kernel_bytes_in_flight(port: u16) -> u64 {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let ours = |address: &str| address.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok()) == Some(port);
    let mut total = 0;
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() > 4 && (ours(fields[1]) || ours(fields[2])) {
            let (tx, rx) = fields[4].split_once(':').unwrap();
            total += u64::from_str_radix(tx, 16).unwrap() + u64::from_str_radix(rx, 16).unwrap();
        }
    }
    total
}

#[test]
fn a_crowd_replaying_the_whole_history_pins_little_and_the_loop_stays_responsive() {
    const CROWD: usize = 200;
    let server = TestServer::with(|config| config.heartbeat_secs = 0);
    let addr = server.addr;
    // A full history: 1000 events of 16 KB (16 MB).
    let first = server.connect().publish("first").json()["id"].as_str().unwrap().to_owned();
    let big = "z".repeat(16 * 1024);
    let mut publisher = server.connect();
    for start in (0..999).step_by(64) {
        let batch: String = (start..999.min(start + 64))
            .map(|i| post("/send-event", &format!(r#"{{"message":"{i} {big}"}}"#)))
            .collect();
        publisher.send(batch);
        for _ in start..999.min(start + 64) {
            assert_eq!(publisher.read_response().status, 200);
        }
    }
    // A crowd asks for all of it at once and never reads: about 80 bytes of
    // request each. Before, the server wrote each as much as its socket took
    // (megabytes, as send buffers grow), pinning gigabytes of kernel memory
    // for a crowd of thousands, and stalled its loop doing so.
    let resume = format!("GET /events HTTP/1.1\r\nHost: t\r\nLast-Event-ID: {first}\r\n\r\n");
    let started = std::time::Instant::now();
    let crowd: Vec<Client> = (0..CROWD)
        .map(|_| {
            let mut client = Client::connect(addr);
            client.send(&resume);
            client
        })
        .collect();
    let mut slowest_health = std::time::Duration::ZERO;
    wait_until("the crowd's streams are open", WAIT, || {
        let asked = std::time::Instant::now();
        assert_eq!(server.connect().request(get("/healthz")).status, 200);
        slowest_health = slowest_health.max(asked.elapsed());
        server.metric("bare_sse_streams") == CROWD as u64
    });
    // One more answer from the (one) loop: it has written what it meant to
    // the crowd's sockets by then.
    assert_eq!(server.connect().request(get("/healthz")).status, 200);
    let per_client_kb = kernel_bytes_in_flight(addr.port()) / CROWD as u64 / 1024;
    eprintln!(
        "{CROWD} replays of 16 MB: {per_client_kb} KB in flight per client, slowest /healthz {slowest_health:?}, \
         streams open after {:?}",
        started.elapsed()
    );
    assert!(per_client_kb < 512, "{per_client_kb} KB in the kernel per client that never reads");
    // A reader meanwhile gets the whole replay, in order, then live events.
    let mut reader = Client::connect(addr).subscribe(&format!("/events?lastEventId={first}"));
    assert_eq!(server.publish("live"), CROWD as u64 + 1, "the crowd was not dropped");
    for i in 0..999 {
        assert_eq!(reader.next_data(), format!("{i} {big}"));
    }
    assert_eq!(reader.next_data(), "live");
    drop(crowd);
}
