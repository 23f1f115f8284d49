//! bare-sse: a lean Server-Sent Events broadcast server, with no framework.
//!
//! Clients `GET /events` and receive a `text/event-stream`; a publisher
//! `POST /send-event` with `{"message": "..."}` and every subscriber receives
//! it. The crate is small enough to read in one sitting; read it top down,
//! in the order a request travels:
//!
//! | module          | role |
//! |-----------------|------|
//! | [`server`]      | the mio event loops: accept, read, write, close. The only code that touches sockets. |
//! | [`conn`]        | one connection as a state machine: bytes in, responses and [`conn::Action`]s out. |
//! | [`http`]        | RFC 9112 request parsing (via httparse) and validation, body decoding, response heads. |
//! | [`api`]         | the endpoints, the publish body and query, the JSON answers, the demo page. |
//! | [`hub`]         | what the event loops share: the one order of events (ids), the inboxes, counts and caps. |
//! | [`broker`]      | one loop's replay history, topics, subscribers, and the fan-out of frames to them. |
//! | [`bus`]         | `--redis`: the cluster bus, one Redis stream shared by all nodes, on its own threads. |
//! | [`sse`]         | WHATWG event-stream framing: one event, encoded once, shared by all. |
//! | [`outbox`]      | per-connection unsent bytes after a short non-blocking write. |
//! | [`config`]      | flags, environment variables, `--help`. |
//! | [`ticker`]      | `--tick`: the second seed's clock, published through a [`server::Publisher`]. |
//!
//! Everything below [`server`] is sans-IO: pure code over byte slices, tested
//! and fuzzed without sockets, in the manner of h11, quinn-proto and rustls.
//! ([`hub`] is shared state behind a lock, and [`bus`] talks to Redis on
//! threads of its own; neither touches a client's socket.)
//!
//! In scope: HTTP/1.0 and 1.1 over plain TCP, as an origin server or behind
//! a reverse proxy. Out of scope: TLS and HTTP/2 (put a proxy such as nginx in
//! front), serving files other than the embedded demo page.
//!
//! Embedding: run the server on its own thread and publish from yours. A
//! [`server::Publisher`] is `Clone + Send`; its events take the same path as
//! `POST /send-event` (ids, history, topics, fan-out).
//!
//! ```
//! use bare_sse::{api::Publish, config::Config, server::Server};
//!
//! let config = Config { listen: "127.0.0.1:0".parse().unwrap(), ..Config::default() };
//! let server = Server::bind(&config)?;
//! println!("listening on http://{}", server.local_addr()?);
//! let publisher = server.publisher();
//! let handle = server.handle();
//! let thread = std::thread::spawn(move || server.run());
//!
//! publisher.send("hello from my thread")?; // default topic, like the seeds
//! publisher.publish(Publish {
//!     message: "42 degrees".into(),
//!     topics: vec!["weather".into()],
//!     event: Some("reading".into()),
//! })?;
//!
//! handle.shutdown(); // graceful: flushes subscribers, then run() returns
//! thread.join().unwrap()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![forbid(unsafe_code)]

pub mod api;
pub mod broker;
pub mod bus;
pub mod config;
pub mod conn;
pub mod http;
pub mod hub;
pub mod mercure;
pub mod outbox;
pub mod server;
pub mod sse;
pub mod ticker;
