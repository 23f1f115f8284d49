//! HTTP/1.1, and nothing about our endpoints: parsing requests, framing
//! responses, and one connection's state machine.
//!
//! Read this first: RFC 9112 (HTTP/1.1 message syntax), sections 2-7, and RFC
//! 9110 for the meaning of status codes. Everything here is pure: functions
//! over byte slices that say how much they used, and a connection machine
//! that takes bytes and the time and gives back bytes. No sockets.
//!
//! | module       | role |
//! |--------------|------|
//! | `parse`      | request heads (via httparse) and bodies (`Content-Length`, chunked), validated |
//! | `response`   | [`Status`], [`Response`], and [`write_head`], which writes every response head |
//! | [`conn`]     | one connection: requests in, responses out, limits, timeouts, keep-alive |
//! | [`outbox`]   | what a short non-blocking write left to send |
//!
//! The parser is deliberately strict where leniency has led to request
//! smuggling: a request with both `Content-Length` and `Transfer-Encoding`, two
//! different lengths, a transfer coding other than `chunked`, or a malformed
//! chunk line is rejected, and the connection is closed afterwards because its
//! framing can no longer be trusted. "Incomplete" (`Ok(None)`) is always
//! kept apart from "invalid" ([`Err`]), and both are bounded: a head can never
//! grow past the configured limit, a body past its own.
//!
//! What a request means is the application's business ([`crate::app`]): the
//! connection machine hands it complete requests through the
//! [`conn::Application`] trait and frames whatever [`Response`] it returns.

pub mod conn;
pub mod outbox;
mod parse;
mod response;

pub use parse::*;
pub use response::{Response, Status, write_head};
