//! Helpers for the Mercure tests (`tests/mercure.rs`, `tests/symfony.rs`).

use super::{Client, EventStream, Response, post};

/// The stream whose head `response` was just read from `client`: waits for
/// its opening comment.
#[track_caller]
pub fn stream_after(client: Client, response: Response) -> EventStream {
    assert_eq!(response.header("content-type"), Some("text/event-stream"), "{response:?}");
    let mut stream = EventStream { client, response };
    let opening = stream.next_raw_block();
    assert!(opening.starts_with(':'), "stream opens with a comment, got {opening:?}");
    stream
}

/// Publishes `message` on the seeds' `topic` with `POST /send-event`.
#[track_caller]
pub fn publish_to(client: &mut Client, topic: &str, message: &str) -> Response {
    let body = serde_json::json!({ "message": message, "topic": topic }).to_string();
    client.request(post("/send-event", &body))
}
