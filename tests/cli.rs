//! The `bare-sse` binary: flags, help, errors and exit codes.

mod support;

use std::process::{Command, Output};

use support::{Binary, Client, WAIT, wait_for};

fn bare_sse(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bare-sse")).args(args).output().expect("run bare-sse")
}

#[test]
fn help_lists_every_flag() {
    let out = bare_sse(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for flag in bare_sse::config::FLAGS {
        assert!(text.contains(&format!("--{}", flag.name)), "--{} missing from help", flag.name);
    }
    assert!(text.contains("curl -N"));
}

#[test]
fn version() {
    let out = bare_sse(&["--version"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap(), format!("bare-sse {}\n", env!("CARGO_PKG_VERSION")));
}

#[test]
fn bad_flags_are_one_line_and_exit_2() {
    for args in [&["--bogus"][..], &["--listen"], &["--listen", "not-an-address"], &["--max-body-bytes", "zero"]] {
        let out = bare_sse(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{args:?}: {err:?}");
        assert!(err.starts_with("bare-sse: "), "{err:?}");
    }
}

#[test]
fn size_flags_below_their_minimum_are_refused() {
    for args in [&["--max-head-bytes", "10"][..], &["--max-body-bytes", "1"], &["--max-buffered-bytes", "1"]] {
        // Spawned, not run to its end: before the minimums, the server
        // started and served with such a limit.
        let child = Command::new(env!("CARGO_BIN_EXE_bare-sse"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn bare-sse");
        let mut child = Killed(child);
        let status =
            wait_for(&format!("bare-sse {args:?} exits"), WAIT, || child.0.try_wait().unwrap().ok_or("running"));
        assert_eq!(status.code(), Some(2), "{args:?}");
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.0.stderr.take().unwrap(), &mut err).unwrap();
        assert_eq!(err.lines().count(), 1, "{args:?}: {err:?}");
        assert!(err.contains(args[0]) && err.contains("expected a whole number from"), "{err:?}");
    }
}

/// A child process killed when dropped, so a failing test leaves none.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn address_in_use_is_one_line_and_exit_2() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = bare_sse(&["--listen", &addr]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err:?}");
    assert!(err.contains(&addr) && err.contains("in use"), "{err:?}");
}

#[test]
fn environment_variables_configure_the_binary() {
    let out = Command::new(env!("CARGO_BIN_EXE_bare-sse"))
        .env("BARE_SSE_MAX_BODY_BYTES", "nope")
        .output()
        .expect("run bare-sse");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8(out.stderr).unwrap().contains("BARE_SSE_MAX_BODY_BYTES"));
}

#[test]
fn the_binary_serves_the_api() {
    let server = Binary::start(&["--max-body-bytes", "100"]);
    let mut stream = Client::connect(server.addr).subscribe("/events");
    let mut publisher = Client::connect(server.addr);
    assert_eq!(publisher.publish("from the binary").json()["subscribers"], 1);
    assert_eq!(stream.next_data(), "from the binary");
    // The flag took effect.
    assert_eq!(publisher.publish(&"x".repeat(200)).status, 413);
}
