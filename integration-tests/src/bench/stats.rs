//! Timestamps, percentiles and the units the table prints.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Now, in nanoseconds since the Unix epoch (the clock the test agent
/// stamps `sent_unix_ns` with).
pub fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The `sent_unix_ns` the test agent put in an update's `_meta.oma_test`,
/// found without parsing the JSON (this runs on the receive path).
pub fn sent_unix_ns(json: &str) -> Option<u64> {
    const KEY: &str = "\"sent_unix_ns\":";
    let start = json.find(KEY)? + KEY.len();
    let digits = json[start..].trim_start();
    let end = digits.find(|c: char| !c.is_ascii_digit()).unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// Latency percentiles of a set of samples.
#[derive(Debug, Clone, Copy, Default)]
pub struct Latency {
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
}

impl Latency {
    /// From `(received, sent)` pairs in ns; a pair received "before" it was
    /// sent (clock step) counts as 0.
    pub fn of_pairs(pairs: &[(u64, u64)]) -> Latency {
        let mut ns: Vec<u64> = pairs.iter().map(|(r, s)| r.saturating_sub(*s)).collect();
        Latency::of(&mut ns)
    }

    pub fn of(ns: &mut [u64]) -> Latency {
        ns.sort_unstable();
        Latency {
            p50: percentile(ns, 50.0),
            p99: percentile(ns, 99.0),
            p999: percentile(ns, 99.9),
        }
    }
}

/// Nearest-rank percentile of sorted samples.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    // The tolerance keeps 0.99 × 1000 at rank 990 despite float rounding.
    let rank = ((p / 100.0) * sorted.len() as f64 - 1e-9).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The median of some durations.
pub fn median(samples: &[Duration]) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    sorted.get(sorted.len() / 2).copied().unwrap_or_default()
}

/// A nanosecond amount in the unit that reads best: `42 µs`, `1.25 ms`, `3.1 s`.
pub fn ns(value: u64) -> String {
    let v = value as f64;
    if value < 1_000 {
        format!("{value} ns")
    } else if value < 1_000_000 {
        format!("{:.0} µs", v / 1e3)
    } else if value < 10_000_000 {
        format!("{:.2} ms", v / 1e6)
    } else if value < 1_000_000_000 {
        format!("{:.0} ms", v / 1e6)
    } else {
        format!("{:.2} s", v / 1e9)
    }
}

/// A signed nanosecond amount (an overhead can be negative within noise).
pub fn ns_signed(value: i64) -> String {
    if value < 0 {
        format!("−{}", ns(value.unsigned_abs()))
    } else {
        ns(value as u64)
    }
}

pub fn dur(d: Duration) -> String {
    ns(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Bytes as MiB or KiB.
pub fn bytes(value: u64) -> String {
    if value >= 1024 * 1024 {
        format!("{:.1} MiB", value as f64 / (1024.0 * 1024.0))
    } else {
        format!("{:.1} KiB", value as f64 / 1024.0)
    }
}

/// A rate with thousands separators: `52,340/s`.
pub fn rate(per_sec: f64) -> String {
    format!("{}/s", thousands(per_sec.round() as u64))
}

pub fn thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_send_time_in_raw_json() {
        let raw = r#"{"_meta":{"oma_test":{"sent_unix_ns":1700000000123456789,"seq":3}},"content":{}}"#;
        assert_eq!(sent_unix_ns(raw), Some(1_700_000_000_123_456_789));
        assert_eq!(sent_unix_ns(r#"{"x":1}"#), None);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<u64> = (1..=1000).collect();
        let l = Latency::of(&mut v);
        assert_eq!((l.p50, l.p99, l.p999), (500, 990, 999));
        assert_eq!(thousands(1234567), "1,234,567");
    }
}
