//! `pbxguard ban …` (and its alias `pbxguard sip ban …`): the one ban list. Changes go to the
//! store; a running daemon applies them, to its listeners and the firewall, within 2 seconds.

use std::path::Path;
use std::process::ExitCode;

use anyhow::bail;
use clap::Subcommand;

use super::{actor, load, open_store, UsageError};
use crate::bans::admin::{self, BanError, Lifted, Request};

#[derive(Debug, Subcommand)]
pub enum BanCommand {
    /// List the bans in force (every source), soonest to end first.
    List {
        /// An array of objects: address, source, reason, created_at, expires_at, hits, node.
        #[arg(long)]
        json: bool,
    },
    /// Ban an address or prefix (IPv6 addresses are banned by their /64).
    Add {
        /// ADDRESS or ADDRESS/LEN, e.g. 192.0.2.66, 198.51.100.0/24, 2001:db8:1::/64.
        address: String,
        /// How long, e.g. 30m, 12h, 7d ([bans] duration when omitted; at most 10 years).
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<std::time::Duration>,
        /// Why (shown in the list and the audit log).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Lift every source's ban on an address (its key: an IPv6 address lifts its /64), or
    /// every ban with --all.
    Rm {
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        address: Option<String>,
        #[arg(long)]
        all: bool,
    },
}

fn usage(e: BanError) -> anyhow::Error {
    match e {
        BanError::Store(e) => anyhow::Error::from(e),
        e => UsageError(e.to_string()).into(),
    }
}

pub async fn run(config_path: &Path, cmd: BanCommand) -> anyhow::Result<ExitCode> {
    let config = load(config_path)?;
    let store = open_store(&config).await?;
    match cmd {
        BanCommand::List { json } => {
            let views = admin::list(&store).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&views)?);
            } else if views.is_empty() {
                println!("no bans");
            } else {
                println!(
                    "{:<28}  {:<8}  {:>4}  {:<20}  REASON",
                    "ADDRESS", "SOURCE", "HITS", "EXPIRES"
                );
                for v in views {
                    println!(
                        "{:<28}  {:<8}  {:>4}  {:<20}  {}",
                        v.address, v.source, v.hits, v.expires_at, v.reason
                    );
                }
            }
        }
        BanCommand::Add {
            address,
            duration,
            reason,
        } => {
            let view = admin::add(
                &store,
                &config.bans,
                &crate::app::exempt_nets(&config),
                &actor(),
                &config.daemon.node_name,
                &Request {
                    address: &address,
                    duration,
                    reason: reason.as_deref(),
                },
            )
            .await
            .map_err(usage)?;
            println!("banned {} until {}", view.address, view.expires_at);
        }
        BanCommand::Rm { address, .. } => {
            let lifted = admin::remove(&store, &actor(), address.as_deref())
                .await
                .map_err(usage)?;
            match lifted {
                Lifted {
                    address: Some(k),
                    count: 0,
                } => bail!("no ban on {k}"),
                Lifted {
                    address: Some(k), ..
                } => println!("lifted the ban on {k}"),
                Lifted {
                    address: None,
                    count,
                } => println!("lifted {count} ban(s)"),
            }
        }
    }
    store.close().await;
    Ok(ExitCode::SUCCESS)
}
