//! `pbxguard audit asterisk`: findings on Asterisk's configuration; exit 1 when any is high.
//! `pbxguard audit log`: pbxguard's own audit rows (admin changes, refused calls, AMI actions).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use serde::Serialize;

use super::{load, open_store, UsageError};
use crate::audit::{self, Severity};
use crate::clock::rfc3339;

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Audit pjsip.conf, manager.conf, http.conf and extensions.conf (with their includes and
    /// templates; in the dialplan, what callers reach).
    Asterisk {
        #[arg(long, default_value = "/etc/asterisk")]
        dir: PathBuf,
        /// Print the findings as a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// pbxguard's audit log, newest first: admin changes, refused calls
    /// (`dialing.refused.<rule>`), state-changing AMI actions, recording downloads.
    Log {
        /// Only actions starting with this (e.g. `dialing.refused`, `ami.user`).
        #[arg(long, default_value = "")]
        action: String,
        /// Rows at most.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
}

/// One audit row as `audit log --json` prints it.
#[derive(Debug, Serialize)]
struct LogRow {
    at: String,
    actor: String,
    action: String,
    target: String,
    detail: String,
    node: Option<String>,
}

async fn log(config: &Path, action: &str, limit: u32, json: bool) -> anyhow::Result<ExitCode> {
    let config = load(config)?;
    let store = open_store(&config).await?;
    let rows: Vec<LogRow> = store
        .audit_entries_by_action(action, limit)
        .await?
        .into_iter()
        .map(|e| LogRow {
            at: rfc3339(e.at),
            actor: e.actor,
            action: e.action,
            target: e.target,
            detail: e.detail,
            node: e.node,
        })
        .collect();
    store.close().await;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else if rows.is_empty() {
        println!("no audit rows");
    } else {
        for r in rows {
            let node = r.node.map(|n| format!(" [{n}]")).unwrap_or_default();
            println!(
                "{}{node} {} {} {} {}",
                r.at, r.actor, r.action, r.target, r.detail
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The AMI gateway's clients as the dialplan audit needs them. Nothing (and no note) on a host
/// without pbxguard's configuration, where the audit reads Asterisk's files only.
async fn ami_clients(config: &Path) -> Result<Vec<audit::AmiClientInfo>, String> {
    if !config.exists() {
        return Ok(Vec::new());
    }
    let config = load(config).map_err(|e| e.to_string())?;
    let store = open_store(&config).await.map_err(|e| e.to_string())?;
    let infos = audit::scheduled::ami_client_infos(&store)
        .await
        .map_err(|e| e.to_string());
    store.close().await;
    infos
}

pub fn run(config: &Path, cmd: AuditCommand) -> anyhow::Result<ExitCode> {
    let (dir, json) = match cmd {
        AuditCommand::Log {
            action,
            limit,
            json,
        } => return super::runtime()?.block_on(log(config, &action, limit, json)),
        AuditCommand::Asterisk { dir, json } => (dir, json),
    };
    if !dir.is_dir() {
        return Err(UsageError(
            audit::AuditError::NotAFolder(dir.display().to_string()).to_string(),
        )
        .into());
    }
    let clients = match super::runtime()?.block_on(ami_clients(config)) {
        Ok(clients) => clients,
        Err(why) => {
            eprintln!("note: pbxguard's AMI clients are not audited: {why}");
            Vec::new()
        }
    };
    // The user pbxguard logs in to Asterisk as: the one that needs the `security` class.
    let upstream = load(config)
        .ok()
        .and_then(|c| c.ami.map(|a| a.upstream_username))
        .unwrap_or_else(|| audit::DEFAULT_UPSTREAM_USER.to_string());
    let findings =
        audit::asterisk_for(&dir, &clients, &upstream).map_err(|e| UsageError(e.to_string()))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&findings)?);
    } else if findings.is_empty() {
        println!("{}: no findings", dir.display());
    } else {
        for f in &findings {
            let object = if f.object.is_empty() {
                String::new()
            } else {
                format!(" [{}]", f.object)
            };
            println!(
                "{:<6} {}:{}{object}: {}\n       fix: {}",
                f.severity.name().to_uppercase(),
                f.file,
                f.line,
                f.message,
                f.fix
            );
        }
        let count = |s: Severity| findings.iter().filter(|f| f.severity == s).count();
        println!(
            "{} high, {} medium, {} low",
            count(Severity::High),
            count(Severity::Medium),
            count(Severity::Low)
        );
    }
    let high = findings.iter().any(|f| f.severity == Severity::High);
    Ok(if high {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
