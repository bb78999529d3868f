//! The dialplan checks (issue 20's toll-fraud guard, its audit part): shell and file access
//! reachable by callers, dialplan injection through `${EXTEN}`, trunks dialled with no prefix
//! restriction, guest endpoints that reach a trunk, and AMI clients that may originate
//! anywhere.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use super::exten::{dialable, Exten};
use super::reach::{Entry, Index, Reach};
use super::{application, function_calls, split_args, Dialplan, Priority, Step};
use crate::audit::conf::{Category, Conf};
use crate::audit::rules::{loopback_only, truthy, type_of, unauthenticated};
use crate::audit::{AmiClientInfo, Finding, Severity};

/// The label AMI client findings carry instead of a file: the clients live in pbxguard's
/// store, not under the audited folder.
pub const AMI_CLIENTS_FILE: &str = "pbxguard";

/// The channel drivers' files that say which contexts callers start in.
#[derive(Debug, Default, Clone, Copy)]
pub struct ChannelConfs<'c> {
    pub pjsip: Option<&'c Conf>,
    pub pjsip_wizard: Option<&'c Conf>,
    pub iax: Option<&'c Conf>,
    pub chan_dahdi: Option<&'c Conf>,
}

impl ChannelConfs<'_> {
    fn any(&self) -> bool {
        self.pjsip.is_some()
            || self.pjsip_wizard.is_some()
            || self.iax.is_some()
            || self.chan_dahdi.is_some()
    }
}

/// What the dialplan checks need from the channel drivers' files.
#[derive(Debug, Default)]
pub struct Endpoints<'c> {
    /// Every pjsip endpoint with its `context=` line (pjsip's default context is `default`).
    all: Vec<(&'c Category, String)>,
    /// Other ways in: (label, context) from pjsip_wizard.conf, iax.conf, chan_dahdi.conf.
    others: Vec<(String, String)>,
    /// pjsip endpoints a call to which leaves the PBX (see [`trunks`]), wizard ones too.
    trunks: HashSet<String>,
    /// iax.conf peers with a fixed `host=`.
    iax_trunks: HashSet<String>,
    /// Endpoints anyone can call from (see [`guest`]).
    guests: Vec<&'c Category>,
    /// No channel driver's file at all: every context counts as a way in.
    unknown: bool,
}

impl<'c> Endpoints<'c> {
    pub fn of(confs: ChannelConfs<'c>) -> Endpoints<'c> {
        let mut out = Endpoints {
            unknown: !confs.any(),
            ..Endpoints::default()
        };
        if let Some(p) = confs.pjsip {
            let identified: Vec<String> = p
                .sections()
                .filter(|c| type_of(c) == Some("identify") && c.get("match").is_some())
                .filter_map(|c| c.value("endpoint").map(str::to_string))
                .collect();
            let endpoints: Vec<&Category> = p
                .sections()
                .filter(|c| type_of(c) == Some("endpoint"))
                .collect();
            out.all = endpoints
                .iter()
                .map(|e| (*e, e.value("context").unwrap_or("default").to_string()))
                .collect();
            out.trunks = trunks(p, &endpoints);
            out.guests = endpoints
                .iter()
                .copied()
                .filter(|e| guest(e, &identified))
                .collect();
        }
        // res_pjsip_config_wizard: `endpoint/context`, default `default`; one that sends
        // auth or registrations, or names remote hosts, is a trunk.
        for w in confs
            .pjsip_wizard
            .iter()
            .flat_map(|w| w.sections())
            .filter(|c| type_of(c) == Some("wizard"))
        {
            let ctx = w.value("endpoint/context").unwrap_or("default");
            out.others
                .push((format!("wizard endpoint {}", w.name), ctx.to_string()));
            if truthy(w.value("sends_auth"))
                || truthy(w.value("sends_registrations"))
                || w.value("remote_hosts")
                    .is_some_and(|h| !h.trim().is_empty())
            {
                out.trunks.insert(w.name.clone());
            }
        }
        // chan_iax2: users and friends start in their `context=` (`default` without one);
        // peers and friends with a fixed host are where calls leave.
        for c in confs.iax.iter().flat_map(|i| i.sections()) {
            if c.name.eq_ignore_ascii_case("general") {
                continue;
            }
            let kind = c.value("type").unwrap_or("").trim().to_ascii_lowercase();
            if matches!(kind.as_str(), "user" | "friend") {
                for ctx in c
                    .all("context")
                    .map(|v| v.value.clone())
                    .chain(c.get("context").is_none().then(|| "default".to_string()))
                {
                    out.others.push((format!("iax2 {}", c.name), ctx));
                }
            }
            if matches!(kind.as_str(), "peer" | "friend")
                && c.value("host").is_some_and(|h| {
                    !h.trim().is_empty() && !h.trim().eq_ignore_ascii_case("dynamic")
                })
            {
                out.iax_trunks.insert(c.name.clone());
            }
        }
        // chan_dahdi: `context=` applies to the `channel =>` lines after it.
        for c in confs.chan_dahdi.iter().flat_map(|d| d.sections()) {
            for v in c.all("context") {
                out.others.push((
                    format!("DAHDI channels [{}] (line {})", c.name, v.line),
                    v.value.clone(),
                ));
            }
        }
        out
    }
}

/// A trunk is an endpoint that calls leave the PBX through: one that authenticates to its peer
/// (`outbound_auth`), that a `registration` names (`endpoint=`), or whose AOR has a static
/// `contact=` off this host. Phones register their contacts and authenticate to Asterisk, not
/// the other way round. An `identify` section alone does not make a trunk: phones pinned to
/// their addresses use it too.
fn trunks(p: &Conf, endpoints: &[&Category]) -> HashSet<String> {
    let remote_aors: HashSet<&str> = p
        .sections()
        .filter(|c| type_of(c) == Some("aor"))
        .filter(|a| a.all("contact").any(|v| remote_contact(&v.value)))
        .map(|a| a.name.as_str())
        .collect();
    let registered: HashSet<&str> = p
        .sections()
        .filter(|c| type_of(c) == Some("registration"))
        .filter_map(|r| r.value("endpoint"))
        .collect();
    endpoints
        .iter()
        .filter(|e| {
            e.value("outbound_auth")
                .is_some_and(|v| !v.trim().is_empty())
                || registered.contains(e.name.as_str())
                || e.value("aors")
                    .is_some_and(|aors| aors.split(',').any(|a| remote_aors.contains(a.trim())))
        })
        .map(|e| e.name.clone())
        .collect()
}

/// `sip:host`, `sip:user@host:port;transport=tcp`, each contact of a comma list.
fn remote_contact(contact: &str) -> bool {
    contact.split(',').any(|c| {
        let c = c.trim();
        let c = c.split_once(':').map_or(c, |(scheme, rest)| {
            if scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips") {
                rest
            } else {
                c
            }
        });
        let host = c.rsplit_once('@').map_or(c, |(_, h)| h);
        let host = host.split([';', '>']).next().unwrap_or("");
        !host.is_empty() && !loopback_only(host)
    })
}

