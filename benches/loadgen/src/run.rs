//! The event loop: every subscriber and publisher connection on one mio
//! `Poll`, in one thread.
//!
//! A run has three phases, each bounded by the `--timeout`:
//!
//! ```text
//! subscribe   connect N streams, C at a time, until each has its 200 head
//!             (stream i to target i mod T: a cluster's nodes share them)
//! settle      keep reading (comments, retry) for --settle-ms: idle memory
//! publish     connect K publishers to the first target, send M messages,
//!             read every stream until each live subscriber has every
//!             acknowledged message
//! ```
//!
//! Each message is `"<seq> <publisher> <nanos>"` (with `--api mercure`, the
//! `data` field of a form-encoded update): a global sequence number, the
//! publisher connection that sent it, and nanoseconds since loadgen
//! started, taken just before the request is queued. A subscriber parses its
//! stream as `EventSource` does (chunked coding first if the response used
//! it), and checks each message against a bitset of the sequence numbers it
//! has seen (duplicates) and the last sequence number per publisher
//! (out of order: a server must keep one connection's messages in order).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::chunked;
use crate::cli::{Api, Config, Pacing};
use crate::mercure;
use crate::sse;
use crate::sys;

/// Largest response head accepted, from subscriber or publisher streams.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Largest SSE line accepted.
const MAX_LINE_BYTES: usize = 64 * 1024;
/// Size of the one read buffer shared by all connections.
const READ_BUF_BYTES: usize = 64 * 1024;
/// Reconnections allowed to each publisher before it is given up.
const MAX_PUBLISHER_RECONNECTS: u32 = 10;
/// Longest single wait in `poll`, so that deadlines are looked at.
const MAX_POLL_WAIT: Duration = Duration::from_millis(100);

/// What a subscriber's stream is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SubState {
    /// TCP connect in progress or request not fully written.
    Connecting,
    /// Request sent, reading the response head.
    Head,
    /// 200 head received, reading events.
    Streaming,
    /// Failed before streaming, or closed afterwards.
    Closed,
}

/// What one subscriber has received, for the missing/duplicate checks.
#[derive(Debug, Default)]
struct Track {
    seen: Vec<u64>,
    distinct: u64,
    /// Last sequence number seen from each publisher, `u64::MAX` for none.
    last_per_pub: Vec<u64>,
}

#[derive(Debug)]
struct Sub {
    stream: Option<TcpStream>,
    state: SubState,
    written: usize,
    head: Vec<u8>,
    chunked: Option<chunked::Decoder>,
    parser: sse::Parser,
    track: Track,
}

/// How the body of the publisher response being read ends.
#[derive(Debug)]
enum Body {
    Length(u64),
    Chunked(chunked::Decoder),
    UntilClose,
}

#[derive(Debug)]
struct Pub {
    stream: Option<TcpStream>,
    connected: bool,
    wants_write: bool,
    out: Vec<u8>,
    out_pos: usize,
    inflight: VecDeque<u64>,
    inbuf: Vec<u8>,
    body: Option<(u16, Body, bool)>,
    reconnects: u32,
    dead: bool,
}

/// Counts over all subscribers.
#[derive(Debug)]
struct Tally {
    deliveries: u64,
    duplicated: u64,
    out_of_order: u64,
    foreign_events: u64,
    distinct_live: u64,
    last_delivery: Option<Instant>,
    latency_us: Histogram<u64>,
}

/// Everything `main` prints, phase by phase.
#[derive(Debug, Default)]
pub struct Outcome {
    pub subscribers_connected: usize,
    pub subscribe_errors: usize,
    pub first_subscribe_error: Option<String>,
    pub subscribers_dropped: usize,
    pub connect: Duration,
    pub connect_timed_out: bool,
    pub published_ok: u64,
    pub publish_errors: u64,
    pub unsent: u64,
    pub first_publish_error: Option<String>,
    pub publish_time: Duration,
    pub deliver_time: Duration,
    pub publish_timed_out: bool,
    pub deliveries: u64,
    pub expected_deliveries: u64,
    pub missing: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub foreign_events: u64,
    pub latency_p50_us: Option<u64>,
    pub latency_p99_us: Option<u64>,
    pub latency_max_us: Option<u64>,
}

