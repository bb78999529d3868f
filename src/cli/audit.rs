//! `pbxguard audit asterisk`: findings on Asterisk's configuration; exit 1 when any is high.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use super::UsageError;
use crate::audit::{self, Severity};

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
}

pub fn run(cmd: AuditCommand) -> anyhow::Result<ExitCode> {
    let AuditCommand::Asterisk { dir, json } = cmd;
    let findings = audit::asterisk(&dir).map_err(|e| UsageError(e.to_string()))?;
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
