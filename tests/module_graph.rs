//! The module graph points one way (issue 20).
//!
//! The top-level modules under `src/` sit in three tiers:
//!
//! - **Foundation**: the body and error types, the request facts the layers
//!   share, the early-exit future. They import nothing of ours above them.
//! - **Layers**: one concern each. A layer imports only the foundation, never
//!   a sibling layer: where it needs another layer's result, it reads a
//!   foundation type from the request extensions.
//! - **Assembly**: `config` composes the layers' config structs; `stack`,
//!   `server` and `reload` build and run them; `main`, `demo` and `fake` sit
//!   on top.
//!
//! This test reads the sources as text (std only, nothing of the crate), so it
//! sees exactly what a reader sees: every `use crate::x` (grouped forms too),
//! every `crate::x::y` path in code, and `polytomic_gateway::x` in `main.rs`.
//! Comments and string literals are ignored. It fails on an import that points
//! up a tier or across the layers, on a module nobody placed in [`TIERS`], and
//! on any cycle between top-level modules.
//!
//! `scripts/module-graph.sh` prints the graph (`print_graph`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Tier {
    Foundation,
    Layer,
    Assembly,
}

use Tier::*;

/// Every top-level module, placed in its tier. A new module must be added
/// here; a module that goes away must be removed.
const TIERS: &[(&str, Tier)] = &[
    // Foundation.
    ("body", Foundation),
    ("client", Foundation),
    ("error", Foundation),
    ("future", Foundation),
    ("net", Foundation),
    ("notes", Foundation),
    ("problem", Foundation),
    ("schema", Foundation),
    ("secret", Foundation),
    ("trace", Foundation),
    // Layers.
    ("audit", Layer),
    ("auth", Layer),
    // `connection` is the per-connection timeouts (head read, idle). It is
    // only used by `server`, imports nothing of ours, and no layer needs it:
    // a concern of its own, so a layer. Putting it in the foundation would
    // let every layer reach it for no reason.
    ("connection", Layer),
    ("credentials", Layer),
    ("health", Layer),
    ("limit", Layer),
    ("metrics", Layer),
    ("policy", Layer),
    ("proxy", Layer),
    ("routes", Layer),
    ("telemetry", Layer),
    ("validate", Layer),
    ("version", Layer),
    // Assembly.
    // `catalog` builds the route table from the config (routes + validate's
    // schemas); `policy_cases` runs cases through routes and policy together.
    // Both combine layers, so both assemble.
    ("catalog", Assembly),
    ("config", Assembly),
    ("policy_cases", Assembly),
    ("reload", Assembly),
    ("server", Assembly),
    ("stack", Assembly),
    ("demo", Assembly),
    ("fake", Assembly),
    // The crate roots.
    ("lib", Assembly),
    ("main", Assembly),
];

/// The library crate's name, as `main.rs` spells paths into it.
const LIB_CRATE: &str = "polytomic_gateway";

