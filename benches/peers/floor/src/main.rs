//! The reference floor: the least work an SSE fan-out can do, to show what
//! the kernel itself costs.
//!
//! - `GET /events`: one header block is written, once, and the connection
//!   becomes a subscriber. Its body is close-delimited (no chunking).
//! - `POST /send-event`: the body is found by `Content-Length`, the message
//!   is the value of `"message"` when the body is a JSON object (found by a
//!   plain scan: escapes are not decoded) or else the raw body, the frame
//!   `data: <message>\n\n` is built once, and each subscriber gets exactly
//!   one non-blocking `write()`. A short or refused write is counted and
//!   skipped: that subscriber's stream is then broken, which is the price of
//!   doing no buffering. The publisher gets a small JSON answer.
//!
//! Anything else is answered 404 and closed. One thread, one mio `Poll`.
//!
//! Usage: `ssepeer-floor --listen 127.0.0.1:8080`

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

const LISTENER: Token = Token(usize::MAX);
const MAX_REQUEST_BYTES: usize = 64 * 1024;
const SSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\r\n";

struct Conn {
    stream: TcpStream,
    input: Vec<u8>,
    output: Vec<u8>,
    subscriber: bool,
}

struct Floor {
    poll: Poll,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    subscribers: Vec<usize>,
    short_writes: u64,
}

/// What one complete request at the front of a connection's input is.
enum Request {
    Subscribe,
    Publish { message: Vec<u8> },
    Other,
}

fn main() -> io::Result<()> {
    let mut listen: SocketAddr = "127.0.0.1:8080".parse().map_err(io::Error::other)?;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match (flag.as_str(), args.next()) {
            ("--listen", Some(addr)) => listen = addr.parse().map_err(io::Error::other)?,
            _ => return Err(io::Error::other(format!("usage: ssepeer-floor --listen ADDR ({flag}?)"))),
        }
    }
    let mut listener = TcpListener::bind(listen)?;
    let mut floor =
        Floor { poll: Poll::new()?, conns: Vec::new(), free: Vec::new(), subscribers: Vec::new(), short_writes: 0 };
    floor.poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
    eprintln!("ssepeer-floor listening on {listen}");
    let mut events = Events::with_capacity(1024);
    loop {
        if let Err(e) = floor.poll.poll(&mut events, Some(Duration::from_secs(1))) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for event in events.iter() {
            match event.token() {
                LISTENER => floor.accept(&listener),
                Token(i) => floor.ready(i, event.is_writable()),
            }
        }
    }
}

