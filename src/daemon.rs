//! The daemon's lifecycle: prepare state, bind every enabled listener, tell systemd we are ready,
//! keep the watchdog fed, reload on SIGHUP, drain on shutdown.
//!
//! Reload is all-or-nothing: the new file is validated, its TLS files loaded and every changed
//! address bound before anything is swapped; any failure leaves the old configuration serving
//! and is logged with every problem.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::app::App;
use crate::auth::{Auth, AuthError};
use crate::config::{Config, ConfigError};
use crate::metrics::ResultLabels;
use crate::recordings::{Recordings, Root};
use crate::store::{Store, StoreError};
use crate::subsystem::{manage, Host, Managed, Staged, SubsystemError};
use crate::vault::{self, Vault, VaultError};
use crate::web;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("initialising state: {0}")]
    Init(#[from] crate::init::InitError),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr} ({key}): {source}")]
    Bind {
        key: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Subsystem(SubsystemError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("cannot install the {0} signal handler: {1}")]
    Signal(&'static str, std::io::Error),
}

impl From<SubsystemError> for DaemonError {
    fn from(e: SubsystemError) -> DaemonError {
        match e {
            SubsystemError::Bind { key, addr, source } => DaemonError::Bind { key, addr, source },
            other => DaemonError::Subsystem(other),
        }
    }
}

/// Everything `run` keeps between reloads.
struct Daemon {
    app: Arc<App>,
    config_path: PathBuf,
    /// Every listener and long-running part, in start order: `[http]`, `[realtime]`, `[ami]`,
    /// `[sip]`.
    subsystems: Vec<Box<dyn Managed<Config>>>,
    /// The blocklist feeds' refresh tasks (restarted per feed on reload).
    feeds: crate::bans::feeds::Feeds,
    host: Host,
}

/// Tells systemd (when it is listening) about a state change. Never unsets `NOTIFY_SOCKET`:
/// that is unsound once threads exist, and the watchdog needs it later.
fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        warn!(error = %e, "sd_notify failed");
    }
}

/// Opens the store and vault for serving; initialises first when `init_if_missing` is set.
pub async fn prepare(config: &Config) -> Result<(Store, Vault), DaemonError> {
    if config.daemon.init_if_missing {
        let report = crate::init::run(config, None).await?;
        for item in report.created {
            info!(created = %item, "initialised");
        }
        // The development setup gets an (empty) recordings folder to mint links into.
        Root::new(&config.recordings.root).create_if_missing();
    }
    let master = vault::load_master_key(&config.vault.key_file)?;
    let store = Store::open_with_password_file(
        &config.daemon.database,
        config.daemon.database_password_file.as_deref(),
        false,
    )
    .await?
    .with_node(&config.daemon.node_name);
    store.migrate().await?;
    let vault = Vault::new(master, store.clone());
    // Fails early with a clear message if the master key does not match this database.
    vault.list().await?;
    if store.current_data_key().await?.is_none() {
        return Err(VaultError::NotInitialised.into());
    }
    Ok((store, vault))
}

