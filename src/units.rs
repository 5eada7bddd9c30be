//! Human-readable durations: `"250ms"`, `"1.5s"`, `"30us"`, `"2m"`.
//!
//! Config files and our extension attributes take a duration as a string with a unit. A bare
//! number without a unit is refused, because its unit would be a guess (Toxiproxy mixes
//! milliseconds and microseconds across toxics).

use std::time::Duration;

/// Parses a non-negative duration with a unit suffix: `ns`, `us` (or `µs`), `ms`, `s`, `m`, `h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| {
            format!("\"{text}\" has no unit: write it as \"{text}ms\" or \"{text}s\"")
        })?;
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err(format!(
            "\"{text}\" is not a duration: expected a number and a unit such as \"250ms\""
        ));
    }
    let unit_nanos: u128 = match unit.trim() {
        "ns" => 1,
        "us" | "µs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        other => {
            return Err(format!(
                "\"{text}\" has an unknown unit \"{other}\": use ns, us, ms, s, m or h"
            ));
        }
    };
    // Integer arithmetic, so "0.1s" is exactly 100 ms and formatting round-trips.
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    let not_a_number = || format!("\"{text}\" is not a duration: \"{number}\" is not a number");
    if whole.is_empty() && frac.is_empty() || frac.contains('.') || whole.len() > 20 {
        return Err(not_a_number());
    }
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| not_a_number())?
    };
    let mut nanos = whole * unit_nanos;
    let mut scale = unit_nanos;
    for digit in frac.chars().take(30) {
        scale /= 10;
        nanos += u128::from(digit.to_digit(10).ok_or_else(not_a_number)?) * scale;
    }
    if nanos > MAX_DURATION_NANOS {
        return Err(format!("\"{text}\" is too long: at most ten years"));
    }
    Ok(Duration::from_nanos(nanos as u64))
}

/// Reads a duration from a JSON (or converted TOML) value: a string with a unit, or a
/// non-negative whole number of milliseconds, as our extension fields take them.
pub fn duration_value(value: &serde_json::Value) -> Result<Duration, String> {
    use serde_json::Value;
    match value {
        Value::String(s) => parse_duration(s),
        Value::Number(n) => n.as_u64().map(Duration::from_millis).ok_or_else(|| {
            format!(
                "{n} is not a positive whole number of milliseconds: give a non-negative integer, \
                 or a string such as \"30s\""
            )
        }),
        other => Err(format!(
            "must be a duration such as \"30s\" or a whole number of milliseconds; {other} is \
             not a duration"
        )),
    }
}

/// The longest duration anything in fallacy accepts: ten years, far beyond any test, and far
/// from the overflow of `Instant + Duration`.
pub const MAX_DURATION_NANOS: u128 = 10 * 365 * 24 * 3600 * 1_000_000_000;

/// Formats a duration the way it would be written in a config file.
pub fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos % 1_000_000_000 == 0 {
        format!("{}s", nanos / 1_000_000_000)
    } else if nanos % 1_000_000 == 0 {
        format!("{}ms", nanos / 1_000_000)
    } else if nanos % 1_000 == 0 {
        format!("{}us", nanos / 1_000)
    } else {
        format!("{nanos}ns")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rstest::rstest;

    #[rstest]
    #[case("250ms", Duration::from_millis(250))]
    #[case("1.5s", Duration::from_millis(1500))]
    #[case("30us", Duration::from_micros(30))]
    #[case("30µs", Duration::from_micros(30))]
    #[case("2m", Duration::from_secs(120))]
    #[case("1h", Duration::from_secs(3600))]
    #[case("0s", Duration::ZERO)]
    #[case(" 7ns ", Duration::from_nanos(7))]
    fn parses(#[case] text: &str, #[case] want: Duration) {
        assert_eq!(parse_duration(text).unwrap(), want);
    }

    #[rstest]
    #[case("250", "no unit")]
    #[case("ms", "not a duration")]
    #[case("5 parsecs", "unknown unit")]
    #[case("1.2.3s", "not a number")]
    #[case("-5ms", "not a duration")]
    #[case("99999999999h", "too long")]
    fn rejects(#[case] text: &str, #[case] needle: &str) {
        let err = parse_duration(text).unwrap_err();
        assert!(err.contains(needle), "{err:?} should mention {needle:?}");
    }

    proptest! {
        #[test]
        fn format_then_parse_round_trips(nanos in 0u64..(1u64 << 50)) {
            let d = Duration::from_nanos(nanos);
            prop_assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
        }
    }
}
