//! `pbxguard sip credential …`: the SIP auth objects Asterisk fetches over realtime. Passwords
//! go into the vault (`sip/<id>`) and never come back out through the CLI.

use std::path::Path;
use std::process::ExitCode;

use anyhow::bail;
use clap::Subcommand;
use serde::Serialize;

use super::{actor, load, open_store, open_vault, read_stdin_secret, UsageError};
use crate::clock::{now_unix, rfc3339};
use crate::realtime::{secret_name, validate_id, validate_username};
use crate::vault::MAX_SECRET_LEN;

#[derive(Debug, Subcommand)]
pub enum SipCommand {
    /// SIP credentials (pjsip auth objects, family ps_auths).
    #[command(subcommand)]
    Credential(CredentialCommand),
    /// Client addresses the SIP edge has banned (failed authentications, scanners).
    #[command(subcommand)]
    Ban(BanCommand),
}

#[derive(Debug, Subcommand)]
pub enum BanCommand {
    /// List the bans in force.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Lift a ban (an address; IPv6 bans cover the /64), or every ban with --all. The running
    /// daemon lets the address in again within 2 seconds.
    Rm {
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        address: Option<String>,
        #[arg(long)]
        all: bool,
    },
}

#[derive(Serialize)]
struct BanView {
    address: String,
    reason: String,
    created_at: String,
    expires_at: String,
}

async fn ban(config: &crate::config::Config, cmd: BanCommand) -> anyhow::Result<ExitCode> {
    let store = open_store(config).await?;
    match cmd {
        BanCommand::List { json } => {
            let views: Vec<BanView> = store
                .sip_bans(now_unix())
                .await?
                .into_iter()
                .map(|r| BanView {
                    address: r.ip,
                    reason: r.reason,
                    created_at: rfc3339(r.created_at),
                    expires_at: rfc3339(r.expires_at),
                })
                .collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&views)?);
            } else if views.is_empty() {
                println!("no SIP bans");
            } else {
                println!("{:<40}  {:<14}  EXPIRES", "ADDRESS", "REASON");
                for v in views {
                    println!("{:<40}  {:<14}  {}", v.address, v.reason, v.expires_at);
                }
            }
        }
        BanCommand::Rm { address, .. } => {
            let key = match &address {
                Some(a) => Some(crate::sip::guards::parse_ban_key(a).ok_or_else(|| {
                    UsageError(format!(
                        "{a:?} is not an IP address (IPv6 bans may be given as PREFIX/64)"
                    ))
                })?),
                None => None,
            };
            let gone = store.delete_sip_bans(key.as_deref()).await?;
            let target = key.clone().unwrap_or_else(|| "all".into());
            store.audit(&actor(), "sip.ban.rm", &target, "").await?;
            match key {
                Some(k) if gone == 0 => bail!("no SIP ban on {k}"),
                Some(k) => println!("lifted the SIP ban on {k}"),
                None => println!("lifted {gone} SIP ban(s)"),
            }
        }
    }
    store.close().await;
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Subcommand)]
pub enum CredentialCommand {
    /// Create or replace a credential; the password is read from stdin.
    Set {
        /// The pjsip auth object id (what `auth=` of an endpoint names).
        id: String,
        #[arg(long)]
        username: String,
        /// Read the password from stdin (required: passwords never go on the command line).
        #[arg(long, required = true)]
        password_stdin: bool,
        /// Keep stdin's bytes exactly (no trailing newline stripped).
        #[arg(long)]
        raw: bool,
    },
    /// List credentials (ids and user names; never passwords).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Delete a credential.
    Rm { id: String },
}

#[derive(Serialize)]
struct CredentialView {
    id: String,
    username: String,
    created_at: String,
    updated_at: String,
}

pub async fn run(config_path: &Path, cmd: SipCommand) -> anyhow::Result<ExitCode> {
    let config = load(config_path)?;
    let cmd = match cmd {
        SipCommand::Credential(c) => c,
        SipCommand::Ban(b) => return ban(&config, b).await,
    };
    match cmd {
        CredentialCommand::Set {
            id,
            username,
            raw,
            password_stdin: _,
        } => {
            validate_id(&id).map_err(|e| UsageError(e.to_string()))?;
            validate_username(&username).map_err(|e| UsageError(e.to_string()))?;
            let password = read_stdin_secret(MAX_SECRET_LEN, raw, "password")?;
            if password.is_empty() {
                return Err(UsageError("the password on stdin is empty".into()).into());
            }
            if std::str::from_utf8(&password).is_err() {
                return Err(UsageError("the password must be UTF-8 text".into()).into());
            }
            let vault = open_vault(&config).await?;
            vault.set(&secret_name(&id), &password).await?;
            let store = open_store(&config).await?;
            let created = store.put_sip_credential(&id, &username, now_unix()).await?;
            store
                .audit(
                    &actor(),
                    "sip.credential.set",
                    &id,
                    &format!("username={username}"),
                )
                .await?;
            println!(
                "{} SIP credential {id} (user {username})",
                if created { "created" } else { "updated" }
            );
            Ok(ExitCode::SUCCESS)
        }
        CredentialCommand::List { json } => {
            let store = open_store(&config).await?;
            let rows = store.sip_credentials().await?;
            let views: Vec<CredentialView> = rows
                .into_iter()
                .map(|r| CredentialView {
                    id: r.id,
                    username: r.username,
                    created_at: rfc3339(r.created_at),
                    updated_at: rfc3339(r.updated_at),
                })
                .collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&views)?);
            } else if views.is_empty() {
                println!("no SIP credentials");
            } else {
                println!("{:<24}  {:<24}  UPDATED", "ID", "USERNAME");
                for v in views {
                    println!("{:<24}  {:<24}  {}", v.id, v.username, v.updated_at);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        CredentialCommand::Rm { id } => {
            validate_id(&id).map_err(|e| UsageError(e.to_string()))?;
            let store = open_store(&config).await?;
            if !store.delete_sip_credential(&id).await? {
                bail!("no SIP credential {id}");
            }
            let vault = open_vault(&config).await?;
            // The row is gone first, so Asterisk stops getting the credential even if this fails.
            if let Err(e) = vault.remove(&secret_name(&id)).await {
                tracing::warn!(error = %e, "the credential's vault secret was already gone");
            }
            store.audit(&actor(), "sip.credential.rm", &id, "").await?;
            println!("deleted SIP credential {id}");
            Ok(ExitCode::SUCCESS)
        }
    }
}
