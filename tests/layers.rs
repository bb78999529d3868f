//! The layer rule of docs/ARCHITECTURE.md, enforced: every top-level module of `src/` may name
//! (through `crate::…`) only modules listed before it in `LAYERS`. A module missing from the
//! list fails the test, so a new one gets a deliberate place. Test code (`#[cfg(test)]` blocks
//! and `*_tests.rs` files) is exempt: tests may reach for anything.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Lowest first. Within a group the order matters too: a module may import one listed before
/// it, never one after it, which also rules out every import circle between top-level modules.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "base helpers",
        &[
            "clock",
            "ids",
            "pattern",
            "net",
            "rate",
            "tls",
            "problems",
            "subsystem",
        ],
    ),
    (
        "storage, telemetry, the HTTP server",
        &["metrics", "httpd", "store", "vault", "journal"],
    ),
    (
        "features",
        &[
            "bans",
            "mail",
            "dialing",
            "auth",
            "recordings",
            "realtime",
            "ami",
            "audit",
            "sip",
        ],
    ),
    ("the loader", &["config"]),
    ("runtime settings over the loaded file", &["settings"]),
    ("state", &["app", "init"]),
    ("front ends", &["web", "daemon"]),
    ("the command", &["cli"]),
];

/// Imports the order alone would allow but the design forbids.
const FORBIDDEN: &[(&str, &str, &str)] = &[(
    "cli",
    "web",
    "the CLI and the HTTP handlers share operations and views that live in the features",
)];

fn rank() -> BTreeMap<&'static str, usize> {
    LAYERS
        .iter()
        .flat_map(|(_, mods)| mods.iter())
        .enumerate()
        .map(|(i, m)| (*m, i))
        .collect()
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to, or None for the crate roots and test files.
fn top_module(path: &Path) -> Option<String> {
    let rel = path.strip_prefix(src_dir()).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?.to_owned();
    let stem = path.file_stem()?.to_str()?;
    if stem.ends_with("_tests") || stem == "tests" {
        return None;
    }
    if rel.components().count() == 1 {
        let name = first.trim_end_matches(".rs").to_owned();
        return (name != "lib" && name != "main").then_some(name);
    }
    Some(first)
}

/// The module path of a file below `src/` (`src/auth/mfa/admin.rs` is `auth::mfa::admin`,
/// `src/auth/mod.rs` is `auth`), which `super::` climbs from.
fn module_path(path: &Path) -> Vec<String> {
    let rel = path.strip_prefix(src_dir()).unwrap_or(path);
    let mut parts: Vec<String> = rel
        .components()
        .filter_map(|c| {
            c.as_os_str()
                .to_str()
                .map(|s| s.trim_end_matches(".rs").to_owned())
        })
        .collect();
    if parts.last().is_some_and(|l| l == "mod") {
        parts.pop();
    }
    parts
}

