//! The few calls into libc, each small and commented. Everything else in
//! the loadgen is safe Rust.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// Raises the soft open-file limit to the hard one; returns the limit now
/// in force.
pub fn raise_nofile_limit() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024)
}

/// CPU time (user + system) this process has used, in seconds: tells
/// whether the loadgen itself was the bottleneck of a run.
pub fn own_cpu_s() -> f64 {
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes only into `usage`, owned by this frame.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0.0;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// Sets `SO_LINGER` to zero: closing the socket then sends RST and leaves
/// no TIME_WAIT behind. Without it, each run of 10k-20k subscribers leaves
/// as many TIME_WAIT sockets for a minute, and the next run's connects
/// crawl through the crowded ephemeral port range.
pub fn reset_on_close(socket: &mio::net::TcpStream) {
    // Best effort: a socket that refuses just lingers normally.
    let _ = socket2::SockRef::from(socket).set_linger(Some(std::time::Duration::ZERO));
}

/// Starts a non-blocking connect to `target`, from `source` when given.
///
/// Why a source: Linux gives a connect without a bound port an ephemeral
/// port from `ip_local_port_range` (28k ports here), trying even ports
/// first; past ~14k connections to one server the search for a free port
/// costs more with every connect (10 s of system time for 16k streams).
/// Spreading the streams over several loopback source addresses (127.0.0.2
/// and up all reach 127.0.0.1) keeps each address's ports sparse.
/// `IP_BIND_ADDRESS_NO_PORT` defers the port choice to `connect`, which can
/// then reuse a port that only other source addresses hold.
pub fn connect(target: SocketAddr, source: Option<IpAddr>) -> io::Result<mio::net::TcpStream> {
    let socket = Socket::new(Domain::for_address(target), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    if let Some(ip) = source {
        let on: libc::c_int = 1;
        // SAFETY: setsockopt reads one c_int from `on`, owned by this frame,
        // for the descriptor `socket` owns.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        socket.bind(&SockAddr::from(SocketAddr::new(ip, 0)))?;
    }
    match socket.connect(&SockAddr::from(target)) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(mio::net::TcpStream::from_std(socket.into()))
}
