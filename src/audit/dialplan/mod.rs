//! `extensions.conf` as `pbx/pbx_config.c` loads it, on top of the [`conf`](super::conf)
//! reader (includes, comments, templates): every section but `[general]` and `[globals]` is a
//! context (sections of the same name add to one context); `exten => name[/cid],priority,App(args)`
//! with priorities `1`, `n`, `s`, `n(label)`, `hint`, `label` and `+offset`; `same =>`
//! continuing the previous `exten`; `include => context[,times]`; `switch`/`lswitch`/`eswitch =>
//! Module/data`; `ignorepat =>`. Each entry keeps its file and line. What pbx_config warns about
//! and skips is a [`Problem`]. `[globals]` variables are substituted where pbx_config
//! substitutes them (extension names, includes) and where the checks need a value (`Dial`
//! arguments).

pub mod exten;
pub mod reach;
pub mod rules;

use std::collections::HashMap;
use std::path::PathBuf;

use super::conf::{Category, Conf, Problem};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Priority {
    Hint,
    Number(i64),
}

/// One `exten =>` or `same =>` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The extension's name or pattern (`_X.`), without the caller-ID part.
    pub extension: String,
    /// The caller-ID match after `/`, if any.
    pub callerid: Option<String>,
    pub priority: Priority,
    pub label: Option<String>,
    /// The application (for a hint: the device string).
    pub app: String,
    /// What is between the first `(` and the last `)`.
    pub args: String,
    pub file: PathBuf,
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Include {
    pub context: String,
    /// The time range after the first `,` (or `|`), if any.
    pub times: Option<String>,
    pub file: PathBuf,
    pub line: usize,
}

/// `switch => Module/data` (also `lswitch`, `eswitch`): extensions looked up elsewhere at
/// call time, which the audit cannot see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Switch {
    pub kind: String,
    pub module: String,
    pub data: String,
    pub file: PathBuf,
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ignorepat {
    pub pattern: String,
    pub file: PathBuf,
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    pub name: String,
    /// Where its first section starts.
    pub file: PathBuf,
    pub line: usize,
    pub steps: Vec<Step>,
    pub includes: Vec<Include>,
    pub switches: Vec<Switch>,
    pub ignorepats: Vec<Ignorepat>,
}

#[derive(Debug, Clone, Default)]
pub struct Dialplan {
    pub contexts: Vec<Context>,
    /// `[globals]`, in order (a later value wins).
    pub globals: Vec<(String, String)>,
    pub problems: Vec<Problem>,
    /// `globals` by name, the last value of each: `expand` runs on every step's arguments,
    /// and a large `[globals]` must not make that quadratic.
    global_values: HashMap<String, String>,
}

impl Dialplan {
    /// Context names are case-sensitive in Asterisk (`ast_context_find`).
    pub fn context(&self, name: &str) -> Option<&Context> {
        self.contexts.iter().find(|c| c.name == name)
    }

    pub fn global(&self, name: &str) -> Option<&str> {
        self.global_values.get(name).map(String::as_str)
    }

    /// `text` with every `${NAME}` of a global variable replaced by its value (one pass, as
    /// far as the audit needs: channel variables are unknown here and stay as written).
    pub fn expand(&self, text: &str) -> String {
        if self.globals.is_empty() || !text.contains("${") {
            return text.to_string();
        }
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let name_len = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            match (
                after[name_len..].starts_with('}'),
                self.global(&after[..name_len]),
            ) {
                (true, Some(v)) => {
                    out.push_str(v);
                    rest = &after[name_len + 1..];
                }
                _ => {
                    out.push_str("${");
                    rest = after;
                }
            }
        }
        out.push_str(rest);
        out
    }
}

