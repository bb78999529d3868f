//! `pbxguard secret …`: the vault from the command line.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use zeroize::Zeroizing;

use super::{actor, load, open_vault, UsageError};
use crate::auth::jwt::JWT_KEY_PREFIX;
use crate::vault::{self, MAX_SECRET_LEN, SIGNING_KEY_LEN};

/// A new JWT signing key; the old ones are deleted, so no token signed before verifies again.
async fn replace_jwt_key(vault: &vault::Vault) -> anyhow::Result<String> {
    let old: Vec<String> = vault
        .keys_under(JWT_KEY_PREFIX)
        .await?
        .into_iter()
        .map(|s| s.name)
        .collect();
    let kid = crate::ids::random_hex(4);
    vault
        .generate_if_absent(&format!("{JWT_KEY_PREFIX}{kid}"), SIGNING_KEY_LEN)
        .await?;
    for name in old {
        vault.remove(&name).await?;
    }
    Ok(kid)
}

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
    let store = vault.store().clone();
    match cmd {
        SecretCommand::Set { name, raw } => {
            let value = read_value(raw)?;
            vault.set(&name, &value).await?;
            store.audit(&actor(), "secret.set", &name, "").await?;
            eprintln!("secret {name:?} stored");
        }
        SecretCommand::Get { name } => {
            let value = vault.get(&name).await?;
            let mut out = std::io::stdout().lock();
            out.write_all(&value).context("writing to stdout")?;
            if out.is_terminal() {
                out.write_all(b"\n").context("writing to stdout")?;
            }
            out.flush().context("writing to stdout")?;
            store.audit(&actor(), "secret.get", &name, "").await?;
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
            vault.remove(&name).await?;
            store.audit(&actor(), "secret.rm", &name, "").await?;
            eprintln!("secret {name:?} removed");
        }
        SecretCommand::RotateKey {
            new_master_key,
            logout_all,
        } => {
            if logout_all {
                let kid = replace_jwt_key(&vault).await?;
                let n = store.revoke_all_sessions(crate::clock::now_unix()).await?;
                super::users::announce(&config)?;
                store
                    .audit(
                        &actor(),
                        "secret.rotate-key",
                        "keys/jwt",
                        &format!("new signing key {kid}; {n} sessions revoked"),
                    )
                    .await?;
                println!("new JWT signing key {kid}; {n} session(s) revoked");
            }
            let new_master = match &new_master_key {
                Some(path) => {
                    vault::create_master_key_file(path)?;
                    Some(vault::read_key_file(path)?)
                }
                None => None,
            };
            let r = vault.rotate(new_master.as_ref()).await?;
            let mut detail = format!(
                "{} -> {} ({} secrets)",
                r.old_key_ids.join(","),
                r.new_key_id,
                r.secrets
            );
            if new_master.is_some() {
                detail.push_str(", new master key");
            }
            store
                .audit(&actor(), "secret.rotate-key", "vault", &detail)
                .await?;
            println!("rotated data key {detail}");
            if let Some(path) = new_master_key {
                install_master_key(&path, &config.vault.key_file)?;
            }
        }
    }
    store.close().await;
    Ok(ExitCode::SUCCESS)
}
