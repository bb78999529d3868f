//! `pbxguard ami user …`: the clients of the AMI gateway. Secrets go into the vault
//! (`ami/clients/<name>`; the MD5 challenge needs the plaintext) and never come back out.

use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;

use super::{actor, load, open_store, open_vault, read_stdin_secret, UsageError};
use crate::ami::clients::{self, ClientError, ClientView, Limit, Policy, PolicyEdit, PolicyInput};
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
        /// Dialplan contexts its calls and transfers may go into (repeatable or
        /// comma-separated; `*` globs; case-sensitive, as in Asterisk). Required when --allow
        /// admits Originate.
        #[arg(long = "context", value_delimiter = ',')]
        contexts: Vec<String>,
        /// Originates it may have in flight at once: a number (0 = unlimited) or `default`
        /// (the [dialing] value, also when not given).
        #[arg(long)]
        max_concurrent_calls: Option<Limit>,
        /// Originates it may start per minute: a number (0 = unlimited) or `default`.
        #[arg(long)]
        max_call_attempts_per_minute: Option<Limit>,
    },
    /// Change a client's policy in place (the secret stays): each option given replaces that
    /// setting, the others are kept. Open sessions follow within 5 s.
    Edit {
        name: String,
        /// Actions the client may send (replaces the list).
        #[arg(long, value_delimiter = ',')]
        allow: Option<Vec<String>>,
        /// Event classes the client may receive (replaces the list; '' for none). Open
        /// sessions are ended when this changes: Asterisk sets a session's events at login.
        #[arg(long, value_delimiter = ',')]
        events: Option<Vec<String>>,
        /// Networks logins may come from (replaces the list; '' for loopback only). Open
        /// sessions from an address no longer admitted are ended.
        #[arg(long)]
        permit: Option<Vec<String>>,
        /// Built-in refusals lifted (replaces the list; '' for none).
        #[arg(long = "override")]
        overrides: Option<Vec<String>>,
        /// Dialplan contexts (replaces the list; '' for none, refused while Originate is
        /// allowed).
        #[arg(long = "context", value_delimiter = ',')]
        contexts: Option<Vec<String>>,
        /// Originates in flight at once: a number (0 = unlimited) or `default`.
        #[arg(long)]
        max_concurrent_calls: Option<Limit>,
        /// Originates per minute: a number (0 = unlimited) or `default`.
        #[arg(long)]
        max_call_attempts_per_minute: Option<Limit>,
    },
    /// List clients and their policies (never secrets).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Delete a client and its secret.
    Rm { name: String },
}

/// `5 at once, 30/min`, with `default` for the [dialing] value and 0 shown as `unlimited`.
fn limits_text(v: &ClientView) -> String {
    let show = |l: Option<u32>| match l {
        None => "default".to_string(),
        Some(0) => "unlimited".to_string(),
        Some(n) => n.to_string(),
    };
    format!(
        "{} at once, {}/min",
        show(v.max_concurrent_calls),
        show(v.max_call_attempts_per_minute)
    )
}

/// Warnings about a policy just stored.
fn warn_about(name: &str, policy: &Policy) {
    if !policy.overrides.is_empty() {
        eprintln!(
            "warning: {name} may pass built-in refusals ({}); every use is logged",
            policy.overrides
        );
    }
    if policy.contexts.split(',').any(|c| c == "*") {
        eprintln!(
            "warning: --context '*' lets {name}'s calls go into every dialplan context; name the contexts it needs"
        );
    }
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
        ClientError::BadContext(_) => format!("--context {e}"),
        ClientError::OriginateWithoutContext(_) | ClientError::NothingToChange => e.to_string(),
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
            contexts,
            max_concurrent_calls,
            max_call_attempts_per_minute,
            password_stdin: _,
        } => {
            let name = normalise_name(&name).map_err(|e| problem(e.into()))?;
            let input = PolicyInput {
                allow: &allow,
                events: &events,
                permit: &permit,
                overrides: &overrides,
                contexts: &contexts,
                max_concurrent_calls,
                max_call_attempts_per_minute,
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
            warn_about(&name, &policy);
            println!(
                "{} AMI client {name} (open sessions of an updated client follow within seconds)",
                if created { "created" } else { "updated" }
            );
            Ok(ExitCode::SUCCESS)
        }
        UserCommand::Edit {
            name,
            allow,
            events,
            permit,
            overrides,
            contexts,
            max_concurrent_calls,
            max_call_attempts_per_minute,
        } => {
            let name = normalise_name(&name).map_err(|e| problem(e.into()))?;
            let change = PolicyEdit {
                allow: allow.as_deref(),
                events: events.as_deref(),
                permit: permit.as_deref(),
                overrides: overrides.as_deref(),
                contexts: contexts.as_deref(),
                max_concurrent_calls,
                max_call_attempts_per_minute,
            };
            let store = open_store(&config).await?;
            let result = clients::edit(&store, &actor(), &name, &change, now_unix()).await;
            store.close().await;
            let policy = result.map_err(problem)?;
            warn_about(&name, &policy);
            println!("updated AMI client {name} (open sessions follow within 5 s)");
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
                println!(
                    "{:<20}  {:<30}  {:<20}  {:<20}  {:<24}  PERMIT",
                    "NAME", "ALLOW", "EVENTS", "CONTEXTS", "CALLS"
                );
                for v in &views {
                    let events = if v.events.is_empty() {
                        "none".to_string()
                    } else {
                        v.events.join(",")
                    };
                    let contexts = if v.contexts.is_empty() {
                        "-".to_string()
                    } else {
                        v.contexts.join(",")
                    };
                    println!(
                        "{:<20}  {:<30}  {:<20}  {:<20}  {:<24}  {}",
                        v.name,
                        v.allow.join(","),
                        events,
                        contexts,
                        limits_text(v),
                        v.permit.join(",")
                    );
                }
                for v in views
                    .iter()
                    .filter(|v| !v.calls_without_contexts.is_empty())
                {
                    println!(
                        "warning: {} may {} without --context: it can call or transfer into any \
                         dialplan context (toll fraud). Give it the contexts it needs: \
                         pbxguard ami user edit {} --context CONTEXT",
                        v.name,
                        v.calls_without_contexts.join(", "),
                        v.name
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
