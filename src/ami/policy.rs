//! What a client may ask of Asterisk. Default deny: only actions on the client's allowlist
//! pass. On top of that, refusals no allowlist lifts (only a per-client override, logged on
//! every use) for the actions that turn AMI access into shell access or config access:
//! AST-2019-007, CVE-2024-42365 (Originate/Redirect into System, Exec, AGI, …; dialplan
//! functions such as SHELL() in Data or Variable) and CVE-2023-49294 (GetConfig path traversal),
//! and for CLI commands (`Command`) that print secrets, such as the SIP passwords that live
//! only in pbxguard's vault.
//!
//! Headers are read with [`Message::get`]/[`Message::all`], i.e. exactly as Asterisk reads them.

use std::fmt;

use ipnet::IpNet;

use super::codec::Message;

/// A built-in refusal; each can be lifted for one client with `ami user add --override`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rule {
    /// `Application:` naming an application that runs programs or reloads (Originate & co).
    Application,
    /// A dialplan function that reaches the shell, files, databases or other URLs.
    Function,
    /// `Command` loading or unloading modules, or originating into a refused application.
    Command,
    /// Config actions on manager.conf or outside Asterisk's config folder.
    Config,
    /// `ModuleLoad`.
    ModuleLoad,
    /// `Command` running a CLI command that prints secrets or writes the realtime store.
    Secrets,
    /// The `MixMonitor` action writing outside the recordings folder, or running a program
    /// when the recording ends.
    MixMonitor,
}

pub const RULES: &[Rule] = &[
    Rule::Application,
    Rule::Function,
    Rule::Command,
    Rule::Config,
    Rule::ModuleLoad,
    Rule::Secrets,
    Rule::MixMonitor,
];

impl Rule {
    pub fn name(self) -> &'static str {
        match self {
            Rule::Application => "application",
            Rule::Function => "function",
            Rule::Command => "command",
            Rule::Config => "config",
            Rule::ModuleLoad => "moduleload",
            Rule::Secrets => "secrets",
            Rule::MixMonitor => "mixmonitor",
        }
    }

    pub fn parse(name: &str) -> Option<Rule> {
        RULES.iter().copied().find(|r| r.name() == name)
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Substrings (lower case) that make an application name refused, as Asterisk's own
/// `action_originate` check does with `strcasestr`: `TrySystem`, `ExecIf`, `EAGI` are caught too.
const BAD_APPLICATIONS: &[&str] = &[
    "system",
    "exec",
    "agi",
    "mixmonitor",
    "externalivr",
    "originate",
    "reload",
    "dbdeltree",
];

/// Dialplan functions (upper case; a trailing `_` is a prefix) that run programs, read or write
/// files, or reach databases and URLs.
const BAD_FUNCTIONS: &[&str] = &[
    "SHELL",
    "EVAL",
    "EVAL_",
    "FILE",
    "FILE_",
    "CURL",
    "CURLOPT",
    "ODBC",
    "ODBC_",
    "REALTIME",
    "REALTIME_",
    "DB",
    "DB_",
    // Read any config file (manager.conf secrets) or sorcery object (SIP passwords).
    "AST_CONFIG",
    "AST_SORCERY",
    // Writing ENV(LD_PRELOAD) reaches every program Asterisk starts later.
    "ENV",
    "STAT",
];

/// Channel variables that make Asterisk run a program later (Monitor's post-processing).
const BAD_VARIABLES: &[&str] = &["MONITOR_EXEC", "MONITOR_EXEC_ARGS", "MIXMONITOR_EXEC"];

/// Config files an AMI client must not read: AMI and SIP secrets. Writing any config file
/// (UpdateConfig, CreateConfig) is refused outright: the dialplan or users.conf is code.
const SECRET_CONFIGS: &[&str] = &[
    "manager",
    "pjsip",
    "sip.conf",
    "iax.conf",
    "users.conf",
    "voicemail.conf",
    "extconfig.conf",
    "res_config",
];

const CONFIG_ACTIONS: &[&str] = &[
    "getconfig",
    "getconfigjson",
    "updateconfig",
    "createconfig",
    "listcategories",
];

const FILE_HEADERS: &[&str] = &["Filename", "SrcFilename", "DstFilename"];

/// Actions every authenticated client may send: keep-alives, the session's own event mask and
/// logging off change nothing in Asterisk.
const ALWAYS: &[&str] = &["ping", "logoff", "events"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub rule: Option<Rule>,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Forward; `overrides` lists built-in refusals this client's overrides lifted.
    Pass {
        overrides: Vec<Rule>,
    },
    Refuse(Refusal),
}

/// One client's policy, loaded at login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientPolicy {
    pub name: String,
    /// Lower-case action names or `*` globs.
    pub allow: Vec<String>,
    /// Event classes the client may receive.
    pub read: u32,
    pub permit: Vec<IpNet>,
    pub overrides: Vec<Rule>,
    /// Dialplan contexts (names or `*` globs, case-sensitive as in Asterisk) the client's calls
    /// and transfers may go into; empty: not confined (clients made before contexts existed).
    pub contexts: Vec<String>,
    /// The client's own call limits; `None`: the `[dialing]` default.
    pub max_concurrent_calls: Option<u32>,
    pub max_call_attempts_per_minute: Option<u32>,
    /// The stored row's `updated_at`.
    pub updated_at: i64,
}

