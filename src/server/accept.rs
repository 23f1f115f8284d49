//! Accepting connections: the policy around `accept()`, apart from the
//! loop's reads and writes.
//!
//! * **The connection cap** (`--max-connections`, counted in the hub across
//!   all loops): a connection over it gets a short 503 and is closed at once.
//!   The answer is built once and written without waiting: it fits any fresh
//!   socket's buffer.
//! * **Running out of file descriptors** (`EMFILE`, `ENFILE`): the pending
//!   connections stay in the kernel's backlog and accepting pauses for
//!   [`ACCEPT_BACKOFF`]; retrying at once would spin the loop at 100% CPU,
//!   since the listener stays readable. Logged once per run of failures.
//! * **A flood**: at most [`MAX_ACCEPTS_PER_TURN`] per loop turn, so new
//!   connections cannot keep the loop from the ones it has. The listener
//!   will not signal again for the rest, so the loop is told to come back
//!   next turn.

use std::io::{self, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};

use crate::broadcast::hub::Hub;
use crate::http::{Response, Status};

/// How long accepting pauses after the process ran out of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Most connections accepted per loop turn.
const MAX_ACCEPTS_PER_TURN: usize = 256;

/// `EMFILE` and `ENFILE` on Linux: the process or the system is out of file
/// descriptors.
const EMFILE: i32 = 24;
const ENFILE: i32 = 23;

/// One loop's accept policy and its state.
pub(super) struct Acceptor {
    /// Set while accepting pauses: after running out of file descriptors,
    /// or (set to now) after a flood, to take the rest next turn.
    paused_until: Option<Instant>,
    /// Whether we are in a run of `EMFILE`s (logged once per run).
    out_of_descriptors: bool,
    /// False once shutting down.
    open: bool,
    /// Connections refused since the last log line about it.
    refused_unlogged: usize,
    last_refusal_log: Option<Instant>,
    /// Connections refused for the cap, for `/metrics`.
    pub refused_over_capacity: u64,
    /// The answer to a connection over the cap.
    over_capacity: Vec<u8>,
}

impl Acceptor {
    pub fn new() -> Acceptor {
        let answer = Response::error(Status::SERVICE_UNAVAILABLE, "too many connections").header("Retry-After", "1");
        Acceptor {
            paused_until: None,
            out_of_descriptors: false,
            open: true,
            refused_unlogged: 0,
            last_refusal_log: None,
            refused_over_capacity: 0,
            over_capacity: answer.to_bytes(),
        }
    }

    /// When the loop must call [`Acceptor::accept`] again although the
    /// listener will not signal, if ever.
    pub fn resume_at(&self) -> Option<Instant> {
        self.paused_until
    }

    /// Stops accepting for good (graceful shutdown).
    pub fn close(&mut self) {
        self.open = false;
    }

    /// Accepts what is pending, within the cap and this turn's share, and
    /// returns the new connections (each counted in the hub). Call when the
    /// listener is readable, and at [`Acceptor::resume_at`].
    pub fn accept(&mut self, listener: &TcpListener, hub: &Hub, now: Instant) -> Vec<TcpStream> {
        let mut accepted = Vec::new();
        if !self.open || self.paused_until.is_some_and(|until| now < until) {
            return accepted;
        }
        self.paused_until = None;
        for _ in 0..MAX_ACCEPTS_PER_TURN {
            match listener.accept() {
                Ok((socket, _peer)) if !hub.try_connect() => self.refuse(socket, hub, now),
                Ok((socket, _peer)) => {
                    if std::mem::take(&mut self.out_of_descriptors) {
                        log::warn!("file descriptors available again; accepting");
                    }
                    accepted.push(socket);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return accepted,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.raw_os_error(), Some(EMFILE | ENFILE)) => {
                    if !std::mem::replace(&mut self.out_of_descriptors, true) {
                        log::warn!("out of file descriptors ({e}); retrying accept every {ACCEPT_BACKOFF:?}");
                    }
                    self.paused_until = Some(now + ACCEPT_BACKOFF);
                    return accepted;
                }
                // The peer gave up before we accepted: nothing to do for that
                // connection; keep accepting.
                Err(e) if matches!(e.kind(), io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset) => {
                    continue;
                }
                // Anything else (ENOBUFS, ENOMEM...) may persist: back off
                // rather than spin.
                Err(e) => {
                    log::warn!("accept failed: {e}; retrying in {ACCEPT_BACKOFF:?}");
                    self.paused_until = Some(now + ACCEPT_BACKOFF);
                    return accepted;
                }
            }
        }
        // A flood: take the rest next turn, after serving the connections we
        // have.
        self.paused_until = Some(now);
        accepted
    }

    /// Answers a connection over the cap and closes it; logs at most once a
    /// second.
    fn refuse(&mut self, mut socket: TcpStream, hub: &Hub, now: Instant) {
        let _ = socket.write(&self.over_capacity);
        let _ = socket.shutdown(Shutdown::Write);
        self.refused_over_capacity += 1;
        self.refused_unlogged += 1;
        if self.last_refusal_log.is_none_or(|at| now - at >= Duration::from_secs(1)) {
            log::warn!(
                "refused {} connection(s): over --max-connections {}",
                self.refused_unlogged,
                hub.max_connections()
            );
            self.refused_unlogged = 0;
            self.last_refusal_log = Some(now);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_answer_over_capacity_is_well_formed() {
        let answer = super::Acceptor::new().over_capacity;
        let text = String::from_utf8(answer).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{head}");
        assert!(head.contains(&format!("Content-Length: {}\r\n", body.len())));
        assert!(text.contains("Connection: close\r\n") && text.contains("Retry-After: 1\r\n"));
        assert!(serde_json::from_str::<serde_json::Value>(body).is_ok());
    }
}