pub struct Run {
    cfg: Config,
    poll: Poll,
    events: Events,
    epoch: Instant,
    buf: Vec<u8>,
    /// The `GET` request for each target (they differ by `Host`).
    sub_requests: Vec<Vec<u8>>,
    /// With `--api mercure`: the topic, form-encoded once.
    encoded_topic: String,
    subs: Vec<Sub>,
    pubs: Vec<Pub>,
    tally: Tally,
    acked: Vec<u64>,
    next_seq: u64,
    next_pub: usize,
    publish_start: Option<Instant>,
    last_response: Option<Instant>,
    /// Subscribers connecting or waiting for their head.
    opening: usize,
    /// Subscribers streaming.
    live: usize,
    /// In the subscribe phase: a stream that ends now was not really
    /// opened (a server over its stream cap answers 200, a `retry:`, and
    /// closes), so it counts as a subscribe error, not a live subscriber.
    subscribing: bool,
    pub out: Outcome,
}

impl Run {
    pub fn new(cfg: Config) -> io::Result<Run> {
        let sub_requests = cfg
            .targets
            .iter()
            .map(|t| {
                format!(
                    "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n",
                    cfg.events_path, t.host
                )
                .into_bytes()
            })
            .collect();
        let latency_us =
            Histogram::new_with_bounds(1, 3_600_000_000, 3).map_err(|e| io::Error::other(format!("histogram: {e}")))?;
        Ok(Run {
            poll: Poll::new()?,
            events: Events::with_capacity(1024),
            epoch: Instant::now(),
            buf: vec![0; READ_BUF_BYTES],
            sub_requests,
            encoded_topic: match &cfg.api {
                Api::Mercure(m) => mercure::form_encode(&m.topic),
                Api::Seeds => String::new(),
            },
            subs: Vec::new(),
            pubs: Vec::new(),
            tally: Tally {
                deliveries: 0,
                duplicated: 0,
                out_of_order: 0,
                foreign_events: 0,
                distinct_live: 0,
                last_delivery: None,
                latency_us,
            },
            acked: vec![0; words(cfg.messages)],
            next_seq: 0,
            next_pub: 0,
            publish_start: None,
            last_response: None,
            opening: 0,
            live: 0,
            subscribing: false,
            out: Outcome::default(),
            cfg,
        })
    }

    fn npubs(&self) -> usize {
        self.cfg.publishers
    }

    // ---------------------------------------------------------------- phases

    /// Opens `n` subscriber streams and waits until each has its head, or
    /// failed, or the timeout passed.
    pub fn subscribe(&mut self, n: usize) {
        let start = Instant::now();
        let deadline = start + self.cfg.timeout;
        let mut next = 0;
        self.subscribing = true;
        loop {
            while next < n && self.opening < self.cfg.connect_concurrency {
                self.open_sub();
                next += 1;
            }
            if next == n && self.opening == 0 {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                self.out.connect_timed_out = true;
                for i in 0..self.subs.len() {
                    if matches!(self.subs[i].state, SubState::Connecting | SubState::Head) {
                        self.fail_sub(i, "no response head before the timeout");
                    }
                }
                break;
            }
            self.turn(deadline - now);
        }
        self.subscribing = false;
        self.out.connect = start.elapsed();
        self.out.subscribers_connected = self.live;
    }

