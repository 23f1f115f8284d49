//! Event-stream parser, as a browser's `EventSource` reads a stream.
//!
//! Read this first: WHATWG HTML, "Server-sent events", section
//! "Interpreting an event stream"
//! (<https://html.spec.whatwg.org/multipage/server-sent-events.html>).
//!
//! The rules kept here, and only these:
//! - one leading U+FEFF (byte order mark) is dropped;
//! - lines end with CRLF, a lone LF or a lone CR (a CR at the end of one
//!   `feed` and an LF at the start of the next are one line end);
//! - a blank line dispatches the event, if its data buffer is not empty;
//! - a line starting with `:` is a comment and is ignored;
//! - `field:value` with one optional space after the colon removed, and a
//!   line without a colon is a field with an empty value;
//! - `data` appends the value and an LF to the data buffer, `event` sets the
//!   event type, `id` and `retry` are read and otherwise unused (we never
//!   reconnect), anything else is ignored;
//! - the data handed out has its last LF removed.
//!
//! The parser is pure: bytes in, events out through a callback. Lines are
//! bounded by `max_line` so that a peer cannot make it grow without end.

const BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

/// Why a stream could not be parsed any further.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// A line grew past the parser's bound without ending.
    LineTooLong,
}

/// One dispatched event.
#[derive(Debug, PartialEq, Eq)]
pub struct Event<'a> {
    /// The event type: `message` unless an `event` field set another.
    pub kind: &'a [u8],
    /// The data, lines joined by LF, without the final LF.
    pub data: &'a [u8],
}

/// Streaming event-stream parser: feed it bytes in pieces of any size.
#[derive(Debug)]
pub struct Parser {
    line: Vec<u8>,
    data: Vec<u8>,
    kind: Vec<u8>,
    after_cr: bool,
    bom_matched: usize,
    bom_done: bool,
    max_line: usize,
}

impl Parser {
    /// A parser whose lines may be at most `max_line` bytes long.
    pub fn new(max_line: usize) -> Self {
        Parser {
            line: Vec::new(),
            data: Vec::new(),
            kind: Vec::new(),
            after_cr: false,
            bom_matched: 0,
            bom_done: false,
            max_line,
        }
    }

