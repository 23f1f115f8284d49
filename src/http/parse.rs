//! Requests: parsing and validating a request head, and decoding a request
//! body.
//! The module doc of [`crate::http`] says what to read first and how
//! strict the parser is, and why.

use super::Status;

/// Most header fields we accept in one request head (431 beyond). Real clients
/// send about a dozen; httparse needs a fixed-size array.
pub const MAX_HEADERS: usize = 64;

/// Longest chunk-size line extension we skip, in bytes (RFC 9112 7.1.1 lets us
/// bound it). Extensions carry nothing we use.
pub const MAX_CHUNK_EXT_BYTES: usize = 256;

/// Most bytes of trailer fields after a chunked body; they are read and dropped.
pub const MAX_TRAILER_BYTES: usize = 4096;

/// Why a request was refused. Each maps to one status in [`Error::status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The bytes are not a valid HTTP/1.x request; the reason is for humans.
    Malformed(&'static str),
    /// The request head is longer than the limit.
    HeadTooLarge,
    /// More than [`MAX_HEADERS`] header fields.
    TooManyHeaders,
    /// The body is longer than the limit.
    BodyTooLarge,
    /// A request that needs a body came without `Content-Length` or chunked.
    LengthRequired,
    /// A transfer coding we do not implement (only `chunked` is).
    UnsupportedTransferCoding,
    /// An `Expect` other than `100-continue`.
    UnsupportedExpectation,
    /// A well-formed HTTP version (`HTTP/DIGIT.DIGIT`) other than 1.0 and
    /// 1.1.
    UnsupportedVersion,
}

impl Error {
    /// The response status for this error.
    pub fn status(self) -> Status {
        match self {
            Error::Malformed(_) => Status::BAD_REQUEST,
            Error::HeadTooLarge | Error::TooManyHeaders => Status::HEADERS_TOO_LARGE,
            Error::BodyTooLarge => Status::PAYLOAD_TOO_LARGE,
            Error::LengthRequired => Status::LENGTH_REQUIRED,
            Error::UnsupportedTransferCoding => Status::NOT_IMPLEMENTED,
            Error::UnsupportedExpectation => Status::EXPECTATION_FAILED,
            Error::UnsupportedVersion => Status::VERSION_NOT_SUPPORTED,
        }
    }

    /// A short explanation for the response body and the log.
    pub fn reason(self) -> &'static str {
        match self {
            Error::Malformed(why) => why,
            Error::HeadTooLarge => "request head too large",
            Error::TooManyHeaders => "too many header fields",
            Error::BodyTooLarge => "request body too large",
            Error::LengthRequired => "Content-Length or chunked body required",
            Error::UnsupportedTransferCoding => "only the chunked transfer coding is supported",
            Error::UnsupportedExpectation => "only Expect: 100-continue is supported",
            Error::UnsupportedVersion => "only HTTP/1.0 and HTTP/1.1 are supported",
        }
    }
}

/// Request methods bare-sse routes on; anything else is `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Options,
    Other,
}

/// How the request body is framed (RFC 9112 section 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// Neither `Content-Length` nor `Transfer-Encoding`: no body.
    None,
    /// `Content-Length: n`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// What bare-sse needs from a request head, copied out of the read buffer so
/// the buffer can be reused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: Method,
    /// The method as sent (for logs), at most 16 bytes of it.
    pub method_name: String,
    /// Path of the request target, without the query (`/events`).
    pub path: String,
    /// Query of the request target, without the `?` (may be empty).
    pub query: String,
    /// True for HTTP/1.1, false for HTTP/1.0.
    pub http11: bool,
    pub body: BodyFraming,
    /// Whether the client allows the connection to be reused after this
    /// request (HTTP/1.1 default, or `Connection: keep-alive` in 1.0).
    pub keep_alive: bool,
    /// `Expect: 100-continue` was sent (only honoured for HTTP/1.1).
    pub expect_continue: bool,
    /// The `Last-Event-ID` header, if any (one at most).
    pub last_event_id: Option<String>,
    /// The `Authorization` header, if any (one at most).
    pub authorization: Option<String>,
    /// The `Origin` header (CORS), if any (one at most).
    pub origin: Option<String>,
    /// The `Host` header, if any (exactly one in HTTP/1.1).
    pub host: Option<String>,
    /// The `Cookie` header (RFC 6265), if any; several are joined with `; `
    /// as RFC 9113 8.2.3 and browsers do.
    pub cookie: Option<String>,
}

/// Finds the end of a request head in `buf`: the index just past the blank line
/// (`\r\n\r\n`, or `\n\n` which RFC 9112 section 2.2 lets us accept), searching
/// from `from` (so a head arriving byte by byte is scanned once, not once per
/// byte).
pub fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    // Step back so a terminator split across two reads is still found.
    let start = from.saturating_sub(3);
    let tail = buf.get(start..)?;
    let lf = tail.iter().enumerate().filter(|&(_, &b)| b == b'\n').map(|(i, _)| start + i);
    for at in lf {
        // `at` is an LF; the head ends here if the previous line was empty.
        let before = &buf[..at];
        if before.ends_with(b"\n") || before.ends_with(b"\n\r") {
            return Some(at + 1);
        }
    }
    None
}

