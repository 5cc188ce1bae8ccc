//! `cargo xtask lint`'s architecture check (as import-linter does for Python): the agent crate's
//! modules import only from their own layer or the ones below it, no two modules import each
//! other round a cycle, and no file is longer than one sitting's read. ARCHITECTURE.md says
//! what each layer owns.
//!
//! Imports are read from the source text, not from rustc: every `use crate::…`/`use super::…`
//! tree and every path written `crate::…` in code outside `#[cfg(test)]` modules and comments.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use anyhow::{Context, Result, bail};

/// The agent crate's layers, lowest first: a module may import from its own layer and the
/// ones before it. `main.rs` and `lib.rs` sit above them all.
pub const LAYERS: [&str; 10] =
    ["model", "policy", "host", "bpf", "config", "observe", "fleet", "agent", "commands", "cli"];

/// No module longer than this (lines, tests included).
pub const MAX_LINES: usize = 450;

pub fn check(src: &Path) -> Result<()> {
    let modules = read_modules(src)?;
    let graph = imports(&modules);
    let mut problems = Vec::new();
    for (from, tos) in &graph {
        for to in tos {
            if let (Some(a), Some(b)) = (layer(from), layer(to))
                && b > a
            {
                problems.push(format!("{from} imports {to}: `{}` may not import `{}`", LAYERS[a], LAYERS[b]));
            }
        }
    }
    for cycle in cycles(&graph) {
        problems.push(format!("import cycle: {}", cycle.join(" -> ")));
    }
    for (name, text) in &modules {
        let lines = text.lines().count();
        if lines > MAX_LINES {
            problems.push(format!("{name} is {lines} lines (at most {MAX_LINES}): split it by concern"));
        }
    }
    if !problems.is_empty() {
        bail!("the agent crate's layout (ARCHITECTURE.md):\n  {}", problems.join("\n  "));
    }
    eprintln!(
        "xtask: layers: {} modules, {} imports, no cycle, none upward, none over {MAX_LINES} lines",
        modules.len(),
        graph.values().map(BTreeSet::len).sum::<usize>()
    );
    Ok(())
}

/// Every `.rs` file under `src` by module path (`bpf::pins`; `mod.rs` names its folder).
fn read_modules(src: &Path) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(src)?.with_extension("");
                let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
                if parts.last().is_some_and(|l| ["mod", "lib", "main"].contains(&l.as_str())) {
                    parts.pop();
                }
                let name = if parts.is_empty() { "crate".to_owned() } else { parts.join("::") };
                let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
                out.insert(name, text);
            }
        }
    }
    Ok(out)
}

/// The layer of a module: the index of its top folder in [`LAYERS`] (`None` for the crate root).
fn layer(module: &str) -> Option<usize> {
    let top = module.split("::").next()?;
    LAYERS.iter().position(|l| *l == top)
}

/// Module → the modules it imports.
fn imports(modules: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph = BTreeMap::new();
    for (name, text) in modules {
        let code = strip(text);
        let parent: Vec<&str> = match name.rsplit_once("::") {
            Some((p, _)) => p.split("::").collect(),
            None => Vec::new(),
        };
        let mut paths: Vec<Vec<String>> = Vec::new();
        for (root, tree) in use_trees(&code) {
            let base: Vec<String> =
                if root == "crate" { Vec::new() } else { parent.iter().map(|s| s.to_string()).collect() };
            for p in expand(&tree) {
                paths.push(base.iter().cloned().chain(p).collect());
            }
        }
        for p in inline_paths(&code) {
            paths.push(p);
        }
        let mut tos = BTreeSet::new();
        for p in paths {
            // The longest prefix that is a module of ours.
            if let Some(to) = (1..=p.len()).rev().map(|k| p[..k].join("::")).find(|m| modules.contains_key(m))
                && to != *name
            {
                tos.insert(to);
            }
        }
        graph.insert(name.clone(), tos);
    }
    graph
}

/// The text without comments and without `#[cfg(test)]` modules.
fn strip(text: &str) -> String {
    let no_comments: String = text
        .lines()
        .map(|l| match l.find("//") {
            // A `//` inside a string literal ("http://…") is rare in this crate; the worst it does
            // is hide an import written after it on the same line.
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = String::new();
    let mut rest = no_comments.as_str();
    while let Some(i) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..i]);
        let after = &rest[i + "#[cfg(test)]".len()..];
        let trimmed = after.trim_start();
        let is_mod =
            trimmed.starts_with("mod ") || trimmed.starts_with("pub mod ") || trimmed.starts_with("pub(crate) mod ");
        match (is_mod, after.find(['{', ';'])) {
            (true, Some(j)) if after.as_bytes()[j] == b'{' => {
                let mut depth = 0usize;
                let mut end = after.len();
                for (k, c) in after[j..].char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = j + k + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                rest = &after[end..];
            }
            // `#[cfg(test)] mod x;` (a file of its own, checked as a module) or an item.
            (_, Some(j)) if is_mod => rest = &after[j + 1..],
            _ => rest = after,
        }
    }
    out.push_str(rest);
    out
}

