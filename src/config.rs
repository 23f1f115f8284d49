//! Command-line flags and environment variables.
//!
//! Every flag `--some-flag VALUE` can also be set as the environment variable
//! `BARE_SSE_SOME_FLAG=VALUE` (flags win), so the server can be configured
//! the 12-factor way under systemd or in a container. The flags live in one
//! table, [`FLAGS`], from which parsing and `--help` are both derived.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use crate::app::Settings;
use crate::broadcast::broker::HistoryLimits;

/// Everything the server needs to know to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Where to listen.
    pub listen: SocketAddr,
    /// How connections behave: request limits, `retry:`.
    pub settings: Settings,
    /// Most open connections; slots for them are reserved (not touched) at
    /// start.
    pub max_connections: usize,
    /// Most open event streams (`None`: the default, see
    /// [`Config::stream_cap`]).
    pub max_streams: Option<usize>,
    /// Unsent bytes a subscriber may have before it is dropped as too slow
    /// (frames and queue entries, as [`crate::http::outbox::Outbox::pinned_bytes`]
    /// counts them).
    pub max_buffered_bytes: usize,
    /// Most bytes queued to all subscribers together, counted as
    /// `max_buffered_bytes` is; past it, the furthest behind are dropped.
    pub max_queued_bytes: usize,
    /// Bounds on the replay history.
    pub history: HistoryLimits,
    /// Seconds between heartbeats on idle streams; 0 disables them.
    pub heartbeat_secs: u64,
    /// Publish the time every second on topic `time`.
    pub tick: bool,
    /// Event loops to run, each on its own thread; 0 means one per core.
    pub threads: usize,
    /// `--redis`: the URL of the Redis that makes this server a cluster node.
    pub redis: Option<String>,
    /// Prefix of this cluster's keys in Redis.
    pub redis_prefix: String,
    /// Seconds a graceful shutdown may take.
    pub shutdown_timeout_secs: u64,
    /// Least severe log level printed (`error`, `warn`, `info`, `debug`).
    pub log_level: log::LevelFilter,
}

impl Config {
    /// Most open event streams: `--max-streams`, or by default the connection
    /// cap less a reserve of one slot in 16 (at most [`MAX_STREAM_RESERVE`]),
    /// so that subscribers alone can never take the slots publishers and
    /// health checks need. Never more than the connection cap.
    pub fn stream_cap(&self) -> usize {
        match self.max_streams {
            Some(streams) => streams.min(self.max_connections),
            None => self.max_connections - (self.max_connections / 16).min(MAX_STREAM_RESERVE),
        }
    }

    /// How many event loops to run: `threads`, with 0 read as one per
    /// available core.
    pub fn threads(&self) -> usize {
        match self.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 3000)),
            settings: Settings::default(),
            max_connections: default_max_connections(),
            max_streams: None,
            max_buffered_bytes: 1024 * 1024,
            max_queued_bytes: 256 * 1024 * 1024,
            history: HistoryLimits::default(),
            heartbeat_secs: 15,
            tick: false,
            threads: 1,
            redis: None,
            redis_prefix: "bare-sse:".to_owned(),
            shutdown_timeout_secs: 5,
            log_level: log::LevelFilter::Info,
        }
    }
}

/// Most connection slots kept from subscribers by default (see
/// [`Config::stream_cap`]): plenty for publishers and health checks, which
/// hold a connection for a request or a keep-alive pool.
pub const MAX_STREAM_RESERVE: usize = 1024;

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Run(Box<Config>),
    Help,
    Version,
}

/// One flag: its name (without `--`), the kind of value (empty for a switch),
/// what it does, and how to apply a value to the config.
pub struct Flag {
    pub name: &'static str,
    pub value: &'static str,
    pub help: &'static str,
    apply: fn(&mut Config, &str) -> Result<(), String>,
}

impl Flag {
    /// The environment variable that sets this flag.
    pub fn env_var(&self) -> String {
        format!("BARE_SSE_{}", self.name.to_ascii_uppercase().replace('-', "_"))
    }
}