/// How many bytes of blank lines (`CRLF` or a bare `LF`) start `buf`: RFC
/// 9112 2.2 asks a server to skip them before a request line. A CR not
/// followed by LF is not a blank line.
pub fn blank_lines(buf: &[u8]) -> usize {
    let mut at = 0;
    loop {
        match buf.get(at..) {
            Some([b'\n', ..]) => at += 1,
            Some([b'\r', b'\n', ..]) => at += 2,
            _ => return at,
        }
    }
}

/// Finds a bare CR (one followed by anything but LF) in a request head,
/// searching from `from` (and the byte before, whose follower may have just
/// arrived). RFC 9112 2.2 makes it invalid; looking for it as the head
/// arrives refuses a head whose lines end in CR alone at once, instead of
/// waiting for an LF that never comes.
pub fn find_bare_cr(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(1);
    let pairs = buf.get(start..)?.windows(2);
    pairs.enumerate().find(|(_, pair)| pair[0] == b'\r' && pair[1] != b'\n').map(|(at, _)| start + at)
}

/// Parses a complete request head (`buf` must end where [`find_head_end`]
/// said). Returns the head, or why it is refused.
pub fn parse_head(buf: &[u8]) -> Result<RequestHead, Error> {
    if find_bare_cr(buf, 0).is_some() {
        return Err(Error::Malformed("bare CR in request head"));
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(Error::Malformed("incomplete request head")),
        Err(httparse::Error::TooManyHeaders) => return Err(Error::TooManyHeaders),
        Err(httparse::Error::HeaderName) => return Err(Error::Malformed("invalid header name")),
        Err(httparse::Error::HeaderValue) => return Err(Error::Malformed("invalid header value")),
        Err(_) => return Err(request_line_error(buf)),
    }
    let (Some(method), Some(target), Some(version)) = (request.method, request.path, request.version) else {
        return Err(Error::Malformed("malformed request line"));
    };
    let http11 = version == 1;
    let method_name = method.chars().take(16).collect();
    let method = match method {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "OPTIONS" => Method::Options,
        _ => Method::Other,
    };
    let (path, query) = split_target(target, method)?;

    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut transfer_encoding = false;
    let mut hosts = 0;
    let mut host = None;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut expect_continue = false;
    let mut last_event_id = None;
    let mut authorization = None;
    let mut origin = None;
    let mut cookie: Option<String> = None;
    let (mut one_authorization, mut one_origin, mut one_last_event_id) = (false, false, false);
    for header in request.headers.iter() {
        let name = header.name;
        let value = std::str::from_utf8(header.value).map(trim_ows);
        if name.eq_ignore_ascii_case("content-length") {
            let length = value.ok().and_then(parse_content_length).ok_or(Error::Malformed("invalid Content-Length"))?;
            if content_length.is_some_and(|seen| seen != length) {
                return Err(Error::Malformed("conflicting Content-Length headers"));
            }
            content_length = Some(length);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            let value = value.map_err(|_| Error::Malformed("invalid Transfer-Encoding"))?;
            // Only a single `chunked` is acceptable; `chunked` must be the last
            // coding, and any other coding is one we do not implement.
            if transfer_encoding {
                return Err(Error::UnsupportedTransferCoding);
            }
            transfer_encoding = true;
            let mut codings = value.split(',').map(trim_ows);
            let last = codings.next_back().unwrap_or("");
            if !last.eq_ignore_ascii_case("chunked") {
                return Err(Error::Malformed("chunked must be the final transfer coding"));
            }
            if codings.next().is_some() {
                return Err(Error::UnsupportedTransferCoding);
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case("host") {
            hosts += 1;
            host = value.ok().map(str::to_owned);
        } else if name.eq_ignore_ascii_case("connection") {
            // Tokens are compared as bytes: a non-UTF-8 byte elsewhere in the
            // field must not hide a `close` (found by the head fuzz target).
            for token in header.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive_token |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case("expect") {
            match value {
                Ok(v) if v.eq_ignore_ascii_case("100-continue") => expect_continue = true,
                _ => return Err(Error::UnsupportedExpectation),
            }
        } else if name.eq_ignore_ascii_case("last-event-id") {
            only_one(&mut one_last_event_id, "more than one Last-Event-ID header")?;
            let value = value.map_err(|_| Error::Malformed("invalid Last-Event-ID"))?;
            last_event_id = Some(value.to_owned());
        } else if name.eq_ignore_ascii_case("authorization") {
            only_one(&mut one_authorization, "more than one Authorization header")?;
            authorization = value.ok().map(str::to_owned);
        } else if name.eq_ignore_ascii_case("origin") {
            only_one(&mut one_origin, "more than one Origin header")?;
            origin = value.ok().map(str::to_owned);
        } else if name.eq_ignore_ascii_case("cookie")
            && let Ok(value) = value
        {
            match &mut cookie {
                Some(cookies) => {
                    cookies.push_str("; ");
                    cookies.push_str(value);
                }
                None => cookie = Some(value.to_owned()),
            }
        }
    }

    // RFC 9112 3.2: a 1.1 request without exactly one Host is a 400.
    if http11 && hosts != 1 {
        return Err(Error::Malformed("HTTP/1.1 request needs exactly one Host header"));
    }
    let body = match (content_length, chunked) {
        (Some(_), true) => return Err(Error::Malformed("both Content-Length and Transfer-Encoding")),
        // RFC 9112 6.1: Transfer-Encoding in a 1.0 request means broken framing.
        (None, true) if !http11 => return Err(Error::Malformed("Transfer-Encoding in an HTTP/1.0 request")),
        (None, true) => BodyFraming::Chunked,
        (None, false) => BodyFraming::None,
        (Some(n), false) => BodyFraming::Length(n),
    };
    Ok(RequestHead {
        method,
        method_name,
        path: path.to_owned(),
        query: query.to_owned(),
        http11,
        body,
        keep_alive: if http11 { !close } else { keep_alive_token && !close },
        expect_continue: expect_continue && http11,
        last_event_id,
        authorization,
        origin,
        host,
        cookie,
    })
}

/// Says what is wrong with a request line httparse refused. Its errors say
/// where it stopped, not why: `Token` covers a bad method, a bad target and
/// a missing version (HTTP/0.9) alike, and a version it cannot read may be a
/// well-formed one we do not implement (505), or no version at all (400).
///
/// ```text
/// request-line = method SP request-target SP HTTP-version   (RFC 9112 3)
/// HTTP-version = "HTTP" "/" DIGIT "." DIGIT                 (RFC 9112 2.3)
/// ```
fn request_line_error(buf: &[u8]) -> Error {
    let rest = &buf[blank_lines(buf)..];
    let line = rest.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let parts: Vec<&[u8]> = line.splitn(4, |&b| b == b' ').collect();
    let why = match parts[..] {
        [method, ..] if !is_token(method) => "invalid method",
        [_, target, ..] if !is_target(target) => "invalid request target",
        [_, _] => "no HTTP version (HTTP/0.9 is not supported)",
        [_, _, version] => match version {
            [b'H', b'T', b'T', b'P', b'/', major, b'.', minor] if major.is_ascii_digit() && minor.is_ascii_digit() => {
                if *major == b'1' && matches!(minor, b'0' | b'1') {
                    "malformed request head"
                } else {
                    return Error::UnsupportedVersion;
                }
            }
            _ => "invalid HTTP version",
        },
        _ => "malformed request line",
    };
    Error::Malformed(why)
}

/// `token = 1*tchar` (RFC 9110 5.6.2): a method or a field name.
fn is_token(bytes: &[u8]) -> bool {
    !bytes.is_empty() && bytes.iter().all(|&b| is_tchar(b))
}

/// `tchar`, a byte of a token (RFC 9110 5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A request target is visible characters (and, leniently, non-ASCII bytes),
/// never a control character or a space.
fn is_target(bytes: &[u8]) -> bool {
    !bytes.is_empty() && bytes.iter().all(|&b| b.is_ascii_graphic() || b >= 0x80)
}

/// Refuses a second field of a kind that is one value, not a list (RFC 9110
/// 5.3): of two `Authorization` fields, which one counts is a guess, and a
/// proxy in front may check one credential while we use the other. (Two
/// `Cookie` lines are one list, RFC 6265 5.4, and are joined instead.)
fn only_one(seen: &mut bool, duplicate: &'static str) -> Result<(), Error> {
    if std::mem::replace(seen, true) { Err(Error::Malformed(duplicate)) } else { Ok(()) }
}

/// Trims optional whitespace (RFC 9110 5.6.3: `OWS = *( SP / HTAB )`).
/// Not `str::trim`, which also strips Unicode spaces such as U+0085: a
/// `Content-Length: \u{85}7` must be refused, not read as 7, or we would
/// disagree with a proxy in front of us about where the body ends.
fn trim_ows(text: &str) -> &str {
    text.trim_matches([' ', '\t'])
}

/// Splits a request target into path and query (RFC 9112 3.2). Accepts
/// origin-form (`/p?q`), absolute-form (`http://host/p?q`) and, for OPTIONS,
/// asterisk-form (`*`).
fn split_target(target: &str, method: Method) -> Result<(&str, &str), Error> {
    let origin_form = if target.starts_with('/') {
        target
    } else if target == "*" && method == Method::Options {
        return Ok(("*", ""));
    } else if let Some(rest) =
        strip_prefix_ignore_case(target, "http://").or_else(|| strip_prefix_ignore_case(target, "https://"))
    {
        rest.find('/').map_or("/", |at| &rest[at..])
    } else {
        return Err(Error::Malformed("invalid request target"));
    };
    Ok(origin_form.split_once('?').unwrap_or((origin_form, "")))
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &text[prefix.len()..])
}

/// `Content-Length = 1*DIGIT`: no sign, no spaces inside, no list, no overflow.
fn parse_content_length(value: &str) -> Option<u64> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

/// Decodes a request body, bounded by `max_bytes`, as its bytes arrive.
#[derive(Debug, Clone)]
pub enum BodyDecoder {
    /// A `Content-Length` body with this many bytes still to come.
    Length(u64),
    /// A chunked body.
    Chunked(ChunkedDecoder),
}

impl BodyDecoder {
    /// A decoder for `framing`, or an error if the declared length is already
    /// over `max_bytes` (so a client can be refused before it sends the body).
    pub fn new(framing: BodyFraming, max_bytes: usize) -> Result<BodyDecoder, Error> {
        match framing {
            BodyFraming::None => Ok(BodyDecoder::Length(0)),
            BodyFraming::Length(n) if n > max_bytes as u64 => Err(Error::BodyTooLarge),
            BodyFraming::Length(n) => Ok(BodyDecoder::Length(n)),
            BodyFraming::Chunked => Ok(BodyDecoder::Chunked(ChunkedDecoder::new(max_bytes))),
        }
    }

    /// Consumes body bytes from `input`, appending the payload to `out`.
    /// Returns how many bytes of `input` were used; bytes after the end of the
    /// body are left for the next request.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, Error> {
        match self {
            BodyDecoder::Length(remaining) => {
                let take = input.len().min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                out.extend_from_slice(&input[..take]);
                *remaining -= take as u64;
                Ok(take)
            }
            BodyDecoder::Chunked(decoder) => decoder.decode(input, out),
        }
    }

    /// Whether the whole body has been read.
    pub fn is_done(&self) -> bool {
        match self {
            BodyDecoder::Length(remaining) => *remaining == 0,
            BodyDecoder::Chunked(decoder) => decoder.is_done(),
        }
    }
}

/// A streaming decoder for the chunked transfer coding (RFC 9112 section 7.1):
///
/// ```text
/// chunked-body = *chunk last-chunk trailer-section CRLF
/// chunk        = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
/// last-chunk   = 1*("0") [ chunk-ext ] CRLF
/// chunk-ext    = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
/// trailer-section = *( field-line CRLF )
/// field-line   = field-name ":" OWS field-value OWS
/// ```
///
/// It is fed arbitrary slices and keeps its place between them. Line endings
/// inside the chunk framing must be CRLF (a bare LF here is a known smuggling
/// vector), the size has at most 16 hex digits and is followed by CRLF or,
/// after optional whitespace, a `;`; every trailer line is a field (a name
/// and a colon); extensions and trailers are bounded and skipped, and the
/// total payload is bounded.
///
/// ```
/// use bare_sse::http::ChunkedDecoder;
/// let mut decoder = ChunkedDecoder::new(1024);
/// let mut body = Vec::new();
/// let used = decoder.decode(b"5\r\nhello\r\n0\r\n\r\nNEXT", &mut body).unwrap();
/// assert_eq!((used, &body[..], decoder.is_done()), (15, &b"hello"[..], true));
/// ```
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: ChunkState,
    /// Payload bytes decoded so far.
    total: u64,
    max_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Reading the hex chunk size; `digits` so far.
    Size {
        size: u64,
        digits: u8,
    },
    /// Whitespace after the chunk size, which only a `;` may follow;
    /// `len` bytes of extension so far.
    ExtensionBws {
        size: u64,
        len: usize,
    },
    /// Skipping a chunk extension; `len` bytes so far.
    Extension {
        size: u64,
        len: usize,
    },
    /// Saw CR after the size line; expecting LF.
    SizeLf {
        size: u64,
    },
    /// Inside chunk data, `remaining` bytes to go.
    Data {
        remaining: u64,
    },
    /// Expecting the CR after chunk data.
    DataCr,
    /// Expecting the LF after chunk data.
    DataLf,
    /// At the start of a trailer line (or the final CRLF).
    TrailerStart {
        len: usize,
    },
    /// Inside a trailer field's name.
    TrailerName {
        len: usize,
    },
    /// Inside a trailer field's value.
    Trailer {
        len: usize,
    },
    /// Saw CR ending a trailer line; expecting LF.
    TrailerLf {
        len: usize,
    },
    /// Saw the CR of the final CRLF; expecting LF.
    FinalLf,
    Done,
}

