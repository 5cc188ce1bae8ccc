//! The two exposition formats a scraper may ask for. prometheus-client writes OpenMetrics; a
//! scraper that does not ask for it (curl, promtool, older Prometheus servers) gets the classic
//! text format 0.0.4, where a counter family is named with its `_total` and there is no
//! `# UNIT`, `info` type or `# EOF`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    Text004,
}

impl Format {
    /// From the request's `Accept` header: OpenMetrics only when the scraper asks for it.
    pub fn negotiate(request_head: &str) -> Self {
        let accept = request_head
            .lines()
            .find_map(|l| l.split_once(':').filter(|(k, _)| k.trim().eq_ignore_ascii_case("accept")).map(|(_, v)| v))
            .unwrap_or_default();
        if accept.contains("application/openmetrics-text") { Self::OpenMetrics } else { Self::Text004 }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Self::Text004 => "text/plain; version=0.0.4; charset=utf-8",
        }
    }

    /// `openmetrics` (what prometheus-client wrote) in this format.
    pub fn convert(self, openmetrics: String) -> String {
        match self {
            Self::OpenMetrics => openmetrics,
            Self::Text004 => to_text_004(&openmetrics),
        }
    }
}

fn to_text_004(openmetrics: &str) -> String {
    // Counter and info families' samples carry a suffix their family name lacks: the 0.0.4
    // format names the family after its samples.
    let suffixes: std::collections::HashMap<&str, (&str, &str)> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split_once(' '))
        .map(|(name, kind)| {
            let renamed = match kind {
                "counter" => ("_total", "counter"),
                "info" => ("_info", "gauge"),
                "unknown" => ("", "untyped"),
                other => ("", other),
            };
            (name, renamed)
        })
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta =
            line.strip_prefix("# TYPE ").map(|r| ("TYPE", r)).or(line.strip_prefix("# HELP ").map(|r| ("HELP", r)));
        match meta {
            Some((what, rest)) => {
                let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
                let (suffix, kind) = suffixes.get(name).copied().unwrap_or(("", ""));
                let text = if what == "TYPE" { kind } else { text };
                out.push_str(&format!("# {what} {name}{suffix} {text}\n"));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_infos_take_their_sample_names() {
        let om = "# HELP enforcer_decisions Decisions.\n# TYPE enforcer_decisions counter\n\
                  enforcer_decisions_total{event=\"destroyed\"} 1\n\
                  # HELP enforcer_pressure_bytes Pressure.\n# TYPE enforcer_pressure_bytes gauge\n\
                  # UNIT enforcer_pressure_bytes bytes\nenforcer_pressure_bytes 5\n\
                  # HELP enforcer_build The binary.\n# TYPE enforcer_build info\n\
                  enforcer_build_info{version=\"0.1.0\"} 1\n# EOF\n";
        let text = Format::Text004.convert(om.to_owned());
        assert_eq!(
            text,
            "# HELP enforcer_decisions_total Decisions.\n# TYPE enforcer_decisions_total counter\n\
             enforcer_decisions_total{event=\"destroyed\"} 1\n\
             # HELP enforcer_pressure_bytes Pressure.\n# TYPE enforcer_pressure_bytes gauge\n\
             enforcer_pressure_bytes 5\n\
             # HELP enforcer_build_info The binary.\n# TYPE enforcer_build_info gauge\n\
             enforcer_build_info{version=\"0.1.0\"} 1\n"
        );
        assert_eq!(Format::OpenMetrics.convert(om.to_owned()), om);
    }

    #[test]
    fn negotiates_on_accept() {
        let om = "GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n\r\n";
        assert_eq!(Format::negotiate(om), Format::OpenMetrics);
        assert_eq!(Format::negotiate("GET /metrics HTTP/1.1\r\naccept: */*\r\n\r\n"), Format::Text004);
        assert_eq!(Format::negotiate("GET /metrics HTTP/1.1\r\n\r\n"), Format::Text004);
    }
}