/// Every flag bare-sse takes.
pub const FLAGS: &[Flag] = &[
    Flag {
        name: "listen",
        value: "ADDR",
        help: "address to listen on, host:port [default: 127.0.0.1:3000]",
        apply: |c, v| {
            c.listen = resolve(v)?;
            Ok(())
        },
    },
    Flag {
        name: "threads",
        value: "N",
        help: "event loops, each on its own thread (0: one per core); connections are spread across them",
        apply: |c, v| in_range(v, 0, 1024).map(|n| c.threads = n),
    },
    Flag {
        name: "max-head-bytes",
        value: "BYTES",
        help: "longest request head (request line + headers); longer gets 431 [default: 16384, at least 1024]",
        apply: |c, v| in_range(v, MIN_HEAD_BYTES, MIB).map(|n| c.settings.limits.max_head_bytes = n),
    },
    Flag {
        name: "max-body-bytes",
        value: "BYTES",
        help: "longest request body; longer gets 413 [default: 65536, at least 64]",
        apply: |c, v| in_range(v, MIN_BODY_BYTES, GIB).map(|n| c.settings.limits.max_body_bytes = n),
    },
    Flag {
        name: "max-connections",
        value: "N",
        help: "most open connections; more get 503 [default: the open-file limit less 32]",
        apply: |c, v| in_range(v, 1, 4_000_000).map(|n| c.max_connections = n),
    },
    Flag {
        name: "max-streams",
        value: "N",
        help: "most open event streams; more get a `retry:` and are closed, so publishers and health checks always \
               find a slot [default: --max-connections less 1/16 of it, at most 1024 less]",
        apply: |c, v| in_range(v, 1, 4_000_000).map(|n| c.max_streams = Some(n)),
    },
    Flag {
        name: "max-buffered-bytes",
        value: "BYTES",
        help: "unsent bytes (frames and queue entries) a subscriber may have before it is dropped as too slow \
               [default: 1048576, at least 4096]",
        apply: |c, v| in_range(v, MIN_BUFFERED_BYTES, GIB).map(|n| c.max_buffered_bytes = n),
    },
    Flag {
        name: "max-queued-bytes",
        value: "BYTES",
        help: "unsent bytes all subscribers together may have, counted as for --max-buffered-bytes; past it the \
               furthest behind are dropped first [default: 268435456]",
        apply: |c, v| in_range(v, 1, 1024 * GIB).map(|n| c.max_queued_bytes = n),
    },
    Flag {
        name: "history",
        value: "N",
        help: "events kept for Last-Event-ID replay; 0 disables replay [default: 1000]",
        apply: |c, v| in_range(v, 0, 10_000_000).map(|n| c.history.events = n),
    },
    Flag {
        name: "history-bytes",
        value: "BYTES",
        help: "most bytes of events kept for replay [default: 16777216, at least 4096]",
        apply: |c, v| in_range(v, MIN_HISTORY_BYTES, 16 * GIB).map(|n| c.history.bytes = n),
    },
    Flag {
        name: "retry-ms",
        value: "MS",
        help: "reconnection delay sent to clients as `retry:` [default: 3000]",
        apply: |c, v| {
            c.settings.retry_ms = whole(v)?.try_into().map_err(|_| "too large".to_owned())?;
            Ok(())
        },
    },
    Flag {
        name: "heartbeat",
        value: "SECS",
        help: "seconds between comment lines on idle streams; 0 disables [default: 15]",
        apply: |c, v| in_range(v, 0, DAY).map(|n| c.heartbeat_secs = n as u64),
    },
    Flag {
        name: "header-timeout",
        value: "SECS",
        help: "time for a request's head and body to arrive; then 408 [default: 10]",
        apply: |c, v| in_range(v, 1, DAY).map(|n| c.settings.limits.header_timeout = Duration::from_secs(n as u64)),
    },
    Flag {
        name: "idle-timeout",
        value: "SECS",
        help: "time a keep-alive connection may idle between requests [default: 60]",
        apply: |c, v| in_range(v, 1, DAY).map(|n| c.settings.limits.idle_timeout = Duration::from_secs(n as u64)),
    },
    Flag {
        name: "shutdown-timeout",
        value: "SECS",
        help: "time a graceful shutdown (SIGINT, SIGTERM, SIGQUIT) may take to flush [default: 5]",
        apply: |c, v| in_range(v, 0, 3600).map(|n| c.shutdown_timeout_secs = n as u64),
    },
    Flag {
        name: "publish-token",
        value: "TOKEN",
        help: "require `Authorization: Bearer TOKEN` on POST /send-event",
        apply: |c, v| token(v).map(|t| c.settings.publish_token = Some(t)),
    },
    Flag {
        name: "subscribe-token",
        value: "TOKEN",
        help: "require the token on /events, as a bearer or as ?token=TOKEN",
        apply: |c, v| token(v).map(|t| c.settings.subscribe_token = Some(t)),
    },
    Flag {
        name: "metrics-token",
        value: "TOKEN",
        help: "require `Authorization: Bearer TOKEN` on /metrics, which names the topics subscribed to [default: none, open]",
        apply: |c, v| token(v).map(|t| c.settings.metrics_token = Some(t)),
    },
    Flag {
        name: "cors-origin",
        value: "ORIGIN",
        help: "origin allowed to read answers (CORS); repeat for several; * for any [default: *]",
        apply: |c, v| {
            if v.is_empty() || v.contains(['\r', '\n', ',']) {
                return Err("expected one origin such as https://example.com, or *".to_owned());
            }
            // The first explicit origin replaces the default `*`.
            if c.settings.cors_origins == ["*"] {
                c.settings.cors_origins.clear();
            }
            c.settings.cors_origins.push(v.to_owned());
            Ok(())
        },
    },
    Flag {
        name: "log-level",
        value: "LEVEL",
        help: "least severe log lines printed: error, warn, info, debug, trace, off [default: info]",
        apply: |c, v| {
            c.log_level = v.parse().map_err(|_| "expected error, warn, info, debug, trace or off".to_owned())?;
            Ok(())
        },
    },
    Flag {
        name: "access-log",
        value: "",
        help: "log one line per request: peer, method, target, status",
        apply: |c, v| switch(v).map(|on| c.settings.access_log = on),
    },
    Flag {
        name: "redis",
        value: "URL",
        help: "join the cluster that shares this Redis, e.g. redis://127.0.0.1:6379/0 [default: none, a lone server]",
        apply: |c, v| {
            if !(v.starts_with("redis://") || v.starts_with("unix://") || v.starts_with("redis+unix://")) {
                return Err("expected a redis:// or unix:// URL".to_owned());
            }
            c.redis = Some(v.to_owned());
            Ok(())
        },
    },
    Flag {
        name: "redis-prefix",
        value: "TEXT",
        help: "prefix of the cluster's keys in Redis, so clusters can share one [default: bare-sse:]",
        apply: |c, v| {
            if v.is_empty() || v.len() > 64 || v.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
                return Err("1-64 bytes without spaces or control characters".to_owned());
            }
            c.redis_prefix = v.to_owned();
            Ok(())
        },
    },
    Flag {
        name: "mercure-issuer",
        value: "URL",
        help: "Mercure: the trusted token issuer (`iss`); with a key, turns Mercure publishing on",
        apply: |c, v| {
            if v.is_empty() {
                return Err("an issuer is not empty".to_owned());
            }
            c.settings.mercure.issuer = Some(v.to_owned());
            Ok(())
        },
    },
    Flag {
        name: "mercure-publisher-key",
        value: "KEY",
        help: "Mercure: the publishers' token key: an HMAC secret, or @PATH of a PEM public key (RS256, ES256, EdDSA)",
        apply: |c, v| key(v).map(|k| c.settings.mercure.publisher_key = Some(k)),
    },
    Flag {
        name: "mercure-subscriber-key",
        value: "KEY",
        help: "Mercure: the subscribers' token key, as the publishers' [default: the publishers' key]",
        apply: |c, v| key(v).map(|k| c.settings.mercure.subscriber_key = Some(k)),
    },
    Flag {
        name: "mercure-alg",
        value: "ALG",
        help: "Mercure: the one accepted token algorithm: HS256, HS384, HS512, RS256, ES256, EdDSA [default: HS256]",
        apply: |c, v| {
            let alg =
                crate::mercure::token::Alg::from_name(v).ok_or("not one of HS256 HS384 HS512 RS256 ES256 EdDSA")?;
            c.settings.mercure.alg = alg;
            Ok(())
        },
    },
    Flag {
        name: "mercure-resource",
        value: "URL",
        help: "Mercure: the hub's URL, which tokens must name in `aud` [default: http://HOST/.well-known/mercure from each request]",
        apply: |c, v| {
            let url = url::Url::parse(v).map_err(|e| format!("not a URL: {e}"))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err("an http or https URL".to_owned());
            }
            c.settings.mercure.resource = Some(v.to_owned());
            Ok(())
        },
    },
    Flag {
        name: "mercure-require-subscriber-token",
        value: "",
        help: "Mercure: refuse subscribers without a token (401); by default they get public updates only",
        apply: |c, v| switch(v).map(|on| c.settings.mercure.require_subscriber_token = on),
    },
    Flag {
        name: "mercure-subscriptions",
        value: "",
        help: "Mercure: active subscriptions: a private `mercure` event when a subscription starts or ends, and the subscription API at /.well-known/mercure/subscriptions",
        apply: |c, v| switch(v).map(|on| c.settings.mercure.subscriptions = on),
    },
    Flag {
        name: "mercure-compat",
        value: "VERSION",
        help: "Mercure: also take what 0.x clients send (`topic=` selectors, URI templates, the `mercure` token claim, the mercureAuthorization cookie); VERSION is 0",
        apply: |c, v| match v {
            "0" => {
                c.settings.mercure.compat_0x = true;
                Ok(())
            }
            _ => Err("the only older protocol is 0".to_owned()),
        },
    },
    Flag {
        name: "mercure-cookie",
        value: "NAME",
        help: "Mercure: the cookie that may carry a token [default: __Secure-mercure_access_token]",
        apply: |c, v| {
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b)) {
                return Err("a cookie name (RFC 6265 token)".to_owned());
            }
            c.settings.mercure.cookie_name = v.to_owned();
            Ok(())
        },
    },
    Flag {
        name: "tick",
        value: "",
        help: "publish the server's time (UTC) every second on topic `time`",
        apply: |c, v| switch(v).map(|on| c.tick = on),
    },
];

