//! The `pbxguard` command line (clap derive). The only layer that uses `anyhow`: library errors
//! are typed, and here they become one clear sentence on stderr and an exit code
//! (0 ok, 1 failure, 64 usage or configuration, 75 database unavailable).

mod ami;
mod audit;
mod ban;
mod db;
mod docs;
mod mfa;
mod recording;
mod secret;
mod settings;
mod sip;
mod users;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError};
use crate::store::Store;
use crate::vault::{self, Vault};

pub const DEFAULT_CONFIG: &str = "/etc/pbxguard/pbxguard.toml";

/// Exit code for usage and configuration errors (BSD EX_USAGE).
pub const EXIT_USAGE: u8 = 64;
/// Exit code when the database cannot take the change now — disk full, I/O errors, a
/// read-only mount (BSD EX_TEMPFAIL): nothing is confirmed as saved, run the command again.
pub const EXIT_TEMPFAIL: u8 = 75;

#[derive(Debug, Parser)]
#[command(name = "pbxguard", version, about = "Security daemon guarding an Asterisk PBX", long_about = None)]
pub struct Cli {
    /// Configuration file.
    #[arg(short = 'c', long = "config", env = "PBXGUARD_CONFIG", default_value = DEFAULT_CONFIG, global = true)]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground (systemd runs this).
    Serve,
    /// Create the state folder, database, master key, signing keys and a self-signed TLS
    /// certificate where absent. Safe to run again.
    Init {
        /// Run as root for a service that runs as USER: hand the state folder, master key and
        /// TLS files to USER (e.g. `--owner pbxguard`).
        #[arg(long, value_name = "USER")]
        owner: Option<String>,
    },
    /// Validate the configuration; print every problem with its key and exit 64 if any.
    CheckConfig,
    /// Manage web-tier users (levels 1-9).
    #[command(subcommand)]
    User(users::UserCommand),
    /// List and revoke login sessions; revocation applies at the daemon's next request.
    #[command(subcommand)]
    Session(users::SessionCommand),
    /// The login history (newest first).
    History(users::HistoryArgs),
    /// Manage secrets in the vault (values never appear in listings or logs).
    #[command(subcommand)]
    Secret(secret::SecretCommand),
    /// Signed links to Asterisk's recordings.
    #[command(subcommand)]
    Recording(recording::RecordingCommand),
    /// Two-factor authentication: policy, status, resets, exemptions.
    #[command(subcommand)]
    Mfa(mfa::MfaCommand),
    /// SIP credentials Asterisk fetches over realtime (and `sip ban`, an alias of `ban`).
    #[command(subcommand)]
    Sip(sip::SipCommand),
    /// The one ban list: SIP, AMI, HTTP, Asterisk's security events, feeds, admins.
    #[command(subcommand)]
    Ban(ban::BanCommand),
    /// Runtime security settings (session timeouts, password rules, 2FA policy, lockout),
    /// stored in the database for every node.
    #[command(subcommand)]
    Settings(settings::SettingsCommand),
    /// Audit Asterisk's configuration, or read pbxguard's audit log.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Clients of the AMI gateway.
    #[command(subcommand)]
    Ami(ami::AmiCommand),
    /// The database as a whole: copy a single host's SQLite store into PostgreSQL.
    #[command(subcommand)]
    Db(db::DbCommand),
    /// Print a shell completion script.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Write man pages (pbxguard.8 and one per subcommand) into DIR, or print pbxguard(8).
    Man {
        /// Folder to write the pages into.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// A failure that maps to exit code 64 rather than 1.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Parses arguments and runs the command; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    init_logging();
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            let usage = e
                .chain()
                .any(|c| c.is::<UsageError>() || c.is::<ConfigError>());
            if e.chain().any(crate::store::is_unavailable) {
                eprintln!(
                    "pbxguard: {}; nothing is confirmed as saved: check the disk of the state folder (free space, I/O errors, a read-only mount) and run the command again",
                    one_line(&e)
                );
                return ExitCode::from(EXIT_TEMPFAIL);
            }
            eprintln!("pbxguard: {}", one_line(&e));
            ExitCode::from(if usage { EXIT_USAGE } else { 1 })
        }
    }
}

/// An error and its causes as one line. A cause whose text is already in the line (a message
/// that embeds its source, like "initialising state: {0}") is not printed a second time.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// Logs go to stderr; under systemd (JOURNAL_STREAM set) without timestamps and colours,
/// since journald adds its own. Filter with RUST_LOG (default `info`).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().with_ansi(false).init();
    } else {
        builder.init();
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    runtime_with(None)
}

