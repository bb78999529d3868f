//! The toll-fraud rules for the AMI actions that place or move calls (`Originate`, `Redirect`,
//! `BlindTransfer`, `Atxfer`): the dialplan contexts they name, against the client's
//! `--context` list, and the destinations they dial, against `[dialing]`.
//!
//! Headers are read as Asterisk 22's `main/manager.c` reads them ([`Message::get`]: the first
//! occurrence, leading blanks skipped, trailing ones kept), and channel strings are taken apart
//! as `main/core_local.c` does, so that what is checked is what Asterisk runs.

use std::time::Duration;

use super::codec::Message;
use super::policy::ClientPolicy;
use crate::dialing::destination::channel_targets;
use crate::dialing::Rule;

/// `AST_MAX_CONTEXT` (80) less its NUL: Asterisk cuts longer context names to this, so a longer
/// one could name another context than the one checked.
pub const MAX_CONTEXT: usize = 79;
/// `action_originate` copies `Channel` into a 256-byte buffer before splitting it.
const ORIGINATE_CHANNEL: usize = 255;
/// `action_originate`'s dial timeout when `Timeout` is not given.
const DEFAULT_TIMEOUT: Duration = Duration::from_millis(30_000);

/// The actions that place or move calls (lower case), in their usual spelling.
pub const CALL_ACTIONS: &[(&str, &str)] = &[
    ("originate", "Originate"),
    ("redirect", "Redirect"),
    ("blindtransfer", "BlindTransfer"),
    ("atxfer", "Atxfer"),
];

/// Why a call action was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRefusal {
    pub rule: Rule,
    /// What was refused, for the audit row and the alert: the context or the destination.
    pub what: String,
    /// How to do it right, where the client can (contexts are the client's own business, so
    /// saying which header is wrong gives an attacker nothing).
    pub hint: Option<&'static str>,
}

impl CallRefusal {
    /// The AMI `Message:` text: the rule's name and its explanation.
    pub fn message(&self) -> String {
        let mut m = format!(
            "Refused by pbxguard ({}): {}",
            self.rule.name(),
            self.rule.explain()
        );
        if let Some(hint) = self.hint {
            m.push_str("; ");
            m.push_str(hint);
        }
        m
    }
}

/// An `Originate` that may go: what tells when Asterisk has given its final answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Originate {
    /// `Async:` true (Asterisk's `ast_true`): the final answer is the `OriginateResponse`
    /// event, not the `Response`.
    pub asynchronous: bool,
    /// How long Asterisk lets the call ring (`Timeout:`, milliseconds); `None` when it has no
    /// limit (zero or negative).
    pub timeout: Option<Duration>,
}

/// Asterisk's `ast_true`.
fn ast_true(v: &[u8]) -> bool {
    ["yes", "true", "y", "t", "1", "on"]
        .iter()
        .any(|t| v.eq_ignore_ascii_case(t.as_bytes()))
}

/// `sscanf(v, "%30d", &to)`: blanks, a sign, then digits; `None` when there are no digits.
fn scan_int(v: &[u8]) -> Option<i64> {
    let text = String::from_utf8_lossy(v);
    let t = text.trim_start_matches(|c: char| c.is_ascii_whitespace() || c == '\u{0b}');
    let (neg, digits) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let n: String = digits
        .chars()
        .take(30)
        .take_while(char::is_ascii_digit)
        .collect();
    if n.is_empty() {
        return None;
    }
    // Past i32 sscanf's result is undefined; anything that large is "no limit" here anyway.
    let v: i64 = n.parse().unwrap_or(i64::MAX);
    Some(if neg { -v } else { v })
}

fn originate_timing(msg: &Message) -> Originate {
    let timeout = match msg.get("Timeout").filter(|v| !v.is_empty()) {
        None => Some(DEFAULT_TIMEOUT),
        // Not a number: Asterisk answers "Invalid timeout" at once, which ends the call here.
        Some(v) => match scan_int(v) {
            None => Some(DEFAULT_TIMEOUT),
            Some(ms) if ms <= 0 || ms > i64::from(i32::MAX) => None,
            Some(ms) => Some(Duration::from_millis(ms.unsigned_abs())),
        },
    };
    Originate {
        asynchronous: msg.get("Async").is_some_and(ast_true),
        timeout,
    }
}

fn text(v: &[u8]) -> String {
    String::from_utf8_lossy(v).into_owned()
}

/// A header's value as Asterisk takes it, `None` when missing or empty (`ast_strlen_zero`).
pub(super) fn header(msg: &Message, name: &str) -> Option<String> {
    msg.get(name).filter(|v| !v.is_empty()).map(text)
}

