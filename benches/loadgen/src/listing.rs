//! `--list-subscriptions`: one `GET /.well-known/mercure/subscriptions`
//! of a hub with `--mercure-subscriptions`, read in full, with the
//! server's memory sampled while it streams.
//!
//! bare-sse writes that collection a piece at a time as the socket takes
//! it, so the memory it holds for a listing should not grow with the number
//! of subscriptions. This reads `VmRSS` (and `VmHWM`, the peak the kernel
//! kept) of the server just before the request, then at most every
//! [`SAMPLE_EVERY`] while the answer arrives, then after it: the largest
//! sample against the one before is what the listing cost in resident
//! memory, and a `VmHWM` that moved says a peak fell between two samples.
//!
//! One blocking socket with a short read timeout, outside the mio loop:
//! the subscriber streams are idle meanwhile (nothing is published), and
//! their sockets keep what arrives until the loop reads them again.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::chunked;
use crate::cli::Target;
use crate::procstat;

/// How often the server's memory is read while the answer streams.
const SAMPLE_EVERY: Duration = Duration::from_millis(1);
/// Largest answer kept to count its subscriptions (bytes past it are
/// counted, not kept). 19.5k subscriptions are ~5 MB.
const MAX_KEPT_BYTES: usize = 256 * 1024 * 1024;

/// What one listing took.
#[derive(Debug, Default)]
pub struct Outcome {
    pub status: Option<u16>,
    pub error: Option<String>,
    pub timed_out: bool,
    /// From just before the request is written to the first byte of the
    /// answer, and to its last byte.
    pub first_byte: Option<Duration>,
    pub last_byte: Option<Duration>,
    /// Bytes of the body (after the head, chunked coding undone).
    pub body_bytes: u64,
    /// Length of the collection's `subscriptions` array, if it parsed.
    pub subscriptions: Option<u64>,
    pub rss_before_kb: u64,
    pub hwm_before_kb: u64,
    pub rss_peak_kb: u64,
    pub rss_after_kb: u64,
    pub hwm_after_kb: u64,
    /// Memory readings taken while the answer streamed.
    pub samples: u64,
}

/// GETs `path` from `target` with `authorization`, reads the answer to its
/// end (the close, for bare-sse's collection), within `timeout`.
pub fn list(target: &Target, path: &str, authorization: &str, pids: &[u32], timeout: Duration) -> Outcome {
    let mut out = Outcome::default();
    let before = procstat::memory(pids);
    out.rss_before_kb = before.rss_kb;
    out.hwm_before_kb = before.hwm_kb;
    out.rss_peak_kb = before.rss_kb;
    let mut raw = Vec::new();
    let read = fetch(target, path, authorization, pids, timeout, &mut out, &mut raw);
    let after = procstat::memory(pids);
    out.rss_after_kb = after.rss_kb;
    out.hwm_after_kb = after.hwm_kb;
    out.rss_peak_kb = out.rss_peak_kb.max(after.rss_kb);
    if let Err(e) = read.and_then(|()| parse(&raw, &mut out)) {
        out.error.get_or_insert(e);
    }
    out
}

