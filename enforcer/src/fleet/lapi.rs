//! The CrowdSec Local API over plain HTTP: the bouncer's decision stream (`X-Api-Key`) and the
//! machine's login and alerts (a JWT). Blocking calls with timeouts, made from the fleet's own
//! threads, never from an interval. Errors say what failed without the credential.
use std::{io::Read, time::Duration};

use thiserror::Error;

/// How long a connection to the Local API may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a whole call may take: a startup stream of 100,000 decisions is a few MB.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// A response larger than this is refused (a startup stream of 100,000 decisions is ~20 MB).
const MAX_BODY: u64 = 256 << 20;

/// Why a call to the Local API failed; each is a label of `enforcer_crowdsec_errors_total`.
#[derive(Debug, Error)]
pub enum LapiError {
    #[error("unreachable: {0}")]
    Unreachable(String),
    #[error("refused the credentials (HTTP {0})")]
    Auth(u16),
    #[error("answered HTTP {0}: {1}")]
    Status(u16, String),
    #[error("answered what is not its API: {0}")]
    Garbage(String),
}

impl LapiError {
    /// The metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unreachable(_) => "unreachable",
            Self::Auth(_) => "auth",
            Self::Status(..) => "status",
            Self::Garbage(_) => "garbage",
        }
    }
}

/// A Local API at one base URL.
pub struct Lapi {
    base: String,
    agent: ureq::Agent,
}

impl Lapi {
    pub fn new(url: &str) -> Self {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(CONNECT_TIMEOUT)
            .timeout(CALL_TIMEOUT)
            .user_agent(concat!("enforcer/", env!("CARGO_PKG_VERSION")))
            .build();
        Self { base: url.trim_end_matches('/').to_owned(), agent }
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    /// `GET /v1/decisions/stream`: every decision in force with `startup`, else what changed
    /// since this bouncer's last call. The body, unparsed.
    pub fn stream(&self, key: &str, startup: bool) -> Result<Vec<u8>, LapiError> {
        let req = self
            .agent
            .get(&format!("{}/v1/decisions/stream", self.base))
            .query("startup", if startup { "true" } else { "false" })
            .set("X-Api-Key", key);
        body(req.call())
    }

    /// `POST /v1/watchers/login`: a machine's token.
    pub fn login(&self, login: &str, password: &str, scenarios: &[&str]) -> Result<String, LapiError> {
        let req = self.agent.post(&format!("{}/v1/watchers/login", self.base));
        let login_json = serde_json::json!({ "machine_id": login, "password": password, "scenarios": scenarios });
        let sent = req.set("Content-Type", "application/json").send_string(&login_json.to_string());
        let raw = body(sent)?;
        let v: serde_json::Value = serde_json::from_slice(&raw).map_err(|e| LapiError::Garbage(e.to_string()))?;
        v.get("token")
            .and_then(|t| t.as_str())
            .map(str::to_owned)
            .ok_or_else(|| LapiError::Garbage("a login answer without a token".into()))
    }

    /// `POST /v1/alerts` with a machine's token; the body (the alerts' ids).
    pub fn alerts(&self, token: &str, alerts: &serde_json::Value) -> Result<Vec<u8>, LapiError> {
        let req = self.agent.post(&format!("{}/v1/alerts", self.base)).set("Authorization", &format!("Bearer {token}"));
        body(req.set("Content-Type", "application/json").send_string(&alerts.to_string()))
    }
}

/// A call's body, or what went wrong.
fn body(result: Result<ureq::Response, ureq::Error>) -> Result<Vec<u8>, LapiError> {
    match result {
        Ok(resp) => {
            let mut out = Vec::new();
            resp.into_reader()
                .take(MAX_BODY + 1)
                .read_to_end(&mut out)
                .map_err(|e| LapiError::Unreachable(format!("reading the answer: {e}")))?;
            if out.len() as u64 > MAX_BODY {
                return Err(LapiError::Garbage(format!("an answer over {MAX_BODY} bytes")));
            }
            Ok(out)
        }
        Err(ureq::Error::Status(code @ (401 | 403), _)) => Err(LapiError::Auth(code)),
        Err(ureq::Error::Status(code, resp)) => {
            // The Local API's errors are short JSON (`{"message": …}`); a proxy's may be a page.
            let text = resp.into_string().unwrap_or_default();
            let text: String = text.chars().filter(|c| !c.is_control()).take(200).collect();
            Err(LapiError::Status(code, text))
        }
        Err(ureq::Error::Transport(t)) => Err(LapiError::Unreachable(t.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_error_has_its_series_from_the_start() {
        let errors = [
            LapiError::Unreachable(String::new()),
            LapiError::Auth(403),
            LapiError::Status(500, String::new()),
            LapiError::Garbage(String::new()),
        ];
        let kinds: Vec<&str> = errors.iter().map(LapiError::kind).collect();
        assert_eq!(kinds, crate::observe::metrics::CROWDSEC_ERROR_KINDS);
    }
}
