//! Which parts of the dialplan a caller can get to from an entry point (an endpoint's
//! `context=`, a context an AMI client may originate into): every extension of the entry's
//! context and of the contexts it includes (transitively), and what those jump to with a
//! context named literally — `Goto`, `GotoIf`, `GotoIfTime`, `Gosub`, `GosubIf`, `DISA`, the
//! `Originate` application and `Local/exten@context` channels in any application's arguments;
//! `Background` and `WaitExten` let the caller's digits pick any extension of their context.
//! A jump to a literal extension reaches the extensions whose pattern matches it; one whose
//! extension holds a variable reaches those that can start with its literal beginning. Jumps
//! whose context is a channel variable are not followed (globals are substituted). Breadth
//! first, each context or extension once, so cycles end; the first path found is kept to
//! explain a finding.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;

use super::exten::Exten;
use super::{split_args, Dialplan, Priority, Step};

/// Pattern tests spent on resolving jump targets before falling back to whole contexts (a
/// coarser answer, never a missed one): bounds the work on a hostile tree.
const MATCH_BUDGET: usize = 1_000_000;

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

pub struct Reach<'p> {
    plan: &'p Dialplan,
    entries: Vec<Entry>,
    index: HashMap<&'p str, usize>,
    /// Each context's extension names, once each, parsed, with the indexes of their steps.
    extens: Vec<Vec<(String, Exten, Vec<usize>)>>,
    /// Per context: extension name → its place in `extens`.
    ext_at: Vec<HashMap<String, usize>>,
    seen: HashMap<Node, (Option<Node>, Via)>,
    budget: usize,
}

impl<'p> Reach<'p> {
    pub fn new(plan: &'p Dialplan, entries: &[Entry]) -> Reach<'p> {
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
        let mut r = Reach {
            plan,
            entries: entries.to_vec(),
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
            extens,
            seen: HashMap::new(),
            budget: MATCH_BUDGET,
        };
        r.run();
        r
    }

    fn run(&mut self) {
        let mut queue = VecDeque::new();
        for (i, e) in self.entries.iter().enumerate() {
            if let Some(&c) = self.index.get(e.context.as_str()) {
                let node = Node::Whole(c);
                if !self.seen.contains_key(&node) {
                    self.seen.insert(node.clone(), (None, Via::Entry(i)));
                    queue.push_back(node);
                }
            }
        }
        while let Some(node) = queue.pop_front() {
            let plan = self.plan;
            let (c, only) = match &node {
                Node::Whole(c) => (*c, None),
                Node::Ext(c, e) => (*c, Some(e.clone())),
            };
            let ctx = &plan.contexts[c];
            let mut next: Vec<(Node, Via)> = Vec::new();
            if only.is_none() {
                for inc in &ctx.includes {
                    if let Some(&t) = self.index.get(inc.context.as_str()) {
                        next.push((
                            Node::Whole(t),
                            Via::Include {
                                file: inc.file.clone(),
                                line: inc.line,
                            },
                        ));
                    }
                }
            }
            // An extension's own steps, through the index: a context with many extensions
            // reached one by one stays linear.
            let steps: Vec<usize> = match &only {
                None => (0..ctx.steps.len()).collect(),
                Some(e) => self.ext_at[c]
                    .get(e)
                    .map(|&k| self.extens[c][k].2.clone())
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
    fn jumps(&mut self, c: usize, step: &Step) -> Vec<Node> {
        if step.priority == Priority::Hint {
            return Vec::new();
        }
        let args = self.plan.expand(&step.args);
        let mut out = Vec::new();
        match step.app.trim().to_ascii_lowercase().as_str() {
            "goto" | "gosub" => out.extend(self.label(c, &args)),
            "gotoif" | "gotoiftime" | "gosubif" => {
                let parts = split_args(&args, '?');
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
                let parts = split_args(&args, ',');
                let ctx = parts.get(1).map_or("", |s| s.trim());
                let ctx = if ctx.is_empty() { "disa" } else { ctx };
                if !ctx.contains('$') {
                    if let Some(&t) = self.index.get(ctx) {
                        out.push(Node::Whole(t));
                    }
                }
            }
            "originate" => {
                let parts = split_args(&args, ',');
                if parts.len() >= 4 && parts[1].trim().eq_ignore_ascii_case("exten") {
                    out.extend(self.target(parts[2], parts[3]));
                }
            }
            _ => {}
        }
        for (ext, ctx) in local_channels(&args) {
            out.extend(self.target(ctx, ext));
        }
        out
    }

    /// `[[context,]extension,]priority`, as Goto and Gosub take it.
    fn label(&mut self, c: usize, label: &str) -> Vec<Node> {
        let parts = split_args(label, ',');
        match parts.len() {
            0 | 1 => Vec::new(),
            2 => self.lookup(c, parts[0].trim()),
            _ => self.target(parts[0], parts[1]),
        }
    }

    fn target(&mut self, ctx: &str, ext: &str) -> Vec<Node> {
        let ctx = ctx.trim();
        if ctx.contains('$') {
            return Vec::new();
        }
        match self.index.get(ctx) {
            Some(&c) => self.lookup(c, ext.trim()),
            None => Vec::new(),
        }
    }

    /// The extensions of `c` and of what it includes that `ext` selects.
    fn lookup(&mut self, c: usize, ext: &str) -> Vec<Node> {
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
            if self.budget < self.extens[k].len() {
                return vec![Node::Whole(c)];
            }
            self.budget -= self.extens[k].len();
            for (name, e, _) in &self.extens[k] {
                let hit = if prefix_only {
                    e.may_start_with(text)
                } else {
                    e.matches(text)
                };
                if hit {
                    out.push(Node::Ext(k, name.clone()));
                }
            }
            for inc in self.plan.contexts[k].includes.iter().rev() {
                if let Some(&t) = self.index.get(inc.context.as_str()) {
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
        let mut node = self.node_of(c, step)?;
        let mut hops = Vec::new();
        // The BFS tree has no cycles; the bound is only a guard.
        for _ in 0..=self.seen.len() {
            let (parent, via) = self.seen.get(&node)?;
            let here = match &node {
                Node::Whole(c) => format!("[{}]", self.plan.contexts[*c].name),
                Node::Ext(c, e) => format!("[{}] {e}", self.plan.contexts[*c].name),
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
        let r = Reach::new(
            p,
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
                "gs-inc:23"
            ]
        );
        // Started elsewhere, the jump reaches exactly the extension named.
        let p2 = plan(
            "[e]\nexten => 1,1,Goto(t,2,1)\n[t]\nexten => 1,1,System(x)\nexten => 2,1,NoOp\n\
             exten => 2,n,Goto(1,1)\n",
        );
        assert_eq!(names(&reached(&p2, "e")), ["e:2", "t:4", "t:5", "t:6"]);
        let r = Reach::new(
            &p2,
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
    fn local_channels_in_arguments() {
        assert_eq!(
            local_channels("Local/100@ctx/n&LOCAL/200,30,U(x)"),
            [("100", "ctx"), ("200", "default")]
        );
        assert!(local_channels("PJSIP/notlocal/x").is_empty());
    }
}
