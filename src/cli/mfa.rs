//! `pbxguard mfa …`: the second-factor policy, status, resets and exemptions from the command
//! line. Changes that end sessions are announced through the auth stamp.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Subcommand, ValueEnum};

use super::users::notice;
use super::{actor, load, open_store, open_vault};
use crate::auth::mfa::admin::{self, MAX_EXEMPTION_SECS};
use crate::auth::mfa::MfaError;
use crate::clock::{now_unix, rfc3339};
use crate::config::Config;
use crate::store::Store;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

#[derive(Debug, Subcommand)]
pub enum MfaCommand {
    /// Every user's second factor (totp, passkey, totp+passkey, email or none), enrollment time
    /// and exemption.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Remove a user's TOTP, recovery codes and passkeys and end the user's sessions (a lost
    /// phone).
    Reset { name: String },
    /// Show the policy, or force enrollment for every user with --force on.
    Policy {
        #[arg(long, value_enum)]
        force: Option<OnOff>,
    },
    /// Let a user log in without enrolling for a while (ends by itself).
    Exempt {
        name: String,
        #[arg(long = "for", value_parser = humantime::parse_duration)]
        duration: Duration,
    },
    /// End a user's exemption now.
    Unexempt { name: String },
}

/// The longest exemption granted in one go.
const MAX_EXEMPTION: Duration = Duration::from_secs(MAX_EXEMPTION_SECS as u64);

/// The CLI's sentence for the refusals an admin can run into.
fn refusal(e: MfaError, name: &str) -> anyhow::Error {
    match e {
        MfaError::NoSuchUser => anyhow::anyhow!("no such user: {name}"),
        MfaError::NotExempt => anyhow::anyhow!("{name} has no exemption"),
        e => e.into(),
    }
}

pub async fn run(config_path: &Path, cmd: MfaCommand) -> anyhow::Result<ExitCode> {
    let config = load(config_path)?;
    let store = open_store(&config).await?;
    let out = match crate::settings::ops::stored(&store).await {
        Ok(stored) => run_with(&stored.applied(config), &store, cmd).await,
        Err(e) => Err(e.into()),
    };
    store.close().await;
    out
}

async fn run_with(config: &Config, store: &Store, cmd: MfaCommand) -> anyhow::Result<ExitCode> {
    let now = now_unix();
    match cmd {
        MfaCommand::Status { json } => status(config, store, json, now).await?,
        MfaCommand::Reset { name } => {
            let vault = open_vault(config).await?;
            let r = admin::reset(store, &vault, notice(config), &actor(), &name, now)
                .await
                .map_err(|e| refusal(e, &name))?;
            let passkeys = match r.passkeys {
                0 => String::new(),
                1 => ", 1 passkey removed".to_string(),
                n => format!(", {n} passkeys removed"),
            };
            println!(
                "{}{passkeys}; {}'s sessions were ended",
                if r.had_totp {
                    "TOTP removed"
                } else {
                    "no TOTP was set up"
                },
                r.user
            );
        }
        MfaCommand::Policy { force } => {
            if let Some(f) = force {
                admin::set_policy(store, &actor(), matches!(f, OnOff::On), now).await?;
            }
            let forced = admin::policy(store, &config.mfa).await?;
            println!("force enrollment: {}", if forced { "on" } else { "off" });
        }
        MfaCommand::Exempt { name, duration } => {
            if duration.is_zero() || duration > MAX_EXEMPTION {
                return Err(super::UsageError("--for must be between 1s and 90d".into()).into());
            }
            let until = now + i64::try_from(duration.as_secs()).unwrap_or(0);
            let user = admin::exempt(store, &actor(), &name, until, now)
                .await
                .map_err(|e| refusal(e, &name))?;
            println!("{user} is exempt from enrollment until {}", rfc3339(until));
        }
        MfaCommand::Unexempt { name } => {
            let user = admin::unexempt(store, &actor(), &name)
                .await
                .map_err(|e| refusal(e, &name))?;
            println!("{user} is no longer exempt");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn status(config: &Config, store: &Store, json: bool, now: i64) -> anyhow::Result<()> {
    let views = admin::status(store, &config.mfa, now).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&views)?);
        return Ok(());
    }
    let forced = admin::policy(store, &config.mfa).await?;
    println!("force enrollment: {}", if forced { "on" } else { "off" });
    println!(
        "{:<24}  {:<6}  {:<20}  EXEMPT UNTIL",
        "USER", "METHOD", "ENROLLED"
    );
    for v in &views {
        println!(
            "{:<24}  {:<6}  {:<20}  {}",
            v.user,
            v.method,
            v.enrolled_at.as_deref().unwrap_or("-"),
            v.exempt_until.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}