    /// Keeps reading the streams for `time` without publishing.
    pub fn settle(&mut self, time: Duration) {
        let deadline = Instant::now() + time;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            if left.is_zero() {
                break;
            }
            self.turn(left);
        }
    }

    /// Connects the publishers, sends every message and waits for every
    /// delivery. `before_first` is called once, right before the first
    /// request, to read the server's CPU time.
    pub fn publish(&mut self, before_first: &mut dyn FnMut()) {
        let n = self.cfg.messages;
        let deadline = Instant::now() + self.cfg.timeout;
        for _ in 0..self.npubs() {
            let p = self.new_pub();
            self.pubs.push(p);
        }
        for i in 0..self.npubs() {
            self.connect_pub(i);
        }
        // Wait for the publisher connections before the clock starts.
        while self.pubs.iter().any(|p| !p.connected && !p.dead) && Instant::now() < deadline {
            self.turn(MAX_POLL_WAIT);
        }
        let words = words(n);
        // Only streams open now are owed the messages (one turned away or
        // closed before keeps an empty track, which `finish_publish` skips).
        for sub in self.subs.iter_mut().filter(|s| s.state == SubState::Streaming) {
            sub.track.seen = vec![0; words];
            sub.track.last_per_pub = vec![u64::MAX; self.cfg.publishers];
        }
        before_first();
        let start = Instant::now();
        self.publish_start = Some(start);
        loop {
            let now = Instant::now();
            let next_due = self.fill(now);
            self.flush_all();
            if self.publish_done() {
                break;
            }
            if now >= deadline {
                self.out.publish_timed_out = true;
                break;
            }
            let mut wait = deadline - now;
            if let Some(due) = next_due {
                wait = wait.min(due.saturating_duration_since(now));
            }
            self.turn(wait);
        }
        self.finish_publish(start);
    }

    fn publish_done(&self) -> bool {
        let all_sent = self.next_seq == self.cfg.messages || self.pubs.iter().all(|p| p.dead);
        let all_answered = self.pubs.iter().all(|p| p.inflight.is_empty() || p.dead);
        all_sent && all_answered && self.tally.distinct_live >= self.acked_count() * self.live as u64
    }

    fn acked_count(&self) -> u64 {
        self.acked.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    fn finish_publish(&mut self, start: Instant) {
        let acked = self.acked_count();
        self.out.published_ok = acked;
        self.out.unsent = self.cfg.messages - self.next_seq;
        for p in &self.pubs {
            self.out.publish_errors += p.inflight.len() as u64;
        }
        self.out.publish_errors += self.out.unsent;
        self.out.publish_time = self.last_response.map(|t| t - start).unwrap_or_default();
        self.out.deliver_time =
            self.tally.last_delivery.map(|t| t.saturating_duration_since(start)).unwrap_or_default();
        let mut expected = 0;
        let mut missing = 0;
        for sub in self.subs.iter().filter(|s| s.state == SubState::Streaming || !s.track.seen.is_empty()) {
            expected += acked;
            for (w, a) in self.acked.iter().enumerate() {
                let have = sub.track.seen.get(w).copied().unwrap_or(0);
                missing += u64::from((a & !have).count_ones());
            }
        }
        self.out.expected_deliveries = expected;
        self.out.missing = missing;
        let t = &self.tally;
        self.out.deliveries = t.deliveries;
        self.out.duplicated = t.duplicated;
        self.out.out_of_order = t.out_of_order;
        self.out.foreign_events = t.foreign_events;
        if !t.latency_us.is_empty() {
            self.out.latency_p50_us = Some(t.latency_us.value_at_quantile(0.50));
            self.out.latency_p99_us = Some(t.latency_us.value_at_quantile(0.99));
            self.out.latency_max_us = Some(t.latency_us.max());
        }
    }

    /// Subscribers streaming now.
    pub fn live(&self) -> usize {
        self.live
    }

    /// Subscribers still streaming at the end.
    pub fn finish_subscribers(&mut self) {
        self.out.subscribers_dropped = self.out.subscribers_connected.saturating_sub(self.live);
    }

    // ------------------------------------------------------------ the loop

    /// One `poll` and the handling of what it reported.
    fn turn(&mut self, wait: Duration) {
        let wait = wait.min(MAX_POLL_WAIT);
        if let Err(e) = self.poll.poll(&mut self.events, Some(wait)) {
            if e.kind() != io::ErrorKind::Interrupted {
                eprintln!("loadgen: poll: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
            return;
        }
        let ready: Vec<(usize, bool, bool, bool)> = self
            .events
            .iter()
            .map(|e| {
                let closed = e.is_read_closed() || e.is_error();
                (e.token().0, e.is_readable() || closed, e.is_writable(), closed)
            })
            .collect();
        for (token, readable, writable, closed) in ready {
            if token < self.npubs() {
                self.on_pub(token, readable, writable);
            } else if token - self.npubs() < self.subs.len() {
                self.on_sub(token - self.npubs(), readable, writable, closed);
            }
        }
    }

    // --------------------------------------------------------- subscribers

    fn open_sub(&mut self) {
        let index = self.subs.len();
        let mut sub = Sub {
            stream: None,
            state: SubState::Connecting,
            written: 0,
            head: Vec::new(),
            chunked: None,
            parser: sse::Parser::new(MAX_LINE_BYTES),
            track: Track::default(),
        };
        let token = Token(self.npubs() + index);
        let source = (!self.cfg.sources.is_empty()).then(|| self.cfg.sources[index % self.cfg.sources.len()]);
        let target = self.cfg.targets[index % self.cfg.targets.len()].addr;
        let opened = sys::connect(target, source).and_then(|mut s| {
            sys::reset_on_close(&s);
            self.poll.registry().register(&mut s, token, Interest::READABLE | Interest::WRITABLE)?;
            Ok(s)
        });
        match opened {
            Ok(s) => {
                sub.stream = Some(s);
                self.opening += 1;
            }
            Err(e) => {
                sub.state = SubState::Closed;
                self.note_sub_error(format!("connect: {e}"));
            }
        }
        self.subs.push(sub);
    }

    fn note_sub_error(&mut self, why: String) {
        self.out.subscribe_errors += 1;
        self.out.first_subscribe_error.get_or_insert(why);
    }

    fn fail_sub(&mut self, i: usize, why: &str) {
        let sub = &mut self.subs[i];
        let was = sub.state;
        sub.state = SubState::Closed;
        if let Some(mut s) = sub.stream.take() {
            let _ = self.poll.registry().deregister(&mut s);
        }
        match was {
            SubState::Connecting | SubState::Head => {
                self.opening -= 1;
                self.note_sub_error(why.to_string());
            }
            SubState::Streaming => {
                self.live -= 1;
                self.tally.distinct_live -= sub.track.distinct;
                if self.subscribing {
                    self.note_sub_error(format!("{why} right after its head"));
                }
            }
            SubState::Closed => {}
        }
    }

    /// `closed`: the event said the peer has closed (or the socket
    /// failed), so the socket is read to its end even after a short read.
    fn on_sub(&mut self, i: usize, readable: bool, writable: bool, closed: bool) {
        if self.subs[i].state == SubState::Connecting && (writable || readable) {
            match self.send_sub_request(i) {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    self.fail_sub(i, &format!("request: {e}"));
                    return;
                }
            }
        }
        if !readable || !matches!(self.subs[i].state, SubState::Head | SubState::Streaming) {
            return;
        }
        loop {
            let Some(stream) = self.subs[i].stream.as_mut() else {
                return;
            };
            match stream.read(&mut self.buf) {
                Ok(0) => {
                    self.fail_sub(i, "connection closed by the server");
                    return;
                }
                Ok(n) => {
                    if let Err(why) = self.take_sub_bytes(i, n) {
                        self.fail_sub(i, &why);
                        return;
                    }
                    // A short read emptied the socket: epoll reports the
                    // next arrival as a new edge, so skip the read that
                    // would only say WouldBlock (half the syscalls). Not
                    // when the close came in the same edge: no other edge
                    // would tell it (a stream turned away with a `retry:`
                    // and closed at once was counted live for good).
                    if n < self.buf.len() && !closed {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.fail_sub(i, &format!("read: {e}"));
                    return;
                }
            }
        }
    }

    /// Completes the connect and writes the request. `Ok(false)`: not yet.
    fn send_sub_request(&mut self, i: usize) -> io::Result<bool> {
        let sub = &mut self.subs[i];
        let Some(stream) = sub.stream.as_mut() else {
            return Ok(false);
        };
        if let Some(e) = stream.take_error()? {
            return Err(e);
        }
        match stream.peer_addr() {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(false),
            Err(e) => return Err(e),
        }
        let request = &self.sub_requests[i % self.sub_requests.len()];
        while sub.written < request.len() {
            match stream.write(&request[sub.written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => sub.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.poll.registry().reregister(stream, Token(self.cfg.publishers + i), Interest::READABLE)?;
        sub.state = SubState::Head;
        Ok(true)
    }

    /// Handles `n` bytes just read into the shared buffer for subscriber `i`.
    fn take_sub_bytes(&mut self, i: usize, n: usize) -> Result<(), String> {
        let now_ns = self.epoch.elapsed().as_nanos() as u64;
        let now = Instant::now();
        let Run { subs, tally, buf, opening, live, .. } = self;
        let sub = &mut subs[i];
        let mut input = &buf[..n];
        let head_rest;
        if sub.state == SubState::Head {
            if sub.head.len() + n > MAX_HEAD_BYTES {
                return Err("response head too long".into());
            }
            sub.head.extend_from_slice(input);
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut headers);
            let used = match resp.parse(&sub.head) {
                Ok(httparse::Status::Complete(used)) => used,
                Ok(httparse::Status::Partial) => return Ok(()),
                Err(e) => return Err(format!("bad response head: {e}")),
            };
            if resp.code != Some(200) {
                return Err(format!("status {:?}", resp.code));
            }
            let content_type = header(resp.headers, "content-type").unwrap_or_default();
            if !content_type.to_ascii_lowercase().starts_with("text/event-stream") {
                return Err(format!("content-type {content_type:?}"));
            }
            if header(resp.headers, "transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
                sub.chunked = Some(chunked::Decoder::default());
            }
            sub.state = SubState::Streaming;
            *opening -= 1;
            *live += 1;
            head_rest = std::mem::take(&mut sub.head).split_off(used);
            input = &head_rest;
        }
        let pubs = sub.track.last_per_pub.len();
        let track = &mut sub.track;
        let parser = &mut sub.parser;
        let mut on_event = |ev: sse::Event<'_>| deliver(track, tally, pubs, &ev, now_ns, now);
        let mut sse_error = None;
        match sub.chunked.as_mut() {
            Some(decoder) => {
                let (_, done) = decoder
                    .feed(input, &mut |data| {
                        if let Err(e) = parser.feed(data, &mut on_event) {
                            sse_error = Some(e);
                        }
                    })
                    .map_err(|e| format!("chunked coding: {e:?}"))?;
                if done {
                    return Err("stream ended (last chunk)".into());
                }
            }
            None => parser.feed(input, &mut on_event).map_err(|e| format!("event stream: {e:?}"))?,
        }
        match sse_error {
            Some(e) => Err(format!("event stream: {e:?}")),
            None => Ok(()),
        }
    }

    // ---------------------------------------------------------- publishers

    fn new_pub(&self) -> Pub {
        Pub {
            stream: None,
            connected: false,
            wants_write: true,
            out: Vec::new(),
            out_pos: 0,
            inflight: VecDeque::new(),
            inbuf: Vec::new(),
            body: None,
            reconnects: 0,
            dead: false,
        }
    }

    fn connect_pub(&mut self, i: usize) {
        let opened = TcpStream::connect(self.cfg.targets[0].addr).and_then(|mut s| {
            s.set_nodelay(true)?;
            sys::reset_on_close(&s);
            self.poll.registry().register(&mut s, Token(i), Interest::READABLE | Interest::WRITABLE)?;
            Ok(s)
        });
        let p = &mut self.pubs[i];
        p.connected = false;
        p.wants_write = true;
        p.out.clear();
        p.out_pos = 0;
        p.inbuf.clear();
        p.body = None;
        match opened {
            Ok(s) => p.stream = Some(s),
            Err(e) => {
                p.dead = true;
                self.out.first_publish_error.get_or_insert(format!("connect: {e}"));
            }
        }
    }

    /// Drops publisher `i`'s connection: its requests in flight are lost
    /// (counted as errors) and it reconnects, a bounded number of times.
    fn reset_pub(&mut self, i: usize, why: &str) {
        let p = &mut self.pubs[i];
        if let Some(mut s) = p.stream.take() {
            let _ = self.poll.registry().deregister(&mut s);
        }
        self.out.publish_errors += p.inflight.len() as u64;
        p.inflight.clear();
        self.out.first_publish_error.get_or_insert(why.to_string());
        p.reconnects += 1;
        if p.reconnects > MAX_PUBLISHER_RECONNECTS {
            p.dead = true;
            p.connected = false;
        } else {
            self.connect_pub(i);
        }
    }

    /// Requests in flight allowed on one publisher connection.
    fn depth(&self) -> usize {
        match self.cfg.pacing {
            Pacing::Burst { depth } => depth,
            Pacing::Sequential | Pacing::Rate { .. } => 1,
        }
    }

    /// Queues every message that is due on publishers with room. Returns
    /// when the next message is due, if it is paced and not due yet.
    fn fill(&mut self, now: Instant) -> Option<Instant> {
        let depth = self.depth();
        let k = self.npubs();
        while self.next_seq < self.cfg.messages {
            if let (Pacing::Rate { per_s }, Some(start)) = (self.cfg.pacing, self.publish_start) {
                let due = start + Duration::from_secs_f64(self.next_seq as f64 / per_s);
                if due > now {
                    return Some(due);
                }
            }
            // No publisher has room: wait for a response.
            let i = (0..k)
                .map(|o| (self.next_pub + o) % k)
                .find(|&i| self.pubs[i].connected && !self.pubs[i].dead && self.pubs[i].inflight.len() < depth)?;
            self.next_pub = (i + 1) % k;
            let seq = self.next_seq;
            self.next_seq += 1;
            let nanos = self.epoch.elapsed().as_nanos();
            let text = format!("{seq} {i} {nanos}");
            let (body, content_type, authorization) = match &self.cfg.api {
                Api::Mercure(m) => (
                    mercure::publish_body(&self.encoded_topic, &text),
                    "application/x-www-form-urlencoded",
                    Some(m.authorization.as_str()),
                ),
                Api::Seeds if self.cfg.raw_body => (text, "text/plain", None),
                Api::Seeds => (serde_json::json!({ "message": text }).to_string(), "application/json", None),
            };
            let p = &mut self.pubs[i];
            let _ = write!(p.out, "POST {} HTTP/1.1\r\nHost: {}\r\n", self.cfg.send_path, self.cfg.targets[0].host);
            if let Some(authorization) = authorization {
                let _ = write!(p.out, "Authorization: {authorization}\r\n");
            }
            let _ = write!(p.out, "Content-Type: {}\r\nContent-Length: {}\r\n\r\n{}", content_type, body.len(), body);
            p.inflight.push_back(seq);
        }
        None
    }

    fn flush_all(&mut self) {
        for i in 0..self.npubs() {
            if self.pubs[i].connected && self.pubs[i].out_pos < self.pubs[i].out.len() {
                self.flush_pub(i);
            }
        }
    }

    fn flush_pub(&mut self, i: usize) {
        let p = &mut self.pubs[i];
        let Some(stream) = p.stream.as_mut() else {
            return;
        };
        let mut failed = None;
        while p.out_pos < p.out.len() {
            match stream.write(&p.out[p.out_pos..]) {
                Ok(0) => {
                    failed = Some("write returned 0".to_string());
                    break;
                }
                Ok(n) => p.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    failed = Some(format!("write: {e}"));
                    break;
                }
            }
        }
        if p.out_pos == p.out.len() {
            p.out.clear();
            p.out_pos = 0;
        }
        let wants_write = !p.out.is_empty();
        if wants_write != p.wants_write {
            p.wants_write = wants_write;
            let interest = if wants_write { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
            if let Err(e) = self.poll.registry().reregister(stream, Token(i), interest) {
                failed = Some(format!("reregister: {e}"));
            }
        }
        if let Some(why) = failed {
            self.reset_pub(i, &why);
        }
    }

    fn on_pub(&mut self, i: usize, readable: bool, writable: bool) {
        if self.pubs[i].dead {
            return;
        }
        if !self.pubs[i].connected {
            let Some(stream) = self.pubs[i].stream.as_mut() else {
                return;
            };
            match stream.take_error() {
                Ok(None) => {}
                Ok(Some(e)) | Err(e) => return self.reset_pub(i, &format!("connect: {e}")),
            }
            match stream.peer_addr() {
                Ok(_) => self.pubs[i].connected = true,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => return self.reset_pub(i, &format!("connect: {e}")),
            }
        }
        if writable {
            self.flush_pub(i);
        }
        if readable {
            self.read_pub(i);
        }
    }

    fn read_pub(&mut self, i: usize) {
        loop {
            let Some(stream) = self.pubs[i].stream.as_mut() else {
                return;
            };
            match stream.read(&mut self.buf) {
                Ok(0) => {
                    // A close-delimited response ends here.
                    if let Some((status, Body::UntilClose, _)) = self.pubs[i].body {
                        self.pubs[i].body = None;
                        self.finish_response(i, status);
                    }
                    let why = "publisher connection closed by the server";
                    if self.pubs[i].inflight.is_empty() && self.next_seq == self.cfg.messages {
                        // Nothing lost and nothing left to send: just close.
                        let p = &mut self.pubs[i];
                        if let Some(mut s) = p.stream.take() {
                            let _ = self.poll.registry().deregister(&mut s);
                        }
                        p.dead = true;
                    } else {
                        self.reset_pub(i, why);
                    }
                    return;
                }
                Ok(n) => {
                    let bytes = &self.buf[..n];
                    let p = &mut self.pubs[i];
                    if p.inbuf.len() + n > MAX_HEAD_BYTES * 4 && p.body.is_none() {
                        return self.reset_pub(i, "publisher response too long");
                    }
                    p.inbuf.extend_from_slice(bytes);
                    if let Err(why) = self.take_responses(i) {
                        return self.reset_pub(i, &why);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.reset_pub(i, &format!("read: {e}")),
            }
        }
    }

    /// Reads every complete response out of publisher `i`'s input.
    fn take_responses(&mut self, i: usize) -> Result<(), String> {
        let mut pos = 0;
        loop {
            let p = &mut self.pubs[i];
            let input = &p.inbuf[pos..];
            match p.body.as_mut() {
                Some((status, body, close)) => {
                    let (status, close) = (*status, *close);
                    let complete = match body {
                        Body::Length(left) => {
                            let take = (*left).min(input.len() as u64);
                            pos += take as usize;
                            *left -= take;
                            *left == 0
                        }
                        Body::Chunked(d) => {
                            let (used, done) = d.feed(input, &mut |_| {}).map_err(|e| format!("chunked: {e:?}"))?;
                            pos += used;
                            done
                        }
                        Body::UntilClose => {
                            pos += input.len();
                            false
                        }
                    };
                    if !complete {
                        break;
                    }
                    p.body = None;
                    self.finish_response(i, status);
                    if close {
                        return Err("server asked to close the publisher connection".into());
                    }
                }
                None => {
                    if input.is_empty() {
                        break;
                    }
                    let mut headers = [httparse::EMPTY_HEADER; 32];
                    let mut resp = httparse::Response::new(&mut headers);
                    let used = match resp.parse(input) {
                        Ok(httparse::Status::Complete(used)) => used,
                        Ok(httparse::Status::Partial) => break,
                        Err(e) => return Err(format!("bad publisher response: {e}")),
                    };
                    let status = resp.code.unwrap_or(0);
                    let close = header(resp.headers, "connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
                    let body = if header(resp.headers, "transfer-encoding")
                        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
                    {
                        Body::Chunked(chunked::Decoder::default())
                    } else if let Some(len) = header(resp.headers, "content-length") {
                        Body::Length(len.trim().parse().map_err(|_| format!("content-length {len:?}"))?)
                    } else if status == 204 || status == 304 || (100..200).contains(&status) {
                        Body::Length(0)
                    } else {
                        Body::UntilClose
                    };
                    pos += used;
                    if (100..200).contains(&status) {
                        continue;
                    }
                    p.body = Some((status, body, close));
                }
            }
        }
        self.pubs[i].inbuf.drain(..pos);
        Ok(())
    }

    fn finish_response(&mut self, i: usize, status: u16) {
        self.last_response = Some(Instant::now());
        match self.pubs[i].inflight.pop_front() {
            Some(seq) if (200..300).contains(&status) => {
                self.acked[(seq / 64) as usize] |= 1 << (seq % 64);
            }
            Some(_) => {
                self.out.publish_errors += 1;
                self.out.first_publish_error.get_or_insert(format!("status {status}"));
            }
            None => {
                self.out.publish_errors += 1;
                self.out.first_publish_error.get_or_insert("response to no request".into());
            }
        }
    }
}

/// Records one event received by a subscriber.
fn deliver(track: &mut Track, tally: &mut Tally, pubs: usize, ev: &sse::Event<'_>, now_ns: u64, now: Instant) {
    let parsed = (ev.kind == b"message").then(|| parse_message(ev.data)).flatten();
    let Some((seq, publisher, sent_ns)) = parsed else {
        tally.foreign_events += 1;
        return;
    };
    let word = (seq / 64) as usize;
    if word >= track.seen.len() || publisher >= pubs {
        tally.foreign_events += 1;
        return;
    }
    tally.deliveries += 1;
    tally.last_delivery = Some(now);
    let bit = 1u64 << (seq % 64);
    if track.seen[word] & bit != 0 {
        tally.duplicated += 1;
        return;
    }
    track.seen[word] |= bit;
    track.distinct += 1;
    tally.distinct_live += 1;
    let last = &mut track.last_per_pub[publisher];
    if *last != u64::MAX && seq < *last {
        tally.out_of_order += 1;
    } else {
        *last = seq;
    }
    let latency_us = now_ns.saturating_sub(sent_ns) / 1000;
    tally.latency_us.saturating_record(latency_us.max(1));
}

/// `"<seq> <publisher> <nanos>"`.
fn parse_message(data: &[u8]) -> Option<(u64, usize, u64)> {
    let text = std::str::from_utf8(data).ok()?;
    let mut parts = text.split(' ');
    let seq = parts.next()?.parse().ok()?;
    let publisher = parts.next()?.parse().ok()?;
    let nanos = parts.next()?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some((seq, publisher, nanos))
}

fn header<'a>(headers: &[httparse::Header<'a>], name: &str) -> Option<&'a str> {
    headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).and_then(|h| std::str::from_utf8(h.value).ok())
}

fn words(bits: u64) -> usize {
    bits.div_ceil(64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_text() {
        assert_eq!(parse_message(b"12 3 456"), Some((12, 3, 456)));
        assert_eq!(parse_message(b"12 3"), None);
        assert_eq!(parse_message(b"12 3 4 5"), None);
        assert_eq!(parse_message(b"{\"message\":\"1 2 3\"}"), None);
    }
}
