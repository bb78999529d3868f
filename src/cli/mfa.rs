//! `pbxguard mfa …`: the second-factor policy, status, resets and exemptions from the command
//! line. Changes that end sessions are announced through the auth stamp.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use clap::{Subcommand, ValueEnum};

use super::users::announce;
use super::{actor, load, open_store, open_vault};
use crate::auth::mfa::{self, FORCE_SETTING};
use crate::clock::{now_unix, rfc3339};
use crate::store::Store;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

#[derive(Debug, Subcommand)]
pub enum MfaCommand {
    /// Every user's second factor (totp, email or none), enrollment time and exemption.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Remove a user's TOTP and end the user's sessions (a lost phone).
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
const MAX_EXEMPTION: Duration = Duration::from_secs(90 * 24 * 3600);

async fn user(store: &Store, name: &str) -> anyhow::Result<crate::store::UserRow> {
    match store.user(&name.to_ascii_lowercase()).await? {
        Some(u) => Ok(u),
        None => bail!("no such user: {name}"),
    }
}

pub async fn run(config_path: &Path, cmd: MfaCommand) -> anyhow::Result<ExitCode> {
    let config = load(config_path)?;
    let store = open_store(&config).await?;
    let now = now_unix();
    match cmd {
        MfaCommand::Status { json } => {
            let rows = store.mfa_status(now).await?;
            let cfg = &config.mfa;
            let views: Vec<serde_json::Value> = rows
                .iter()
                .map(|r| {
                    let email = cfg.email_fallback
                        && r.email.as_deref().is_some_and(|e| !e.is_empty())
                        && (r.level < 9 || cfg.email_for_admins);
                    let method = if r.totp_confirmed_at.is_some() {
                        "totp"
                    } else if email {
                        "email"
                    } else {
                        "none"
                    };
                    serde_json::json!({
                        "user": r.user,
                        "method": method,
                        "enrolled_at": r.totp_confirmed_at.map(rfc3339),
                        "exempt_until": r.exempt_until.map(rfc3339),
                    })
                })
                .collect();
            let forced = store.setting(FORCE_SETTING).await?.as_deref() == Some("on");
            if json {
                println!("{}", serde_json::to_string_pretty(&views)?);
            } else {
                println!("force enrollment: {}", if forced { "on" } else { "off" });
                println!(
                    "{:<24}  {:<6}  {:<20}  EXEMPT UNTIL",
                    "USER", "METHOD", "ENROLLED"
                );
                for v in &views {
                    let s = |k: &str| v[k].as_str().unwrap_or("-").to_string();
                    println!(
                        "{:<24}  {:<6}  {:<20}  {}",
                        s("user"),
                        s("method"),
                        s("enrolled_at"),
                        s("exempt_until")
                    );
                }
            }
        }
        MfaCommand::Reset { name } => {
            let u = user(&store, &name).await?;
            let vault = open_vault(&config).await?;
            for secret in [
                mfa::totp_secret_name(u.id),
                mfa::pending_totp_secret_name(u.id),
            ] {
                match vault.remove(&secret).await {
                    Ok(()) | Err(crate::vault::VaultError::NotFound(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            let had = store.reset_totp(u.id, now).await?;
            store.audit(&actor(), "mfa.reset", &u.name, "").await?;
            announce(&config)?;
            println!(
                "{}; {}'s sessions were ended",
                if had {
                    "TOTP removed"
                } else {
                    "no TOTP was set up"
                },
                u.name
            );
        }
        MfaCommand::Policy { force } => {
            if let Some(f) = force {
                let value = match f {
                    OnOff::On => "on",
                    OnOff::Off => "off",
                };
                store
                    .set_setting(FORCE_SETTING, value, &actor(), now)
                    .await?;
                store.audit(&actor(), "mfa.policy", "force", value).await?;
            }
            let forced = store.setting(FORCE_SETTING).await?.as_deref() == Some("on");
            println!("force enrollment: {}", if forced { "on" } else { "off" });
        }
        MfaCommand::Exempt { name, duration } => {
            if duration.is_zero() || duration > MAX_EXEMPTION {
                return Err(super::UsageError("--for must be between 1s and 90d".into()).into());
            }
            let u = user(&store, &name).await?;
            let until = now + i64::try_from(duration.as_secs()).unwrap_or(0);
            store.set_exemption(u.id, until, &actor(), now).await?;
            store
                .audit(
                    &actor(),
                    "mfa.exempt",
                    &u.name,
                    &format!("until={}", rfc3339(until)),
                )
                .await?;
            println!(
                "{} is exempt from enrollment until {}",
                u.name,
                rfc3339(until)
            );
        }
        MfaCommand::Unexempt { name } => {
            let u = user(&store, &name).await?;
            if !store.remove_exemption(u.id).await? {
                bail!("{} has no exemption", u.name);
            }
            store.audit(&actor(), "mfa.unexempt", &u.name, "").await?;
            println!("{} is no longer exempt", u.name);
        }
    }
    Ok(ExitCode::SUCCESS)
}