/// Header bytes as lower-case text (action names, application names, file names).
pub(super) fn lower(v: &[u8]) -> String {
    String::from_utf8_lossy(v).to_ascii_lowercase()
}

/// C's `isspace`, which Asterisk's string trimming uses: unlike Rust's ASCII whitespace it
/// includes the vertical tab.
fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// `value` as Asterisk's argument splitting (`__ast_app_separate_args`, used for `Variable:`
/// headers and by Set/MSet) leaves it: `\` escapes and `"` quotes removed. `FI\LE(` and
/// `"FILE"(` become `FILE(`.
pub(super) fn unescape(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len());
    let mut escaped = false;
    for &b in value {
        if escaped {
            out.push(b);
            escaped = false;
        } else if b == b'\\' {
            escaped = true;
        } else if b != b'"' {
            out.push(b);
        }
    }
    out
}

/// The first refused function call in `value`, read both as written and with Asterisk's
/// escapes and quotes removed, or a function whose name is assembled from variables
/// (`${${X}ELL(…)}`), which could be any function once Asterisk expands it.
pub fn bad_function(value: &[u8]) -> Option<String> {
    bad_function_in(value).or_else(|| bad_function_in(&unescape(value)))
}

fn bad_function_in(value: &[u8]) -> Option<String> {
    for (i, _) in value.iter().enumerate().filter(|(_, &b)| b == b'(') {
        let mut end = i;
        while end > 0 && is_c_space(value[end - 1]) {
            end -= 1;
        }
        let mut start = end;
        while start > 0 && is_ident(value[start - 1]) {
            start -= 1;
        }
        if start > 0 && matches!(value[start - 1], b'}' | b']' | b'\\' | b'"') {
            return Some("a function name built from variables or escapes".to_string());
        }
        let name = String::from_utf8_lossy(&value[start..end]).to_ascii_uppercase();
        if name.is_empty() {
            continue;
        }
        let hit = BAD_FUNCTIONS.iter().any(|bad| match bad.strip_suffix('_') {
            Some(prefix) => name.starts_with(prefix) && name.len() > prefix.len(),
            None => name == *bad,
        });
        if hit {
            return Some(format!("{name}()"));
        }
    }
    None
}

/// A variable assignment (in a `Variable:` item or a Set/MSet argument) naming a variable that
/// makes Asterisk run a program.
fn bad_variable(line: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(&unescape(line)).to_ascii_uppercase();
    BAD_VARIABLES
        .iter()
        .find(|v| text.contains(*v))
        .map(|v| format!("the variable {v}"))
}

/// `Queue` as the application with its sixth argument (an AGI to run) set, which Asterisk's
/// own Originate check refuses too.
fn queue_with_agi(msg: &Message) -> bool {
    let is_queue = msg
        .all("Application")
        .any(|a| lower(&unescape(a)).trim() == "queue");
    is_queue
        && msg.all("Data").any(|d| {
            unescape(d)
                .split(|&b| b == b',' || b == b'|')
                .nth(5)
                .is_some_and(|agi| !agi.trim_ascii().is_empty())
        })
}

fn bad_application(value: &[u8]) -> Option<&'static str> {
    let v = lower(value);
    BAD_APPLICATIONS.iter().copied().find(|bad| v.contains(bad))
}