/// Runs the daemon until `shutdown` is cancelled. `config_path` is re-read on SIGHUP.
pub async fn run(
    config_path: &Path,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), DaemonError> {
    let (store, vault) = prepare(&config).await?;
    let auth = Auth::new(&vault, &config.daemon.state_dir).await?;
    // Installs initialised before 2FA get their email-code key now, not racily on first use.
    crate::auth::mfa::email_key(&vault).await?;
    let metrics = crate::metrics::Metrics::new();
    store.watch_faults(metrics.store_commit_failures.clone());
    let root = Root::new(&config.recordings.root);
    let recordings = Recordings::start(
        &vault,
        store.clone(),
        metrics.download_log_overflow.clone(),
        root,
    )
    .await?;
    let app = App::new(
        config,
        store.clone(),
        vault,
        auth,
        recordings,
        metrics,
        None,
    );
    // Runtime security settings stored by admins override the file from the first request.
    app.reload_settings().await;
    let mut subsystems = vec![manage(web::server::Http::new(app.clone()), |c: &Config| {
        c.http.clone()
    })];
    subsystems.extend(app.subsystems());
    let tracker = TaskTracker::new();
    let feeds = spawn_bans(&tracker, app.clone(), shutdown.clone());
    let mut daemon = Daemon {
        app,
        config_path: config_path.to_path_buf(),
        subsystems,
        feeds,
        host: Host {
            tracker,
            shutdown: shutdown.clone(),
        },
    };

    // The listeners start with the bans in force, not an empty list.
    if let Err(e) = daemon.app.bans.refresh(true).await {
        warn!(error = %e, "reading the ban list at start failed; retrying every second");
    }
    let config = daemon.app.config.load_full();
    let staged = daemon.prepare_all(&config).await?;
    daemon.commit_all(staged);
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| DaemonError::Signal("SIGHUP", e))?;

    notify(&[NotifyState::Ready, NotifyState::Status("serving")]);
    info!(version = env!("CARGO_PKG_VERSION"), "pbxguard ready");
    spawn_watchdog(&daemon.host.tracker, shutdown.clone());
    spawn_housekeeping(&daemon.host.tracker, daemon.app.clone(), shutdown.clone());
    {
        let app = daemon.app.clone();
        daemon.host.tracker.spawn(crate::audit::scheduled::run(
            daemon.app.store.clone(),
            move || {
                let c = app.config.load();
                crate::audit::scheduled::RunConfig {
                    audit: c.audit.clone(),
                    upstream_user: c.ami.as_ref().map_or_else(
                        || crate::audit::DEFAULT_UPSTREAM_USER.to_string(),
                        |a| a.upstream_username.clone(),
                    ),
                }
            },
            shutdown.clone(),
        ));
    }
    spawn_node_tasks(&daemon.host.tracker, daemon.app.clone(), shutdown.clone());

    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = hangup.recv() => daemon.reload().await,
        }
    }

    notify(&[
        NotifyState::Stopping,
        NotifyState::Status("draining connections"),
    ]);
    info!("shutting down");
    for subsystem in &mut daemon.subsystems {
        subsystem.stop();
    }
    let tracker = &daemon.host.tracker;
    tracker.close();
    let grace = daemon.app.config.load().daemon.shutdown_grace + Duration::from_secs(1);
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        warn!("listeners did not stop within the grace period");
    }
    daemon.app.recordings.journal.flush().await;
    store.close().await;
    info!("stopped");
    Ok(())
}

/// Feeds the systemd watchdog at half its interval, from the runtime, so a stalled runtime
/// stops feeding it and gets restarted.
fn spawn_watchdog(tracker: &TaskTracker, shutdown: CancellationToken) {
    let mut usec = 0u64;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return;
    }
    let period = Duration::from_micros(usec / 2);
    info!(period = ?period, "systemd watchdog enabled");
    tracker.spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => notify(&[NotifyState::Watchdog]),
            }
        }
    });
}

/// How often a node refreshes its row in the `nodes` table.
const NODE_REFRESH: Duration = Duration::from_secs(30);