/// pjsip gives callers it cannot identify the endpoint named `anonymous`; an endpoint without
/// `auth=` that is not pinned to addresses (the same test as the pjsip finding on it) takes
/// calls from whoever claims its name.
fn guest(e: &Category, identified: &[String]) -> bool {
    e.name == "anonymous" || unauthenticated(e, identified)
}

/// A channel a call is placed on (`Dial()`, `Originate`), as far as the trunk checks go.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DialTarget {
    /// `pjsip`, `sip`, `iax2`, `dahdi`, lowercase.
    tech: String,
    /// The endpoint, IAX2 peer or DAHDI group/channel.
    endpoint: String,
    /// The number sent to it, when the channel names one.
    number: Option<String>,
}

impl DialTarget {
    /// How findings name it: a pjsip endpoint by its name, others with their technology.
    fn name(&self) -> String {
        match self.tech.as_str() {
            "pjsip" | "sip" => self.endpoint.clone(),
            "iax2" => format!("IAX2/{}", self.endpoint),
            _ => format!("DAHDI/{}", self.endpoint),
        }
    }

    /// Whether a call here leaves the PBX: a pjsip trunk, an IAX2 peer with a fixed host
    /// (or a host written in the dial string), any number on a DAHDI span or group.
    fn is_trunk(&self, eps: &Endpoints<'_>) -> bool {
        match self.tech.as_str() {
            "pjsip" | "sip" => eps.trunks.contains(&self.endpoint),
            "iax2" => {
                self.number.is_some()
                    && (eps.iax_trunks.contains(&self.endpoint)
                        || self.endpoint.contains(['.', ':', '@']))
            }
            _ => self.number.is_some(),
        }
    }
}

/// `PJSIP/endpoint`, `PJSIP/number@endpoint`, `PJSIP/endpoint/sip:number@host`,
/// `SIP/peer/number`, `SIP/number@peer`, `IAX2/[user[:secret]@]peer/number[@context]`,
/// `DAHDI/g1/number`, `&`-separated, in a channel list (Dial's first argument).
fn dial_targets(chans: &str) -> Vec<DialTarget> {
    split_args(chans, '&')
        .into_iter()
        .filter_map(|chan| {
            let (tech, rest) = chan.trim().split_once('/')?;
            let tech = tech.trim().to_ascii_lowercase();
            let (endpoint, number) = match tech.as_str() {
                "pjsip" | "sip" => match rest.split_once('/') {
                    Some((ep, tail)) => {
                        let tail = tail
                            .strip_prefix("sip:")
                            .or_else(|| tail.strip_prefix("sips:"))
                            .unwrap_or(tail);
                        let number = tail.split('@').next().unwrap_or(tail);
                        (ep, Some(number))
                    }
                    None => match rest.split_once('@') {
                        Some((number, ep)) => (ep, Some(number)),
                        None => (rest, None),
                    },
                },
                "iax2" | "dahdi" => {
                    let (ep, tail) = rest
                        .split_once('/')
                        .map_or((rest, None), |(e, t)| (e, Some(t)));
                    let ep = if tech == "iax2" {
                        // user:secret@peer:port names the peer after the `@`.
                        let ep = ep.rsplit_once('@').map_or(ep, |(_, p)| p);
                        ep.split(':').next().unwrap_or(ep)
                    } else {
                        ep
                    };
                    let number = tail.map(|t| t.split(['@', '/']).next().unwrap_or(t));
                    (ep, number.filter(|n| !n.trim().is_empty()))
                }
                _ => return None,
            };
            Some(DialTarget {
                tech,
                endpoint: endpoint.trim().to_string(),
                number: number.map(|n| n.trim().to_string()),
            })
        })
        .collect()
}

/// The places a step calls out from: `Dial()` (also inside `Exec`, `TryExec`, `ExecIf` and
/// the `Originate` application) gives its arguments, `Originate` its channel. Arguments
/// with `[globals]` substituted.
fn placed_calls(plan: &Dialplan, step: &Step) -> Vec<String> {
    if step.priority == Priority::Hint {
        return Vec::new();
    }
    let mut out = Vec::new();
    calls_of(step.app.trim(), &plan.expand(&step.args), 0, &mut out);
    out
}

fn calls_of(app: &str, args: &str, depth: usize, out: &mut Vec<String>) {
    if depth > 4 {
        return;
    }
    let parts = split_args(args, ',');
    match app.trim().to_ascii_lowercase().as_str() {
        "dial" => out.push(args.to_string()),
        "originate" => {
            out.push(parts[0].to_string());
            if parts
                .get(1)
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("app"))
            {
                // The data is one argument: its commas come escaped.
                let data = parts
                    .get(3)
                    .map_or(String::new(), |d| d.replace("\\,", ","));
                calls_of(parts.get(2).map_or("", |a| a.trim()), &data, depth + 1, out);
            }
        }
        "exec" | "tryexec" => {
            let (a, d, _) = application(args);
            calls_of(&a, &d, depth + 1, out);
        }
        "execif" => {
            for apps in split_args(args, '?').into_iter().skip(1).take(1) {
                for inner in split_args(apps, ':') {
                    let (a, d, _) = application(inner);
                    calls_of(&a, &d, depth + 1, out);
                }
            }
        }
        _ => {}
    }
}

/// The channel list of a placed call: the first argument.
fn channels(call: &str) -> &str {
    split_args(call, ',').first().copied().unwrap_or("")
}

