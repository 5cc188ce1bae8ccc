//! Parsers for the values operators type: sizes (`16MiB`, `100MB`, `4096`), fairness modes.
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
    fn fairness() {
        assert_eq!(parse_fairness("connection"), Ok(Fairness::Connection));
        assert_eq!(parse_fairness("remote-ip"), Ok(Fairness::RemoteIp));
        assert_eq!(parse_fairness("remote-prefix:24"), Ok(Fairness::RemotePrefix { v4: 24, v6: 64 }));
        assert_eq!(parse_fairness("remote-prefix:16,48"), Ok(Fairness::RemotePrefix { v4: 16, v6: 48 }));
        assert!(parse_fairness("remote-prefix:33").is_err());
        assert!(parse_fairness("per-user").is_err());
    }
}
