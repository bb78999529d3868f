//! `audit asterisk` run by the daemon every `[audit] interval`: the findings (or why the audit
//! could not run) are stored per node, for the console's admin page, and high findings are
//! logged. The pbxguard AMI clients are audited with the files, as the CLI does.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::config::AuditConfig;
use super::{AmiClientInfo, Finding, Severity};
use crate::clock::now_unix;
use crate::store::{Store, StoreError};

/// How often a daemon whose audit is off looks at its configuration again.
const IDLE: Duration = Duration::from_secs(60);
/// The first run, after the daemon settled.
const FIRST: Duration = Duration::from_secs(5);

/// The AMI gateway's clients as the dialplan audit needs them: which may place or move calls,
/// and into which contexts.
pub async fn ami_client_infos(store: &Store) -> Result<Vec<AmiClientInfo>, StoreError> {
    Ok(store
        .ami_clients()
        .await?
        .into_iter()
        .map(|r| AmiClientInfo {
            // The call actions its allow list admits, whatever its contexts.
            originate: !crate::ami::clients::calls_without_contexts(&r.allow, "").is_empty(),
            contexts: r
                .contexts
                .split(',')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect(),
            name: r.name,
        })
        .collect())
}

/// What a run reads of the configuration in force: `[audit]`, and the manager.conf user
/// pbxguard logs in to Asterisk as (`[ami] upstream_username`).
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub audit: AuditConfig,
    pub upstream_user: String,
}

/// One run under `config`: the findings, or why there are none.
pub async fn run_once(store: &Store, config: &RunConfig) -> Result<Vec<Finding>, String> {
    let clients = ami_client_infos(store).await.map_err(|e| e.to_string())?;
    let dir = config.audit.dir.clone();
    let upstream = config.upstream_user.clone();
    // Reading and parsing files: off the async workers.
    tokio::task::spawn_blocking(move || super::asterisk_for(&dir, &clients, &upstream))
        .await
        .map_err(|e| format!("the audit task failed: {e}"))?
        .map_err(|e| e.to_string())
}

/// Runs the audit every `[audit] interval` (read again before each run, so SIGHUP applies)
/// until `shutdown`.
pub async fn run(
    store: Store,
    config: impl Fn() -> RunConfig + Send + 'static,
    shutdown: CancellationToken,
) {
    let mut wait = FIRST;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let now = config();
        let Some(interval) = now.audit.interval else {
            wait = IDLE;
            continue;
        };
        let (error, findings) = match run_once(&store, &now).await {
            Ok(f) => (String::new(), f),
            Err(why) => {
                tracing::warn!(dir = %now.audit.dir.display(), error = %why, "the scheduled Asterisk audit could not run");
                (why, Vec::new())
            }
        };
        let high = findings
            .iter()
            .filter(|f| f.severity == Severity::High)
            .count();
        if high > 0 {
            tracing::warn!(high, total = findings.len(), "the scheduled Asterisk audit has high findings (see the console or `pbxguard audit asterisk`)");
        } else {
            tracing::info!(total = findings.len(), "scheduled Asterisk audit done");
        }
        let json = serde_json::to_string(&findings).unwrap_or_else(|_| "[]".into());
        if let Err(e) = store.put_audit_run(now_unix(), &error, &json).await {
            tracing::warn!(error = %e, "storing the scheduled audit's findings failed");
        }
        wait = interval;
    }
}
