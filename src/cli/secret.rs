//! `pbxguard secret …`: the vault from the command line.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use zeroize::Zeroizing;

use super::users::notice;
use super::{actor, load, open_vault, UsageError};
use crate::auth;
use crate::clock::now_unix;
use crate::config::Config;
use crate::vault::{self, admin, Vault, MAX_SECRET_LEN};

/// After a master-key rotation has committed, only the new key opens the vault: put it where
/// the daemon reads it, or say exactly what the admin must do.
fn install_master_key(new: &Path, key_file: &Path) -> anyhow::Result<()> {
    let source = vault::master_key_source(key_file);
    if source != key_file {
        println!(
            "the master key comes from a systemd credential; install the new key with:\n  \
             systemd-creds encrypt --name=master.key {} /etc/pbxguard/master.key.cred\n  \
             shred -u {}\n  systemctl restart pbxguard",
            new.display(),
            new.display()
        );
        return Ok(());
    }
    std::fs::rename(new, key_file).with_context(|| {
        format!(
            "the vault now needs the NEW master key in {}; move it over {} by hand",
            new.display(),
            key_file.display()
        )
    })?;
    println!(
        "new master key installed at {}; restart the daemon (systemctl restart pbxguard)",
        key_file.display()
    );
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Store a secret; the value is read from stdin (one trailing newline is stripped).
    Set {
        name: String,
        /// Keep stdin's bytes exactly, trailing newline included.
        #[arg(long)]
        raw: bool,
    },
    /// Print a secret's value to stdout (a newline is added only on a terminal).
    Get { name: String },
    /// List secret names, key ids and times; never values.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Delete a secret.
    Rm { name: String },
    /// New data-key generation: every secret is re-encrypted in one transaction and the old
    /// key deleted when it commits. Logged-in users stay logged in.
    RotateKey {
        /// Also replace the master key with the key in FILE (created, 0600, when absent). With
        /// a key file the new key is moved over `[vault] key_file`; with a systemd credential
        /// the command prints how to encrypt it. Restart the daemon afterwards.
        #[arg(long, value_name = "FILE")]
        new_master_key: Option<PathBuf>,
        /// Also replace the JWT signing key and revoke every session: everyone must log in
        /// again. Without it, logged-in users stay logged in.
        #[arg(long)]
        logout_all: bool,
    },
}

/// Reads a secret value from stdin, bounded, and strips one trailing `\n` or `\r\n`.
fn read_value(raw: bool) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    let buf = super::read_stdin_secret(MAX_SECRET_LEN, raw, "value")?;
    if buf.is_empty() {
        return Err(
            UsageError("refusing to store an empty secret (stdin was empty)".into()).into(),
        );
    }
    Ok(buf)
}

pub async fn run(config_path: &Path, cmd: SecretCommand) -> anyhow::Result<ExitCode> {
    let config = load(config_path)?;
    if let SecretCommand::Set { name, .. }
    | SecretCommand::Get { name }
    | SecretCommand::Rm { name } = &cmd
    {
        crate::vault::validate_name(name).map_err(|e| UsageError(e.to_string()))?;
    }
    let vault = open_vault(&config).await?;
    let who = actor();
    match cmd {
        SecretCommand::Set { name, raw } => {
            let value = read_value(raw)?;
            admin::set(&vault, &who, &name, &value).await?;
            eprintln!("secret {name:?} stored");
        }
        SecretCommand::Get { name } => {
            let value = admin::get(&vault, &who, &name).await?;
            let mut out = std::io::stdout().lock();
            out.write_all(&value).context("writing to stdout")?;
            if out.is_terminal() {
                out.write_all(b"\n").context("writing to stdout")?;
            }
            out.flush().context("writing to stdout")?;
        }
        SecretCommand::List { json } => {
            let list = vault.list().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!(
                    "{:<40} {:<6} {:<20} {:<20}",
                    "NAME", "KEY", "CREATED", "UPDATED"
                );
                for s in list {
                    println!(
                        "{:<40} {:<6} {:<20} {:<20}",
                        s.name, s.key_id, s.created_at, s.updated_at
                    );
                }
            }
        }
        SecretCommand::Rm { name } => {
            admin::remove(&vault, &who, &name).await?;
            eprintln!("secret {name:?} removed");
        }
        SecretCommand::RotateKey {
            new_master_key,
            logout_all,
        } => rotate_key(&config, &vault, &who, new_master_key, logout_all).await?,
    }
    vault.store().close().await;
    Ok(ExitCode::SUCCESS)
}

/// `secret rotate-key`: optionally the JWT signing key first (everyone logs in again), then
/// the data key, then the master key is put where the daemon reads it.
async fn rotate_key(
    config: &Config,
    vault: &Vault,
    who: &str,
    new_master_key: Option<PathBuf>,
    logout_all: bool,
) -> anyhow::Result<()> {
    if logout_all {
        let (kid, n) = auth::admin::logout_all(vault, notice(config), who, now_unix()).await?;
        println!("new JWT signing key {kid}; {n} session(s) revoked");
    }
    let new_master = match &new_master_key {
        Some(path) => {
            vault::create_master_key_file(path)?;
            Some(vault::read_key_file(path)?)
        }
        None => None,
    };
    let detail = admin::rotate(vault, who, new_master.as_ref()).await?;
    println!("rotated data key {detail}");
    if let Some(path) = new_master_key {
        install_master_key(&path, &config.vault.key_file)?;
    }
    Ok(())
}