/// Parses the command line (`args` without the program name), falling back on
/// environment variables looked up with `env`.
pub fn parse<I, E>(args: I, env: E) -> Result<Command, String>
where
    I: IntoIterator<Item = String>,
    E: Fn(&str) -> Option<String>,
{
    let mut config = Config::default();
    // Environment first, so flags override it.
    for flag in FLAGS {
        let var = flag.env_var();
        if let Some(value) = env(&var) {
            (flag.apply)(&mut config, &value).map_err(|why| format!("{var}={value:?}: {why}"))?;
        }
    }
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            _ => {}
        }
        let Some(body) = arg.strip_prefix("--") else {
            return Err(format!("unexpected argument {arg:?}"));
        };
        let (name, inline) = match body.split_once('=') {
            Some((name, value)) => (name, Some(value.to_owned())),
            None => (body, None),
        };
        let flag = FLAGS.iter().find(|f| f.name == name).ok_or_else(|| format!("unknown flag --{name}"))?;
        let value = if flag.value.is_empty() {
            inline.unwrap_or_else(|| "true".to_owned())
        } else {
            inline.or_else(|| args.next()).ok_or_else(|| format!("--{name} needs a value ({})", flag.value))?
        };
        (flag.apply)(&mut config, &value).map_err(|why| format!("--{name} {value:?}: {why}"))?;
    }
    // Nodes skip stream entries larger than this, so a cluster node must not
    // accept a publish it would then drop.
    let max_body = config.settings.limits.max_body_bytes;
    if config.redis.is_some() && max_body > crate::broadcast::bus::MAX_MESSAGE_BYTES {
        return Err(format!(
            "--max-body-bytes {max_body} is over {} with --redis",
            crate::broadcast::bus::MAX_MESSAGE_BYTES
        ));
    }
    // A key that does not fit its algorithm is an error now, not a 401 later.
    config.settings.mercure.verifier()?;
    Ok(Command::Run(Box::new(config)))
}

