//! Durations (`30s`, `10m`, `2h`, `1d`) and sizes (`512MiB`, `2GiB`, or a plain number of bytes) as the
//! policy and the command line write them. One number and one unit: no fractions, no sums, no signs, so a
//! value reads the same to a person and to the parser.

/// Parses `<digits><unit>` with unit `s`, `m`, `h` or `d` into seconds.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let unit_at = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("duration `{text}` has no unit (write e.g. 30s, 10m, 2h, 1d)"))?;
    let (digits, unit) = text.split_at(unit_at);
    let factor = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "duration `{}` has an unknown unit (write e.g. 30s, 10m, 2h, 1d)",
                text.escape_debug()
            ))
        }
    };
    let seconds = number(digits, text)?
        .checked_mul(factor)
        .filter(|s| *s <= MAX_DURATION_SECS)
        .ok_or_else(|| format!("duration `{text}` is longer than 100 years"))?;
    Ok(seconds)
}

/// The longest duration accepted anywhere (100 years): a deadline this far is "never", and larger ones
/// would overflow the clock arithmetic of timeouts and wall limits.
pub const MAX_DURATION_SECS: u64 = 100 * 365 * 86_400;

/// Parses `<digits>[unit]` with unit `B`, `KiB`, `MiB`, `GiB` or `TiB` (powers of 1024) into bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let unit_at = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(unit_at);
    let factor: u64 = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        _ => {
            return Err(format!(
                "size `{}` has an unknown unit (write e.g. 4096, 512KiB, 512MiB, 2GiB)",
                text.escape_debug()
            ))
        }
    };
    number(digits, text)?
        .checked_mul(factor)
        .ok_or_else(|| format!("size `{text}` is too large"))
}

fn number(digits: &str, whole: &str) -> Result<u64, String> {
    if digits.is_empty() {
        return Err(format!(
            "`{}` does not start with a number",
            whole.escape_debug()
        ));
    }
    digits
        .parse::<u64>()
        .map_err(|_| format!("`{whole}` is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(30));
        assert_eq!(parse_duration("10m"), Ok(600));
        assert_eq!(parse_duration("2h"), Ok(7200));
        assert_eq!(parse_duration("1d"), Ok(86_400));
        assert_eq!(parse_duration("36500d"), Ok(MAX_DURATION_SECS));
        assert!(parse_duration("36501d").is_err());
        assert!(parse_duration("106751991167301d").is_err());
        assert!(parse_duration("18446744073709551615s").is_err());
        for bad in [
            "",
            "s",
            "10",
            "1.5h",
            "-1s",
            "1 h",
            "1H",
            "1hh",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        for bad in ["", "MiB", "2GB", "2 GiB", "-1", "1.5GiB", "99999999999TiB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
