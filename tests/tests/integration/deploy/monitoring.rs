//! What ships for watching a fleet: the Prometheus alerting rules pass `promtool`'s checks and
//! their own unit tests, and every metric the rules and the Grafana dashboard name is one a real
//! agent exports.

use std::{collections::BTreeSet, path::Path, process::Command};

use enforcer_tests::{Agent, Cgroup, Netns, agent_scrape};

fn deploy_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Every `enforcer_…` name in `text`.
fn named(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("enforcer_") {
        let tail = &rest[i..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        // Not a longer word that happens to contain it.
        let before = rest[..i].chars().last();
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            out.insert(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    out
}

/// The sample names a running agent's `/metrics` can have: from each family's `# TYPE` line,
/// with the suffixes its type gives samples.
fn exported(ns: &Netns, addr: &str) -> BTreeSet<String> {
    let text = agent_scrape(ns, addr);
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else { continue };
        let mut words = rest.split_whitespace();
        let (Some(name), Some(kind)) = (words.next(), words.next()) else { continue };
        let base = name.trim_end_matches("_total");
        names.insert(name.to_owned());
        match kind {
            "counter" => {
                names.insert(format!("{base}_total"));
            }
            "histogram" => names.extend(["_bucket", "_sum", "_count"].map(|s| format!("{name}{s}"))),
            _ => {}
        }
    }
    assert!(names.len() > 10, "the agent's /metrics named too little:\n{text}");
    names
}

#[test]
fn the_alerting_rules_pass_promtool_and_the_dashboard_names_metrics_the_agent_exports() {
    let dir = deploy_dir().join("prometheus");
    for args in [&["check", "rules", "enforcer-rules.yaml"][..], &["test", "rules", "enforcer-rules.test.yaml"]] {
        let out = Command::new("promtool").current_dir(&dir).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let rules = std::fs::read_to_string(dir.join("enforcer-rules.yaml")).unwrap();
    let dashboard = std::fs::read_to_string(deploy_dir().join("grafana/enforcer.json")).unwrap();
    let board: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let exprs: Vec<String> = board["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect();
    assert!(exprs.len() >= 8, "the dashboard's panels query too little: {exprs:?}");

    let (ns, cg) = (Netns::new(), Cgroup::new());
    let _agent = Agent::start_json(&ns, &cg, &["--metrics-addr", "127.0.0.1:19467"]);
    let have = exported(&ns, "127.0.0.1:19467");
    for (what, text) in [("rules", rules), ("dashboard", exprs.join("\n"))] {
        let missing: Vec<String> = named(&text).into_iter().filter(|n| !have.contains(n)).collect();
        assert!(
            missing.is_empty(),
            "the {what} name metrics the agent does not export: {missing:?}\n(it exports {have:?})"
        );
    }
}