/// The `--help` text.
pub fn help() -> String {
    let mut text = format!(
        "bare-sse {}: a lean Server-Sent Events broadcast server\n\n\
         Usage: bare-sse [FLAGS]\n\n\
         Subscribe:  curl -N http://127.0.0.1:3000/events\n\
         Publish:    curl -d '{{\"message\":\"hello\"}}' http://127.0.0.1:3000/send-event\n\n\
         Flags (each can also be set in the environment variable shown):\n",
        env!("CARGO_PKG_VERSION")
    );
    for flag in FLAGS {
        let left = format!("  --{} {}", flag.name, flag.value).trim_end().to_owned();
        text.push_str(&format!("{left:<28} {}\n{:<28} env: {}\n", flag.help, "", flag.env_var()));
    }
    text.push_str(&format!("{:<28} print this help\n{:<28} print the version\n", "  -h, --help", "  -V, --version"));
    text
}

/// A key: the value itself (an HMAC secret), or `@PATH` for a file's
/// contents (a PEM key), read now so that a bad path fails at start.
fn key(value: &str) -> Result<Vec<u8>, String> {
    match value.strip_prefix('@') {
        Some(path) => std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}")),
        None if value.is_empty() => Err("a key is not empty".to_owned()),
        None => Ok(value.as_bytes().to_vec()),
    }
}