/// Reads the dialplan out of a loaded `extensions.conf`.
pub fn read(conf: &Conf) -> Dialplan {
    let mut plan = Dialplan::default();
    for g in conf
        .sections()
        .filter(|c| c.name.eq_ignore_ascii_case("globals"))
    {
        for v in &g.vars {
            let value = plan.expand(&v.value);
            plan.global_values.insert(v.name.clone(), value.clone());
            plan.globals.push((v.name.clone(), value));
        }
    }
    let mut index: HashMap<String, usize> = HashMap::new();
    // Per context, across its sections: ast_findlabel_extension2 looks a label up in the
    // whole context as loaded so far, earlier sections of the same name included.
    let mut labels: Vec<Labels> = Vec::new();
    for cat in conf.sections().filter(|c| {
        !c.name.eq_ignore_ascii_case("general") && !c.name.eq_ignore_ascii_case("globals")
    }) {
        let i = *index.entry(cat.name.clone()).or_insert_with(|| {
            plan.contexts.push(Context {
                name: cat.name.clone(),
                file: cat.file.clone(),
                line: cat.line,
                steps: Vec::new(),
                includes: Vec::new(),
                switches: Vec::new(),
                ignorepats: Vec::new(),
            });
            labels.push(HashMap::new());
            plan.contexts.len() - 1
        });
        section(&mut plan, i, cat, &mut labels[i]);
    }
    plan
}

/// A context's labels: (extension, label) → priority, for a priority given as a label.
type Labels = HashMap<(String, String), i64>;

/// pbx_config's number for a hint (`PRIORITY_HINT`): it becomes the last priority like any
/// other, so an `n` right after a hint is 0 and dropped.
const PRIORITY_HINT: i64 = -1;

