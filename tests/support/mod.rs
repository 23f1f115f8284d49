//! Helpers shared by the integration tests: a server on a free port, raw TCP
//! clients that read HTTP responses and event streams, with timeouts so a
//! broken server fails a test instead of hanging it, and the one way a test
//! waits for something: [`wait_until`] / [`wait_for`], a bounded poll on a
//! condition. No test sleeps to let something happen.
#![allow(dead_code)]

pub mod mercure;
pub mod redis;

use std::fmt::Debug;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bare_sse::config::Config;
use bare_sse::server::{Handle, Server};

/// How long any single read may wait before the test fails.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a wait for something that must happen may take before the test
/// fails. Generous, since it costs time only when the test fails anyway: a
/// loaded machine must not fail a test that is merely slow.
pub const WAIT: Duration = Duration::from_secs(30);

/// The longest pause between two polls of a condition.
const MAX_POLL_PAUSE: Duration = Duration::from_millis(50);

/// Polls `attempt` until it gives `Ok`, pausing 1 ms, then twice as long each
/// time up to 50 ms. Once `timeout` has passed it tries one last time and
/// gives back what that try gave: `Err` with the last state seen. For a
/// caller that must clean up before it fails; others use [`wait_for`].
pub fn poll<T, S>(timeout: Duration, mut attempt: impl FnMut() -> Result<T, S>) -> Result<T, S> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        let result = attempt();
        let now = Instant::now();
        if result.is_ok() || now >= deadline {
            return result;
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(MAX_POLL_PAUSE);
    }
}

/// Waits until `attempt` gives `Ok(value)` and returns the value; fails the
/// test, naming `what` and the last state `attempt` reported (its `Err`), if
/// that takes longer than `timeout`.
#[track_caller]
pub fn wait_for<T, S: Debug>(what: &str, timeout: Duration, attempt: impl FnMut() -> Result<T, S>) -> T {
    match poll(timeout, attempt) {
        Ok(value) => value,
        Err(last) => panic!("timed out after {timeout:?} waiting until {what}; last seen: {last:?}"),
    }
}

/// Waits until `condition` holds; fails the test, naming `what`, if that
/// takes longer than `timeout`.
#[track_caller]
pub fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    wait_for(what, timeout, || if condition() { Ok(()) } else { Err("the condition did not hold") })
}

/// The text of the server's `GET /metrics`.
#[track_caller]
pub fn metrics(addr: SocketAddr) -> String {
    let response = Client::connect(addr).request(get("/metrics"));
    assert_eq!(response.status, 200, "{response:?}");
    response.text()
}

/// One sample from the server's `/metrics`, named as it is written there,
/// labels and all: `bare_sse_streams`, `bare_sse_loop_streams{loop="0"}`.
#[track_caller]
pub fn metric(addr: SocketAddr, series: &str) -> u64 {
    let text = metrics(addr);
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in /metrics:\n{text}"))
        .parse()
        .unwrap_or_else(|e| panic!("{series} in /metrics is not a count ({e}):\n{text}"))
}

/// Connections the server at `addr` has open, from its own count
/// (`bare_sse_connections`), not counting the one that asks.
#[track_caller]
pub fn open_connections(addr: SocketAddr) -> u64 {
    metric(addr, "bare_sse_connections") - 1
}

/// Waits until the server at `addr` has `expected` event streams open
/// (`bare_sse_streams`: it counts a stream as it opens and as it closes).
#[track_caller]
pub fn wait_for_streams(addr: SocketAddr, expected: u64) {
    wait_for(&format!("the server has {expected} streams open"), WAIT, || {
        let now = metric(addr, "bare_sse_streams");
        if now == expected { Ok(()) } else { Err(format!("{now} streams")) }
    })
}