    /// Parses `input`, calling `on_event` for each event it completes.
    pub fn feed(&mut self, input: &[u8], on_event: &mut impl FnMut(Event<'_>)) -> Result<(), Error> {
        let mut rest = input;
        if !self.bom_done {
            rest = self.skip_bom(rest, on_event)?;
        }
        while !rest.is_empty() {
            if self.after_cr {
                self.after_cr = false;
                if rest[0] == b'\n' {
                    rest = &rest[1..];
                    continue;
                }
            }
            match rest.iter().position(|&b| b == b'\r' || b == b'\n') {
                Some(end) => {
                    self.after_cr = rest[end] == b'\r';
                    if self.line.is_empty() {
                        self.check_len(end)?;
                        self.take_line(&rest[..end], on_event);
                    } else {
                        self.check_len(self.line.len() + end)?;
                        self.line.extend_from_slice(&rest[..end]);
                        let line = std::mem::take(&mut self.line);
                        self.take_line(&line, on_event);
                        self.line = line;
                        self.line.clear();
                    }
                    rest = &rest[end + 1..];
                }
                None => {
                    self.check_len(self.line.len() + rest.len())?;
                    self.line.extend_from_slice(rest);
                    rest = &[];
                }
            }
        }
        Ok(())
    }

    /// Drops a leading byte order mark, even one split across feeds.
    fn skip_bom<'a>(&mut self, input: &'a [u8], on_event: &mut impl FnMut(Event<'_>)) -> Result<&'a [u8], Error> {
        let mut used = 0;
        while !self.bom_done && used < input.len() {
            if input[used] == BOM[self.bom_matched] {
                self.bom_matched += 1;
                used += 1;
                if self.bom_matched == BOM.len() {
                    self.bom_done = true;
                }
            } else {
                // Not a BOM after all: the bytes matched so far are text.
                self.bom_done = true;
                let matched = self.bom_matched;
                self.feed(&BOM[..matched], on_event)?;
            }
        }
        Ok(&input[used..])
    }

    fn check_len(&self, len: usize) -> Result<(), Error> {
        if len > self.max_line { Err(Error::LineTooLong) } else { Ok(()) }
    }

    fn take_line(&mut self, line: &[u8], on_event: &mut impl FnMut(Event<'_>)) {
        if line.is_empty() {
            self.dispatch(on_event);
            return;
        }
        if line[0] == b':' {
            return;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        match field {
            b"data" => {
                self.data.extend_from_slice(value);
                self.data.push(b'\n');
            }
            b"event" => {
                self.kind.clear();
                self.kind.extend_from_slice(value);
            }
            // `id` sets the last event id and `retry` the reconnection time:
            // a load generator that never reconnects has no use for either.
            _ => {}
        }
    }

    fn dispatch(&mut self, on_event: &mut impl FnMut(Event<'_>)) {
        if self.data.is_empty() {
            self.kind.clear();
            return;
        }
        self.data.pop();
        let kind: &[u8] = if self.kind.is_empty() { b"message" } else { &self.kind };
        on_event(Event { kind, data: &self.data });
        self.data.clear();
        self.kind.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (event type, data) of each event, as text.
    type Seen = Vec<(String, String)>;

    /// Runs `input` whole and in every split into two pieces and one byte at
    /// a time; every way must give the same events.
    fn events(input: &[u8]) -> Vec<(String, String)> {
        let run = |pieces: &[&[u8]]| {
            let mut out = Vec::new();
            let mut parser = Parser::new(1024);
            for piece in pieces {
                parser
                    .feed(piece, &mut |e| {
                        out.push((
                            String::from_utf8_lossy(e.kind).into_owned(),
                            String::from_utf8_lossy(e.data).into_owned(),
                        ))
                    })
                    .expect("parse");
            }
            out
        };
        let whole = run(&[input]);
        for cut in 0..=input.len() {
            assert_eq!(run(&[&input[..cut], &input[cut..]]), whole, "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(run(&bytes), whole, "byte by byte");
        whole
    }

    fn msg(data: &str) -> (String, String) {
        ("message".to_string(), data.to_string())
    }

    #[test]
    fn line_ends_and_fields() {
        let cases: &[(&[u8], Seen)] = &[
            (b"data: a\n\n", vec![msg("a")]),
            (b"data:a\r\n\r\n", vec![msg("a")]),
            (b"data:  a\r\r", vec![msg(" a")]),
            (b"data: a\ndata: b\n\n", vec![msg("a\nb")]),
            (b": hello\nretry: 3000\n\n", vec![]),
            (b"id: 7\ndata: x\n\ndata: y\n\n", vec![msg("x"), msg("y")]),
            (b"data\n\n", vec![msg("")]),
            (b"data: a\n", vec![]),
            (b"event: tick\ndata: 1\n\ndata: 2\n\n", vec![("tick".into(), "1".into()), msg("2")]),
            (b"\xEF\xBB\xBFdata: bom\n\n", vec![msg("bom")]),
            (b"\xEFdata: x\n\n", vec![]),
            (b"dat: a\n\n", vec![]),
            (b"data: a\r\n\ndata: b\r\rdata: c\n\r\n", vec![msg("a"), msg("b"), msg("c")]),
        ];
        for (input, want) in cases {
            assert_eq!(&events(input), want, "input {:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn long_line_is_an_error() {
        let mut parser = Parser::new(8);
        assert_eq!(parser.feed(b"data: 1234", &mut |_| {}), Err(Error::LineTooLong));
        let mut parser = Parser::new(8);
        assert_eq!(parser.feed(b"data:", &mut |_| {}), Ok(()));
        assert_eq!(parser.feed(b" 1234", &mut |_| {}), Err(Error::LineTooLong));
    }
}
