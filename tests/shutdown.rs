//! Graceful shutdown over real sockets: every event a publisher was answered
//! 200 for reaches every open stream before the server closes it, on any
//! number of event loops; and a crowd of streams is ended over a drain
//! window, each told a jittered `retry:` first, not all at once.

mod support;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bare_sse::config::Config;
use bare_sse::server::Server;
use support::{Binary, Client, IO_TIMEOUT, WAIT, get, post, wait_for, wait_for_streams, wait_until};

/// Publishes `{prefix}0`, `{prefix}1`, ... on one keep-alive connection as
/// fast as the server answers, until it refuses (503 while shutting down) or
/// closes the connection. Each message answered 200 goes into `acked`, and
/// `count` counts them.
fn publish_until_refused(addr: SocketAddr, prefix: String, acked: Arc<Mutex<Vec<String>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let Ok(stream) = TcpStream::connect(addr) else { return };
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut reader = BufReader::new(stream);
        for i in 0.. {
            let message = format!("{prefix}{i}");
            let body = serde_json::json!({ "message": message }).to_string();
            if reader.get_mut().write_all(post("/send-event", &body).as_bytes()).is_err() {
                return;
            }
            match read_status(&mut reader) {
                Some(200) => acked.lock().unwrap().push(message),
                _ => return,
            }
        }
    })
}