impl ChunkedDecoder {
    /// A decoder that refuses bodies longer than `max_bytes` of payload.
    pub fn new(max_bytes: usize) -> ChunkedDecoder {
        ChunkedDecoder { state: ChunkState::Size { size: 0, digits: 0 }, total: 0, max_bytes: max_bytes as u64 }
    }

    /// Whether the last chunk and trailers have been read.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Consumes framing and payload from `input`, appending payload to `out`.
    /// Returns how many bytes were used; stops right after the body ends.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, Error> {
        use ChunkState::*;
        const BAD_SIZE: Error = Error::Malformed("invalid chunk size line");
        let mut used = 0;
        while used < input.len() && self.state != Done {
            let byte = input[used];
            self.state = match self.state {
                Size { size, digits } => match (byte, hex_value(byte)) {
                    (_, Some(v)) if digits < 16 => Size { size: size << 4 | u64::from(v), digits: digits + 1 },
                    (_, Some(_)) => return Err(BAD_SIZE),
                    (b';', None) if digits > 0 => Extension { size, len: 1 },
                    (b' ' | b'\t', None) if digits > 0 => ExtensionBws { size, len: 1 },
                    (b'\r', None) if digits > 0 => SizeLf { size },
                    _ => return Err(BAD_SIZE),
                },
                ExtensionBws { size, len } => match byte {
                    _ if len >= MAX_CHUNK_EXT_BYTES => return Err(Error::Malformed("chunk extension too long")),
                    b' ' | b'\t' => ExtensionBws { size, len: len + 1 },
                    b';' => Extension { size, len: len + 1 },
                    _ => return Err(Error::Malformed("chunk size followed by neither CRLF nor an extension")),
                },
                Extension { size, len } => match byte {
                    b'\r' => SizeLf { size },
                    _ if len >= MAX_CHUNK_EXT_BYTES => return Err(Error::Malformed("chunk extension too long")),
                    b'\t' | b' '..=b'~' | 0x80.. => Extension { size, len: len + 1 },
                    _ => return Err(BAD_SIZE),
                },
                SizeLf { size } => match byte {
                    b'\n' if size == 0 => TrailerStart { len: 0 },
                    b'\n' => {
                        // Saturating: a peer's 16 hex digits can reach u64::MAX.
                        self.total = self.total.saturating_add(size);
                        if self.total > self.max_bytes {
                            return Err(Error::BodyTooLarge);
                        }
                        Data { remaining: size }
                    }
                    _ => return Err(BAD_SIZE),
                },
                Data { remaining } => {
                    let available = (input.len() - used) as u64;
                    let take = remaining.min(available) as usize;
                    out.extend_from_slice(&input[used..used + take]);
                    used += take;
                    let remaining = remaining - take as u64;
                    self.state = if remaining == 0 { DataCr } else { Data { remaining } };
                    continue;
                }
                DataCr if byte == b'\r' => DataLf,
                DataLf if byte == b'\n' => Size { size: 0, digits: 0 },
                DataCr | DataLf => return Err(Error::Malformed("chunk data not followed by CRLF")),
                TrailerStart { len } => match byte {
                    b'\r' => FinalLf,
                    b'\n' => return Err(Error::Malformed("bare LF in chunked trailer")),
                    // Every line is a field (RFC 9112 7.1.2): a name, then a
                    // colon. Not whitespace (that would be obs-fold), and not a
                    // line of another kind, which a proxy may read otherwise.
                    _ if is_tchar(byte) => TrailerName { len: len + 1 },
                    _ => return Err(Error::Malformed("invalid chunked trailer field name")),
                },
                TrailerName { len } | Trailer { len } if len >= MAX_TRAILER_BYTES => return Err(Error::HeadTooLarge),
                TrailerName { len } => match byte {
                    b':' => Trailer { len: len + 1 },
                    _ if is_tchar(byte) => TrailerName { len: len + 1 },
                    b'\r' => return Err(Error::Malformed("chunked trailer field without a colon")),
                    _ => return Err(Error::Malformed("invalid chunked trailer field name")),
                },
                Trailer { len } => match byte {
                    b'\r' => TrailerLf { len: len + 1 },
                    b'\t' | b' '..=b'~' | 0x80.. => Trailer { len: len + 1 },
                    _ => return Err(Error::Malformed("invalid byte in chunked trailer")),
                },
                TrailerLf { len } if byte == b'\n' => TrailerStart { len: len + 1 },
                FinalLf if byte == b'\n' => Done,
                TrailerLf { .. } | FinalLf => return Err(Error::Malformed("bare CR in chunked trailer")),
                Done => Done,
            };
            used += 1;
        }
        Ok(used)
    }
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Result<RequestHead, Error> {
        let end = find_head_end(text.as_bytes(), 0).expect("complete head");
        assert_eq!(end, text.len(), "test heads end at the blank line");
        parse_head(text.as_bytes())
    }

    // ---- finding the end of a head ----

    #[test]
    fn head_end_crlf_lf_and_split_reads() {
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\r\n", 0), Some(18));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\n\n", 0), Some(16));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nHost: x\r\n", 0), None);
        assert_eq!(find_head_end(b"\n", 0), None);
        // Fed byte by byte, scanning only from where the last scan stopped.
        let text = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nrest";
        let found = (1..=text.len()).find_map(|n| find_head_end(&text[..n], n - 1));
        assert_eq!(found, Some(27));
    }

    // ---- request heads ----

    #[test]
    fn simple_get() {
        let h = head("GET /events?topic=a HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(h.method, Method::Get);
        assert_eq!((h.path.as_str(), h.query.as_str()), ("/events", "topic=a"));
        assert!(h.http11 && h.keep_alive);
        assert_eq!(h.body, BodyFraming::None);
    }

    #[test]
    fn keep_alive_rules() {
        assert!(!head("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap().keep_alive);
        assert!(!head("GET / HTTP/1.0\r\n\r\n").unwrap().keep_alive);
        assert!(head("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").unwrap().keep_alive);
        assert!(!head("GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, close\r\n\r\n").unwrap().keep_alive);
        let not_utf8 = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close, \xff\r\n\r\n";
        assert!(!parse_head(not_utf8).unwrap().keep_alive);
    }

    #[test]
    fn absolute_and_asterisk_targets() {
        let h = head("GET http://example.com/events?x HTTP/1.1\r\nHost: example.com\r\n\r\n").unwrap();
        assert_eq!((h.path.as_str(), h.query.as_str()), ("/events", "x"));
        let h = head("OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(h.path, "*");
        assert_eq!(head("GET * HTTP/1.1\r\nHost: x\r\n\r\n"), Err(Error::Malformed("invalid request target")));
        assert_eq!(head("GET events HTTP/1.1\r\nHost: x\r\n\r\n"), Err(Error::Malformed("invalid request target")));
    }

    #[test]
    fn body_framing() {
        let cases: &[(&str, Result<BodyFraming, Error>)] = &[
            ("Content-Length: 5\r\n", Ok(BodyFraming::Length(5))),
            ("Content-Length: 0\r\n", Ok(BodyFraming::Length(0))),
            ("Content-Length: 5\r\nContent-Length: 5\r\n", Ok(BodyFraming::Length(5))),
            ("Transfer-Encoding: chunked\r\n", Ok(BodyFraming::Chunked)),
            ("Transfer-Encoding: Chunked \r\n", Ok(BodyFraming::Chunked)),
            ("Content-Length: 5\r\nContent-Length: 6\r\n", Err(Error::Malformed("conflicting Content-Length headers"))),
            (
                "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
                Err(Error::Malformed("both Content-Length and Transfer-Encoding")),
            ),
            ("Content-Length: -1\r\n", Err(Error::Malformed("invalid Content-Length"))),
            ("Content-Length: +5\r\n", Err(Error::Malformed("invalid Content-Length"))),
            ("Content-Length: 5, 5\r\n", Err(Error::Malformed("invalid Content-Length"))),
            ("Content-Length: 99999999999999999999999\r\n", Err(Error::Malformed("invalid Content-Length"))),
            ("Content-Length: \r\n", Err(Error::Malformed("invalid Content-Length"))),
            ("Content-Length: \u{85}7\r\n", Err(Error::Malformed("invalid Content-Length"))),
            (
                "Transfer-Encoding: \u{a0}chunked\r\n",
                Err(Error::Malformed("chunked must be the final transfer coding")),
            ),
            ("Transfer-Encoding: gzip, chunked\r\n", Err(Error::UnsupportedTransferCoding)),
            (
                "Transfer-Encoding: chunked, gzip\r\n",
                Err(Error::Malformed("chunked must be the final transfer coding")),
            ),
            ("Transfer-Encoding: identity\r\n", Err(Error::Malformed("chunked must be the final transfer coding"))),
            ("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", Err(Error::UnsupportedTransferCoding)),
        ];
        for (headers, expected) in cases {
            let text = format!("POST /send-event HTTP/1.1\r\nHost: x\r\n{headers}\r\n");
            assert_eq!(head(&text).map(|h| h.body), *expected, "{headers:?}");
        }
    }

    #[test]
    fn transfer_encoding_in_http10_is_refused() {
        let err = head("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap_err();
        assert_eq!(err.status(), Status::BAD_REQUEST);
    }

    #[test]
    fn host_is_required_once_in_http11() {
        assert_eq!(head("GET / HTTP/1.1\r\n\r\n").unwrap_err().status(), Status::BAD_REQUEST);
        assert_eq!(head("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n").unwrap_err().status(), Status::BAD_REQUEST);
        assert!(head("GET / HTTP/1.0\r\n\r\n").is_ok());
    }

    #[test]
    fn expect() {
        assert!(head("POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-Continue\r\n\r\n").unwrap().expect_continue);
        assert!(!head("POST / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n").unwrap().expect_continue);
        assert_eq!(head("POST / HTTP/1.1\r\nHost: x\r\nExpect: tea\r\n\r\n"), Err(Error::UnsupportedExpectation));
    }

    #[test]
    fn malformed_heads_are_refused() {
        let cases: &[(&str, u16)] = &[
            ("GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHo st: x\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: x\0y\r\n\r\n", 400),
            ("G\u{e9}T / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
            ("GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
            ("GET /\r\n\r\n", 400),
            ("\r\n\r\n", 400),
        ];
        for (text, status) in cases {
            let end = find_head_end(text.as_bytes(), 0).unwrap();
            let result = parse_head(&text.as_bytes()[..end]);
            assert_eq!(result.map_err(|e| e.status().0), Err(*status), "{text:?}");
        }
    }

    #[test]
    fn only_a_well_formed_version_gets_505() {
        // RFC 9110 15.6.6: 505 is for a major version we do not support;
        // a version that is not `HTTP/DIGIT.DIGIT` makes a malformed request.
        for version in ["HTTP/2.0", "HTTP/3.0", "HTTP/0.9", "HTTP/2.1"] {
            let text = format!("GET / {version}\r\nHost: x\r\n\r\n");
            assert_eq!(head(&text), Err(Error::UnsupportedVersion), "{text:?}");
        }
        assert_eq!(head("PRI * HTTP/2.0\r\n\r\n"), Err(Error::UnsupportedVersion), "the HTTP/2 preface");
        for line in [
            "GET / http/1.1",
            "GET / HTTP/1",
            "GET / HTTP/1.12",
            "GET / HTTP/x.1",
            "GET / HTTPS/1.1",
            "GET / HTTP/1.1/",
            "GET /health z HTTP/1.1",
            "GET / HTTP/1.1 ",
            "GET /  HTTP/1.1",
        ] {
            let text = format!("{line}\r\nHost: x\r\n\r\n");
            let refused = head(&text).map_err(|error| error.status());
            assert_eq!(refused, Err(Status::BAD_REQUEST), "{text:?}");
        }
    }

    #[test]
    fn request_line_refusals_say_what_is_wrong() {
        let cases: &[(&[u8], &str)] = &[
            (b"GET /\r\n\r\n", "no HTTP version (HTTP/0.9 is not supported)"),
            (b"GET /events\n\n", "no HTTP version (HTTP/0.9 is not supported)"),
            (b"GET /a\0b HTTP/1.1\r\nHost: x\r\n\r\n", "invalid request target"),
            (b"GET /\x7f HTTP/1.1\r\nHost: x\r\n\r\n", "invalid request target"),
            (b"GET \x01 HTTP/1.1\r\nHost: x\r\n\r\n", "invalid request target"),
            (b"G(T / HTTP/1.1\r\nHost: x\r\n\r\n", "invalid method"),
            (b"G\xc3\xa9T / HTTP/1.1\r\nHost: x\r\n\r\n", "invalid method"),
            (b"GET\t/ HTTP/1.1\r\nHost: x\r\n\r\n", "invalid method"),
            (b"GET\r\n\r\n", "malformed request line"),
            (b"GET / HTTP/1.1 x\r\nHost: x\r\n\r\n", "malformed request line"),
            (b"GET / HTTP/1.12\r\nHost: x\r\n\r\n", "invalid HTTP version"),
            (b"NOT HTTP\r\n\r\n", "no HTTP version (HTTP/0.9 is not supported)"),
        ];
        for (text, why) in cases {
            assert_eq!(find_head_end(text, 0), Some(text.len()));
            assert_eq!(parse_head(text), Err(Error::Malformed(why)), "{:?}", String::from_utf8_lossy(text));
        }
    }

    #[test]
    fn a_bare_cr_is_refused_with_its_reason() {
        let bare_cr = Err(Error::Malformed("bare CR in request head"));
        for text in [
            "GET / HTTP/1.1\r\nHost: x\rX: y\r\n\r\n",
            "GET / HTTP/1.1\rHost: x\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nX\r: y\r\n\r\n",
        ] {
            assert_eq!(head(text), bare_cr, "{text:?}");
        }
        assert_eq!(find_bare_cr(b"GET / HTTP/1.1\r\nHost: x\r", 0), None, "a CR at the end waits for its LF");
        let text = b"GET / HTTP/1.1\r\nHost: x\rX";
        let found = (1..=text.len()).find_map(|n| find_bare_cr(&text[..n], n - 1));
        assert_eq!(found, Some(23), "fed byte by byte, scanning only the new byte and the one before");
    }

    #[test]
    fn too_many_headers() {
        let mut text = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
        for i in 0..MAX_HEADERS {
            text.push_str(&format!("X-{i}: y\r\n"));
        }
        text.push_str("\r\n");
        assert_eq!(head(&text), Err(Error::TooManyHeaders));
    }

    #[test]
    fn fields_we_act_on_may_appear_once() {
        // With two, which one counts is a guess, and a proxy in front may
        // guess otherwise: check one credential while we use the other.
        for (field, why) in [
            ("Authorization: Bearer a", "more than one Authorization header"),
            ("Origin: https://a.example", "more than one Origin header"),
            ("Last-Event-ID: 1", "more than one Last-Event-ID header"),
        ] {
            let lower = field.to_ascii_lowercase();
            for second in [field, lower.as_str(), "Authorization: Bearer b", "Origin: x", "Last-Event-ID: 2"] {
                let text = format!("GET / HTTP/1.1\r\nHost: x\r\n{field}\r\n{second}\r\n\r\n");
                let same_field =
                    second.split(':').next().unwrap().eq_ignore_ascii_case(field.split(':').next().unwrap());
                let expected = if same_field { Err(Error::Malformed(why)) } else { Ok(()) };
                assert_eq!(head(&text).map(|_| ()), expected, "{text:?}");
            }
        }
        // A second one that is not text counts too.
        let text = b"GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer a\r\nAuthorization: \xff\r\n\r\n";
        assert_eq!(parse_head(text), Err(Error::Malformed("more than one Authorization header")));
        // Cookie lines are one list (RFC 6265 5.4; HTTP/2 splits it, RFC
        // 9113 8.2.3): joined, not refused.
        let h = head("GET / HTTP/1.1\r\nHost: x\r\nCookie: a=1\r\ncookie: b=2\r\n\r\n").unwrap();
        assert_eq!(h.cookie.as_deref(), Some("a=1; b=2"));
    }

    #[test]
    fn last_event_id_is_kept() {
        let h = head("GET /events HTTP/1.1\r\nHost: x\r\nLast-Event-ID:  42 \r\n\r\n").unwrap();
        assert_eq!(h.last_event_id.as_deref(), Some("42"));
    }

    // ---- bodies ----

    /// Decodes `input` whole and in every split into two pieces and in 1-byte
    /// pieces; all must agree.
    fn decode_chunked(input: &[u8], max: usize) -> Result<(Vec<u8>, usize), Error> {
        let whole = {
            let mut d = ChunkedDecoder::new(max);
            let mut out = Vec::new();
            d.decode(input, &mut out).map(|used| (out, if d.is_done() { used } else { usize::MAX }))
        };
        let bytewise = {
            let mut d = ChunkedDecoder::new(max);
            let mut out = Vec::new();
            let mut used = 0;
            let mut result = Ok(());
            for chunk in input.chunks(1) {
                if d.is_done() {
                    break;
                }
                match d.decode(chunk, &mut out) {
                    Ok(n) => used += n,
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            result.map(|()| (out, if d.is_done() { used } else { usize::MAX }))
        };
        assert_eq!(whole, bytewise, "split decoding differs for {input:?}");
        whole
    }

    #[test]
    fn chunked_bodies() {
        let ok: &[(&[u8], &[u8], usize)] = &[
            (b"0\r\n\r\n", b"", 5),
            (b"5\r\nhello\r\n0\r\n\r\n", b"hello", 15),
            (b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", b"hello world", 26),
            (b"A\r\n0123456789\r\n0\r\n\r\nGET", b"0123456789", 20),
            (b"5;ext=1;x=\"q\"\r\nhello\r\n0;last\r\n\r\n", b"hello", 32),
            (b"5 ;ext\r\nhello\r\n0\r\n\r\n", b"hello", 20),
            (b"5\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n", b"hello", 29),
            (b"0000000000000005\r\nhello\r\n0\r\n\r\n", b"hello", 30),
        ];
        for (input, payload, used) in ok {
            assert_eq!(decode_chunked(input, 1024), Ok((payload.to_vec(), *used)), "{input:?}");
        }
        let bad: &[&[u8]] = &[
            b"\r\n",
            b"x\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"-5\r\n",
            b"00000000000000005\r\n",
            b"FFFFFFFFFFFFFFFFF\r\n",
            b"5;\x01\r\n",
            b"0\r\n\n",
            b"0\r\nX: 1\n\r\n",
            b"0\r\nX: \x00\r\n\r\n",
            b"0\r\n\x01X: 1\r\n\r\n",
            b"0\r\nX: 1\r\n folded\r\n\r\n",
        ];
        for input in bad {
            assert!(decode_chunked(input, 1024).is_err(), "{input:?} should be refused");
        }
    }

    #[test]
    fn whitespace_after_a_chunk_size_must_lead_to_an_extension() {
        // chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
        // (RFC 9112 7.1.1): after the size comes CRLF or a `;`, and only
        // whitespace before it. Anything else was skipped as an extension.
        for input in [&b"5 \t ;ext\r\nhello\r\n0\r\n\r\n"[..], b"5\t;\r\nhello\r\n0 ; x\r\n\r\n"] {
            assert_eq!(decode_chunked(input, 1024), Ok((b"hello".to_vec(), input.len())), "{input:?}");
        }
        let junk = Err(Error::Malformed("chunk size followed by neither CRLF nor an extension"));
        for input in [&b"5 junk\r\nhello\r\n0\r\n\r\n"[..], b"5\tx;y\r\n", b"5 \r\nhello\r\n", b"0 x\r\n\r\n"] {
            assert_eq!(decode_chunked(input, 1024), junk, "{input:?}");
        }
    }

    #[test]
    fn trailer_lines_are_fields() {
        // trailer-section = *( field-line CRLF ), field-line = field-name ":"
        // OWS field-value OWS (RFC 9112 7.1.2, 5). A line that is not a field
        // was swallowed: after `0\r\n`, a request line vanished, where a
        // proxy in front may have seen a second request.
        let ok: &[&[u8]] = &[b"0\r\nX-Trailer: 1\r\nY:\r\n\r\n", b"0\r\nA!#$%&'*+-.^_`|~9:a:b\r\n\r\n"];
        for input in ok {
            assert_eq!(decode_chunked(input, 1024), Ok((Vec::new(), input.len())), "{input:?}");
        }
        let no_colon = Error::Malformed("chunked trailer field without a colon");
        let bad_name = Error::Malformed("invalid chunked trailer field name");
        let bad: &[(&[u8], Error)] = &[
            (b"0\r\nGET /x HTTP/1.1\r\n\r\n", bad_name),
            (b"0\r\nX\r\n\r\n", no_colon),
            (b"0\r\nX-Trailer\r\n\r\n", no_colon),
            (b"0\r\n:x\r\n\r\n", bad_name),
            (b"0\r\nX Y: 1\r\n\r\n", bad_name),
            (b"0\r\nX(: 1\r\n\r\n", bad_name),
            (b"0\r\nX : 1\r\n\r\n", bad_name),
        ];
        for (input, error) in bad {
            assert_eq!(decode_chunked(input, 1024), Err(*error), "{input:?}");
        }
    }

    #[test]
    fn chunked_limits() {
        assert_eq!(decode_chunked(b"401\r\n", 1024), Err(Error::BodyTooLarge));
        assert_eq!(decode_chunked(b"FFFFFFFFFFFFFFFF\r\n", 1024), Err(Error::BodyTooLarge));
        // Found by the fuzzer: a huge size after a first chunk overflowed the
        // running total.
        assert_eq!(decode_chunked(b"1\r\na\r\nFFFFFFFFFFFFFFFF\r\n", 1024), Err(Error::BodyTooLarge));
        let long_ext = format!("1;{}\r\n", "x".repeat(MAX_CHUNK_EXT_BYTES));
        assert!(decode_chunked(long_ext.as_bytes(), 1024).is_err());
        let long_trailer = format!("0\r\nX: {}\r\n\r\n", "y".repeat(MAX_TRAILER_BYTES));
        assert_eq!(decode_chunked(long_trailer.as_bytes(), 1024), Err(Error::HeadTooLarge));
    }

    #[test]
    fn length_bodies() {
        assert!(matches!(BodyDecoder::new(BodyFraming::Length(11), 10), Err(Error::BodyTooLarge)));
        let mut d = BodyDecoder::new(BodyFraming::Length(5), 10).unwrap();
        let mut out = Vec::new();
        assert_eq!(d.decode(b"hel", &mut out), Ok(3));
        assert!(!d.is_done());
        assert_eq!(d.decode(b"loGET", &mut out), Ok(2));
        assert!(d.is_done());
        assert_eq!(out, b"hello");
    }
}
