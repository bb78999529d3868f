//! The other ways an AMI action places or steers calls, beside the call actions
//! ([`super::calls`]): CLI commands (`res_clioriginate`, `dialplan add …`), `QueueAdd`
//! members, `DialplanExtensionAdd`, and the channel variables Asterisk reads a context from
//! (`FORWARD_CONTEXT`, `TRANSFER_CONTEXT`, `GOTO_ON_BLINDXFR`), set through `Setvar` or an
//! Originate's `Variable:` headers. A client confined to contexts could otherwise reach any
//! context (or a trunk) through them; every client has the numbers they dial checked.

use super::calls::{context_allowed, header, local_contexts, refuse, CallRefusal};
use super::codec::Message;
use super::policy::{cli_words, ClientPolicy};
use crate::dialing::destination::channel_targets;
use crate::dialing::Rule;

/// Channel variables Asterisk takes a context from: `FORWARD_CONTEXT` (a call forward,
/// `main/channel.c` `ast_call_forward`, Dial and Queue), `TRANSFER_CONTEXT` (feature
/// transfers, `main/bridge_basic.c`).
const CONTEXT_VARIABLES: &[&str] = &["FORWARD_CONTEXT", "TRANSFER_CONTEXT"];
/// Where a blind transfer sends the transferer (`context,exten,priority`, `^` allowed for
/// `,`), `main/bridge_basic.c`.
const GOTO_VARIABLE: &str = "GOTO_ON_BLINDXFR";

const CLI_ROUTE: &str = "a client confined to contexts may not place, move or route calls \
                         through CLI commands: use Originate or Redirect with its contexts";
const EXTENSION_ADD: &str = "DialplanExtensionAdd writes dialplan that can dial or jump \
                             anywhere; a client confined to contexts may not use it";
const VARIABLE_CONTEXT: &str = "a variable that names a context must name one of the client's";

/// CLI commands (their first words, as `main/cli.c` matches them: whole words, any case) that
/// place, move or route calls: `res_clioriginate` and `pbx_config`'s dialplan changes.
const CLI_ROUTES: &[&[&str]] = &[
    &["channel", "originate"],
    &["channel", "redirect"],
    &["originate"],
    &["dialplan", "add", "extension"],
    &["dialplan", "add", "include"],
];

/// The name a variable is stored and read under: `ast_var_name` drops the one or two leading
/// `_` that only mark it inherited.
fn var_name(name: &[u8]) -> String {
    let name = name.strip_prefix(b"_").unwrap_or(name);
    let name = name.strip_prefix(b"_").unwrap_or(name);
    // Matched without regard to case and blanks, which can only refuse more.
    String::from_utf8_lossy(name).trim().to_ascii_uppercase()
}

/// A `Variable:` header's items as `man_do_variable_value` gets them: blanks skipped, then
/// `AST_STANDARD_APP_ARGS` (`__ast_app_separate_args` with `,`, at most 64 items, quotes and
/// backslashes removed; parentheses, brackets and quotes keep a `,` inside an item).
fn variable_items(value: &[u8]) -> Vec<Vec<u8>> {
    const MAX: usize = 64;
    let start = value
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(value.len());
    let buf = &value[start..];
    let (mut paren, mut bracket, mut quote) = (0u32, 0u32, false);
    let mut items = Vec::new();
    let mut i = 0;
    let mut was_delim = false;
    while i < buf.len() && items.len() < MAX - 1 {
        let mut item = Vec::new();
        was_delim = false;
        while i < buf.len() {
            let b = buf[i];
            i += 1;
            match b {
                b'(' => paren += 1,
                b')' => paren = paren.saturating_sub(1),
                b'[' => bracket += 1,
                b']' => bracket = bracket.saturating_sub(1),
                b'"' => {
                    quote = !quote;
                    continue;
                }
                b'\\' => {
                    // The next byte is taken as it is.
                    if let Some(&next) = buf.get(i) {
                        item.push(next);
                        i += 1;
                    }
                    continue;
                }
                b',' if paren == 0 && bracket == 0 && !quote => {
                    was_delim = true;
                    break;
                }
                _ => {}
            }
            item.push(b);
        }
        items.push(item);
    }
    if i < buf.len() {
        items.push(buf[i..].to_vec());
    } else if was_delim {
        items.push(Vec::new());
    }
    items
}

