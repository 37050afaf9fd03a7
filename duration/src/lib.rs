//! Go's duration syntax, as Kubernetes' and etcd's flags take it (`time.ParseDuration`):
//! `90s`, `1h30m`, `250ms`, `1.5h`, `5m0s`, with the units ns, us (µs), ms, s, m and h.
//! Durations beyond what Go holds (nanoseconds in an i64, about 292 years) are refused rather
//! than overflowing, and negative ones are refused (no flag takes one).

use std::time::Duration;

/// Parses a duration as Go's `time.ParseDuration` does: a unit after every number (only `0`
/// goes without), at most about 292 years.
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err("invalid duration \"\"".into());
    }
    let mut rest = s;
    let mut secs = 0.0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .ok_or_else(|| format!("missing unit in duration {s:?}"))?;
        let n: f64 = rest[..digits]
            .parse()
            .map_err(|_| format!("invalid duration {s:?}"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            unit => {
                return Err(format!(
                    "unknown unit {unit:?} in duration {s:?} (use ns, us, ms, s, m or h)"
                ));
            }
        };
        secs += n * scale;
        rest = &rest[unit_len..];
    }
    go_range(secs, s)
}

/// `secs` as a duration, if Go's (nanoseconds in an i64) can hold it; `text` names it in the
/// error.
fn go_range(secs: f64, text: &str) -> Result<Duration, String> {
    if !(0.0..=i64::MAX as f64 / 1e9).contains(&secs) {
        return Err(format!("invalid duration {text:?}: out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::parse_go_duration;
    use std::time::Duration;

    #[test]
    fn go_durations_parse_and_bad_ones_are_refused() {
        for (text, want) in [
            ("15s", Duration::from_secs(15)),
            ("90s", Duration::from_secs(90)),
            ("1m30s", Duration::from_secs(90)),
            ("1h30m", Duration::from_secs(5400)),
            ("5m0s", Duration::from_secs(300)),
            ("250ms", Duration::from_millis(250)),
            ("1.5h", Duration::from_secs(5400)),
            ("10us", Duration::from_micros(10)),
            ("10µs", Duration::from_micros(10)),
            ("10ns", Duration::from_nanos(10)),
            ("0", Duration::ZERO),
            ("2562047h", Duration::from_secs(2562047 * 3600)),
        ] {
            assert_eq!(parse_go_duration(text), Ok(want), "{text}");
        }
        for bad in [
            "",
            "15",
            "1.5",
            "5m0",
            "1x",
            "abc",
            "m",
            "1e400s",
            "99999999999999999999999h",
            "2562048h",
            "-1s",
        ] {
            assert!(parse_go_duration(bad).is_err(), "{bad:?} accepted");
        }
    }
}
