//! The binary and the signals a process manager may send: none of them may
//! kill it without its graceful flush. SIGHUP, SIGUSR1, SIGUSR2 and SIGALRM
//! are logged and ignored, SIGPIPE is ignored, and SIGINT, SIGTERM and
//! SIGQUIT shut it down gracefully (exit 0). A server that outlives its
//! terminal also outlives its stderr.

mod support;

use support::{Binary, Client, WAIT, get, wait_for};

/// Sends `signal` (a name `kill` knows, such as `HUP`) to the server.
#[track_caller]
fn send(server: &Binary, signal: &str) {
    let pid = server.child.id().to_string();
    let sent = std::process::Command::new("kill").args([&format!("-{signal}"), &pid]).status().expect("run kill");
    assert!(sent.success(), "kill -{signal} {pid}");
}

/// Waits until the server has logged `count` lines naming `signal`; fails at
/// once if the process exits meanwhile.
#[track_caller]
fn wait_for_logged(server: &mut Binary, signal: &str, count: usize) {
    wait_for(&format!("the server logs {signal} {count} time(s)"), WAIT, || {
        if let Some(status) = server.child.try_wait().expect("wait for bare-sse") {
            panic!("bare-sse exited after {signal}: {status}; log:\n{}", server.whole_log());
        }
        let log = server.log();
        if log.lines().filter(|line| line.contains(signal)).count() >= count { Ok(()) } else { Err(log) }
    });
}

#[test]
fn signals_a_process_manager_sends_do_not_stop_the_server() {
    let mut server = Binary::start(&[]);
    let mut stream = Client::connect(server.addr).subscribe("/events");
    let mut publisher = Client::connect(server.addr);
    // SIGPIPE is ignored without a word; sent first, it is dealt with before
    // the logged signal that follows, which the test can wait for. Each
    // signal is sent once the one before is logged (a signal sent while
    // another of its kind is pending is merged with it).
    send(&server, "PIPE");
    for (signal, times) in [("HUP", 1), ("USR1", 1), ("USR2", 1), ("ALRM", 1), ("HUP", 2)] {
        send(&server, signal);
        wait_for_logged(&mut server, &format!("SIG{signal}"), times);
    }
    // Still serving, on the connections opened before and on new ones.
    let message = "after the signals";
    assert_eq!(publisher.publish(message).json()["subscribers"], 1);
    assert_eq!(stream.next_data(), message);
    assert_eq!(Client::connect(server.addr).request(get("/healthz")).status, 200);
    assert_eq!(server.child.try_wait().expect("wait for bare-sse"), None, "still running");
    // And SIGTERM still ends it gracefully.
    assert!(server.terminate().success());
}

#[test]
fn sigint_and_sigquit_shut_down_gracefully() {
    for signal in ["INT", "QUIT"] {
        let mut server = Binary::start(&[]);
        let _stream = Client::connect(server.addr).subscribe("/events");
        send(&server, signal);
        let child = &mut server.child;
        let status = wait_for(&format!("bare-sse exits after SIG{signal}"), WAIT, || {
            child.try_wait().expect("wait for bare-sse").ok_or("running")
        });
        assert!(status.success(), "SIG{signal}: {status}");
        let log = server.whole_log();
        assert!(log.contains("shutting down gracefully"), "SIG{signal}: {log}");
    }
}

#[test]
fn a_closed_stderr_does_not_stop_the_server() {
    // What a terminal hanging up leaves behind a server that ignores SIGHUP:
    // every log line then fails to be written, and must not take the server
    // down with it.
    use std::io::BufRead;
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut server = Killed(
        std::process::Command::new(env!("CARGO_BIN_EXE_bare-sse"))
            .args(["--listen", "127.0.0.1:0", "--access-log"])
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn bare-sse"),
    );
    let mut stderr = std::io::BufReader::new(server.0.stderr.take().unwrap());
    let mut start_line = String::new();
    stderr.read_line(&mut start_line).expect("read start line");
    drop(stderr);
    let addr: std::net::SocketAddr = start_line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("no address in start line {start_line:?}"));
    let mut client = Client::connect(addr);
    for _ in 0..3 {
        // Each answer is an access-log line, and the 404 a refusal line too.
        assert_eq!(client.request(get("/nope")).status, 404);
        assert_eq!(client.request(get("/healthz")).status, 200);
    }
    assert_eq!(server.0.try_wait().expect("wait for bare-sse"), None, "still running");
}
