//! The clients of the AMI gateway as admins manage them: add (or replace), edit, list,
//! remove. A client's secret goes into the vault (`ami/clients/<name>`; the MD5 challenge
//! needs the plaintext) and never comes back out; its policy is a row the gateway re-reads, so
//! open sessions of a changed client follow the change within seconds (and those of a removed
//! one end).
//!
//! A client that may `Originate` must be given dialplan contexts (`--context`): an Originate
//! can otherwise dial any number through any context, the classic toll-fraud path. Clients
//! made before contexts existed keep working without them, and `list` flags them.

use ipnet::IpNet;
use serde::Serialize;

use super::calls::{self, MAX_CONTEXT};
use super::policy::{Rule, RULES};
use super::{classes, client_secret_name, normalise_name, NameError};
use crate::clock::rfc3339;
use crate::store::{AmiClientRow, Store, StoreError};
use crate::vault::{Vault, VaultError};

/// Where logins may come from when no network is given: this host only.
const LOOPBACK_ONLY: &str = "127.0.0.0/8,::1/128";
/// Longest action name or glob.
const MAX_ACTION_LEN: usize = 64;
/// The largest call limit an admin may give (as in `[dialing]`).
pub const MAX_LIMIT: u32 = 100_000;

/// A client's own call limit as an admin gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// The `[dialing]` default (stored as NULL).
    Default,
    /// At most this many (0 = unlimited).
    Calls(u32),
}

impl Limit {
    fn stored(self) -> Option<u32> {
        match self {
            Limit::Default => None,
            Limit::Calls(n) => Some(n),
        }
    }
}

impl std::str::FromStr for Limit {
    type Err = String;

    fn from_str(s: &str) -> Result<Limit, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("default") {
            return Ok(Limit::Default);
        }
        match s.parse::<u32>() {
            Ok(n) if n <= MAX_LIMIT => Ok(Limit::Calls(n)),
            _ => Err(format!(
                "{s:?}: a number from 0 (unlimited) to {MAX_LIMIT}, or `default` for the [dialing] value"
            )),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("{0:?}: an action is a name such as Originate or a glob such as Queue*")]
    BadAction(String),
    #[error("a client needs at least one allowed action")]
    NoActions,
    #[error("{0}")]
    BadEvents(String),
    #[error("{0:?} is not an IP address or CIDR network")]
    BadPermit(String),
    /// The text given and the names of the built-in refusals.
    #[error("{given:?}: not a built-in refusal ({known})")]
    BadOverride { given: String, known: String },
    #[error("the secret is empty")]
    EmptySecret,
    /// Asterisk's header values end at CR/LF and NUL: such a secret could never be sent.
    #[error("the secret must not contain control characters")]
    ControlInSecret,
    /// Asterisk's context names, as pbxguard accepts them.
    #[error("{0:?}: a context is 1 to 79 characters: letters, digits, '-', '_', '.', '+', and '*' as a glob")]
    BadContext(String),
    /// The allow pattern that admits Originate.
    #[error("--allow {0} lets the client Originate, and an Originate without --context can dial any number through any dialplan context (toll fraud: premium and international numbers billed to you). Give the contexts its calls may go into with --context (for example --context outbound-dialer); pbxguard then refuses Originate, Redirect and transfers into any other context, and Originate into an Application")]
    OriginateWithoutContext(String),
    #[error("nothing to change: give at least one of --allow, --events, --permit, --override, --context, --max-concurrent-calls, --max-call-attempts-per-minute")]
    NothingToChange,
    #[error("no AMI client {0}")]
    NoSuchClient(String),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A client's policy as an admin gives it (lists may also hold comma-separated items).
#[derive(Debug, Clone, Copy)]
pub struct PolicyInput<'a> {
    /// Actions the client may send; `*` globs.
    pub allow: &'a [String],
    /// Event classes the client may receive.
    pub events: &'a [String],
    /// Networks logins may come from; empty means loopback only.
    pub permit: &'a [String],
    /// Built-in refusals lifted for this client.
    pub overrides: &'a [String],
    /// Dialplan contexts its calls and transfers may go into; `*` globs, case kept.
    pub contexts: &'a [String],
    /// `None`: the `[dialing]` default.
    pub max_concurrent_calls: Option<Limit>,
    pub max_call_attempts_per_minute: Option<Limit>,
}