fn resolve(value: &str) -> Result<SocketAddr, String> {
    let mut addrs = value.to_socket_addrs().map_err(|e| format!("not an address: {e}"))?;
    addrs.next().ok_or_else(|| "resolves to no address".to_owned())
}

/// Connections we can hold: the soft open-file limit (raised to the hard
/// limit by the binary at start), less a few descriptors for the listener,
/// the poll instance, logging and the like.
pub fn default_max_connections() -> usize {
    let (soft, _hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap_or((1024, 1024));
    usize::try_from(soft).unwrap_or(usize::MAX).saturating_sub(32).max(1)
}

fn token(value: &str) -> Result<String, String> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("expected a non-empty token of visible ASCII characters".to_owned());
    }
    Ok(value.to_owned())
}

fn whole(value: &str) -> Result<usize, String> {
    value.parse::<usize>().map_err(|_| "expected a whole number".to_owned())
}

fn switch(value: &str) -> Result<bool, String> {
    match value {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        _ => Err("expected true or false".to_owned()),
    }
}

/// Upper bounds for numeric flags. They are far above any sensible setting;
/// they exist so that an absurd value is refused at start instead of
/// overflowing a deadline or an allocation later.
const MIB: usize = 1 << 20;
const GIB: usize = 1 << 30;
const DAY: usize = 86_400;

/// Least `--max-head-bytes`: 1 KiB, the buffer nginx allots an ordinary
/// request head (`client_header_buffer_size`). A request line and a `Host`
/// field fit in 30 bytes, but no real client sends so little: curl sends
/// about 80, a browser's EventSource 400 to 900 (`User-Agent`, `Accept-*`,
/// `Origin`, `Referer`), so a smaller limit would answer ordinary clients
/// with 431, and a head any smaller than the minimal request refuses all.
const MIN_HEAD_BYTES: usize = 1024;

/// Least `--max-body-bytes`: a publish of a short message with a topic and
/// an event name (`{"message":"...","topic":"news","event":"update"}`, or
/// the Mercure form `topic=...&data=...`). Below it, the server accepts
/// only messages too short to be of use.
const MIN_BODY_BYTES: usize = 64;

/// Least `--max-buffered-bytes`: a few ordinary events. A cap below one
/// event's frame drops a subscriber whose socket is full for an instant on
/// the next event.
const MIN_BUFFERED_BYTES: usize = 4096;

/// Least `--history-bytes`: a few ordinary events. A history that holds no
/// event replays nothing, silently; `--history 0` is how to say so.
const MIN_HISTORY_BYTES: usize = 4096;

