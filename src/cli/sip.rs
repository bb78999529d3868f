//! `pbxguard sip credential …`: the SIP auth objects Asterisk fetches over realtime. Passwords
//! go into the vault (`sip/<id>`) and never come back out through the CLI.

use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;

use super::{actor, load, open_store, open_vault, read_stdin_secret, UsageError};
use crate::clock::now_unix;
use crate::realtime::credentials::{self, By, CredentialError};
use crate::realtime::{validate_id, validate_username};
use crate::vault::MAX_SECRET_LEN;

#[derive(Debug, Subcommand)]
pub enum SipCommand {
    /// SIP credentials (pjsip auth objects, family ps_auths).
    #[command(subcommand)]
    Credential(CredentialCommand),
    /// The ban list (an alias of `pbxguard ban`).
    #[command(subcommand)]
    Ban(super::ban::BanCommand),
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

/// The CLI's sentence (and exit code) for what an operation refused: input the admin can
/// correct exits 64.
fn problem(e: CredentialError) -> anyhow::Error {
    match e {
        CredentialError::EmptyPassword => {
            UsageError("the password on stdin is empty".into()).into()
        }
        e @ (CredentialError::Invalid(_) | CredentialError::NotUtf8) => {
            UsageError(e.to_string()).into()
        }
        e => e.into(),
    }
}

pub async fn run(config_path: &Path, cmd: SipCommand) -> anyhow::Result<ExitCode> {
    let cmd = match cmd {
        SipCommand::Credential(c) => c,
        SipCommand::Ban(b) => return super::ban::run(config_path, b).await,
    };
    let config = load(config_path)?;
    match cmd {
        CredentialCommand::Set {
            id,
            username,
            raw,
            password_stdin: _,
        } => {
            validate_id(&id).map_err(|e| problem(e.into()))?;
            validate_username(&username).map_err(|e| problem(e.into()))?;
            let password = read_stdin_secret(MAX_SECRET_LEN, raw, "password")?;
            credentials::check_password(&password).map_err(problem)?;
            let vault = open_vault(&config).await?;
            let store = vault.store().clone();
            let who = actor();
            let by = By::Admin(&who);
            let created =
                credentials::set(&store, &vault, by, &id, &username, &password, now_unix())
                    .await
                    .map_err(problem)?;
            store.close().await;
            println!(
                "{} SIP credential {id} (user {username})",
                if created { "created" } else { "updated" }
            );
            Ok(ExitCode::SUCCESS)
        }
        CredentialCommand::List { json } => {
            let store = open_store(&config).await?;
            let views = credentials::list(&store).await?;
            store.close().await;
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
            validate_id(&id).map_err(|e| problem(e.into()))?;
            let vault = open_vault(&config).await?;
            let store = vault.store().clone();
            credentials::remove(&store, &vault, &actor(), &id)
                .await
                .map_err(problem)?;
            store.close().await;
            println!("deleted SIP credential {id}");
            Ok(ExitCode::SUCCESS)
        }
    }
}
