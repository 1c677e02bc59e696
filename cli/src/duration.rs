//! Durations on the command line: `30d`, `12h`, `90m`, `3600s` or bare
//! seconds.

/// Parses a duration into whole seconds.
pub fn parse_seconds(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let invalid =
        || format!("{text:?} is not a duration: use a whole number with s, m, h or d, e.g. 30d, 12h, 90m, 3600s");
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let value: u64 = digits.parse().map_err(|_| invalid())?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(invalid()),
    };
    value
        .checked_mul(scale)
        .ok_or_else(|| format!("{text:?} is too long a duration"))
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
    fn rejects_garbage() {
        for bad in ["", "d", "10x", "1.5h", "-3s", "1h30m", "99999999999999999999d"] {
            assert!(parse_seconds(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn human_readable() {
        assert_eq!(human(600), "10m");
        assert_eq!(human(9000), "2h30m");
        assert_eq!(human(0), "0s");
    }
}