/// A checked policy, in the stored (comma-separated, normalised) form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub allow: String,
    pub events: String,
    pub permit: String,
    pub overrides: String,
    pub contexts: String,
    pub max_concurrent_calls: Option<u32>,
    pub max_call_attempts_per_minute: Option<u32>,
}

impl PolicyInput<'_> {
    /// Everything about the policy that can be checked before the secret is asked for.
    pub fn check(&self) -> Result<Policy, ClientError> {
        let policy = Policy {
            allow: check_actions(self.allow)?,
            events: check_events(self.events)?,
            permit: check_permit(self.permit)?,
            overrides: check_overrides(self.overrides)?,
            contexts: check_contexts(self.contexts)?,
            max_concurrent_calls: self.max_concurrent_calls.and_then(Limit::stored),
            max_call_attempts_per_minute: self.max_call_attempts_per_minute.and_then(Limit::stored),
        };
        policy.check_calls()?;
        Ok(policy)
    }
}

/// What `ami user edit` changes: a list given replaces the stored one, `None` keeps it.
#[derive(Debug, Clone, Copy, Default)]
pub struct PolicyEdit<'a> {
    pub allow: Option<&'a [String]>,
    pub events: Option<&'a [String]>,
    pub permit: Option<&'a [String]>,
    pub overrides: Option<&'a [String]>,
    pub contexts: Option<&'a [String]>,
    pub max_concurrent_calls: Option<Limit>,
    pub max_call_attempts_per_minute: Option<Limit>,
}

impl PolicyEdit<'_> {
    fn is_empty(&self) -> bool {
        self.allow.is_none()
            && self.events.is_none()
            && self.permit.is_none()
            && self.overrides.is_none()
            && self.contexts.is_none()
            && self.max_concurrent_calls.is_none()
            && self.max_call_attempts_per_minute.is_none()
    }

    /// `stored` with this edit applied, checked as `add` checks a new policy.
    pub fn apply(&self, stored: &Policy) -> Result<Policy, ClientError> {
        if self.is_empty() {
            return Err(ClientError::NothingToChange);
        }
        let mut p = stored.clone();
        if let Some(allow) = self.allow {
            p.allow = check_actions(allow)?;
        }
        if let Some(events) = self.events {
            p.events = check_events(events)?;
        }
        if let Some(permit) = self.permit {
            p.permit = check_permit(permit)?;
        }
        if let Some(overrides) = self.overrides {
            p.overrides = check_overrides(overrides)?;
        }
        if let Some(contexts) = self.contexts {
            p.contexts = check_contexts(contexts)?;
        }
        if let Some(l) = self.max_concurrent_calls {
            p.max_concurrent_calls = l.stored();
        }
        if let Some(l) = self.max_call_attempts_per_minute {
            p.max_call_attempts_per_minute = l.stored();
        }
        p.check_calls()?;
        Ok(p)
    }
}

/// A stored limit as the policy holds it (a value out of range, only writable with SQL, is
/// the default).
fn stored_limit(v: Option<i64>) -> Option<u32> {
    v.and_then(|n| u32::try_from(n).ok())
}

impl Policy {
    /// The stored policy of `row`.
    pub fn of_row(row: &AmiClientRow) -> Policy {
        Policy {
            allow: row.allow.clone(),
            events: row.events.clone(),
            permit: row.permit.clone(),
            overrides: row.overrides.clone(),
            contexts: row.contexts.clone(),
            max_concurrent_calls: stored_limit(row.max_concurrent_calls),
            max_call_attempts_per_minute: stored_limit(row.max_call_attempts_per_minute),
        }
    }

    /// A client that may Originate must be confined to contexts.
    fn check_calls(&self) -> Result<(), ClientError> {
        if !self.contexts.is_empty() {
            return Ok(());
        }
        let originate = split(&self.allow)
            .into_iter()
            .find(|p| calls::call_actions_allowed(std::slice::from_ref(p)).contains(&"Originate"));
        match originate {
            Some(p) => Err(ClientError::OriginateWithoutContext(p)),
            None => Ok(()),
        }
    }

