//! Durations typed by people (flags, environment variables), parsed the
//! same way by all three binaries: a bare number is seconds, anything else
//! is humantime's syntax (`250ms`, `90s`, `5m`, `12h`, `30d`, `1h30m`,
//! `1.5h`).

use std::time::Duration;

/// Parses a duration, or says in one sentence what is expected.
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| format!("{text:?} is too long a duration"));
    }
    humantime::parse_duration(text).map_err(|_| {
        format!("{text:?} is not a duration: use e.g. 90s, 5m, 2h, 30d or 1h30m (a bare number is seconds)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_seconds_and_units() {
        assert_eq!(parse("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse(" 12h "), Ok(Duration::from_secs(12 * 3600)));
        assert_eq!(parse("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("1.5h"), Ok(Duration::from_secs(5400)));
    }

    #[test]
    fn garbage_is_refused_with_a_sentence() {
        for bad in ["", "d", "10x", "-3s", "99999999999999999999", "99999999999999999999d"] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains("duration"), "{bad}: {e}");
        }
    }
}