/// The ban list's refresh from the store, the firewall that copies it into the kernel, and
/// the blocklist feeds (whose handle the daemon keeps for reloads).
fn spawn_bans(
    tracker: &TaskTracker,
    app: Arc<App>,
    shutdown: CancellationToken,
) -> crate::bans::feeds::Feeds {
    app.bans
        .start(tracker, shutdown.clone(), app.bans_changed.clone());
    crate::bans::firewall::start(
        app.bans.clone(),
        app.metrics.clone(),
        tracker,
        shutdown.clone(),
    );
    let bans = app.bans.clone();
    let sink: crate::ami::security::Sink = Arc::new(move |event| {
        let config = bans.config();
        if bans.strike(
            event.address,
            crate::bans::Source::Asterisk,
            event.event,
            config.threshold,
            config.window,
            None,
        ) {
            info!(address = %event.address, event = event.event, service = %event.service, "Asterisk's security events banned an address");
        }
    });
    crate::ami::security::Monitor::spawn(
        tracker,
        shutdown.clone(),
        crate::ami::security::Settings::of_gateway(app.ami.clone()),
        sink,
    );
    let feeds = app.config.load().bans.feeds.clone();
    let names: Vec<String> = feeds.iter().map(|f| f.name.clone()).collect();
    let bans = app.bans.clone();
    tracker.spawn(async move { bans.drop_feeds_except(&names).await });
    let bans = app.bans.clone();
    let sink: crate::bans::feeds::FeedSink = Arc::new(move |update| {
        let bans = bans.clone();
        Box::pin(async move { bans.replace_feed(update).await })
    });
    crate::bans::feeds::spawn(
        tracker,
        shutdown,
        feeds,
        app.vault.clone(),
        app.metrics.clone(),
        sink,
    )
}

/// With a shared database (PostgreSQL): follows the change feed, so that a change made on any
/// node drops the caches here; and keeps this node's row in the `nodes` table (its
/// `public_url`, for the other nodes' recording redirects) current. On SQLite only the row.
fn spawn_node_tasks(tracker: &TaskTracker, app: Arc<App>, shutdown: CancellationToken) {
    let follower = app.clone();
    let stop = shutdown.clone();
    tracker.spawn(async move {
        let node = follower.config.load().daemon.node_name.clone();
        let store = follower.store.clone();
        store
            .follow_changes(&node, |heard| follower.heard(heard), stop)
            .await;
    });
    tracker.spawn(async move {
        let mut tick = tokio::time::interval(NODE_REFRESH);
        let mut started = true;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {
                    let config = app.config.load();
                    let url = config.http.as_ref().map(|h| h.public_url.as_str());
                    let now = crate::clock::now_unix();
                    if started {
                        warn_if_name_taken(&app, &config.daemon.node_name, url, now).await;
                    }
                    match app.store.put_node(&config.daemon.node_name, url, now, started).await {
                        Ok(()) => started = false,
                        Err(e) => debug!(error = %e, "refreshing this node's row failed; retrying"),
                    }
                }
            }
        }
    });
}

/// Node names must be unique: a second host with this one's name would take its recordings
/// and its row. A row refreshed recently with another `public_url` is most likely such a host
/// (a restart of this one keeps its URL).
async fn warn_if_name_taken(app: &App, name: &str, url: Option<&str>, now: i64) {
    if let Ok(Some(row)) = app.store.node_row(name).await {
        if now - row.seen_at <= crate::recordings::serve::NODE_STALE_SECS
            && row.public_url.as_deref() != url
        {
            error!(node = %name, other_public_url = ?row.public_url, "another running host seems to use this [daemon] node_name; give each host its own");
        }
    }
}

/// Ended sessions are kept this long for `session list`-style forensics, then deleted (the
/// login history keeps its own rows).
const SESSION_RETENTION_SECS: i64 = 7 * 24 * 3600;

/// Expired links are kept this long so `recording list --all` can still explain a 410; the
/// audit log keeps every mint and download beyond that.
const LINK_RETENTION_SECS: i64 = 30 * 24 * 3600;

