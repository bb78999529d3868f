//! `pbxguard user …`, `session …` and `history`: accounts, sessions and the login history from
//! the command line. Every change that could affect a live session is committed and then
//! announced through the auth stamp, so the running daemon applies it on its next request.

use std::path::Path;
use std::process::ExitCode;

use anyhow::bail;
use clap::{Args, Subcommand};
use zeroize::Zeroizing;

use super::{actor, load, open_store, UsageError};
use crate::auth::admin::{self, AdminError, MAX_HISTORY_LIMIT};
use crate::auth::password;
use crate::auth::sessions::Notice;
use crate::auth::users::{self, NewUser, UserError};
use crate::clock::now_unix;
use crate::config::Config;
use crate::store::Store;

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user; the password is read from stdin.
    Add {
        name: String,
        /// 1-4 agent, 5-6 supervisor, 7-8 manager, 9 admin.
        #[arg(long, value_parser = clap::value_parser!(u8).range(1..=9))]
        level: u8,
        #[arg(long)]
        email: Option<String>,
        /// Read the password from stdin (required: passwords never go on the command line).
        #[arg(long, required = true)]
        password_stdin: bool,
        /// Keep stdin's bytes exactly (no trailing newline stripped).
        #[arg(long)]
        raw: bool,
        /// The SIP extension the user's browser softphone registers as (see set-extension).
        #[arg(long)]
        extension: Option<String>,
    },
    /// List users.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Change a user's level; ends the user's sessions.
    SetLevel {
        name: String,
        #[arg(value_parser = clap::value_parser!(u8).range(1..=9))]
        level: u8,
    },
    /// Disable a user; ends the user's sessions.
    Disable { name: String },
    /// Enable a disabled user.
    Enable { name: String },
    /// Set a new password (from stdin); ends the user's sessions.
    Passwd {
        name: String,
        #[arg(long, required = true)]
        password_stdin: bool,
        /// Keep stdin's bytes exactly (no trailing newline stripped).
        #[arg(long)]
        raw: bool,
    },
    /// Bind the SIP extension a user's browser softphone may use over the WebSocket (its From
    /// and REGISTER To must be this extension); --clear removes it.
    SetExtension {
        name: String,
        #[arg(required_unless_present = "clear", conflicts_with = "clear")]
        extension: Option<String>,
        #[arg(long)]
        clear: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// Live sessions, newest first.
    List {
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Revoke one session, every session of a user, or every session.
    Revoke(RevokeArgs),
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct RevokeArgs {
    /// Session id.
    id: Option<String>,
    /// Every session of this user.
    #[arg(long)]
    user: Option<String>,
    /// Every session of every user (everyone must log in again).
    #[arg(long)]
    all: bool,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    #[arg(long)]
    user: Option<String>,
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_HISTORY_LIMIT)))]
    limit: u32,
    #[arg(long)]
    json: bool,
}

fn read_password(
    raw: bool,
    name: &str,
    rules: password::Rules,
) -> anyhow::Result<Zeroizing<String>> {
    let buf = super::read_stdin_secret(password::MAX_LEN, raw, "password")?;
    let text = std::str::from_utf8(&buf)
        .map_err(|_| UsageError("the password is not valid UTF-8".into()))?;
    users::check_password(text, name, rules).map_err(usage)
}

/// Input the admin can correct is a usage error (exit 64); the rest keeps its own sentence.
fn usage(e: UserError) -> anyhow::Error {
    match e {
        UserError::Invalid(why) => UsageError(why).into(),
        e => e.into(),
    }
}

/// Table output shows client-supplied text (names as typed, user agents): control characters
/// are escaped so they cannot drive the admin's terminal. JSON output escapes them anyway.
fn printable(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

/// How a change made by the CLI reaches the running daemon.
pub(super) fn notice(config: &Config) -> Notice<'_> {
    Notice::Stamp(&config.daemon.state_dir)
}

pub async fn user(config_path: &Path, cmd: UserCommand) -> anyhow::Result<ExitCode> {
    let config = load(config_path)?;
    let store = open_store(&config).await?;
    let out = match super::with_settings(config, &store).await {
        Ok(config) => user_inner(&config, &store, cmd).await,
        Err(e) => Err(e),
    };
    store.close().await;
    out
}

