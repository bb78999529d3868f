//! `pbxguard db …`: the database as a whole. `db copy` moves a single host's SQLite store into
//! an empty PostgreSQL database, the first step from one host to several.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;

use super::{load, UsageError};
use crate::store::copy::{copy_sqlite_to_postgres, TableCount};
use crate::store::{is_postgres_url, redacted_url, Store};

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Copy this host's SQLite store ([daemon] database) into an empty PostgreSQL database.
    /// Stop the daemon first. The target is migrated, then filled in one transaction: on any
    /// error it stays empty. A target holding any row is refused.
    Copy {
        /// The target, postgres://USER@HOST[:PORT]/DB (or postgresql://), with query options
        /// such as sslmode=verify-full&sslrootcert=FILE.
        #[arg(long, value_name = "URL")]
        to: String,
        /// Read the target's password from FILE (mode 0600, owned by the caller; one line)
        /// instead of putting it in the URL, where `ps` would show it.
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
    },
}

pub async fn run(config_path: &Path, cmd: DbCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        DbCommand::Copy { to, password_file } => copy(config_path, &to, password_file).await,
    }
}

async fn copy(
    config_path: &Path,
    to: &str,
    password_file: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let config = load(config_path)?;
    let from = &config.daemon.database;
    if is_postgres_url(from) {
        return Err(UsageError(format!(
            "[daemon] database is already PostgreSQL ({}); db copy copies a SQLite store",
            redacted_url(from)
        ))
        .into());
    }
    if !is_postgres_url(to) {
        // Not echoed: whatever was typed may hold a password.
        return Err(
            UsageError("--to must be a postgres:// or postgresql:// URL".to_string()).into(),
        );
    }
    let shown = redacted_url(to);
    // Never created here: a missing file is an error, not an empty store to copy.
    let source = Store::open(from, false)
        .await?
        .with_node(&config.daemon.node_name);
    let target = Store::open_with_password_file(to, password_file.as_deref(), false).await?;
    let result = copy_sqlite_to_postgres(&source, &target)
        .await
        .with_context(|| format!("copying into {shown}"));
    source.close().await;
    target.close().await;
    let counts = result?;
    print!("{}", summary(&shown, &counts));
    Ok(ExitCode::SUCCESS)
}

fn summary(target: &str, counts: &[TableCount]) -> String {
    let width = counts.iter().map(|c| c.table.len()).max().unwrap_or(0);
    let mut out = format!("copied into {target}:\n");
    for c in counts {
        out.push_str(&format!("  {:<width$}  {:>8}\n", c.table, c.rows));
    }
    let total: u64 = counts.iter().map(|c| c.rows).sum();
    out.push_str(&format!(
        "{total} rows in {} tables; point [daemon] database at the copy and start the daemon\n",
        counts.len()
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_lists_every_table_and_the_total() {
        let counts = [
            TableCount {
                table: "users".into(),
                rows: 2,
            },
            TableCount {
                table: "login_history".into(),
                rows: 10,
            },
        ];
        assert_eq!(
            summary("postgres://pbx@db/pbx", &counts),
            "copied into postgres://pbx@db/pbx:\n  users                 2\n  login_history        10\n12 rows in 2 tables; point [daemon] database at the copy and start the daemon\n"
        );
    }
}
