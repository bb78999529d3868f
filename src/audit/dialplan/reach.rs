//! Which parts of the dialplan a caller can get to from an entry point (an endpoint's
//! `context=`, a context an AMI client may originate into): every extension of the entry's
//! context and of the contexts it includes (transitively), and what those jump to with a
//! context named literally — `Goto`, `GotoIf`, `GotoIfTime`, `Gosub`, `GosubIf`, `DISA`, the
//! `Originate` application, those wrapped in `Exec`/`TryExec`/`ExecIf`, the places `Dial` and
//! `Queue` options name, hangup handlers, `EVAL_SUB`/`EVAL_EXTEN`, `Loopback` switches and
//! `Local/exten@context` channels in any application's arguments; `Background` and
//! `WaitExten` let the caller's digits pick any extension of their context, and a context a
//! call enters also runs its `h`, `i`, `t`, `T`, `e`. A jump to a literal extension reaches
//! the extensions whose pattern matches it; one whose extension holds a variable reaches those
//! that can start with its literal beginning. Jumps whose context is a channel variable are
//! not followed (globals are substituted). Breadth first, each context or extension once, so
//! cycles end; the first path found is kept to explain a finding.

use std::cell::Cell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;

use super::exten::Exten;
use super::{application, function_calls, split_args, Dialplan, Priority, Step};

/// Characters of extension names walked while resolving jump targets, over every [`Reach`]
/// built on one [`Index`], before a jump falls back to its whole context (a coarser answer,
/// never a missed one): bounds the work on a hostile tree, however long its names.
const MATCH_BUDGET: usize = 20_000_000;

/// How deep `ExecIf(…?Exec(…))` wrappers are unwrapped.
const MAX_WRAP: usize = 4;

/// The extensions Asterisk runs by itself in the context a call is in (`__ast_pbx_run`):
/// hangup, invalid, response timeout, absolute timeout, exception.
const SPECIAL: [&str; 5] = ["h", "i", "t", "T", "e"];

/// Where callers come in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// `endpoint 1001`, `AMI client dialer`; empty to start paths at the context.
    pub label: String,
    pub context: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Node {
    /// Any extension of the context and of what it includes.
    Whole(usize),
    /// One extension (by its name as written) of the context.
    Ext(usize, String),
}

#[derive(Debug, Clone)]
enum Via {
    Entry(usize),
    Include {
        file: std::path::PathBuf,
        line: usize,
    },
    Jump {
        app: String,
        file: std::path::PathBuf,
        line: usize,
    },
}

/// The dialplan parsed once for any number of [`Reach`] runs (the guest check runs one per
/// guest context); the match budget is shared by all of them.
pub struct Index<'p> {
    plan: &'p Dialplan,
    index: HashMap<&'p str, usize>,
    /// Each context's extension names, once each, parsed, with the indexes of their steps.
    extens: Vec<Vec<(String, Exten, Vec<usize>)>>,
    /// Per context: extension name → its place in `extens`.
    ext_at: Vec<HashMap<String, usize>>,
    /// Per context: what testing a string against all its names costs at most (characters).
    cost: Vec<usize>,
    budget: Cell<usize>,
}

impl<'p> Index<'p> {
    pub fn new(plan: &'p Dialplan) -> Index<'p> {
        let mut index = HashMap::new();
        for (i, c) in plan.contexts.iter().enumerate() {
            index.entry(c.name.as_str()).or_insert(i);
        }
        let extens: Vec<Vec<(String, Exten, Vec<usize>)>> = plan
            .contexts
            .iter()
            .map(|c| {
                let mut out: Vec<(String, Exten, Vec<usize>)> = Vec::new();
                let mut at: HashMap<&str, usize> = HashMap::new();
                for (i, s) in c.steps.iter().enumerate() {
                    let k = *at.entry(s.extension.as_str()).or_insert_with(|| {
                        out.push((s.extension.clone(), Exten::parse(&s.extension), Vec::new()));
                        out.len() - 1
                    });
                    out[k].2.push(i);
                }
                out
            })
            .collect();
        Index {
            plan,
            index,
            ext_at: extens
                .iter()
                .map(|e| {
                    e.iter()
                        .enumerate()
                        .map(|(i, (name, _, _))| (name.clone(), i))
                        .collect()
                })
                .collect(),
            cost: extens
                .iter()
                .map(|e| e.iter().map(|(name, _, _)| name.len() + 1).sum())
                .collect(),
            extens,
            budget: Cell::new(MATCH_BUDGET),
        }
    }

    pub fn plan(&self) -> &'p Dialplan {
        self.plan
    }
}

