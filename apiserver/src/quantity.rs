//! Resource quantities (`500m`, `1Gi`, `1e3`) in their canonical form, as the server stores them:
//! `1000m` is `1`, `0.5` is `500m`, `1024Ki` is `1Mi`, `1536Ki` stays `1536Ki`.

/// The notation a quantity was written in; the canonical form keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    DecimalSi,
    BinarySi,
    DecimalExponent,
}

const DECIMAL: &[(&str, i32)] = &[
    ("n", -9),
    ("u", -6),
    ("m", -3),
    ("", 0),
    ("k", 3),
    ("M", 6),
    ("G", 9),
    ("T", 12),
    ("P", 15),
    ("E", 18),
];
const BINARY: &[(&str, u32)] = &[
    ("Ki", 10),
    ("Mi", 20),
    ("Gi", 30),
    ("Ti", 40),
    ("Pi", 50),
    ("Ei", 60),
];

/// The error upstream gives for a malformed quantity.
pub const MALFORMED: &str =
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'";

/// Parses `s` into (mantissa, base-10 exponent, format).
fn parse(s: &str) -> Option<(i128, i32, Format)> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let (neg, digits) = match num.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, num.strip_prefix('+').unwrap_or(num)),
    };
    if digits.is_empty() || digits.matches('.').count() > 1 || digits == "." {
        return None;
    }
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if !int.chars().chain(frac.chars()).all(|c| c.is_ascii_digit()) || int.len() + frac.len() > 30 {
        return None;
    }
    let mut m: i128 = format!("{int}{frac}")
        .trim_start_matches('0')
        .parse()
        .unwrap_or(0);
    let mut e: i32 = -(frac.len() as i32);
    let format = if let Some((_, x)) = DECIMAL.iter().find(|(s, _)| *s == suffix) {
        e += x;
        Format::DecimalSi
    } else if let Some((_, bits)) = BINARY.iter().find(|(s, _)| *s == suffix) {
        m = m.checked_mul(1i128 << bits)?;
        Format::BinarySi
    } else if let Some(exp) = suffix
        .strip_prefix('e')
        .or_else(|| suffix.strip_prefix('E'))
    {
        e += exp.parse::<i32>().ok().filter(|x| x.abs() <= 40)?;
        Format::DecimalExponent
    } else {
        return None;
    };
    if neg {
        m = -m;
    }
    Some((m, e, format))
}

fn pow10(n: u32) -> i128 {
    10i128.pow(n)
}

/// The canonical form of a quantity string, or `None` when it is malformed.
pub fn canonical(s: &str) -> Option<String> {
    let (mut m, mut e, format) = parse(s)?;
    if m == 0 {
        return Some("0".into());
    }
    while m % 10 == 0 {
        m /= 10;
        e += 1;
    }
    if format == Format::BinarySi && e >= 0 {
        let n = m.checked_mul(pow10(e as u32))?;
        if n.abs() >= 1024 {
            let (mut k, mut v) = (0, n);
            while k < BINARY.len() && v % 1024 == 0 {
                v /= 1024;
                k += 1;
            }
            let suffix = if k == 0 { "" } else { BINARY[k - 1].0 };
            return Some(format!("{v}{suffix}"));
        }
    }
    // Below a nano-unit rounds up (away from zero), as upstream.
    if e < -9 {
        let d = pow10((-9 - e) as u32);
        m = if m > 0 {
            (m + d - 1) / d
        } else {
            (m - d + 1) / d
        };
        e = -9;
    }
    while e.rem_euclid(3) != 0 {
        m = m.checked_mul(10)?;
        e -= 1;
    }
    if format == Format::DecimalExponent {
        return Some(if e == 0 {
            m.to_string()
        } else {
            format!("{m}e{e}")
        });
    }
    while e > 18 {
        m = m.checked_mul(1000)?;
        e -= 3;
    }
    let suffix = DECIMAL
        .iter()
        .find(|(_, x)| *x == e)
        .map(|(s, _)| *s)
        .unwrap_or("");
    Some(format!("{m}{suffix}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_forms_match_upstream() {
        for (input, want) in [
            ("1000m", "1"),
            ("1", "1"),
            ("0.5", "500m"),
            ("1.5", "1500m"),
            ("100m", "100m"),
            ("2000", "2k"),
            ("1024Ki", "1Mi"),
            ("1536Ki", "1536Ki"),
            ("1.5Gi", "1536Mi"),
            ("0.5Ki", "512"),
            ("64Mi", "64Mi"),
            ("128974848", "128974848"),
            ("129e6", "129e6"),
            ("1e3", "1e3"),
            ("0", "0"),
            ("0.1n", "1n"),
            ("-1.5", "-1500m"),
            ("10G", "10G"),
        ] {
            assert_eq!(canonical(input).as_deref(), Some(want), "{input}");
        }
        for bad in ["", "abc", "1.2.3", "1Qi", "5 m", "e3"] {
            assert_eq!(canonical(bad), None, "{bad}");
        }
    }
}
