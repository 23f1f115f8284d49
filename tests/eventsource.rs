//! An independent, spec-compliant client: the npm `eventsource` package under
//! Node, reconnecting by itself with Last-Event-ID after the connection is
//! cut. The scenario lives in `tests/eventsource/reconnect.test.mjs`; this
//! test runs it against the binary. Setup: `tests/setup` (README's test command
//! runs it).

use std::path::Path;
use std::process::Command;

#[test]
fn npm_eventsource_reconnects_and_misses_nothing() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/eventsource");
    assert!(
        dir.join("node_modules/eventsource").is_dir(),
        "the eventsource package is not installed: run `tests/setup` (or `npm ci --prefix tests/eventsource`)"
    );
    let out = Command::new("timeout")
        .args(["120", "node", "--test"])
        .current_dir(&dir)
        .env("BARE_SSE_BIN", env!("CARGO_BIN_EXE_bare-sse"))
        .output()
        .expect("node must be installed");
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "node --test failed:\n{report}");
    assert!(report.contains("# pass 1") && report.contains("# fail 0"), "{report}");
}
