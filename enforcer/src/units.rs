//! The values operators type and read: sizes (`16MiB`, `100MB`, `4096`), fairness modes, and
//! the human-readable forms tables print.
use crate::policy::Fairness;

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

impl std::str::FromStr for Fairness {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_fairness(s)
    }
}

/// As `--fairness` takes it.
impl std::fmt::Display for Fairness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connection => f.write_str("connection"),
            Self::RemoteIp => f.write_str("remote-ip"),
            Self::RemotePrefix { v4, v6 } => write!(f, "remote-prefix:{v4},{v6}"),
        }
    }
}

/// `connection`, `remote-ip`, `remote-prefix:N` (IPv4 /N, IPv6 /64) or `remote-prefix:N,M`.
pub fn parse_fairness(s: &str) -> Result<Fairness, String> {
    let bad = || format!("`{s}` is not a fairness mode (connection, remote-ip, remote-prefix:24, remote-prefix:24,48)");
    match s {
        "connection" => Ok(Fairness::Connection),
        "remote-ip" => Ok(Fairness::RemoteIp),
        _ => {
            let spec = s.strip_prefix("remote-prefix:").ok_or_else(bad)?;
            let (v4, v6) = match spec.split_once(',') {
                Some((a, b)) => (a.parse::<u8>().map_err(|_| bad())?, b.parse::<u8>().map_err(|_| bad())?),
                None => (spec.parse::<u8>().map_err(|_| bad())?, 64),
            };
            if v4 > 32 || v6 > 128 {
                return Err(format!("`{s}`: prefix lengths are at most 32 (IPv4) and 128 (IPv6)"));
            }
            Ok(Fairness::RemotePrefix { v4, v6 })
        }
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn fairness() {
        assert_eq!(parse_fairness("connection"), Ok(Fairness::Connection));
        assert_eq!(parse_fairness("remote-ip"), Ok(Fairness::RemoteIp));
        assert_eq!(parse_fairness("remote-prefix:24"), Ok(Fairness::RemotePrefix { v4: 24, v6: 64 }));
        assert_eq!(parse_fairness("remote-prefix:16,48"), Ok(Fairness::RemotePrefix { v4: 16, v6: 48 }));
        assert!(parse_fairness("remote-prefix:33").is_err());
        assert!(parse_fairness("per-user").is_err());
        for f in [Fairness::Connection, Fairness::RemoteIp, Fairness::RemotePrefix { v4: 16, v6: 48 }] {
            assert_eq!(parse_fairness(&f.to_string()), Ok(f));
        }
    }
}
