//! Command line of `loadgen`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

pub const USAGE: &str = "\
loadgen: SSE fan-out load generator (one thread, mio)

usage: loadgen --target HOST:PORT [options]

  --target HOST:PORT     server to load (required); repeat it for a cluster:
                         subscribers are spread over the targets in turn,
                         publishers all connect to the first
  --subscribers N        open N GET /events streams (default 0)
  --messages M           publish M messages (default 0)
  --publishers K         keep-alive publisher connections (default 1)
  --rate R               publish R messages per second in all (default: as fast as possible)
  --burst                pipeline requests on each publisher connection
  --depth D              requests in flight per publisher with --burst (default 32)
  --raw-body             send the message text as the POST body instead of
                         {\"message\":\"...\"} (nchan publishes the raw body)
  --events-path P        subscribe path (default /events)
  --send-path P          publish path (default /send-event)
  --timeout SECS         bound of the connect phase and of the publish phase (default 30)
  --settle-ms MS         wait after subscribing before the idle reading (default 500)
  --connect-concurrency C  subscribers connecting at once (default 100, under
                         the 128-connection listen backlog of std and mio)
  --source-ips N         spread subscribers over source addresses 127.0.0.1
                         to 127.0.0.N when the target is on 127.0.0.0/8
                         (default 8; 1 = never bind)
  --server-pid PID       process to read RSS and CPU of (repeatable, summed)
  --server-core N        CPU core the server is pinned to: its busy time
                         (softirq included) is reported too
  --label KEY=VALUE      copied into the JSON output (repeatable)
  -h, --help             this text

Prints one JSON object on stdout.";

/// How publishers pace their requests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pacing {
    /// One request in flight per connection, next one on its response.
    Sequential,
    /// Up to `depth` requests in flight per connection.
    Burst { depth: usize },
    /// `per_s` messages per second over all connections, one in flight each.
    Rate { per_s: f64 },
}

/// A server to connect to: its address and the `Host` header that names it.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub host: String,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// Subscriber `i` connects to `targets[i % len]`; publishers to `targets[0]`.
    pub targets: Vec<Target>,
    pub subscribers: usize,
    pub messages: u64,
    pub publishers: usize,
    pub pacing: Pacing,
    pub raw_body: bool,
    pub events_path: String,
    pub send_path: String,
    pub timeout: Duration,
    pub settle: Duration,
    pub connect_concurrency: usize,
    pub server_pids: Vec<u32>,
    pub server_core: Option<usize>,
    /// Source addresses subscribers are spread over; empty: the kernel's choice.
    pub sources: Vec<IpAddr>,
    pub labels: Vec<(String, String)>,
}

