//! The `bare-sse` binary: parse the configuration, bind, run.

use std::process::ExitCode;

use bare_sse::config::{self, Command};
use bare_sse::server::Server;

/// A minimal logger for the `log` facade: one line per record on stderr.
/// A line that cannot be written is dropped: once a terminal has hung up
/// (SIGHUP is ignored) or a pipe's reader is gone, `eprintln!` would panic
/// and take the event loop down with it.
struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            use std::io::Write as _;
            let level = record.level().as_str().to_ascii_lowercase();
            let _ = writeln!(std::io::stderr().lock(), "bare-sse: {level}: {}", record.args());
        }
    }

    fn flush(&self) {}
}

fn init_logging(level: log::LevelFilter) {
    static LOGGER: StderrLogger = StderrLogger;
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}

fn main() -> ExitCode {
    // Connection scale needs file descriptors: use all the hard limit allows
    // (before the config, whose default connection cap derives from it).
    let raised_nofile = rlimit::increase_nofile_limit(u64::MAX);
    // RUST_LOG is honoured as a fallback for BARE_SSE_LOG_LEVEL, by habit, when
    // it is a plain level; module filters meant for other programs are ignored.
    let rust_log = || std::env::var("RUST_LOG").ok().filter(|v| v.parse::<log::LevelFilter>().is_ok());
    let env = |name: &str| {
        let value = std::env::var(name).ok();
        if name == "BARE_SSE_LOG_LEVEL" { value.or_else(rust_log) } else { value }
    };
    let config = match config::parse(std::env::args().skip(1), env) {
        Ok(Command::Run(config)) => *config,
        Ok(Command::Help) => {
            print!("{}", config::help());
            return ExitCode::SUCCESS;
        }
        Ok(Command::Version) => {
            println!("bare-sse {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(why) => {
            eprintln!("bare-sse: {why} (see --help)");
            return ExitCode::from(2);
        }
    };
    init_logging(config.log_level);
    if let Err(e) = raised_nofile {
        log::warn!("could not raise the open-file limit: {e}");
    }
    let mut server = match Server::bind(&config) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("bare-sse: cannot start on {}: {e}", config.listen);
            return ExitCode::from(2);
        }
    };
    if let Err(e) = server.stop_on_signals() {
        eprintln!("bare-sse: cannot handle signals: {e}");
        return ExitCode::from(2);
    }
    // One write, so a supervisor or test reading stderr sees a whole line.
    let addr = server.local_addr().unwrap_or(config.listen);
    let limits = &config.settings.limits;
    eprint!(
        "{}",
        format_args!(
            "bare-sse {} listening on http://{addr} ({} event loop(s), max {} connections, {} B head, \
             {} B body, {} B buffered per subscriber, history {} events; Mercure publishing {})\n",
            env!("CARGO_PKG_VERSION"),
            server.threads(),
            config.max_connections,
            limits.max_head_bytes,
            limits.max_body_bytes,
            config.max_buffered_bytes,
            config.history.events,
            match (&config.settings.mercure.issuer, &config.settings.mercure.publisher_key) {
                (Some(_), Some(_)) => "on",
                _ => "off (no --mercure-issuer and --mercure-publisher-key)",
            },
        )
    );
    if !addr.ip().is_loopback() && config.settings.publish_token.is_none() {
        log::warn!(
            "listening on {addr}, which is not loopback, WITHOUT --publish-token: anyone who can reach \
             this address can publish to every subscriber"
        );
    }
    match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bare-sse: event loop failed: {e}");
            ExitCode::FAILURE
        }
    }
}
