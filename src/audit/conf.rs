//! Asterisk's `.conf` format, read the way `main/config.c` reads it, with the file and line
//! of every variable kept for the audit's findings.
//!
//! What Asterisk does and we follow: `;` comments (`\;` is a literal `;`), `;-- … --;` block
//! comments (nesting), `[name]` sections with options right after the `]`: `(!)` a template,
//! `(+)` adding to an earlier section, `(tpl,…)` inheriting from earlier sections (names not
//! trimmed, as Asterisk does not trim them); `name = value`, `name => value`, `name += value`;
//! `#include` / `#tryinclude` with paths relative to the configuration folder and glob
//! patterns, at most 10 deep. `#exec` is not run (the audit never executes anything).
//! Anything Asterisk would refuse to load is reported as a problem rather than guessed at.

use std::path::{Path, PathBuf};

const MAX_DEPTH: usize = 10;
/// Asterisk skips longer lines; so do we.
const MAX_LINE: usize = 8192;
/// Bounds what a hostile or broken tree can make us read.
const MAX_FILE: u64 = 8 * 1024 * 1024;
/// Files read for one top-level file, includes counted (generous: some sites keep one file per
/// endpoint). Depth alone does not bound the work: a file including two others twice each,
/// ten deep, would be a million reads.
const MAX_FILES: usize = 4096;

/// Where the configuration files come from: the filesystem for the audit, memory for the fuzz
/// target (so that it runs at parser speed).
pub trait Source {
    /// The file's bytes; `Ok(None)` past [`MAX_FILE`] bytes.
    fn read(&self, path: &Path) -> std::io::Result<Option<Vec<u8>>>;
    fn is_file(&self, path: &Path) -> bool;
    /// The names in folder `dir` (files or not), unsorted.
    fn names(&self, dir: &Path) -> Vec<String>;
}

/// The real files.
#[derive(Debug, Clone, Copy, Default)]
pub struct Disk;

impl Source for Disk {
    /// The limit applies to what is read, not to the size the file claims: `/proc` files
    /// claim 0 bytes.
    fn read(&self, path: &Path) -> std::io::Result<Option<Vec<u8>>> {
        use std::io::Read;
        let mut bytes = Vec::new();
        std::fs::File::open(path)?
            .take(MAX_FILE + 1)
            .read_to_end(&mut bytes)?;
        Ok((bytes.len() as u64 <= MAX_FILE).then_some(bytes))
    }

    fn is_file(&self, path: &Path) -> bool {
        path.is_file()
    }

    fn names(&self, dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Var {
    pub name: String,
    pub value: String,
    /// Written as `name => value`.
    pub object: bool,
    pub file: PathBuf,
    pub line: usize,
    /// Copied from a template.
    pub inherited: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Category {
    pub name: String,
    pub template: bool,
    pub file: PathBuf,
    pub line: usize,
    pub vars: Vec<Var>,
}

impl Category {
    /// The value in force for options applied in order (pjsip, manager): the last one.
    pub fn get(&self, name: &str) -> Option<&Var> {
        self.vars
            .iter()
            .rev()
            .find(|v| v.name.eq_ignore_ascii_case(name))
    }

    /// The first one, as `ast_variable_retrieve` and pjsip's `type` lookup see it.
    pub fn first(&self, name: &str) -> Option<&Var> {
        self.vars.iter().find(|v| v.name.eq_ignore_ascii_case(name))
    }

    pub fn value(&self, name: &str) -> Option<&str> {
        self.get(name).map(|v| v.value.as_str())
    }

    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Var> + 'a {
        self.vars
            .iter()
            .filter(move |v| v.name.eq_ignore_ascii_case(name))
    }
}

/// Something that makes Asterisk refuse (or partly ignore) the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub line: usize,
    pub message: String,
}

#[derive(Debug, Default, Clone)]
pub struct Conf {
    pub categories: Vec<Category>,
    pub problems: Vec<Problem>,
}

impl Conf {
    /// Non-template sections.
    pub fn sections(&self) -> impl Iterator<Item = &Category> {
        self.categories.iter().filter(|c| !c.template)
    }

