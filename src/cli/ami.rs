//! `pbxguard ami user …`: the clients of the AMI gateway. Secrets go into the vault
//! (`ami/clients/<name>`; the MD5 challenge needs the plaintext) and never come back out.

use std::path::Path;
use std::process::ExitCode;

use anyhow::bail;
use clap::Subcommand;
use ipnet::IpNet;
use serde::Serialize;

use super::{actor, load, open_store, open_vault, read_stdin_secret, UsageError};
use crate::ami::policy::{Rule, RULES};
use crate::ami::{classes, client_secret_name, normalise_name};
use crate::clock::{now_unix, rfc3339};
use crate::store::AmiClientRow;

#[derive(Debug, Subcommand)]
pub enum AmiCommand {
    /// Clients of the AMI gateway.
    #[command(subcommand)]
    User(UserCommand),
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a client, or replace its secret and policy; the secret is read from stdin.
    Add {
        /// The AMI user name the client logs in with (case-insensitive, stored in lower case).
        name: String,
        /// Read the secret from stdin (required: secrets never go on the command line).
        #[arg(long, required = true)]
        password_stdin: bool,
        /// Keep stdin's bytes exactly (no trailing newline stripped).
        #[arg(long)]
        raw: bool,
        /// Actions the client may send, comma-separated; `*` globs (`Queue*`). Ping, Events
        /// and Logoff are always allowed.
        #[arg(long, required = true, value_delimiter = ',')]
        allow: Vec<String>,
        /// Event classes the client may receive (call, agent, system, …, all); default none.
        #[arg(long, value_delimiter = ',')]
        events: Vec<String>,
        /// Networks logins may come from (repeatable); default loopback only.
        #[arg(long)]
        permit: Vec<String>,
        /// Lift a built-in refusal for this client (application, function, command, config,
        /// moduleload, secrets). Every use is logged as a warning. Think twice.
        #[arg(long = "override")]
        overrides: Vec<String>,
    },
    /// List clients and their policies (never secrets).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Delete a client and its secret.
    Rm { name: String },
}

#[derive(Serialize)]
struct ClientView {
    name: String,
    allow: Vec<String>,
    events: Vec<String>,
    permit: Vec<String>,
    overrides: Vec<String>,
    created_at: String,
    updated_at: String,
}

fn split(s: &str) -> Vec<String> {
    s.split(',')
        .filter(|x| !x.is_empty())
        .map(str::to_string)
        .collect()
}

fn validate_actions(allow: &[String]) -> Result<String, UsageError> {
    let mut out = Vec::new();
    for a in allow.iter().map(|a| a.trim()).filter(|a| !a.is_empty()) {
        if a.len() > 64
            || !a
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'*' || b == b'_')
        {
            return Err(UsageError(format!(
                "--allow {a:?}: an action is a name such as Originate or a glob such as Queue*"
            )));
        }
        out.push(a.to_string());
    }
    if out.is_empty() {
        return Err(UsageError("--allow needs at least one action".into()));
    }
    Ok(out.join(","))
}

fn validate_permit(permit: &[String]) -> Result<String, UsageError> {
    if permit.is_empty() {
        return Ok("127.0.0.0/8,::1/128".into());
    }
    let mut out = Vec::new();
    for p in permit.iter().flat_map(|p| p.split(',')).map(str::trim) {
        let net = p
            .parse::<IpNet>()
            .or_else(|_| p.parse::<std::net::IpAddr>().map(IpNet::from))
            .map_err(|_| {
                UsageError(format!(
                    "--permit {p:?} is not an IP address or CIDR network"
                ))
            })?;
        out.push(net.trunc().to_string());
    }
    Ok(out.join(","))
}

