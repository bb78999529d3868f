//! The dialplan checks (issue 20's toll-fraud guard, its audit part): shell and file access
//! reachable by callers, dialplan injection through `${EXTEN}`, trunks dialled with no prefix
//! restriction, guest endpoints that reach a trunk, and AMI clients that may originate
//! anywhere.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use super::exten::{dialable, Exten};
use super::reach::{Entry, Reach};
use super::{split_args, Dialplan, Priority, Step};
use crate::audit::conf::{Category, Conf};
use crate::audit::rules::{loopback_only, type_of, unauthenticated};
use crate::audit::{AmiClientInfo, Finding, Severity};

/// The label AMI client findings carry instead of a file: the clients live in pbxguard's
/// store, not under the audited folder.
pub const AMI_CLIENTS_FILE: &str = "pbxguard";

/// What the dialplan checks need from pjsip.conf.
#[derive(Debug, Default)]
pub struct Endpoints<'c> {
    /// Every endpoint with its `context=` line (pjsip's default context is `default`).
    all: Vec<(&'c Category, String)>,
    /// Endpoints a call to which leaves the PBX (see [`trunks`]).
    trunks: HashSet<String>,
    /// Endpoints anyone can call from (see [`guest`]).
    guests: Vec<&'c Category>,
}

impl<'c> Endpoints<'c> {
    pub fn of(pjsip: Option<&'c Conf>) -> Endpoints<'c> {
        let Some(p) = pjsip else {
            return Endpoints::default();
        };
        let identified: Vec<String> = p
            .sections()
            .filter(|c| type_of(c) == Some("identify") && c.get("match").is_some())
            .filter_map(|c| c.value("endpoint").map(str::to_string))
            .collect();
        let endpoints: Vec<&Category> = p
            .sections()
            .filter(|c| type_of(c) == Some("endpoint"))
            .collect();
        Endpoints {
            all: endpoints
                .iter()
                .map(|e| (*e, e.value("context").unwrap_or("default").to_string()))
                .collect(),
            trunks: trunks(p, &endpoints),
            guests: endpoints
                .iter()
                .copied()
                .filter(|e| guest(e, &identified))
                .collect(),
        }
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

/// A channel `Dial()` calls on pjsip (or chan_sip's syntax, looked up among pjsip endpoints).
#[derive(Debug, Clone, PartialEq, Eq)]
struct DialTarget {
    endpoint: String,
    /// The number sent to it, when the channel names one.
    number: Option<String>,
}

/// `PJSIP/endpoint`, `PJSIP/number@endpoint`, `PJSIP/endpoint/sip:number@host`,
/// `SIP/peer/number`, `SIP/number@peer`, `&`-separated, in Dial's first argument.
fn dial_targets(args: &str) -> Vec<DialTarget> {
    let first = split_args(args, ',').first().copied().unwrap_or("");
    split_args(first, '&')
        .into_iter()
        .filter_map(|chan| {
            let (tech, rest) = chan.trim().split_once('/')?;
            if !tech.eq_ignore_ascii_case("pjsip") && !tech.eq_ignore_ascii_case("sip") {
                return None;
            }
            let (endpoint, number) = match rest.split_once('/') {
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
            };
            Some(DialTarget {
                endpoint: endpoint.trim().to_string(),
                number: number.map(|n| n.trim().to_string()),
            })
        })
        .collect()
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
    let lower = text.to_ascii_lowercase();
    let needle = format!("{name}(");
    lower.match_indices(&needle).any(|(i, _)| {
        !lower[..i]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

/// What makes a step dangerous to reach: the host's shell or files.
fn dangerous(step: &Step) -> Option<String> {
    if step.priority == Priority::Hint {
        return None;
    }
    let app = step.app.trim();
    let lower = app.to_ascii_lowercase();
    if lower == "system" || lower == "trysystem" {
        return Some(format!("{app}() runs a shell command"));
    }
    if matches!(lower.as_str(), "exec" | "tryexec" | "execif")
        && (calls(&step.args, "system") || calls(&step.args, "trysystem"))
    {
        return Some(format!("System() through {app}() runs a shell command"));
    }
    let what = if calls(&step.args, "shell") {
        "SHELL() runs a shell command"
    } else if calls(&step.args, "eval") {
        "EVAL() runs what a variable holds as dialplan (a caller-set value such as CALLERID(name) or a SIP header can carry ${SHELL(…)})"
    } else if calls(&step.args, "file") {
        "FILE() reads and writes files on the host"
    } else {
        return None;
    };
    Some(what.to_string())
}

fn is_dial(step: &Step) -> bool {
    step.priority != Priority::Hint && step.app.trim().eq_ignore_ascii_case("dial")
}

/// Entry points: each endpoint's context, and the contexts each AMI client may originate
/// into (every context for one with no `--context` list).
fn entries(plan: &Dialplan, eps: &Endpoints<'_>, clients: &[AmiClientInfo]) -> Vec<Entry> {
    let mut out: Vec<Entry> = eps
        .all
        .iter()
        .map(|(e, ctx)| Entry {
            label: format!("endpoint {}", e.name),
            context: ctx.clone(),
        })
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
    out
}

/// The dialplan findings. `rel` names files relative to the audited folder.
pub fn check(
    plan: &Dialplan,
    pjsip: Option<&Conf>,
    clients: &[AmiClientInfo],
    rel: &dyn Fn(&Path) -> String,
) -> Vec<Finding> {
    let eps = Endpoints::of(pjsip);
    let reach = Reach::new(plan, &entries(plan, &eps, clients));
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
            if let Some(what) = dangerous(step) {
                if let Some(path) = reach.path(ci, step, rel) {
                    out.push(at(
                        step,
                        Severity::High,
                        &ctx.name,
                        format!("{what}, and callers reach it: {path}"),
                        "move it to a context no endpoint or AMI client reaches (no include => or Goto leads there from theirs), or remove it",
                    ));
                }
            }
            if !is_dial(step) {
                continue;
            }
            let args = plan.expand(&step.args);
            let ext = Exten::parse(&step.extension);
            if ext.admits_non_dialable() && exten_uses(&args).any(|i| !filtered(&args, i)) {
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
            let open_trunk = dial_targets(&args).into_iter().find(|t| {
                eps.trunks.contains(&t.endpoint)
                    && t.number.as_deref().is_some_and(|n| unrestricted(n, &ext))
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
                        step.extension, t.endpoint
                    ),
                    "dial out through patterns with an explicit national or international prefix (e.g. _0X. or _00X.) and list premium ranges in pbxguard's [dialing] deny_prefixes",
                ));
            }
        }
    }
    out.extend(guests(plan, &eps, rel));
    out
}

/// Guest endpoints whose context reaches a `Dial()` to a trunk, whatever the number.
fn guests(plan: &Dialplan, eps: &Endpoints<'_>, rel: &dyn Fn(&Path) -> String) -> Vec<Finding> {
    let mut out = Vec::new();
    // Per context: where a trunk is dialled from it, and how.
    let mut found: HashMap<String, Option<(String, String)>> = HashMap::new();
    for e in &eps.guests {
        let ctx = e.value("context").unwrap_or("default").to_string();
        let hit = found
            .entry(ctx.clone())
            .or_insert_with(|| {
                let reach = Reach::new(
                    plan,
                    &[Entry {
                        label: String::new(),
                        context: ctx.clone(),
                    }],
                );
                plan.contexts.iter().enumerate().find_map(|(ci, c)| {
                    c.steps.iter().find_map(|s| {
                        let trunk = is_dial(s)
                            && reach.reaches(ci, s)
                            && dial_targets(&plan.expand(&s.args))
                                .iter()
                                .any(|t| eps.trunks.contains(&t.endpoint));
                        if !trunk {
                            return None;
                        }
                        let path = reach.path(ci, s, rel)?;
                        Some((format!("{}:{}", rel(&s.file), s.line), path))
                    })
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
        let t = |endpoint: &str, number: Option<&str>| DialTarget {
            endpoint: endpoint.into(),
            number: number.map(str::to_string),
        };
        assert_eq!(
            dial_targets("PJSIP/${EXTEN}@trunk&PJSIP/1001,30,tT"),
            [t("trunk", Some("${EXTEN}")), t("1001", None)]
        );
        assert_eq!(
            dial_targets("PJSIP/trunk/sip:${EXTEN:1}@carrier.example.com"),
            [t("trunk", Some("${EXTEN:1}"))]
        );
        assert_eq!(
            dial_targets("SIP/trunk/${EXTEN}"),
            [t("trunk", Some("${EXTEN}"))]
        );
        assert_eq!(dial_targets("IAX2/peer/123&DAHDI/g1/5"), []);
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
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pjsip.conf"), PJSIP).unwrap();
        std::fs::write(dir.path().join("extensions.conf"), extensions).unwrap();
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
             [admin]\nexten => s,1,NoOp\nexten => t,1,System(not reached)\n\
             [cron]\nexten => s,1,System(nobody calls here)\n",
            &[],
        );
        assert_eq!(
            brief(&all),
            [
                "high extensions.conf:5 [tools] System() runs a shell command",
                "high extensions.conf:6 [tools] SHELL() runs a shell command",
                "high extensions.conf:7 [tools] System() through ExecIf() runs a shell command",
                "high extensions.conf:8 [tools] EVAL() runs what a variable holds as dialplan (a caller-set value such as CALLERID(name) or a SIP header can carry ${SHELL(…)})",
                "high extensions.conf:9 [tools] FILE() reads and writes files on the host",
                "high extensions.conf:10 [tools] TrySystem() runs a shell command",
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
}
