//! Operating bare-sse: `/metrics` in the Prometheus text format, `/healthz`,
//! the log lines on stderr, and configuration from the environment.

mod support;

use std::collections::HashMap;
use std::process::Command;

use support::{Binary, Client, TestServer, get};

/// Parses the exposition format into `name{labels}` -> value, checking that
/// every sample has HELP and TYPE lines before it.
fn scrape(server: &TestServer) -> HashMap<String, f64> {
    let response = server.connect().request(get("/metrics"));
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    let mut samples = HashMap::new();
    let mut typed = std::collections::HashSet::new();
    for line in response.text().lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(["counter", "gauge"].contains(&kind), "{line}");
            assert!(kind != "counter" || name.ends_with("_total"), "counters end in _total: {line}");
            typed.insert(name.to_owned());
        } else if !line.starts_with("# HELP ") {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let name = series.split('{').next().unwrap();
            assert!(name.starts_with("bare_sse_") && typed.contains(name), "{line}");
            samples.insert(series.to_owned(), value.parse().unwrap());
        }
    }
    samples
}

#[test]
fn metrics_count_what_happened() {
    let server = TestServer::start();
    let mut plain = server.subscribe();
    let _news = Client::connect(server.addr).subscribe("/events?topic=news");
    for i in 0..3 {
        server.publish(&format!("m{i}"));
    }
    for _ in 0..3 {
        plain.next_data();
    }
    assert_eq!(server.connect().request(get("/nope")).status, 404);
    let m = scrape(&server);
    assert_eq!(m["bare_sse_subscribers{topic=\"default\"}"], 1.0);
    assert_eq!(m["bare_sse_subscribers{topic=\"news\"}"], 1.0);
    assert_eq!(m["bare_sse_events_published_total"], 3.0);
    assert_eq!(m["bare_sse_frames_delivered_total"], 3.0);
    assert!(m["bare_sse_delivered_bytes_total"] > 30.0);
    assert!(m["bare_sse_connections"] >= 3.0);
    assert_eq!(m["bare_sse_responses_total{class=\"4xx\"}"], 1.0);
    assert!(m["bare_sse_responses_total{class=\"2xx\"}"] >= 5.0);
    assert_eq!(m["bare_sse_subscribers_dropped_slow_total"], 0.0);
    assert_eq!(m[&format!("bare_sse_build_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"))], 1.0);
    assert!(m.contains_key("bare_sse_uptime_seconds"));
}

#[test]
fn metrics_token_guards_metrics_and_not_health() {
    // /metrics names the topics clients subscribe to: --metrics-token keeps
    // them from anyone who can reach the port.
    let server = Binary::start(&["--metrics-token", "m3trics"]);
    let mut client = Client::connect(server.addr);
    let refused = client.request(get("/metrics"));
    assert_eq!((refused.status, refused.header("www-authenticate")), (401, Some("Bearer")), "{}", refused.text());
    let wrong = client.request("GET /metrics HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer m3tric\r\n\r\n");
    assert_eq!(wrong.status, 401);
    let scraped = client.request("GET /metrics HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer m3trics\r\n\r\n");
    assert_eq!(scraped.status, 200);
    assert!(scraped.text().contains("bare_sse_connections "), "{}", scraped.text());
    assert_eq!(client.request(get("/healthz")).status, 200);
}

#[test]
fn healthz() {
    let server = TestServer::start();
    let response = server.connect().request(get("/healthz"));
    assert_eq!((response.status, response.text().as_str()), (200, "ok\n"));
}

#[test]
fn refusals_are_logged_once_with_their_reason() {
    let mut server = Binary::start(&["--max-body-bytes", "64"]);
    let mut client = Client::connect(server.addr);
    assert_eq!(client.publish(&"far too long for the limit ".repeat(3)).status, 413);
    drop(client);
    let mut quiet = Client::connect(server.addr);
    for i in 0..50 {
        assert_eq!(quiet.request(get(&format!("/?{i}"))).status, 200);
    }
    server.kill();
    let log = server.whole_log();
    let refusals: Vec<&str> = log.lines().filter(|l| l.contains("413")).collect();
    assert_eq!(refusals.len(), 1, "{log}");
    assert!(refusals[0].contains("request body too large"), "{log}");
    assert!(log.lines().count() <= 3, "quiet for ordinary requests: {log}");
}

#[test]
fn every_flag_has_an_environment_variable() {
    let out = Command::new(env!("CARGO_BIN_EXE_bare-sse")).arg("--help").output().unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in bare_sse::config::FLAGS {
        assert!(help.contains(&flag.env_var()), "{} not in --help", flag.env_var());
    }
    // And the environment really configures the server.
    let server = Binary::spawn(
        Command::new(env!("CARGO_BIN_EXE_bare-sse"))
            .env("BARE_SSE_LISTEN", "127.0.0.1:0")
            .env("BARE_SSE_MAX_BODY_BYTES", "100"),
    );
    let line = &server.start_line;
    assert!(line.contains("100 B body"), "the start line shows the limits in force: {line}");
    assert_eq!(Client::connect(server.addr).publish(&"more than a hundred bytes ".repeat(4)).status, 413);
    assert_eq!(Client::connect(server.addr).publish("less").status, 200);
}

#[test]
fn access_log_has_a_line_per_request() {
    let mut server = Binary::start(&["--access-log"]);
    let mut client = Client::connect(server.addr);
    assert_eq!(client.request(get("/nope?x=1")).status, 404);
    assert_eq!(client.publish("logged").status, 200);
    let _stream = Client::connect(server.addr).subscribe("/events?topic=a");
    drop(client);
    let expected = ["GET /nope?x=1 404", "POST /send-event 200", "GET /events?topic=a 200"];
    server.wait_for_log("a line for each request", |log| expected.iter().all(|e| log.lines().any(|l| l.ends_with(e))));
    server.kill();
    let log = server.whole_log();
    for expected in expected {
        assert_eq!(log.lines().filter(|l| l.ends_with(expected)).count(), 1, "{expected} in {log}");
    }
}
