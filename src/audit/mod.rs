//! `pbxguard audit asterisk`: reads Asterisk's configuration the way Asterisk does ([`conf`])
//! and reports what weakens the PBX ([`rules`]): unencrypted transports and media, DTLS without
//! fingerprint checks, open endpoints, weak or plaintext secrets, a manager interface or a SIP
//! WebSocket reachable from the network around pbxguard; and in the dialplan ([`dialplan`]),
//! what callers and AMI clients can reach: the host's shell and files, trunks with no prefix
//! restriction, dialplan injection.

pub mod conf;
pub mod config;
pub mod dialplan;
pub mod rules;
pub mod scheduled;

use std::path::Path;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    High,
    Medium,
    Low,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::High => "high",
            Severity::Medium => "medium",
            Severity::Low => "low",
        }
    }
}

/// One finding, as `--json` prints it (documented in docs/admin/audit.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Finding {
    pub severity: Severity,
    /// Relative to the audited folder.
    pub file: String,
    pub line: usize,
    /// The section (`[name]`) the finding is about; empty for a whole file.
    pub object: String,
    pub message: String,
    pub fix: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("{0} is not a folder")]
    NotAFolder(String),
    #[error("no pjsip.conf, manager.conf, http.conf or extensions.conf in {0}")]
    Nothing(String),
}

/// One client of pbxguard's AMI gateway, as the dialplan audit needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmiClientInfo {
    pub name: String,
    /// Its allow list admits Originate, Redirect, BlindTransfer or Atxfer.
    pub originate: bool,
    /// The contexts it may send calls into (`*` globs); empty: no restriction.
    pub contexts: Vec<String>,
}

/// The manager.conf user pbxguard logs in as when the audit is not told otherwise: the
/// default of `[ami] upstream_username`.
pub const DEFAULT_UPSTREAM_USER: &str = "pbxguard";

/// Audits the configuration in `dir`; findings sorted by severity, then file and line.
pub fn asterisk(dir: &Path) -> Result<Vec<Finding>, AuditError> {
    asterisk_with(dir, &[])
}

/// As [`asterisk`], with pbxguard's AMI gateway clients: the contexts they may originate
/// into are entry points into the dialplan, and one that may originate with no context list
/// is a finding of its own.
pub fn asterisk_with(dir: &Path, clients: &[AmiClientInfo]) -> Result<Vec<Finding>, AuditError> {
    asterisk_for(dir, clients, DEFAULT_UPSTREAM_USER)
}

/// As [`asterisk_with`], with `upstream_user` the manager.conf user pbxguard's AMI gateway and
/// security-event monitor log in as (`[ami] upstream_username`).
pub fn asterisk_for(
    dir: &Path,
    clients: &[AmiClientInfo],
    upstream_user: &str,
) -> Result<Vec<Finding>, AuditError> {
    if !dir.is_dir() {
        return Err(AuditError::NotAFolder(dir.display().to_string()));
    }
    audit_from(&conf::Disk, dir, clients, upstream_user)
}

/// As [`asterisk`], reading the files through `source` (the fuzz target keeps them in memory).
pub fn asterisk_from(source: &dyn conf::Source, dir: &Path) -> Result<Vec<Finding>, AuditError> {
    asterisk_from_with(source, dir, &[])
}

/// As [`asterisk_with`], reading the files through `source`.
pub fn asterisk_from_with(
    source: &dyn conf::Source,
    dir: &Path,
    clients: &[AmiClientInfo],
) -> Result<Vec<Finding>, AuditError> {
    audit_from(source, dir, clients, DEFAULT_UPSTREAM_USER)
}

fn audit_from(
    source: &dyn conf::Source,
    dir: &Path,
    clients: &[AmiClientInfo],
    upstream_user: &str,
) -> Result<Vec<Finding>, AuditError> {
    let files = rules::Files::load_from(source, dir);
    if files.pjsip.is_none()
        && files.manager.is_none()
        && files.http.is_none()
        && files.extensions.is_none()
    {
        return Err(AuditError::Nothing(dir.display().to_string()));
    }
    let mut findings = rules::check_for(&files, dir, clients, upstream_user);
    findings.sort_by(|a, b| {
        (a.severity, &a.file, a.line, &a.object).cmp(&(b.severity, &b.file, b.line, &b.object))
    });
    Ok(findings)
}