/// A server running on its own thread, stopped when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    handle: Handle,
    publisher: bare_sse::broadcast::publisher::Publisher,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    /// Starts a server with the default config on 127.0.0.1, port 0.
    #[track_caller]
    pub fn start() -> TestServer {
        TestServer::with(|_| {})
    }

    /// Starts a server after `adjust` has changed the default config.
    #[track_caller]
    pub fn with(adjust: impl FnOnce(&mut Config)) -> TestServer {
        let mut config = Config { listen: "127.0.0.1:0".parse().unwrap(), ..Config::default() };
        adjust(&mut config);
        let server = Server::bind(&config).expect("bind");
        let addr = server.local_addr().unwrap();
        let handle = server.handle();
        let publisher = server.publisher();
        let thread = std::thread::spawn(move || server.run());
        TestServer { addr, handle, publisher, thread: Some(thread) }
    }

    pub fn connect(&self) -> Client {
        Client::connect(self.addr)
    }

    pub fn publisher(&self) -> bare_sse::broadcast::publisher::Publisher {
        self.publisher.clone()
    }

    /// Publishes `message` and returns the number of subscribers reached.
    #[track_caller]
    pub fn publish(&self, message: &str) -> u64 {
        let response = self.connect().publish(message);
        assert_eq!(response.status, 200, "{response:?}");
        response.json()["subscribers"].as_u64().expect("subscribers count")
    }

    /// Opens `GET /events` and waits for the stream to be open.
    #[track_caller]
    pub fn subscribe(&self) -> EventStream {
        self.connect().subscribe("/events")
    }

    /// Publishes until the server reports `expected` subscribers (it learns
    /// of closed connections asynchronously), or fails after a bound.
    #[track_caller]
    pub fn wait_for_subscribers(&self, expected: u64) {
        wait_for(&format!("the server reports {expected} subscribers"), WAIT, || {
            let now = self.publish("ping");
            if now == expected { Ok(()) } else { Err(format!("{now} subscribers")) }
        })
    }

    /// See [`metric`].
    #[track_caller]
    pub fn metric(&self, series: &str) -> u64 {
        metric(self.addr, series)
    }

    /// See [`open_connections`].
    #[track_caller]
    pub fn open_connections(&self) -> u64 {
        open_connections(self.addr)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.handle.shutdown();
        if let Some(thread) = self.thread.take() {
            let result = thread.join();
            if !std::thread::panicking() {
                result.expect("server thread panicked").expect("server loop failed");
            }
        }
    }
}

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// A raw client connection.
pub struct Client {
    reader: BufReader<TcpStream>,
}

impl Client {
    #[track_caller]
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        Client { reader: BufReader::new(stream) }
    }

    pub fn stream(&self) -> &TcpStream {
        self.reader.get_ref()
    }

    #[track_caller]
    pub fn send(&mut self, bytes: impl AsRef<[u8]>) -> &mut Client {
        self.reader.get_mut().write_all(bytes.as_ref()).expect("send");
        self
    }

    /// Reads one response. `head_only` for answers to HEAD (no body even with
    /// a Content-Length).
    #[track_caller]
    pub fn read_response_to(&mut self, head_only: bool) -> Response {
        let mut status_line = String::new();
        self.reader.read_line(&mut status_line).expect("read status line");
        assert!(status_line.starts_with("HTTP/1.1 "), "bad status line {status_line:?}");
        let status: u16 = status_line[9..12].parse().expect("status code");
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).expect("read header");
            assert!(line.ends_with("\r\n"), "header line without CRLF: {line:?}");
            let line = line.trim_end_matches("\r\n");
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').expect("header colon");
            headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
        }
        let mut response = Response { status, headers, body: Vec::new() };
        if status == 100 {
            return response;
        }
        if let Some(length) = response.header("content-length") {
            let length: usize = length.parse().unwrap();
            if !head_only {
                response.body = vec![0; length];
                self.reader.read_exact(&mut response.body).expect("read body");
            }
        }
        response
    }

    #[track_caller]
    pub fn read_response(&mut self) -> Response {
        self.read_response_to(false)
    }

    /// Sends a request and reads its response.
    #[track_caller]
    pub fn request(&mut self, bytes: impl AsRef<[u8]>) -> Response {
        self.send(bytes).read_response()
    }

    #[track_caller]
    pub fn publish(&mut self, message: &str) -> Response {
        let body = serde_json::json!({ "message": message }).to_string();
        self.request(post("/send-event", &body))
    }

    /// Sends `GET path` and reads the stream's head and opening comment.
    #[track_caller]
    pub fn subscribe(mut self, path: &str) -> EventStream {
        let response = self.request(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n"));
        assert_eq!(response.status, 200, "{response:?}");
        assert_eq!(response.header("content-type"), Some("text/event-stream"));
        let mut stream = EventStream { client: self, response };
        let opening = stream.next_raw_block();
        assert!(opening.starts_with(':'), "stream opens with a comment, got {opening:?}");
        stream
    }

    /// Reads whatever arrives next (at least one byte), through the buffer.
    #[track_caller]
    pub fn read_some(&mut self) -> Vec<u8> {
        let buf = self.reader.fill_buf().expect("read");
        assert!(!buf.is_empty(), "connection closed");
        let got = buf.to_vec();
        self.reader.consume(got.len());
        got
    }

    /// Reads until the server closes the connection; returns what came.
    #[track_caller]
    pub fn read_to_end(&mut self) -> Vec<u8> {
        let mut rest = Vec::new();
        self.reader.read_to_end(&mut rest).expect("read to end");
        rest
    }
}

/// A POST request with a Content-Length body.
pub fn post(path: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// A `GET path` request.
pub fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n")
}

/// One event as an EventSource client would dispatch it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Event {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

/// An open event stream, parsed with the WHATWG rules (this server only ever
/// ends lines with LF, which the parser checks).
pub struct EventStream {
    pub client: Client,
    pub response: Response,
}

impl EventStream {
    /// The next block of lines up to a blank line, as text.
    #[track_caller]
    fn next_raw_block(&mut self) -> String {
        let mut block = String::new();
        loop {
            let mut line = String::new();
            let n = self.client.reader.read_line(&mut line).expect("read stream line");
            assert!(n > 0, "stream closed; got so far {block:?}");
            assert!(line.ends_with('\n') && !line.ends_with("\r\n"), "line not ended by LF alone: {line:?}");
            if line == "\n" {
                return block;
            }
            block.push_str(&line);
        }
    }