/// Parses the arguments after the program name. `Err` holds the message to
/// print; `Ok(None)` means help was asked for.
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Option<Config>, String> {
    let mut hosts = Vec::new();
    let mut subscribers = 0;
    let mut messages = 0;
    let mut publishers = 1;
    let mut rate = None;
    let mut burst = false;
    let mut depth = 32;
    let mut raw_body = false;
    let mut events_path = "/events".to_string();
    let mut send_path = "/send-event".to_string();
    let mut timeout_s = 30.0;
    let mut settle_ms = 500;
    let mut connect_concurrency = 100;
    let mut server_pids = Vec::new();
    let mut server_core = None;
    let mut source_ips: u8 = 8;
    let mut labels = Vec::new();

    let mut args = args.into_iter();
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--target" => hosts.push(value()?),
            "--subscribers" => subscribers = number(&flag, &value()?)?,
            "--messages" => messages = number(&flag, &value()?)?,
            "--publishers" => publishers = number(&flag, &value()?)?,
            "--rate" => rate = Some(number::<f64>(&flag, &value()?)?),
            "--burst" => burst = true,
            "--depth" => depth = number(&flag, &value()?)?,
            "--raw-body" => raw_body = true,
            "--events-path" => events_path = value()?,
            "--send-path" => send_path = value()?,
            "--timeout" => timeout_s = number(&flag, &value()?)?,
            "--settle-ms" => settle_ms = number(&flag, &value()?)?,
            "--connect-concurrency" => connect_concurrency = number(&flag, &value()?)?,
            "--server-pid" => server_pids.push(number(&flag, &value()?)?),
            "--server-core" => server_core = Some(number(&flag, &value()?)?),
            "--source-ips" => source_ips = number(&flag, &value()?)?,
            "--label" => {
                let kv = value()?;
                let (k, v) = kv.split_once('=').ok_or("--label wants KEY=VALUE")?;
                labels.push((k.to_string(), v.to_string()));
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }

    if hosts.is_empty() {
        return Err("--target is required".into());
    }
    let mut targets = Vec::new();
    for host in hosts {
        let addr = host
            .to_socket_addrs()
            .map_err(|e| format!("--target {host}: {e}"))?
            .next()
            .ok_or_else(|| format!("--target {host}: no address"))?;
        targets.push(Target { addr, host });
    }
    if publishers == 0 {
        return Err("--publishers must be at least 1".into());
    }
    if !(timeout_s > 0.0 && timeout_s <= 3600.0) {
        return Err("--timeout must be in (0, 3600] seconds".into());
    }
    let pacing = match (rate, burst) {
        (Some(_), true) => return Err("--rate and --burst exclude each other".into()),
        (Some(r), false) if r.is_nan() || r <= 0.0 => return Err("--rate must be positive".into()),
        (Some(per_s), false) => Pacing::Rate { per_s },
        (None, true) => Pacing::Burst { depth: depth.max(1) },
        (None, false) => Pacing::Sequential,
    };
    let all_loopback_v4 = targets.iter().all(|t| matches!(t.addr.ip(), IpAddr::V4(ip) if ip.is_loopback()));
    let sources = if all_loopback_v4 && source_ips > 1 {
        (1..=source_ips).map(|last| IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))).collect()
    } else {
        Vec::new()
    };
    Ok(Some(Config {
        targets,
        subscribers,
        messages,
        publishers,
        pacing,
        raw_body,
        events_path,
        send_path,
        timeout: Duration::from_secs_f64(timeout_s),
        settle: Duration::from_millis(settle_ms),
        connect_concurrency: connect_concurrency.max(1),
        server_pids,
        server_core,
        sources,
        labels,
    }))
}

fn number<T: std::str::FromStr>(flag: &str, text: &str) -> Result<T, String> {
    text.parse().map_err(|_| format!("{flag}: not a number: {text:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn parses_flags() {
        let c = parse(args("--target 127.0.0.1:9 --subscribers 5 --burst --depth 4 --server-pid 1 --server-pid 2"))
            .expect("ok")
            .expect("config");
        assert_eq!(c.subscribers, 5);
        assert_eq!(c.pacing, Pacing::Burst { depth: 4 });
        assert_eq!(c.server_pids, vec![1, 2]);
        assert_eq!(c.sources.len(), 8);
        let c = parse(args("--target 127.0.0.1:9 --source-ips 1")).expect("ok").expect("config");
        assert!(c.sources.is_empty());
        let c = parse(args("--target 127.0.0.1:9 --target 127.0.0.1:10")).expect("ok").expect("config");
        let hosts: Vec<&str> = c.targets.iter().map(|t| t.host.as_str()).collect();
        assert_eq!(hosts, ["127.0.0.1:9", "127.0.0.1:10"]);
        assert_eq!(c.targets[1].addr.port(), 10);
        assert_eq!(c.sources.len(), 8);
        assert!(parse(args("--subscribers 5")).is_err());
        assert!(parse(args("--target 127.0.0.1:9 --rate 5 --burst")).is_err());
        assert!(parse(args("--target 127.0.0.1:9 --timeout 0")).is_err());
        assert!(matches!(parse(args("-h")), Ok(None)));
    }
}