/// The context a `Local` dial string (what follows `Local/`) runs in, as `core_local.c`'s
/// `local_alloc` finds it: options after the last `/` dropped, the context after the first
/// `@`, `default` when there is none or it is empty.
pub fn local_dial_context(data: &str) -> &str {
    let parse = data.rfind('/').map_or(data, |i| &data[..i]);
    match parse.split_once('@') {
        Some((_, ctx)) if !ctx.is_empty() => ctx,
        _ => "default",
    }
}

/// The context in the name of an existing Local channel (`Local/EXTEN@CTX-0000002a;1`): the
/// `-XXXXXXXX;N` instance suffix `core_unreal.c` adds is removed first.
pub fn local_channel_context(data: &str) -> &str {
    let base = data
        .rsplit_once(';')
        .filter(|(_, n)| matches!(*n, "1" | "2"))
        .map_or(data, |(b, _)| b);
    let base = base
        .rsplit_once('-')
        .filter(|(_, seq)| seq.len() == 8 && seq.bytes().all(|b| b.is_ascii_hexdigit()))
        .map_or(base, |(b, _)| b);
    match base.split_once('@') {
        Some((_, ctx)) if !ctx.is_empty() => ctx,
        _ => "default",
    }
}

fn is_local(tech: &str) -> bool {
    tech.trim().eq_ignore_ascii_case("local")
}

/// Contexts a channel string names through `Local` channels: read whole, as `Originate` hands
/// it to the channel driver, and also each `&` part (Dial's syntax) and as the shared reader
/// sees it, so that no reading of it reaches a context that was not checked.
pub(super) fn local_contexts(channel: &str, existing: bool) -> Vec<String> {
    let read = |data: &str| {
        if existing {
            local_channel_context(data).to_string()
        } else {
            local_dial_context(data).to_string()
        }
    };
    let mut out = Vec::new();
    let whole = std::iter::once(channel).chain(channel.split('&'));
    for part in whole {
        if let Some((tech, data)) = part.split_once('/') {
            if is_local(tech) {
                out.push(read(data));
            }
        }
    }
    if !existing {
        out.extend(
            channel_targets(channel)
                .into_iter()
                .filter(|t| is_local(&t.tech))
                .filter_map(|t| t.context),
        );
    }
    out.sort();
    out.dedup();
    out
}

/// The context a `PreDialGoSub` runs in: Gosub's label (before any `(`) read as
/// `pbx_parseable_goto` reads it; `None` when it names none (then it is the channel's own,
/// which the client does not choose and pbxguard cannot know).
fn gosub_context(v: &str) -> Option<&str> {
    let label = v.split('(').next().unwrap_or_default();
    let mut parts = label.split(',');
    let context = parts.next()?;
    (parts.count() >= 2 && !context.is_empty()).then_some(context)
}

const NO_APPLICATION: &str = "an Originate into an Application bypasses the dialplan and so \
                              the client's contexts: originate into one of its contexts with \
                              Context, Exten and Priority";
const NAME_CONTEXT: &str = "name one of the client's contexts in Context";
const GOSUB_CONTEXT: &str = "PreDialGoSub must name one of the client's contexts";

pub(super) fn refuse(
    rule: Rule,
    what: impl Into<String>,
    hint: Option<&'static str>,
) -> CallRefusal {
    CallRefusal {
        rule,
        what: what.into(),
        hint,
    }
}

/// A context named in `header` must be one the client was given.
pub(super) fn context_allowed(
    policy: &ClientPolicy,
    header: &str,
    context: &str,
    hint: Option<&'static str>,
) -> Result<(), CallRefusal> {
    if context.len() <= MAX_CONTEXT && policy.allows_context(context) {
        Ok(())
    } else {
        Err(refuse(Rule::Context, format!("{header}: {context}"), hint))
    }
}

