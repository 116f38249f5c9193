//! The architecture check: dependencies between the source files of the extension and of
//! the coordinator point down only, and every coupling is visible in a `use` header.
//!
//! Each crate names its layers from bottom to top. A file belongs to the layer of its first
//! folder (or file) under `src/`. A `use` of another layer is allowed only downwards; layers
//! of the same rank are areas, which never use each other; and files must not import each
//! other in a circle, inside a folder or across folders. A `crate::` path outside a `use`
//! line would hide a coupling from the header, so it fails too.
//!
//! The check reads the files as text: `use` statements at the start of a line (rustfmt's
//! layout), with nested `{...}` groups; an indented `use super::...` belongs to an inline
//! module (such as `mod tests`) of the same file and is not an edge.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// `(layer, rank)`: a lower rank is a lower layer; equal ranks are areas.
struct Crate {
    src: &'static str,
    layers: &'static [(&'static str, u32)],
}

const EXTENSION: Crate = Crate {
    src: "extension/src",
    layers: &[
        ("core", 0),
        ("model", 1),
        ("handlers", 2),
        ("listeners", 3),
        ("sessions", 4),
        ("delivery", 5),
        // areas
        ("events", 6),
        ("queues", 6),
        ("jobs", 6),
        ("reports", 6),
        ("locks", 6),
        ("monitor", 6),
        ("tests", 8),
        ("lib", 9),
    ],
};

const COORDINATOR: Crate = Crate {
    src: "coordinator/src",
    layers: &[
        ("shutdown", 0),
        ("smtp", 0),
        ("service", 1),
        ("config", 1),
        ("db", 1),
        ("cluster", 1),
        ("api", 2),
        // areas
        ("queues", 3),
        ("jobs", 3),
        ("reports", 3),
        ("locks", 3),
        ("maintenance", 3),
        ("web", 3),
        ("coordinator", 4),
        ("status", 4),
        ("demo", 5),
        ("lib", 6),
        ("main", 7),
    ],
};

