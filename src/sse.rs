//! Server-Sent Events framing: turning one published event into the bytes of
//! the `text/event-stream` format.
//!
//! Read this first: the WHATWG HTML standard, section 9.2 "Server-sent
//! events", in particular "Parsing an event stream" and "Interpreting an event
//! stream". The rules that matter here:
//!
//! * A stream is a sequence of lines, each ended by CR, LF or CRLF.
//! * `field: value` lines accumulate an event; a blank line dispatches it.
//! * One space after the colon is stripped by the client, so we always write
//!   exactly one: a message that itself starts with a space keeps it.
//! * A `data:` line appends its value plus a newline to the event's data; the
//!   client strips the final newline on dispatch. A message with line breaks is
//!   therefore written as several `data:` lines, and the client gets the same
//!   text back with every line ending normalised to `\n`.
//! * Lines starting with `:` are comments, ignored by clients: we use them to
//!   open the stream and as heartbeats.
//!
//! Because every CR and LF in a message starts a new `data:` line, no message
//! can end an event early or inject a field: the only blank line we write is
//! the one that ends the event.
//!
//! A frame is built once per publish and shared, as immutable reference-counted
//! bytes ([`Frame`]), by every subscriber it is sent to.

use std::sync::Arc;

/// The encoded bytes of one event (or comment), shared by all subscribers.
pub type Frame = Arc<[u8]>;

/// One event, as published. Fields are borrowed so framing allocates only the
/// output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Event<'a> {
    /// The `id:` field; must satisfy [`is_valid_id`].
    pub id: Option<&'a str>,
    /// The `event:` field (event type); must satisfy [`is_valid_name`].
    pub name: Option<&'a str>,
    /// The message; any text, line breaks included.
    pub data: &'a str,
    /// The `retry:` field: the reconnection delay it sets, in milliseconds.
    pub retry: Option<u64>,
}

/// Whether `name` can be sent as an `event:` field: non-empty, at most
/// [`MAX_FIELD_BYTES`], and no CR or LF (which would end the field early).
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_FIELD_BYTES && !name.contains(['\r', '\n'])
}

/// Whether `id` can be sent as an `id:` field: as [`is_valid_name`], and also no
/// NUL, because clients ignore an id containing NUL.
pub fn is_valid_id(id: &str) -> bool {
    is_valid_name(id) && !id.contains('\0')
}

/// Longest event name or id we accept, in bytes. Names and ids are meant to be
/// short labels; the bound keeps a frame's overhead predictable.
pub const MAX_FIELD_BYTES: usize = 256;

/// Encodes `event` as one event-stream frame.
///
/// ```
/// use bare_sse::sse::{encode, Event};
/// let frame = encode(&Event { data: "two\nlines", ..Event::default() });
/// assert_eq!(&frame[..], b"data: two\ndata: lines\n\n");
/// ```
pub fn encode(event: &Event) -> Frame {
    let mut out = Vec::with_capacity(encoded_len_hint(event));
    encode_into(event, &mut out);
    out.into()
}