/// Source with comments and the contents of string and char literals blanked, so that braces
/// and `crate::` inside them count for nothing. Line structure is kept for error messages.
fn code_only(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    let blank = |out: &mut Vec<u8>, c: u8| out.push(if c == b'\n' { b'\n' } else { b' ' });
    while i < b.len() {
        let c = b[i];
        if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                out.push(b' ');
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                    depth += 1;
                    out.extend_from_slice(b"  ");
                    i += 2;
                } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                    depth -= 1;
                    out.extend_from_slice(b"  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, b[i]);
                    i += 1;
                }
            }
        } else if (c == b'r' || c == b'b')
            && !prev_is_ident(b, i)
            && raw_string_start(b, i).is_some()
        {
            let (hashes, open) = raw_string_start(b, i).unwrap_or_default();
            out.extend(std::iter::repeat_n(b' ', open - i));
            i = open;
            let mut close = vec![b'"'];
            close.extend(std::iter::repeat_n(b'#', hashes));
            while i < b.len() && !b[i..].starts_with(&close) {
                blank(&mut out, b[i]);
                i += 1;
            }
            out.extend(std::iter::repeat_n(b' ', close.len().min(b.len() - i)));
            i += close.len();
        } else if c == b'"' {
            out.push(b' ');
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    blank(&mut out, b[i]);
                    i += 1;
                }
                if i < b.len() {
                    blank(&mut out, b[i]);
                    i += 1;
                }
            }
            out.push(b' ');
            i += 1;
        } else if c == b'\'' {
            // A char literal ('x', '\n', '\u{..}') or a lifetime ('a): only the former is blanked.
            let end = if b.get(i + 1) == Some(&b'\\') {
                b[i + 2..]
                    .iter()
                    .position(|&x| x == b'\'')
                    .map(|p| i + 2 + p)
            } else {
                let ch_len = std::str::from_utf8(&b[i + 1..(i + 5).min(b.len())])
                    .ok()
                    .or_else(|| std::str::from_utf8(&b[i + 1..(i + 2).min(b.len())]).ok())
                    .and_then(|s| s.chars().next())
                    .map_or(1, char::len_utf8);
                (b.get(i + 1 + ch_len) == Some(&b'\'')).then_some(i + 1 + ch_len)
            };
            match end {
                Some(e) => {
                    out.extend(std::iter::repeat_n(b' ', e + 1 - i));
                    i = e + 1;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn prev_is_ident(b: &[u8], i: usize) -> bool {
    i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')
}

/// `r"`, `r#"`, `br"`, `b"`… : the number of hashes and the index just past the opening quote.
fn raw_string_start(b: &[u8], i: usize) -> Option<(usize, usize)> {
    let mut j = i;
    if b[j] == b'b' {
        j += 1;
        if b.get(j) == Some(&b'"') {
            return Some((0, j + 1));
        }
    }
    if b.get(j) != Some(&b'r') {
        return None;
    }
    j += 1;
    let mut hashes = 0;
    while b.get(j) == Some(&b'#') {
        hashes += 1;
        j += 1;
    }
    (b.get(j) == Some(&b'"')).then_some((hashes, j + 1))
}

/// Removes every item gated by `#[cfg(test)]` (a whole `mod tests { … }` or a single fn).
fn without_test_items(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        // The gated item ends at its matching closing brace, or at `;` for `mod x;`.
        let mut depth = 0usize;
        let mut end = after.len();
        for (k, ch) in after.char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        end = k + 1;
                        break;
                    }
                }
                ';' if depth == 0 => {
                    end = k + 1;
                    break;
                }
                _ => {}
            }
        }
        out.extend(
            after[..end]
                .chars()
                .map(|c| if c == '\n' { '\n' } else { ' ' }),
        );
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// Every top-level module named by a `crate::` path, or by a `super::` chain that climbs to
/// the crate root, with the line it is named on. `module` is the file's module path.
fn crate_references(code: &str, module: &[String]) -> Vec<(String, usize)> {
    let b = code.as_bytes();
    let mut found = Vec::new();
    let mut from = 0;
    loop {
        let next_crate = code[from..].find("crate::").map(|p| (from + p, true));
        let next_super = code[from..].find("super::").map(|p| (from + p, false));
        let Some((at, is_crate)) = [next_crate, next_super].into_iter().flatten().min() else {
            break;
        };
        let after_keyword = at + "crate::".len();
        if at > 0 && (b[at - 1].is_ascii_alphanumeric() || b[at - 1] == b'_' || b[at - 1] == b':') {
            from = after_keyword;
            continue;
        }
        let mut cursor = after_keyword;
        if !is_crate {
            // `super::super::x` from `a::b::c` reaches `a::x`; only a chain that climbs past
            // the top-level module names another top-level module.
            let mut ups = 1;
            while code[cursor..].starts_with("super::") {
                ups += 1;
                cursor += "super::".len();
            }
            if ups < module.len() {
                from = cursor;
                continue;
            }
        }
        from = cursor;
        let line = code[..at].matches('\n').count() + 1;
        let rest = code[cursor..].trim_start();
        if let Some(group) = rest.strip_prefix('{') {
            // `use crate::{a::b, c, d::{e, f}}`: the first segment of each top-level item.
            let mut depth = 0usize;
            let mut item_start = true;
            let mut word = String::new();
            for ch in group.chars() {
                match ch {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && (c.is_alphanumeric() || c == '_') => word.push(c),
                    _ => {
                        if item_start && !word.is_empty() {
                            found.push((std::mem::take(&mut word), line));
                            item_start = false;
                        }
                    }
                }
            }
            if !word.is_empty() {
                found.push((word, line));
            }
        } else {
            let word: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !word.is_empty() {
                found.push((word, line));
            }
        }
    }
    found
}

