//! `pbxguard ami user …`: the clients of the AMI gateway. Secrets go into the vault
//! (`ami/clients/<name>`; the MD5 challenge needs the plaintext) and never come back out.

use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;

use super::{actor, load, open_store, open_vault, read_stdin_secret, UsageError};
use crate::ami::clients::{self, ClientError, PolicyInput};
use crate::ami::normalise_name;
use crate::clock::now_unix;

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

/// The CLI's sentence (and exit code) for what an operation refused: input the admin can
/// correct names the option it came from and exits 64.
fn problem(e: ClientError) -> anyhow::Error {
    let usage = match &e {
        ClientError::Name(e) => e.to_string(),
        ClientError::BadAction(_) => format!("--allow {e}"),
        ClientError::NoActions => "--allow needs at least one action".into(),
        ClientError::BadEvents(why) => format!("--events: {why}"),
        ClientError::BadPermit(_) => format!("--permit {e}"),
        ClientError::BadOverride { .. } => format!("--override {e}"),
        ClientError::EmptySecret => "the secret on stdin is empty".into(),
        ClientError::ControlInSecret => e.to_string(),
        ClientError::NoSuchClient(_) | ClientError::Vault(_) | ClientError::Store(_) => {
            return e.into()
        }
    };
    UsageError(usage).into()
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
            let name = normalise_name(&name).map_err(|e| problem(e.into()))?;
            let input = PolicyInput {
                allow: &allow,
                events: &events,
                permit: &permit,
                overrides: &overrides,
            };
            let policy = input.check().map_err(problem)?;
            let secret = read_stdin_secret(crate::vault::MAX_SECRET_LEN, raw, "secret")?;
            clients::check_secret(&secret).map_err(problem)?;
            let vault = open_vault(&config).await?;
            let store = vault.store().clone();
            let created = clients::add(
                &store,
                &vault,
                &actor(),
                &name,
                &policy,
                &secret,
                now_unix(),
            )
            .await
            .map_err(problem)?;
            store.close().await;
            if !policy.overrides.is_empty() {
                eprintln!(
                    "warning: {name} may pass built-in refusals ({}); every use is logged",
                    policy.overrides
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
            let views = clients::list(&store).await?;
            store.close().await;
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
            let name = normalise_name(&name).map_err(|e| problem(e.into()))?;
            let vault = open_vault(&config).await?;
            let store = vault.store().clone();
            clients::remove(&store, &vault, &actor(), &name)
                .await
                .map_err(problem)?;
            store.close().await;
            println!("deleted AMI client {name} (its open sessions end within seconds)");
            Ok(ExitCode::SUCCESS)
        }
    }
}
