//! The `bare-sse` binary: parse the configuration, bind, run.

use std::process::ExitCode;

use bare_sse::config::{self, Command};
use bare_sse::server::Server;

fn main() -> ExitCode {
    let config = match config::parse(std::env::args().skip(1), |name| std::env::var(name).ok()) {
        Ok(Command::Run(config)) => config,
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
    let server = match Server::bind(&config) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("bare-sse: cannot listen on {}: {e}", config.listen);
            return ExitCode::from(2);
        }
    };
    // One write, so a supervisor or test reading stderr sees a whole line.
    let start_line = match server.local_addr() {
        Ok(addr) => format!("bare-sse {} listening on http://{addr}\n", env!("CARGO_PKG_VERSION")),
        Err(e) => format!("bare-sse: listening, address unknown: {e}\n"),
    };
    eprint!("{start_line}");
    match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bare-sse: event loop failed: {e}");
            ExitCode::FAILURE
        }
    }
}
