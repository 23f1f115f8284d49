//! `/metrics`: the Prometheus text exposition of a server's state, summed
//! over its event loops from what each stored in the [`Hub`] (each loop's
//! counters as of its last turn; the answering loop stores its own first).
//! It names the largest topics, which clients name: `--metrics-token` keeps
//! it from anyone who can reach the port (checked in [`crate::app`]).

use crate::broadcast::broker::MATCHER_TYPES;
use crate::broadcast::hub::Hub;

/// The content type of the Prometheus text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Most topics given a `bare_sse_subscribers` series of their own.
const MAX_TOPIC_SERIES: usize = 100;

/// The Prometheus text exposition of the server's state; `redis_up` on a
/// cluster node, whether its bus reaches Redis.
pub fn render(hub: &Hub, redis_up: Option<bool>) -> String {
    use std::fmt::Write as _;
    let totals = hub.totals();
    let mut out = String::with_capacity(2048);
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let one = |value: u64| [(String::new(), value)];
    metric("bare_sse_connections", "gauge", "Open client connections.", &one(hub.connections() as u64));
    // Topics are named by clients, so their number is unbounded: only the
    // largest get a series of their own, which keeps this answer (and a
    // Prometheus server's memory) small whatever clients do.
    let (streams, topic_count, topics) = hub.streams(MAX_TOPIC_SERIES);
    metric("bare_sse_streams", "gauge", "Open event streams.", &one(streams as u64));
    metric("bare_sse_topics", "gauge", "Topics with subscribers.", &one(topic_count as u64));
    let topics: Vec<(String, u64)> =
        topics.into_iter().map(|(topic, n)| (format!("{{topic=\"{topic}\"}}"), n as u64)).collect();
    metric("bare_sse_subscribers", "gauge", "Open event streams by topic, for the largest topics only.", &topics);
    metric("bare_sse_events_published_total", "counter", "Events published.", &one(hub.events()));
    metric("bare_sse_frames_delivered_total", "counter", "Event frames handed to subscribers.", &one(totals.frames));
    metric(
        "bare_sse_delivered_bytes_total",
        "counter",
        "Bytes of event frames handed to subscribers.",
        &one(totals.bytes),
    );
    metric("bare_sse_heartbeats_total", "counter", "Heartbeat comments sent.", &one(totals.heartbeats));
    metric(
        "bare_sse_subscribers_dropped_slow_total",
        "counter",
        "Subscribers closed for falling more than --max-buffered-bytes behind.",
        &one(totals.dropped_slow),
    );
    let classes: Vec<(String, u64)> =
        totals.responses.iter().enumerate().map(|(i, &n)| (format!("{{class=\"{}xx\"}}", i + 1), n)).collect();
    metric("bare_sse_responses_total", "counter", "Responses sent, by status class.", &classes);
    metric("bare_sse_connections_accepted_total", "counter", "Connections accepted.", &one(totals.accepted));
    metric(
        "bare_sse_connections_refused_total",
        "counter",
        "Connections refused with 503 for being over --max-connections.",
        &one(totals.refused),
    );
    metric(
        "bare_sse_streams_turned_away_total",
        "counter",
        "Subscribers answered with a retry: and closed, over --max-streams or while shutting down.",
        &one(totals.turned_away),
    );
    metric(
        "bare_sse_queued_bytes",
        "gauge",
        "Bytes queued to subscribers, frames and queue entries, counted per subscriber (--max-queued-bytes).",
        &one(totals.queued),
    );
    let by_type: Vec<(String, u64)> = MATCHER_TYPES
        .iter()
        .zip(totals.mercure_subscriptions)
        .map(|(kind, n)| (format!("{{match_type=\"{kind}\"}}"), n))
        .collect();
    metric(
        "bare_sse_mercure_subscriptions",
        "gauge",
        "Open Mercure subscriptions (one per matcher of a stream), by matcher type (uritemplate: 0.x topic selectors).",
        &by_type,
    );
    let per_loop = hub.per_loop();
    let by_loop = |pick: fn(&(u64, u64)) -> u64| -> Vec<(String, u64)> {
        per_loop.iter().enumerate().map(|(index, n)| (format!("{{loop=\"{index}\"}}"), pick(n))).collect()
    };
    metric("bare_sse_loop_connections", "gauge", "Open connections per event loop.", &by_loop(|n| n.0));
    metric("bare_sse_loop_streams", "gauge", "Open event streams per event loop.", &by_loop(|n| n.1));
    if let Some(up) = redis_up {
        metric("bare_sse_redis_up", "gauge", "1 while the cluster bus reaches Redis.", &one(up as u64));
    }
    metric("bare_sse_uptime_seconds", "gauge", "Seconds since the server started.", &one(hub.uptime_secs()));
    let version = format!("{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"));
    metric("bare_sse_build_info", "gauge", "Build information; always 1.", &[(version, 1)]);
    out
}