/// The most words `main/cli.c` splits a line into (`AST_MAX_ARGS`).
const CLI_MAX_ARGS: usize = 64;

/// A CLI line split into words exactly as `main/cli.c` `parse_args` does: leading C `isspace`
/// skipped; then only blank and tab separate words, outside double quotes; a quote opening
/// after a separator starts a word (even an empty one); quotes are removed; a backslash takes
/// the next character as is; at most `AST_MAX_ARGS - 1` words. The line ends at a NUL, as a C
/// string does. Words are lower-cased: the CLI matches them with `strcasecmp`.
pub(super) fn cli_words(line: &[u8]) -> Vec<String> {
    let line = line.split(|&b| b == 0).next().unwrap_or_default();
    let start = line
        .iter()
        .position(|&b| !is_c_space(b))
        .unwrap_or(line.len());
    let mut words: Vec<Vec<u8>> = Vec::new();
    let (mut quoted, mut escaped, mut between) = (false, false, true);
    for &b in &line[start..] {
        if words.len() >= CLI_MAX_ARGS - 1 {
            break;
        }
        if b == b'"' && !escaped {
            quoted = !quoted;
            if quoted && between {
                words.push(Vec::new());
                between = false;
            }
        } else if (b == b' ' || b == b'\t') && !(quoted || escaped) {
            between = true;
        } else if b == b'\\' && !escaped {
            escaped = true;
        } else {
            if between {
                words.push(Vec::new());
                between = false;
            }
            if let Some(word) = words.last_mut() {
                word.push(b);
            }
            escaped = false;
        }
    }
    words.iter().map(|w| lower(w)).collect()
}

/// Words of a CLI originate or `dialplan add extension` that name no application.
const CLI_KEYWORDS: &[&str] = &[
    "channel",
    "originate",
    "application",
    "extension",
    "dialplan",
    "add",
    "into",
    "replace",
];

/// Why a `Command` is refused: module (un)loading, or originating into a refused application.
fn bad_command(command: &[u8]) -> Option<String> {
    let owned = cli_words(command);
    let words: Vec<&str> = owned.iter().map(String::as_str).collect();
    if words.len() >= 2 && words[0] == "module" && matches!(words[1], "load" | "unload") {
        return Some(format!(
            "`module {}` is not allowed through the gateway",
            words[1]
        ));
    }
    let originate = words.first() == Some(&"originate")
        || (words.len() >= 2 && words[0] == "channel" && words[1] == "originate");
    let dialplan = words.len() >= 3 && words[..3] == ["dialplan", "add", "extension"];
    if originate || dialplan {
        if let Some(bad) = words
            .iter()
            .filter(|w| !CLI_KEYWORDS.contains(w))
            .find_map(|w| bad_application(w.as_bytes()))
        {
            return Some(format!(
                "a CLI originate or dialplan change into an application matching {bad:?}"
            ));
        }
    }
    None
}

/// CLI commands (their fixed words) whose output holds secrets, or that write the realtime
/// store, with why; from Asterisk 22's sources. `main/cli.c` runs the entry whose words all
/// equal the line's first words (`strcasecmp`, no abbreviations), further words being
/// arguments, so a line is refused when its first words are one of these.
const SECRET_COMMANDS: &[(&[&str], &str)] = &[
    // res/res_pjsip/config_auth.c: the auth object with all its fields, `password` included
    // (the SIP passwords pbxguard keeps in its vault and serves through realtime).
    (&["pjsip", "show", "auth"], "prints SIP auth passwords"),
    // res/res_pjsip_history.c: `pjsip show history entry N` prints whole SIP messages, with
    // the digest Authorization headers and SDES `a=crypto` keys; `pjsip set history on` starts
    // recording them.
    (
        &["pjsip", "show", "history"],
        "prints recorded SIP messages with credentials and SRTP keys",
    ),
    (
        &["pjsip", "set", "history"],
        "records SIP messages with credentials and SRTP keys",
    ),
    // res/res_pjsip/config_transport.c: all transport fields, `password` (the TLS key's) too.
    (
        &["pjsip", "show", "transport"],
        "prints the TLS key password",
    ),
    // main/config.c: each realtime mapping's database, i.e. res_config_curl's URL with the
    // basic-auth password of pbxguard's realtime listener (etc/asterisk/extconfig.conf).
    (
        &["core", "show", "config", "mappings"],
        "prints the realtime URLs with their passwords",
    ),
    // res/res_realtime.c: every column of a realtime row (ps_auths: the password).
    (
        &["realtime", "load"],
        "prints realtime rows, passwords included",
    ),
    (&["realtime", "update"], "writes the realtime store"),
    (&["realtime", "update2"], "writes the realtime store"),
    (&["realtime", "store"], "writes the realtime store"),
    (&["realtime", "destroy"], "writes the realtime store"),
    // main/db.c: astdb values (refused for the same reason as DB()); `query` runs any SQL.
    (&["database", "show"], "prints astdb values"),
    (&["database", "showkey"], "prints astdb values"),
    (&["database", "get"], "prints astdb values"),
    (&["database", "query"], "runs SQL on astdb"),
    // channels/chan_iax2.c: each IAX2 user's secret in clear.
    (&["iax2", "show", "users"], "prints IAX2 secrets"),
    // channels/iax2/provision.c: the provisioning templates' secrets.
    (
        &["iax2", "show", "provisioning"],
        "prints IAX2 provisioning secrets",
    ),
    // apps/confbridge/conf_config_parser.c: a user profile's PIN.
    (
        &["confbridge", "show", "profile", "user"],
        "prints conference PINs",
    ),
];