/// Reads one response and gives its status; `None` if the connection ended
/// or failed first.
fn read_status(reader: &mut BufReader<TcpStream>) -> Option<u16> {
    let mut line = String::new();
    reader.read_line(&mut line).ok().filter(|&n| n > 0)?;
    let status = line.get(9..12)?.parse().ok()?;
    let mut length = 0;
    loop {
        line.clear();
        reader.read_line(&mut line).ok().filter(|&n| n > 0)?;
        if line == "\r\n" {
            break;
        }
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = value.trim().parse().ok()?;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(status)
}

/// The messages of a stream read until the server closed it.
fn read_stream_to_end(addr: SocketAddr) -> JoinHandle<BTreeSet<String>> {
    let mut stream = Client::connect(addr).subscribe("/events");
    std::thread::spawn(move || {
        let all = stream.client.read_to_end();
        String::from_utf8_lossy(&all)
            .lines()
            .filter_map(|line| line.strip_prefix("data: "))
            .map(str::to_owned)
            .collect()
    })
}

/// Four publishers flat out on keep-alive connections and one `Publisher`
/// thread, 40 streams spread over the loops, then `Handle::shutdown`: every
/// stream must have received every event whose publisher was answered.
fn acknowledged_events_reach_every_stream_at_shutdown(threads: usize, runs: usize) {
    const STREAMS: usize = 40;
    const PUBLISHERS: usize = 4;
    for run in 0..runs {
        let config = Config { listen: "127.0.0.1:0".parse().unwrap(), threads, heartbeat_secs: 0, ..Config::default() };
        let server = Server::bind(&config).unwrap();
        let addr = server.local_addr().unwrap();
        let (handle, publisher) = (server.handle(), server.publisher());
        let thread = std::thread::spawn(move || server.run());
        let readers: Vec<_> = (0..STREAMS).map(|_| read_stream_to_end(addr)).collect();
        wait_for_streams(addr, STREAMS as u64);
        let acked = Arc::new(Mutex::new(Vec::new()));
        let mut publishers: Vec<_> =
            (0..PUBLISHERS).map(|p| publish_until_refused(addr, format!("p{p}-"), acked.clone())).collect();
        let in_process = Arc::new(AtomicUsize::new(0));
        let (counter, in_process_acked) = (in_process.clone(), acked.clone());
        publishers.push(std::thread::spawn(move || {
            for i in 0.. {
                let message = format!("t-{i}");
                if publisher.send(message.clone()).is_err() {
                    return;
                }
                in_process_acked.lock().unwrap().push(message);
                counter.fetch_add(1, Ordering::SeqCst);
            }
        }));
        // Stop mid-flight, once every kind of publisher is well under way.
        wait_until("the publishers are under way", WAIT, || {
            acked.lock().unwrap().len() >= 400 && in_process.load(Ordering::SeqCst) >= 50
        });
        handle.shutdown();
        for publisher in publishers {
            publisher.join().unwrap();
        }
        thread.join().unwrap().unwrap();
        let acked: BTreeSet<String> = acked.lock().unwrap().iter().cloned().collect();
        let mut short = Vec::new();
        for (i, reader) in readers.into_iter().enumerate() {
            let got = reader.join().unwrap();
            let missing = acked.difference(&got).count();
            if missing > 0 {
                short.push((i, missing));
            }
        }
        assert!(
            short.is_empty(),
            "run {run} on {threads} loops: {} of {STREAMS} streams ended without some of the {} acknowledged events \
             (stream, events missing): {short:?}",
            short.len(),
            acked.len()
        );
    }
}

#[test]
fn acknowledged_events_reach_every_stream_at_shutdown_on_two_loops() {
    acknowledged_events_reach_every_stream_at_shutdown(2, 4);
}

#[test]
fn acknowledged_events_reach_every_stream_at_shutdown_on_four_loops() {
    acknowledged_events_reach_every_stream_at_shutdown(4, 4);
}

/// One stream of the crowd, as the test's own small event loop reads it.
struct Watched {
    socket: mio::net::TcpStream,
    received: Vec<u8>,
    /// When the server's end of the stream arrived (EOF, or a reset).
    ended_at: Option<Instant>,
    reset: bool,
}

/// Reads every stream of `crowd` until the server ends it, on this thread,
/// giving up after [`WAIT`].
fn read_until_all_end(poll: &mut mio::Poll, crowd: &mut [Watched]) {
    let mut events = mio::Events::with_capacity(1024);
    let mut buffer = vec![0; 64 * 1024];
    let mut open = crowd.len();
    let give_up = Instant::now() + WAIT;
    while open > 0 && Instant::now() < give_up {
        poll.poll(&mut events, Some(Duration::from_millis(100))).unwrap();
        for event in events.iter() {
            let watched = &mut crowd[event.token().0];
            while watched.ended_at.is_none() {
                match watched.socket.read(&mut buffer) {
                    Ok(0) => watched.ended_at = Some(Instant::now()),
                    Ok(n) => watched.received.extend_from_slice(&buffer[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => (watched.ended_at, watched.reset) = (Some(Instant::now()), true),
                }
                if watched.ended_at.is_some() {
                    open -= 1;
                }
            }
        }
    }
    assert_eq!(open, 0, "streams the server had not ended after {WAIT:?}");
}

/// The `retry:` values a stream received, in order.
fn retries(received: &[u8]) -> Vec<u32> {
    let text = String::from_utf8_lossy(received);
    text.lines().filter_map(|line| line.strip_prefix("retry: ")?.parse().ok()).collect()
}

#[test]
fn shutdown_spreads_the_ends_of_a_crowd_of_streams_each_told_a_jittered_retry() {
    const CROWD: usize = 5000;
    let _ = rlimit::increase_nofile_limit(CROWD as u64 + 2048);
    let mut server = Binary::start(&["--heartbeat", "0"]);
    let addr = server.addr;
    let mut poll = mio::Poll::new().unwrap();
    let mut crowd: Vec<Watched> = (0..CROWD)
        .map(|i| {
            let mut stream = TcpStream::connect(addr).unwrap();
            stream.write_all(get("/events").as_bytes()).unwrap();
            stream.set_nonblocking(true).unwrap();
            let mut socket = mio::net::TcpStream::from_std(stream);
            poll.registry().register(&mut socket, mio::Token(i), mio::Interest::READABLE).unwrap();
            Watched { socket, received: Vec::new(), ended_at: None, reset: false }
        })
        .collect();
    wait_for_streams(addr, CROWD as u64);
    let pid = server.child.id().to_string();
    let terminated = Instant::now();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    read_until_all_end(&mut poll, &mut crowd);
    let child = &mut server.child;
    let status = wait_for("bare-sse exits after SIGTERM", WAIT, || child.try_wait().unwrap().ok_or("running"));
    assert!(status.success(), "{status:?}");
    // The server spreads 5000 ends over half its shutdown timeout (2.5 s of
    // the default 5), at 1000 a second; each stream, after its opening's
    // `retry: 3000`, is told one of 3000 to 6000 ms just before its end.
    let window = Duration::from_millis(2500);
    let retry_ms = bare_sse::app::Settings::default().retry_ms;
    let mut told = std::collections::BTreeSet::new();
    for (i, watched) in crowd.iter().enumerate() {
        assert!(!watched.reset, "stream {i} was reset, not ended");
        let retries = retries(&watched.received);
        assert!(retries.len() == 2 && retries[0] == retry_ms, "stream {i}: retries {retries:?}");
        assert!((retry_ms..2 * retry_ms).contains(&retries[1]), "stream {i}: retries {retries:?}");
        assert!(watched.received.ends_with(format!("retry: {}\n\n", retries[1]).as_bytes()), "the retry comes last");
        told.insert(retries[1]);
    }
    assert!(told.len() > CROWD / 10, "jittered: only {} distinct retry values", told.len());
    let mut ends: Vec<Duration> = crowd.iter().map(|w| w.ended_at.unwrap() - terminated).collect();
    ends.sort();
    let bucket = Duration::from_millis(250);
    let mut histogram = vec![0; ends.last().unwrap().as_millis() as usize / 250 + 1];
    for end in &ends {
        histogram[(end.as_millis() / bucket.as_millis()) as usize] += 1;
    }
    eprintln!("stream ends after SIGTERM, per {bucket:?}: {histogram:?}");
    let early = ends.iter().filter(|&&end| end < window / 10).count();
    assert!(early < CROWD / 2, "{early} of {CROWD} streams ended in the first tenth of the drain window");
    assert!(*ends.last().unwrap() >= window / 2, "the last stream ended after only {:?}", ends.last().unwrap());
}
