//! `pbxguard init`: everything a fresh host needs before `serve`, created only where absent, so
//! a second run changes nothing. `serve` calls the same code when `init_if_missing = true`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::config::{Config, TlsFiles};
use crate::store::{Store, StoreError};
use crate::vault::{self, Vault, VaultError};
use crate::web::tls::{self, TlsError};

/// Vault name prefixes of generated signing keys; the part after the prefix is the key id.
pub const JWT_KEY_PREFIX: &str = "keys/jwt/";
pub const LINK_KEY_PREFIX: &str = "keys/links/";
/// 256-bit HMAC keys (HS256 and HMAC-SHA256 links want at least the hash length).
const SIGNING_KEY_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("cannot create folder {path}: {source}")]
    Folder {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{present} exists but {missing} does not; remove it or restore its partner (init will not pair a new key with an old certificate)")]
    HalfTlsPair { present: PathBuf, missing: PathBuf },
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// What `init` created; empty on a second run.
#[derive(Debug, Default)]
pub struct InitReport {
    pub created: Vec<String>,
}

/// Creates missing folders (0700 for each one created) up to and including `dir`.
fn ensure_dir(dir: &Path, report: &mut InitReport) -> Result<(), InitError> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        ensure_dir(parent, report)?;
    }
    let err = |source| InitError::Folder {
        path: dir.to_path_buf(),
        source,
    };
    match std::fs::create_dir(dir) {
        Ok(()) => {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
            report.created.push(format!("folder {}", dir.display()));
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(err(e)),
    }
}

/// Names a self-signed certificate should carry: loopback plus the public host.
fn certificate_names(config: &Config) -> Vec<String> {
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if let Some(host) = config
        .http
        .as_ref()
        .and_then(|h| h.public_url.parse::<axum::http::Uri>().ok())
        .and_then(|u| u.host().map(|h| h.trim_matches(['[', ']']).to_string()))
    {
        if !names.contains(&host) {
            names.push(host);
        }
    }
    names
}

fn ensure_tls(
    files: &TlsFiles,
    names: &[String],
    report: &mut InitReport,
) -> Result<(), InitError> {
    match (files.cert.exists(), files.key.exists()) {
        (true, true) => Ok(()),
        (true, false) => Err(InitError::HalfTlsPair {
            present: files.cert.clone(),
            missing: files.key.clone(),
        }),
        (false, true) => Err(InitError::HalfTlsPair {
            present: files.key.clone(),
            missing: files.cert.clone(),
        }),
        (false, false) => {
            for f in [&files.cert, &files.key] {
                if let Some(parent) = f.parent() {
                    ensure_dir(parent, report)?;
                }
            }
            tls::write_self_signed(files, names)?;
            report.created.push(format!(
                "self-signed certificate {} ({})",
                files.cert.display(),
                names.join(", ")
            ));
            Ok(())
        }
    }
}

async fn ensure_signing_key(
    vault: &Vault,
    prefix: &str,
    report: &mut InitReport,
) -> Result<(), InitError> {
    let existing = vault.list().await?;
    if existing.iter().any(|s| s.name.starts_with(prefix)) {
        return Ok(());
    }
    let kid = crate::ids::random_hex(4);
    let name = format!("{prefix}{kid}");
    if vault.generate_if_absent(&name, SIGNING_KEY_LEN).await? {
        report.created.push(format!("signing key {name}"));
    }
    Ok(())
}

/// Runs every step; safe to repeat.
pub async fn run(config: &Config) -> Result<InitReport, InitError> {
    let mut report = InitReport::default();
    ensure_dir(&config.daemon.state_dir, &mut report)?;

    let source = vault::master_key_source(&config.vault.key_file);
    if source == config.vault.key_file && !source.exists() {
        if let Some(parent) = source.parent() {
            ensure_dir(parent, &mut report)?;
        }
        if vault::create_master_key_file(&source)? {
            report
                .created
                .push(format!("master key {}", source.display()));
        }
    }
    let master = vault::load_master_key(&config.vault.key_file)?;

    if let Some(db) = config.database_path() {
        if let Some(parent) = db.parent() {
            ensure_dir(parent, &mut report)?;
        }
        if !db.exists() {
            report.created.push(format!("database {}", db.display()));
        }
    }
    let store = Store::open(&config.daemon.database, true).await?;
    store.migrate().await?;
    let vault = Vault::new(master, store.clone());
    if vault.initialise().await? {
        report.created.push("vault data key k1".to_string());
    }
    ensure_signing_key(&vault, JWT_KEY_PREFIX, &mut report).await?;
    ensure_signing_key(&vault, LINK_KEY_PREFIX, &mut report).await?;

    let names = certificate_names(config);
    if let Some(files) = config.http.as_ref().and_then(|h| h.tls.as_ref()) {
        ensure_tls(files, &names, &mut report)?;
    }
    if let Some(files) = config.sip.as_ref().and_then(|s| s.tls.as_ref()) {
        ensure_tls(files, &names, &mut report)?;
    }
    for item in &report.created {
        store.audit("init", "init.create", item, "").await?;
    }
    store.close().await;
    Ok(report)
}
