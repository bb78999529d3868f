//! `pbxguard settings get [KEY] [--json]` and `pbxguard settings set KEY VALUE`: the runtime
//! security settings, stored in the database (every node follows them); the config file's
//! values are the defaults until an admin changes one.

use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;
use serde_json::{Map, Value};

use super::users::notice;
use super::{actor, load, open_store, UsageError};
use crate::clock::now_unix;
use crate::config::Config;
use crate::settings::ops::{self, SettingsError};
use crate::settings::{self as rs, KEYS};
use crate::store::Store;

#[derive(Debug, Subcommand)]
pub enum SettingsCommand {
    /// Show the settings in force (one KEY: its value alone), and where each comes from.
    Get {
        /// session_idle_timeout, session_max_lifetime, password_min_length,
        /// password_min_strength, mfa_force, mfa_email_fallback, lockout_threshold,
        /// lockout_window or lockout_duration.
        key: Option<String>,
        /// One flat object, as `GET /api/v1/admin/settings` answers.
        #[arg(long)]
        json: bool,
    },
    /// Change a setting on every node (audited with the old and the new value).
    Set {
        key: String,
        /// A duration such as 8h or 15m, a whole number, or on/off, as the key takes.
        value: String,
    },
}

fn usage(e: rs::Invalid) -> anyhow::Error {
    UsageError(e.to_string()).into()
}

pub async fn run(config_path: &Path, cmd: SettingsCommand) -> anyhow::Result<ExitCode> {
    let config = load(config_path)?;
    let store = open_store(&config).await?;
    let out = run_with(&config, &store, cmd).await;
    store.close().await;
    out
}

async fn run_with(
    config: &Config,
    store: &Store,
    cmd: SettingsCommand,
) -> anyhow::Result<ExitCode> {
    match cmd {
        SettingsCommand::Get { key, json } => {
            let stored = ops::stored(store).await?;
            let now = stored.over(config);
            match key {
                Some(name) => {
                    let key = rs::key(&name).map_err(usage)?;
                    if json {
                        let mut one = Map::new();
                        one.insert(key.name().into(), now.get(key).json());
                        println!("{}", Value::Object(one));
                    } else {
                        println!("{}", now.get(key).text());
                    }
                }
                None if json => println!("{}", serde_json::to_string_pretty(&now.to_json())?),
                None => {
                    println!("{:<24} {:<10} FROM", "SETTING", "VALUE");
                    for k in KEYS {
                        let from = if stored.0.iter().any(|(s, _)| *s == k) {
                            "database"
                        } else {
                            "config file"
                        };
                        println!("{:<24} {:<10} {from}", k.name(), now.get(k).text());
                    }
                }
            }
        }
        SettingsCommand::Set { key, value } => {
            let key = rs::key(&key).map_err(usage)?;
            let value = rs::parse_text(key, &value).map_err(usage)?;
            let before = ops::current(store, config).await?.get(key);
            let after = ops::change(
                store,
                config,
                notice(config),
                &actor(),
                &[(key, value)],
                now_unix(),
            )
            .await
            .map_err(|e| match e {
                SettingsError::Invalid(e) => usage(e),
                e => e.into(),
            })?;
            let after = after.get(key);
            if before == after {
                eprintln!("{} is already {}", key.name(), after.text());
            } else {
                eprintln!(
                    "{}: {} -> {} (every node, from its next request)",
                    key.name(),
                    before.text(),
                    after.text()
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