impl Floor {
    fn accept(&mut self, listener: &TcpListener) {
        loop {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let i = self.free.pop().unwrap_or_else(|| {
                        self.conns.push(None);
                        self.conns.len() - 1
                    });
                    if self.poll.registry().register(&mut stream, Token(i), Interest::READABLE).is_err() {
                        self.free.push(i);
                        continue;
                    }
                    self.conns[i] = Some(Conn { stream, input: Vec::new(), output: Vec::new(), subscriber: false });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Out of descriptors or the like: try again on the next event.
                Err(_) => return,
            }
        }
    }

    fn close(&mut self, i: usize) {
        if let Some(mut conn) = self.conns[i].take() {
            let _ = self.poll.registry().deregister(&mut conn.stream);
            if conn.subscriber {
                self.subscribers.retain(|&s| s != i);
            }
            self.free.push(i);
        }
    }

    fn ready(&mut self, i: usize, writable: bool) {
        let mut buf = [0u8; 16 * 1024];
        let mut closed = false;
        let Some(conn) = self.conns.get_mut(i).and_then(Option::as_mut) else { return };
        if writable && flush(conn).is_err() {
            return self.close(i);
        }
        loop {
            match conn.stream.read(&mut buf) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) if conn.subscriber => {
                    let _ = n; // a subscriber has nothing to say: ignore it
                }
                Ok(n) => conn.input.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    closed = true;
                    break;
                }
            }
        }
        if conn.input.len() > MAX_REQUEST_BYTES {
            closed = true;
        }
        while !closed {
            let Some(conn) = self.conns[i].as_mut() else { return };
            let Some((used, request)) = parse_request(&conn.input) else { break };
            conn.input.drain(..used);
            match request {
                Request::Subscribe => {
                    // The head is tiny and the socket new: one write does it.
                    closed = !matches!(conn.stream.write(SSE_HEAD), Ok(n) if n == SSE_HEAD.len());
                    conn.subscriber = true;
                    self.subscribers.push(i);
                    break;
                }
                Request::Publish { message } => {
                    let mut frame = Vec::with_capacity(message.len() + 8);
                    frame.extend_from_slice(b"data: ");
                    frame.extend_from_slice(&message);
                    frame.extend_from_slice(b"\n\n");
                    let n = self.fan_out(&frame);
                    let body = format!("{{\"ok\":true,\"subscribers\":{n}}}");
                    let Some(conn) = self.conns[i].as_mut() else { return };
                    let _ = write!(
                        conn.output,
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    closed = flush(conn).is_err();
                }
                Request::Other => {
                    let _ =
                        conn.stream.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    closed = true;
                }
            }
        }
        if closed {
            self.close(i);
        }
    }

    /// One `write()` per subscriber; returns how many took the whole frame.
    fn fan_out(&mut self, frame: &[u8]) -> usize {
        let mut whole = 0;
        let mut dead = Vec::new();
        for &s in &self.subscribers {
            let Some(conn) = self.conns[s].as_mut() else { continue };
            match conn.stream.write(frame) {
                Ok(n) if n == frame.len() => whole += 1,
                Ok(_) => self.short_writes += 1,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.short_writes += 1,
                Err(_) => dead.push(s),
            }
        }
        for s in dead {
            self.close(s);
        }
        if self.short_writes > 0 && whole < self.subscribers.len() {
            eprintln!("ssepeer-floor: {} short writes so far", self.short_writes);
        }
        whole
    }
}

/// Writes what is queued; asks for WRITABLE while something is left.
fn flush(conn: &mut Conn) -> io::Result<()> {
    while !conn.output.is_empty() {
        match conn.stream.write(&conn.output) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                conn.output.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The first complete request in `input`, and how many bytes it takes.
fn parse_request(input: &[u8]) -> Option<(usize, Request)> {
    let head_end = input.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = &input[..head_end];
    if head.starts_with(b"GET /events ") || head.starts_with(b"GET /events?") {
        return Some((head_end, Request::Subscribe));
    }
    if !head.starts_with(b"POST /send-event ") {
        return Some((head_end, Request::Other));
    }
    let length = head
        .split(|&b| b == b'\n')
        .find_map(|line| {
            let colon = line.iter().position(|&b| b == b':')?;
            line[..colon]
                .eq_ignore_ascii_case(b"content-length")
                .then(|| std::str::from_utf8(&line[colon + 1..]).ok()?.trim().parse::<usize>().ok())
                .flatten()
        })
        .unwrap_or(0);
    if input.len() < head_end + length {
        return None;
    }
    let body = &input[head_end..head_end + length];
    Some((head_end + length, Request::Publish { message: message_of(body).to_vec() }))
}

/// The `"message"` string of a JSON object body, undecoded, or the body.
fn message_of(body: &[u8]) -> &[u8] {
    let key = b"\"message\"";
    let Some(at) = body.windows(key.len()).position(|w| w == key) else { return body };
    let rest = &body[at + key.len()..];
    let Some(open) = rest.iter().position(|&b| b == b'"') else { return body };
    let value = &rest[open + 1..];
    let mut escaped = false;
    for (j, &b) in value.iter().enumerate() {
        match b {
            b'\\' if !escaped => escaped = true,
            b'"' if !escaped => return &value[..j],
            _ => escaped = false,
        }
    }
    body
}