/// One reference from a source file to another top-level module.
#[derive(Clone, Debug)]
struct Edge {
    from: String,
    to: String,
    /// Path relative to the crate root, e.g. `src/audit/chain.rs`.
    file: String,
    line: usize,
    /// The source line, trimmed.
    text: String,
    /// Inside a `#[cfg(test)]` item.
    test_only: bool,
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in fs::read_dir(&d).unwrap_or_else(|e| panic!("read {}: {e}", d.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|x| x == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The top-level module a file belongs to: `audit/chain.rs` → `audit`,
/// `lib.rs` → `lib`, `main.rs` → `main`.
fn module_of(rel: &Path) -> String {
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.strip_suffix(".rs").unwrap_or(&first).to_string()
}

fn module_file_exists(module: &str) -> bool {
    let src = src_dir();
    src.join(format!("{module}.rs")).is_file() || src.join(module).join("mod.rs").is_file()
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// `text` with comments and the contents of string and char literals replaced
/// by spaces, newlines kept, so that every char keeps its line and column.
fn code_only(text: &str) -> Vec<char> {
    let s: Vec<char> = text.chars().collect();
    let mut out = s.clone();
    let blank = |out: &mut Vec<char>, from: usize, to: usize| {
        for c in &mut out[from..to.min(s.len())] {
            if *c != '\n' {
                *c = ' ';
            }
        }
    };
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        let next = s.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            let end = s[i..]
                .iter()
                .position(|&c| c == '\n')
                .map_or(s.len(), |n| i + n);
            blank(&mut out, i, end);
            i = end;
        } else if c == '/' && next == Some('*') {
            // Block comments nest.
            let (mut depth, mut j) = (1, i + 2);
            while j < s.len() && depth > 0 {
                if s[j] == '/' && s.get(j + 1) == Some(&'*') {
                    depth += 1;
                    j += 2;
                } else if s[j] == '*' && s.get(j + 1) == Some(&'/') {
                    depth -= 1;
                    j += 2;
                } else {
                    j += 1;
                }
            }
            blank(&mut out, i, j);
            i = j;
        } else if c == '"' {
            // A raw string if `r#*` (after an optional `b`) opens it.
            let mut k = i;
            while k > 0 && s[k - 1] == '#' {
                k -= 1;
            }
            let hashes = i - k;
            let raw = k > 0
                && s[k - 1] == 'r'
                && (k < 2
                    || !is_ident(s[k - 2])
                    || (s[k - 2] == 'b' && (k < 3 || !is_ident(s[k - 3]))));
            let mut j = i + 1;
            if raw {
                while j < s.len() {
                    if s[j] == '"' && (0..hashes).all(|h| s.get(j + 1 + h) == Some(&'#')) {
                        break;
                    }
                    j += 1;
                }
            } else {
                while j < s.len() && s[j] != '"' {
                    j += if s[j] == '\\' { 2 } else { 1 };
                }
            }
            blank(&mut out, i + 1, j);
            i = j + 1 + if raw { hashes } else { 0 };
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{..}') or a lifetime ('a).
            if next == Some('\\') {
                let end = s[i + 3..]
                    .iter()
                    .position(|&c| c == '\'')
                    .map_or(s.len(), |n| i + 3 + n);
                blank(&mut out, i + 1, end);
                i = end + 1;
            } else if s.get(i + 2) == Some(&'\'') {
                blank(&mut out, i + 1, i + 2);
                i += 3;
            } else {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    out
}

/// Char ranges of items under `#[cfg(test)]`: from the attribute to the first
/// `;` outside braces or the brace that closes the item's body.
fn test_ranges(code: &[char]) -> Vec<(usize, usize)> {
    let needle: Vec<char> = "#[cfg(test)]".chars().collect();
    let mut ranges = Vec::new();
    let mut i = 0;
    while i + needle.len() <= code.len() {
        if code[i..i + needle.len()] != needle[..] {
            i += 1;
            continue;
        }
        let mut depth = 0usize;
        let mut j = i + needle.len();
        while j < code.len() {
            match code[j] {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                ';' if depth == 0 => break,
                _ => {}
            }
            j += 1;
        }
        ranges.push((i, j));
        i = j;
    }
    ranges
}

/// An identifier starting at `i` (after whitespace), and where it starts.
fn ident_at(code: &[char], mut i: usize) -> Option<(String, usize)> {
    while i < code.len() && code[i].is_whitespace() {
        i += 1;
    }
    let start = i;
    while i < code.len() && is_ident(code[i]) {
        i += 1;
    }
    (i > start).then(|| (code[start..i].iter().collect(), start))
}

/// Skips whitespace, then `::` if it is there.
fn path_sep(code: &[char], mut i: usize) -> Option<usize> {
    while i < code.len() && code[i].is_whitespace() {
        i += 1;
    }
    (code.get(i) == Some(&':') && code.get(i + 1) == Some(&':')).then_some(i + 2)
}

/// Every first segment after `root::`: `root::x::y` gives `x`;
/// `root::{a, b::c, d::{e, f}}` gives `a`, `b`, `d`. Each with its char
/// position.
fn first_segments(code: &[char], root: &str) -> Vec<(String, usize)> {
    let root: Vec<char> = root.chars().collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i + root.len() <= code.len() {
        let starts = code[i..i + root.len()] == root[..]
            && (i == 0 || !is_ident(code[i - 1]) || code[i - 1] == '$')
            && code.get(i + root.len()).is_none_or(|&c| !is_ident(c));
        if !starts {
            i += 1;
            continue;
        }
        i += root.len();
        let Some(mut j) = path_sep(code, i) else {
            continue;
        };
        while j < code.len() && code[j].is_whitespace() {
            j += 1;
        }
        if code.get(j) == Some(&'{') {
            // A group: the first identifier of each element at depth 1.
            let mut depth = 1;
            let mut expect = true;
            j += 1;
            while j < code.len() && depth > 0 {
                match code[j] {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 1 => expect = true,
                    c if expect && depth == 1 && is_ident(c) => {
                        let (name, at) = ident_at(code, j).unwrap();
                        found.push((name.clone(), at));
                        j = at + name.len();
                        expect = false;
                        continue;
                    }
                    _ => {}
                }
                j += 1;
            }
        } else if let Some((name, at)) = ident_at(code, j) {
            found.push((name, at));
        }
        i = j;
    }
    found
}

/// `use x::...` at the top of the crate root (`lib.rs`), where paths start at
/// the crate without `crate::`.
fn root_uses(code: &[char]) -> Vec<(String, usize)> {
    let mut found = Vec::new();
    let mut i = 0;
    while let Some((word, at)) = ident_at(code, i) {
        i = at + word.len();
        if word == "use" {
            if let Some((name, at)) = ident_at(code, i) {
                if path_sep(code, at + name.len()).is_some() {
                    found.push((name, at));
                }
            }
        }
        // Move to the next identifier.
        while i < code.len() && !is_ident(code[i]) {
            i += 1;
        }
    }
    found
}

struct Graph {
    /// Modules seen as files.
    modules: BTreeSet<String>,
    edges: Vec<Edge>,
}

fn read_graph() -> Graph {
    let src = src_dir();
    let files = rust_files(&src);
    let modules: BTreeSet<String> = files
        .iter()
        .map(|f| module_of(f.strip_prefix(&src).unwrap()))
        .collect();

    // What `lib.rs` re-exports at the root (`pub use error::GatewayError;`),
    // so that `crate::GatewayError` counts as a use of `error`.
    let lib = code_only(&fs::read_to_string(src.join("lib.rs")).unwrap());
    let mut reexports = BTreeMap::new();
    {
        let text: String = lib.iter().collect();
        for stmt in text.split(';') {
            let stmt = stmt.trim();
            let Some(path) = stmt.strip_prefix("pub use ") else {
                continue;
            };
            let segs: Vec<&str> = path.split("::").map(str::trim).collect();
            if let (Some(first), Some(last)) = (segs.first(), segs.last()) {
                let name = last.rsplit(" as ").next().unwrap().trim();
                reexports.insert(name.to_string(), first.to_string());
            }
        }
    }

    let mut edges = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        let from = module_of(rel);
        let text = fs::read_to_string(file).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let code = code_only(&text);
        let tests = test_ranges(&code);
        let mut refs = if from == "main" {
            first_segments(&code, LIB_CRATE)
        } else {
            first_segments(&code, "crate")
        };
        if from == "lib" {
            refs.extend(root_uses(&code));
        }
        let mut seen = BTreeSet::new();
        for (name, at) in refs {
            if name == "self" {
                continue;
            }
            // A module, a root re-export, or else an item of the root itself.
            let to = if modules.contains(&name) && name != "lib" && name != "main" {
                name
            } else if let Some(m) = reexports.get(&name) {
                m.clone()
            } else {
                "lib".to_string()
            };
            if to == from {
                continue;
            }
            let line = code[..at].iter().filter(|&&c| c == '\n').count() + 1;
            if !seen.insert((line, to.clone())) {
                continue;
            }
            edges.push(Edge {
                from: from.clone(),
                to,
                file: format!("src/{}", rel.display()),
                line,
                text: lines[line - 1].trim().to_string(),
                test_only: tests.iter().any(|&(a, b)| a <= at && at < b),
            });
        }
    }
    Graph { modules, edges }
}

fn tier_of(module: &str) -> Option<Tier> {
    TIERS.iter().find(|(m, _)| *m == module).map(|&(_, t)| t)
}

/// Groups of modules that reach each other (Tarjan), each sorted, only those
/// with more than one module.
fn cycles(adj: &BTreeMap<&str, BTreeSet<&str>>) -> Vec<Vec<String>> {
    struct State<'a> {
        adj: &'a BTreeMap<&'a str, BTreeSet<&'a str>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(st: &mut State<'a>, v: &'a str) {
        let n = st.index.len();
        st.index.insert(v, n);
        st.low.insert(v, n);
        st.stack.push(v);
        st.on_stack.insert(v);
        for &w in st.adj.get(v).into_iter().flatten() {
            if !st.index.contains_key(w) {
                visit(st, w);
                let lw = st.low[w];
                let lv = st.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if st.on_stack.contains(w) {
                let iw = st.index[w];
                let lv = st.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if st.low[v] == st.index[v] {
            let mut scc = Vec::new();
            loop {
                let w = st.stack.pop().unwrap();
                st.on_stack.remove(w);
                scc.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if scc.len() > 1 {
                scc.sort();
                st.out.push(scc);
            }
        }
    }
    let mut st = State {
        adj,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for &v in adj.keys() {
        if !st.index.contains_key(v) {
            visit(&mut st, v);
        }
    }
    st.out.sort();
    st.out
}

/// A shortest cycle through `start` (breadth first), e.g. `a -> b -> a`.
fn cycle_through(adj: &BTreeMap<&str, BTreeSet<&str>>, start: &str) -> Vec<String> {
    let mut parent: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = VecDeque::new();
    for &w in adj.get(start).into_iter().flatten() {
        parent.entry(w).or_insert(start);
        queue.push_back(w);
    }
    while let Some(v) = queue.pop_front() {
        if v == start {
            break;
        }
        for &w in adj.get(v).into_iter().flatten() {
            if !parent.contains_key(w) {
                parent.insert(w, v);
                queue.push_back(w);
            }
        }
    }
    let mut path = vec![start.to_string()];
    let mut v = parent[start];
    while v != start {
        path.push(v.to_string());
        v = parent[v];
    }
    path.push(start.to_string());
    path.reverse();
    path
}

fn adjacency(edges: &[Edge]) -> BTreeMap<&str, BTreeSet<&str>> {
    let mut adj: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for e in edges {
        adj.entry(&e.from).or_default().insert(&e.to);
        adj.entry(&e.to).or_default();
    }
    adj
}

#[test]
fn module_graph_is_one_way() {
    let graph = read_graph();
    let mut report = String::new();

    // Every module placed, every placed module present.
    for m in &graph.modules {
        if tier_of(m).is_none() {
            writeln!(
                report,
                "src/{m}: module `{m}` is in no tier: add it to TIERS in tests/module_graph.rs"
            )
            .unwrap();
        }
    }
    for (m, _) in TIERS {
        if !graph.modules.contains(*m) {
            writeln!(
                report,
                "TIERS names `{m}`, which has no file under src/: remove it"
            )
            .unwrap();
        }
    }

    // Nothing points up a tier, no layer points at a sibling.
    let mut bad = 0;
    let mut bad_pairs = BTreeSet::new();
    for e in &graph.edges {
        let (Some(tf), Some(tt)) = (tier_of(&e.from), tier_of(&e.to)) else {
            continue;
        };
        if tt > tf || (tf == Layer && tt == Layer) {
            bad += 1;
            bad_pairs.insert((e.from.as_str(), e.to.as_str()));
            writeln!(
                report,
                "{}:{}: {} ({} [{tf:?}] -> {} [{tt:?}]){}",
                e.file,
                e.line,
                e.text,
                e.from,
                e.to,
                if e.test_only { " [cfg(test)]" } else { "" },
            )
            .unwrap();
        }
    }
    if bad > 0 {
        writeln!(
            report,
            "{bad} imports point up a tier or across the layers ({} module pairs)",
            bad_pairs.len()
        )
        .unwrap();
    }

    // No cycles.
    let adj = adjacency(&graph.edges);
    for scc in cycles(&adj) {
        writeln!(
            report,
            "cycle among {} modules: {}",
            scc.len(),
            scc.join(", ")
        )
        .unwrap();
        // The shortest cycle through each of them, each cycle once.
        let mut printed = BTreeSet::new();
        for m in &scc {
            let mut cycle = cycle_through(&adj, m);
            cycle.pop();
            let min = (0..cycle.len()).min_by_key(|&i| &cycle[i]).unwrap();
            cycle.rotate_left(min);
            cycle.push(cycle[0].clone());
            if printed.insert(cycle.clone()) {
                writeln!(report, "  {}", cycle.join(" -> ")).unwrap();
            }
        }
    }

    assert!(
        report.is_empty(),
        "the module graph is not one way:\n{report}"
    );
}

/// Prints the graph, `from -> to`, sorted and deduplicated:
/// `scripts/module-graph.sh`, or
/// `cargo test --test module_graph -- --nocapture print_graph`.
#[test]
fn print_graph() {
    let graph = read_graph();
    let pairs: BTreeSet<(&str, &str)> = graph
        .edges
        .iter()
        .map(|e| (e.from.as_str(), e.to.as_str()))
        .collect();
    let tier = |m: &str| tier_of(m).map_or("unplaced".to_string(), |t| format!("{t:?}"));
    for (from, to) in &pairs {
        println!("{from} [{}] -> {to} [{}]", tier(from), tier(to));
    }
    assert!(
        !pairs.is_empty(),
        "no references between modules found under src/"
    );
    for (from, to) in &pairs {
        for m in [from, to] {
            assert!(
                module_file_exists(m),
                "module `{m}` has no src/{m}.rs or src/{m}/mod.rs"
            );
        }
    }
}

#[test]
fn reader_sees_what_the_compiler_sees() {
    let code = code_only(concat!(
        "use crate::{\n    audit::{A, B},\n    error::GatewayError, // crate::nope\n};\n",
        "/* crate::block /* nested */ crate::still */ let s = \"crate::string\";\n",
        "let r = r#\"crate::raw \"quoted\" \"#; let c = '\"'; fn f<'a>(x: &'a crate::body::Body) {}\n",
        "#[cfg(test)]\nmod tests { use crate::config::Config; }\n",
        "let p = crate :: limit::X; let q = mycrate::notes::Y;\n",
    ));
    let found: Vec<String> = first_segments(&code, "crate")
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(found, ["audit", "error", "body", "config", "limit"]);
    let tests = test_ranges(&code);
    assert_eq!(tests.len(), 1);
    let at = first_segments(&code, "crate")
        .into_iter()
        .find(|(n, _)| n == "config")
        .unwrap()
        .1;
    assert!(tests[0].0 < at && at < tests[0].1);
}

/// The modules `examples/embed.rs` leaves out: it must name nothing from
/// them, so that it shows the layers it uses working alone.
const LEFT_OUT_OF_EMBED: &[&str] = &[
    "audit",
    "telemetry",
    "metrics",
    "validate",
    "limit",
    "health",
    "version",
    "stack",
    "server",
    "reload",
    "config",
    "catalog",
    "demo",
    "fake",
];

#[test]
fn the_embed_example_names_nothing_from_the_layers_it_leaves_out() {
    let path = src_dir().join("../examples/embed.rs");
    let text = fs::read_to_string(&path).expect("examples/embed.rs");
    let code = code_only(&text);
    let named: BTreeSet<String> = first_segments(&code, LIB_CRATE)
        .into_iter()
        .map(|(module, _)| module)
        .collect();
    for needed in ["auth", "policy", "proxy"] {
        assert!(
            named.contains(needed),
            "examples/embed.rs should use the {needed} layer; it names {named:?}"
        );
    }
    let wrong: Vec<&String> = named
        .iter()
        .filter(|m| LEFT_OUT_OF_EMBED.contains(&m.as_str()))
        .collect();
    assert!(
        wrong.is_empty(),
        "examples/embed.rs names {wrong:?}, which it is meant to leave out"
    );
}

/// `cargo test` builds the examples beside the test binaries; the embed
/// example exits non-zero if a status or the injected key is wrong.
#[test]
fn the_embed_example_runs() {
    let exe = std::env::current_exe().expect("test binary path");
    let examples = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile dir")
        .join("examples");
    let embed = examples.join(format!("embed{}", std::env::consts::EXE_SUFFIX));
    assert!(
        embed.exists(),
        "{} is missing: cargo test builds the examples",
        embed.display()
    );
    let out = std::process::Command::new(&embed)
        .output()
        .expect("run the embed example");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "embed failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("GET, team support: 200 OK"), "{stdout}");
    assert!(
        stdout.contains("PUT, team support: 403 Forbidden"),
        "{stdout}"
    );
    // The upstream saw the partner key, and the example never prints it.
    assert!(
        stdout.contains(r#"{"data":{"partner_key_received":true}}"#),
        "{stdout}"
    );
    assert!(!stdout.contains("pk_example_not_a_real_key"), "{stdout}");
}
