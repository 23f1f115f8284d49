//! The seeds' SSE API written idiomatically with axum on tokio: one
//! `tokio::sync::broadcast` channel, and each `GET /events` answered with
//! an `axum::response::sse::Sse` over a `BroadcastStream` of that channel.
//!
//! Usage: `ssepeer-axum --listen 127.0.0.1:8080 [--threads 1] [--capacity 4096]`
//! (`SSEPEER_THREADS` is read when `--threads` is not given). One thread,
//! a current-thread runtime, is the default so that the comparison with the
//! single-threaded servers is fair.
//!
//! Lagged receivers: the channel keeps the last `capacity` messages. A
//! subscriber that falls further behind gets `RecvError::Lagged(n)` from
//! its stream; the idiomatic `filter_map(Result::ok)` below skips it, so
//! that subscriber silently misses `n` messages and goes on. With the
//! default capacity of 4096 and at most a few hundred messages in flight in
//! the benchmark workloads, no receiver lags; the loadgen would report any
//! lag as `missing`.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::{Stream, StreamExt};

struct Args {
    listen: String,
    threads: usize,
    capacity: usize,
}

#[derive(Clone)]
struct Hub {
    tx: broadcast::Sender<Arc<str>>,
}

#[derive(Deserialize)]
struct SendEvent {
    message: String,
}

async fn events(State(hub): State<Hub>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let stream = BroadcastStream::new(hub.tx.subscribe())
        .filter_map(Result::ok)
        .map(|message| Ok(Event::default().data(&*message)));
    Sse::new(stream).keep_alive(KeepAlive::default())
}

async fn send_event(State(hub): State<Hub>, Json(body): Json<SendEvent>) -> Response {
    // `send` fails only when nobody is subscribed: not an error here.
    let subscribers = hub.tx.send(Arc::from(body.message)).unwrap_or(0);
    (StatusCode::OK, Json(serde_json::json!({ "ok": true, "subscribers": subscribers }))).into_response()
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        listen: "127.0.0.1:8080".into(),
        threads: std::env::var("SSEPEER_THREADS").ok().and_then(|t| t.parse().ok()).unwrap_or(1),
        capacity: 4096,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--listen" => args.listen = value,
            "--threads" => args.threads = value.parse().map_err(|_| "--threads: not a number")?,
            "--capacity" => args.capacity = value.parse().map_err(|_| "--capacity: not a number")?,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if args.threads == 0 || args.capacity == 0 {
        return Err("--threads and --capacity must be at least 1".into());
    }
    Ok(args)
}

fn main() -> Result<(), String> {
    let args = parse_args()?;
    let runtime = if args.threads == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(args.threads).enable_all().build()
    }
    .map_err(|e| format!("runtime: {e}"))?;
    runtime.block_on(async move {
        let (tx, _) = broadcast::channel(args.capacity);
        let app =
            Router::new().route("/events", get(events)).route("/send-event", post(send_event)).with_state(Hub { tx });
        let listener =
            tokio::net::TcpListener::bind(&args.listen).await.map_err(|e| format!("bind {}: {e}", args.listen))?;
        eprintln!("ssepeer-axum listening on {} ({} thread(s))", args.listen, args.threads);
        axum::serve(listener, app).await.map_err(|e| format!("serve: {e}"))
    })
}
