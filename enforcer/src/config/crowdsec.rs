//! The fleet's settings (`--crowdsec-*`): where the CrowdSec Local API is, which files hold
//! the credentials, which decisions to act on. Credentials themselves are never settings: the
//! settings are recorded in the pins and shown by `status`, so they keep the files' paths, and
//! the fleet (the `fleet/` folder) reads the files.
use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use super::{
    flags::RunArgs,
    settings::{UsageError, ms},
};

/// Decisions are polled this often by default: CrowdSec's own bouncers poll every 10 s.
pub const DEFAULT_POLL: Duration = Duration::from_secs(10);
/// The decision type CrowdSec's operators give for enforcer (`cscli decisions add --type
/// contain`), and the one its shared alerts become.
pub const CONTAIN: &str = "contain";

/// `--crowdsec-*`, resolved; `None` in [`super::Settings`] when no fleet is configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Crowdsec {
    /// The Local API's base URL (`http://HOST:PORT`), for the bouncer; `None` shares only.
    pub url: Option<String>,
    pub key_file: Option<PathBuf>,
    /// Decision types acted on, lower case.
    pub types: Vec<String>,
    pub poll_ms: u64,
    /// The machine's `local_api_credentials.yaml`, when this host shares its repeat offenders.
    pub machine_credentials: Option<PathBuf>,
}

fn usage(msg: String) -> anyhow::Error {
    UsageError(msg).into()
}

/// Flags over the file; `None` when neither names a Local API nor machine credentials.
pub fn resolve(args: &RunArgs, file: &RunArgs) -> anyhow::Result<Option<Crowdsec>> {
    let url = args.crowdsec_url.clone().or_else(|| file.crowdsec_url.clone());
    let key_file = args.crowdsec_key_file.clone().or_else(|| file.crowdsec_key_file.clone());
    let machine_credentials =
        args.crowdsec_machine_credentials.clone().or_else(|| file.crowdsec_machine_credentials.clone());
    let types = if args.crowdsec_type.is_empty() { &file.crowdsec_type } else { &args.crowdsec_type };
    let poll = args.crowdsec_poll.or(file.crowdsec_poll);
    if url.is_none() && machine_credentials.is_none() {
        if key_file.is_some() || !types.is_empty() || poll.is_some() {
            return Err(usage(
                "--crowdsec-key-file, --crowdsec-type and --crowdsec-poll apply only with --crowdsec-url".into(),
            ));
        }
        return Ok(None);
    }
    if let Some(url) = &url {
        check_url(url).map_err(|e| usage(format!("--crowdsec-url {url}: {e}")))?;
        let Some(key_file) = &key_file else {
            return Err(usage(
                "--crowdsec-url needs --crowdsec-key-file: a file holding the bouncer's API key (`cscli bouncers add \
                 NAME -o raw > FILE`)"
                    .into(),
            ));
        };
        // Read now, so a typo fails the start (and `check-config`) rather than every poll.
        read_key(key_file).map_err(|e| usage(format!("--crowdsec-key-file: {e}")))?;
    } else if key_file.is_some() {
        return Err(usage("--crowdsec-key-file applies only with --crowdsec-url".into()));
    }
    if let Some(path) = &machine_credentials {
        let creds =
            MachineCredentials::read(path).map_err(|e| usage(format!("--crowdsec-machine-credentials: {e}")))?;
        check_url(&creds.url).map_err(|e| usage(format!("{}: url {}: {e}", path.display(), creds.url)))?;
    }
    let mut types: Vec<String> =
        types.iter().map(|t| t.trim().to_ascii_lowercase()).filter(|t| !t.is_empty()).collect();
    if types.is_empty() {
        types.push(CONTAIN.to_owned());
    }
    types.sort();
    types.dedup();
    Ok(Some(Crowdsec { url, key_file, types, poll_ms: ms(poll.unwrap_or(DEFAULT_POLL)), machine_credentials }))
}

/// Only plain HTTP: this build has no TLS stack. A Local API is reached on loopback or a
/// private network (its default `listen_uri` is 127.0.0.1:8080), or through a local TLS
/// terminator.
fn check_url(url: &str) -> Result<(), String> {
    let Some(rest) = url.strip_prefix("http://") else {
        if url.starts_with("https://") {
            return Err("https is not supported by this build: reach the Local API over http on loopback or a \
                        private network, or through a local TLS terminator"
                .into());
        }
        return Err("expected http://HOST:PORT".into());
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        return Err("expected http://HOST:PORT".into());
    }
    if authority.contains('@') {
        // It would be logged with the URL: credentials go in their files.
        return Err("credentials in the URL are refused: the bouncer's key goes in --crowdsec-key-file".into());
    }
    Ok(())
}

/// The bouncer's API key from its file: the first line, trimmed. The error never quotes it.
pub fn read_key(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let key = text.lines().next().unwrap_or_default().trim();
    if key.is_empty() || key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{} holds no API key on its first line", path.display()));
    }
    Ok(key.to_owned())
}

/// A machine's credentials, in the form `cscli machines add -f FILE` writes
/// (`local_api_credentials.yaml`: `url`, `login`, `password`).
#[derive(Clone)]
pub struct MachineCredentials {
    pub url: String,
    pub login: String,
    pub password: String,
}

impl std::fmt::Debug for MachineCredentials {
    /// The password is never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MachineCredentials").field("url", &self.url).field("login", &self.login).finish_non_exhaustive()
    }
}

impl MachineCredentials {
    pub fn read(path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// `key: value` lines, as cscli writes them (flat YAML; quotes allowed).
    fn parse(text: &str) -> Result<Self, String> {
        let value = |key: &str| {
            text.lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim() == key)
                .map(|(_, v)| v.trim().trim_matches(|c| c == '"' || c == '\'').to_owned())
                .filter(|v| !v.is_empty())
                .ok_or_else(|| format!("no `{key}`"))
        };
        Ok(Self { url: value("url")?, login: value("login")?, password: value("password")? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_parse_as_cscli_writes_them_and_never_print_the_password() {
        let c = MachineCredentials::parse("url: http://127.0.0.1:8080\nlogin: host-a\npassword: s3cr3t:x\n")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (c.url.as_str(), c.login.as_str(), c.password.as_str()),
            ("http://127.0.0.1:8080", "host-a", "s3cr3t:x")
        );
        assert!(!format!("{c:?}").contains("s3cr3t"));
        assert!(MachineCredentials::parse("url: http://x:1\nlogin: a\n").is_err_and(|e| e.contains("password")));
    }

    #[test]
    fn only_plain_http_urls() {
        assert!(check_url("http://10.0.0.1:8080/").is_ok());
        assert!(check_url("https://lapi:8080").is_err_and(|e| e.contains("TLS")));
        assert!(check_url("lapi:8080").is_err());
        assert!(check_url("http://").is_err());
        assert!(check_url("http://user:secret@lapi:8080").is_err_and(|e| !e.contains("secret")));
    }
}