/// A variable the client sets (`name`, `value` as Asterisk stores them) must not send calls
/// into a context it was not given.
fn check_variable(
    policy: &ClientPolicy,
    header: &str,
    name: &[u8],
    value: &[u8],
) -> Result<(), CallRefusal> {
    let name = var_name(name);
    let value = String::from_utf8_lossy(value);
    if CONTEXT_VARIABLES.contains(&name.as_str()) {
        // An empty value means "not set" to Asterisk.
        if !value.is_empty() {
            context_allowed(policy, header, &value, Some(VARIABLE_CONTEXT))?;
        }
    } else if name == GOTO_VARIABLE && !value.is_empty() {
        // `pbx_parseable_goto`: only `context,exten,priority` names a context; the shorter
        // forms use the channel's own, which the client does not choose.
        let parts: Vec<&str> = value.split([',', '^']).collect();
        match parts.as_slice() {
            [ctx, _, _] => context_allowed(policy, header, ctx, Some(VARIABLE_CONTEXT))?,
            _ => {
                return Err(refuse(
                    Rule::Context,
                    format!("{header}: {GOTO_VARIABLE}={value}"),
                    Some(VARIABLE_CONTEXT),
                ))
            }
        }
    }
    Ok(())
}

/// The `Variable:` headers of an Originate (every one, each a list of `name=value` items).
pub(super) fn check_originate_variables(
    policy: &ClientPolicy,
    msg: &Message,
) -> Result<(), CallRefusal> {
    for value in msg.all("Variable") {
        for item in variable_items(value) {
            let Some(eq) = item.iter().position(|&b| b == b'=') else {
                continue;
            };
            check_variable(policy, "Variable", &item[..eq], &item[eq + 1..])?;
        }
    }
    Ok(())
}

fn starts_with(words: &[&str], prefix: &[&str]) -> bool {
    words.len() >= prefix.len() && words[..prefix.len()] == *prefix
}

/// The routes other than the call actions, for a client confined to contexts (`action`
/// lower case).
pub(super) fn check_routes(
    policy: &ClientPolicy,
    action: &str,
    msg: &Message,
) -> Result<(), CallRefusal> {
    match action {
        "command" => {
            let owned = msg.get("Command").map(cli_words).unwrap_or_default();
            let words: Vec<&str> = owned.iter().map(String::as_str).collect();
            if let Some(route) = CLI_ROUTES.iter().find(|r| starts_with(&words, r)) {
                return Err(refuse(
                    Rule::Context,
                    format!("Command: {}", route.join(" ")),
                    Some(CLI_ROUTE),
                ));
            }
            // `dialplan set global NAME VALUE`, `dialplan set chanvar CHANNEL NAME VALUE`: a
            // global is read where the channel has no such variable. (The words are
            // lower-cased, so the value cannot be compared with case-sensitive contexts.)
            let name = if starts_with(&words, &["dialplan", "set", "global"]) {
                words.get(3)
            } else if starts_with(&words, &["dialplan", "set", "chanvar"]) {
                words.get(4)
            } else {
                None
            };
            if let Some(name) = name {
                let name = var_name(name.as_bytes());
                if CONTEXT_VARIABLES.contains(&name.as_str()) || name == GOTO_VARIABLE {
                    return Err(refuse(
                        Rule::Context,
                        format!("Command: dialplan set {name}"),
                        Some(CLI_ROUTE),
                    ));
                }
            }
        }
        "dialplanextensionadd" => {
            return Err(refuse(
                Rule::Context,
                "DialplanExtensionAdd",
                Some(EXTENSION_ADD),
            ))
        }
        "queueadd" => {
            // The queue dials the member's Interface (StateInterface only reports its state).
            if let Some(iface) = header(msg, "Interface") {
                for ctx in local_contexts(&iface, false) {
                    context_allowed(policy, "Interface", &ctx, None)?;
                }
            }
        }
        "setvar" => {
            // Without a Channel the variable is a global, which every channel falls back to.
            let name = msg.get("Variable").unwrap_or_default();
            let value = msg.get("Value").unwrap_or_default();
            check_variable(policy, "Setvar", name, value)?;
        }
        _ => {}
    }
    Ok(())
}

/// What these routes dial, for every client: the numbers in a `QueueAdd` Interface, and in a
/// CLI `channel originate CHANNEL extension EXTEN[@CONTEXT]`.
pub(super) fn destinations(action: &str, msg: &Message) -> Vec<String> {
    let mut channels = Vec::new();
    let mut out = Vec::new();
    match action {
        "queueadd" => channels.extend(header(msg, "Interface")),
        "command" => {
            let words = msg.get("Command").map(cli_words).unwrap_or_default();
            let w: Vec<&str> = words.iter().map(String::as_str).collect();
            if starts_with(&w, &["channel", "originate"]) || starts_with(&w, &["originate"]) {
                let at = if w[0] == "originate" { 1 } else { 2 };
                if let Some(channel) = w.get(at) {
                    channels.push(channel.to_string());
                }
                if w.get(at + 1) == Some(&"extension") {
                    if let Some(target) = w.get(at + 2) {
                        let exten = target.split('@').next().unwrap_or_default();
                        if !exten.is_empty() {
                            out.push(exten.to_string());
                        }
                    }
                }
            }
        }
        _ => {}
    }
    for channel in channels {
        out.extend(
            channel_targets(&channel)
                .into_iter()
                .filter_map(|t| t.number),
        );
    }
    out
}

#[cfg(test)]
#[path = "routes_tests.rs"]
mod tests;