/// `(root, tree)` of every `use crate::…;` and `use super::…;`.
fn use_trees(code: &str) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    for (root, pat) in [("crate", "use crate::"), ("super", "use super::")] {
        let mut from = 0;
        while let Some(i) = code[from..].find(pat) {
            let start = from + i + pat.len();
            let end = code[start..].find(';').map_or(code.len(), |j| start + j);
            out.push((root, code[start..end].to_owned()));
            from = end;
        }
    }
    out
}

/// The paths a use tree names: `a::{b, c::{d, e}}` → `a::b`, `a::c::d`, `a::c::e`.
fn expand(tree: &str) -> Vec<Vec<String>> {
    let tree: String = tree.chars().filter(|c| !c.is_whitespace()).collect();
    let Some(open) = tree.find('{') else {
        let path = tree.split(" as ").next().unwrap_or(&tree);
        return vec![
            path.split("::").filter(|s| !s.is_empty() && *s != "self" && *s != "*").map(str::to_owned).collect(),
        ];
    };
    let prefix: Vec<String> = tree[..open].split("::").filter(|s| !s.is_empty()).map(str::to_owned).collect();
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let (mut parts, mut depth, mut cur) = (Vec::new(), 0, String::new());
    for c in inner.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    parts.push(cur);
    let mut out = Vec::new();
    for p in parts.iter().filter(|p| !p.is_empty()) {
        for q in expand(p) {
            out.push(prefix.iter().cloned().chain(q).collect());
        }
    }
    if out.is_empty() {
        out.push(prefix);
    }
    out
}

/// Paths written `crate::a::b` in code (not in a `use`).
fn inline_paths(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = code[from..].find("crate::") {
        let start = from + i;
        let end = code[start..]
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .map_or(code.len(), |j| start + j);
        let before = code[..start].trim_end();
        if !before.ends_with("use") {
            out.push(
                code[start + "crate::".len()..end].split("::").filter(|s| !s.is_empty()).map(str::to_owned).collect(),
            );
        }
        from = end.max(start + 1);
    }
    out
}

/// The import cycles: strongly connected components of more than one module (Tarjan), each
/// as a path that closes on its first module.
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Tarjan<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    impl<'a> Tarjan<'a> {
        fn visit(&mut self, v: &'a str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on.insert(v);
            for w in self.graph.get(v).into_iter().flatten() {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let lw = self.low[w];
                    self.low.entry(v).and_modify(|l| *l = (*l).min(lw));
                } else if self.on.contains(w) {
                    let iw = self.index[w];
                    self.low.entry(v).and_modify(|l| *l = (*l).min(iw));
                }
            }
            if self.low[v] == self.index[v] {
                let mut comp = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on.remove(w);
                    comp.push(w.to_owned());
                    if w == v {
                        break;
                    }
                }
                if comp.len() > 1 {
                    comp.sort();
                    let first = comp[0].clone();
                    comp.push(first);
                    self.out.push(comp);
                }
            }
        }
    }
    let mut t = Tarjan {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !t.index.contains_key(v.as_str()) {
            t.visit(v);
        }
    }
    t.out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn modules(files: &[(&str, &str)]) -> BTreeMap<String, String> {
        files.iter().map(|(n, t)| ((*n).to_owned(), (*t).to_owned())).collect()
    }

    #[test]
    fn use_trees_and_inline_paths_are_imports_comments_and_tests_are_not() {
        let m = modules(&[
            ("policy", "use crate::model::{socket::Socket, units};\n"),
            ("policy::judge", "use super::{Policy, plan::Plan};\n// crate::agent::x in a comment\n"),
            ("policy::plan", "#[cfg(test)]\nmod tests {\n    use crate::agent::Agent;\n}\n"),
            ("model::socket", "fn f() { crate::model::units::human(1); }\n"),
            ("model::units", ""),
            ("model", ""),
            ("agent", ""),
        ]);
        let g = imports(&m);
        assert_eq!(g["policy"], BTreeSet::from(["model::socket".to_owned(), "model::units".to_owned()]));
        assert_eq!(g["policy::judge"], BTreeSet::from(["policy".to_owned(), "policy::plan".to_owned()]));
        assert!(g["policy::plan"].is_empty());
        assert_eq!(g["model::socket"], BTreeSet::from(["model::units".to_owned()]));
    }

    #[test]
    fn cycles_and_upward_imports_are_found() {
        let m = modules(&[
            ("policy::judge", "use super::plan::Plan;\n"),
            ("policy::plan", "use super::judge::Assessment;\n"),
            ("model", "use crate::agent::Agent;\n"),
            ("agent", ""),
        ]);
        let g = imports(&m);
        assert_eq!(cycles(&g), [["policy::judge", "policy::plan", "policy::judge"]]);
        assert!(layer("agent") > layer("model"));
        assert_eq!(layer("crate"), None);
    }
}