async fn user_inner(config: &Config, store: &Store, cmd: UserCommand) -> anyhow::Result<ExitCode> {
    let who = actor();
    let notice = notice(config);
    match cmd {
        UserCommand::Add {
            name,
            level,
            email,
            raw,
            extension,
            ..
        } => {
            let new = NewUser {
                name: &name,
                level,
                email: email.as_deref(),
                extension: extension.as_deref(),
            };
            new.check().map_err(usage)?;
            let pw = read_password(raw, &name, password::Rules::of(&config.auth))?;
            users::add(store, &who, new, &pw).await.map_err(usage)?;
            eprintln!("user {name:?} added with level {level}");
        }
        UserCommand::List { json } => list(store, json).await?,
        UserCommand::SetLevel { name, level } => {
            let ended = users::set_level(store, notice, &who, &name, level).await?;
            eprintln!("user {name:?} now has level {level}; {ended} session(s) ended");
        }
        UserCommand::Disable { name } => {
            let ended = users::set_disabled(store, notice, &who, &name, true).await?;
            eprintln!("user {name:?} disabled; {ended} session(s) ended");
        }
        UserCommand::Enable { name } => {
            users::set_disabled(store, notice, &who, &name, false).await?;
            eprintln!("user {name:?} enabled");
        }
        UserCommand::SetExtension {
            name, extension, ..
        } => {
            users::set_extension(store, &who, &name, extension.as_deref())
                .await
                .map_err(usage)?;
            match &extension {
                Some(ext) => eprintln!("user {name:?} now uses SIP extension {ext}"),
                None => eprintln!("user {name:?} has no SIP extension now"),
            }
        }
        UserCommand::Passwd { name, raw, .. } => {
            let pw = read_password(raw, &name, password::Rules::of(&config.auth))?;
            let ended = users::set_password(store, notice, &who, &name, &pw).await?;
            eprintln!("password of {name:?} changed; {ended} session(s) ended");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn list(store: &Store, json: bool) -> anyhow::Result<()> {
    let users = users::list(store).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&users)?);
        return Ok(());
    }
    println!(
        "{:<24} {:>5} {:<10} {:<8} {:<10} EMAIL",
        "NAME", "LEVEL", "ROLE", "STATE", "EXTENSION"
    );
    for u in users {
        let state = if u.disabled { "disabled" } else { "active" };
        println!(
            "{:<24} {:>5} {:<10} {:<8} {:<10} {}",
            u.name,
            u.level,
            u.role,
            state,
            u.extension.as_deref().unwrap_or("-"),
            u.email.unwrap_or_default()
        );
    }
    Ok(())
}

pub async fn session(config_path: &Path, cmd: SessionCommand) -> anyhow::Result<ExitCode> {
    let config = load(config_path)?;
    let store = open_store(&config).await?;
    let out = match super::with_settings(config, &store).await {
        Ok(config) => session_inner(&config, &store, cmd).await,
        Err(e) => Err(e),
    };
    store.close().await;
    out
}

async fn session_inner(
    config: &Config,
    store: &Store,
    cmd: SessionCommand,
) -> anyhow::Result<ExitCode> {
    let now = now_unix();
    match cmd {
        SessionCommand::List { user, json } => {
            let views = admin::sessions(store, &config.auth, user.as_deref(), now).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&views)?);
            } else {
                println!(
                    "{:<32} {:<16} {:<20} {:<20} {:<20} {:<16} IP",
                    "ID", "USER", "CREATED", "LAST SEEN", "EXPIRES", "NODE"
                );
                for v in views {
                    println!(
                        "{:<32} {:<16} {:<20} {:<20} {:<20} {:<16} {}",
                        v.id,
                        v.user,
                        v.created_at,
                        v.last_seen,
                        v.expires_at,
                        v.node.as_deref().unwrap_or("-"),
                        v.ip
                    );
                }
            }
        }
        SessionCommand::Revoke(args) => {
            let who = actor();
            let notice = notice(config);
            let n = match (args.id, args.user, args.all) {
                (Some(id), _, _) => {
                    match admin::revoke_session(store, notice, &who, &id, now).await {
                        Err(AdminError::NoSuchSession) => bail!("no live session {id:?}"),
                        done => done.map(|()| 1)?,
                    }
                }
                (_, Some(user), _) => {
                    match admin::revoke_user_sessions(store, notice, &who, &user, now).await {
                        Err(AdminError::NoSuchUser) => bail!("user {user:?} does not exist"),
                        done => done?,
                    }
                }
                _ => admin::revoke_all_sessions(store, notice, &who, now).await?,
            };
            eprintln!("{n} session(s) revoked");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn history(config_path: &Path, args: HistoryArgs) -> anyhow::Result<ExitCode> {
    let config = load(config_path)?;
    let store = open_store(&config).await?;
    let rows = admin::history(&store, args.user.as_deref(), args.limit).await;
    store.close().await;
    let rows = rows?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!(
            "{:<20} {:<16} {:<12} {:<39} {:<16} USER AGENT",
            "AT", "USER", "RESULT", "IP", "NODE"
        );
        for r in rows {
            println!(
                "{:<20} {:<16} {:<12} {:<39} {:<16} {}",
                r.at,
                printable(&r.user),
                r.result,
                r.ip,
                r.node.as_deref().unwrap_or("-"),
                printable(&r.user_agent)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
