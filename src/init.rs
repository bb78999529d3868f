//! `pbxguard init`: everything a fresh host needs before `serve`, created only where absent, so
//! a second run changes nothing. `serve` calls the same code when `init_if_missing = true`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::auth::jwt::JWT_KEY_PREFIX;
use crate::config::{Config, TlsFiles};
use crate::recordings::token::LINK_KEY_PREFIX;
use crate::store::{is_postgres_url, redacted_url, Store, StoreError};
use crate::tls::{self, TlsError};
use crate::vault::{self, Vault, VaultError, SIGNING_KEY_LEN};

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("cannot create folder {path}: {source}")]
    Folder {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{present} exists but {missing} does not; remove it or restore its partner (init will not pair a new key with an old certificate)")]
    HalfTlsPair { present: PathBuf, missing: PathBuf },
    #[error("no user {0:?} in /etc/passwd (create the service account first, e.g. with the package's sysusers file)")]
    NoSuchUser(String),
    #[error("the database {db} already holds a vault, but its master key ({key}) is missing and no systemd credential was passed; a new key could never open it. Restore the key, or run init through the unit's credential (systemd-run --pipe --wait -p LoadCredentialEncrypted=master.key:/etc/pbxguard/master.key.cred pbxguard init)")]
    MasterKeyLost { db: String, key: PathBuf },
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
    /// Folders this run created (for `--owner`).
    pub created_dirs: Vec<PathBuf>,
}

/// The service account that must own the state `init` creates as root (`init --owner`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl Owner {
    /// Looks `name` up in /etc/passwd (system accounts are local; no NSS needed).
    pub fn lookup(name: &str) -> Result<Owner, InitError> {
        let passwd =
            std::fs::read_to_string("/etc/passwd").map_err(|source| InitError::Folder {
                path: PathBuf::from("/etc/passwd"),
                source,
            })?;
        passwd
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() >= 4 && f[0] == name).then(|| (f[2].parse().ok(), f[3].parse().ok()))
            })
            .find_map(|(uid, gid)| {
                Some(Owner {
                    name: name.to_string(),
                    uid: uid?,
                    gid: gid?,
                })
            })
            .ok_or_else(|| InitError::NoSuchUser(name.to_string()))
    }
}

fn chown(path: &Path, uid: Option<u32>, gid: Option<u32>) -> Result<(), InitError> {
    std::os::unix::fs::chown(path, uid, gid).map_err(|source| InitError::Folder {
        path: path.to_path_buf(),
        source,
    })
}

fn chmod(path: &Path, mode: u32) -> Result<(), InitError> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|source| {
        InitError::Folder {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// Hands what the daemon must read or write to the service account: the state folder and
/// everything in it, the master key file, the TLS pair. Folders `init` created elsewhere (e.g.
/// /etc/pbxguard/tls) become root:GROUP 0750 so the daemon can reach its files but not change
/// them.
fn hand_over(config: &Config, owner: &Owner, report: &InitReport) -> Result<(), InitError> {
    let state = &config.daemon.state_dir;
    for dir in &report.created_dirs {
        if !dir.starts_with(state) {
            chown(dir, None, Some(owner.gid))?;
            chmod(dir, 0o750)?;
        }
    }
    chown(state, Some(owner.uid), Some(owner.gid))?;
    let entries = std::fs::read_dir(state).map_err(|source| InitError::Folder {
        path: state.clone(),
        source,
    })?;
    for entry in entries.flatten() {
        chown(&entry.path(), Some(owner.uid), Some(owner.gid))?;
    }
    let key = vault::master_key_source(&config.vault.key_file);
    if key == config.vault.key_file && key.exists() {
        chown(&key, Some(owner.uid), Some(owner.gid))?;
    }
    let pairs = [
        config.http.as_ref().and_then(|h| h.tls.as_ref()),
        config.sip.as_ref().and_then(|s| s.tls.as_ref()),
    ];
    for files in pairs.into_iter().flatten() {
        for f in [&files.cert, &files.key] {
            if f.exists() {
                chown(f, Some(owner.uid), Some(owner.gid))?;
            }
        }
    }
    Ok(())
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
            report.created_dirs.push(dir.to_path_buf());
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
    if !vault.keys_under(prefix).await?.is_empty() {
        return Ok(());
    }
    let kid = crate::ids::random_hex(4);
    let name = format!("{prefix}{kid}");
    // The check above is only a shortcut: another node may init the same database now, so the
    // insert itself refuses when a key under the prefix appeared meanwhile.
    if vault
        .generate_first_under(prefix, &name, SIGNING_KEY_LEN)
        .await?
    {
        report.created.push(format!("signing key {name}"));
    }
    Ok(())
}

/// A new master key next to a database whose data keys were wrapped by another one would
/// make every secret unreadable: refuse instead (a deleted key file, or a key that now lives
/// only in an encrypted systemd credential). A SQLite file that does not exist holds no vault;
/// a PostgreSQL database always exists (an administrator made it), so it is asked.
async fn refuse_if_vault_exists(config: &Config) -> Result<(), InitError> {
    let db = match config.database_path() {
        Some(path) if !path.exists() => return Ok(()),
        Some(path) => path.display().to_string(),
        None if is_postgres_url(&config.daemon.database) => redacted_url(&config.daemon.database),
        None => return Ok(()),
    };
    let store = Store::open_with_password_file(
        &config.daemon.database,
        config.daemon.database_password_file.as_deref(),
        false,
    )
    .await?;
    store.migrate().await?;
    let has_keys = store.current_data_key().await?.is_some();
    store.close().await;
    if has_keys {
        return Err(InitError::MasterKeyLost {
            db,
            key: config.vault.key_file.clone(),
        });
    }
    Ok(())
}

/// Runs every step; safe to repeat. With `owner`, hands the state over to that account.
pub async fn run(config: &Config, owner: Option<&Owner>) -> Result<InitReport, InitError> {
    let mut report = InitReport::default();
    ensure_dir(&config.daemon.state_dir, &mut report)?;

    let source = vault::master_key_source(&config.vault.key_file);
    if source == config.vault.key_file && !source.exists() {
        refuse_if_vault_exists(config).await?;
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
    let store = Store::open_with_password_file(
        &config.daemon.database,
        config.daemon.database_password_file.as_deref(),
        true,
    )
    .await?
    .with_node(&config.daemon.node_name);
    store.migrate().await?;
    let vault = Vault::new(master, store.clone());
    if vault.initialise().await? {
        report.created.push("vault data key k1".to_string());
    }
    ensure_signing_key(&vault, JWT_KEY_PREFIX, &mut report).await?;
    ensure_signing_key(&vault, LINK_KEY_PREFIX, &mut report).await?;
    ensure_signing_key(&vault, crate::auth::mfa::MFA_KEY_PREFIX, &mut report).await?;

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
    if let Some(owner) = owner {
        hand_over(config, owner, &report)?;
    }
    Ok(report)
}
