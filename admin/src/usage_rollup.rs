//! Usage rolled up per hour or per day from the per-minute counts nodes report:
//! bytes, requests, the peak minute and the 95th percentile of 5-minute
//! samples (the CDN billing convention). Computed on read from the durable
//! minute table, so a rollup survives restarts and counts a resent report once
//! because the minute table does.

use crate::clock::UnixMs;
use crate::store::UsageRow;

/// How finely usage is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Granularity {
    /// Each minute that served something (minutes without traffic are left out).
    Minute,
    /// Every hour of the range, UTC.
    Hour,
    /// Every day of the range, UTC.
    Day,
}

const MINUTE_MS: i64 = 60_000;
/// The length of one 95th-percentile sample.
pub const SAMPLE_MS: i64 = 5 * MINUTE_MS;

impl Granularity {
    pub fn name(self) -> &'static str {
        match self {
            Granularity::Minute => "minute",
            Granularity::Hour => "hour",
            Granularity::Day => "day",
        }
    }

    pub fn window_ms(self) -> i64 {
        match self {
            Granularity::Minute => MINUTE_MS,
            Granularity::Hour => 3_600_000,
            Granularity::Day => 86_400_000,
        }
    }

    /// The range asked for when none is given: a day of minutes or hours, 30 days.
    pub fn default_range_ms(self) -> i64 {
        match self {
            Granularity::Minute | Granularity::Hour => 86_400_000,
            Granularity::Day => 30 * 86_400_000,
        }
    }
}

/// The most windows one answer holds (a week of minutes, some 400 days of
/// hours); a longer range is shortened at its start.
pub const MAX_WINDOWS: i64 = 10_080;

/// One window of the rollup.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub start: UnixMs,
    pub bytes: i64,
    pub requests: i64,
    /// The busiest minute's average, Mbit/s.
    pub peak_mbps: f64,
    /// The 95th percentile of the window's 5-minute averages, Mbit/s (a minute
    /// window has none).
    pub p95_mbps: Option<f64>,
}

/// A range of usage: its windows and what they add up to.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollup {
    pub from: UnixMs,
    pub to: UnixMs,
    pub windows: Vec<Window>,
    pub total_bytes: i64,
    pub total_requests: i64,
    pub peak_mbps: f64,
    pub p95_mbps: f64,
}

/// `[from, to)` widened to whole windows (hours and days start at UTC
/// boundaries; minutes are left as asked).
pub fn align(g: Granularity, from: UnixMs, to: UnixMs) -> (UnixMs, UnixMs) {
    if g == Granularity::Minute {
        return (from, to);
    }
    let w = g.window_ms();
    let down = from.div_euclid(w) * w;
    let up = to.div_euclid(w) * w + if to.rem_euclid(w) == 0 { 0 } else { w };
    (down, up)
}

/// Mbit/s of `bytes` sent over `ms` milliseconds, to a thousandth.
fn mbps(bytes: i64, ms: i64) -> f64 {
    let v = bytes as f64 * 8.0 / (ms as f64 / 1000.0) / 1e6;
    (v * 1000.0).round() / 1000.0
}

/// The nearest-rank 95th percentile of the 5-minute samples of `[start, end)`
/// that have begun by `now` (a sample without traffic counts as 0).
fn p95(minutes: &[UsageRow], start: UnixMs, end: UnixMs, now: UnixMs) -> f64 {
    let end = end.min(now.max(start));
    if end <= start {
        return 0.0;
    }
    // The samples `[start, end)` touches, each aligned to 5 minutes.
    let first = start.div_euclid(SAMPLE_MS);
    let n = usize::try_from((end - 1).div_euclid(SAMPLE_MS) - first + 1).unwrap_or(0);
    if n == 0 {
        return 0.0;
    }
    let mut samples = vec![0i64; n];
    for m in minutes {
        if let Ok(i) = usize::try_from(m.window_start.div_euclid(SAMPLE_MS) - first)
            && let Some(s) = samples.get_mut(i)
        {
            *s = s.saturating_add(m.bytes);
        }
    }
    samples.sort_unstable();
    let rank = (n * 95).div_ceil(100);
    mbps(samples[rank - 1], SAMPLE_MS)
}