/// The daemon's runtime: `workers` async threads, by default half the cores (at least one).
/// pbxguard guards a PBX; the other half stays with Asterisk's media and with password
/// hashing (its own pool). Measured on 2 cores: one worker served the forward-auth check
/// 12-15 % faster than two, since fewer threads contend with everything else on the host.
fn runtime_with(workers: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.unwrap_or((cores / 2).max(1)))
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve => serve(&cli.config),
        Command::Init { owner } => {
            let config = Config::load_for_init(&cli.config)?;
            let owner = owner
                .as_deref()
                .map(crate::init::Owner::lookup)
                .transpose()?;
            let report = runtime()?.block_on(crate::init::run(&config, owner.as_ref()))?;
            if report.created.is_empty() {
                println!("already initialised; nothing changed");
            }
            for item in report.created {
                println!("created {item}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig => check_config(&cli.config),
        Command::Secret(cmd) => runtime()?.block_on(secret::run(&cli.config, cmd)),
        Command::Recording(cmd) => runtime()?.block_on(recording::run(&cli.config, cmd)),
        Command::Sip(cmd) => runtime()?.block_on(sip::run(&cli.config, cmd)),
        Command::Ban(cmd) => runtime()?.block_on(ban::run(&cli.config, cmd)),
        Command::Settings(cmd) => runtime()?.block_on(settings::run(&cli.config, cmd)),
        Command::Ami(cmd) => runtime()?.block_on(ami::run(&cli.config, cmd)),
        Command::Db(cmd) => runtime()?.block_on(db::run(&cli.config, cmd)),
        Command::Mfa(cmd) => runtime()?.block_on(mfa::run(&cli.config, cmd)),
        // `audit asterisk` reads only Asterisk's files: no configuration of ours needed.
        Command::Audit(cmd) => audit::run(&cli.config, cmd),
        Command::User(cmd) => runtime()?.block_on(users::user(&cli.config, cmd)),
        Command::Session(cmd) => runtime()?.block_on(users::session(&cli.config, cmd)),
        Command::History(args) => runtime()?.block_on(users::history(&cli.config, args)),
        Command::Completions { shell } => {
            docs::completions(shell);
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { dir } => {
            docs::man(dir.as_deref())?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub(crate) fn load(path: &Path) -> anyhow::Result<Config> {
    Ok(Config::load(path)?)
}

fn check_config(path: &Path) -> anyhow::Result<ExitCode> {
    match Config::load(path) {
        Ok(_) => {
            println!("{}: configuration OK", path.display());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            let problems = e.problems();
            eprintln!("{}: {} problem(s)", path.display(), problems.len());
            for p in problems {
                eprintln!("{p}");
            }
            Ok(ExitCode::from(EXIT_USAGE))
        }
    }
}

fn serve(path: &Path) -> anyhow::Result<ExitCode> {
    let config = load(path)?;
    let rt = runtime_with(config.daemon.worker_threads)?;
    rt.block_on(async {
        let shutdown = CancellationToken::new();
        spawn_shutdown_signals(shutdown.clone())?;
        crate::daemon::run(path, config, shutdown).await?;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// SIGTERM is how systemd stops us; SIGINT is Ctrl-C in a terminal. Both drain gracefully.
fn spawn_shutdown_signals(shutdown: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
        shutdown.cancel();
    });
    Ok(())
}

/// The database of an initialised installation, migrated to this version.
/// `config` with the runtime security settings stored in the database in force, as the
/// daemon runs with them.
pub(crate) async fn with_settings(config: Config, store: &Store) -> anyhow::Result<Config> {
    Ok(crate::settings::ops::stored(store).await?.applied(config))
}

pub(crate) async fn open_store(config: &Config) -> anyhow::Result<Store> {
    let store = Store::open_with_password_file(
        &config.daemon.database,
        config.daemon.database_password_file.as_deref(),
        false,
    )
    .await?
    .with_node(&config.daemon.node_name);
    store.migrate().await?;
    Ok(store)
}

/// The vault of an initialised installation, for CLI commands.
pub(crate) async fn open_vault(config: &Config) -> anyhow::Result<Vault> {
    let master = vault::load_master_key(&config.vault.key_file)?;
    Ok(Vault::new(master, open_store(config).await?))
}

/// Reads a secret from stdin, never from the arguments, which `ps` and shell history would
/// show: at most `limit` bytes plus a line ending, one trailing `\n` or `\r\n` stripped unless
/// `raw`. `what` names it in errors.
pub(crate) fn read_stdin_secret(
    limit: usize,
    raw: bool,
    what: &str,
) -> anyhow::Result<zeroize::Zeroizing<Vec<u8>>> {
    use std::io::Read;
    let mut buf = zeroize::Zeroizing::new(Vec::new());
    std::io::stdin()
        .take(limit as u64 + 3)
        .read_to_end(&mut buf)
        .with_context(|| format!("reading the {what} from stdin"))?;
    if !raw {
        let len = buf.len();
        if buf.ends_with(b"\r\n") {
            buf.truncate(len - 2);
        } else if buf.ends_with(b"\n") {
            buf.truncate(len - 1);
        }
    }
    if buf.len() > limit {
        return Err(UsageError(format!("the {what} on stdin is larger than {limit} bytes")).into());
    }
    Ok(buf)
}

/// Who runs this CLI command, for the audit log.
pub(crate) fn actor() -> String {
    let user = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| format!("uid {}", rustix::process::getuid().as_raw()));
    format!("cli:{user}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrong_master_key_is_one_sentence_once() {
        let e = anyhow::Error::from(crate::daemon::DaemonError::Init(
            crate::init::InitError::Vault(crate::vault::VaultError::WrongMasterKey("k1".into())),
        ));
        let line = one_line(&e);
        assert_eq!(
            line,
            "initialising state: data key \"k1\" cannot be unwrapped: the master key is not the one this database was created with"
        );
        let context = anyhow::anyhow!("outer").context("running");
        assert_eq!(one_line(&context), "running: outer");
    }
}
