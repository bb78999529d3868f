//! The clients of the AMI gateway as admins manage them: add (or replace), list, remove. A
//! client's secret goes into the vault (`ami/clients/<name>`; the MD5 challenge needs the
//! plaintext) and never comes back out; its policy is a row the gateway re-reads, so open
//! sessions of a changed or removed client end within seconds.

use ipnet::IpNet;
use serde::Serialize;

use super::policy::{Rule, RULES};
use super::{classes, client_secret_name, normalise_name, NameError};
use crate::clock::rfc3339;
use crate::store::{AmiClientRow, Store, StoreError};
use crate::vault::{Vault, VaultError};

/// Where logins may come from when no network is given: this host only.
const LOOPBACK_ONLY: &str = "127.0.0.0/8,::1/128";
/// Longest action name or glob.
const MAX_ACTION_LEN: usize = 64;

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
}

/// A checked policy, in the stored (comma-separated, normalised) form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub allow: String,
    pub events: String,
    pub permit: String,
    pub overrides: String,
}

impl PolicyInput<'_> {
    /// Everything about the policy that can be checked before the secret is asked for.
    pub fn check(&self) -> Result<Policy, ClientError> {
        let allow = check_actions(self.allow)?;
        let events = self.events.join(",");
        classes::parse_class_list(&events).map_err(|e| ClientError::BadEvents(e.to_string()))?;
        Ok(Policy {
            allow,
            events,
            permit: check_permit(self.permit)?,
            overrides: check_overrides(self.overrides)?,
        })
    }
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
    if permit.is_empty() {
        return Ok(LOOPBACK_ONLY.into());
    }
    let mut out = Vec::new();
    for p in permit.iter().flat_map(|p| p.split(',')).map(str::trim) {
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
    for o in overrides.iter().flat_map(|o| o.split(',')).map(str::trim) {
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
    let created = store
        .put_ami_client(&AmiClientRow {
            name: name.clone(),
            allow: policy.allow.clone(),
            events: policy.events.clone(),
            permit: policy.permit.clone(),
            overrides: policy.overrides.clone(),
            created_at: now,
            updated_at: now,
        })
        .await?;
    let Policy {
        allow,
        events,
        permit,
        overrides,
    } = policy;
    let detail = format!("allow={allow} events={events} permit={permit} overrides={overrides}");
    store.tell(crate::store::changes::Change::AmiClients).await;
    store.audit(actor, "ami.user.add", &name, &detail).await?;
    Ok(created)
}

/// A client as `ami user list` shows it (never its secret).
#[derive(Debug, Serialize)]
pub struct ClientView {
    pub name: String,
    pub allow: Vec<String>,
    pub events: Vec<String>,
    pub permit: Vec<String>,
    pub overrides: Vec<String>,
    pub created_at: String,
    pub updated_at: String,
}

fn split(s: &str) -> Vec<String> {
    s.split(',')
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

    #[test]
    fn a_policy_is_checked_and_normalised() {
        let allow = strings(&["Originate", " Queue*", ""]);
        let events = strings(&["call", "agent"]);
        let permit = strings(&["192.0.2.7/24,2001:db8::1"]);
        let overrides = strings(&["Command"]);
        let policy = PolicyInput {
            allow: &allow,
            events: &events,
            permit: &permit,
            overrides: &overrides,
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
            }
        );
        let none: Vec<String> = Vec::new();
        let loopback = PolicyInput {
            allow: &allow,
            events: &none,
            permit: &none,
            overrides: &none,
        }
        .check()
        .unwrap();
        assert_eq!(loopback.permit, LOOPBACK_ONLY);
    }

    #[test]
    fn bad_policies_say_what_is_wrong() {
        let ok = strings(&["Ping"]);
        let none: Vec<String> = Vec::new();
        let check = |allow: &[String], events: &[String], permit: &[String], ov: &[String]| {
            PolicyInput {
                allow,
                events,
                permit,
                overrides: ov,
            }
            .check()
            .unwrap_err()
        };
        assert!(matches!(
            check(&strings(&["Orig inate"]), &none, &none, &none),
            ClientError::BadAction(a) if a == "Orig inate"
        ));
        assert!(matches!(
            check(&strings(&[" "]), &none, &none, &none),
            ClientError::NoActions
        ));
        assert!(matches!(
            check(&ok, &strings(&["nonsense"]), &none, &none),
            ClientError::BadEvents(_)
        ));
        assert!(matches!(
            check(&ok, &none, &strings(&["host.example"]), &none),
            ClientError::BadPermit(p) if p == "host.example"
        ));
        let e = check(&ok, &none, &none, &strings(&["everything"]));
        assert!(matches!(&e, ClientError::BadOverride { given, known }
            if given == "everything" && known.contains("command")));
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
