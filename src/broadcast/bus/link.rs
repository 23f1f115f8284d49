//! The reader's connection: a blocking socket that sends one command at a
//! time and parses its reply with [`resp::parse_nested`], borrowed from
//! its own buffer. It replaced a redis-rs `Connection`, whose parser cost
//! the reader about 1 µs per entry read (every string of a reply copied
//! into an owned `redis::Value` tree) on the bus's hot path, `XREAD`.
//!
//! The handshake is the writers' ([`super::handshake`]: `AUTH` and `SELECT`
//! as the URL asks, then `PING`), sent as one pipeline, all of it within
//! `CONNECT_TIMEOUT`; afterwards every read and write has a timeout.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use super::Target;
use super::resp::{self, Value};

/// What the buffer starts at and shrinks back to after a large reply.
const BUFFER: usize = 64 * 1024;

pub(super) struct Link {
    stream: Socket,
    /// Bytes read, `buf[start..end]` not parsed yet; the rest of it is room to read into.
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Link {
    /// Connects to `target` and runs the handshake `hello` (`commands`
    /// commands, each answered with a reply that must not be an error),
    /// all within `connect_timeout`; then sets `io_timeout` on the socket.
    pub(super) fn open(
        target: &Target,
        hello: &[u8],
        commands: usize,
        connect_timeout: Duration,
        io_timeout: Duration,
    ) -> io::Result<Link> {
        let started = Instant::now();
        let left = || {
            connect_timeout
                .checked_sub(started.elapsed())
                .filter(|left| !left.is_zero())
                .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "connecting to redis timed out"))
        };
        let stream = match target {
            Target::Unix(path) => Socket::Unix(UnixStream::connect(path)?),
            Target::Tcp { resolved, .. } => {
                let addrs: Vec<SocketAddr> = super::lock(resolved).clone();
                let mut last = io::Error::new(io::ErrorKind::NotFound, "redis host not resolved");
                let mut connected = None;
                for addr in addrs {
                    match TcpStream::connect_timeout(&addr, left()?) {
                        Ok(stream) => {
                            let _ = stream.set_nodelay(true);
                            connected = Some(stream);
                            break;
                        }
                        Err(e) => last = e,
                    }
                }
                Socket::Tcp(connected.ok_or(last)?)
            }
        };
        let mut link = Link { stream, buf: vec![0; BUFFER], start: 0, end: 0 };
        link.stream.set_timeout(Some(left()?))?;
        link.stream.write_all(hello)?;
        for _ in 0..commands {
            link.stream.set_timeout(Some(left()?))?;
            link.reply()?;
        }
        link.stream.set_timeout(Some(io_timeout))?;
        Ok(link)
    }

    /// Sends a command of `args` and returns its reply; an error reply is `Err`.
    pub(super) fn query(&mut self, args: &[&[u8]]) -> io::Result<Value<'_>> {
        let mut out = Vec::with_capacity(64 + args.iter().map(|arg| arg.len() + 16).sum::<usize>());
        resp::command(&mut out, args.len());
        for arg in args {
            resp::arg(&mut out, arg);
        }
        self.stream.write_all(&out)?;
        self.reply()
    }

    /// Reads until the buffer holds a whole reply; returns it.
    fn reply(&mut self) -> io::Result<Value<'_>> {
        // The previous reply is done with: its bytes can go.
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
            if self.buf.len() > BUFFER {
                self.buf = vec![0; BUFFER];
            }
        } else if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            (self.end, self.start) = (self.end - self.start, 0);
        }
        // Only the reply's end is looked for while it comes in (cheap: a
        // bulk string is skipped by its length); it is parsed once, whole.
        let used = loop {
            match resp::reply_len(&self.buf[..self.end]) {
                Ok(Some(used)) => break used,
                Ok(None) => {}
                Err(why) => return Err(io::Error::new(io::ErrorKind::InvalidData, why)),
            }
            if self.end == self.buf.len() {
                self.buf.resize(self.buf.len() * 2, 0);
            }
            match self.stream.read(&mut self.buf[self.end..]) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "redis closed the connection")),
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        };
        self.start = used;
        match resp::parse_nested(&self.buf[..used]) {
            Ok(Some((Value::Error(text), _))) => {
                Err(io::Error::other(format!("redis refused: {}", String::from_utf8_lossy(text))))
            }
            Ok(Some((value, _))) => Ok(value),
            Ok(None) => Err(io::Error::new(io::ErrorKind::InvalidData, "a reply cut short")),
            Err(why) => Err(io::Error::new(io::ErrorKind::InvalidData, why)),
        }
    }
}

impl Socket {
    fn set_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Socket::Tcp(stream) => {
                stream.set_read_timeout(timeout)?;
                stream.set_write_timeout(timeout)
            }
            Socket::Unix(stream) => {
                stream.set_read_timeout(timeout)?;
                stream.set_write_timeout(timeout)
            }
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Socket::Tcp(stream) => stream.read(buf),
            Socket::Unix(stream) => stream.read(buf),
        }
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Socket::Tcp(stream) => stream.write_all(bytes),
            Socket::Unix(stream) => stream.write_all(bytes),
        }
    }
}