/// Rolls the account's minutes (ordered by start, within `[from, to)`) up into
/// windows of `g`; `now` bounds the samples of the percentile.
pub fn rollup(minutes: &[UsageRow], g: Granularity, from: UnixMs, to: UnixMs, now: UnixMs) -> Rollup {
    let windows = match g {
        Granularity::Minute => minutes
            .iter()
            .map(|m| Window {
                start: m.window_start,
                bytes: m.bytes,
                requests: m.requests,
                peak_mbps: mbps(m.bytes, MINUTE_MS),
                p95_mbps: None,
            })
            .collect(),
        Granularity::Hour | Granularity::Day => {
            let w = g.window_ms();
            let mut out = Vec::new();
            let mut rest = minutes;
            let mut start = from;
            while start < to {
                let end = start + w;
                let n = rest.iter().take_while(|m| m.window_start < end).count();
                let (inside, after) = rest.split_at(n);
                rest = after;
                out.push(Window {
                    start,
                    bytes: inside.iter().fold(0i64, |a, m| a.saturating_add(m.bytes)),
                    requests: inside.iter().fold(0i64, |a, m| a.saturating_add(m.requests)),
                    peak_mbps: mbps(inside.iter().map(|m| m.bytes).max().unwrap_or(0), MINUTE_MS),
                    p95_mbps: Some(p95(inside, start, end, now)),
                });
                start = end;
            }
            out
        }
    };
    Rollup {
        from,
        to,
        windows,
        total_bytes: minutes.iter().fold(0i64, |a, m| a.saturating_add(m.bytes)),
        total_requests: minutes.iter().fold(0i64, |a, m| a.saturating_add(m.requests)),
        peak_mbps: mbps(minutes.iter().map(|m| m.bytes).max().unwrap_or(0), MINUTE_MS),
        p95_mbps: p95(minutes, from, to, now),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000;
    /// 2027-01-15T00:00:00Z.
    const DAY: i64 = 1_800_000_000_000 - 8 * H;

    fn minute(at: i64, bytes: i64) -> UsageRow {
        UsageRow { window_start: at, bytes, requests: 1 }
    }

    #[test]
    fn hours_and_days_start_on_utc_boundaries() {
        assert_eq!(align(Granularity::Hour, DAY + 90 * MINUTE_MS, DAY + 2 * H + 1), (DAY + H, DAY + 3 * H));
        assert_eq!(align(Granularity::Hour, DAY, DAY + 2 * H), (DAY, DAY + 2 * H));
        assert_eq!(align(Granularity::Day, DAY + 5 * H, DAY + 5 * H), (DAY, DAY + 24 * H));
        assert_eq!(align(Granularity::Minute, DAY + 7, DAY + 8), (DAY + 7, DAY + 8));
    }

    #[test]
    fn hours_add_up_their_minutes_and_hours_without_traffic_are_zero() {
        let minutes = [minute(DAY, 7_500_000), minute(DAY + 59 * MINUTE_MS, 750_000), minute(DAY + 2 * H, 1)];
        let r = rollup(&minutes, Granularity::Hour, DAY, DAY + 3 * H, DAY + 10 * H);
        let bytes: Vec<i64> = r.windows.iter().map(|w| w.bytes).collect();
        assert_eq!(bytes, [8_250_000, 0, 1]);
        assert_eq!(r.windows[0].requests, 2);
        assert_eq!(r.windows[1], Window { start: DAY + H, bytes: 0, requests: 0, peak_mbps: 0.0, p95_mbps: Some(0.0) });
        // 7.5 MB in a minute is 1 Mbit/s.
        assert_eq!(r.windows[0].peak_mbps, 1.0);
        assert_eq!((r.total_bytes, r.total_requests, r.peak_mbps), (8_250_001, 3, 1.0));
    }

    #[test]
    fn the_95th_percentile_drops_the_busiest_twentieth_of_samples() {
        // An hour has 12 five-minute samples: the 95th percentile is the 12th
        // (ceil(11.4)), the busiest; a day has 288, so the 14 busiest are dropped.
        let busy = |k: i64| minute(DAY + k * SAMPLE_MS, 37_500_000 * (k + 1)); // (k+1) Mbit/s over 5 min
        let hour: Vec<UsageRow> = (0..12).map(busy).collect();
        let r = rollup(&hour, Granularity::Hour, DAY, DAY + H, DAY + H);
        assert_eq!(r.windows[0].p95_mbps, Some(12.0));
        // Five minutes of one sample: its minute runs at five times the sample's rate.
        assert_eq!(r.windows[0].peak_mbps, 60.0);
        let day: Vec<UsageRow> = (0..288).map(busy).collect();
        let r = rollup(&day, Granularity::Day, DAY, DAY + 24 * H, DAY + 48 * H);
        assert_eq!(r.windows[0].p95_mbps, Some(274.0), "rank 274 of 288");
        assert_eq!(r.p95_mbps, 274.0);
    }

    #[test]
    fn samples_not_yet_begun_are_not_counted_as_idle() {
        // Ten minutes into the hour, both samples were busy.
        let minutes = [minute(DAY, 37_500_000), minute(DAY + SAMPLE_MS, 37_500_000)];
        let r = rollup(&minutes, Granularity::Hour, DAY, DAY + H, DAY + 10 * MINUTE_MS);
        assert_eq!(r.windows[0].p95_mbps, Some(1.0));
        // An hour still to come has no sample at all.
        let r = rollup(&[], Granularity::Hour, DAY + H, DAY + 2 * H, DAY);
        assert_eq!(r.windows[0].p95_mbps, Some(0.0));
    }

    #[test]
    fn an_unaligned_range_counts_every_sample_it_touches() {
        // 12:04 to 12:06 touches the samples of 12:00 and 12:05.
        let at = DAY + 12 * H;
        let minutes = [minute(at + 5 * MINUTE_MS, 37_500_000)];
        let r = rollup(&minutes, Granularity::Minute, at + 4 * MINUTE_MS, at + 6 * MINUTE_MS, DAY + 48 * H);
        assert_eq!(r.p95_mbps, 1.0);
    }

    #[test]
    fn minute_windows_are_the_minutes_that_served() {
        let minutes = [minute(DAY, 750_000), minute(DAY + 3 * MINUTE_MS, 1)];
        let r = rollup(&minutes, Granularity::Minute, DAY, DAY + H, DAY + H);
        assert_eq!(r.windows.len(), 2);
        assert_eq!((r.windows[0].peak_mbps, r.windows[0].p95_mbps), (0.1, None));
        assert_eq!(r.windows[1].start, DAY + 3 * MINUTE_MS);
    }

    #[test]
    fn totals_saturate() {
        let minutes = [minute(DAY, i64::MAX), minute(DAY + MINUTE_MS, i64::MAX)];
        let r = rollup(&minutes, Granularity::Day, DAY, DAY + 24 * H, DAY + H);
        assert_eq!((r.total_bytes, r.windows[0].bytes), (i64::MAX, i64::MAX));
    }
}