    pub fn section(&self, name: &str) -> Option<&Category> {
        self.sections().find(|c| c.name.eq_ignore_ascii_case(name))
    }
}

/// Loads `name` from `dir`; `None` when the file does not exist.
pub fn load(dir: &Path, name: &str) -> Option<Conf> {
    load_from(&Disk, dir, name)
}

/// As [`load`], reading through `source`.
pub fn load_from(source: &dyn Source, dir: &Path, name: &str) -> Option<Conf> {
    let path = dir.join(name);
    if !source.is_file(&path) {
        return None;
    }
    let mut p = Parser {
        source,
        dir: dir.to_path_buf(),
        conf: Conf::default(),
        current: None,
        comment_depth: 0,
        files_read: 0,
        open: Vec::new(),
    };
    p.file(&path, 0);
    Some(p.conf)
}

struct Parser<'s> {
    source: &'s dyn Source,
    dir: PathBuf,
    conf: Conf,
    /// Index of the section variables go to.
    current: Option<usize>,
    comment_depth: usize,
    files_read: usize,
    /// The files being read, outermost first: a file that includes itself (directly or
    /// through others) is reported, not read again.
    open: Vec<PathBuf>,
}

impl Parser<'_> {
    fn problem(&mut self, file: &Path, line: usize, message: impl Into<String>) {
        self.conf.problems.push(Problem {
            file: file.to_path_buf(),
            line,
            message: message.into(),
        });
    }

    fn file(&mut self, path: &Path, depth: usize) {
        if self.files_read >= MAX_FILES {
            self.problem(
                path,
                0,
                format!("more than {MAX_FILES} files read through #include; not read"),
            );
            return;
        }
        if self.open.iter().any(|p| p == path) {
            self.problem(
                path,
                0,
                "includes itself (Asterisk refuses the file at its include depth limit); not read again",
            );
            return;
        }
        self.files_read += 1;
        let text = match self.source.read(path) {
            Ok(Some(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
            Ok(None) => {
                self.problem(path, 0, "file larger than 8 MiB; not read");
                return;
            }
            Err(e) => {
                self.problem(path, 0, format!("cannot read: {e}"));
                return;
            }
        };
        self.open.push(path.to_path_buf());
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            if raw.len() >= MAX_LINE {
                self.problem(path, n, "line longer than Asterisk reads; skipped");
                continue;
            }
            let line = self.strip_comments(raw);
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix('#') {
                self.directive(rest, path, n, depth);
            } else if line.starts_with('[') {
                self.header(line, path, n);
            } else {
                self.variable(line, path, n);
            }
        }
        self.open.pop();
    }

    /// Drops `;` comments and block comments, keeping `\;` as `;`.
    fn strip_comments(&mut self, raw: &str) -> String {
        let b = raw.as_bytes();
        let mut out = String::with_capacity(raw.len());
        let mut i = 0;
        while i < b.len() {
            if self.comment_depth > 0 {
                if raw[i..].starts_with("--;") {
                    self.comment_depth -= 1;
                    i += 3;
                } else if raw[i..].starts_with(";--") && !raw[i + 3..].starts_with('-') {
                    self.comment_depth += 1;
                    i += 3;
                } else {
                    i += raw[i..].chars().next().map_or(1, char::len_utf8);
                }
                continue;
            }
            if raw[i..].starts_with("\\;") {
                out.push(';');
                i += 2;
                continue;
            }
            if b[i] == b';' {
                if raw[i..].starts_with(";--") && !raw[i + 3..].starts_with('-') {
                    self.comment_depth = (self.comment_depth + 1).min(128);
                    i += 3;
                    continue;
                }
                break;
            }
            let c = raw[i..].chars().next().unwrap_or(' ');
            out.push(c);
            i += c.len_utf8();
        }
        out
    }

    fn directive(&mut self, rest: &str, path: &Path, n: usize, depth: usize) {
        let word_len = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let (word, arg) = rest.split_at(word_len);
        let arg = arg.trim();
        let arg = strip_balanced(arg);
        match word.to_ascii_lowercase().as_str() {
            kind @ ("include" | "tryinclude") => {
                if depth + 1 >= MAX_DEPTH {
                    self.problem(path, n, "includes nested more than 10 deep");
                    return;
                }
                let target = if Path::new(arg).is_absolute() {
                    PathBuf::from(arg)
                } else {
                    self.dir.join(arg)
                };
                let files = expand_glob(self.source, &target);
                if files.is_empty() {
                    if kind == "include" {
                        self.problem(
                            path,
                            n,
                            format!(
                                "#include {arg}: no such file (Asterisk refuses to load this file)"
                            ),
                        );
                    }
                    return;
                }
                // Asterisk parses an included file with its own comment state, and the lines after
                // the #include go back to the section they were in.
                let (current, depth_before) = (self.current, self.comment_depth);
                for f in files {
                    self.comment_depth = 0;
                    self.file(&f, depth + 1);
                }
                self.current = current;
                self.comment_depth = depth_before;
            }
            "exec" => self.problem(
                path,
                n,
                format!("#exec {arg} is not evaluated by the audit"),
            ),
            other => self.problem(path, n, format!("unknown directive #{other}")),
        }
    }

    fn header(&mut self, line: &str, path: &Path, n: usize) {
        let Some(close) = line.find(']') else {
            self.problem(path, n, "section header without `]`");
            return;
        };
        let name = line[1..close].to_string();
        let after = &line[close + 1..];
        let mut template = false;
        let mut add = false;
        let mut bases = Vec::new();
        if let Some(opts) = after.strip_prefix('(') {
            let Some(end) = opts.find(')') else {
                self.problem(path, n, "section options without `)`");
                return;
            };
            for opt in opts[..end].split(',') {
                match opt {
                    "!" => template = true,
                    // `+` alone, or `+type=aor` with a filter (not evaluated: the first match).
                    o if o.starts_with('+') => add = true,
                    "" => {}
                    base => bases.push(base.to_string()),
                }
            }
        }
        if add {
            match self
                .conf
                .categories
                .iter()
                .position(|c| !c.template && c.name.eq_ignore_ascii_case(&name))
            {
                Some(i) => self.current = Some(i),
                None => {
                    self.problem(
                        path,
                        n,
                        format!("[{name}](+) adds to a section that does not exist"),
                    );
                    self.current = None;
                }
            }
            return;
        }
        let mut cat = Category {
            name: name.clone(),
            template,
            file: path.to_path_buf(),
            line: n,
            vars: Vec::new(),
        };
        for base in bases {
            // ast_category_get: the first section of that name, template or not.
            match self
                .conf
                .categories
                .iter()
                .find(|c| c.name.eq_ignore_ascii_case(&base))
            {
                Some(b) => cat.vars.extend(b.vars.iter().cloned().map(|mut v| {
                    v.inherited = true;
                    v
                })),
                None => self.problem(
                    path,
                    n,
                    format!("[{name}] inherits from [{base}], which is not defined before it"),
                ),
            }
        }
        self.conf.categories.push(cat);
        self.current = Some(self.conf.categories.len() - 1);
    }

    fn variable(&mut self, line: &str, path: &Path, n: usize) {
        let Some(eq) = line.find('=') else {
            self.problem(path, n, format!("not a `name = value` line: {line}"));
            return;
        };
        let (mut name, mut value) = (line[..eq].trim(), &line[eq + 1..]);
        let mut object = false;
        if let Some(v) = value.strip_prefix('>') {
            object = true;
            value = v;
        }
        let mut append = false;
        if let Some(n) = name.strip_suffix('+') {
            append = true;
            name = n.trim_end();
        }
        let value = value.trim();
        let Some(idx) = self.current else {
            self.problem(path, n, "variable before any [section]");
            return;
        };
        let cat = &mut self.conf.categories[idx];
        if append {
            if let Some(v) = cat.vars.iter_mut().rev().find(|v| v.name == name) {
                v.value.push_str(value);
                return;
            }
        }
        cat.vars.push(Var {
            name: name.to_string(),
            value: value.to_string(),
            object,
            file: path.to_path_buf(),
            line: n,
            inherited: false,
        });
    }
}

