//! Durations written as `"500ms"`, `"30s"`, `"5m"`, `"2h"` in attribute arguments.

/// The microseconds in `text`, or a message saying what is valid.
pub(crate) fn parse_micros(text: &str) -> Result<u64, String> {
    const VALID: &str =
        "write a whole number followed by a unit: \"500ms\", \"30s\", \"5m\" or \"2h\"";
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration; {VALID}"))?;
    let micros_per_unit: u64 = match unit {
        "ms" => 1_000,
        "s" => 1_000_000,
        "m" => 60_000_000,
        "h" => 3_600_000_000,
        _ => return Err(format!("`{text}` has no known unit; {VALID}")),
    };
    number
        .checked_mul(micros_per_unit)
        .ok_or_else(|| format!("`{text}` is too long a duration"))
}

#[cfg(test)]
mod tests {
    use super::parse_micros;

    #[test]
    fn units() {
        assert_eq!(parse_micros("500ms"), Ok(500_000));
        assert_eq!(parse_micros("30s"), Ok(30_000_000));
        assert_eq!(parse_micros("5m"), Ok(300_000_000));
        assert_eq!(parse_micros("2h"), Ok(7_200_000_000));
        assert_eq!(parse_micros("0s"), Ok(0));
    }

    #[test]
    fn refusals_say_what_is_valid() {
        for bad in ["", "10", "s", "1.5s", "10 s", "3d", "-1s"] {
            let error = parse_micros(bad).unwrap_err();
            assert!(error.contains("\"30s\""), "{bad}: {error}");
        }
        assert!(parse_micros("99999999999999999h")
            .unwrap_err()
            .contains("too long"));
    }
}
