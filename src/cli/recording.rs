//! `pbxguard recording …`: mint a signed link for a recording, list and revoke links, rotate
//! the link signing key. Revocations are read by the daemon on every download, so they apply
//! at once; a new key is announced through the auth stamp.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;

use super::{actor, load, open_store, open_vault, UsageError};
use crate::clock::{now_unix, rfc3339};
use crate::config::Config;
use crate::recordings::keys;
use crate::recordings::links::{self, LinkNotice, ListQuery, MAX_LINKS_LIMIT};
use crate::recordings::{self, LinkKeys, Minter, Minting, PathError, RecordingError, Root};

#[derive(Debug, Subcommand)]
pub enum RecordingCommand {
    /// Print a signed link to a recording (PATH relative to [recordings] root, or absolute
    /// inside it).
    Link {
        path: String,
        /// Lifetime, e.g. 30m or 2d (default [recordings] link_ttl, at most max_link_ttl).
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
        /// Print {"url","id","path","expires_at"} instead of the bare URL.
        #[arg(long)]
        json: bool,
        /// The node whose disk holds the file, when it is not this host ([daemon] node_name
        /// of that host; several hosts on one database).
        #[arg(long)]
        node: Option<String>,
    },
    /// List links, newest first (live ones unless --all).
    List {
        /// Only links to this recording.
        #[arg(long)]
        path: Option<String>,
        /// Include expired and revoked links.
        #[arg(long)]
        all: bool,
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=MAX_LINKS_LIMIT as i64))]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a link, named by its id, its token or its whole URL; or every live link to a
    /// recording with --path.
    Revoke {
        #[arg(required_unless_present = "path", conflicts_with = "path")]
        link: Option<String>,
        #[arg(long)]
        path: Option<String>,
    },
    /// Start signing links with a new key. Links signed with the previous keys stay valid until
    /// they expire; keys replaced longer ago than max_link_ttl are deleted.
    RotateKey,
}

fn path_problem(e: PathError, input: &str) -> anyhow::Error {
    match e {
        PathError::Missing => anyhow::anyhow!("no such recording: {input}"),
        PathError::Root(e) => {
            anyhow::anyhow!("the recordings folder ([recordings] root) cannot be opened: {e}")
        }
        PathError::Unreadable(e) => anyhow::anyhow!("the recording cannot be opened: {e}"),
        other => UsageError(format!("{other}: {input}")).into(),
    }
}

/// The CLI's sentence (and exit code) for what an operation refused about `input`.
fn problem(e: RecordingError, input: &str) -> anyhow::Error {
    match e {
        RecordingError::Path(e) => path_problem(e, input),
        e @ (RecordingError::TtlZero
        | RecordingError::TtlTooLong { .. }
        | RecordingError::NoPublicUrl
        | RecordingError::UnknownNode(_)
        | RecordingError::NotALink) => UsageError(e.to_string()).into(),
        e => e.into(),
    }
}

pub async fn run(config_path: &Path, cmd: RecordingCommand) -> anyhow::Result<ExitCode> {
    let config = load(config_path)?;
    let root = Root::new(&config.recordings.root);
    match cmd {
        RecordingCommand::Link {
            path,
            ttl,
            json,
            node,
        } => {
            let vault = open_vault(&config).await?;
            let keys = LinkKeys::load(&vault).await?;
            let who = actor();
            let by = Minter { name: &who, ip: "" };
            let store = open_store(&config).await?;
            let minting = Minting {
                store: &store,
                keys: &keys,
                root: &root,
                cfg: &config.recordings,
                public_url: config.http.as_ref().map(|h| h.public_url.as_str()),
            };
            let minted = recordings::mint(minting, &path, ttl, &by, node.as_deref())
                .await
                .map_err(|e| problem(e, &path))?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "url": minted.url,
                        "id": minted.id,
                        "path": minted.path,
                        "expires_at": rfc3339(minted.expires_at),
                    })
                );
            } else {
                println!("{}", minted.url);
            }
            Ok(ExitCode::SUCCESS)
        }
        RecordingCommand::List {
            path,
            all,
            limit,
            json,
        } => {
            let store = open_store(&config).await?;
            let query = ListQuery {
                path: path.as_deref(),
                all,
                limit,
            };
            let views = links::list(&store, &root, query, now_unix())
                .await
                .map_err(|e| problem(e, path.as_deref().unwrap_or_default()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&views)?);
            } else if views.is_empty() {
                println!("no links");
            } else {
                println!(
                    "{:<32}  {:<8}  {:<20}  {:<16}  {:<16}  PATH",
                    "ID", "STATE", "EXPIRES", "BY", "NODE"
                );
                for v in views {
                    println!(
                        "{:<32}  {:<8}  {:<20}  {:<16}  {:<16}  {}",
                        v.id,
                        v.state,
                        v.expires_at,
                        v.minted_by,
                        v.node.as_deref().unwrap_or("-"),
                        v.path
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        RecordingCommand::Revoke { link, path } => revoke(&config, &root, link, path).await,
        RecordingCommand::RotateKey => rotate_key(&config).await,
    }
}

async fn revoke(
    config: &Config,
    root: &Root,
    link: Option<String>,
    path: Option<String>,
) -> anyhow::Result<ExitCode> {
    let store = open_store(config).await?;
    let who = actor();
    let now = now_unix();
    let notice = LinkNotice::Stamp(&config.daemon.state_dir);
    if let Some(p) = path {
        let (rel, n) = links::revoke_path(&store, root, notice, &who, &p, now)
            .await
            .map_err(|e| problem(e, &p))?;
        println!("revoked {n} link(s) to {rel}");
        return Ok(ExitCode::SUCCESS);
    }
    let reference = link.unwrap_or_default();
    let revoked = links::revoke(&store, notice, &who, &reference, now)
        .await
        .map_err(|e| problem(e, &reference))?;
    if revoked.now {
        println!("revoked link {}", revoked.id);
    } else {
        println!("link {} was already revoked", revoked.id);
    }
    Ok(ExitCode::SUCCESS)
}

async fn rotate_key(config: &Config) -> anyhow::Result<ExitCode> {
    let vault = open_vault(config).await?;
    let store = vault.store().clone();
    let done = keys::rotate_key(
        &store,
        &vault,
        &config.recordings,
        &config.daemon.state_dir,
        &actor(),
    )
    .await?;
    store.close().await;
    println!("links are now signed with key {}", done.kid);
    for name in done.retired {
        println!("deleted {name} (no valid link can use it)");
    }
    Ok(ExitCode::SUCCESS)
}