pub struct Reach<'a> {
    idx: &'a Index<'a>,
    entries: Vec<Entry>,
    seen: HashMap<Node, (Option<Node>, Via)>,
}

impl<'a> Reach<'a> {
    pub fn new(idx: &'a Index<'a>, entries: &[Entry]) -> Reach<'a> {
        let mut r = Reach {
            idx,
            entries: entries.to_vec(),
            seen: HashMap::new(),
        };
        r.run();
        r
    }

    fn run(&mut self) {
        let idx = self.idx;
        let mut queue = VecDeque::new();
        for (i, e) in self.entries.iter().enumerate() {
            if let Some(&c) = idx.index.get(e.context.as_str()) {
                let node = Node::Whole(c);
                if !self.seen.contains_key(&node) {
                    self.seen.insert(node.clone(), (None, Via::Entry(i)));
                    queue.push_back(node);
                }
            }
        }
        while let Some(node) = queue.pop_front() {
            let plan = idx.plan;
            let (c, only) = match &node {
                Node::Whole(c) => (*c, None),
                Node::Ext(c, e) => (*c, Some(e.clone())),
            };
            let ctx = &plan.contexts[c];
            let mut next: Vec<(Node, Via)> = Vec::new();
            if only.is_none() {
                for inc in &ctx.includes {
                    if let Some(&t) = idx.index.get(inc.context.as_str()) {
                        next.push((
                            Node::Whole(t),
                            Via::Include {
                                file: inc.file.clone(),
                                line: inc.line,
                            },
                        ));
                    }
                }
                // `switch => Loopback/exten@context`: a lookup here that finds nothing is
                // answered from the other context, any extension of it.
                for sw in ctx
                    .switches
                    .iter()
                    .filter(|s| s.module.trim().eq_ignore_ascii_case("loopback"))
                {
                    if let Some(&t) = loopback_context(&sw.data).and_then(|t| idx.index.get(t)) {
                        next.push((
                            Node::Whole(t),
                            Via::Jump {
                                app: "switch => Loopback".into(),
                                file: sw.file.clone(),
                                line: sw.line,
                            },
                        ));
                    }
                }
            }
            // An extension's own steps, through the index: a context with many extensions
            // reached one by one stays linear.
            let steps: Vec<usize> = match &only {
                None => (0..ctx.steps.len()).collect(),
                Some(e) => idx.ext_at[c]
                    .get(e)
                    .map(|&k| idx.extens[c][k].2.clone())
                    .unwrap_or_default(),
            };
            for step in steps.into_iter().map(|i| &ctx.steps[i]) {
                for target in self.jumps(c, step) {
                    next.push((
                        target,
                        Via::Jump {
                            app: step.app.clone(),
                            file: step.file.clone(),
                            line: step.line,
                        },
                    ));
                }
            }
            for (n, via) in next {
                let covered = match &n {
                    Node::Ext(t, _) => self.seen.contains_key(&Node::Whole(*t)),
                    Node::Whole(_) => false,
                };
                if covered || self.seen.contains_key(&n) {
                    continue;
                }
                self.seen.insert(n.clone(), (Some(node.clone()), via));
                queue.push_back(n);
            }
        }
    }

    /// Where `step` (in context `c`) sends the call.
    fn jumps(&self, c: usize, step: &Step) -> Vec<Node> {
        if step.priority == Priority::Hint {
            return Vec::new();
        }
        let args = self.idx.plan.expand(&step.args);
        let mut out = Vec::new();
        self.app_jumps(c, step.app.trim(), &args, 0, &mut out);
        // Functions that run another place of the dialplan: EVAL_SUB runs it as a Gosub,
        // EVAL_EXTEN substitutes its priority's arguments (a `${SHELL(…)}` there runs).
        for f in ["EVAL_SUB", "EVAL_EXTEN"] {
            for a in function_calls(&args, f) {
                out.extend(self.label(c, a));
            }
        }
        for (ext, ctx) in local_channels(&args) {
            out.extend(self.target(ctx, ext));
        }
        out
    }

    /// The jumps of application `app` with (expanded) arguments `args`, wrappers unwrapped.
    fn app_jumps(&self, c: usize, app: &str, args: &str, depth: usize, out: &mut Vec<Node>) {
        if depth > MAX_WRAP {
            return;
        }
        let parts = split_args(args, ',');
        let part = |i: usize| parts.get(i).map_or("", |s| s.trim());
        match app.trim().to_ascii_lowercase().as_str() {
            "goto" | "gosub" => out.extend(self.label(c, args)),
            "gotoif" | "gotoiftime" | "gosubif" => {
                let parts = split_args(args, '?');
                if let Some(labels) = parts.get(1) {
                    for l in split_args(labels, ':') {
                        out.extend(self.label(c, l));
                    }
                }
            }
            // The caller's digits pick any extension of the context (and its includes).
            "background" | "waitexten" => out.push(Node::Whole(c)),
            // Direct inward system access: a dial tone into the named context (`disa` when
            // none is named).
            "disa" => {
                let ctx = if part(1).is_empty() { "disa" } else { part(1) };
                if !ctx.contains('$') {
                    if let Some(&t) = self.idx.index.get(ctx) {
                        out.push(Node::Whole(t));
                    }
                }
            }
            // Originate(chan,exten,context[,exten[,priority]]) or (chan,app,name[,data]);
            // b()/B() in its options are pre-dial Gosubs.
            "originate" => {
                match part(1).to_ascii_lowercase().as_str() {
                    "exten" => {
                        let ext = if part(3).is_empty() { "s" } else { part(3) };
                        out.extend(self.target(part(2), ext));
                    }
                    // The data is one argument: its commas come escaped.
                    "app" => {
                        let data = part(3).replace("\\,", ",");
                        self.app_jumps(c, part(2), &data, depth + 1, out)
                    }
                    _ => {}
                }
                self.option_jumps(c, part(6), "bB", out);
            }
            // Exec(App(args)), TryExec(App(args)), ExecIf(expr?App(args)[:App(args)]).
            "exec" | "tryexec" => {
                let (a, d, _) = application(args);
                self.app_jumps(c, &a, &d, depth + 1, out);
            }
            "execif" => {
                let parts = split_args(args, '?');
                if let Some(apps) = parts.get(1) {
                    for inner in split_args(apps, ':') {
                        let (a, d, _) = application(inner);
                        self.app_jumps(c, &a, &d, depth + 1, out);
                    }
                }
            }
            // Dial(chans,timeout,options): b(), B(), F(), G() name a place, U() a
            // subroutine context (its `s`).
            "dial" => self.option_jumps(c, part(2), "bBFGU", out),
            // Queue(name,options,URL,announce,timeout,AGI,gosub,…): b(), B(), F(); the
            // gosub argument is a context (its `s`).
            "queue" => {
                self.option_jumps(c, part(1), "bBF", out);
                if !part(6).is_empty() {
                    out.extend(self.target(part(6), "s"));
                }
            }
            // Set(CHANNEL(hangup_handler_push)=ctx,exten,pri(args)): runs at hangup.
            "set" => {
                if let Some((name, value)) = args.split_once('=') {
                    let name = name.trim().to_ascii_lowercase().replace(' ', "");
                    if name.starts_with("channel(hangup_handler_") && !value.trim().is_empty() {
                        out.extend(self.label(c, value));
                    }
                }
            }
            _ => {}
        }
    }

    /// The places named in an application's options (`letters` are those that name one):
    /// `[[context^]exten^]priority`, or for `U` a context.
    fn option_jumps(&self, c: usize, options: &str, letters: &str, out: &mut Vec<Node>) {
        for (letter, arg) in app_options(options) {
            let Some(arg) = arg.filter(|a| !a.trim().is_empty()) else {
                continue;
            };
            if !letters.contains(letter) {
                continue;
            }
            if letter == 'U' {
                let ctx = arg.split('^').next().unwrap_or("");
                out.extend(self.target(ctx, "s"));
            } else {
                out.extend(self.label(c, &arg.replace('^', ",")));
            }
        }
    }

    /// `[[context,]extension,]priority`, as Goto and Gosub take it.
    fn label(&self, c: usize, label: &str) -> Vec<Node> {
        let parts = split_args(label, ',');
        match parts.len() {
            0 | 1 => Vec::new(),
            2 => self.lookup(c, parts[0].trim()),
            _ => self.target(parts[0], parts[1]),
        }
    }

    /// Extension `ext` of context `ctx`, and the extensions Asterisk runs there by itself
    /// once the call is in it (`h` at hangup, `i`, `t`, `T`, `e`).
    fn target(&self, ctx: &str, ext: &str) -> Vec<Node> {
        let ctx = ctx.trim();
        if ctx.contains('$') {
            return Vec::new();
        }
        let Some(&c) = self.idx.index.get(ctx) else {
            return Vec::new();
        };
        let mut out = self.lookup(c, ext.trim());
        if !out.contains(&Node::Whole(c)) {
            for s in SPECIAL {
                out.extend(self.lookup(c, s));
            }
        }
        out
    }

    /// The extensions of `c` and of what it includes that `ext` selects.
    fn lookup(&self, c: usize, ext: &str) -> Vec<Node> {
        let idx = self.idx;
        let (text, prefix_only) = match ext.find('$') {
            Some(0) => return vec![Node::Whole(c)],
            Some(i) => (&ext[..i], true),
            None => (ext, false),
        };
        let mut out = Vec::new();
        let mut stack = vec![c];
        let mut visited = HashSet::new();
        while let Some(k) = stack.pop() {
            if !visited.insert(k) {
                continue;
            }
            let Some(left) = idx.budget.get().checked_sub(idx.cost[k]) else {
                return vec![Node::Whole(c)];
            };
            idx.budget.set(left);
            for (name, e, _) in &idx.extens[k] {
                let hit = if prefix_only {
                    e.may_start_with(text)
                } else {
                    e.matches(text)
                };
                if hit {
                    out.push(Node::Ext(k, name.clone()));
                }
            }
            for inc in idx.plan.contexts[k].includes.iter().rev() {
                if let Some(&t) = idx.index.get(inc.context.as_str()) {
                    stack.push(t);
                }
            }
        }
        out
    }

    /// Whether a caller can get to `step` of context `c`.
    pub fn reaches(&self, c: usize, step: &Step) -> bool {
        self.node_of(c, step).is_some()
    }

    fn node_of(&self, c: usize, step: &Step) -> Option<Node> {
        [Node::Whole(c), Node::Ext(c, step.extension.clone())]
            .into_iter()
            .find(|n| self.seen.contains_key(n))
    }

    /// How a caller gets to `step` of context `c`: `endpoint 1001 → [phones] → include =>
    /// [internal] (extensions.conf:7)`; `rel` names files as findings do.
    pub fn path(&self, c: usize, step: &Step, rel: &dyn Fn(&Path) -> String) -> Option<String> {
        let plan = self.idx.plan;
        let mut node = self.node_of(c, step)?;
        let mut hops = Vec::new();
        // The BFS tree has no cycles; the bound is only a guard.
        for _ in 0..=self.seen.len() {
            let (parent, via) = self.seen.get(&node)?;
            let here = match &node {
                Node::Whole(c) => format!("[{}]", plan.contexts[*c].name),
                Node::Ext(c, e) => format!("[{}] {e}", plan.contexts[*c].name),
            };
            match via {
                Via::Entry(i) => {
                    hops.push(here);
                    let label = &self.entries[*i].label;
                    if !label.is_empty() {
                        hops.push(label.clone());
                    }
                    break;
                }
                Via::Include { file, line } => {
                    hops.push(format!("include => {here} ({}:{line})", rel(file)))
                }
                Via::Jump { app, file, line } => {
                    hops.push(format!("{} {here} ({}:{line})", app.trim(), rel(file)))
                }
            }
            match parent {
                Some(p) => node = p.clone(),
                None => break,
            }
        }
        hops.reverse();
        Some(hops.join(" → "))
    }
}