/// Where `${EXTEN}` or `${EXTEN:…}` starts in `text`, each occurrence.
fn exten_uses(text: &str) -> impl Iterator<Item = usize> + '_ {
    text.match_indices("${EXTEN")
        .map(|(i, _)| i)
        .filter(move |&i| matches!(text[i + 7..].chars().next(), Some('}' | ':')))
}

/// `${FILTER(0-9*#+,${EXTEN})}` keeps only what is in its set: no injection through it.
fn filtered(text: &str, at: usize) -> bool {
    let before = &text[..at];
    let Some(p) = before.to_ascii_uppercase().rfind("${FILTER(") else {
        return false;
    };
    let Some(set) = before[p + 9..].strip_suffix(',') else {
        return false;
    };
    !set.is_empty() && set.chars().all(|c| dialable(c) || c == '-')
}

/// Whether the number sent to a trunk is the caller's choice from its first digit: it uses
/// `${EXTEN}` with no literal digits before it, and the extension's fixed leading digits (if
/// any) are cut off by the `${EXTEN:n}` offset.
fn unrestricted(number: &str, ext: &Exten) -> bool {
    let Some(at) = exten_uses(number).next() else {
        return false;
    };
    if number[..at].chars().any(|c| c.is_ascii_digit()) || ext.is_fixed() {
        return false;
    }
    let after = &number[at + 7..];
    let offset = match after.strip_prefix(':') {
        None => 0,
        Some(spec) => {
            let n = spec.split([':', '}']).next().unwrap_or("");
            match n.trim().parse::<i64>() {
                Ok(n) if n >= 0 => n as usize,
                // From the end, or computed: the fixed part cannot be counted on.
                _ => return true,
            }
        }
    };
    ext.fixed_prefix().chars().count() <= offset
}

/// Whether the text calls dialplan function `name` (`${SHELL(…)}`), any case.
fn calls(text: &str, name: &str) -> bool {
    !function_calls(text, name).is_empty()
}

/// Whether a function is called by a name a variable holds (`${${F}(…)}`): it can be SHELL.
fn computed_function(text: &str) -> bool {
    text.match_indices("${${").any(|(i, _)| {
        let inner = &text[i + 4..];
        let mut depth = 1usize;
        for (j, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        return inner[j + 1..].starts_with('(');
                    }
                }
                _ => {}
            }
        }
        false
    })
}

/// Where AGI goes over the network (FastAGI, AsyncAGI over the manager) rather than running
/// a program on the host (res_agi.c `launch_script`).
fn network_agi(script: &str) -> bool {
    let s = script.trim().to_ascii_lowercase();
    s.is_empty()
        || s.starts_with("agi://")
        || s.starts_with("hagi://")
        || s.starts_with("agi:async")
}

/// What makes reaching a step dangerous: the host's shell, programs or files.
struct Danger {
    severity: Severity,
    what: String,
    fix: &'static str,
}

const MOVE_IT: &str = "move it to a context no endpoint or AMI client reaches (no include => or Goto leads there from theirs), or remove it";
const PROGRAM_FIX: &str = "make sure the program treats every argument as hostile (caller ID, digits, SIP headers reach it) and runs with the least rights, or use FastAGI (agi://) to a service that checks its input; or move it where callers do not reach";

fn dangerous(plan: &Dialplan, step: &Step) -> Option<Danger> {
    if step.priority == Priority::Hint {
        return None;
    }
    let args = plan.expand(&step.args);
    let app = plan.expand(step.app.trim());
    if let Some(d) = dangerous_app(&app, &args, 0) {
        return Some(d);
    }
    // Functions anywhere: in the arguments, or in an application name that holds `${`.
    let text = format!("{app}({args})");
    let what = if calls(&text, "shell") {
        "SHELL() runs a shell command"
    } else if calls(&text, "eval") {
        "EVAL() runs what a variable holds as dialplan (a caller-set value such as CALLERID(name) or a SIP header can carry ${SHELL(…)})"
    } else if calls(&text, "file") {
        "FILE() reads and writes files on the host"
    } else if computed_function(&text) {
        "a dialplan function is called by a name a variable holds (`${${…}(…)}`): it can be SHELL()"
    } else {
        return None;
    };
    Some(Danger {
        severity: Severity::High,
        what: what.to_string(),
        fix: MOVE_IT,
    })
}

/// Applications that run shell commands or programs, wrappers unwrapped.
fn dangerous_app(app: &str, args: &str, depth: usize) -> Option<Danger> {
    if depth > 4 {
        return None;
    }
    let parts = split_args(args, ',');
    let part = |i: usize| parts.get(i).map_or("", |s| s.trim());
    let shell = |what: String| {
        Some(Danger {
            severity: Severity::High,
            what,
            fix: MOVE_IT,
        })
    };
    let program = |what: String| {
        Some(Danger {
            severity: Severity::Medium,
            what,
            fix: PROGRAM_FIX,
        })
    };
    let lower = app.trim().to_ascii_lowercase();
    let through = |d: Option<Danger>| {
        d.map(|mut d| {
            if !d.what.contains(" through ") {
                d.what = d
                    .what
                    .replacen(" runs", &format!(" through {}() runs", app.trim()), 1);
            }
            d
        })
    };
    match lower.as_str() {
        "system" | "trysystem" => shell(format!("{}() runs a shell command", app.trim())),
        "exec" | "tryexec" => {
            let (a, d, _) = application(args);
            through(dangerous_app(&a, &d, depth + 1))
        }
        "execif" => {
            let apps = split_args(args, '?');
            let found = apps.get(1).and_then(|apps| {
                split_args(apps, ':').into_iter().find_map(|inner| {
                    let (a, d, _) = application(inner);
                    dangerous_app(&a, &d, depth + 1)
                })
            });
            through(found)
        }
        // Originate(chan,app,System,cmd): the new channel runs the application.
        "originate" if part(1).eq_ignore_ascii_case("app") => {
            through(dangerous_app(part(2), part(3), depth + 1))
        }
        // app_mixmonitor: the third argument runs through ast_safe_system when the
        // recording ends.
        "mixmonitor" if !part(2).is_empty() => shell(
            "MixMonitor() runs its third argument as a shell command when the recording ends"
                .into(),
        ),
        "agi" | "eagi" | "deadagi" if !network_agi(part(0)) => program(format!(
            "{}() runs the program {} on the host",
            app.trim(),
            part(0)
        )),
        "externalivr" if !part(0).to_ascii_lowercase().starts_with("ivr://") => program(format!(
            "ExternalIVR() runs the program {} on the host",
            part(0)
        )),
        // Queue(name,options,URL,announce,timeout,AGI,…): the AGI runs when a member answers.
        "queue" if !network_agi(part(5)) => program(format!(
            "Queue() runs the AGI program {} on the host when a member answers",
            part(5)
        )),
        _ => None,
    }
}