fn validate_overrides(overrides: &[String]) -> Result<String, UsageError> {
    let mut out = Vec::new();
    for o in overrides.iter().flat_map(|o| o.split(',')).map(str::trim) {
        let rule = Rule::parse(&o.to_ascii_lowercase()).ok_or_else(|| {
            let names: Vec<&str> = RULES.iter().map(|r| r.name()).collect();
            UsageError(format!(
                "--override {o:?}: not a built-in refusal ({})",
                names.join(", ")
            ))
        })?;
        out.push(rule.name().to_string());
    }
    Ok(out.join(","))
}

pub async fn run(config_path: &Path, cmd: AmiCommand) -> anyhow::Result<ExitCode> {
    let config = load(config_path)?;
    let AmiCommand::User(cmd) = cmd;
    match cmd {
        UserCommand::Add {
            name,
            raw,
            allow,
            events,
            permit,
            overrides,
            password_stdin: _,
        } => {
            let name = normalise_name(&name).map_err(|e| UsageError(e.to_string()))?;
            let allow = validate_actions(&allow)?;
            let events = events.join(",");
            classes::parse_class_list(&events).map_err(|e| UsageError(format!("--events: {e}")))?;
            let permit = validate_permit(&permit)?;
            let overrides = validate_overrides(&overrides)?;
            let secret = read_stdin_secret(crate::vault::MAX_SECRET_LEN, raw, "secret")?;
            if secret.is_empty() {
                return Err(UsageError("the secret on stdin is empty".into()).into());
            }
            // Asterisk's header values end at CR/LF and NUL; such a secret could never be sent.
            if secret.iter().any(|&b| b < 0x20 || b == 0x7f) {
                return Err(
                    UsageError("the secret must not contain control characters".into()).into(),
                );
            }
            let vault = open_vault(&config).await?;
            vault.set(&client_secret_name(&name), &secret).await?;
            let store = open_store(&config).await?;
            let now = now_unix();
            let created = store
                .put_ami_client(&AmiClientRow {
                    name: name.clone(),
                    allow: allow.clone(),
                    events: events.clone(),
                    permit: permit.clone(),
                    overrides: overrides.clone(),
                    created_at: now,
                    updated_at: now,
                })
                .await?;
            store
                .audit(
                    &actor(),
                    "ami.user.add",
                    &name,
                    &format!("allow={allow} events={events} permit={permit} overrides={overrides}"),
                )
                .await?;
            if !overrides.is_empty() {
                eprintln!(
                    "warning: {name} may pass built-in refusals ({overrides}); every use is logged"
                );
            }
            println!(
                "{} AMI client {name} (open sessions of an updated client are ended within seconds)",
                if created { "created" } else { "updated" }
            );
            Ok(ExitCode::SUCCESS)
        }
        UserCommand::List { json } => {
            let store = open_store(&config).await?;
            let views: Vec<ClientView> = store
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
                .collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&views)?);
            } else if views.is_empty() {
                println!("no AMI clients");
            } else {
                println!("{:<20}  {:<30}  {:<20}  PERMIT", "NAME", "ALLOW", "EVENTS");
                for v in views {
                    let events = if v.events.is_empty() {
                        "none".to_string()
                    } else {
                        v.events.join(",")
                    };
                    println!(
                        "{:<20}  {:<30}  {:<20}  {}",
                        v.name,
                        v.allow.join(","),
                        events,
                        v.permit.join(",")
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        UserCommand::Rm { name } => {
            let name = normalise_name(&name).map_err(|e| UsageError(e.to_string()))?;
            let store = open_store(&config).await?;
            if !store.delete_ami_client(&name).await? {
                bail!("no AMI client {name}");
            }
            let vault = open_vault(&config).await?;
            // The row is gone, so the client can no longer log in; a missing secret is fine.
            let _ = vault.remove(&client_secret_name(&name)).await;
            store.audit(&actor(), "ami.user.rm", &name, "").await?;
            println!("deleted AMI client {name} (its open sessions end within seconds)");
            Ok(ExitCode::SUCCESS)
        }
    }
}
