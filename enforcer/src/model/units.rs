//! The values operators type and read: sizes (`16MiB`, `100MB`, `4096`), durations, CIDRs,
//! thresholds, and the human-readable forms tables print. Flags and config keys use the same
//! parsers, so a value means the same in both places.
use std::time::Duration;

use ipnet::IpNet;

/// A size in bytes: a plain number, or a number with a decimal (kB, MB, GB, TB: powers of 1000)
/// or binary (KiB, MiB, GiB, TiB: powers of 1024) unit. Units are case-insensitive; a bare `K`,
/// `M`, `G`, `T` is binary, as in `ss` and most kernel knobs.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = (&t[..split], t[split..].trim());
    let bad = || format!("`{s}` is not a size (examples: 16MiB, 100MB, 65536)");
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "mb" => 1000u64.pow(2),
        "gb" => 1000u64.pow(3),
        "tb" => 1000u64.pow(4),
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        _ => return Err(bad()),
    };
    if num.is_empty() {
        return Err(bad());
    }
    if let Ok(n) = num.parse::<u64>() {
        return n.checked_mul(mult).ok_or_else(|| format!("`{s}` is too large"));
    }
    let f: f64 = num.parse().map_err(|_| bad())?;
    let bytes = f * mult as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(format!("`{s}` is too large"));
    }
    Ok(bytes as u64)
}

/// A duration, or `0`/`off` for none (`Duration::ZERO`).
pub fn parse_duration_or_off(s: &str) -> Result<Duration, String> {
    if matches!(s.trim(), "0" | "off") { Ok(Duration::ZERO) } else { parse_duration(s) }
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if s.trim_start().starts_with('-') {
        return Err(format!("`{s}`: a duration cannot be negative"));
    }
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 250ms, 1s, 2m)"))?;
    if d < Duration::from_millis(1) {
        return Err("must be at least 1ms".into());
    }
    Ok(d)
}

/// A CIDR, or a bare address meaning just that address. Host bits must be clear: `10.0.0.5/8`
/// is more likely a typo than a way to write `10.0.0.0/8`.
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let net = s
        .parse::<IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("`{s}` is not an address or CIDR (examples: 10.0.0.0/8, ::1, 2001:db8::/32)"))?;
    if net != net.trunc() {
        return Err(format!("`{s}` has host bits set: did you mean {}?", net.trunc()));
    }
    Ok(net)
}

/// A threshold: a size (see [`parse_size`]) of at least one byte.
pub fn parse_threshold(s: &str) -> Result<u64, String> {
    check_threshold(parse_size(s)?)
}

/// A threshold of at least one byte, however it was written.
pub fn check_threshold(bytes: u64) -> Result<u64, String> {
    match bytes {
        0 => Err("a threshold of 0 would make every socket an offender: give a size such as 64MiB".into()),
        n => Ok(n),
    }
}

/// `--low-water`: a percentage of the threshold (`75%` or `75`), from 50 to 100. Not under 50:
/// below half the threshold the agent reads a summary only and judges nothing.
pub fn parse_low_water(s: &str) -> Result<u64, String> {
    let digits = s.trim().strip_suffix('%').unwrap_or(s.trim());
    match digits.parse::<u64>() {
        Ok(n @ 50..=100) => Ok(n),
        _ => Err(format!("`{s}` is not a percentage of the threshold from 50% to 100% (e.g. 75%)")),
    }
}

/// `1.5MiB`-style size for tables (JSON always has exact bytes).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n}B") } else { format!("{v:.1}{}", UNITS[unit]) }
}

/// `350ms`, `4.2s`, `3m07s`, `2h05m` for tables.
pub fn human_ms(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{}m{:02}s", ms / 60_000, ms / 1000 % 60),
        _ => format!("{}h{:02}m", ms / 3_600_000, ms / 60_000 % 60),
    }
}

/// `text` in `N` bytes, NUL-padded; a longer one keeps its end behind `...` (the end of a
/// cgroup path names the pod or service).
pub fn fixed<const N: usize>(text: &str) -> [u8; N] {
    let mut out = [0u8; N];
    if text.len() <= N {
        out[..text.len()].copy_from_slice(text.as_bytes());
        return out;
    }
    let mut start = text.len() - (N - 3);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    let tail = &text.as_bytes()[start..];
    out[..3].copy_from_slice(b"...");
    out[3..3 + tail.len()].copy_from_slice(tail);
    out
}

/// The text in a NUL-padded field.
pub fn unfixed(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len())]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_water() {
        assert_eq!(parse_low_water("75%"), Ok(75));
        assert_eq!(parse_low_water("100"), Ok(100));
        for bad in ["49%", "101%", "0.75", "", "%", "-75%"] {
            assert!(parse_low_water(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_size("100MB"), Ok(100_000_000));
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("1.5 GiB"), Ok(3 << 29));
        assert_eq!(parse_size("4k"), Ok(4096));
        for bad in ["", "MiB", "12 parsecs", "-1", "1e3", "99999999999999999999"] {
            assert!(parse_size(bad).is_err(), "{bad} parsed");
        }
        assert!(parse_size("20000000TiB").is_err());
    }

    #[test]
    fn human_units() {
        assert_eq!(human_bytes(512), "512B");
        assert_eq!(human_bytes(1536), "1.5KiB");
        assert_eq!(human_ms(999), "999ms");
        assert_eq!(human_ms(4200), "4.2s");
        assert_eq!(human_ms(187_000), "3m07s");
    }

    #[test]
    fn parses_cidrs_and_addresses() {
        assert_eq!(parse_cidr("10.0.0.0/8").map(|n| n.prefix_len()), Ok(8));
        assert_eq!(parse_cidr("::1").map(|n| n.prefix_len()), Ok(128));
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("example.com").is_err());
        assert_eq!(parse_cidr("10.0.0.5/8"), Err("`10.0.0.5/8` has host bits set: did you mean 10.0.0.0/8?".into()));
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1s").is_err_and(|e| e.contains("negative")));
        assert!(parse_threshold("0").is_err() && parse_threshold("0MiB").is_err());
        assert_eq!(parse_threshold("1KiB"), Ok(1024));
    }

    #[test]
    fn fixed_fields_keep_the_end_of_long_text() {
        assert_eq!(unfixed(&fixed::<16>("nginx")), "nginx");
        assert_eq!(unfixed(&fixed::<8>("/a/b/c/d/e")), "...c/d/e");
        assert_eq!(unfixed(&fixed::<8>("12345678")), "12345678");
        // Never cuts a character in two.
        assert_eq!(unfixed(&fixed::<8>("/ééééé")), "...éé");
    }
}