/// The label of the entry every context gets when no channel driver's file says which
/// contexts callers use.
const ANY_CONTEXT: &str = "any context (no pjsip.conf, pjsip_wizard.conf, iax.conf or chan_dahdi.conf tells which contexts callers start in, so every one counts)";

/// Entry points: each endpoint's context (pjsip, the pjsip wizard, IAX2 users, DAHDI
/// channels), and the contexts each AMI client may originate into (every context for one
/// with no `--context` list); every context when no channel driver's file is there.
fn entries(plan: &Dialplan, eps: &Endpoints<'_>, clients: &[AmiClientInfo]) -> Vec<Entry> {
    let mut out: Vec<Entry> = eps
        .all
        .iter()
        .map(|(e, ctx)| Entry {
            label: format!("endpoint {}", e.name),
            context: ctx.clone(),
        })
        .chain(eps.others.iter().map(|(label, ctx)| Entry {
            label: label.clone(),
            context: ctx.clone(),
        }))
        .collect();
    for c in clients.iter().filter(|c| c.originate) {
        for ctx in &plan.contexts {
            let allowed = c.contexts.is_empty()
                || c.contexts
                    .iter()
                    .any(|g| crate::pattern::wildcard(g, &ctx.name, '*', '\0'));
            if allowed {
                out.push(Entry {
                    label: format!("AMI client {}", c.name),
                    context: ctx.name.clone(),
                });
            }
        }
    }
    if eps.unknown {
        out.extend(plan.contexts.iter().map(|c| Entry {
            label: ANY_CONTEXT.to_string(),
            context: c.name.clone(),
        }));
    }
    out
}

/// The dialplan findings. `rel` names files relative to the audited folder.
pub fn check(
    plan: &Dialplan,
    confs: ChannelConfs<'_>,
    clients: &[AmiClientInfo],
    rel: &dyn Fn(&Path) -> String,
) -> Vec<Finding> {
    let eps = Endpoints::of(confs);
    let idx = Index::new(plan);
    let reach = Reach::new(&idx, &entries(plan, &eps, clients));
    let mut out = Vec::new();
    let at = |step: &Step, sev, object: &str, message: String, fix: &str| Finding {
        severity: sev,
        file: rel(&step.file),
        line: step.line,
        object: object.to_string(),
        message,
        fix: fix.to_string(),
    };
    for (ci, ctx) in plan.contexts.iter().enumerate() {
        for step in &ctx.steps {
            if let Some(d) = dangerous(plan, step) {
                if let Some(path) = reach.path(ci, step, rel) {
                    out.push(at(
                        step,
                        d.severity,
                        &ctx.name,
                        format!("{}, and callers reach it: {path}", d.what),
                        d.fix,
                    ));
                }
            }
            let calls = placed_calls(plan, step);
            if calls.is_empty() {
                continue;
            }
            let ext = Exten::parse(&step.extension);
            let injected = calls
                .iter()
                .any(|args| exten_uses(args).any(|i| !filtered(args, i)));
            if ext.admits_non_dialable() && injected {
                out.push(at(
                    step,
                    Severity::High,
                    &ctx.name,
                    format!(
                        "Dial() takes ${{EXTEN}} from pattern {} which admits characters outside 0-9*#+: dialling `1001&PJSIP/trunk/…` adds channels of the caller's choosing (dialplan injection)",
                        step.extension
                    ),
                    "match digits only (e.g. _X. or _[0-9*#+].) or dial ${FILTER(0-9*#+,${EXTEN})}",
                ));
            }
            let open_trunk = calls
                .iter()
                .flat_map(|c| dial_targets(channels(c)))
                .find(|t| {
                    t.is_trunk(&eps) && t.number.as_deref().is_some_and(|n| unrestricted(n, &ext))
                });
            let Some(t) = open_trunk else {
                continue;
            };
            if let Some(path) = reach.path(ci, step, rel) {
                out.push(at(
                    step,
                    Severity::Medium,
                    &ctx.name,
                    format!(
                        "pattern {} sends whatever number the caller dials to trunk {} with no fixed prefix (premium and international numbers too), and callers reach it: {path}",
                        step.extension,
                        t.name()
                    ),
                    "dial out through patterns with an explicit national or international prefix (e.g. _0X. or _00X.) and list premium ranges in pbxguard's [dialing] deny_prefixes",
                ));
            }
        }
    }
    out.extend(guests(&idx, &eps, rel));
    out
}

/// Guest endpoints whose context reaches a call to a trunk, whatever the number.
fn guests(idx: &Index<'_>, eps: &Endpoints<'_>, rel: &dyn Fn(&Path) -> String) -> Vec<Finding> {
    let plan = idx.plan();
    let mut out = Vec::new();
    // The steps that call a trunk, found once: most dialplans have few, and with none no
    // guest context needs walking at all.
    let trunk_calls: Vec<(usize, &Step)> = plan
        .contexts
        .iter()
        .enumerate()
        .flat_map(|(ci, c)| c.steps.iter().map(move |s| (ci, s)))
        .filter(|(_, s)| {
            placed_calls(plan, s)
                .iter()
                .flat_map(|c| dial_targets(channels(c)))
                .any(|t| t.is_trunk(eps))
        })
        .collect();
    if trunk_calls.is_empty() {
        return out;
    }
    // Per context: where a trunk is called from it, and how.
    let mut found: HashMap<String, Option<(String, String)>> = HashMap::new();
    for e in &eps.guests {
        let ctx = e.value("context").unwrap_or("default").to_string();
        let hit = found
            .entry(ctx.clone())
            .or_insert_with(|| {
                let reach = Reach::new(
                    idx,
                    &[Entry {
                        label: String::new(),
                        context: ctx.clone(),
                    }],
                );
                trunk_calls.iter().find_map(|&(ci, s)| {
                    let path = reach.path(ci, s, rel)?;
                    Some((format!("{}:{}", rel(&s.file), s.line), path))
                })
            })
            .clone();
        let Some((dial, path)) = hit else {
            continue;
        };
        let who = if e.name == "anonymous" {
            "the anonymous endpoint takes every caller pjsip cannot identify".to_string()
        } else {
            format!(
                "endpoint {} has no auth= and is not pinned to addresses, so anyone may call as it",
                e.name
            )
        };
        let message =
            format!("{who}, and its context reaches a Dial() to a trunk ({dial}): {path}");
        let fix = "give it a context that reaches only local extensions, or require auth= (or identify_by=ip with a match= on the peer's address)";
        let (file, line) = match e.get("context") {
            Some(v) => (rel(&v.file), v.line),
            None => (rel(&e.file), e.line),
        };
        out.push(Finding {
            severity: Severity::High,
            file,
            line,
            object: e.name.clone(),
            message,
            fix: fix.to_string(),
        });
    }
    out
}