type Module = Vec<String>;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/a/b.rs` is `a::b`, `src/a/mod.rs` is `a`, `src/lib.rs` and `src/main.rs` are the
/// crate root (named `lib` and `main` for their layer).
fn module_of(src: &Path, file: &Path) -> Module {
    let rel = file.strip_prefix(src).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// Expand `a::{b, c::{d, e}}` into `a::b`, `a::c::d`, `a::c::e`.
fn expand(tree: &str) -> Vec<String> {
    let tree: String = tree.chars().filter(|c| !c.is_whitespace()).collect();
    fn go(prefix: &str, s: &str, out: &mut Vec<String>) {
        match s.find('{') {
            None => out.push(format!("{prefix}{s}")),
            Some(open) => {
                let head = &s[..open];
                let inner = &s[open + 1..s.len() - 1];
                let mut depth = 0;
                let mut start = 0;
                for (i, c) in inner.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            if !inner[start..i].is_empty() {
                                go(&format!("{prefix}{head}"), &inner[start..i], out);
                            }
                            start = i + 1;
                        }
                        _ => {}
                    }
                }
                if !inner[start..].is_empty() {
                    go(&format!("{prefix}{head}"), &inner[start..], out);
                }
            }
        }
    }
    let mut out = Vec::new();
    go("", &tree, &mut out);
    out
}

struct Parsed {
    /// Paths of the `use` statements, and whether each was indented.
    uses: Vec<(String, bool)>,
    /// Lines (1-based) with a `crate::` path outside a `use` statement.
    inline_crate_paths: Vec<usize>,
}

fn parse(text: &str) -> Parsed {
    let mut uses = Vec::new();
    let mut inline = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        if trimmed.starts_with("//") {
            i += 1;
            continue;
        }
        let statement = trimmed
            .strip_prefix("pub use ")
            .or_else(|| trimmed.strip_prefix("pub(crate) use "))
            .or_else(|| trimmed.strip_prefix("use "));
        if let Some(rest) = statement {
            let indented = line.len() != trimmed.len();
            let mut body = rest.to_string();
            while !body.contains(';') && i + 1 < lines.len() {
                i += 1;
                body.push_str(lines[i]);
            }
            let body = body.split(';').next().unwrap();
            for path in expand(body) {
                uses.push((path, indented));
            }
        } else if line.contains("crate::") {
            inline.push(i + 1);
        }
        i += 1;
    }
    Parsed {
        uses,
        inline_crate_paths: inline,
    }
}

/// The file module a path refers to, if it is one of this crate's.
fn resolve(
    path: &str,
    from: &Module,
    indented: bool,
    modules: &BTreeSet<Module>,
) -> Option<Module> {
    let segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
    let (mut base, rest): (Module, &[&str]) = match segs.first().copied() {
        Some("crate") => (vec![], &segs[1..]),
        Some("super") if indented => return None, // an inline module's parent: this file
        Some("super") => {
            let mut m = from.clone();
            let mut rest = &segs[..];
            while rest.first() == Some(&"super") {
                m.pop();
                rest = &rest[1..];
            }
            (m, rest)
        }
        Some("self") => (from.clone(), &segs[1..]),
        Some(first) => {
            let mut child = from.clone();
            child.push(first.to_string());
            if modules.iter().any(|m| m.starts_with(&child)) {
                (from.clone(), &segs[..])
            } else {
                return None; // another crate
            }
        }
        None => return None,
    };
    // the longest prefix that is a file module
    let mut best = if modules.contains(&base) {
        Some(base.clone())
    } else {
        None
    };
    for s in rest {
        if *s == "self" || *s == "*" {
            break;
        }
        base.push(s.to_string());
        if modules.contains(&base) {
            best = Some(base.clone());
        }
    }
    best
}

fn layer_of(module: &Module, root_name: &str) -> String {
    module
        .first()
        .cloned()
        .unwrap_or_else(|| root_name.to_string())
}

fn check(krate: &Crate) -> Vec<String> {
    let src = root().join(krate.src);
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let modules: BTreeSet<Module> = files.iter().map(|f| module_of(&src, f)).collect();
    let rank: BTreeMap<&str, u32> = krate.layers.iter().copied().collect();
    let mut problems = Vec::new();
    let mut edges: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for file in &files {
        let from = module_of(&src, file);
        let root_name = if file.ends_with("main.rs") {
            "main"
        } else {
            "lib"
        };
        let from_layer = layer_of(&from, root_name);
        let Some(&from_rank) = rank.get(from_layer.as_str()) else {
            problems.push(format!(
                "{}: layer `{from_layer}` is not in the layer list of {} (tests/tests/layers.rs)",
                file.display(),
                krate.src
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        let parsed = parse(&text);
        for line in parsed.inline_crate_paths {
            problems.push(format!(
                "{}:{line}: a `crate::` path outside a `use` line hides a coupling; import it",
                file.display()
            ));
        }
        for (path, indented) in parsed.uses {
            let Some(to) = resolve(&path, &from, indented, &modules) else {
                continue;
            };
            if to == from {
                continue;
            }
            let to_layer = layer_of(&to, "lib");
            edges.entry(from.clone()).or_default().insert(to.clone());
            if to_layer == from_layer {
                continue;
            }
            let to_rank = rank.get(to_layer.as_str()).copied().unwrap_or(u32::MAX);
            if to_rank >= from_rank {
                let why = if to_rank == from_rank {
                    "areas never use each other: move what they share to a layer below"
                } else {
                    "dependencies point down only"
                };
                problems.push(format!(
                    "{}: `use {path}` makes layer `{from_layer}` depend on `{to_layer}`: {why}",
                    file.display()
                ));
            }
        }
    }
    // Cycles between files (and so between folders).
    fn visit(
        m: &Module,
        edges: &BTreeMap<Module, BTreeSet<Module>>,
        state: &mut BTreeMap<Module, u8>,
        stack: &mut Vec<Module>,
        cycles: &mut Vec<String>,
    ) {
        state.insert(m.clone(), 1);
        stack.push(m.clone());
        for n in edges.get(m).into_iter().flatten() {
            match state.get(n).copied().unwrap_or(0) {
                0 => visit(n, edges, state, stack, cycles),
                1 => {
                    let start = stack.iter().position(|s| s == n).unwrap();
                    let cycle: Vec<String> = stack[start..]
                        .iter()
                        .chain(std::iter::once(n))
                        .map(|s| s.join("::"))
                        .collect();
                    cycles.push(cycle.join(" -> "));
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(m.clone(), 2);
    }
    let mut state = BTreeMap::new();
    let mut cycles = Vec::new();
    for m in &modules {
        if state.get(m).copied().unwrap_or(0) == 0 {
            visit(m, &edges, &mut state, &mut Vec::new(), &mut cycles);
        }
    }
    for c in cycles {
        problems.push(format!("{}: import cycle: {c}", krate.src));
    }
    problems
}

#[test]
fn the_extension_depends_downwards_only() {
    let problems = check(&EXTENSION);
    assert!(problems.is_empty(), "\n{}\n", problems.join("\n"));
}

#[test]
fn the_coordinator_depends_downwards_only() {
    let problems = check(&COORDINATOR);
    assert!(problems.is_empty(), "\n{}\n", problems.join("\n"));
}

#[test]
fn the_check_finds_cycles_upward_edges_and_hidden_couplings() {
    // The parser and resolver on a made-up crate: a check that cannot fail proves nothing.
    let modules: BTreeSet<Module> = [
        vec![],
        vec!["core".to_string()],
        vec!["core".to_string(), "a".to_string()],
        vec!["events".to_string()],
    ]
    .into_iter()
    .collect();
    let from = vec!["core".to_string(), "a".to_string()];
    assert_eq!(
        resolve("crate::events::deliver", &from, false, &modules),
        Some(vec!["events".to_string()])
    );
    assert_eq!(
        resolve("super::a::X", &from, false, &modules),
        Some(from.clone())
    );
    assert_eq!(resolve("super::X", &from, true, &modules), None);
    assert_eq!(resolve("pgrx::prelude::*", &from, false, &modules), None);
    assert_eq!(
        expand("crate::x::{self, y::{z, w}, v}"),
        vec![
            "crate::x::self",
            "crate::x::y::z",
            "crate::x::y::w",
            "crate::x::v"
        ]
    );
    let parsed = parse(
        "use crate::a::{\n    b,\n    c,\n};\n// crate::in_a_comment\nfn f() { crate::hidden::call(); }\n",
    );
    assert_eq!(parsed.uses.len(), 2);
    assert_eq!(parsed.inline_crate_paths, vec![6]);
}
