//! Durations on the command line: parsed as every OMA binary parses them
//! ([`oma_proto::duration`]), in whole seconds for the API.

/// Parses a duration (`30d`, `12h`, `90m`, `1h30m`, bare seconds) into
/// whole seconds.
pub fn parse_seconds(text: &str) -> Result<u64, String> {
    let duration = oma_proto::duration::parse(text)?;
    if duration.subsec_nanos() != 0 {
        return Err(format!("{:?} is not a whole number of seconds", text.trim()));
    }
    Ok(duration.as_secs())
}

/// Seconds as a short human duration, e.g. `10m`, `2h30m`, `30d`.
pub fn human(seconds: u64) -> String {
    let units = [(86_400, "d"), (3600, "h"), (60, "m"), (1, "s")];
    let mut rest = seconds;
    let mut out = String::new();
    for (size, unit) in units {
        if rest >= size {
            out.push_str(&format!("{}{unit}", rest / size));
            rest %= size;
        }
    }
    if out.is_empty() { "0s".to_owned() } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_bare_seconds() {
        assert_eq!(parse_seconds("30d"), Ok(30 * 86_400));
        assert_eq!(parse_seconds("12h"), Ok(12 * 3600));
        assert_eq!(parse_seconds("90m"), Ok(5400));
        assert_eq!(parse_seconds("3600s"), Ok(3600));
        assert_eq!(parse_seconds("45"), Ok(45));
        assert_eq!(parse_seconds("0"), Ok(0));
    }

    #[test]
    fn rejects_garbage_and_fractions_of_a_second() {
        for bad in ["", "d", "10x", "-3s", "99999999999999999999d", "1500ms"] {
            assert!(parse_seconds(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_seconds("1h30m"), Ok(5400));
    }

    #[test]
    fn human_readable() {
        assert_eq!(human(600), "10m");
        assert_eq!(human(9000), "2h30m");
        assert_eq!(human(0), "0s");
    }
}
