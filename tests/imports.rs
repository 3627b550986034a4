//! The crate's module graph, read from src/: no import cycle among modules, and the bottom layers (the
//! command line, the model folder spec, the encoder wing) import nothing above them.
//!
//! A module's imports are the paths it names outside its tests and comments: `crate::a::b` (grouped
//! `crate::{a, b::{c}}` too), `super::x`, and paths through its own child modules (`child::x`). Each points
//! at the longest module that path starts with; an item of lib.rs itself counts as the crate root.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Graph = BTreeMap<String, BTreeSet<String>>;

/// Module path of a source file: src/lib.rs is "" (the root), src/a/mod.rs and src/a.rs are "a", src/a/b.rs
/// is "a::b". `None` for the binary's main.rs.
fn module_of(rel: &Path) -> Option<String> {
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop()?;
    let stem = last.strip_suffix(".rs")?;
    match stem {
        "main" if parts.is_empty() => None,
        "lib" if parts.is_empty() => Some(String::new()),
        "mod" => Some(parts.join("::")),
        s => {
            parts.push(s.to_string());
            Some(parts.join("::"))
        }
    }
}

fn sources(dir: &Path, root: &Path, out: &mut BTreeMap<String, String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            sources(&p, root, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            if let Some(m) = module_of(p.strip_prefix(root).unwrap()) {
                out.insert(m, std::fs::read_to_string(&p).unwrap());
            }
        }
    }
}