fn in_range(value: &str, min: usize, max: usize) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!("expected a whole number from {min} to {max}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str], env: &[(&str, &str)]) -> Result<Command, String> {
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        parse(args.iter().map(|s| s.to_string()), |name| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
    }

    fn config(args: &[&str], env: &[(&str, &str)]) -> Config {
        match run(args, env) {
            Ok(Command::Run(config)) => *config,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn defaults() {
        assert_eq!(config(&[], &[]), Config::default());
        assert_eq!(Config::default().listen.to_string(), "127.0.0.1:3000");
    }

    #[test]
    fn flags_both_spellings() {
        let c = config(&["--listen", "127.0.0.1:0", "--max-body-bytes=100", "--tick", "--history", "0"], &[]);
        assert_eq!(c.listen.port(), 0);
        assert_eq!(c.settings.limits.max_body_bytes, 100);
        assert!(c.tick);
        assert_eq!(c.history.events, 0);
    }

    #[test]
    fn environment_and_precedence() {
        let env = [("BARE_SSE_MAX_BODY_BYTES", "70"), ("BARE_SSE_LISTEN", "127.0.0.1:9"), ("BARE_SSE_TICK", "1")];
        assert_eq!(config(&[], &env).settings.limits.max_body_bytes, 70);
        assert!(config(&[], &env).tick);
        assert_eq!(config(&["--listen", "127.0.0.1:8"], &env).listen.port(), 8);
    }

    #[test]
    fn errors_are_one_line() {
        for (args, env, needle) in [
            (&["--nope"][..], &[][..], "unknown flag --nope"),
            (&["--listen"], &[], "needs a value"),
            (&["--listen", "nowhere"], &[], "not an address"),
            (&["--max-body-bytes", "-1"], &[], "whole number from 64"),
            (&["--idle-timeout", "18446744073709551615"], &[], "from 1 to 86400"),
            (&["--max-head-bytes", "18446744073709551615"], &[], "from 1024 to 1048576"),
            (&["--max-connections", "100000000000"], &[], "from 1 to 4000000"),
            (&["extra"], &[], "unexpected argument"),
            (&[], &[("BARE_SSE_MAX_HEAD_BYTES", "x")], "BARE_SSE_MAX_HEAD_BYTES"),
        ] {
            let err = run(args, env).unwrap_err();
            assert!(err.contains(needle) && !err.contains('\n'), "{args:?}: {err}");
        }
    }

    #[test]
    fn size_flags_have_sane_minimums() {
        for (flag, least) in [
            ("--max-head-bytes", MIN_HEAD_BYTES),
            ("--max-body-bytes", MIN_BODY_BYTES),
            ("--max-buffered-bytes", MIN_BUFFERED_BYTES),
            ("--history-bytes", MIN_HISTORY_BYTES),
        ] {
            let below = (least - 1).to_string();
            let error = run(&[flag, &below], &[]).unwrap_err();
            assert!(error.contains(&format!("from {least} ")), "{flag} {below}: {error}");
            assert!(run(&[flag, &least.to_string()], &[]).is_ok(), "{flag} {least}");
        }
        assert!(run(&["--max-head-bytes", "10"], &[]).is_err(), "issue 17: 10 was accepted");
    }

    #[test]
    fn the_stream_cap_leaves_slots_for_other_requests() {
        let cap = |connections, streams: Option<usize>| {
            Config { max_connections: connections, max_streams: streams, ..Config::default() }.stream_cap()
        };
        assert_eq!(cap(50, None), 47);
        assert_eq!(cap(10, None), 10, "a tiny cap keeps no reserve");
        assert_eq!(cap(19_968, None), 19_968 - 1024);
        assert_eq!(cap(50, Some(20)), 20);
        assert_eq!(cap(50, Some(80)), 50, "never over the connection cap");
        assert_eq!(config(&["--max-streams", "7"], &[]).max_streams, Some(7));
    }

    #[test]
    fn help_and_version() {
        assert_eq!(run(&["--help"], &[]), Ok(Command::Help));
        assert_eq!(run(&["-V"], &[]), Ok(Command::Version));
        let text = help();
        for flag in FLAGS {
            assert!(text.contains(flag.name) && text.contains(&flag.env_var()));
        }
    }

    #[test]
    fn mercure_flags_and_their_errors() {
        let secret = "a secret of at least thirty-two bytes, for HS256";
        let c = config(&["--mercure-issuer", "https://app.example", "--mercure-publisher-key", secret], &[]);
        assert_eq!(c.settings.mercure.publisher_key.as_deref(), Some(secret.as_bytes()));
        assert!(c.settings.mercure.verifier().unwrap().is_some(), "publishing is on");
        let c =
            config(&[], &[("BARE_SSE_MERCURE_REQUIRE_SUBSCRIBER_TOKEN", "true"), ("BARE_SSE_MERCURE_ALG", "ES256")]);
        assert!(c.settings.mercure.require_subscriber_token);
        let key = concat!("@", env!("CARGO_MANIFEST_DIR"), "/src/mercure/testdata/ec-public.pem");
        let c = config(&["--mercure-alg", "ES256", "--mercure-issuer", "x", "--mercure-publisher-key", key], &[]);
        assert!(c.settings.mercure.verifier().unwrap().is_some(), "a PEM key from a file");
        for (args, why) in [
            (vec!["--mercure-alg", "none"], "not one of"),
            (vec!["--mercure-publisher-key", "@/nonexistent/key.pem"], "cannot read"),
            (vec!["--mercure-publisher-key", ""], "not empty"),
            (vec!["--mercure-resource", "ftp://x/"], "http or https"),
            (vec!["--mercure-cookie", "a;b"], "cookie name"),
            // An HS256 secret shorter than the hash, and a secret given as a PEM key.
            (vec!["--mercure-issuer", "x", "--mercure-publisher-key", "short"], "mercure key"),
            (vec!["--mercure-issuer", "x", "--mercure-alg", "RS256", "--mercure-publisher-key", secret], "mercure key"),
        ] {
            let error = run(&args, &[]).unwrap_err();
            assert!(error.contains(why), "{args:?}: {error}");
        }
    }
}