/// AMI clients of pbxguard's gateway that may originate (or redirect, transfer) with no
/// context list: they can send a call into any context.
pub fn ami_clients(clients: &[AmiClientInfo]) -> Vec<Finding> {
    clients
        .iter()
        .filter(|c| c.originate && c.contexts.is_empty())
        .map(|c| Finding {
            severity: Severity::Medium,
            file: AMI_CLIENTS_FILE.to_string(),
            line: 0,
            object: c.name.clone(),
            message: "AMI client may Originate, Redirect or transfer calls into any context (no --context list): every dialplan context is its entry point".into(),
            fix: format!("pbxguard ami user edit {} --context CTX (once per context it needs)", c.name),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dial_channels() {
        let t = |tech: &str, endpoint: &str, number: Option<&str>| DialTarget {
            tech: tech.into(),
            endpoint: endpoint.into(),
            number: number.map(str::to_string),
        };
        assert_eq!(
            dial_targets("PJSIP/${EXTEN}@trunk&PJSIP/1001"),
            [
                t("pjsip", "trunk", Some("${EXTEN}")),
                t("pjsip", "1001", None)
            ]
        );
        assert_eq!(
            dial_targets("PJSIP/trunk/sip:${EXTEN:1}@carrier.example.com"),
            [t("pjsip", "trunk", Some("${EXTEN:1}"))]
        );
        assert_eq!(
            dial_targets("SIP/trunk/${EXTEN}"),
            [t("sip", "trunk", Some("${EXTEN}"))]
        );
        assert_eq!(
            dial_targets("IAX2/user:secret@peer:4569/${EXTEN}@ctx&DAHDI/g1/${EXTEN}&DAHDI/3"),
            [
                t("iax2", "peer", Some("${EXTEN}")),
                t("dahdi", "g1", Some("${EXTEN}")),
                t("dahdi", "3", None)
            ]
        );
        assert_eq!(dial_targets("Local/1@x&Console/dsp"), []);
        let eps = Endpoints {
            iax_trunks: ["itsp".to_string()].into(),
            ..Endpoints::default()
        };
        let trunk = |chan: &str| dial_targets(chan)[0].is_trunk(&eps);
        assert!(trunk("IAX2/itsp/${EXTEN}") && trunk("IAX2/198.51.100.7/${EXTEN}"));
        assert!(trunk("DAHDI/g1/${EXTEN}") && trunk("DAHDI/r2/0${EXTEN}"));
        assert!(!trunk("IAX2/phone/${EXTEN}") && !trunk("IAX2/itsp") && !trunk("DAHDI/4"));
    }

    #[test]
    fn calls_placed_through_wrappers() {
        let plan = Dialplan::default();
        let step = |app: &str, args: &str| Step {
            extension: "_X.".into(),
            callerid: None,
            priority: Priority::Number(1),
            label: None,
            app: app.into(),
            args: args.into(),
            file: "x".into(),
            line: 1,
        };
        let got = |app: &str, args: &str| placed_calls(&plan, &step(app, args));
        assert_eq!(
            got("Dial", "DAHDI/g1/${EXTEN},30"),
            ["DAHDI/g1/${EXTEN},30"]
        );
        assert_eq!(
            got("ExecIf", "$[${X}]?Dial(PJSIP/${EXTEN}@t,30):Dial(PJSIP/1)"),
            ["PJSIP/${EXTEN}@t,30", "PJSIP/1"]
        );
        assert_eq!(got("TryExec", "Dial(IAX2/t/${EXTEN})"), ["IAX2/t/${EXTEN}"]);
        assert_eq!(
            got("Originate", "PJSIP/${EXTEN}@t,app,Dial,PJSIP/x\\,30"),
            ["PJSIP/${EXTEN}@t", "PJSIP/x,30"]
        );
        assert!(got("Playback", "x").is_empty());
        let mut hint = step("Dial", "PJSIP/${EXTEN}@t");
        hint.priority = Priority::Hint;
        assert!(placed_calls(&plan, &hint).is_empty());
    }

    #[test]
    fn unrestricted_numbers() {
        let e = Exten::parse;
        assert!(unrestricted("${EXTEN}", &e("_X.")));
        assert!(unrestricted("+${EXTEN}", &e("_X.")));
        assert!(unrestricted("${EXTEN:1}", &e("_9X.")), "the 9 is cut off");
        assert!(unrestricted("${EXTEN:-10}", &e("_00X.")));
        assert!(unrestricted("${EXTEN:${OFF}}", &e("_00X.")));
        assert!(!unrestricted("${EXTEN:1}", &e("_900X.")));
        assert!(!unrestricted("${EXTEN}", &e("_00X.")));
        assert!(!unrestricted("0044${EXTEN}", &e("_X.")));
        assert!(
            !unrestricted("${EXTEN}", &e("18005550100")),
            "one fixed number"
        );
        assert!(!unrestricted("18005550100", &e("_X.")));
        assert!(!unrestricted("${EXTENSION}", &e("_X.")));
    }

    #[test]
    fn exten_filtering_and_function_calls() {
        let f = |s: &str| exten_uses(s).any(|i| !filtered(s, i));
        assert!(f("PJSIP/${EXTEN}"));
        assert!(f("PJSIP/${EXTEN:1}@t"));
        assert!(!f("PJSIP/${FILTER(0-9*#+,${EXTEN})}"));
        assert!(!f("PJSIP/${filter(0-9,${EXTEN:2})}@t"));
        assert!(
            f("PJSIP/${FILTER(0-9a-z&,${EXTEN})}"),
            "a set that lets & through"
        );
        assert!(!f("PJSIP/${EXTENSION}"));
        assert!(calls("x=${SHELL(ls)}", "shell") && calls("$[${file(/etc/x)}]", "file"));
        assert!(!calls("${PROFILE(x)}", "file") && !calls("${EVAL_EXTEN(x)}", "eval"));
    }

    #[test]
    fn contacts_off_this_host() {
        assert!(remote_contact("sip:sip.example.com"));
        assert!(remote_contact("sip:user@198.51.100.7:5060;transport=tcp"));
        assert!(!remote_contact("sip:127.0.0.1:5070"));
        assert!(!remote_contact("sip:user@[::1]:5060"));
        assert!(remote_contact("sip:127.0.0.1,sip:192.0.2.9"));
    }

    #[test]
    fn clients_that_may_originate_anywhere() {
        let c = |name: &str, originate, contexts: &[&str]| AmiClientInfo {
            name: name.into(),
            originate,
            contexts: contexts.iter().map(|s| s.to_string()).collect(),
        };
        let got = ami_clients(&[
            c("wallboard", false, &[]),
            c("dialer", true, &[]),
            c("crm", true, &["sales*"]),
        ]);
        assert_eq!(got.len(), 1);
        assert_eq!(
            (got[0].file.as_str(), got[0].line, got[0].object.as_str()),
            ("pbxguard", 0, "dialer")
        );
        assert_eq!(got[0].severity, Severity::Medium);
        assert!(got[0]
            .fix
            .contains("pbxguard ami user edit dialer --context"));
    }
}

#[cfg(test)]
mod rule_tests {
    use crate::audit::{asterisk_with, AmiClientInfo, Finding, Severity};

    const PJSIP: &str = "\
[phone](!)
type = endpoint
context = phones
auth = phone
media_encryption = dtls
dtls_verify = fingerprint

[1001](phone)

[anonymous]
type = endpoint
context = public

[carrier]
type = endpoint
context = from-carrier
outbound_auth = carrier-auth
aors = carrier

[registered]
type = endpoint
context = from-carrier
auth = r

[reg]
type = registration
endpoint = registered

[static]
type = endpoint
context = from-carrier
auth = s
aors = static

[static]
type = aor
contact = sip:203.0.113.5:5060

[pbx2]
type = endpoint
context = from-carrier
auth = p
aors = pbx2

[pbx2]
type = aor
contact = sip:127.0.0.1:5070
";

    /// The dialplan findings (those whose file is extensions.conf, or pbxguard for AMI
    /// clients, or the rule about guests) on `extensions` beside [`PJSIP`].
    fn audit(extensions: &str, clients: &[AmiClientInfo]) -> Vec<Finding> {
        audit_files(
            &[("pjsip.conf", PJSIP), ("extensions.conf", extensions)],
            clients,
        )
    }

    /// As [`audit`], with exactly these files.
    fn audit_files(files: &[(&str, &str)], clients: &[AmiClientInfo]) -> Vec<Finding> {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        asterisk_with(dir.path(), clients)
            .unwrap()
            .into_iter()
            .filter(|f| f.file != "pjsip.conf" || f.message.contains("reaches a Dial() to a trunk"))
            .collect()
    }

    fn brief(all: &[Finding]) -> Vec<String> {
        all.iter()
            .map(|f| {
                format!(
                    "{} {}:{} [{}] {}",
                    f.severity.name(),
                    f.file,
                    f.line,
                    f.object,
                    f.message.split([':', ',']).next().unwrap()
                )
            })
            .collect()
    }

    #[test]
    fn shell_and_files_reachable_by_callers() {
        let all = audit(
            "[phones]\ninclude => tools\nexten => 9,1,Goto(admin,s,1)\n\
             [tools]\nexten => 1,1,System(/bin/true)\nexten => 2,1,Set(A=${shell(id)})\n\
             exten => 3,1,ExecIf($[1]?TrySystem(x))\nexten => 4,1,Set(B=${EVAL(${X})})\n\
             exten => 5,1,Verbose(${FILE(/etc/passwd)})\nexten => 6,1,TrySystem(y)\n\
             exten => 7,hint,Custom:${SHELL(x)}\nexten => 8,1,Set(C=${PROFILE(x)})\n\
             [admin]\nexten => s,1,NoOp\nexten => 100,1,System(not reached)\n\
             [cron]\nexten => s,1,System(nobody calls here)\n\
             [admin]\nexten => h,1,TrySystem(runs at hangup after the Goto)\n",
            &[],
        );
        assert_eq!(
            brief(&all),
            [
                "high extensions.conf:5 [tools] System() runs a shell command",
                "high extensions.conf:6 [tools] SHELL() runs a shell command",
                "high extensions.conf:7 [tools] TrySystem() through ExecIf() runs a shell command",
                "high extensions.conf:8 [tools] EVAL() runs what a variable holds as dialplan (a caller-set value such as CALLERID(name) or a SIP header can carry ${SHELL(…)})",
                "high extensions.conf:9 [tools] FILE() reads and writes files on the host",
                "high extensions.conf:10 [tools] TrySystem() runs a shell command",
                "high extensions.conf:19 [admin] TrySystem() runs a shell command",
            ]
        );
        assert!(
            all[0]
                .message
                .ends_with("callers reach it: endpoint 1001 → [phones] → include => [tools] (extensions.conf:2)"),
            "{}",
            all[0].message
        );
        assert!(all.iter().all(|f| !f.fix.is_empty()));
    }

    #[test]
    fn ami_contexts_are_entry_points() {
        let plan = "[sales]\nexten => _X.,1,System(x)\n[support]\nexten => s,1,System(y)\n";
        let client = |originate, contexts: &[&str]| AmiClientInfo {
            name: "crm".into(),
            originate,
            contexts: contexts.iter().map(|s| s.to_string()).collect(),
        };
        assert!(
            audit(plan, &[]).is_empty(),
            "no endpoint uses these contexts"
        );
        assert!(
            audit(plan, &[client(false, &[])]).is_empty(),
            "no originate"
        );
        let all = audit(plan, &[client(true, &["sal*"])]);
        assert_eq!(
            brief(&all),
            ["high extensions.conf:2 [sales] System() runs a shell command"]
        );
        assert!(
            all[0].message.ends_with("AMI client crm → [sales]"),
            "{}",
            all[0].message
        );
        // No context list: everything is reachable, and the client itself is reported.
        let all = audit(plan, &[client(true, &[])]);
        assert_eq!(
            brief(&all),
            [
                "high extensions.conf:2 [sales] System() runs a shell command",
                "high extensions.conf:4 [support] System() runs a shell command",
                "medium pbxguard:0 [crm] AMI client may Originate",
            ]
        );
    }

    #[test]
    fn dialplan_injection_through_exten() {
        let all = audit(
            "[nobody]\n\
             exten => _.,1,Dial(PJSIP/${EXTEN},30)\n\
             exten => _[a-z0-9].,1,Dial(PJSIP/${EXTEN:1}@x)\n\
             exten => _!,1,Dial(PJSIP/${FILTER(0-9,${EXTEN})})\n\
             exten => _X.,1,Dial(PJSIP/${EXTEN})\n\
             exten => s,1,Dial(PJSIP/${EXTEN})\n\
             exten => _abc.,1,Set(X=${EXTEN})\n\
             exten => _abc.,n,Dial(SIP/${EXTEN})\n",
            &[],
        );
        assert_eq!(
            brief(&all),
            [
                "high extensions.conf:2 [nobody] Dial() takes ${EXTEN} from pattern _. which admits characters outside 0-9*#+",
                "high extensions.conf:3 [nobody] Dial() takes ${EXTEN} from pattern _[a-z0-9]. which admits characters outside 0-9*#+",
                "high extensions.conf:8 [nobody] Dial() takes ${EXTEN} from pattern _abc. which admits characters outside 0-9*#+",
            ],
            "reported whether callers reach the context or not"
        );
    }

    #[test]
    fn trunks_dialled_with_no_prefix_restriction() {
        let all = audit(
            "[globals]\nOUT=carrier\n\
             [phones]\ninclude => out\n\
             exten => _9X.,1,Dial(PJSIP/${EXTEN:1}@carrier)\n\
             exten => _00X.,1,Dial(PJSIP/${EXTEN}@carrier)\n\
             exten => _0X.,1,Dial(PJSIP/${EXTEN}@1001)\n\
             exten => _X.,1,Dial(PJSIP/0044${EXTEN}@carrier)\n\
             exten => _N.,1,Dial(PJSIP/pbx2/sip:${EXTEN}@127.0.0.1:5070)\n\
             [out]\n\
             exten => _X.,1,Dial(PJSIP/${EXTEN}@${OUT})\n\
             exten => _Z.,1,Dial(PJSIP/registered/sip:${EXTEN}@provider.example)\n\
             exten => _N.,1,Dial(SIP/static/${EXTEN})\n\
             [unreached]\nexten => _X.,1,Dial(PJSIP/${EXTEN}@carrier)\n",
            &[],
        );
        assert_eq!(
            brief(&all),
            [
                "medium extensions.conf:5 [phones] pattern _9X. sends whatever number the caller dials to trunk carrier with no fixed prefix (premium and international numbers too)",
                "medium extensions.conf:11 [out] pattern _X. sends whatever number the caller dials to trunk carrier with no fixed prefix (premium and international numbers too)",
                "medium extensions.conf:12 [out] pattern _Z. sends whatever number the caller dials to trunk registered with no fixed prefix (premium and international numbers too)",
                "medium extensions.conf:13 [out] pattern _N. sends whatever number the caller dials to trunk static with no fixed prefix (premium and international numbers too)",
            ]
        );
    }

    #[test]
    fn guests_that_reach_a_trunk() {
        let all = audit(
            "[public]\nexten => s,1,Goto(menu,s,1)\n\
             [menu]\nexten => s,1,Playback(x)\nexten => 1,1,Dial(PJSIP/18005550100@carrier)\n\
             [phones]\nexten => 1,1,Dial(PJSIP/18005550100@carrier)\n",
            &[],
        );
        // The Goto reaches menu's `s`, not its `1`; 1001 authenticates.
        assert!(brief(&all).is_empty(), "{:#?}", all);
        // A menu: the caller's digits pick the extension, the include's too.
        let all = audit(
            "[public]\nexten => s,1,Goto(menu,s,1)\n\
             [menu]\nexten => s,1,Background(x)\n same => n,WaitExten(5)\n\
             include => dial\n[dial]\nexten => 1,1,Dial(PJSIP/18005550100@carrier)\n",
            &[],
        );
        assert_eq!(brief(&all).len(), 1, "{all:#?}");
        assert!(
            all[0].message.ends_with("(extensions.conf:8): [public] → Goto [menu] s (extensions.conf:2) → Background [menu] (extensions.conf:4) → include => [dial] (extensions.conf:6)"),
            "{}",
            all[0].message
        );
        let all = audit(
            "[public]\ninclude => menu\n[menu]\ninclude => dial\n\
             [dial]\nexten => 1,1,Dial(PJSIP/18005550100@carrier)\n",
            &[],
        );
        assert_eq!(
            brief(&all),
            ["high pjsip.conf:12 [anonymous] the anonymous endpoint takes every caller pjsip cannot identify"]
        );
        assert!(
            all[0].message.contains("(extensions.conf:6): [public] → include => [menu] (extensions.conf:2) → include => [dial] (extensions.conf:4)"),
            "{}",
            all[0].message
        );
        assert_eq!(all[0].severity, Severity::High);
    }

    #[test]
    fn shell_and_programs_beyond_system() {
        let all = audit(
            "[globals]\nCMD=/usr/bin/convert ${MIXMONITOR_FILENAME}\nFN=SHELL\n\
             [phones]\n\
             exten => 1,1,MixMonitor(${UNIQUEID}.wav,b,${CMD})\n\
             exten => 2,1,Originate(Local/1@x,app,System,/bin/true)\n\
             exten => 3,1,AGI(/var/lib/asterisk/agi-bin/lookup.sh,${CALLERID(num)})\n\
             exten => 4,1,EAGI(agi://127.0.0.1/ok)\n\
             exten => 5,1,ExternalIVR(/usr/local/bin/ivr,n)\n\
             exten => 6,1,ExternalIVR(ivr://127.0.0.1)\n\
             exten => 7,1,Queue(support,t,,,30,/usr/local/bin/screen.sh)\n\
             exten => 8,1,Queue(support,t,,,30,hagi://agi.example.com/x)\n\
             exten => 9,1,Set(X=${${F}(id)})\n\
             exten => 10,1,Set(X=${${FN}(id)})\n\
             exten => 11,1,MixMonitor(${UNIQUEID}.wav,b)\n\
             exten => 12,1,ExecIf($[1]?Exec(DeadAGI(/bin/sh)))\n\
             exten => 13,1,Set(X=${${EXTEN}})\n",
            &[],
        );
        assert_eq!(
            brief(&all),
            [
                "high extensions.conf:5 [phones] MixMonitor() runs its third argument as a shell command when the recording ends",
                "high extensions.conf:6 [phones] System() through Originate() runs a shell command",
                "high extensions.conf:13 [phones] a dialplan function is called by a name a variable holds (`${${…}(…)}`)",
                "high extensions.conf:14 [phones] SHELL() runs a shell command",
                "medium extensions.conf:7 [phones] AGI() runs the program /var/lib/asterisk/agi-bin/lookup.sh on the host",
                "medium extensions.conf:9 [phones] ExternalIVR() runs the program /usr/local/bin/ivr on the host",
                "medium extensions.conf:11 [phones] Queue() runs the AGI program /usr/local/bin/screen.sh on the host when a member answers",
                "medium extensions.conf:16 [phones] DeadAGI() through Exec() runs the program /bin/sh on the host",
            ]
        );
        let agi = all.iter().find(|f| f.line == 7).unwrap();
        assert!(agi.fix.contains("FastAGI"), "{}", agi.fix);
    }

    #[test]
    fn other_channel_drivers_are_ways_in() {
        let plan = "[from-iax]\nexten => s,1,System(a)\n[from-dahdi]\nexten => s,1,System(b)\n\
                    [from-wizard]\nexten => s,1,System(c)\n[default]\nexten => s,1,System(d)\n\
                    [nobody]\nexten => s,1,System(e)\n";
        let lines = |files: &[(&str, &str)]| -> Vec<String> {
            audit_files(files, &[])
                .iter()
                .map(|f| format!("{}:{} {}", f.file, f.line, f.message))
                .collect()
        };
        // pjsip.conf with no endpoint: it says which contexts callers use (none).
        assert!(lines(&[("extensions.conf", plan), ("pjsip.conf", "")]).is_empty());
        let got = lines(&[
            ("extensions.conf", plan),
            (
                "iax.conf",
                "[general]\ncontext=nobody\n[office]\ntype=friend\ncontext=from-iax\nhost=dynamic\n",
            ),
            (
                "chan_dahdi.conf",
                "[channels]\ncontext=from-dahdi\nchannel => 1-4\n",
            ),
            (
                "pjsip_wizard.conf",
                "[w1]\ntype = wizard\nendpoint/context = from-wizard\n[w2]\ntype = wizard\n",
            ),
        ]);
        assert_eq!(got.len(), 4, "{got:#?}");
        assert!(
            got[0].ends_with("callers reach it: iax2 office → [from-iax]"),
            "{got:#?}"
        );
        assert!(
            got[1].ends_with("callers reach it: DAHDI channels [channels] (line 2) → [from-dahdi]"),
            "{got:#?}"
        );
        assert!(
            got[2].ends_with("wizard endpoint w1 → [from-wizard]"),
            "{got:#?}"
        );
        assert!(
            got[3].ends_with("wizard endpoint w2 → [default]"),
            "{got:#?}"
        );
        // No channel driver's file at all: every context is a way in, and the message says so.
        let got = lines(&[("extensions.conf", plan)]);
        assert_eq!(got.len(), 5, "{got:#?}");
        assert!(
            got.iter().all(|m| m.contains(
                "any context (no pjsip.conf, pjsip_wizard.conf, iax.conf or chan_dahdi.conf"
            )),
            "{got:#?}"
        );
    }

    #[test]
    fn trunks_of_other_channel_drivers_and_wrapped_dials() {
        let files = |plan: &'static str| {
            [
                ("pjsip.conf", PJSIP),
                ("extensions.conf", plan),
                (
                    "iax.conf",
                    "[itsp]\ntype=peer\nhost=198.51.100.9\n[desk]\ntype=friend\nhost=dynamic\ncontext=phones\n",
                ),
            ]
        };
        let all = audit_files(
            &files(
                "[phones]\n\
                 exten => _X.,1,Dial(DAHDI/g1/${EXTEN})\n\
                 exten => _N.,1,Dial(IAX2/itsp/${EXTEN})\n\
                 exten => _Z.,1,ExecIf($[1]?Dial(PJSIP/${EXTEN}@carrier))\n\
                 exten => _[2-8]X.,1,Originate(PJSIP/${EXTEN}@carrier,exten,phones,s)\n\
                 exten => _8X.,1,Dial(IAX2/desk/${EXTEN})\n\
                 exten => _00X.,1,Dial(DAHDI/g1/${EXTEN})\n\
                 exten => _7X.,1,Dial(DAHDI/4)\n",
            ),
            &[],
        );
        assert_eq!(
            brief(&all),
            [
                "medium extensions.conf:2 [phones] pattern _X. sends whatever number the caller dials to trunk DAHDI/g1 with no fixed prefix (premium and international numbers too)",
                "medium extensions.conf:3 [phones] pattern _N. sends whatever number the caller dials to trunk IAX2/itsp with no fixed prefix (premium and international numbers too)",
                "medium extensions.conf:4 [phones] pattern _Z. sends whatever number the caller dials to trunk carrier with no fixed prefix (premium and international numbers too)",
                "medium extensions.conf:5 [phones] pattern _[2-8]X. sends whatever number the caller dials to trunk carrier with no fixed prefix (premium and international numbers too)",
            ]
        );
    }
}