/// The context a `switch => Loopback/[exten]@context[:priority][/pattern]` sends lookups to
/// (pbx_loopback's `loopback_parse`); none without `@` (the same context, which it refuses)
/// or when it holds a variable.
fn loopback_context(data: &str) -> Option<&str> {
    let head = data.split('/').next().unwrap_or("");
    let (_, ctx) = head.split_once('@')?;
    let ctx = ctx.split(':').next().unwrap_or("").trim();
    (!ctx.is_empty() && !ctx.contains('$')).then_some(ctx)
}

/// An application's options as `ast_app_parse_options` reads them: a letter, optionally
/// followed by `(argument)` (nested parentheses kept).
pub(crate) fn app_options(options: &str) -> Vec<(char, Option<&str>)> {
    let mut out = Vec::new();
    let mut chars = options.char_indices().peekable();
    while let Some((_, letter)) = chars.next() {
        if chars.peek().map(|&(_, c)| c) != Some('(') {
            out.push((letter, None));
            continue;
        }
        let Some((open, _)) = chars.next() else { break };
        let mut depth = 1usize;
        let mut end = options.len();
        for (i, c) in chars.by_ref() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i;
                        break;
                    }
                }
                _ => {}
            }
        }
        out.push((letter, Some(&options[open + 1..end])));
    }
    out
}

