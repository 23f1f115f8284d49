//! Replays every committed fuzz input (the seed corpus and every crash ever
//! found, kept as `regression-*` files) through the fuzz targets' own checks,
//! on the stable toolchain, so CI catches regressions without nightly or
//! libFuzzer. See the "Fuzzing" section of README.md.
//!
//! One test per target: `cargo test --test fuzz_corpus chunked`. To replay one
//! file: `FUZZ_CASE=fuzz/corpus/chunked/regression-x cargo test --test fuzz_corpus`.

#[path = "../fuzz/checks/mod.rs"]
mod checks;

use std::panic;
use std::path::{Path, PathBuf};

/// Runs `target`'s check on every file of its corpus; fails listing each file
/// whose check failed.
fn replay(target: &str) {
    let check: checks::Check =
        checks::TARGETS.iter().find(|(name, _)| *name == target).map(|(_, check)| *check).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<PathBuf> = match std::env::var_os("FUZZ_CASE") {
        Some(case) => {
            let case = root.join(case);
            if !case.starts_with(root.join("fuzz/corpus").join(target)) {
                return;
            }
            vec![case]
        }
        None => {
            let dir = root.join("fuzz/corpus").join(target);
            let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            entries.map(|entry| entry.unwrap().path()).collect()
        }
    };
    files.sort();
    assert!(!files.is_empty(), "no corpus for {target}");
    let mut failed = Vec::new();
    for file in &files {
        let data = std::fs::read(file).unwrap();
        if panic::catch_unwind(|| check(&data)).is_err() {
            failed.push(file.strip_prefix(root).unwrap_or(file).display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} {target} inputs failed:\n  {}",
        failed.len(),
        files.len(),
        failed.join("\n  ")
    );
}

#[test]
fn request() {
    replay("request");
}

#[test]
fn chunked() {
    replay("chunked");
}

#[test]
fn frame() {
    replay("frame");
}

#[test]
fn publish_body() {
    replay("publish_body");
}

#[test]
fn head() {
    replay("head");
}

#[test]
fn query() {
    replay("query");
}

#[test]
fn form() {
    replay("form");
}

#[test]
fn mercure_subscribe() {
    replay("mercure_subscribe");
}

#[test]
fn mercure_publish() {
    replay("mercure_publish");
}

#[test]
fn mercure_token() {
    replay("mercure_token");
}

#[test]
fn every_target_is_replayed() {
    let targets: Vec<&str> = checks::TARGETS.iter().map(|(name, _)| *name).collect();
    assert_eq!(
        targets,
        [
            "request",
            "chunked",
            "frame",
            "publish_body",
            "head",
            "query",
            "form",
            "mercure_subscribe",
            "mercure_publish",
            "mercure_token"
        ]
    );
}