/// Contexts of a client confined to some (`policy.contexts` not empty).
fn check_contexts(policy: &ClientPolicy, action: &str, msg: &Message) -> Result<(), CallRefusal> {
    match action {
        "originate" => {
            if let Some(app) = header(msg, "Application") {
                return Err(refuse(
                    Rule::Context,
                    format!("Application: {app}"),
                    Some(NO_APPLICATION),
                ));
            }
            match header(msg, "Context") {
                Some(ctx) => context_allowed(policy, "Context", &ctx, None)?,
                // The call would run in the channel's own context (the endpoint's, or
                // `default`), which the client does not name.
                None => return Err(refuse(Rule::Context, "no Context", Some(NAME_CONTEXT))),
            }
            if let Some(gosub) = header(msg, "PreDialGoSub") {
                match gosub_context(&gosub) {
                    Some(ctx) => context_allowed(policy, "PreDialGoSub", ctx, Some(GOSUB_CONTEXT))?,
                    None => {
                        return Err(refuse(
                            Rule::Context,
                            format!("PreDialGoSub: {gosub}"),
                            Some(GOSUB_CONTEXT),
                        ))
                    }
                }
            }
            if let Some(channel) = originate_channel(msg) {
                for ctx in local_contexts(&channel, false) {
                    context_allowed(policy, "Channel", &ctx, None)?;
                }
            }
            super::routes::check_originate_variables(policy, msg)?;
        }
        "redirect" => {
            // An empty Context is refused by Asterisk itself ("Context not specified").
            for h in ["Context", "ExtraContext"] {
                if let Some(ctx) = header(msg, h) {
                    context_allowed(policy, h, &ctx, None)?;
                }
            }
            for h in ["Channel", "ExtraChannel"] {
                if let Some(channel) = header(msg, h) {
                    for ctx in local_contexts(&channel, true) {
                        context_allowed(policy, h, &ctx, None)?;
                    }
                }
            }
        }
        "blindtransfer" | "atxfer" => {
            match header(msg, "Context") {
                Some(ctx) => context_allowed(policy, "Context", &ctx, None)?,
                // Without one Asterisk uses the channel's own context (or its
                // TRANSFER_CONTEXT): not one the client chose.
                None => return Err(refuse(Rule::Context, "no Context", Some(NAME_CONTEXT))),
            }
            if let Some(channel) = header(msg, "Channel") {
                for ctx in local_contexts(&channel, true) {
                    context_allowed(policy, "Channel", &ctx, None)?;
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// `Channel` of an Originate as Asterisk uses it: cut to its 255-byte buffer.
fn originate_channel(msg: &Message) -> Option<String> {
    let raw = msg.get("Channel").filter(|v| !v.is_empty())?;
    Some(text(&raw[..raw.len().min(ORIGINATE_CHANNEL)]))
}

/// What an action dials, for every client: `Exten` (and `ExtraExten`), the numbers inside an
/// Originate's `Channel` (every `&` part), and the channels of an Originate into `Dial`.
fn destinations(action: &str, msg: &Message) -> Vec<String> {
    let mut out = Vec::new();
    let exten_headers: &[&str] = match action {
        "originate" | "blindtransfer" | "atxfer" => &["Exten"],
        "redirect" => &["Exten", "ExtraExten"],
        _ => return out,
    };
    out.extend(exten_headers.iter().filter_map(|h| header(msg, h)));
    if action == "originate" {
        let mut channels: Vec<String> = originate_channel(msg).into_iter().collect();
        // Page dials the channels of its first argument as Dial does (`&`-separated).
        let dial = header(msg, "Application")
            .is_some_and(|a| a.eq_ignore_ascii_case("dial") || a.eq_ignore_ascii_case("page"));
        if dial {
            if let Some(data) = header(msg, "Data") {
                // Dial's (and Page's) first argument is its channel list; Asterisk removes
                // quotes and backslashes when it splits the arguments, so both readings are
                // checked.
                let unescaped = text(&super::policy::unescape(data.as_bytes()));
                for d in [data, unescaped] {
                    channels.push(d.split(',').next().unwrap_or_default().to_string());
                }
            }
        }
        for channel in channels {
            out.extend(
                channel_targets(&channel)
                    .into_iter()
                    .filter_map(|t| t.number),
            );
        }
    }
    out
}

/// The toll-fraud verdict on one action the client's policy already allows (`action` lower
/// case): contexts first (for a confined client), then every destination through
/// `check_named`. `Ok(Some(_))` for an `Originate`, which the call limits then count.
pub fn check(
    policy: &ClientPolicy,
    action: &str,
    msg: &Message,
    check_named: impl Fn(&str) -> Result<(), Rule>,
) -> Result<Option<Originate>, CallRefusal> {
    let confined = !policy.contexts.is_empty();
    if confined {
        super::routes::check_routes(policy, action, msg)?;
    }
    for dest in super::routes::destinations(action, msg) {
        check_named(&dest).map_err(|rule| refuse(rule, dest.clone(), None))?;
    }
    if !CALL_ACTIONS.iter().any(|(a, _)| *a == action) {
        return Ok(None);
    }
    if confined {
        check_contexts(policy, action, msg)?;
    }
    for dest in destinations(action, msg) {
        check_named(&dest).map_err(|rule| refuse(rule, dest.clone(), None))?;
    }
    Ok((action == "originate").then(|| originate_timing(msg)))
}

/// The call actions (in their usual spelling) an allow list admits: glob patterns as the
/// gateway matches them (case-insensitive).
pub fn call_actions_allowed(allow: &[String]) -> Vec<&'static str> {
    CALL_ACTIONS
        .iter()
        .filter(|(lower, _)| {
            allow
                .iter()
                .any(|p| crate::pattern::wildcard(&p.to_ascii_lowercase(), lower, '*', '\u{0}'))
        })
        .map(|(_, shown)| *shown)
        .collect()
}

#[cfg(test)]
#[path = "calls_tests.rs"]
mod tests;