/// Hourly clean-up: long-ended sessions, and login history past `[auth] history_retention`.
fn spawn_housekeeping(tracker: &TaskTracker, app: Arc<App>, shutdown: CancellationToken) {
    tracker.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(3600));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {
                    let now = crate::clock::now_unix();
                    match app.store.purge_sessions(now - SESSION_RETENTION_SECS).await {
                        Ok(0) => {}
                        Ok(n) => info!(sessions = n, "purged ended sessions"),
                        Err(e) => warn!(error = %e, "purging ended sessions failed"),
                    }
                    match app.store.purge_mfa(now - 24 * 3600, now).await {
                        Ok(0) => {}
                        Ok(n) => info!(rows = n, "purged ended second-factor logins"),
                        Err(e) => warn!(error = %e, "purging second-factor logins failed"),
                    }
                    match app.store.purge_links(now - LINK_RETENTION_SECS).await {
                        Ok(0) => {}
                        Ok(n) => info!(links = n, "purged long-expired recording links"),
                        Err(e) => warn!(error = %e, "purging recording links failed"),
                    }
                    let keep = app.config.load().auth.history_retention.as_secs() as i64;
                    match app.store.purge_history(now - keep).await {
                        Ok(0) => {}
                        Ok(n) => info!(rows = n, "purged old login history"),
                        Err(e) => warn!(error = %e, "purging login history failed"),
                    }
                }
            }
        }
    });
}

impl Daemon {
    /// Everything that can fail, for every subsystem; the first failure drops what the
    /// others bound.
    async fn prepare_all(&self, config: &Config) -> Result<Vec<Staged>, SubsystemError> {
        let mut staged = Vec::with_capacity(self.subsystems.len());
        for subsystem in &self.subsystems {
            staged.push(subsystem.prepare(config).await?);
        }
        Ok(staged)
    }

    fn commit_all(&mut self, staged: Vec<Staged>) {
        for (subsystem, staged) in self.subsystems.iter_mut().zip(staged) {
            subsystem.commit(staged, &self.host);
        }
    }

    async fn reload(&mut self) {
        notify(&[
            NotifyState::Reloading,
            NotifyState::Status("reloading configuration"),
        ]);
        // systemd >= 253 (Type=notify-reload) wants MONOTONIC_USEC with RELOADING=1; older
        // versions ignore it.
        if let Ok(now) = NotifyState::monotonic_usec_now() {
            notify(&[now]);
        }
        let outcome = self.try_reload().await;
        let result = match &outcome {
            Ok(()) => {
                info!(path = %self.config_path.display(), "configuration reloaded");
                "ok"
            }
            Err(problems) => {
                for p in problems {
                    error!(problem = %p, "reload refused; the previous configuration keeps serving");
                }
                "rejected"
            }
        };
        self.app
            .metrics
            .config_reloads
            .get_or_create(&ResultLabels { result })
            .inc();
        notify(&[NotifyState::Ready, NotifyState::Status("serving")]);
    }

    async fn try_reload(&mut self) -> Result<(), Vec<String>> {
        let config = Config::load(&self.config_path).map_err(|e| {
            e.problems()
                .into_iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
        })?;
        let current = self.app.config.load_full();
        if config.daemon.database != current.daemon.database
            || config.daemon.state_dir != current.daemon.state_dir
            || config.daemon.database_password_file != current.daemon.database_password_file
            || config.daemon.node_name != current.daemon.node_name
            || config.vault.key_file != current.vault.key_file
        {
            return Err(vec![
                "daemon.state_dir, daemon.database, daemon.database_password_file, daemon.node_name and vault.key_file apply only at restart (systemctl restart pbxguard)"
                    .to_string(),
            ]);
        }
        let staged = self
            .prepare_all(&config)
            .await
            .map_err(|e| vec![e.to_string()])?;
        if let Err(e) = self.app.auth.reload_keys(&self.app.vault).await {
            return Err(vec![format!("JWT signing keys: {e}")]);
        }
        if let Err(e) = self.app.recordings.reload_keys(&self.app.vault).await {
            return Err(vec![format!("recording link keys: {e}")]);
        }
        self.app
            .recordings
            .set_root(Root::new(&config.recordings.root));

        // Point of no return: everything that could fail has succeeded.
        let feeds = config.bans.feeds.clone();
        self.app.set_config(config);
        self.commit_all(staged);
        let changed = self.feeds.reload(feeds);
        if !changed.removed.is_empty() {
            let names = self.feeds.names();
            let bans = self.app.bans.clone();
            self.host
                .tracker
                .spawn(async move { bans.drop_feeds_except(&names).await });
        }
        Ok(())
    }
}