/// Sends the request and reads the answer into `raw`, sampling memory.
fn fetch(
    target: &Target,
    path: &str,
    authorization: &str,
    pids: &[u32],
    timeout: Duration,
    out: &mut Outcome,
    raw: &mut Vec<u8>,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut stream = TcpStream::connect_timeout(&target.addr, timeout).map_err(|e| format!("connect: {e}"))?;
    stream.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
    stream.set_read_timeout(Some(SAMPLE_EVERY)).map_err(|e| format!("read timeout: {e}"))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: {authorization}\r\nAccept: application/json\r\n\
         Connection: close\r\n\r\n",
        target.host
    );
    let start = Instant::now();
    stream.write_all(request.as_bytes()).map_err(|e| format!("write: {e}"))?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut last_sample = start;
    let mut total = 0u64;
    loop {
        let now = Instant::now();
        if now.duration_since(last_sample) >= SAMPLE_EVERY {
            last_sample = now;
            out.rss_peak_kb = out.rss_peak_kb.max(procstat::memory(pids).rss_kb);
            out.samples += 1;
        }
        if now >= deadline {
            out.timed_out = true;
            return Err("no end of the answer before the timeout".into());
        }
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let at = start.elapsed();
                out.first_byte.get_or_insert(at);
                out.last_byte = Some(at);
                total += n as u64;
                let keep = n.min(MAX_KEPT_BYTES.saturating_sub(raw.len()));
                raw.extend_from_slice(&buf[..keep]);
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // A reset after the whole answer (the server closes as soon as
            // it has written it) still leaves a complete answer to parse.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset && total > 0 => break,
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    if total > raw.len() as u64 {
        return Err(format!("answer of {total} bytes: only the first {MAX_KEPT_BYTES} kept"));
    }
    Ok(())
}

/// Reads the status, the body's size and the collection's length.
fn parse(raw: &[u8], out: &mut Outcome) -> Result<(), String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let used = match resp.parse(raw) {
        Ok(httparse::Status::Complete(used)) => used,
        Ok(httparse::Status::Partial) => return Err("incomplete response head".into()),
        Err(e) => return Err(format!("bad response head: {e}")),
    };
    let status = resp.code.unwrap_or(0);
    out.status = Some(status);
    let header = |name: &str| {
        resp.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).and_then(|h| std::str::from_utf8(h.value).ok())
    };
    let rest = &raw[used..];
    let body: Vec<u8> = if header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        let mut body = Vec::new();
        chunked::Decoder::default()
            .feed(rest, &mut |data| body.extend_from_slice(data))
            .map_err(|e| format!("chunked coding: {e:?}"))?;
        body
    } else if let Some(len) = header("content-length") {
        let len: usize = len.trim().parse().map_err(|_| format!("content-length {len:?}"))?;
        rest[..len.min(rest.len())].to_vec()
    } else {
        rest.to_vec()
    };
    out.body_bytes = body.len() as u64;
    if status != 200 {
        let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        return Err(format!("status {status}: {text}"));
    }
    out.subscriptions = Some(count_subscriptions(&body)?);
    Ok(())
}

/// The length of a collection's `subscriptions` array.
fn count_subscriptions(body: &[u8]) -> Result<u64, String> {
    let collection: serde_json::Value = serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
    let list = collection.get("subscriptions").and_then(|s| s.as_array()).ok_or("no subscriptions array")?;
    Ok(list.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(head: &str, body: &str) -> Vec<u8> {
        format!("{head}\r\n\r\n{body}").into_bytes()
    }

    #[test]
    fn counts_a_close_delimited_collection() {
        let body =
            r#"{"id":"/.well-known/mercure/subscriptions","type":"subscriptions","subscriptions":[{"a":1},{"b":2}]}"#;
        let mut out = Outcome::default();
        parse(&answer("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close", body), &mut out)
            .expect("parses");
        assert_eq!((out.status, out.subscriptions, out.body_bytes), (Some(200), Some(2), body.len() as u64));
    }

    #[test]
    fn counts_chunked_and_refuses_errors() {
        let mut out = Outcome::default();
        parse(
            &answer(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked",
                "d\r\n{\"subscriptio\r\n9\r\nns\":[{}]}\r\n0\r\n\r\n",
            ),
            &mut out,
        )
        .expect("parses");
        assert_eq!(out.subscriptions, Some(1));
        let mut out = Outcome::default();
        let err = parse(&answer("HTTP/1.1 403 Forbidden\r\nContent-Length: 2", "no"), &mut out).unwrap_err();
        assert_eq!((out.status, err.as_str()), (Some(403), "status 403: no"));
        assert!(parse(b"HTTP/1.1 200", &mut Outcome::default()).is_err());
        assert!(count_subscriptions(b"{}").is_err());
    }
}