/// Why a `Command` is refused for printing secrets (or writing the realtime store).
fn secret_command(command: &[u8]) -> Option<String> {
    let words = cli_words(command);
    SECRET_COMMANDS
        .iter()
        .find(|(fixed, _)| {
            words.len() >= fixed.len() && fixed.iter().zip(&words).all(|(f, w)| f == w)
        })
        .map(|(fixed, why)| {
            format!(
                "the CLI command `{}` {why}; not allowed through the gateway",
                fixed.join(" ")
            )
        })
}

fn bad_config_file(value: &[u8], write: bool) -> Option<String> {
    let v = lower(value.trim_ascii());
    if v.contains('/') || v.contains('\\') || v.contains("..") {
        return Some(format!(
            "the path {:?} (only files in Asterisk's config folder)",
            String::from_utf8_lossy(value)
        ));
    }
    if write {
        return Some("writing config files (the dialplan and users.conf are code)".to_string());
    }
    if SECRET_CONFIGS.iter().any(|s| v.starts_with(s)) {
        return Some(format!("{v} (it holds AMI or SIP secrets)"));
    }
    None
}

/// Why a `MixMonitor` action may not run: a post-recording command (`Command:`, which Asterisk
/// runs with the system shell), or a file (`File:`, and the `r(…)`/`t(…)` files of `Options:`)
/// with `..` or an absolute path outside `root` (relative names land in Asterisk's monitor
/// folder).
fn bad_mixmonitor(msg: &Message, root: &std::path::Path) -> Option<String> {
    if msg.all("Command").any(|c| !c.trim_ascii().is_empty()) {
        return Some("a command run when the recording ends (Command:)".to_string());
    }
    let option_files = msg.all("Options").flat_map(|o| {
        let mut files = Vec::new();
        let mut rest = o;
        while let Some(open) = rest.iter().position(|&b| b == b'(') {
            let letter = open.checked_sub(1).map(|i| rest[i].to_ascii_lowercase());
            let close = rest[open..]
                .iter()
                .position(|&b| b == b')')
                .map_or(rest.len(), |c| open + c);
            if matches!(letter, Some(b'r' | b't')) {
                files.push(&rest[open + 1..close]);
            }
            rest = rest.get(close + 1..).unwrap_or_default();
        }
        files
    });
    msg.all("File")
        .chain(option_files)
        .find_map(|f| bad_recording_file(&unescape(f), root))
}

fn bad_recording_file(value: &[u8], root: &std::path::Path) -> Option<String> {
    let v = String::from_utf8_lossy(value.trim_ascii()).into_owned();
    if v.split(['/', '\\']).any(|seg| seg == "..") {
        return Some(format!("the file {v:?} (no ..)"));
    }
    if v.starts_with('/') && !std::path::Path::new(&v).starts_with(root) {
        return Some(format!(
            "the file {v:?} (absolute paths only under {})",
            root.display()
        ));
    }
    None
}