    /// The audit row's detail.
    fn detail(&self) -> String {
        let limit = |l: Option<u32>| l.map_or("default".to_string(), |n| n.to_string());
        format!(
            "allow={} events={} permit={} overrides={} contexts={} max_concurrent_calls={} max_call_attempts_per_minute={}",
            self.allow,
            self.events,
            self.permit,
            self.overrides,
            self.contexts,
            limit(self.max_concurrent_calls),
            limit(self.max_call_attempts_per_minute)
        )
    }

    fn row(&self, name: &str, credential: i64, created_at: i64, updated_at: i64) -> AmiClientRow {
        AmiClientRow {
            name: name.to_string(),
            allow: self.allow.clone(),
            events: self.events.clone(),
            permit: self.permit.clone(),
            overrides: self.overrides.clone(),
            contexts: self.contexts.clone(),
            max_concurrent_calls: self.max_concurrent_calls.map(i64::from),
            max_call_attempts_per_minute: self.max_call_attempts_per_minute.map(i64::from),
            credential,
            created_at,
            updated_at,
        }
    }
}

/// The actions that place or move calls (Originate, Redirect, BlindTransfer, Atxfer) a client
/// may send without being confined to contexts (`allow` and `contexts` as stored). Such a
/// client can call or transfer into any context; it should be given `--context`.
pub fn calls_without_contexts(allow: &str, contexts: &str) -> Vec<&'static str> {
    if !split(contexts).is_empty() {
        return Vec::new();
    }
    calls::call_actions_allowed(&split(allow))
}

fn check_events(events: &[String]) -> Result<String, ClientError> {
    let events: Vec<&str> = events
        .iter()
        .flat_map(|e| e.split(','))
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    let events = events.join(",");
    classes::parse_class_list(&events).map_err(|e| ClientError::BadEvents(e.to_string()))?;
    Ok(events)
}

/// Context names as Asterisk's dialplan writes them (no `,`, `@`, `/`, blanks, or anything a
/// dialplan argument would split at), case kept; `*` globs.
fn check_contexts(contexts: &[String]) -> Result<String, ClientError> {
    let mut out: Vec<String> = Vec::new();
    for c in contexts
        .iter()
        .flat_map(|c| c.split(','))
        .map(str::trim)
        .filter(|c| !c.is_empty())
    {
        let ok = c.len() <= MAX_CONTEXT
            && c.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'+' | b'*')
            });
        if !ok {
            return Err(ClientError::BadContext(c.to_string()));
        }
        if !out.iter().any(|o| o == c) {
            out.push(c.to_string());
        }
    }
    Ok(out.join(","))
}

fn check_actions(allow: &[String]) -> Result<String, ClientError> {
    let mut out = Vec::new();
    for a in allow.iter().map(|a| a.trim()).filter(|a| !a.is_empty()) {
        if a.len() > MAX_ACTION_LEN
            || !a
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'*' || b == b'_')
        {
            return Err(ClientError::BadAction(a.to_string()));
        }
        out.push(a.to_string());
    }
    if out.is_empty() {
        return Err(ClientError::NoActions);
    }
    Ok(out.join(","))
}

