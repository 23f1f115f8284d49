//! Responses: the status line and header fields, and the [`Response`] an
//! application hands the connection machine. Every HTTP response byte the
//! server sends is written by [`write_head`] (and a body after it).

use std::borrow::Cow;
use std::fmt::Write as _;

/// A response status code with its reason phrase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status(pub u16);

impl Status {
    pub const CONTINUE: Status = Status(100);
    pub const OK: Status = Status(200);
    pub const NO_CONTENT: Status = Status(204);
    pub const BAD_REQUEST: Status = Status(400);
    pub const UNAUTHORIZED: Status = Status(401);
    pub const FORBIDDEN: Status = Status(403);
    pub const NOT_FOUND: Status = Status(404);
    pub const METHOD_NOT_ALLOWED: Status = Status(405);
    pub const REQUEST_TIMEOUT: Status = Status(408);
    pub const LENGTH_REQUIRED: Status = Status(411);
    pub const PAYLOAD_TOO_LARGE: Status = Status(413);
    pub const EXPECTATION_FAILED: Status = Status(417);
    pub const HEADERS_TOO_LARGE: Status = Status(431);
    pub const INTERNAL_ERROR: Status = Status(500);
    pub const NOT_IMPLEMENTED: Status = Status(501);
    pub const SERVICE_UNAVAILABLE: Status = Status(503);
    pub const GATEWAY_TIMEOUT: Status = Status(504);
    pub const VERSION_NOT_SUPPORTED: Status = Status(505);

    /// The standard reason phrase (RFC 9110 section 15).
    pub fn reason(self) -> &'static str {
        match self.0 {
            100 => "Continue",
            200 => "OK",
            204 => "No Content",
            400 => "Bad Request",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            411 => "Length Required",
            413 => "Content Too Large",
            417 => "Expectation Failed",
            431 => "Request Header Fields Too Large",
            500 => "Internal Server Error",
            501 => "Not Implemented",
            503 => "Service Unavailable",
            504 => "Gateway Timeout",
            505 => "HTTP Version Not Supported",
            _ => "",
        }
    }
}

/// A response, before the connection machine frames it: the machine adds
/// `Content-Length` (or nothing, for a stream), `Connection`, and leaves out
/// the body of an answer to `HEAD`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: Status,
    /// Header fields, in order (`Content-Type` among them).
    pub headers: Vec<(&'static str, String)>,
    /// The body; `None` for no `Content-Length`: the head of a stream, whose
    /// body has no length and ends when the connection closes, or a 204.
    pub body: Option<Cow<'static, [u8]>>,
    /// Close the connection after this response, whatever the request asked.
    pub close: bool,
    /// For a refusal: why, in a few words, for the server's log (not sent).
    pub refusal: Option<&'static str>,
}

impl Response {
    /// A response with a body of type `content_type`.
    pub fn new(status: Status, content_type: &'static str, body: impl Into<Cow<'static, [u8]>>) -> Response {
        Response {
            status,
            headers: vec![("Content-Type", content_type.to_owned())],
            body: Some(body.into()),
            close: false,
            refusal: None,
        }
    }

    /// The head of a stream of `content_type`: no body length.
    pub fn stream(content_type: &'static str) -> Response {
        Response {
            status: Status::OK,
            headers: vec![("Content-Type", content_type.to_owned())],
            body: None,
            close: false,
            refusal: None,
        }
    }

    /// A refusal with a short JSON body, `{"error": why}`, logged as
    /// `reason`.
    pub fn refusal(status: Status, reason: &'static str, why: &str) -> Response {
        let body = serde_json::json!({ "error": why }).to_string();
        Response { refusal: Some(reason), ..Response::new(status, "application/json", body.into_bytes()) }
    }

    /// A refusal whose reason is also what the client is told.
    pub fn error(status: Status, reason: &'static str) -> Response {
        Response::refusal(status, reason, reason)
    }

    /// The same response with no header fields yet.
    pub fn without_headers(mut self) -> Response {
        self.headers.clear();
        self
    }

    /// Adds a header field.
    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    /// Adds header fields.
    pub fn with_headers(mut self, headers: impl IntoIterator<Item = (&'static str, String)>) -> Response {
        self.headers.extend(headers);
        self
    }

    /// Makes the connection close after this response.
    pub fn closing(mut self) -> Response {
        self.close = true;
        self
    }

    /// The whole response as bytes, for a connection that will be closed
    /// without a [`crate::http::conn::Conn`] (the connection cap's answer).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let body = self.body.as_deref().unwrap_or_default();
        write_head(&mut out, self.status, &self.headers, Some(body.len()), true);
        out.extend_from_slice(body);
        out
    }
}

/// Writes a response status line and headers, ending with the blank line.
///
/// `headers` are written as given; `content_length` adds `Content-Length`
/// (omit it only for a stream that ends when the connection closes), and
/// `close` adds `Connection: close`.
pub fn write_head(
    out: &mut Vec<u8>,
    status: Status,
    headers: &[(&str, String)],
    content_length: Option<usize>,
    close: bool,
) {
    // Writing to a String cannot fail.
    let mut head = String::with_capacity(160);
    let _ = write!(head, "HTTP/1.1 {} {}\r\n", status.0, status.reason());
    for (name, value) in headers {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    if let Some(length) = content_length {
        let _ = write!(head, "Content-Length: {length}\r\n");
    }
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    out.extend_from_slice(head.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    // ---- responses ----

    #[test]
    fn response_head() {
        let mut out = Vec::new();
        write_head(&mut out, Status::NOT_FOUND, &[("Content-Type", "text/plain".to_owned())], Some(3), true);
        assert_eq!(
            out,
            b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n\r\n"
        );
    }
}