/// The built-in refusals that apply to `msg` (action name lower-case in `action`);
/// `recordings` is `[recordings] root`, where `MixMonitor` may write.
pub fn builtin(action: &str, msg: &Message, recordings: &std::path::Path) -> Vec<Refusal> {
    let mut out = Vec::new();
    if action == "moduleload" {
        out.push(Refusal {
            rule: Some(Rule::ModuleLoad),
            message: "ModuleLoad is not allowed through the gateway".into(),
        });
    }
    let app = msg
        .all("Application")
        .find_map(|a| bad_application(&unescape(a)).or_else(|| bad_application(a)));
    if let Some(bad) = app {
        out.push(Refusal {
            rule: Some(Rule::Application),
            message: format!(
                "applications matching {bad:?} are not allowed through the gateway (AST-2019-007)"
            ),
        });
    } else if action == "agi" {
        out.push(Refusal {
            rule: Some(Rule::Application),
            message: "the AGI action (AsyncAGI EXEC) is not allowed through the gateway".into(),
        });
    } else if queue_with_agi(msg) {
        out.push(Refusal {
            rule: Some(Rule::Application),
            message: "Queue with an AGI argument is not allowed through the gateway".into(),
        });
    }
    for line in &msg.lines {
        if super::codec::header_value(line, "ActionID").is_some() {
            continue;
        }
        let bad = bad_function(line).or_else(|| bad_variable(line));
        if let Some(bad) = bad {
            out.push(Refusal {
                rule: Some(Rule::Function),
                message: format!("{bad} is not allowed through the gateway (CVE-2024-42365)"),
            });
            break;
        }
    }
    if action == "command" {
        if let Some(why) = msg.get("Command").and_then(bad_command) {
            out.push(Refusal {
                rule: Some(Rule::Command),
                message: why,
            });
        }
        if let Some(why) = msg.get("Command").and_then(secret_command) {
            out.push(Refusal {
                rule: Some(Rule::Secrets),
                message: why,
            });
        }
    }
    if action == "mixmonitor" {
        if let Some(why) = bad_mixmonitor(msg, recordings) {
            out.push(Refusal {
                rule: Some(Rule::MixMonitor),
                message: format!("MixMonitor with {why} is not allowed through the gateway"),
            });
        }
    }
    if CONFIG_ACTIONS.contains(&action) {
        let write = matches!(action, "updateconfig" | "createconfig");
        let why = FILE_HEADERS
            .iter()
            .flat_map(|h| msg.all(h))
            .find_map(|f| bad_config_file(f, write));
        if let Some(why) = why {
            out.push(Refusal {
                rule: Some(Rule::Config),
                message: format!("config actions on {why} are not allowed (CVE-2023-49294)"),
            });
        }
    }
    out
}

impl ClientPolicy {
    /// The call limits that apply to this client: its own, else `defaults` (`[dialing]`).
    pub fn limits(&self, defaults: crate::dialing::Limits) -> crate::dialing::Limits {
        crate::dialing::Limits {
            max_concurrent: self.max_concurrent_calls.unwrap_or(defaults.max_concurrent),
            max_per_minute: self
                .max_call_attempts_per_minute
                .unwrap_or(defaults.max_per_minute),
        }
    }

    /// Whether `context` is one the client was given (exact name or glob; case-sensitive).
    pub fn allows_context(&self, context: &str) -> bool {
        self.contexts
            .iter()
            .any(|p| crate::pattern::wildcard(p, context, '*', '\u{0}'))
    }

    pub fn allows_action(&self, action: &str) -> bool {
        ALWAYS.contains(&action)
            || self
                .allow
                .iter()
                .any(|p| crate::pattern::wildcard(p, action, '*', '\u{0}'))
    }

    /// Decides one authenticated client message that names an action (`action` lower-case;
    /// `recordings` is `[recordings] root`).
    pub fn decide(&self, action: &str, msg: &Message, recordings: &std::path::Path) -> Verdict {
        if !self.allows_action(action) {
            return Verdict::Refuse(Refusal {
                rule: None,
                message: "Permission denied".into(),
            });
        }
        let mut overrides = Vec::new();
        for refusal in builtin(action, msg, recordings) {
            match refusal.rule {
                Some(rule) if self.overrides.contains(&rule) => overrides.push(rule),
                _ => return Verdict::Refuse(refusal),
            }
        }
        Verdict::Pass { overrides }
    }
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
