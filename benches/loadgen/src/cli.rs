//! Command line of `loadgen`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use crate::mercure::{self, MatchKind};

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
  --events-path P        subscribe path (default /events; with --api
                         mercure /.well-known/mercure)
  --send-path P          publish path (default /send-event; with --api
                         mercure /.well-known/mercure)
  --api seeds|mercure    seeds (default): GET /events, POST /send-event
                         with JSON; mercure: subscribe with a topic
                         matcher, publish form bodies with a bearer JWT
  --match exact|urlpattern  Mercure subscribers' matcher (default exact):
                         match=TOPIC, or match_urlpattern=PATTERN (one
                         pattern shared by every subscriber)
  --topic URL            Mercure topic published on (and subscribed to with
                         exact) (default https://example.com/items/1)
  --pattern P            Mercure URL pattern (default
                         https://example.com/items/:id)
  --mercure-token JWT    the publishers' bearer token, as it is
  --mercure-secret S     or: mint an HS256 token at start with this secret
                         (at least 32 bytes) ...
  --mercure-issuer ISS   ... this iss (default https://example.com) ...
  --mercure-audience A   ... and this aud (default
                         http://TARGET/.well-known/mercure, as bare-sse
                         derives it from Host)
  --list-subscriptions   with --api mercure, after the other phases: GET the
                         hub's /.well-known/mercure/subscriptions
                         (--mercure-subscriptions) in full, timing it and
                         sampling the server's RSS while it streams
  --mercure-list-token JWT  the listing's bearer token, when publishers get
                         --mercure-token (with --mercure-secret one granting
                         subscribe on the collection is minted)
  --timeout SECS         bound of the connect phase, of the publish phase
                         and of the listing (default 30)
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

/// Which API the server is spoken to in.
#[derive(Debug, Clone, PartialEq)]
pub enum Api {
    /// `GET /events`, `POST /send-event` with `{"message": ...}` (or the raw
    /// body).
    Seeds,
    /// Mercure: subscribe with one matcher, publish form bodies with a JWT.
    Mercure(MercureApi),
}

#[derive(Debug, Clone, PartialEq)]
pub struct MercureApi {
    pub matching: MatchKind,
    pub topic: String,
    pub pattern: String,
    /// The `Authorization` header's value: `Bearer <JWT>`.
    pub authorization: String,
    /// The same for `--list-subscriptions`, when it is asked for.
    pub list_authorization: Option<String>,
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
    pub api: Api,
    /// The subscribe request target (path and query).
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
    let mut timeout_s = 30.0;
    let mut settle_ms = 500;
    let mut connect_concurrency = 100;
    let mut server_pids = Vec::new();
    let mut server_core = None;
    let mut source_ips: u8 = 8;
    let mut labels = Vec::new();
    let mut api = "seeds".to_string();
    let mut matching = None;
    let mut topic = mercure::DEFAULT_TOPIC.to_string();
    let mut pattern = mercure::DEFAULT_PATTERN.to_string();
    let mut token = None;
    let mut secret = None;
    let mut issuer = "https://example.com".to_string();
    let mut audience = None;
    let mut events_path = None;
    let mut send_path = None;
    let mut list_subscriptions = false;
    let mut list_token = None;

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
            "--events-path" => events_path = Some(value()?),
            "--send-path" => send_path = Some(value()?),
            "--api" => api = value()?,
            "--match" => matching = Some(value()?),
            "--topic" => topic = value()?,
            "--pattern" => pattern = value()?,
            "--mercure-token" => token = Some(value()?),
            "--mercure-secret" => secret = Some(value()?),
            "--mercure-issuer" => issuer = value()?,
            "--mercure-audience" => audience = Some(value()?),
            "--list-subscriptions" => list_subscriptions = true,
            "--mercure-list-token" => list_token = Some(value()?),
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
    let api = match api.as_str() {
        "seeds" => {
            if matching.is_some() || token.is_some() || secret.is_some() || list_subscriptions || list_token.is_some() {
                return Err(
                    "--match, --mercure-token, --mercure-secret and --list-subscriptions need --api mercure".into()
                );
            }
            Api::Seeds
        }
        "mercure" => {
            if raw_body {
                return Err("--raw-body is for the seeds API".into());
            }
            let matching = match matching.as_deref() {
                None | Some("exact") => MatchKind::Exact,
                Some("urlpattern") => MatchKind::UrlPattern,
                Some(other) => return Err(format!("--match {other:?}: exact or urlpattern")),
            };
            let (token, minted_list_token) = match (token, secret) {
                (Some(_), Some(_)) => return Err("--mercure-token and --mercure-secret exclude each other".into()),
                (Some(token), None) => (token, None),
                (None, Some(secret)) => {
                    if secret.len() < 32 {
                        return Err("--mercure-secret: an HS256 secret has at least 32 bytes".into());
                    }
                    let audience = audience.unwrap_or_else(|| mercure::default_audience(&targets[0].host));
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_err(|e| format!("clock: {e}"))?
                        .as_secs();
                    let listing = mercure::listing_token(secret.as_bytes(), &issuer, &audience, now);
                    (mercure::publisher_token(secret.as_bytes(), &issuer, &audience, now), Some(listing))
                }
                (None, None) => return Err("--api mercure needs --mercure-token or --mercure-secret".into()),
            };
            let list_authorization = match (list_subscriptions, list_token.or(minted_list_token)) {
                (false, _) => None,
                (true, Some(token)) => Some(format!("Bearer {token}")),
                (true, None) => {
                    return Err("--list-subscriptions with --mercure-token needs --mercure-list-token".into());
                }
            };
            Api::Mercure(MercureApi {
                matching,
                topic,
                pattern,
                authorization: format!("Bearer {token}"),
                list_authorization,
            })
        }
        other => return Err(format!("--api {other:?}: seeds or mercure")),
    };
    let (default_events, default_send) = match &api {
        Api::Seeds => ("/events".to_string(), "/send-event".to_string()),
        Api::Mercure(_) => (mercure::HUB_PATH.to_string(), mercure::HUB_PATH.to_string()),
    };
    let events_path = events_path.unwrap_or(default_events);
    let events_path = match &api {
        Api::Seeds => events_path,
        Api::Mercure(m) => mercure::subscribe_target(&events_path, m.matching, &m.topic, &m.pattern),
    };
    let send_path = send_path.unwrap_or(default_send);
    Ok(Some(Config {
        targets,
        subscribers,
        messages,
        publishers,
        pacing,
        raw_body,
        api,
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
        assert_eq!(c.api, Api::Seeds);
        assert_eq!(c.events_path, "/events");
        assert_eq!(c.send_path, "/send-event");
    }

    #[test]
    fn parses_mercure_flags() {
        let secret = "0123456789abcdef0123456789abcdef";
        let c =
            parse(args(&format!("--target 127.0.0.1:9 --api mercure --match urlpattern --mercure-secret {secret}")))
                .expect("ok")
                .expect("config");
        assert_eq!(c.events_path, "/.well-known/mercure?match_urlpattern=https%3A%2F%2Fexample.com%2Fitems%2F%3Aid");
        assert_eq!(c.send_path, "/.well-known/mercure");
        let Api::Mercure(m) = &c.api else { panic!("not mercure") };
        assert_eq!(m.matching, MatchKind::UrlPattern);
        assert!(m.authorization.starts_with("Bearer ey"));
        let c = parse(args("--target 127.0.0.1:9 --api mercure --mercure-token a.b.c")).expect("ok").expect("config");
        assert_eq!(c.events_path, "/.well-known/mercure?match=https%3A%2F%2Fexample.com%2Fitems%2F1");
        let Api::Mercure(m) = &c.api else { panic!("not mercure") };
        assert_eq!(m.authorization, "Bearer a.b.c");
        assert!(parse(args("--target 127.0.0.1:9 --api mercure")).is_err());
        assert!(parse(args("--target 127.0.0.1:9 --api mercure --mercure-secret short")).is_err());
        assert!(parse(args("--target 127.0.0.1:9 --api mercure --mercure-token t --raw-body")).is_err());
        assert!(parse(args("--target 127.0.0.1:9 --api mercure --mercure-token t --match regex")).is_err());
        assert!(parse(args("--target 127.0.0.1:9 --match exact")).is_err());
        assert!(parse(args("--target 127.0.0.1:9 --api nope")).is_err());
        let c =
            parse(args(&format!("--target 127.0.0.1:9 --api mercure --list-subscriptions --mercure-secret {secret}")))
                .expect("ok")
                .expect("config");
        let Api::Mercure(m) = &c.api else { panic!("not mercure") };
        assert!(m.list_authorization.as_deref().is_some_and(|a| a.starts_with("Bearer ey")));
        assert!(parse(args("--target 127.0.0.1:9 --list-subscriptions")).is_err());
        assert!(parse(args("--target 127.0.0.1:9 --api mercure --mercure-token t --list-subscriptions")).is_err());
        let c = parse(args(
            "--target 127.0.0.1:9 --api mercure --mercure-token t --list-subscriptions --mercure-list-token l",
        ))
        .expect("ok")
        .expect("config");
        let Api::Mercure(m) = &c.api else { panic!("not mercure") };
        assert_eq!(m.list_authorization.as_deref(), Some("Bearer l"));
    }
}
