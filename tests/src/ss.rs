//! `ss` as the tests read it: the kernel's own view of a socket (`ss -tnmi`), an independent
//! reading beside the agent's.
use std::fmt;

use crate::{
    Netns,
    process::{COMMAND_LIMIT, output_within},
};

/// One socket of `ss -Htnmi state established`: its line of queues and addresses, and its
/// indented details (`skmem:(…)`, `wscale:…`, `snd_wnd:…`).
#[derive(Debug, Clone)]
pub struct SsSocket {
    line: String,
    details: String,
}

impl SsSocket {
    fn columns(&self) -> Vec<&str> {
        self.line.split_whitespace().collect()
    }

    fn column(&self, i: usize) -> &str {
        self.columns().get(i).copied().unwrap_or_else(|| panic!("no column {i} in ss line `{}`", self.line))
    }

    /// The receive queue (ss's first column when the state is filtered).
    pub fn recv_q(&self) -> u64 {
        let q = self.column(0);
        q.parse().unwrap_or_else(|_| panic!("Recv-Q `{q}` in `{self}`"))
    }

    pub fn local(&self) -> &str {
        self.column(2)
    }

    pub fn remote(&self) -> &str {
        self.column(3)
    }

    /// A field of `skmem:(r…,rb…,t…,tb…,f…,w…,o…,bl…,d…)`: `w` the memory charged to the send
    /// queue (sk_wmem_queued), `tb` the send buffer.
    pub fn skmem(&self, name: &str) -> u64 {
        let mem = self.details.split("skmem:(").nth(1).and_then(|m| m.split(')').next());
        let mem = mem.unwrap_or_else(|| panic!("no skmem in `{self}`"));
        mem.split(',')
            .find_map(|kv| kv.strip_prefix(name)?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in skmem:({mem})"))
    }

    /// A `name:NUMBER` field of the details (`snd_wnd`, `backoff`, `lastack`); ss leaves some
    /// out when they are 0.
    pub fn info(&self, name: &str) -> Option<u64> {
        self.details.split_whitespace().find_map(|f| f.strip_prefix(name)?.strip_prefix(':')?.parse().ok())
    }

    /// The smoothed round-trip time in ms (`rtt:SRTT/RTTVAR`).
    pub fn rtt_ms(&self) -> Option<f64> {
        self.details.split_whitespace().find_map(|f| f.strip_prefix("rtt:")?.split('/').next()?.parse().ok())
    }

    /// The retransmission timeout in ms (`rto:NUMBER`, which may have a fraction).
    pub fn rto_ms(&self) -> Option<f64> {
        self.details.split_whitespace().find_map(|f| f.strip_prefix("rto:")?.parse().ok())
    }

    /// Segments retransmitted over the connection's life (`retrans:NOW/TOTAL`; ss leaves it out
    /// when there were none).
    pub fn retrans_total(&self) -> u64 {
        self.details
            .split_whitespace()
            .find_map(|f| f.strip_prefix("retrans:")?.split('/').nth(1)?.parse().ok())
            .unwrap_or(0)
    }

    /// Whether the details hold `text` (`wscale:7,`).
    pub fn says(&self, text: &str) -> bool {
        self.details.contains(text)
    }
}

impl fmt::Display for SsSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}\n{}", self.line, self.details)
    }
}

/// Reads `ss -Htnmi` output: a socket's line starts at the margin, its details are indented.
fn parse(text: &str) -> Vec<SsSocket> {
    let mut out: Vec<SsSocket> = Vec::new();
    for l in text.lines().filter(|l| !l.trim().is_empty()) {
        match out.last_mut() {
            Some(s) if l.starts_with(char::is_whitespace) => {
                s.details.push_str(l.trim());
                s.details.push(' ');
            }
            _ => out.push(SsSocket { line: l.trim().to_owned(), details: String::new() }),
        }
    }
    out
}

/// The established TCP sockets of `ns` that match `filter` (ss's filter words, e.g.
/// `["dst", "10.77.0.4:40000"]`).
pub fn established(ns: &Netns, filter: &[&str]) -> Vec<SsSocket> {
    let out = output_within(ns.command("ss").args(["-Htnmi", "state", "established"]).args(filter), COMMAND_LIMIT);
    assert!(out.status.success(), "ss failed: {}", String::from_utf8_lossy(&out.stderr));
    parse(&String::from_utf8_lossy(&out.stdout))
}

/// The one established socket from `local` to `remote` in `ns`.
pub fn socket(ns: &Netns, local: &str, remote: &str) -> SsSocket {
    let all = established(ns, &[]);
    all.iter().find(|s| s.local() == local && s.remote() == remote).cloned().unwrap_or_else(|| {
        let shown: Vec<String> = all.iter().map(ToString::to_string).collect();
        panic!("no socket {local} -> {remote} in ss:\n{}", shown.join("\n"))
    })
}