fn check_permit(permit: &[String]) -> Result<String, ClientError> {
    let items: Vec<&str> = permit
        .iter()
        .flat_map(|p| p.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    if items.is_empty() {
        return Ok(LOOPBACK_ONLY.into());
    }
    let mut out = Vec::new();
    for p in items {
        let net = p
            .parse::<IpNet>()
            .or_else(|_| p.parse::<std::net::IpAddr>().map(IpNet::from))
            .map_err(|_| ClientError::BadPermit(p.to_string()))?;
        out.push(net.trunc().to_string());
    }
    Ok(out.join(","))
}

fn check_overrides(overrides: &[String]) -> Result<String, ClientError> {
    let mut out = Vec::new();
    for o in overrides
        .iter()
        .flat_map(|o| o.split(','))
        .map(str::trim)
        .filter(|o| !o.is_empty())
    {
        let rule = Rule::parse(&o.to_ascii_lowercase()).ok_or_else(|| {
            let names: Vec<&str> = RULES.iter().map(|r| r.name()).collect();
            ClientError::BadOverride {
                given: o.to_string(),
                known: names.join(", "),
            }
        })?;
        out.push(rule.name().to_string());
    }
    Ok(out.join(","))
}

/// A secret the gateway can later send to Asterisk.
pub fn check_secret(secret: &[u8]) -> Result<(), ClientError> {
    if secret.is_empty() {
        return Err(ClientError::EmptySecret);
    }
    if secret.iter().any(|&b| b < 0x20 || b == 0x7f) {
        return Err(ClientError::ControlInSecret);
    }
    Ok(())
}

/// Creates a client or replaces its secret and policy (audited as `ami.user.add`); true when
/// the client is new. `name` is normalised to lower case first.
pub async fn add(
    store: &Store,
    vault: &Vault,
    actor: &str,
    name: &str,
    policy: &Policy,
    secret: &[u8],
    now: i64,
) -> Result<bool, ClientError> {
    let name = normalise_name(name)?;
    check_secret(secret)?;
    vault.set(&client_secret_name(&name), secret).await?;
    // A new value whenever a secret is set (also after remove + add under the same name), so
    // that sessions opened with the old one end: random, since a counter would start again.
    let credential = rand::random::<i64>();
    let created = store
        .put_ami_client(&policy.row(&name, credential, now, now))
        .await?;
    store.tell(crate::store::changes::Change::AmiClients).await;
    store
        .audit(actor, "ami.user.add", &name, &policy.detail())
        .await?;
    Ok(created)
}

/// Changes the policy of an existing client in place (audited as `ami.user.edit`): what
/// `change` gives replaces the stored value, the rest is kept; the secret is untouched. Open
/// sessions of the client follow within seconds. Returns the new policy.
pub async fn edit(
    store: &Store,
    actor: &str,
    name: &str,
    change: &PolicyEdit<'_>,
    now: i64,
) -> Result<Policy, ClientError> {
    let name = normalise_name(name)?;
    let Some(row) = store.ami_client(&name).await? else {
        return Err(ClientError::NoSuchClient(name));
    };
    let policy = change.apply(&Policy::of_row(&row))?;
    // Never backwards, so that the row's updated_at says it changed even within a second.
    let updated_at = now.max(row.updated_at + 1);
    if !store
        .update_ami_client(&policy.row(&name, row.credential, row.created_at, updated_at))
        .await?
    {
        return Err(ClientError::NoSuchClient(name));
    }
    store.tell(crate::store::changes::Change::AmiClients).await;
    store
        .audit(actor, "ami.user.edit", &name, &policy.detail())
        .await?;
    Ok(policy)
}

/// A client as `ami user list` shows it (never its secret).
#[derive(Debug, Serialize)]
pub struct ClientView {
    pub name: String,
    pub allow: Vec<String>,
    pub events: Vec<String>,
    pub permit: Vec<String>,
    pub overrides: Vec<String>,
    /// Dialplan contexts its calls and transfers may go into (empty: not confined).
    pub contexts: Vec<String>,
    /// `null`: the `[dialing]` default; 0: unlimited.
    pub max_concurrent_calls: Option<u32>,
    pub max_call_attempts_per_minute: Option<u32>,
    /// Call actions (Originate, Redirect, BlindTransfer, Atxfer) the client may send without
    /// contexts: it can call or transfer into any context. Give it `--context`.
    pub calls_without_contexts: Vec<&'static str>,
    pub created_at: String,
    pub updated_at: String,
}

fn split(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::to_string)
        .collect()
}

/// Every client, by name.
pub async fn list(store: &Store) -> Result<Vec<ClientView>, StoreError> {
    Ok(store
        .ami_clients()
        .await?
        .into_iter()
        .map(|r| ClientView {
            calls_without_contexts: calls_without_contexts(&r.allow, &r.contexts),
            max_concurrent_calls: stored_limit(r.max_concurrent_calls),
            max_call_attempts_per_minute: stored_limit(r.max_call_attempts_per_minute),
            contexts: split(&r.contexts),
            name: r.name,
            allow: split(&r.allow),
            events: split(&r.events),
            permit: split(&r.permit),
            overrides: split(&r.overrides),
            created_at: rfc3339(r.created_at),
            updated_at: rfc3339(r.updated_at),
        })
        .collect())
}

