//! A real `redis-server` on a free port for the bus tests, with no
//! persistence, killed when dropped. Tests that need Redis fail (never skip)
//! when it is not installed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{WAIT, wait_for};

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts `redis-server` on a free port and waits until it answers.
    #[track_caller]
    pub fn start() -> RedisServer {
        // The port is free when probed, but another process may take it
        // before redis-server binds it (then redis-server exits): try another.
        for _ in 0..5 {
            let probe = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("find a free port");
            let mut server = RedisServer { port: probe.port(), child: None };
            if server.try_start() {
                return server;
            }
        }
        panic!("redis-server could not listen on any of 5 free ports")
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kills the server and waits for it to exit (its data is gone).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes (`SIGSTOP`) or thaws (`SIGCONT`) the server: a Redis that hangs.
    #[track_caller]
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("redis-server running").id().to_string();
        let status = Command::new("kill").args([signal, &pid]).status().expect("run kill");
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// TCP connections to the server that are established (the kernel's
    /// count, from `/proc/net/tcp`: it counts them even while the server is
    /// frozen and has not accepted them).
    pub fn established_connections(&self) -> usize {
        let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
        let remote_port = format!(":{:04X}", self.port);
        table
            .lines()
            .skip(1)
            .filter(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                // rem_address is HEX_IP:HEX_PORT; state 01 is ESTABLISHED.
                fields.get(2).is_some_and(|remote| remote.ends_with(&remote_port)) && fields.get(3) == Some(&"01")
            })
            .count()
    }

    /// Starts a fresh, empty server on the same port.
    #[track_caller]
    pub fn start_again(&mut self) {
        assert!(self.try_start(), "redis-server could not listen on port {} again (taken meanwhile?)", self.port);
    }

    /// (Re)starts redis-server on `self.port` and waits until it answers,
    /// itself and not another process on that port (its `process_id`); false
    /// if it exited instead (it could not bind the port).
    #[track_caller]
    fn try_start(&mut self) -> bool {
        self.stop();
        let port = self.port.to_string();
        let spawned = Command::new("redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                panic!("redis-server is not installed (run tests/setup): the bus tests need it")
            }
            Err(e) => panic!("cannot start redis-server: {e}"),
        };
        let own = format!("process_id:{}\r\n", child.id());
        let what = format!("redis-server on port {} answers", self.port);
        let started = wait_for(&what, WAIT, || {
            if let Some(status) = child.try_wait().expect("wait for redis-server") {
                return Ok(Err(status));
            }
            match self.try_command(&["INFO", "server"]) {
                Some(info) if info.contains(&own) => Ok(Ok(())),
                other => Err(other),
            }
        });
        match started {
            Ok(()) => {
                self.child = Some(child);
                true
            }
            Err(status) => {
                eprintln!("redis-server on port {} exited at start ({status})", self.port);
                false
            }
        }
    }

    /// Runs one command on a fresh connection; returns the first reply line.
    #[track_caller]
    pub fn command(&self, args: &[&str]) -> String {
        self.try_command(args).unwrap_or_else(|| panic!("redis command {args:?} failed"))
    }

    /// Like [`RedisServer::command`] with binary arguments.
    #[track_caller]
    pub fn command_bytes(&self, args: &[&[u8]]) -> String {
        self.try_command_bytes(args).unwrap_or_else(|| panic!("redis command failed"))
    }

    fn try_command(&self, args: &[&str]) -> Option<String> {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.try_command_bytes(&args)
    }

    /// Speaks RESP directly, so the tests check the bus against Redis
    /// itself rather than against the client library the bus uses.
    fn try_command_bytes(&self, args: &[&[u8]]) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let mut request = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            request.extend_from_slice(arg);
            request.extend_from_slice(b"\r\n");
        }
        stream.write_all(&request).ok()?;
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let line = line.trim_end().to_owned();
        if let Some(len) = line.strip_prefix('$').and_then(|l| l.parse::<usize>().ok()) {
            let mut body = vec![0; len + 2];
            reader.read_exact(&mut body).ok()?;
            body.truncate(len);
            return String::from_utf8(body).ok();
        }
        Some(line)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
