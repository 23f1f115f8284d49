//! Graceful shutdown over real sockets: every event a publisher was answered
//! 200 for reaches every open stream before the server closes it, on any
//! number of event loops.

mod support;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use bare_sse::config::Config;
use bare_sse::server::Server;
use support::{Client, IO_TIMEOUT, WAIT, post, wait_for_streams, wait_until};

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
