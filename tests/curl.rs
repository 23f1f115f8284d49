//! curl, the client most people try a server with, as subscriber and
//! publisher. Needs `curl` on PATH (`tests/setup` installs it).

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use support::TestServer;

#[test]
fn curl_subscribes_and_publishes() {
    let server = TestServer::start();
    let url = format!("http://{}", server.addr);
    let mut subscriber = Command::new("curl")
        .args(["-sS", "-N", "--max-time", "20", &format!("{url}/events")])
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl must be installed");
    let mut lines = BufReader::new(subscriber.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), ": ok", "curl sees the stream open at once");
    assert_eq!(lines.next().unwrap().unwrap(), "retry: 3000");
    assert_eq!(lines.next().unwrap().unwrap(), "");
    let id_line = lines.next().unwrap().unwrap();
    assert!(id_line.starts_with("id: ") && id_line.ends_with("-0"), "{id_line}");
    assert_eq!(lines.next().unwrap().unwrap(), "");

    let published = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-d", r#"{"message":"hello\nfrom curl"}"#, &format!("{url}/send-event")])
        .output()
        .expect("curl must be installed");
    assert!(published.status.success());
    let answer: serde_json::Value = serde_json::from_slice(&published.stdout).unwrap();
    assert_eq!(answer["subscribers"], 1);

    let event: Vec<String> = lines.by_ref().take(4).map(|l| l.unwrap()).collect();
    assert_eq!(event[1..], ["data: hello", "data: from curl", ""]);
    assert_eq!(event[0], format!("id: {}", answer["id"].as_str().unwrap()));
    let _ = subscriber.kill();
    let _ = subscriber.wait();
}

#[test]
fn curl_sees_refusals() {
    let server = TestServer::start();
    let out = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-d",
            "{}",
            &format!("http://{}/send-event", server.addr),
        ])
        .output()
        .expect("curl must be installed");
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "400");
}