/// Appends the frame for `event` to `out`.
pub fn encode_into(event: &Event, out: &mut Vec<u8>) {
    debug_assert!(event.id.is_none_or(is_valid_id));
    debug_assert!(event.name.is_none_or(is_valid_name));
    if let Some(id) = event.id {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(id.as_bytes());
        out.push(b'\n');
    }
    if let Some(name) = event.name {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.push(b'\n');
    }
    if let Some(retry) = event.retry {
        out.extend_from_slice(format!("retry: {retry}\n").as_bytes());
    }
    for line in lines(event.data) {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
}

/// A comment frame (`: text`), ignored by clients. `text` must not contain CR
/// or LF.
pub fn comment(text: &str) -> Frame {
    debug_assert!(!text.contains(['\r', '\n']));
    format!(": {text}\n\n").into_bytes().into()
}

/// What a stream starts with: a comment (`: ok`), so clients see it open
/// before any event, and the reconnection delay in milliseconds (`retry:`).
pub fn opening(retry_ms: u32) -> Frame {
    format!(": ok\nretry: {retry_ms}\n\n").into_bytes().into()
}

/// A heartbeat: an empty comment, which keeps proxies from timing out an
/// idle stream and lets a dead peer be noticed.
pub fn heartbeat() -> Frame {
    Frame::from(&b":\n\n"[..])
}

/// An `id:` field alone (`id` must be valid, [`is_valid_id`]): it sets the
/// client's last event id without firing an event, so a client that has not
/// received any event yet still resumes from here.
pub fn cursor(id: &str) -> Frame {
    debug_assert!(is_valid_id(id));
    format!("id: {id}\n\n").into_bytes().into()
}

fn encoded_len_hint(event: &Event) -> usize {
    // "data: " + "\n" per line is 7 bytes; most messages are one line.
    event.data.len() + 8 + event.id.map_or(0, |id| id.len() + 5) + event.name.map_or(0, |n| n.len() + 8)
}

/// Splits `text` at CRLF, CR and LF, as an event-stream parser would. Always
/// yields at least one (possibly empty) line: `""` is one empty line and `"a\n"`
/// is `"a"` then `""`.
///
/// ```
/// let lines: Vec<_> = bare_sse::sse::lines("a\r\nb\rc\nd").collect();
/// assert_eq!(lines, ["a", "b", "c", "d"]);
/// ```
pub fn lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let current = rest?;
        match current.find(['\r', '\n']) {
            None => {
                rest = None;
                Some(current)
            }
            Some(at) => {
                let (line, tail) = current.split_at(at);
                // `tail` starts with CR or LF (ASCII), so these slices are on
                // character boundaries.
                let skip = if tail.starts_with("\r\n") { 2 } else { 1 };
                rest = Some(&tail[skip..]);
                Some(line)
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(message: &str) -> Vec<u8> {
        encode(&Event { data: message, ..Event::default() }).to_vec()
    }

    #[test]
    fn one_line_message() {
        assert_eq!(data("hello"), b"data: hello\n\n");
    }

    #[test]
    fn every_line_ending_starts_a_data_line() {
        let cases: &[(&str, &[u8])] = &[
            ("a\nb", b"data: a\ndata: b\n\n"),
            ("a\r\nb", b"data: a\ndata: b\n\n"),
            ("a\rb", b"data: a\ndata: b\n\n"),
            ("a\n\nb", b"data: a\ndata: \ndata: b\n\n"),
            ("a\r\r\nb", b"data: a\ndata: \ndata: b\n\n"),
            ("a\n", b"data: a\ndata: \n\n"),
            ("", b"data: \n\n"),
            ("\n", b"data: \ndata: \n\n"),
        ];
        for (message, expected) in cases {
            assert_eq!(data(message), *expected, "message {message:?}");
        }
    }

    #[test]
    fn a_message_cannot_inject_fields_or_events() {
        let frame = data("x\n\nevent: evil\nid: 7\r\ndata: y");
        // Every line the framer wrote is a data line, and only the last is blank.
        let text = String::from_utf8(frame).unwrap();
        let written: Vec<&str> = text.split('\n').collect();
        let (blank, fields) = written.split_last().unwrap();
        assert_eq!(*blank, "");
        assert_eq!(fields.last(), Some(&""));
        for line in &fields[..fields.len() - 1] {
            assert!(line.starts_with("data: "), "{line:?}");
        }
    }

    #[test]
    fn leading_space_is_kept_by_writing_exactly_one_separator() {
        assert_eq!(data(" x"), b"data:  x\n\n");
    }

    #[test]
    fn id_and_name_come_before_data() {
        let frame = encode(&Event { id: Some("42"), name: Some("tick"), data: "t", retry: None });
        assert_eq!(&frame[..], b"id: 42\nevent: tick\ndata: t\n\n");
    }

    #[test]
    fn field_validation() {
        assert!(is_valid_name("update"));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("a\nb"));
        assert!(!is_valid_name("a\rb"));
        assert!(!is_valid_name(&"x".repeat(MAX_FIELD_BYTES + 1)));
        assert!(is_valid_id("1-2"));
        assert!(!is_valid_id("1\0"));
    }

    #[test]
    fn comments() {
        assert_eq!(&opening(1500)[..], b": ok\nretry: 1500\n\n");
        assert_eq!(&heartbeat()[..], b":\n\n");
        assert_eq!(&cursor("1-2")[..], b"id: 1-2\n\n");
    }
}