#[test]
fn every_import_points_down_the_layers() {
    let rank = rank();
    let mut files = Vec::new();
    rust_files(&src_dir(), &mut files);
    files.sort();
    let mut problems = Vec::new();
    let mut seen_modules = BTreeSet::new();
    for path in &files {
        let Some(module) = top_module(path) else {
            continue;
        };
        seen_modules.insert(module.clone());
        let Some(&own) = rank.get(module.as_str()) else {
            problems.push(format!(
                "src/{module} is not in LAYERS (tests/layers.rs): give it its place"
            ));
            continue;
        };
        let src = std::fs::read_to_string(path).expect("read source");
        let code = without_test_items(&code_only(&src));
        let shown = path
            .strip_prefix(src_dir().parent().expect("root"))
            .unwrap_or(path);
        for (target, line) in crate_references(&code, &module_path(path)) {
            if target == module || target == "self" || target == "super" {
                continue;
            }
            let Some(&theirs) = rank.get(target.as_str()) else {
                // A module the loop above reports as missing; lib.rs has no items of its own
                // (checked below), so there is nothing else a path could name.
                continue;
            };
            if theirs > own {
                problems.push(format!(
                    "{}:{line}: {module} imports {target}, which is above it",
                    shown.display()
                ));
            }
            if let Some((_, _, why)) = FORBIDDEN
                .iter()
                .find(|(from, to, _)| *from == module && *to == target)
            {
                problems.push(format!(
                    "{}:{line}: {module} imports {target}: {why}",
                    shown.display()
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "the layer rule (docs/ARCHITECTURE.md) is broken:\n{}",
        problems.join("\n")
    );
    // lib.rs declares modules and nothing else: a re-export there (`pub use web::X`) would let
    // any layer reach `web` as `crate::X`, past the check above.
    let lib = code_only(&std::fs::read_to_string(src_dir().join("lib.rs")).expect("lib.rs"));
    for (n, line) in lib.lines().enumerate() {
        let line = line.trim_start();
        if line.starts_with("use ") || line.starts_with("pub use ") || line.contains(" use ") {
            problems.push(format!(
                "src/lib.rs:{}: lib.rs must only declare modules",
                n + 1
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // Every listed module still exists, so the list cannot rot into allowing anything.
    let stale: Vec<_> = rank
        .keys()
        .filter(|m| !seen_modules.contains(**m))
        .collect();
    assert!(
        stale.is_empty(),
        "LAYERS names modules that are gone: {stale:?}"
    );
}

#[test]
fn test_files_are_compiled_only_for_tests() {
    // `*_tests.rs` files are exempt from the rule above, so each must really be test code:
    // declared right after `#[cfg(test)]`.
    let mut files = Vec::new();
    rust_files(&src_dir(), &mut files);
    let mut problems = Vec::new();
    for path in &files {
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        if !(stem.ends_with("_tests") || stem == "tests") {
            continue;
        }
        let file_name = path
            .file_name()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        let dir = path.parent().expect("parent");
        let declared = files.iter().filter(|f| f.parent() == Some(dir)).any(|f| {
            let src = std::fs::read_to_string(f).unwrap_or_default();
            let lines: Vec<&str> = src.lines().collect();
            lines.iter().enumerate().any(|(i, l)| {
                let l = l.trim();
                let names_it = l == format!("#[path = \"{file_name}\"]")
                    || l == format!("mod {stem};")
                    || l == format!("pub mod {stem};");
                names_it
                    && lines[i.saturating_sub(2)..i]
                        .iter()
                        .any(|p| p.trim() == "#[cfg(test)]")
            })
        });
        if !declared {
            problems.push(format!(
                "{} is not declared under #[cfg(test)] in its folder",
                path.display()
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_scanner_sees_what_it_must() {
    // The checker itself: these would be wrong answers that let a cycle through.
    let src = r##"
use crate::{alpha::x, beta::{y, z}, gamma};
fn f() { let s = "crate::hidden"; let c = '{'; let r = r#"crate::raw"#; crate::delta::g(); }
// crate::commented
fn g() { super::sibling::h(); super::super::epsilon::k(); $crate::zeta::m(); }
#[cfg(test)]
mod tests { use crate::omega; }
"##;
    let code = without_test_items(&code_only(src));
    let module = ["feature".to_owned(), "file".to_owned()];
    let names: Vec<String> = crate_references(&code, &module)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(
        names,
        ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"]
    );
}
