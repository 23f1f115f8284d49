//! The second seed's clock: with `--tick`, the server's time is published on
//! topic `time` once a second, through the same [`Publisher`] path as any
//! embedding program's events.
//!
//! The format is Go's `time.Stamp` (`Jan _2 15:04:05`, the day padded with a
//! space), which is what the seed printed. We have no time-zone database, so
//! the time is UTC.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::broadcast::event::Publish;
use crate::broadcast::publisher::Publisher;

/// The topic the clock publishes on.
pub const TOPIC: &str = "time";

/// Runs the clock until the server stops: publishes at each whole second.
pub fn run(publisher: Publisher) {
    loop {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        // Sleep to the next whole second, so ticks land on the second.
        std::thread::sleep(Duration::from_nanos(1_000_000_000 - u64::from(now.subsec_nanos())));
        let secs = now.as_secs() + 1;
        let tick = Publish { message: stamp(secs), topics: vec![TOPIC.to_owned()], ..Publish::default() };
        if publisher.publish(tick).is_err() {
            return; // The server has stopped.
        }
    }
}

/// Formats Unix seconds as Go's `time.Stamp` in UTC.
///
/// ```
/// assert_eq!(bare_sse::ticker::stamp(1_763_883_901), "Nov 23 07:45:01");
/// assert_eq!(bare_sse::ticker::stamp(0), "Jan  1 00:00:00");
/// ```
pub fn stamp(unix_secs: u64) -> String {
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let days = unix_secs / 86_400;
    let secs = unix_secs % 86_400;
    let (_, month, day) = civil_from_days(days as i64);
    let name = MONTHS.get(month as usize - 1).copied().unwrap_or("???");
    format!("{name} {day:>2} {:02}:{:02}:{:02}", secs / 3600, secs % 3600 / 60, secs % 60)
}

/// Year, month (1-12) and day (1-31) of a day count since 1970-01-01, by
/// Howard Hinnant's `civil_from_days` algorithm.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_420), (2025, 11, 28));
        assert_eq!(stamp(951_782_400 + 3_661), "Feb 29 01:01:01");
        assert_eq!(stamp(1_767_225_599), "Dec 31 23:59:59");
    }
}
