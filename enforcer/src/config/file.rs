//! The `--config` file: TOML with the same keys as `enforcer run`'s flags, read into the same
//! type ([`RunArgs`]). Each value is read with the flag's own parser (sizes, durations,
//! fairness modes and CIDRs mean the same in both places), unknown keys are refused, and an
//! error names its key in one line.
use super::flags::RunArgs;

/// Parses config text into the flags' type ([`RunArgs`]); the error is one line that names the
/// key (`key `stall`: …`).
pub fn parse(text: &str) -> Result<RunArgs, String> {
    toml::from_str(text).map_err(|e| describe(text, &e))
}

/// One line for a TOML error: the key on the line it points at, where, and what is wrong; for an
/// unknown key, the known key it most likely meant.
fn describe(text: &str, e: &toml::de::Error) -> String {
    let mut message = e.message().trim().replace('\n', " ");
    if let Some(unknown) = message.strip_prefix("unknown field `").and_then(|m| m.split('`').next())
        && let Some(near) = closest(unknown, message.split('`').skip(3).step_by(2))
    {
        message = format!("unknown key `{unknown}`; did you mean `{near}`?");
    }
    let Some(span) = e.span() else { return message };
    let at = span.start.min(text.len());
    let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let (line_no, column) = (text[..start].matches('\n').count() + 1, text[start..at].chars().count() + 1);
    let line = text[start..].lines().next().unwrap_or_default();
    match line.split_once('=') {
        Some((key, _)) if !key.trim().is_empty() && !key.contains('[') => {
            format!("key `{}` (line {line_no}, column {column}): {message}", key.trim().trim_matches('"'))
        }
        _ => format!("line {line_no}, column {column}: {message}"),
    }
}

/// The candidate nearest to `word` by edit distance, if it is near enough to be a typo.
fn closest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(row[j + 1] + 1);
            prev = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::model::fairness::Fairness;

    #[test]
    fn keys_parse_and_errors_name_the_key() {
        let f = parse(
            "threshold = \"64MiB\"\nstall = \"2s\"\nprotect-port = [22, 2024]\nprotect-cidr = [\"10.0.0.0/8\"]\n\
             fairness = \"remote-prefix:24\"\npolicy = \"heffner\"\ndry-run = true\nmax-kills = 5\n",
        )
        .expect("valid config");
        assert_eq!(f.threshold, Some(64 << 20));
        assert_eq!(f.stall, Some(Duration::from_secs(2)));
        assert_eq!(f.protect_port, [22, 2024]);
        assert_eq!(f.policy, Some(crate::policy::Kind::Heffner));
        assert_eq!(f.fairness, Some(Fairness::RemotePrefix { v4: 24, v6: 64 }));
        assert_eq!(parse("threshold = 1000").map(|f| f.threshold).ok(), Some(Some(1000)));
        assert_eq!(parse("").map(|f| f.threshold).ok(), Some(None));
        for (text, key) in [
            ("threshold = \"lots\"", "threshold"),
            ("threshold = -5", "threshold"),
            ("stall = \"0s\"", "stall"),
            ("stall = 5", "stall"),
            ("protect-port = [70000]", "protect-port"),
            ("max-kills = -1", "max-kills"),
            ("max-per-remote = 0", "max-per-remote"),
            ("fairness = \"per-user\"", "fairness"),
            ("pressure = \"swap\"", "pressure"),
            ("thresold = 5", "thresold"),
            ("dry-run = true\nmetrics-addr = \"localhost\"", "metrics-addr"),
            ("threshold = 0", "threshold"),
            ("protect-cidr = [\"10.0.0.5/8\"]", "protect-cidr"),
        ] {
            let err = parse(text).err().unwrap_or_else(|| panic!("{text} parsed"));
            assert!(err.contains(&format!("`{key}`")), "{text}: {err}");
            assert!(!err.contains('\n'), "{text}: {err}");
        }
        assert!(parse("not toml [").is_err());
        let typo = parse("dry-run = true\nthresold = 5").err().unwrap_or_default();
        assert!(typo.contains("line 2, column 1") && typo.contains("did you mean `threshold`?"), "{typo}");
        let far = parse("colour = 5").err().unwrap_or_default();
        assert!(far.contains("unknown") && !far.contains("did you mean"), "{far}");
    }
}