/// The code without comments, string and char literals (blanked), and without test-only items.
fn code_of(text: &str) -> String {
    let b: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            i += 2;
            while i + 1 < b.len() && !(b[i] == '*' && b[i + 1] == '/') {
                i += 1;
            }
            i += 2;
        } else if c == 'r' && (next == Some('"') || next == Some('#')) && !b.get(i.wrapping_sub(1)).is_some_and(|p| p.is_alphanumeric() || *p == '_')
        {
            // A raw string r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= b.len() {
                    break;
                }
                if b[j] == '"' && (0..hashes).all(|k| b.get(j + 1 + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if c == '"' {
            i += 1;
            while i < b.len() && b[i] != '"' {
                i += if b[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' && (b.get(i + 2) == Some(&'\'') || next == Some('\\')) {
            // A char literal ('x', '\n', '\''); a lifetime ('a) has no closing quote right after.
            i += if next == Some('\\') { 3 } else { 1 };
            while i < b.len() && b[i] != '\'' {
                i += 1;
            }
            i += 1;
            out.push_str("' '");
        } else {
            out.push(c);
            i += 1;
        }
    }
    // Items compiled for tests only: each `#[cfg(test)]` and the item after it (to its `;`, or through its
    // braces).
    let mut code = out;
    while let Some(at) = code.find("#[cfg(test)]") {
        let rest: Vec<char> = code[at..].chars().collect();
        let (mut i, mut depth) = ("#[cfg(test)]".len(), 0usize);
        while i < rest.len() {
            match rest[i] {
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
            i += 1;
        }
        let end = at + rest[..(i + 1).min(rest.len())].iter().map(|c| c.len_utf8()).sum::<usize>();
        code.replace_range(at..end, "");
    }
    code
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The paths of a `use` tree or path expression starting at `s` (just after `prefix::`), each as segments
/// after the prefix: `a::b`, `{a, b::{c, d}}`, `a::*`.
fn paths_at(s: &[char], mut i: usize, prefix: &[String], out: &mut Vec<Vec<String>>) -> usize {
    let mut segs = prefix.to_vec();
    loop {
        while i < s.len() && s[i].is_whitespace() {
            i += 1;
        }
        if s.get(i) == Some(&'{') {
            i += 1;
            loop {
                while i < s.len() && (s[i].is_whitespace() || s[i] == ',') {
                    i += 1;
                }
                if i >= s.len() || s[i] == '}' {
                    return i + 1;
                }
                i = paths_at(s, i, &segs, out);
                // Skip `as name` and anything else up to the next entry.
                while i < s.len() && s[i] != ',' && s[i] != '}' {
                    i += 1;
                }
            }
        }
        let start = i;
        while i < s.len() && is_ident(s[i]) {
            i += 1;
        }
        if i > start {
            let word: String = s[start..i].iter().collect();
            match word.as_str() {
                "self" => {}
                "super" => {
                    segs.pop();
                }
                _ => segs.push(word),
            }
        }
        if s.get(i) == Some(&':') && s.get(i + 1) == Some(&':') {
            i += 2;
            continue;
        }
        out.push(segs);
        return i;
    }
}

fn graph(src: &Path) -> Graph {
    let mut files = BTreeMap::new();
    sources(src, src, &mut files);
    let modules: BTreeSet<String> = files.keys().cloned().collect();
    let join = |a: &str, b: &str| if a.is_empty() { b.to_string() } else { format!("{a}::{b}") };
    let parent = |m: &str| m.rsplit_once("::").map_or(String::new(), |(p, _)| p.to_string());
    let mut g = Graph::new();
    for (m, text) in &files {
        let code: Vec<char> = code_of(text).chars().collect();
        let children: BTreeSet<String> =
            modules.iter().filter(|c| !c.is_empty() && parent(c) == *m).map(|c| c.rsplit("::").next().unwrap().to_string()).collect();
        let mut paths: Vec<Vec<String>> = Vec::new();
        let mut i = 0;
        while i < code.len() {
            let boundary = i == 0 || !(is_ident(code[i - 1]) || code[i - 1] == ':');
            if !boundary || !is_ident(code[i]) {
                i += 1;
                continue;
            }
            let start = i;
            while i < code.len() && is_ident(code[i]) {
                i += 1;
            }
            if !(code.get(i) == Some(&':') && code.get(i + 1) == Some(&':')) {
                continue;
            }
            let word: String = code[start..i].iter().collect();
            let base: Option<Vec<String>> = match word.as_str() {
                "crate" => Some(Vec::new()),
                "super" => Some(parent(m).split("::").filter(|s| !s.is_empty()).map(String::from).collect()),
                "self" => Some(m.split("::").filter(|s| !s.is_empty()).map(String::from).collect()),
                w if children.contains(w) => Some(join(m, w).split("::").map(String::from).collect()),
                _ => None,
            };
            if let Some(base) = base {
                i = paths_at(&code, i + 2, &base, &mut paths);
            }
        }
        let edges = g.entry(m.clone()).or_default();
        for p in paths {
            // The longest module the path starts with (the root when none).
            let target = (0..=p.len()).rev().map(|n| p[..n].join("::")).find(|cand| modules.contains(cand)).unwrap_or_default();
            if target != *m {
                edges.insert(target);
            }
        }
    }
    g
}

/// Every cycle's modules (strongly connected components of more than one module), by Tarjan's algorithm.
fn cycles(g: &Graph) -> Vec<Vec<String>> {
    struct State<'a> {
        g: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(st: &mut State<'a>, v: &'a str) {
        let n = st.index.len();
        st.index.insert(v, n);
        st.low.insert(v, n);
        st.stack.push(v);
        st.on.insert(v);
        for w in st.g.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !st.index.contains_key(w) {
                visit(st, w);
                let lw = st.low[w];
                let lv = st.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if st.on.contains(w) {
                let iw = st.index[w];
                let lv = st.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if st.low[v] == st.index[v] {
            let mut comp = Vec::new();
            loop {
                let w = st.stack.pop().unwrap();
                st.on.remove(w);
                comp.push(if w.is_empty() { "(crate root)".to_string() } else { w.to_string() });
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                st.out.push(comp);
            }
        }
    }
    let mut st = State { g, index: BTreeMap::new(), low: BTreeMap::new(), stack: Vec::new(), on: BTreeSet::new(), out: Vec::new() };
    for v in g.keys() {
        if !st.index.contains_key(v.as_str()) {
            visit(&mut st, v);
        }
    }
    st.out
}

fn src_graph() -> Graph {
    graph(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"))
}

#[test]
fn the_module_graph_has_no_cycle() {
    let g = src_graph();
    assert!(g.len() > 30 && g[""].contains("controller") && g["controller"].contains("manifest"), "the graph was read: {g:?}");
    let found = cycles(&g);
    assert!(found.is_empty(), "import cycles among modules: {found:?}");
}

#[test]
fn the_bottom_layers_import_nothing_above_them() {
    let g = src_graph();
    assert!(g["cli"].is_empty(), "cli imports {:?}", g["cli"]);
    assert!(g["model"].iter().all(|t| t == "output"), "model imports {:?}", g["model"]);
    for (m, targets) in g.iter().filter(|(m, _)| *m == "encoder" || m.starts_with("encoder::")) {
        let above: Vec<&String> = targets.iter().filter(|t| !(t.starts_with("encoder") || *t == "model")).collect();
        assert!(above.is_empty(), "{m} imports {above:?} (the encoder wing takes only the model folder's declarations)");
    }
}

#[test]
fn the_reader_sees_grouped_relative_and_parent_paths_and_skips_tests_comments_and_strings() {
    let d = tempfile::tempdir().unwrap();
    let files = [
        ("lib.rs", "pub mod a;\npub mod b;\npub mod c;\npub const X: u8 = 1;\nfn f() { a::run(); }\n"),
        ("a/mod.rs", "pub mod inner;\nuse crate::{b::{self, Thing}, c as see};\nfn go() { inner::g(); }\n"),
        ("a/inner.rs", "fn g() -> u8 { super::super::X } // crate::c::nope\nconst S: &str = \"crate::c\";\n"),
        ("b.rs", "use crate::c::Y;\n#[cfg(test)]\nuse crate::a::Z;\nfn h() { let _ = r#\"crate::a\"#; let _c = 'c'; }\n"),
        ("c.rs", "pub struct Y;\n#[cfg(test)]\nmod tests {\n    use crate::a::inner;\n}\n"),
    ];
    for (name, body) in files {
        let p = d.path().join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }
    let g = graph(d.path());
    let names = |m: &str| g[m].iter().cloned().collect::<Vec<_>>();
    assert_eq!(names(""), vec!["a"], "lib.rs through its child module");
    assert_eq!(names("a"), vec!["a::inner", "b", "c"], "a grouped use, a child");
    assert_eq!(names("a::inner"), vec![""], "super::super is the root; comments and strings are not read");
    assert_eq!(names("b"), vec!["c"], "test-only items, raw strings and char literals are not read");
    assert!(names("c").is_empty(), "tests are not read");
    assert!(cycles(&g).iter().any(|c| c.contains(&"a".to_string()) && c.contains(&"(crate root)".to_string())), "{:?}", cycles(&g));
}
