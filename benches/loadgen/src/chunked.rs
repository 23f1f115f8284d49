//! HTTP/1.1 chunked transfer coding, decoding side.
//!
//! Read this first: RFC 9112, section 7.1 "Chunked Transfer Coding".
//!
//! ```text
//! chunked-body = *chunk last-chunk trailer-section CRLF
//! chunk        = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
//! last-chunk   = 1*("0") [ chunk-ext ] CRLF
//! ```
//!
//! The decoder is pure: `feed` takes bytes, hands out the chunk data it
//! finds and says how many bytes it used, so that a caller reading several
//! responses from one connection knows where the next one starts. Bare LF
//! is accepted where CRLF is due, as most clients do.

/// Largest chunk size accepted; anything bigger is taken as lost framing.
const MAX_CHUNK_BYTES: u64 = 1 << 32;

/// Why a chunked body could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// A chunk-size line had no hex digit, or too many.
    BadSize,
    /// Chunk data was not followed by a line end.
    MissingCrlf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading hex digits of the chunk size.
    Size {
        digits: u32,
    },
    /// Skipping a chunk extension up to the end of the size line.
    Ext,
    /// Saw CR at the end of the size line, LF is due.
    SizeLf,
    /// Inside chunk data, `size` bytes left.
    Data,
    /// After chunk data, CRLF is due.
    DataCr,
    DataLf,
    /// In the trailer section; `line_len` bytes of the current line so far.
    Trailer {
        line_len: usize,
    },
    /// The last chunk and trailer are read: the body is over.
    Done,
}

/// Streaming decoder of one chunked body.
#[derive(Debug, Clone)]
pub struct Decoder {
    state: State,
    size: u64,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder { state: State::Size { digits: 0 }, size: 0 }
    }
}

impl Decoder {
    /// Decodes from `input`, passing chunk data to `out`. Returns how many
    /// bytes were used and whether the body is complete; it uses no byte
    /// past the end of the body.
    pub fn feed(&mut self, input: &[u8], out: &mut impl FnMut(&[u8])) -> Result<(usize, bool), Error> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::Size { digits } => match hex_value(b) {
                    Some(v) => {
                        if digits >= 12 {
                            return Err(Error::BadSize);
                        }
                        self.size = self.size * 16 + u64::from(v);
                        self.state = State::Size { digits: digits + 1 };
                    }
                    None if digits == 0 => return Err(Error::BadSize),
                    None => match b {
                        b'\r' => self.state = State::SizeLf,
                        b'\n' => self.end_size_line()?,
                        _ => self.state = State::Ext,
                    },
                },
                State::Ext => match b {
                    b'\r' => self.state = State::SizeLf,
                    b'\n' => self.end_size_line()?,
                    _ => {}
                },
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(Error::BadSize);
                    }
                    self.end_size_line()?;
                }
                State::Data => {
                    let take = (input.len() - i).min(usize::try_from(self.size).unwrap_or(usize::MAX));
                    out(&input[i..i + take]);
                    self.size -= take as u64;
                    i += take;
                    if self.size == 0 {
                        self.state = State::DataCr;
                    }
                    continue;
                }
                State::DataCr => match b {
                    b'\r' => self.state = State::DataLf,
                    b'\n' => self.state = State::Size { digits: 0 },
                    _ => return Err(Error::MissingCrlf),
                },
                State::DataLf => {
                    if b != b'\n' {
                        return Err(Error::MissingCrlf);
                    }
                    self.state = State::Size { digits: 0 };
                }
                State::Trailer { line_len } => match b {
                    b'\n' if line_len == 0 => {
                        self.state = State::Done;
                        return Ok((i + 1, true));
                    }
                    b'\n' => self.state = State::Trailer { line_len: 0 },
                    b'\r' => {}
                    _ => self.state = State::Trailer { line_len: line_len + 1 },
                },
                State::Done => return Ok((i, true)),
            }
            i += 1;
        }
        Ok((i, self.state == State::Done))
    }

    fn end_size_line(&mut self) -> Result<(), Error> {
        if self.size > MAX_CHUNK_BYTES {
            return Err(Error::BadSize);
        }
        self.state = if self.size == 0 { State::Trailer { line_len: 0 } } else { State::Data };
        Ok(())
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Body, bytes used, and whether the body is complete.
    type Decoded = (Vec<u8>, usize, bool);
    type Case<'a> = (&'a [u8], Result<(&'a [u8], usize, bool), Error>);

    /// Decodes `input` whole, in two pieces at every cut, and byte by byte.
    fn decode(input: &[u8]) -> Result<Decoded, Error> {
        let run = |pieces: &[&[u8]]| -> Result<Decoded, Error> {
            let mut d = Decoder::default();
            let mut body = Vec::new();
            let mut used = 0;
            let mut done = false;
            for piece in pieces {
                let (n, fin) = d.feed(piece, &mut |b| body.extend_from_slice(b))?;
                used += n;
                done = fin;
                if fin {
                    break;
                }
            }
            Ok((body, used, done))
        };
        let whole = run(&[input]);
        for cut in 0..=input.len() {
            assert_eq!(run(&[&input[..cut], &input[cut..]]), whole, "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(run(&bytes), whole, "byte by byte");
        whole
    }

    #[test]
    fn bodies() {
        let cases: &[Case<'_>] = &[
            (b"5\r\nhello\r\n0\r\n\r\n", Ok((b"hello", 15, true))),
            (b"5\r\nhello\r\n0\r\n\r\nNEXT", Ok((b"hello", 15, true))),
            (b"3;ext=1\r\nabc\r\nA\r\n0123456789\r\n", Ok((b"abc0123456789", 29, false))),
            (b"2\nab\n0\nX-T: 1\n\n", Ok((b"ab", 15, true))),
            (b"1\r\nx", Ok((b"x", 4, false))),
            (b"\r\n", Err(Error::BadSize)),
            (b"1\r\nxy", Err(Error::MissingCrlf)),
            (b"1234567890123\r\n", Err(Error::BadSize)),
        ];
        for (input, want) in cases {
            let got = decode(input);
            let want = want.map(|(b, n, d)| (b.to_vec(), n, d));
            assert_eq!(got, want, "input {:?}", String::from_utf8_lossy(input));
        }
    }
}
