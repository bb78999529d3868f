//! The daemon's lifecycle: prepare state, bind every enabled listener, tell systemd we are ready,
//! keep the watchdog fed, reload on SIGHUP, drain on shutdown.
//!
//! Reload is all-or-nothing: the new file is validated, its TLS files loaded and every changed
//! address bound before anything is swapped; any failure leaves the old configuration serving
//! and is logged with every problem.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::Router;
use sd_notify::NotifyState;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::app::App;
use crate::auth::{Auth, AuthError};
use crate::config::{Config, ConfigError};
use crate::metrics::ResultLabels;
use crate::recordings::{Recordings, Root};
use crate::store::{Store, StoreError};
use crate::vault::{self, Vault, VaultError};
use crate::web;
use crate::web::server::{self, Listener};
use crate::web::tls::{self, TlsError};

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
    #[error("TLS for [http]: {0}")]
    Tls(#[from] TlsError),
    #[error("cannot listen on {addr} ({key}): {source}")]
    Bind {
        key: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("cannot install the {0} signal handler: {1}")]
    Signal(&'static str, std::io::Error),
    #[error("{0}")]
    Sip(String),
}

/// A running listener task and the token that stops it.
struct Running {
    addr: SocketAddr,
    stop: CancellationToken,
}

/// The AMI gateway while `[ami]` is configured: its listener, and a token that ends its
/// sessions and upstream maintenance (cancelled when the section goes or at shutdown).
struct AmiRunning {
    gateway: Arc<crate::ami::Gateway>,
    listener: Running,
    sessions: CancellationToken,
}

/// The SIP edge while `[sip]` is configured.
struct SipRunning {
    edge: Arc<crate::sip::Edge>,
    tls: Running,
    wss: Running,
    /// Ends every client connection (the section went, or shutdown).
    conns: CancellationToken,
    /// Stops the current Asterisk-side readers (replaced when a reload moves that side).
    upstream_stop: CancellationToken,
    upstream_key: UpstreamKey,
    maintenance: CancellationToken,
}

type UpstreamKey = (crate::config::SipTransport, SocketAddr, SocketAddr);

fn upstream_key(sip: &crate::config::SipConfig) -> UpstreamKey {
    (sip.upstream_transport, sip.upstream_bind, sip.upstream)
}

/// What a (re)start of the SIP edge needs bound beforehand; `None` fields are kept as running.
#[derive(Default)]
struct SipBound {
    tls: Option<TcpListener>,
    wss: Option<TcpListener>,
    upstream: Option<crate::sip::upstream::Upstream>,
    tls_configs: Option<crate::sip::TlsPair>,
}

async fn bind_listener(key: &'static str, addr: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| format!("{key}: cannot listen on {addr}: {e}"))
}

/// Binds what `config`'s `[sip]` needs and `running` does not already have.
async fn bind_sip(config: &Config, running: Option<&SipRunning>) -> Result<SipBound, String> {
    let Some(sip) = &config.sip else {
        return Ok(SipBound::default());
    };
    let tls_configs = crate::sip::tls_configs(config).map_err(|e| format!("TLS for [sip]: {e}"))?;
    let mut bound = SipBound {
        tls_configs,
        ..SipBound::default()
    };
    if running.is_none_or(|r| r.tls.addr != sip.tls_listen) {
        bound.tls = Some(bind_listener("sip.tls_listen", sip.tls_listen).await?);
    }
    if running.is_none_or(|r| r.wss.addr != sip.wss_listen) {
        bound.wss = Some(bind_listener("sip.wss_listen", sip.wss_listen).await?);
    }
    if running.is_none_or(|r| r.upstream_key != upstream_key(sip)) {
        let up = crate::sip::upstream::Upstream::bind(
            sip.upstream_transport,
            sip.upstream_bind,
            sip.upstream,
        )
        .await
        .map_err(|e| format!("sip.upstream_bind: cannot bind {}: {e}", sip.upstream_bind))?;
        bound.upstream = Some(up);
    }
    Ok(bound)
}

/// Everything `run` keeps between reloads.
struct Daemon {
    app: Arc<App>,
    config_path: PathBuf,
    api_router: Arc<ArcSwap<Router>>,
    redirect_router: Arc<ArcSwap<Router>>,
    realtime_router: Arc<ArcSwap<Router>>,
    running: HashMap<Listener, Running>,
    ami: Option<AmiRunning>,
    sip: Option<SipRunning>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

/// Tells systemd (when it is listening) about a state change. Never unsets `NOTIFY_SOCKET`:
/// that is unsound once threads exist, and the watchdog needs it later.
fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        warn!(error = %e, "sd_notify failed");
    }
}

