//! `loadgen`: measures an SSE broadcast server from the outside.
//!
//! Modules, bottom up:
//! - `chunked`: pure decoder of HTTP/1.1 chunked bodies;
//! - `sse`: pure event-stream parser, as `EventSource` reads a stream;
//! - `procstat`: RSS and CPU time of the server's processes from `/proc`;
//! - `sys`: the few libc calls (open-file limit, own CPU time, SO_LINGER);
//! - `mercure`: the Mercure subscribe URL, publish body and JWT (`--api mercure`);
//! - `listing`: one read of the Mercure subscription API (`--list-subscriptions`);
//! - `cli`: the command line;
//! - `run`: the mio loop, its subscribers and publishers, and the phases.
//!
//! `main` raises the open-file limit, runs the phases, reads the server
//! between them and prints one JSON object.

// The one `json!` of the output has more fields than its default depth.
#![recursion_limit = "256"]

mod chunked;
mod cli;
mod listing;
mod mercure;
mod procstat;
mod run;
mod sse;
mod sys;

use std::process::ExitCode;

use serde_json::{Map, Value, json};

/// File descriptors kept for anything but subscribers (stdio, epoll, /proc).
const RESERVED_FDS: u64 = 32;

fn main() -> ExitCode {
    let cfg = match cli::parse(std::env::args().skip(1)) {
        Ok(Some(cfg)) => cfg,
        Ok(None) => {
            println!("{}", cli::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("loadgen: {e}\n\n{}", cli::USAGE);
            return ExitCode::from(2);
        }
    };
    let mut notes: Vec<String> = Vec::new();
    let limit = sys::raise_nofile_limit();
    let max_subs = limit.saturating_sub(RESERVED_FDS + cfg.publishers as u64) as usize;
    let subscribers = if cfg.subscribers > max_subs {
        notes.push(format!(
            "{} subscribers asked, but RLIMIT_NOFILE ({limit}) allows {max_subs}: opened {max_subs}",
            cfg.subscribers
        ));
        max_subs
    } else {
        cfg.subscribers
    };

    let pids = cfg.server_pids.clone();
    let mut run = match run::Run::new(cfg.clone()) {
        Ok(run) => run,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return ExitCode::FAILURE;
        }
    };

    let before = procstat::sample(&pids);
    run.subscribe(subscribers);
    run.settle(cfg.settle);
    let idle = procstat::sample(&pids);
    let mut cpu_start = idle;
    let mut own_start = sys::own_cpu_s();
    let core_busy = || cfg.server_core.and_then(procstat::core_busy_s);
    let mut core_start = core_busy();
    if cfg.messages > 0 {
        run.publish(&mut || {
            cpu_start = procstat::sample(&pids);
            own_start = sys::own_cpu_s();
            core_start = core_busy();
        });
    }
    let core_s = core_busy().zip(core_start).map(|(end, start)| end - start);
    let after = procstat::sample(&pids);
    let own_cpu_s = sys::own_cpu_s() - own_start;
    run.finish_subscribers();
    // Last, so that it changes none of the figures above: the whole
    // subscription collection, with the server's memory while it streams.
    let listed = match &cfg.api {
        cli::Api::Mercure(cli::MercureApi { list_authorization: Some(authorization), .. }) => {
            let path = mercure::SUBSCRIPTIONS_PATH;
            Some((listing::list(&cfg.targets[0], path, authorization, &pids, cfg.timeout), run.live()))
        }
        _ => None,
    };
    if !pids.is_empty() && after.pids_read < pids.len() {
        notes.push(format!("only {} of {} server pids readable at the end", after.pids_read, pids.len()));
    }

    let o = &run.out;
    let mut out = Map::new();
    for (k, v) in &cfg.labels {
        out.insert(k.clone(), Value::String(v.clone()));
    }
    let has_pids = !pids.is_empty();
    let kb = |s: procstat::Sample| {
        if has_pids { json!(s.rss_kb) } else { Value::Null }
    };
    let connected = o.subscribers_connected as u64;
    let bytes_per_sub =
        (has_pids && connected > 0).then(|| (idle.rss_kb as f64 - before.rss_kb as f64) * 1024.0 / connected as f64);
    let cpu_s = after.cpu_s - cpu_start.cpu_s;
    let published = cfg.messages > 0;
    let fields = json!({
        "target": cfg.targets[0].host,
        "targets": cfg.targets.iter().map(|t| t.host.as_str()).collect::<Vec<_>>(),
        "subscribers_requested": cfg.subscribers,
        "subscribers_limit": max_subs,
        "subscribers_connected": connected,
        "subscribe_errors": o.subscribe_errors,
        "first_subscribe_error": o.first_subscribe_error,
        "subscribers_dropped": o.subscribers_dropped,
        "connect_ms": ms(o.connect),
        "connect_timed_out": o.connect_timed_out,
        "rss_before_kb": kb(before),
        "rss_idle_kb": kb(idle),
        "rss_after_kb": kb(after),
        "bytes_per_idle_subscriber": bytes_per_sub.map(|b| b.round()),
        "messages": cfg.messages,
        "publishers": cfg.publishers,
        "pacing": match cfg.pacing {
            cli::Pacing::Sequential => "sequential".to_string(),
            cli::Pacing::Burst { depth } => format!("burst:{depth}"),
            cli::Pacing::Rate { per_s } => format!("rate:{per_s}"),
        },
        "raw_body": cfg.raw_body,
        "api": match &cfg.api {
            cli::Api::Seeds => "seeds",
            cli::Api::Mercure(_) => "mercure",
        },
        "match": match &cfg.api {
            cli::Api::Seeds => None,
            cli::Api::Mercure(m) => Some(m.matching.name()),
        },
        "published_ok": o.published_ok,
        "publish_errors": o.publish_errors,
        "unsent": o.unsent,
        "first_publish_error": o.first_publish_error,
        "publish_ms": published.then(|| ms(o.publish_time)),
        "publish_rps": rate(o.published_ok, o.publish_time),
        "publish_timed_out": o.publish_timed_out,
        "server_cpu_s": (has_pids && published).then(|| round3(cpu_s)),
        "loadgen_cpu_s": published.then(|| round3(own_cpu_s)),
        "server_core_busy_s": core_s.filter(|_| published).map(round3),
        "core_us_per_delivery": core_s.filter(|_| o.deliveries > 0).map(|c| round3(c * 1e6 / o.deliveries as f64)),
        "core_us_per_request": core_s.filter(|_| o.published_ok > 0).map(|c| round3(c * 1e6 / o.published_ok as f64)),
        "cpu_us_per_delivery": (has_pids && o.deliveries > 0).then(|| round3(cpu_s * 1e6 / o.deliveries as f64)),
        "cpu_us_per_request": (has_pids && o.published_ok > 0).then(|| round3(cpu_s * 1e6 / o.published_ok as f64)),
        "deliveries": o.deliveries,
        "expected_deliveries": o.expected_deliveries,
        "deliver_ms": published.then(|| ms(o.deliver_time)),
        "deliveries_per_s": rate(o.deliveries, o.deliver_time),
        "latency_p50_us": o.latency_p50_us,
        "latency_p99_us": o.latency_p99_us,
        "latency_max_us": o.latency_max_us,
        "missing": o.missing,
        "duplicated": o.duplicated,
        "out_of_order": o.out_of_order,
        "foreign_events": o.foreign_events,
        "notes": notes,
    });
    let listed = listed.map(|(l, live)| {
        json!({
            "list_status": l.status,
            "list_error": l.error,
            "list_timed_out": l.timed_out,
            "list_expected": live,
            "list_subscriptions": l.subscriptions,
            "list_complete": l.subscriptions == Some(live as u64),
            "list_first_byte_ms": l.first_byte.map(ms),
            "list_last_byte_ms": l.last_byte.map(ms),
            "list_body_bytes": l.body_bytes,
            "list_rss_before_kb": has_pids.then_some(l.rss_before_kb),
            "list_rss_peak_kb": has_pids.then_some(l.rss_peak_kb),
            "list_rss_after_kb": has_pids.then_some(l.rss_after_kb),
            "list_rss_growth_kb": has_pids.then(|| l.rss_peak_kb as i64 - l.rss_before_kb as i64),
            "list_hwm_before_kb": has_pids.then_some(l.hwm_before_kb),
            "list_hwm_after_kb": has_pids.then_some(l.hwm_after_kb),
            "list_rss_samples": l.samples,
        })
    });
    for fields in [Some(fields), listed].into_iter().flatten() {
        if let Value::Object(fields) = fields {
            out.extend(fields);
        }
    }
    println!("{}", Value::Object(out));
    ExitCode::SUCCESS
}

fn ms(d: std::time::Duration) -> f64 {
    round3(d.as_secs_f64() * 1e3)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn rate(count: u64, over: std::time::Duration) -> Option<f64> {
    (count > 0 && !over.is_zero()).then(|| (count as f64 / over.as_secs_f64()).round())
}
