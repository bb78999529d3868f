//! `pbxguard secret …`: the vault from the command line.

use std::io::{IsTerminal, Read, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use zeroize::Zeroizing;

use super::{actor, load, open_vault, UsageError};
use crate::vault::MAX_SECRET_LEN;

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
    /// key deleted when it commits.
    RotateKey,
}

/// Reads a secret value from stdin, bounded, and strips one trailing `\n` or `\r\n`.
fn read_value(raw: bool) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    let mut buf = Zeroizing::new(Vec::new());
    std::io::stdin()
        .take(MAX_SECRET_LEN as u64 + 3)
        .read_to_end(&mut buf)
        .context("reading the secret from stdin")?;
    if !raw {
        let len = buf.len();
        if buf.ends_with(b"\r\n") {
            buf.truncate(len - 2);
        } else if buf.ends_with(b"\n") {
            buf.truncate(len - 1);
        }
    }
    if buf.len() > MAX_SECRET_LEN {
        return Err(UsageError(format!(
            "the value on stdin is larger than {MAX_SECRET_LEN} bytes"
        ))
        .into());
    }
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
        SecretCommand::RotateKey => {
            let r = vault.rotate().await?;
            let detail = format!(
                "{} -> {} ({} secrets)",
                r.old_key_ids.join(","),
                r.new_key_id,
                r.secrets
            );
            store
                .audit(&actor(), "secret.rotate-key", "vault", &detail)
                .await?;
            println!("rotated data key {detail}");
        }
    }
    store.close().await;
    Ok(ExitCode::SUCCESS)
}