    /// The next event, skipping comments (heartbeats) and `retry:`.
    #[track_caller]
    pub fn next_event(&mut self) -> Event {
        loop {
            let block = self.next_raw_block();
            let mut event = Event::default();
            let mut data: Option<String> = None;
            for line in block.lines() {
                if line.starts_with(':') {
                    continue;
                }
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "data" => {
                        let d = data.get_or_insert_with(String::new);
                        d.push_str(value);
                        d.push('\n');
                    }
                    "id" => event.id = Some(value.to_owned()),
                    "event" => event.event = Some(value.to_owned()),
                    "retry" => {}
                    other => panic!("unexpected field {other:?} in {block:?}"),
                }
            }
            if let Some(mut data) = data {
                data.pop();
                event.data = data;
                return event;
            }
        }
    }

    /// The next event's data.
    #[track_caller]
    pub fn next_data(&mut self) -> String {
        self.next_event().data
    }
}

/// Publishes `count` messages `{prefix}0`, `{prefix}1`, ... one after the
/// other on one keep-alive connection, on a thread of its own; the handle
/// gives back the ids the server answered, in order.
pub fn publish_in_background(addr: SocketAddr, prefix: String, count: usize) -> JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let mut client = Client::connect(addr);
        (0..count)
            .map(|i| {
                let response = client.publish(&format!("{prefix}{i}"));
                assert_eq!(response.status, 200, "{response:?}");
                response.json()["id"].as_str().expect("an id").to_owned()
            })
            .collect()
    })
}

/// The `bare-sse` binary running as a child process, killed when dropped.
pub struct Binary {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    /// The start line (address and limits in force).
    pub start_line: String,
    /// The rest of stderr, as a thread reads it.
    log: Arc<Mutex<Log>>,
}

/// What the binary wrote to stderr after its start line, line by line.
#[derive(Debug, Default)]
struct Log {
    text: String,
    /// Stderr is closed: the process has exited.
    closed: bool,
}

impl Binary {
    /// Starts `bare-sse --listen 127.0.0.1:0 ARGS` and waits for its start line.
    #[track_caller]
    pub fn start(args: &[&str]) -> Binary {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_bare-sse"));
        command.args(["--listen", "127.0.0.1:0"]).args(args);
        Binary::spawn(&mut command)
    }

    /// Runs `command` (which must start bare-sse on some address) and waits
    /// for its start line.
    #[track_caller]
    pub fn spawn(command: &mut std::process::Command) -> Binary {
        let mut child = command
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn bare-sse");
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut start_line = String::new();
        stderr.read_line(&mut start_line).expect("read start line");
        let addr = start_line
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("no address in start line {start_line:?}"));
        // Read on as the server writes, so that a test can wait for a line
        // (and the server never blocks on a full pipe).
        let log = Arc::new(Mutex::new(Log::default()));
        let shared = log.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            while stderr.read_line(&mut line).is_ok_and(|n| n > 0) {
                shared.lock().unwrap().text.push_str(&line);
                line.clear();
            }
            shared.lock().unwrap().closed = true;
        });
        Binary { child, addr, start_line, log }
    }

    /// What the server has logged so far after its start line.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().text.clone()
    }

    /// Waits until `condition` holds of what the server has logged; returns
    /// the log as it was then.
    #[track_caller]
    pub fn wait_for_log(&self, what: &str, condition: impl Fn(&str) -> bool) -> String {
        wait_for(what, WAIT, || {
            let log = self.log();
            if condition(&log) { Ok(log) } else { Err(log) }
        })
    }

    /// Everything the server logged after its start line, once it has
    /// exited (call after [`Binary::kill`] or [`Binary::terminate`]).
    #[track_caller]
    pub fn whole_log(&self) -> String {
        wait_until("the server's stderr is closed", WAIT, || self.log.lock().unwrap().closed);
        self.log()
    }

    /// Kills the server (SIGKILL) and waits for it to exit.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// See [`metric`].
    #[track_caller]
    pub fn metric(&self, series: &str) -> u64 {
        metric(self.addr, series)
    }

    /// Sends SIGTERM and waits for the process to exit; fails the test if
    /// it is still running 10 s later (the graceful shutdown is bounded by
    /// `--shutdown-timeout`, 5 s by default).
    #[track_caller]
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.terminate_within(Duration::from_secs(10))
    }

    /// Sends SIGTERM and waits for the process to exit; fails the test if it
    /// is still running after `bound`.
    #[track_caller]
    pub fn terminate_within(&mut self, bound: Duration) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let sent = std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("run kill");
        assert!(sent.success(), "kill -TERM {pid}");
        let child = &mut self.child;
        wait_for("bare-sse exits after SIGTERM", bound, || {
            child.try_wait().expect("wait for bare-sse").ok_or("running")
        })
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