fn http_tls(config: &Config) -> Result<Option<Arc<rustls::ServerConfig>>, TlsError> {
    match config.http.as_ref().and_then(|h| h.tls.as_ref()) {
        Some(files) => Ok(Some(tls::server_config(files, &[b"h2", b"http/1.1"])?)),
        None => Ok(None),
    }
}

/// The HTTP listeners a configuration asks for.
fn wanted(config: &Config) -> Vec<(Listener, &'static str, SocketAddr)> {
    let mut out = Vec::new();
    if let Some(h) = &config.http {
        out.push((Listener::Main, "http.listen", h.listen));
        if let Some(r) = h.redirect_listen {
            out.push((Listener::Redirect, "http.redirect_listen", r));
        }
    }
    if let Some(r) = &config.realtime {
        out.push((Listener::Realtime, "realtime.listen", r.listen));
    }
    out
}

fn ami_tls(config: &Config) -> Result<Option<Arc<rustls::ServerConfig>>, TlsError> {
    match config.ami.as_ref().and_then(|a| a.tls.as_ref()) {
        Some(files) => Ok(Some(tls::server_config(files, &[])?)),
        None => Ok(None),
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
    let store = Store::open(&config.daemon.database, false).await?;
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
    let tls = http_tls(&config)?;
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
    let app = App::new(config, store.clone(), vault, auth, recordings, metrics, tls);
    let mut daemon = Daemon {
        api_router: Arc::new(ArcSwap::from_pointee(web::api_router(app.clone()))),
        redirect_router: Arc::new(ArcSwap::from_pointee(web::redirect_router(app.clone()))),
        realtime_router: Arc::new(ArcSwap::from_pointee(crate::realtime::router(app.clone()))),
        app,
        config_path: config_path.to_path_buf(),
        running: HashMap::new(),
        ami: None,
        sip: None,
        tracker: TaskTracker::new(),
        shutdown: shutdown.clone(),
    };

    let config = daemon.app.config.load_full();
    let mut bound = Vec::new();
    for (kind, key, addr) in wanted(&config) {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| DaemonError::Bind { key, addr, source })?;
        bound.push((kind, addr, listener));
    }
    let ami = match &config.ami {
        Some(a) => {
            let tls = ami_tls(&config)?;
            let listener =
                TcpListener::bind(a.listen)
                    .await
                    .map_err(|source| DaemonError::Bind {
                        key: "ami.listen",
                        addr: a.listen,
                        source,
                    })?;
            Some((listener, tls))
        }
        None => None,
    };
    let sip = bind_sip(&config, None).await.map_err(DaemonError::Sip)?;
    for (kind, addr, listener) in bound {
        daemon.start(kind, addr, listener);
    }
    daemon.apply_sip(sip);
    if let Some((listener, tls)) = ami {
        daemon.start_ami(listener, tls).await;
    }
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| DaemonError::Signal("SIGHUP", e))?;

    notify(&[NotifyState::Ready, NotifyState::Status("serving")]);
    info!(version = env!("CARGO_PKG_VERSION"), "pbxguard ready");
    spawn_watchdog(&daemon.tracker, shutdown.clone());
    spawn_housekeeping(&daemon.tracker, daemon.app.clone(), shutdown.clone());

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
    for running in daemon.running.values() {
        running.stop.cancel();
    }
    if let Some(ami) = &daemon.ami {
        ami.listener.stop.cancel();
        ami.sessions.cancel();
    }
    if let Some(sip) = daemon.sip.take() {
        sip.stop();
    }
    daemon.tracker.close();
    let grace = daemon.app.config.load().daemon.shutdown_grace + Duration::from_secs(1);
    if tokio::time::timeout(grace, daemon.tracker.wait())
        .await
        .is_err()
    {
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

/// How long the SIP edge's Asterisk side outlives its clients at shutdown, to write the BYEs
/// and CANCELs that end their calls.
const UPSTREAM_FLUSH: Duration = Duration::from_millis(300);

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
    /// Starts the AMI gateway on `listener` (a new gateway unless one is running).
    async fn start_ami(&mut self, listener: TcpListener, tls: Option<Arc<rustls::ServerConfig>>) {
        let addr = match listener.local_addr() {
            Ok(a) => a,
            Err(e) => {
                error!(error = %e, "AMI listener has no address");
                return;
            }
        };
        let (gateway, sessions) = match self.ami.take() {
            Some(old) => {
                old.listener.stop.cancel();
                old.gateway.set_tls(tls);
                (old.gateway, old.sessions)
            }
            None => {
                let gateway = crate::ami::Gateway::new(self.app.clone(), tls).await;
                let sessions = self.shutdown.child_token();
                gateway.start_maintenance(&self.tracker, sessions.clone());
                (gateway, sessions)
            }
        };
        let stop = self.shutdown.child_token();
        self.tracker.spawn(crate::ami::serve(
            gateway.clone(),
            listener,
            self.tracker.clone(),
            stop.clone(),
            sessions.clone(),
        ));
        self.ami = Some(AmiRunning {
            gateway,
            listener: Running { addr, stop },
            sessions,
        });
    }

    /// Brings the SIP edge in line with the configuration in force, using what `bound` holds
    /// (new listeners, a new Asterisk side); everything not in it keeps running.
    fn apply_sip(&mut self, bound: SipBound) {
        let config = self.app.config.load_full();
        let Some(sip_cfg) = &config.sip else {
            if let Some(old) = self.sip.take() {
                info!("closing the SIP edge ([sip] removed)");
                old.stop();
            }
            return;
        };
        let (tls, wss) = match bound.tls_configs {
            Some((t, w)) => (Some(t), Some(w)),
            None => (None, None),
        };
        let mut fresh_upstream = bound.upstream;
        let mut running = match self.sip.take() {
            Some(r) => r,
            None => {
                let Some(upstream) = fresh_upstream.take() else {
                    return;
                };
                let upstream = Arc::new(upstream);
                let edge = Arc::new(crate::sip::Edge::new(self.app.clone(), upstream.clone()));
                // Not a child of `shutdown`: at shutdown the clients' calls are ended towards
                // Asterisk first (SipRunning::stop), and this side must still carry that.
                let upstream_stop = CancellationToken::new();
                edge.start_upstream(&upstream, &self.tracker, upstream_stop.clone());
                let maintenance = self.shutdown.child_token();
                edge.start_maintenance(&self.tracker, maintenance.clone());
                SipRunning {
                    edge,
                    tls: Running {
                        addr: sip_cfg.tls_listen,
                        stop: CancellationToken::new(),
                    },
                    wss: Running {
                        addr: sip_cfg.wss_listen,
                        stop: CancellationToken::new(),
                    },
                    conns: self.shutdown.child_token(),
                    upstream_stop,
                    upstream_key: upstream_key(sip_cfg),
                    maintenance,
                }
            }
        };
        if running.upstream_key != upstream_key(sip_cfg) {
            if let Some(upstream) = fresh_upstream {
                let upstream = Arc::new(upstream);
                running.upstream_stop.cancel();
                running.upstream_stop = CancellationToken::new();
                running.edge.start_upstream(
                    &upstream,
                    &self.tracker,
                    running.upstream_stop.clone(),
                );
                running.edge.set_upstream(upstream);
                running.upstream_key = upstream_key(sip_cfg);
                info!(upstream = %sip_cfg.upstream, "SIP edge now relays to a new Asterisk side");
            }
        }
        running.edge.tls.store(tls);
        running.edge.wss_tls.store(wss);
        for (kind, listener, slot) in [
            (crate::sip::flow::Kind::Tls, bound.tls, &mut running.tls),
            (crate::sip::flow::Kind::Wss, bound.wss, &mut running.wss),
        ] {
            let Some(listener) = listener else { continue };
            slot.stop.cancel();
            let stop = self.shutdown.child_token();
            if let Ok(addr) = listener.local_addr() {
                slot.addr = addr;
            }
            slot.stop = stop.clone();
            self.tracker.spawn(crate::sip::transport::serve(
                running.edge.clone(),
                kind,
                listener,
                self.tracker.clone(),
                stop,
                running.conns.clone(),
            ));
        }
        // Listener addresses are kept as configured so a reload compares like with like.
        running.tls.addr = sip_cfg.tls_listen;
        running.wss.addr = sip_cfg.wss_listen;
        self.sip = Some(running);
    }

    fn start(&mut self, kind: Listener, addr: SocketAddr, listener: TcpListener) {
        let stop = self.shutdown.child_token();
        let router = match kind {
            Listener::Main => self.api_router.clone(),
            Listener::Redirect => self.redirect_router.clone(),
            Listener::Realtime => self.realtime_router.clone(),
        };
        self.tracker.spawn(server::serve(
            listener,
            kind,
            self.app.clone(),
            router,
            stop.clone(),
        ));
        self.running.insert(kind, Running { addr, stop });
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
        if config.daemon.database != self.app.config.load().daemon.database
            || config.daemon.state_dir != self.app.config.load().daemon.state_dir
            || config.vault.key_file != self.app.config.load().vault.key_file
        {
            return Err(vec![
                "daemon.state_dir, daemon.database and vault.key_file apply only at restart (systemctl restart pbxguard)"
                    .to_string(),
            ]);
        }
        let tls = http_tls(&config).map_err(|e| vec![e.to_string()])?;

        let wanted = wanted(&config);
        let mut fresh = Vec::new();
        for (kind, key, addr) in &wanted {
            if self.running.get(kind).is_some_and(|r| r.addr == *addr) {
                continue;
            }
            match TcpListener::bind(addr).await {
                Ok(l) => fresh.push((*kind, *addr, l)),
                Err(e) => return Err(vec![format!("{key}: cannot listen on {addr}: {e}")]),
            }
        }
        let ami_tls = ami_tls(&config).map_err(|e| vec![format!("TLS for [ami]: {e}")])?;
        let ami_listener = match &config.ami {
            Some(a)
                if self
                    .ami
                    .as_ref()
                    .is_none_or(|r| r.listener.addr != a.listen) =>
            {
                match TcpListener::bind(a.listen).await {
                    Ok(l) => Some(l),
                    Err(e) => {
                        return Err(vec![format!(
                            "ami.listen: cannot listen on {}: {e}",
                            a.listen
                        )])
                    }
                }
            }
            _ => None,
        };
        let sip = bind_sip(&config, self.sip.as_ref())
            .await
            .map_err(|e| vec![e])?;

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
        self.app.config.store(Arc::new(config));
        self.app.http_tls.store(tls);
        self.api_router
            .store(Arc::new(web::api_router(self.app.clone())));
        self.redirect_router
            .store(Arc::new(web::redirect_router(self.app.clone())));
        self.realtime_router
            .store(Arc::new(crate::realtime::router(self.app.clone())));
        let keep: Vec<Listener> = wanted.iter().map(|(k, _, _)| *k).collect();
        let stale: Vec<Listener> = self
            .running
            .iter()
            .filter(|(kind, r)| {
                !keep.contains(kind) || fresh.iter().any(|(k, a, _)| k == *kind && *a != r.addr)
            })
            .map(|(kind, _)| *kind)
            .collect();
        for kind in stale {
            if let Some(old) = self.running.remove(&kind) {
                info!(listener = kind.name(), addr = %old.addr, "closing listener (address changed or removed)");
                old.stop.cancel();
            }
        }
        for (kind, addr, listener) in fresh {
            self.start(kind, addr, listener);
        }
        self.apply_sip(sip);
        let ami_wanted = self.app.config.load().ami.is_some();
        match (ami_listener, ami_wanted) {
            (Some(listener), _) => self.start_ami(listener, ami_tls).await,
            (None, true) => {
                if let Some(ami) = &self.ami {
                    ami.gateway.set_tls(ami_tls);
                }
            }
            (None, false) => {
                if let Some(old) = self.ami.take() {
                    info!(addr = %old.listener.addr, "closing the AMI gateway ([ami] removed)");
                    old.listener.stop.cancel();
                    old.sessions.cancel();
                }
            }
        }
        Ok(())
    }
}

impl SipRunning {
    fn stop(self) {
        self.tls.stop.cancel();
        self.wss.stop.cancel();
        // Calls end while Asterisk can still be told (BYE, CANCEL); the upstream side gets a
        // moment to write them before it stops.
        self.edge.end_all_calls();
        self.conns.cancel();
        self.maintenance.cancel();
        let upstream_stop = self.upstream_stop;
        tokio::spawn(async move {
            tokio::time::sleep(UPSTREAM_FLUSH).await;
            upstream_stop.cancel();
        });
    }
}