/// One section's lines into context `i`. The continuation (`same`, `n`) starts afresh in
/// each section, as in pbx_config; labels are the context's.
fn section(plan: &mut Dialplan, i: usize, cat: &Category, labels: &mut Labels) {
    let mut last_ext: Option<String> = None;
    let mut last_pri: Option<i64> = None;
    for v in &cat.vars {
        let problem = |message: String| Problem {
            file: v.file.clone(),
            line: v.line,
            message,
        };
        let name = v.name.to_ascii_lowercase();
        if name.starts_with("same") || name == "exten" {
            let (ext, rest) = if name == "exten" {
                let (ext, rest) = split_first(&v.value);
                let ext = plan.expand(ext);
                last_ext = Some(ext.clone());
                (ext, rest)
            } else {
                match &last_ext {
                    Some(e) => (e.clone(), Some(v.value.as_str())),
                    None => {
                        plan.problems.push(problem(format!(
                            "`{} =>` with no `exten =>` before it in [{}]; Asterisk skips it",
                            v.name, cat.name
                        )));
                        continue;
                    }
                }
            };
            let (extension, callerid) = match ext.split_once('/') {
                Some((e, cid)) => (e.to_string(), Some(cid.to_string())),
                None => (ext, None),
            };
            if extension.is_empty() {
                plan.problems.push(problem(
                    "`exten =>` without an extension; Asterisk skips it".into(),
                ));
                continue;
            }
            let (pri, rest) = match rest {
                Some(r) => {
                    let (p, r) = r.split_once(',').map_or((r, None), |(p, r)| (p, Some(r)));
                    (p.trim(), r)
                }
                None => ("", None),
            };
            let (pri, label) = match pri.split_once('(') {
                Some((p, l)) => match l.split_once(')') {
                    Some((l, _)) => (p, Some(l.to_string())),
                    None => {
                        plan.problems.push(problem(
                            "label without its `)`; Asterisk skips the line".into(),
                        ));
                        continue;
                    }
                },
                None => (pri, None),
            };
            let (pri, plus) = match pri.split_once('+') {
                Some((p, n)) => (p, atoi(n)),
                None => (pri, 0),
            };
            let number = match pri {
                "hint" => PRIORITY_HINT,
                "n" | "next" | "s" | "same" => match last_pri {
                    Some(l) => {
                        if pri.starts_with('n') {
                            l + 1
                        } else {
                            l
                        }
                    }
                    None => {
                        plan.problems.push(problem(format!(
                            "priority `{pri}` on the first line of [{}]; Asterisk skips it",
                            cat.name
                        )));
                        continue;
                    }
                },
                p => match leading_int(p)
                    .or_else(|| labels.get(&(extension.clone(), p.to_string())).copied())
                {
                    Some(n) if n >= 1 => n,
                    _ => {
                        plan.problems.push(problem(format!(
                            "invalid priority or unknown label `{p}`; Asterisk skips the line"
                        )));
                        continue;
                    }
                },
            };
            let (app, args, closed) = application(rest.unwrap_or(""));
            if !closed {
                plan.problems.push(problem(format!(
                    "{app}( without its closing `)`; Asterisk passes the rest as arguments"
                )));
            }
            // `if (ipri)`: a 0 (an `n` after a hint) is dropped without a word, and the last
            // priority stays what it was.
            if number == 0 {
                plan.problems.push(problem(format!(
                    "priority `{pri}` after a hint is 0: Asterisk drops the line without a warning; number it (or start the extension with 1) after the hint"
                )));
                continue;
            }
            if exten::Exten::parse(&extension).broken {
                plan.problems.push(problem(format!(
                    "pattern {extension} has a `[` without `]`: it never matches"
                )));
            }
            let n = number.saturating_add(plus);
            last_pri = Some(n);
            let priority = match n {
                PRIORITY_HINT => Priority::Hint,
                n if n >= 1 => {
                    if let Some(l) = &label {
                        labels.insert((extension.clone(), l.clone()), n);
                    }
                    Priority::Number(n)
                }
                n => {
                    plan.problems.push(problem(format!(
                        "priority {n}: Asterisk cannot register it and skips the line"
                    )));
                    continue;
                }
            };
            plan.contexts[i].steps.push(Step {
                extension,
                callerid,
                priority,
                label,
                app,
                args,
                file: v.file.clone(),
                line: v.line,
            });
        } else if name == "include" {
            let value = plan.expand(&v.value);
            let cut = value.find(['|', ',']);
            plan.contexts[i].includes.push(Include {
                context: value[..cut.unwrap_or(value.len())].to_string(),
                times: cut.map(|c| value[c + 1..].to_string()),
                file: v.file.clone(),
                line: v.line,
            });
        } else if name == "ignorepat" {
            let pattern = plan.expand(&v.value);
            plan.contexts[i].ignorepats.push(Ignorepat {
                pattern,
                file: v.file.clone(),
                line: v.line,
            });
        } else if matches!(name.as_str(), "switch" | "lswitch" | "eswitch") {
            let value = if name == "switch" {
                plan.expand(&v.value)
            } else {
                v.value.clone()
            };
            let (module, data) = value.split_once('/').unwrap_or((&value, ""));
            plan.contexts[i].switches.push(Switch {
                kind: name.clone(),
                module: module.to_string(),
                data: data.to_string(),
                file: v.file.clone(),
                line: v.line,
            });
        } else if name != "autohints" {
            plan.problems.push(problem(format!(
                "unknown dialplan directive `{}` in [{}]; Asterisk ignores it",
                v.name, cat.name
            )));
        }
    }
}

/// `pbx_strsep(…, ",")`: the extension ends at the first `,` outside `[…]`; a `\` keeps the
/// next character.
fn split_first(value: &str) -> (&str, Option<&str>) {
    let mut square = 0usize;
    let mut escaped = false;
    for (i, c) in value.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' => escaped = true,
            '[' => square += 1,
            ']' => square = square.saturating_sub(1),
            ',' if square == 0 => return (&value[..i], Some(&value[i + 1..])),
            _ => {}
        }
    }
    (value, None)
}

/// The application and its arguments, as pbx_config splits them: the name up to the first
/// `(` (unless it holds `${` or `$[`, then all of it with no arguments), the arguments up to
/// the last `)`.
/// The third value is false when the arguments have no closing `)` (Asterisk warns).
fn application(rest: &str) -> (String, String, bool) {
    let Some((name, data)) = rest.split_once('(') else {
        return (rest.trim_start().to_string(), String::new(), true);
    };
    if name.contains("${") || name.contains("$[") {
        return (rest.trim_start().to_string(), String::new(), true);
    }
    match data.rfind(')') {
        Some(end) => (name.trim_start().to_string(), data[..end].to_string(), true),
        None => (name.trim_start().to_string(), data.to_string(), false),
    }
}

