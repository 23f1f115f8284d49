//! Real browsers and real clients: runs the Node tests in `tests/browser/`,
//! which start this build's `bare-sse` binary and drive Debian's headless
//! Chromium: through the demo page (saving `docs/demo.png`), through
//! EventSource on the Mercure hub while Symfony's Mercure component (PHP)
//! publishes, and through a "who is online" page built on Mercure's active
//! subscriptions.
//!
//! Needs Node.js, `/usr/bin/chromium`, `tests/browser/node_modules` and PHP with
//! Symfony's Mercure component (`php-symfony-mercure`, `php-symfony-http-client`):
//! `tests/setup` installs them. Without them these
//! tests fail; they never pass without having run the browser.

mod support;

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

/// The most one Node run may take (each takes about 10 s).
const TIMEOUT: Duration = Duration::from_secs(240);

#[test]
fn demo_page_in_headless_chromium() {
    run_node_test("demo.test.mjs");
}

/// Symfony's Mercure component publishes (PHP), EventSource in Chromium
/// receives, with the access token in a cookie for the private update.
#[test]
fn mercure_with_symfony_and_eventsource_in_chromium() {
    run_node_test("mercure.test.mjs");
}

/// "Who is online" from Mercure's active subscriptions (issue 16): a page on
/// another origin lists a topic's subscribers from the subscription API
/// (token in the hub's cookie, cursor from the CORS-exposed `Link` header),
/// follows the subscription events from that cursor, and its list in the DOM
/// must converge to exactly the tabs subscribed as tabs of several users
/// open and close, including those that come and go between the listing and
/// the events (replayed from the cursor).
#[test]
fn who_is_online_in_chromium_from_the_subscription_api_and_events() {
    run_node_test("presence.test.mjs");
}

/// Runs `tests/browser/<file>` with `node --test`, bounded by [`TIMEOUT`].
fn run_node_test(file: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("tests/browser");
    assert!(
        dir.join("node_modules/playwright-core").is_dir(),
        "{}/node_modules is missing: run `tests/setup` (or `npm ci --prefix tests/browser` \
         and install Debian's chromium)",
        dir.display()
    );

    let mut child = Command::new("node")
        .args(["--test", "--test-reporter=spec"])
        .arg(dir.join(file))
        .current_dir(root)
        .env("BARE_SSE_BIN", env!("CARGO_BIN_EXE_bare-sse"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so that a timeout can end it with the server it started.
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run node (is Node.js installed?): {e}"));

    let drain = |mut pipe: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut text = Vec::new();
            let _ = pipe.read_to_end(&mut text);
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));

    let status = support::poll(TIMEOUT, || child.try_wait().expect("wait for node").ok_or(())).ok();
    if status.is_none() {
        // The Node test bounds each of its own waits and cleans up after
        // itself; this is the last resort. (Chromium, in a group of its
        // own, exits when its DevTools pipe from node closes.)
        let group = format!("-{}", child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = child.kill();
        let _ = child.wait();
    }
    let output =
        format!("--- node stdout ---\n{}\n--- node stderr ---\n{}", stdout.join().unwrap(), stderr.join().unwrap());
    println!("{output}");
    match status {
        None => panic!("the browser test did not finish within {TIMEOUT:?}; killed it\n{output}"),
        Some(status) => assert!(status.success(), "the browser test failed ({status})\n{output}"),
    }
}