fn strip_balanced(arg: &str) -> &str {
    for (open, close) in [('"', '"'), ('<', '>')] {
        if arg.len() >= 2 && arg.starts_with(open) && arg.ends_with(close) {
            return &arg[1..arg.len() - 1];
        }
    }
    arg
}

/// `*` and `?` in the last path component, as `glob()` expands them; sorted like glob.
fn expand_glob(source: &dyn Source, path: &Path) -> Vec<PathBuf> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if !name.contains(['*', '?']) {
        return if source.is_file(path) {
            vec![path.to_path_buf()]
        } else {
            Vec::new()
        };
    }
    let parent = path.parent().unwrap_or(Path::new("."));
    let mut out: Vec<PathBuf> = source
        .names(parent)
        .into_iter()
        .filter(|n| !n.starts_with('.') && wildcard(name, n))
        .map(|n| parent.join(n))
        .filter(|p| source.is_file(p))
        .collect();
    out.sort();
    out
}

fn wildcard(pattern: &str, text: &str) -> bool {
    crate::pattern::wildcard(pattern, text, '*', '?')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let p = dir.path().join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        dir
    }

    #[test]
    fn sections_templates_and_inheritance() {
        let d = tree(&[(
            "pjsip.conf",
            "; top comment\n[tpl](!)\ntype=endpoint\nmedia_encryption=dtls\n\n[1001](tpl)\nmedia_encryption = no ; override\nauth=>1001\n[1001](+)\nallow=ulaw\n",
        )]);
        let c = load(d.path(), "pjsip.conf").unwrap();
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        assert_eq!(c.sections().count(), 1);
        let e = c.section("1001").unwrap();
        assert_eq!(e.value("type"), Some("endpoint"));
        assert_eq!(e.value("media_encryption"), Some("no"), "later lines win");
        assert_eq!(e.first("media_encryption").unwrap().value, "dtls");
        assert!(e.first("media_encryption").unwrap().inherited);
        assert_eq!(e.get("media_encryption").unwrap().line, 7);
        assert!(e.get("auth").unwrap().object);
        assert_eq!(e.value("allow"), Some("ulaw"));
    }

    #[test]
    fn exec_is_reported_never_run_and_big_files_are_not_read() {
        let d = tree(&[("x.conf", "")]);
        let marker = d.path().join("ran");
        let text = format!("[a]\n#exec /bin/touch {}\nx=1\n", marker.display());
        std::fs::write(d.path().join("x.conf"), text).unwrap();
        let c = load(d.path(), "x.conf").unwrap();
        assert!(
            c.problems.iter().any(|p| p.message.contains("#exec")),
            "{:?}",
            c.problems
        );
        assert!(!marker.exists(), "#exec ran");
        assert_eq!(c.section("a").and_then(|s| s.value("x")), Some("1"));
        // The limit is on bytes read, whatever size the file claims.
        let big = vec![b';'; MAX_FILE as usize + 1];
        std::fs::write(d.path().join("big.conf"), big).unwrap();
        let c = load(d.path(), "big.conf").unwrap();
        assert!(c.problems[0].message.contains("larger than 8 MiB"));
        assert_eq!(
            Disk.read(&d.path().join("x.conf"))
                .unwrap()
                .map(|b| !b.is_empty()),
            Some(true)
        );
    }

    #[test]
    fn include_cycles_and_fan_out_are_bounded() {
        let d = tree(&[
            (
                "pjsip.conf",
                "#include pjsip.conf\n#include a.conf\n[top]\nx=1\n",
            ),
            ("a.conf", "#include pjsip.conf\n[a]\ny=1\n"),
        ]);
        let c = load(d.path(), "pjsip.conf").unwrap();
        let cycles = c
            .problems
            .iter()
            .filter(|p| p.message.contains("includes itself"))
            .count();
        assert_eq!(cycles, 2, "{:?}", c.problems);
        assert_eq!(c.categories.len(), 2, "each file read once");
        // No cycle, but each file includes the next three times: the depth limit alone would
        // still allow 3^10 reads.
        let files: Vec<(String, String)> = (0..12)
            .map(|i| {
                let next = format!("#include f{}.conf\n", i + 1);
                (
                    format!("f{i}.conf"),
                    format!("{next}{next}{next}[s{i}]\nx=1\n"),
                )
            })
            .collect();
        let refs: Vec<(&str, &str)> = files
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        let d = tree(&refs);
        let c = load(d.path(), "f0.conf").unwrap();
        assert_eq!(c.categories.len(), MAX_FILES);
        assert!(c
            .problems
            .iter()
            .any(|p| p.message.contains("files read through #include")));
    }

    #[test]
    fn comments_escapes_and_appends() {
        let d = tree(&[(
            "x.conf",
            "[a]\nsecret = pa\\;ss ; comment\n;-- block\n[b]\nhidden=1\n--;\nlist = a\nlist += ,b\n",
        )]);
        let c = load(d.path(), "x.conf").unwrap();
        let a = c.section("a").unwrap();
        assert_eq!(a.value("secret"), Some("pa;ss"));
        assert_eq!(a.value("list"), Some("a,b"));
        assert!(c.section("b").is_none());
        assert!(a.get("hidden").is_none());
    }

    #[test]
    fn includes_relative_to_the_folder_with_globs() {
        let d = tree(&[
            (
                "pjsip.conf",
                "[global]\ntype=global\n#include \"pjsip.d/*.conf\"\n#tryinclude missing.conf\n",
            ),
            ("pjsip.d/b.conf", "[b]\ntype=endpoint\n"),
            ("pjsip.d/a.conf", "[a]\ntype=endpoint\n"),
        ]);
        let c = load(d.path(), "pjsip.conf").unwrap();
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        let names: Vec<&str> = c.sections().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["global", "a", "b"]);
        assert!(c.section("a").unwrap().file.ends_with("pjsip.d/a.conf"));
    }

    #[test]
    fn lines_after_an_include_go_back_to_their_section() {
        let d = tree(&[
            (
                "manager.conf",
                "[general]\nenabled=yes\n#include users.conf\nbindaddr=0.0.0.0\n",
            ),
            ("users.conf", "[alice]\nsecret=x\n;-- never closed\n"),
        ]);
        let c = load(d.path(), "manager.conf").unwrap();
        assert_eq!(
            c.section("general").unwrap().value("bindaddr"),
            Some("0.0.0.0")
        );
        assert!(c.section("alice").unwrap().get("bindaddr").is_none());
    }

    #[test]
    fn what_asterisk_would_refuse_is_reported() {
        let d = tree(&[(
            "x.conf",
            "orphan=1\n[a](nope)\n[b](+)\n[c]\n#include gone.conf\nnot a line\n#include x.conf\n",
        )]);
        let c = load(d.path(), "x.conf").unwrap();
        let msgs: Vec<&str> = c.problems.iter().map(|p| p.message.as_str()).collect();
        assert!(
            msgs.iter().any(|m| m.contains("before any [section]")),
            "{msgs:?}"
        );
        assert!(
            msgs.iter().any(|m| m.contains("inherits from [nope]")),
            "{msgs:?}"
        );
        assert!(
            msgs.iter().any(|m| m.contains("does not exist")),
            "{msgs:?}"
        );
        assert!(msgs.iter().any(|m| m.contains("gone.conf")), "{msgs:?}");
        assert!(
            msgs.iter().any(|m| m.contains("not a `name = value`")),
            "{msgs:?}"
        );
        assert!(
            msgs.iter().any(|m| m.contains("includes itself")),
            "{msgs:?}"
        );
        assert!(load(d.path(), "absent.conf").is_none());
    }
}
