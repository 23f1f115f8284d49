//! bare-sse: a lean Server-Sent Events broadcast server, with no framework.
//!
//! Clients `GET /events` and receive a `text/event-stream`; a publisher
//! `POST /send-event` with `{"message": "..."}` and every subscriber receives
//! it. The crate is small enough to read in one sitting; read it top down,
//! in the order a request travels, one layer per folder:
//!
//! | module          | role |
//! |-----------------|------|
//! | [`server`]      | the mio event loops: accept, read, write, close. The only code that touches sockets. |
//! | [`http`]        | HTTP/1.1 and nothing else: request parsing, response framing, and [`http::conn`], one connection's state machine, which hands complete requests to an application. |
//! | [`app`]         | the application: routes, credentials, CORS, the demo page, `/metrics`; the seeds' formats in [`app::seeds`]. |
//! | [`broadcast`]   | events to subscribers: ids and order ([`broadcast::hub`]), history and fan-out ([`broadcast::broker`]), the Redis cluster bus, Mercure's active subscriptions ([`broadcast::presence`], and [`broadcast::roster`] on a cluster), the in-process [`broadcast::publisher::Publisher`]. |
//! | [`mercure`]     | the Mercure protocol's pure core: form decoding, topic matchers, JWT access tokens, publish and subscribe requests, subscription documents. |
//! | [`sse`]         | WHATWG event-stream framing: every byte of a stream is written here. |
//! | [`config`]      | flags, environment variables, `--help`. |
//! | [`ticker`]      | `--tick`: the second seed's clock, published through a [`broadcast::publisher::Publisher`]. |
//!
//! Layers import downwards only: `server` drives `http` and `app`; `app`
//! turns requests into the `broadcast` core's types; `broadcast` knows no
//! HTTP. Everything but [`server`] is sans-IO: pure code over byte slices,
//! tested and fuzzed without sockets, in the manner of h11, quinn-proto and
//! rustls. ([`broadcast::hub`] is shared state behind a lock, and
//! [`broadcast::bus`] and [`broadcast::roster`] talk to Redis on threads of
//! their own; none touches a client's socket.)
//!
//! In scope: HTTP/1.0 and 1.1 over plain TCP, as an origin server or behind
//! a reverse proxy. Out of scope: TLS and HTTP/2 (put a proxy such as nginx in
//! front), serving files other than the embedded demo page.
//!
//! Embedding: run the server on its own thread and publish from yours. A
//! [`broadcast::publisher::Publisher`] is `Clone + Send`; its events take the
//! same path as `POST /send-event` (ids, history, topics, fan-out).
//!
//! ```
//! use bare_sse::{broadcast::event::Publish, config::Config, server::Server};
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
//!     ..Publish::default()
//! })?;
//!
//! handle.shutdown(); // graceful: flushes subscribers, then run() returns
//! thread.join().unwrap()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![forbid(unsafe_code)]

pub mod app;
pub mod broadcast;
pub mod config;
pub mod http;
pub mod mercure;
pub mod server;
pub mod sse;
pub mod ticker;