/// Deletes a client and its secret (audited as `ami.user.rm`); `name` is normalised first.
pub async fn remove(
    store: &Store,
    vault: &Vault,
    actor: &str,
    name: &str,
) -> Result<(), ClientError> {
    let name = normalise_name(name)?;
    if !store.delete_ami_client(&name).await? {
        return Err(ClientError::NoSuchClient(name));
    }
    // The row is gone, so the client can no longer log in; a missing secret is fine.
    let _ = vault.remove(&client_secret_name(&name)).await;
    store.tell(crate::store::changes::Change::AmiClients).await;
    store.audit(actor, "ami.user.rm", &name, "").await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    const NONE: &[String] = &[];

    fn input<'a>(allow: &'a [String], contexts: &'a [String]) -> PolicyInput<'a> {
        PolicyInput {
            allow,
            events: NONE,
            permit: NONE,
            overrides: NONE,
            contexts,
            max_concurrent_calls: None,
            max_call_attempts_per_minute: None,
        }
    }

    #[test]
    fn a_policy_is_checked_and_normalised() {
        let allow = strings(&["Originate", " Queue*", ""]);
        let events = strings(&["call", "agent"]);
        let permit = strings(&["192.0.2.7/24,2001:db8::1"]);
        let overrides = strings(&["Command"]);
        let contexts = strings(&["Sales, out-*", "Sales"]);
        let policy = PolicyInput {
            events: &events,
            permit: &permit,
            overrides: &overrides,
            max_concurrent_calls: Some(Limit::Calls(200)),
            max_call_attempts_per_minute: Some(Limit::Default),
            ..input(&allow, &contexts)
        }
        .check()
        .unwrap();
        assert_eq!(
            policy,
            Policy {
                allow: "Originate,Queue*".into(),
                events: "call,agent".into(),
                permit: "192.0.2.0/24,2001:db8::1/128".into(),
                overrides: "command".into(),
                // Case kept (Asterisk's contexts are case-sensitive), duplicates dropped.
                contexts: "Sales,out-*".into(),
                max_concurrent_calls: Some(200),
                max_call_attempts_per_minute: None,
            }
        );
        let queue = strings(&["Queue*"]);
        let loopback = input(&queue, NONE).check().unwrap();
        assert_eq!(loopback.permit, LOOPBACK_ONLY);
        assert_eq!(loopback.contexts, "");
    }

    #[test]
    fn bad_policies_say_what_is_wrong() {
        let ok = strings(&["Ping"]);
        let check = |allow: &[String], events: &[String], permit: &[String], ov: &[String]| {
            PolicyInput {
                events,
                permit,
                overrides: ov,
                ..input(allow, NONE)
            }
            .check()
            .unwrap_err()
        };
        assert!(matches!(
            check(&strings(&["Orig inate"]), NONE, NONE, NONE),
            ClientError::BadAction(a) if a == "Orig inate"
        ));
        assert!(matches!(
            check(&strings(&[" "]), NONE, NONE, NONE),
            ClientError::NoActions
        ));
        assert!(matches!(
            check(&ok, &strings(&["nonsense"]), NONE, NONE),
            ClientError::BadEvents(_)
        ));
        assert!(matches!(
            check(&ok, NONE, &strings(&["host.example"]), NONE),
            ClientError::BadPermit(p) if p == "host.example"
        ));
        let e = check(&ok, NONE, NONE, &strings(&["everything"]));
        assert!(matches!(&e, ClientError::BadOverride { given, known }
            if given == "everything" && known.contains("command")));
        for bad in ["sales,@x", "a b", "x/y", "${CTX}", "a;b", "ünï"] {
            let contexts = strings(&[bad]);
            let e = input(&ok, &contexts).check().unwrap_err();
            assert!(matches!(e, ClientError::BadContext(_)), "{bad}: {e:?}");
        }
        let long = strings(&[&"c".repeat(80)]);
        assert!(matches!(
            input(&ok, &long).check().unwrap_err(),
            ClientError::BadContext(_)
        ));
        let longest = strings(&[&"c".repeat(79)]);
        assert!(input(&ok, &longest).check().is_ok());
    }

    #[test]
    fn originate_without_contexts_is_refused_and_explained() {
        for allow in [
            &["Originate"][..],
            &["*"],
            &["orig*", "Ping"],
            &["Ping", "*ate"],
        ] {
            let allow = strings(allow);
            let e = input(&allow, NONE).check().unwrap_err();
            let ClientError::OriginateWithoutContext(pattern) = &e else {
                panic!("{allow:?}: {e:?}");
            };
            assert!(allow.contains(pattern), "{pattern}");
            let text = e.to_string();
            for needle in ["--context", "toll fraud", "any number"] {
                assert!(text.contains(needle), "{text}");
            }
        }
        // With contexts, or without Originate, fine.
        let contexts = strings(&["sales"]);
        assert!(input(&strings(&["*"]), &contexts).check().is_ok());
        assert!(input(&strings(&["Redirect", "Queue*"]), NONE)
            .check()
            .is_ok());
    }

    #[test]
    fn an_edit_replaces_what_it_gives_and_keeps_the_rest() {
        let stored = Policy {
            allow: "Originate,Hangup".into(),
            events: "call".into(),
            permit: "192.0.2.0/24".into(),
            overrides: "".into(),
            contexts: "sales".into(),
            max_concurrent_calls: Some(5),
            max_call_attempts_per_minute: None,
        };
        let contexts = strings(&["sales,support"]);
        let edited = PolicyEdit {
            contexts: Some(&contexts),
            max_concurrent_calls: Some(Limit::Default),
            max_call_attempts_per_minute: Some(Limit::Calls(0)),
            ..PolicyEdit::default()
        }
        .apply(&stored)
        .unwrap();
        assert_eq!(
            edited,
            Policy {
                contexts: "sales,support".into(),
                max_concurrent_calls: None,
                max_call_attempts_per_minute: Some(0),
                ..stored.clone()
            }
        );
        // Nothing given: an error, not a silent no-op.
        assert!(matches!(
            PolicyEdit::default().apply(&stored),
            Err(ClientError::NothingToChange)
        ));
        // Clearing the contexts of a client that may Originate is refused.
        let empty = strings(&[""]);
        assert!(matches!(
            PolicyEdit {
                contexts: Some(&empty),
                ..PolicyEdit::default()
            }
            .apply(&stored),
            Err(ClientError::OriginateWithoutContext(_))
        ));
        // A legacy client (Originate, no contexts) must be given contexts by its first edit.
        let legacy = Policy {
            contexts: "".into(),
            ..stored.clone()
        };
        let permit = strings(&["198.51.100.0/24"]);
        let only_permit = PolicyEdit {
            permit: Some(&permit),
            ..PolicyEdit::default()
        };
        assert!(matches!(
            only_permit.apply(&legacy),
            Err(ClientError::OriginateWithoutContext(_))
        ));
        let allow = strings(&["Hangup"]);
        let drop_originate = PolicyEdit {
            allow: Some(&allow),
            ..PolicyEdit::default()
        };
        assert_eq!(drop_originate.apply(&legacy).unwrap().allow, "Hangup");
        // Emptied lists fall back as at add: loopback only, no overrides, no events.
        let edited = PolicyEdit {
            permit: Some(&empty),
            overrides: Some(&empty),
            events: Some(&empty),
            ..PolicyEdit::default()
        }
        .apply(&stored)
        .unwrap();
        assert_eq!(
            (
                edited.permit.as_str(),
                edited.overrides.as_str(),
                edited.events.as_str()
            ),
            (LOOPBACK_ONLY, "", "")
        );
    }

    #[test]
    fn limits_are_numbers_or_default() {
        assert_eq!("default".parse::<Limit>(), Ok(Limit::Default));
        assert_eq!("0".parse::<Limit>(), Ok(Limit::Calls(0)));
        assert_eq!(" 600 ".parse::<Limit>(), Ok(Limit::Calls(600)));
        for bad in ["-1", "100001", "many", ""] {
            let e = bad.parse::<Limit>().unwrap_err();
            assert!(e.contains("default"), "{bad}: {e}");
        }
    }

    #[test]
    fn clients_that_move_calls_without_contexts_are_named() {
        assert_eq!(
            calls_without_contexts("Originate,Redirect,Queue*", ""),
            ["Originate", "Redirect"]
        );
        assert_eq!(calls_without_contexts("*", "sales"), Vec::<&str>::new());
        assert_eq!(
            calls_without_contexts("Queue*,Status", ""),
            Vec::<&str>::new()
        );
    }

    #[test]
    fn secrets_are_non_empty_header_text() {
        assert!(check_secret(b"s3cret pass").is_ok());
        assert!(matches!(check_secret(b""), Err(ClientError::EmptySecret)));
        for bad in [&b"a\r\nAction: x"[..], b"nul\0", b"del\x7f"] {
            assert!(matches!(
                check_secret(bad),
                Err(ClientError::ControlInSecret)
            ));
        }
    }
}
