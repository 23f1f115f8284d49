//! Resident memory and CPU time of the server under test, from `/proc`.
//!
//! `VmRSS` comes from `/proc/PID/status` (kB), CPU time is `utime + stime`
//! from `/proc/PID/stat` (fields 14 and 15, in clock ticks). Several pids are
//! summed: nginx serves with a master and a worker process.

use std::fs;

/// One reading of all the watched processes, summed.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    pub rss_kb: u64,
    pub cpu_s: f64,
    /// How many of the pids could be read (a pid that is gone counts zero).
    pub pids_read: usize,
}

/// Reads every pid in `pids` and sums what it finds.
pub fn sample(pids: &[u32]) -> Sample {
    let ticks = clock_ticks();
    let mut total = Sample::default();
    for &pid in pids {
        let status = fs::read_to_string(format!("/proc/{pid}/status"));
        let stat = fs::read_to_string(format!("/proc/{pid}/stat"));
        if let (Ok(status), Ok(stat)) = (status, stat) {
            total.rss_kb += parse_rss_kb(&status).unwrap_or(0);
            total.cpu_s += parse_cpu_ticks(&stat).unwrap_or(0) as f64 / ticks;
            total.pids_read += 1;
        }
    }
    total
}

/// Resident memory now and at its peak (`VmRSS`, `VmHWM`) of the watched
/// processes, summed, in kB.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Memory {
    pub rss_kb: u64,
    pub hwm_kb: u64,
}

/// Reads `/proc/PID/status` of every pid in `pids` (only that file: cheap
/// enough to sample every millisecond while something streams).
pub fn memory(pids: &[u32]) -> Memory {
    let mut total = Memory::default();
    for &pid in pids {
        if let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) {
            total.rss_kb += parse_rss_kb(&status).unwrap_or(0);
            total.hwm_kb += parse_status_kb(&status, "VmHWM:").unwrap_or(0);
        }
    }
    total
}

/// Busy time of one CPU core in seconds, from its `cpuN` line of
/// `/proc/stat`: user, nice, system, irq and softirq (not idle, iowait or
/// steal). With the server pinned to that core this also counts the
/// kernel's softirq work done for the server (loopback TCP receive
/// processing), which the kernel does not charge to any process.
pub fn core_busy_s(core: usize) -> Option<f64> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    parse_core_busy_ticks(&stat, core).map(|t| t as f64 / clock_ticks())
}

fn parse_core_busy_ticks(stat: &str, core: usize) -> Option<u64> {
    let name = format!("cpu{core}");
    let line = stat.lines().find(|l| l.split_whitespace().next() == Some(name.as_str()))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).map(|f| f.parse().ok()).collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal ...
    Some(v.first()? + v.get(1)? + v.get(2)? + v.get(5)? + v.get(6)?)
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf reads a constant of the system and touches no memory.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// `VmRSS:     1234 kB` out of `/proc/PID/status`.
fn parse_rss_kb(status: &str) -> Option<u64> {
    parse_status_kb(status, "VmRSS:")
}

/// The kB figure of the `/proc/PID/status` line that starts with `key`.
fn parse_status_kb(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// `utime + stime` out of `/proc/PID/stat`. The command name (field 2) is in
/// parentheses and may itself hold spaces and parentheses, so fields are
/// counted from the last `)`.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    // After the name come field 3 (state) onward: utime is field 14.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_stat() {
        let status = "Name:\tnginx\nVmPeak:\t  9000 kB\nVmRSS:\t    4321 kB\nThreads:\t1\n";
        assert_eq!(parse_rss_kb(status), Some(4321));
        assert_eq!(parse_rss_kb("Name: x\n"), None);
        assert_eq!(parse_status_kb(status, "VmPeak:"), Some(9000));
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 17 5 0 0 20 0 1 0 99 1000 200";
        assert_eq!(parse_cpu_ticks(stat), Some(22));
        assert_eq!(parse_cpu_ticks("42 (x) S 1"), None);
    }

    #[test]
    fn parses_core_lines() {
        let stat = "cpu  9 9 9 9 9 9 9 9 0 0\ncpu0 1 2 3 100 5 6 7 8 0 0\ncpu1 10 0 0 0 0 0 0 0 0 0\n";
        assert_eq!(parse_core_busy_ticks(stat, 0), Some(1 + 2 + 3 + 6 + 7));
        assert_eq!(parse_core_busy_ticks(stat, 1), Some(10));
        assert_eq!(parse_core_busy_ticks(stat, 2), None);
    }

    #[test]
    fn reads_own_process() {
        let me = sample(&[std::process::id()]);
        assert_eq!(me.pids_read, 1);
        assert!(me.rss_kb > 0);
        assert_eq!(sample(&[u32::MAX]).pids_read, 0);
        let mem = memory(&[std::process::id()]);
        assert!(mem.rss_kb > 0 && mem.hwm_kb >= mem.rss_kb);
    }
}