/// `sscanf("%d")`: optional blanks, sign and digits at the start.
fn leading_int(s: &str) -> Option<i64> {
    let t = s.trim_start();
    let (sign, digits) = match t.strip_prefix('-') {
        Some(d) => (-1, d),
        None => (1, t.strip_prefix('+').unwrap_or(t)),
    };
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end.min(10)].parse::<i64>().ok().map(|n| sign * n)
}

/// `atoi`: 0 when there is no number.
fn atoi(s: &str) -> i64 {
    leading_int(s).unwrap_or(0)
}

/// The arguments of an application split at commas outside `(…)`, `[…]` and `{…}` (a `\`
/// keeps the next character), as the argument parser sees them after substitution.
pub fn split_args(args: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut escaped = false;
    let mut start = 0;
    for (i, c) in args.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' => escaped = true,
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            c if c == sep && depth == 0 => {
                out.push(&args[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    out.push(&args[start..]);
    out
}

/// The arguments of each call of dialplan function `name` in `text` (`${NAME(…)}`, also
/// inside `$[…]`; any case, as Asterisk finds functions), up to the matching `)`.
pub fn function_calls<'t>(text: &'t str, name: &str) -> Vec<&'t str> {
    // ASCII lowercasing keeps byte offsets.
    let lower = text.to_ascii_lowercase();
    let needle = format!("{}(", name.to_ascii_lowercase());
    let mut out = Vec::new();
    for (i, _) in lower.match_indices(&needle) {
        let part_of_a_name = lower[..i]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        if part_of_a_name {
            continue;
        }
        let start = i + needle.len();
        let mut depth = 1usize;
        let mut end = text.len();
        for (j, c) in text[start..].char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        end = start + j;
                        break;
                    }
                }
                _ => {}
            }
        }
        out.push(&text[start..end]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::conf;

    fn plan(files: &[(&str, &str)]) -> Dialplan {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let p = dir.path().join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        read(&conf::load(dir.path(), "extensions.conf").unwrap())
    }

    fn steps(p: &Dialplan, ctx: &str) -> Vec<(String, Priority, String, String, usize)> {
        p.context(ctx)
            .unwrap()
            .steps
            .iter()
            .map(|s| {
                (
                    s.extension.clone(),
                    s.priority.clone(),
                    s.app.clone(),
                    s.args.clone(),
                    s.line,
                )
            })
            .collect()
    }

    #[test]
    fn extensions_same_priorities_and_labels() {
        let p = plan(&[(
            "extensions.conf",
            "[general]\nstatic=yes\n[globals]\nTRUNK=carrier\nOUT=PJSIP/${TRUNK}\n\
             [phones] ; comment\n\
             exten => 100,1,Answer()\n\
             \tsame => n(loop),Playback(hello\\;world)\n\
             same => n,Goto(loop)\n\
             exten => 100,hint,PJSIP/100\n\
             exten => _X./5551234,1,Dial(${OUT}/${EXTEN},30,tT)\n\
             exten => _X.,n,Set(X=$[1+(2)])\n\
             exten = _[1,2]X,1+2,NoOp\n\
             exten => s,loop,NoOp(unknown label)\n\
             exten => 200,1(start),Wait(1)\n\
             exten => 200,start+1,Hangup()\n",
        )]);
        assert!(p.context("general").is_none() && p.context("globals").is_none());
        assert_eq!(
            p.global("OUT"),
            Some("PJSIP/carrier"),
            "globals see earlier globals"
        );
        let s = steps(&p, "phones");
        let want: Vec<(&str, Priority, &str, &str, usize)> = vec![
            ("100", Priority::Number(1), "Answer", "", 7),
            ("100", Priority::Number(2), "Playback", "hello;world", 8),
            ("100", Priority::Number(3), "Goto", "loop", 9),
            ("100", Priority::Hint, "PJSIP/100", "", 10),
            (
                "_X.",
                Priority::Number(1),
                "Dial",
                "${OUT}/${EXTEN},30,tT",
                11,
            ),
            ("_X.", Priority::Number(2), "Set", "X=$[1+(2)]", 12),
            ("_[1,2]X", Priority::Number(3), "NoOp", "", 13),
            ("200", Priority::Number(1), "Wait", "1", 15),
            ("200", Priority::Number(2), "Hangup", "", 16),
        ];
        let want: Vec<_> = want
            .into_iter()
            .map(|(e, p, a, g, l)| (e.to_string(), p, a.to_string(), g.to_string(), l))
            .collect();
        assert_eq!(s, want);
        let ctx = p.context("phones").unwrap();
        assert_eq!(ctx.steps[1].label.as_deref(), Some("loop"));
        assert_eq!(ctx.steps[4].callerid.as_deref(), Some("5551234"));
        assert_eq!(p.expand(&ctx.steps[4].args), "PJSIP/carrier/${EXTEN},30,tT");
        let msgs: Vec<(usize, &str)> = p
            .problems
            .iter()
            .map(|p| (p.line, p.message.as_str()))
            .collect();
        assert_eq!(msgs.len(), 1, "{msgs:?}");
        assert_eq!(msgs[0].0, 14);
        assert!(msgs[0].1.contains("unknown label `loop`"), "{msgs:?}");
    }

    #[test]
    fn includes_switches_and_files() {
        let p = plan(&[
            (
                "extensions.conf",
                "[globals]\nINT=internal\n#include ext.d/*.conf\n\
                 [phones]\ninclude => ${INT}\ninclude => closed,09:00-17:00,mon-fri,*,*\n\
                 switch => Realtime/phones@extensions\nignorepat => 9\n\
                 [phones]\nsame => n,NoOp()\nexten => 1,n,NoOp()\nlua => x\n",
            ),
            (
                "ext.d/a.conf",
                "[internal]\nexten => 1001,1,Dial(PJSIP/1001)\n",
            ),
        ]);
        let names: Vec<&str> = p.contexts.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["internal", "phones"], "one context per name");
        let internal = p.context("internal").unwrap();
        assert!(internal.steps[0].file.ends_with("ext.d/a.conf"));
        assert_eq!(internal.steps[0].line, 2);
        let phones = p.context("phones").unwrap();
        let inc: Vec<(&str, Option<&str>)> = phones
            .includes
            .iter()
            .map(|i| (i.context.as_str(), i.times.as_deref()))
            .collect();
        assert_eq!(
            inc,
            [
                ("internal", None),
                ("closed", Some("09:00-17:00,mon-fri,*,*"))
            ]
        );
        assert_eq!(phones.switches[0].module, "Realtime");
        assert_eq!(phones.switches[0].data, "phones@extensions");
        assert_eq!(phones.ignorepats[0].pattern, "9");
        // The second [phones] starts its continuation afresh.
        let msgs: Vec<&str> = p.problems.iter().map(|p| p.message.as_str()).collect();
        assert!(msgs[0].contains("`same =>` with no `exten =>`"), "{msgs:?}");
        assert!(
            msgs[1].contains("priority `n` on the first line"),
            "{msgs:?}"
        );
        assert!(
            msgs[2].contains("unknown dialplan directive `lua`"),
            "{msgs:?}"
        );
        assert_eq!(msgs.len(), 3);
    }

    #[test]
    fn broken_lines_are_problems_not_guesses() {
        let p = plan(&[(
            "extensions.conf",
            "[c]\nexten => ,1,NoOp\nexten => 1,0,NoOp\nexten => 1,1(x,NoOp\nexten => _[12,1,NoOp\n\
             exten => 2,1,Dial(a\nexten => 3,1,${APP}(x)\n",
        )]);
        let lines: Vec<usize> = p.problems.iter().map(|p| p.line).collect();
        // `_[12,1,NoOp`: the `,` inside the open set belongs to the name, which leaves no
        // priority.
        assert_eq!(lines, [2, 3, 4, 5, 6], "{:?}", p.problems);
        assert!(p.problems[3].message.contains("invalid priority"));
        assert!(p.problems[4].message.contains("without its closing"));
        let s = steps(&p, "c");
        assert_eq!((s[0].2.as_str(), s[0].3.as_str(), s[0].4), ("Dial", "a", 6));
        assert_eq!((s[1].2.as_str(), s[1].3.as_str()), ("${APP}(x)", ""));
        assert_eq!(s.len(), 2);
        // A pattern that only breaks once a global is substituted.
        let p = plan(&[(
            "extensions.conf",
            "[globals]\nP=_[12\n[c]\nexten => ${P},1,NoOp\nautohints = yes\n",
        )]);
        assert_eq!(p.problems.len(), 1, "{:?}", p.problems);
        assert!(p.problems[0].message.contains("never matches"));
        assert_eq!(steps(&p, "c")[0].0, "_[12");
    }

    #[test]
    fn a_hint_is_the_last_priority() {
        // pbx_config: lastpri = PRIORITY_HINT (-1) after a hint, so `n` gives 0 and the line
        // is dropped without a warning; `s` gives another hint.
        let p = plan(&[(
            "extensions.conf",
            "[c]\nexten => 100,hint,PJSIP/100\n same => n,Dial(PJSIP/100)\n same => n,NoOp\n\
             exten => 101,hint,PJSIP/101\nexten => 101,1,Dial(PJSIP/101)\n same => n,Hangup\n",
        )]);
        let s: Vec<(Priority, usize)> = steps(&p, "c").into_iter().map(|s| (s.1, s.4)).collect();
        assert_eq!(
            s,
            [
                (Priority::Hint, 2),
                (Priority::Hint, 5),
                (Priority::Number(1), 6),
                (Priority::Number(2), 7)
            ]
        );
        let lines: Vec<usize> = p.problems.iter().map(|p| p.line).collect();
        assert_eq!(lines, [3, 4], "{:?}", p.problems);
        assert!(p.problems[0].message.contains("after a hint is 0"));
    }

    #[test]
    fn labels_are_looked_up_in_the_whole_context() {
        // ast_findlabel_extension2 searches the context as loaded so far, earlier sections of
        // the same name too; not other contexts, not other extensions.
        let p = plan(&[(
            "extensions.conf",
            "[c]\nexten => 200,1(start),Wait(1)\n[d]\nexten => 200,1,NoOp\n\
             [c]\nexten => 200,start+1,Hangup()\nexten => 300,start,NoOp\n\
             [d]\nexten => 200,start,NoOp\n",
        )]);
        let s: Vec<(String, Priority, usize)> = steps(&p, "c")
            .into_iter()
            .map(|s| (s.0, s.1, s.4))
            .collect();
        assert_eq!(
            s,
            [
                ("200".to_string(), Priority::Number(1), 2),
                ("200".to_string(), Priority::Number(2), 6)
            ]
        );
        let lines: Vec<usize> = p.problems.iter().map(|p| p.line).collect();
        assert_eq!(lines, [7, 9], "{:?}", p.problems);
    }

    #[test]
    fn argument_splitting() {
        assert_eq!(
            split_args("$[${X} = 1]?a,b,1:c,d,1", '?'),
            ["$[${X} = 1]", "a,b,1:c,d,1"]
        );
        assert_eq!(split_args("ctx,s,1(a,b)", ','), ["ctx", "s", "1(a,b)"]);
        assert_eq!(split_args("a\\,b,c", ','), ["a\\,b", "c"]);
        assert_eq!(split_args("", ','), [""]);
    }

    #[test]
    fn function_arguments() {
        assert_eq!(
            function_calls("${EVAL_SUB(a,s,1(${X}))} $[${eval_sub(b,1,1)}]", "EVAL_SUB"),
            ["a,s,1(${X})", "b,1,1"]
        );
        assert!(function_calls("${MY_EVAL_SUB(a,s,1)}", "EVAL_SUB").is_empty());
        assert_eq!(function_calls("${SHELL(unclosed", "shell"), ["unclosed"]);
    }
}
