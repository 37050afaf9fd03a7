//! Resource quantities as exact integers of nano-units, for sums and comparisons that must not
//! drift (`100m + 200m` is exactly `300m`, `512Mi + 512Mi` exactly `1Gi`).

/// One unit in nano-units.
pub const UNIT: i128 = 1_000_000_000;

/// Parses a quantity (`500m`, `1.5`, `2Gi`, `1e3`, `100n`) into nano-units. Precision finer
/// than a nano-unit rounds up, as upstream's conversions round up. `None` for malformed input
/// or values out of range.
pub fn parse(s: &str) -> Option<i128> {
    let s = s.trim();
    let (neg, body) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let end = body
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(body.len());
    let (num, suffix) = body.split_at(end);
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if (int.is_empty() && frac.is_empty()) || frac.contains('.') {
        return None;
    }
    // The digits as one integer and the power of ten it is scaled by.
    let digits = format!("{int}{frac}");
    let digits = digits.trim_start_matches('0');
    if digits.len() > 36 {
        return None;
    }
    let mantissa: i128 = if digits.is_empty() {
        0
    } else {
        digits.parse().ok()?
    };
    let mut exp10: i32 = -(frac.len() as i32);
    let mut mul2: u32 = 0;
    match suffix {
        "" => {}
        "n" => exp10 -= 9,
        "u" => exp10 -= 6,
        "m" => exp10 -= 3,
        "k" => exp10 += 3,
        "M" => exp10 += 6,
        "G" => exp10 += 9,
        "T" => exp10 += 12,
        "P" => exp10 += 15,
        "E" => exp10 += 18,
        "Ki" => mul2 = 10,
        "Mi" => mul2 = 20,
        "Gi" => mul2 = 30,
        "Ti" => mul2 = 40,
        "Pi" => mul2 = 50,
        "Ei" => mul2 = 60,
        s if s.starts_with(['e', 'E']) => {
            let e = &s[1..];
            let digits = e.trim_start_matches(['-', '+']);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            exp10 += e.parse::<i32>().ok()?;
        }
        _ => return None,
    }
    // Into nano-units: times 10^9.
    exp10 += 9;
    let mut v = mantissa.checked_mul(1i128.checked_shl(mul2)?)?;
    if exp10 >= 0 {
        v = v.checked_mul(10i128.checked_pow(exp10.try_into().ok()?)?)?;
    } else {
        let d = 10i128
            .checked_pow((-exp10).try_into().ok()?)
            .unwrap_or(i128::MAX);
        v = v / d + i128::from(v % d != 0);
    }
    Some(if neg { -v } else { v })
}

/// Whether a quantity string is written with a binary suffix (`Ki` … `Ei`), the notation its
/// sums are then shown in.
pub fn is_binary(s: &str) -> bool {
    let s = s.trim();
    s.len() >= 2 && s.ends_with('i') && s[..s.len() - 1].ends_with(['K', 'M', 'G', 'T', 'P', 'E'])
}

/// Nano-units back to a canonical quantity as upstream prints it: binary notation (`1536Ki`)
/// when asked for and the value is a whole number of at least 1024, otherwise decimal with the
/// largest exact SI suffix (`2`, `1500m`, `3k`, `250n`).
pub fn format(v: i128, binary: bool) -> String {
    if binary && v % UNIT == 0 && (v / UNIT).abs() >= 1024 {
        let mut n = v / UNIT;
        let mut i = 0;
        while i < 6 && n % 1024 == 0 {
            n /= 1024;
            i += 1;
        }
        return format!("{n}{}", ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"][i]);
    }
    if v == 0 {
        return "0".into();
    }
    // Decimal: the largest power of 1000 that divides exactly.
    const SUFFIXES: [&str; 10] = ["n", "u", "m", "", "k", "M", "G", "T", "P", "E"];
    let mut n = v;
    let mut i = 0;
    while i < SUFFIXES.len() - 1 && n % 1000 == 0 {
        n /= 1000;
        i += 1;
    }
    format!("{n}{}", SUFFIXES[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_notation_exactly() {
        assert_eq!(parse("100m"), Some(100_000_000));
        assert_eq!(parse("1.5"), Some(1_500_000_000));
        assert_eq!(parse("2"), Some(2 * UNIT));
        assert_eq!(parse("1Ki"), Some(1024 * UNIT));
        assert_eq!(parse("1.5Gi"), Some(1536 * 1024 * 1024 * UNIT));
        assert_eq!(parse("1e3"), Some(1000 * UNIT));
        assert_eq!(parse("1E-3"), Some(1_000_000));
        assert_eq!(parse("250n"), Some(250));
        assert_eq!(parse("0.1n"), Some(1), "finer than a nano rounds up");
        assert_eq!(parse("-2"), Some(-2 * UNIT));
        assert_eq!(parse("+.5"), Some(UNIT / 2));
        assert_eq!(parse("0"), Some(0));
        for bad in ["", "bogus", "1x", "1..2", ".", "1e", "1e+", "--1", "1 Gi"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        assert_eq!(parse("99999999999999999999999999999999999999Ei"), None);
    }

    #[test]
    fn formats_canonically() {
        assert_eq!(format(1_500_000_000, false), "1500m");
        assert_eq!(format(2 * UNIT, false), "2");
        assert_eq!(format(3000 * UNIT, false), "3k");
        assert_eq!(format(250, false), "250n");
        assert_eq!(format(0, true), "0");
        assert_eq!(format(256 * 1024 * 1024 * UNIT, true), "256Mi");
        assert_eq!(format(1536 * 1024 * UNIT, true), "1536Ki");
        assert_eq!(
            format(1000 * UNIT, true),
            "1k",
            "below 1024 and not binary: decimal"
        );
        assert_eq!(format(2000 * UNIT, true), "2000");
        assert_eq!(format(-2 * UNIT, false), "-2");
        for s in ["1Gi", "512Mi", "100m", "3", "7k", "250n"] {
            assert_eq!(format(parse(s).unwrap(), is_binary(s)), s);
        }
        assert!(is_binary("2Gi") && !is_binary("2G") && !is_binary("i") && !is_binary("5"));
    }
}