/// `Local/exten@context` channels (context `default` when none is named), each as
/// (extension, context).
fn local_channels(args: &str) -> Vec<(&str, &str)> {
    let lower = args.to_ascii_lowercase();
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(pos) = lower[from..].find("local/") {
        let start = from + pos + "local/".len();
        from = start;
        // Only a channel name: `Local/` at the start or after a separator.
        let before = args[..start - "local/".len()].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let end = args[start..]
            .find(|c: char| matches!(c, '&' | ',' | ')' | '/' | '^' | '|') || c.is_whitespace())
            .map_or(args.len(), |e| start + e);
        let chan = &args[start..end];
        let (ext, ctx) = chan.rsplit_once('@').unwrap_or((chan, "default"));
        out.push((ext, ctx));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::conf;

    pub(crate) fn plan(text: &str) -> Dialplan {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("extensions.conf"), text).unwrap();
        super::super::read(&conf::load(dir.path(), "extensions.conf").unwrap())
    }

    /// (context, line) of every reachable step.
    fn reached(p: &Dialplan, entry: &str) -> Vec<(String, usize)> {
        let idx = Index::new(p);
        let r = Reach::new(
            &idx,
            &[Entry {
                label: "endpoint x".into(),
                context: entry.into(),
            }],
        );
        let mut out = Vec::new();
        for (i, c) in p.contexts.iter().enumerate() {
            for s in &c.steps {
                if r.reaches(i, s) {
                    out.push((c.name.clone(), s.line));
                }
            }
        }
        out
    }

    fn names(v: &[(String, usize)]) -> Vec<String> {
        v.iter().map(|(c, l)| format!("{c}:{l}")).collect()
    }

    #[test]
    fn includes_are_followed_transitively_and_cycles_end() {
        let p = plan(
            "[a]\ninclude => b\nexten => 1,1,NoOp\n\
             [b]\ninclude => c,09:00-17:00,*,*,*\ninclude => a\nexten => 2,1,NoOp\n\
             [c]\ninclude => b\nexten => 3,1,NoOp\n\
             [d]\nexten => 4,1,NoOp\n",
        );
        assert_eq!(names(&reached(&p, "a")), ["a:3", "b:7", "c:10"]);
        assert_eq!(names(&reached(&p, "c")), ["a:3", "b:7", "c:10"]);
        assert_eq!(names(&reached(&p, "d")), ["d:12"]);
        assert!(reached(&p, "nowhere").is_empty());
    }

    #[test]
    fn jumps_with_literal_contexts_are_followed() {
        let p = plan(
            "[globals]\nADMIN=admin\n\
             [phones]\n\
             exten => 1,1,Goto(admin,100,1)\n\
             exten => 2,1,GotoIf($[${X} = 1]?sub,s,1:${ADMIN},1${EXTEN},1)\n\
             exten => 3,1,Dial(PJSIP/a&Local/500@loc/n,30)\n\
             exten => 4,1,Gosub(gs,s,1(a,b))\n\
             exten => 5,1,Goto(${CTX},1,1)\n\
             exten => 6,1,Goto(local-ext,1)\n\
             exten => local-ext,1,NoOp\n\
             [admin]\nexten => 100,1,NoOp\nexten => 200,1,NoOp\nexten => _1X.,1,NoOp\n\
             [sub]\nexten => s,1,NoOp\n\
             [loc]\nexten => _5XX,1,NoOp\nexten => 600,1,NoOp\n\
             [gs]\ninclude => gs-inc\n\
             [gs-inc]\nexten => s,1,Return\nexten => t,1,NoOp\n\
             [never]\nexten => s,1,NoOp\n",
        );
        let got = names(&reached(&p, "phones"));
        assert_eq!(
            got,
            [
                "phones:4",
                "phones:5",
                "phones:6",
                "phones:7",
                "phones:8",
                "phones:9",
                "phones:10",
                "admin:12",
                "admin:14",
                "sub:16",
                "loc:18",
                "gs-inc:23",
                "gs-inc:24"
            ]
        );
        // Started elsewhere, the jump reaches exactly the extension named.
        let p2 = plan(
            "[e]\nexten => 1,1,Goto(t,2,1)\n[t]\nexten => 1,1,System(x)\nexten => 2,1,NoOp\n\
             exten => 2,n,Goto(1,1)\n",
        );
        assert_eq!(names(&reached(&p2, "e")), ["e:2", "t:4", "t:5", "t:6"]);
        let idx = Index::new(&p2);
        let r = Reach::new(
            &idx,
            &[Entry {
                label: "endpoint 9".into(),
                context: "e".into(),
            }],
        );
        let t = &p2.contexts[1];
        let path = r
            .path(1, &t.steps[0], &|f: &Path| {
                f.file_name().unwrap().to_string_lossy().to_string()
            })
            .unwrap();
        assert_eq!(
            path,
            "endpoint 9 → [e] → Goto [t] 2 (extensions.conf:2) → Goto [t] 1 (extensions.conf:6)"
        );
    }

    #[test]
    fn menus_let_the_caller_choose() {
        let p = plan(
            "[in]\nexten => s,1,Goto(ivr,s,1)\n\
             [ivr]\nexten => s,1,Background(menu)\ninclude => more\nexten => 1,1,NoOp\n\
             [more]\nexten => 2,1,DISA(no-password,dialout)\n\
             [dialout]\nexten => _X.,1,NoOp\n\
             [plain]\nexten => s,1,Playback(x)\nexten => 1,1,NoOp\n",
        );
        assert_eq!(
            names(&reached(&p, "in")),
            ["in:2", "ivr:4", "ivr:6", "more:8", "dialout:10"]
        );
        let p = plan("[in]\nexten => s,1,Goto(plain,s,1)\n[plain]\nexten => s,1,Playback(x)\nexten => 1,1,NoOp\n");
        assert_eq!(names(&reached(&p, "in")), ["in:2", "plain:4"]);
    }

    #[test]
    fn jump_resolution_is_bounded() {
        // 3000 extensions, each jumping to the next by a literal name: resolving every jump
        // against every pattern would be 9 million tests; past the budget a jump reaches the
        // whole context instead, and the last extension is still reached.
        let n = 3000;
        let mut text = String::from("[in]\nexten => s,1,Goto(big,0,1)\n[big]\n");
        for i in 0..n {
            text.push_str(&format!("exten => {i},1,Goto({},1)\n", i + 1));
        }
        text.push_str(&format!(
            "exten => {n},1,System(x)\n[other]\nexten => 1,1,NoOp\n"
        ));
        let p = plan(&text);
        let start = std::time::Instant::now();
        let got = reached(&p, "in");
        assert!(start.elapsed() < std::time::Duration::from_secs(20));
        assert_eq!(got.len(), n + 2, "every step of [in] and [big]");
        assert!(got.iter().all(|(c, _)| c != "other"));
    }

    #[test]
    fn wrapped_jumps_options_handlers_and_functions() {
        let mut all = String::from(
            "[in]\n\
             exten => 1,1,ExecIf($[${X} = 1]?Goto(a,s,1):Gosub(b,s,1(x)))\n\
             exten => 2,1,TryExec(Exec(Goto(c,s,1)))\n\
             exten => 3,1,Dial(PJSIP/x,30,tU(d^arg)G(e^s^1)b(f^s^1(a^b)))\n\
             exten => 4,1,Dial(PJSIP/x,,F(g^s^1)B(h^s^1))\n\
             exten => 5,1,Queue(q,tb(i^s^1),,,30,agi://x,j)\n\
             exten => 6,1,Set(CHANNEL(hangup_handler_push)=k,s,1(a))\n\
             exten => 7,1,Set(X=${EVAL_SUB(l,s,1)}${EVAL_EXTEN(m,s,1)})\n\
             exten => 8,1,Originate(PJSIP/x,exten,n)\n\
             exten => 9,1,Originate(PJSIP/x,app,Goto,o\\,s\\,1)\n\
             exten => 10,1,Dial(PJSIP/x,30,tr)\n\
             exten => 11,1,Set(Y=CHANNEL(hangup_handler_push))\n",
        );
        // Each target context: `s` is reached, `1` is not; [z] is named by nothing.
        for c in "abcdefghijklmnoz".chars() {
            all.push_str(&format!("[{c}]\nexten => s,1,NoOp\nexten => 1,1,NoOp\n"));
        }
        let p = plan(&all);
        let got: Vec<String> = reached(&p, "in")
            .into_iter()
            .filter(|(c, _)| c != "in")
            .map(|(c, l)| format!("{c}:{l}"))
            .collect();
        let want: Vec<String> = "abcdefghijklmno"
            .chars()
            .enumerate()
            .map(|(i, c)| format!("{c}:{}", 14 + 3 * i))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_context_jumped_into_runs_its_own_special_extensions() {
        // __ast_pbx_run runs h (hangup), i, t, T, e in the channel's current context.
        let p = plan(
            "[in]\nexten => 1,1,Goto(t,s,1)\n\
             [t]\nexten => s,1,NoOp\nexten => h,1,System(a)\nexten => i,1,NoOp\n\
             exten => t,1,NoOp\nexten => T,1,NoOp\nexten => e,1,NoOp\nexten => 5,1,NoOp\n\
             include => t-inc\n\
             [t-inc]\nexten => h,1,NoOp\nexten => 6,1,NoOp\n",
        );
        assert_eq!(
            names(&reached(&p, "in")),
            ["in:2", "t:4", "t:5", "t:6", "t:7", "t:8", "t:9", "t-inc:13"]
        );
        // A jump inside a context does not add the specials of another one.
        let p =
            plan("[in]\nexten => 1,1,Goto(2,1)\nexten => 2,1,NoOp\n[other]\nexten => h,1,NoOp\n");
        assert_eq!(names(&reached(&p, "in")), ["in:2", "in:3"]);
    }

    #[test]
    fn loopback_switches_are_followed() {
        let p = plan(
            "[in]\nswitch => Loopback/${EXTEN}@out:1/_9X.\n\
             [out]\nexten => _X.,1,System(x)\n\
             [same]\nswitch => Loopback/${EXTEN}\nswitch => Realtime/x@y\n[y]\nexten => 1,1,NoOp\n",
        );
        assert_eq!(names(&reached(&p, "in")), ["out:4"]);
        assert!(reached(&p, "same").is_empty());
        assert_eq!(loopback_context("1@ctx:2/_X."), Some("ctx"));
        assert_eq!(loopback_context("${EXTEN}@${CTX}"), None);
    }

    #[test]
    fn application_options() {
        assert_eq!(
            app_options("tU(sub^a(b))G(c^s^1)r"),
            [
                ('t', None),
                ('U', Some("sub^a(b)")),
                ('G', Some("c^s^1")),
                ('r', None)
            ]
        );
        assert_eq!(app_options("b(open"), [('b', Some("open"))]);
        assert!(app_options("").is_empty());
    }

    #[test]
    fn local_channels_in_arguments() {
        assert_eq!(
            local_channels("Local/100@ctx/n&LOCAL/200,30,U(x)"),
            [("100", "ctx"), ("200", "default")]
        );
        assert!(local_channels("PJSIP/notlocal/x").is_empty());
    }
}
