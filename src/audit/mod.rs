//! `pbxguard audit asterisk`: reads Asterisk's configuration the way Asterisk does ([`conf`])
//! and reports what weakens the PBX ([`rules`]): unencrypted transports and media, DTLS without
//! fingerprint checks, open endpoints, weak or plaintext secrets, a manager interface or a SIP
//! WebSocket reachable from the network around pbxguard.

pub mod conf;
pub mod dialplan;
pub mod rules;

use std::path::Path;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
    #[error("no pjsip.conf, manager.conf or http.conf in {0}")]
    Nothing(String),
}

/// Audits the configuration in `dir`; findings sorted by severity, then file and line.
pub fn asterisk(dir: &Path) -> Result<Vec<Finding>, AuditError> {
    if !dir.is_dir() {
        return Err(AuditError::NotAFolder(dir.display().to_string()));
    }
    asterisk_from(&conf::Disk, dir)
}

/// As [`asterisk`], reading the files through `source` (the fuzz target keeps them in memory).
pub fn asterisk_from(source: &dyn conf::Source, dir: &Path) -> Result<Vec<Finding>, AuditError> {
    let files = rules::Files::load_from(source, dir);
    if files.pjsip.is_none() && files.manager.is_none() && files.http.is_none() {
        return Err(AuditError::Nothing(dir.display().to_string()));
    }
    let mut findings = rules::check(&files, dir);
    findings.sort_by(|a, b| {
        (a.severity, &a.file, a.line, &a.object).cmp(&(b.severity, &b.file, b.line, &b.object))
    });
    Ok(findings)
}
