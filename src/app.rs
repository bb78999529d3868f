//! The shared state of the daemon: the current configuration (swapped atomically on reload),
//! the store, the vault, TLS material and metrics, which the web handlers use directly; and
//! the features' subsystems, each built from the parts it needs.
//!
//! The parts are shared, not copied: a session revoked on the web side is seen by the SIP
//! edge at once, tickets minted by the web API are redeemed by the edge, and every subsystem
//! counts into the one metrics registry.

use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};

use crate::auth::Auth;
use crate::config::Config;
use crate::httpd::{Httpd, Limits};
use crate::metrics::Metrics;
use crate::recordings::Recordings;
use crate::sip::ticket::Tickets;
use crate::store::changes::{Change, Heard};
use crate::store::Store;
use crate::subsystem::{manage, Managed};
use crate::vault::Vault;

pub struct App {
    /// The configuration in force; a reload replaces it in one step, so a request sees either
    /// the old or the new settings, never a mix.
    /// Runtime security settings (see `crate::settings`) are applied to it: readers see the
    /// values in force without asking the database.
    pub config: ArcSwap<Config>,
    /// The config file as last loaded, without the runtime settings.
    file_config: ArcSwap<Config>,
    /// The runtime settings stored in the database, as last read.
    stored_settings: ArcSwap<crate::settings::Stored>,
    /// Serialises putting a configuration in force (a reload and a settings change racing
    /// must not leave one's file with the other's stale settings).
    in_force: std::sync::Mutex<()>,
    /// Serialises settings reads, so that an older read never replaces a newer one.
    settings_read: tokio::sync::Mutex<()>,
    /// A settings read failed: the next request tries again (the stamp or the notification
    /// that asked for it is spent by then).
    settings_stale: std::sync::atomic::AtomicBool,
    pub store: Store,
    pub vault: Vault,
    /// The `[http]` TLS config; read per accepted connection so new certificates apply from
    /// the next handshake after SIGHUP without rebinding.
    pub http_tls: Arc<ArcSwapOption<rustls::ServerConfig>>,
    pub metrics: Metrics,
    pub auth: Arc<Auth>,
    pub recordings: Arc<Recordings>,
    /// WebSocket tickets minted by the web API and redeemed by the SIP edge.
    pub sip_tickets: Arc<Tickets>,
    /// What every HTTP listener shares: `[http]`'s limits, swapped with the configuration.
    pub httpd: Arc<Httpd>,
    /// Another node changed the ban list (see [`App::heard`]): it is read again at once.
    pub bans_changed: Arc<tokio::sync::Notify>,
    /// The one ban list every listener consults and every door adds to.
    pub bans: crate::bans::Bans,
    /// What the AMI gateway uses of the daemon; also followed by the monitoring session that
    /// reads Asterisk's security events.
    pub ami: Arc<crate::ami::Context>,
    /// The toll-fraud rules and counters the SIP edge and the AMI gateway share.
    pub dialing: crate::dialing::Guard,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").finish_non_exhaustive()
    }
}

/// `[http]`'s connection limits, or the defaults without the section.
fn http_limits(config: &Config) -> Limits {
    let mut limits = Limits::defaults(config.daemon.shutdown_grace);
    if let Some(h) = &config.http {
        limits.max_connections = h.max_connections;
        limits.header_timeout = h.header_timeout;
        limits.idle_timeout = h.idle_timeout;
    }
    limits
}

/// Networks never banned besides loopback and `[bans] allow`: the proxies the web tier
/// trusts and the Asterisk pbxguard relays to (its events name pbxguard's own address).
pub fn exempt_nets(config: &Config) -> Vec<ipnet::IpNet> {
    let mut nets: Vec<ipnet::IpNet> = config
        .http
        .as_ref()
        .map(|h| h.trusted_proxies.clone())
        .unwrap_or_default();
    if let Some(a) = &config.ami {
        nets.push(ipnet::IpNet::from(crate::net::canonical_ip(
            a.upstream.ip(),
        )));
    }
    if let Some(s) = &config.sip {
        nets.push(ipnet::IpNet::from(crate::net::canonical_ip(
            s.upstream.ip(),
        )));
        if !s.upstream_bind.ip().is_unspecified() {
            nets.push(ipnet::IpNet::from(crate::net::canonical_ip(
                s.upstream_bind.ip(),
            )));
        }
    }
    nets.sort();
    nets.dedup();
    nets
}

/// What the SIP edge reads of a configuration.
fn edge_config(config: &Config) -> Option<crate::sip::EdgeConfig> {
    let sip = config.sip.clone()?;
    Some(crate::sip::EdgeConfig {
        sip,
        http_tls: config.http.as_ref().and_then(|h| h.tls.clone()),
    })
}

impl App {
    pub fn new(
        config: Config,
        store: Store,
        vault: Vault,
        auth: Auth,
        recordings: Recordings,
        metrics: Metrics,
        http_tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Arc<App> {
        let httpd = Arc::new(Httpd::new(http_limits(&config), metrics.clone()));
        let dialing = crate::dialing::Guard::new(
            config.dialing.clone(),
            config.smtp.clone(),
            store.clone(),
            vault.clone(),
            metrics.clone(),
            recordings.journal.clone(),
        );
        auth.sessions
            .set_outage_grace(config.daemon.store_outage_grace);
        let bans = crate::bans::Bans::new(
            config.bans.clone(),
            store.clone(),
            metrics.clone(),
            config.daemon.node_name.clone(),
        );
        bans.set_config(config.bans.clone(), exempt_nets(&config));
        let gate = bans.clone();
        httpd.set_gate(Arc::new(move |ip| gate.banned(ip).is_some()));
        let ami = Arc::new(crate::ami::Context::new(
            store.clone(),
            vault.clone(),
            metrics.clone(),
            recordings.journal.clone(),
            dialing.clone(),
            bans.clone(),
        ));
        Arc::new(App {
            auth: Arc::new(auth),
            recordings: Arc::new(recordings),
            file_config: ArcSwap::from_pointee(config.clone()),
            config: ArcSwap::from_pointee(config),
            stored_settings: ArcSwap::default(),
            in_force: std::sync::Mutex::new(()),
            settings_read: tokio::sync::Mutex::new(()),
            settings_stale: std::sync::atomic::AtomicBool::new(false),
            store,
            vault,
            http_tls: Arc::new(ArcSwapOption::new(http_tls)),
            metrics,
            sip_tickets: Arc::default(),
            httpd,
            bans_changed: Arc::default(),
            bans,
            ami,
            dialing,
        })
    }

    /// The config file as last loaded, without the runtime settings: their defaults.
    pub fn file_config(&self) -> Arc<Config> {
        self.file_config.load_full()
    }

    /// Puts a new configuration in force (a reload's point of no return).
    pub fn set_config(&self, config: Config) {
        let _serial = self.in_force.lock();
        self.file_config.store(Arc::new(config));
        self.put_in_force();
    }

    /// The config file with the stored runtime settings applied becomes the configuration in
    /// force. Callers hold `in_force`.
    fn put_in_force(&self) {
        let file = Config::clone(&self.file_config.load());
        let config = self.stored_settings.load().applied(file);
        self.httpd.set_limits(http_limits(&config));
        self.dialing
            .set_config(config.dialing.clone(), config.smtp.clone());
        self.bans
            .set_config(config.bans.clone(), exempt_nets(&config));
        self.auth
            .sessions
            .set_outage_grace(config.daemon.store_outage_grace);
        self.config.store(Arc::new(config));
    }

    /// Picks up changes other processes made to users, sessions or signing keys (announced
    /// through the auth stamp): drops the session cache and reloads the JWT and link keys.
    pub async fn sync_auth(&self) {
        if self.auth.sessions.sync() {
            self.reload_keys().await;
            self.reload_settings().await;
        } else if self
            .settings_stale
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            self.reload_settings().await;
        }
    }

    /// Reads the runtime security settings again and puts them in force. On a database
    /// fault the settings in force stay (and say so in the log): a node never falls back to
    /// the file's values because a read failed.
    pub async fn reload_settings(&self) {
        let _serial = self.settings_read.lock().await;
        let read = crate::settings::ops::stored(&self.store).await;
        self.settings_stale
            .store(read.is_err(), std::sync::atomic::Ordering::Relaxed);
        match read {
            Ok(stored) => {
                if **self.stored_settings.load() == stored {
                    return;
                }
                let _in_force = self.in_force.lock();
                self.stored_settings.store(Arc::new(stored));
                self.put_in_force();
                tracing::info!("runtime security settings changed; in force from now");
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading the runtime security settings failed; the ones in force stay until a request finds the database again")
            }
        }
    }

    /// Acts on what the change feed heard from the nodes sharing the database: drops the
    /// cache entries a change makes stale (everything, after the listener reconnects).
    pub async fn heard(&self, heard: Heard) {
        let change = match heard {
            Heard::Everything => {
                self.auth.sessions.clear();
                self.reload_keys().await;
                self.reload_settings().await;
                self.bans_changed.notify_one();
                return;
            }
            Heard::Change(change) => change,
        };
        tracing::debug!(change = %change.encode(), "change announced by a node");
        match change {
            Change::Session(id) => self.auth.sessions.forget(&id),
            Change::Sessions => self.auth.sessions.clear(),
            // `mfa policy --force` writes the force setting's row.
            Change::MfaPolicy => {
                self.auth.sessions.clear();
                self.reload_settings().await;
            }
            Change::Keys => {
                self.auth.sessions.clear();
                self.reload_keys().await;
            }
            Change::Link(id) => self.recordings.links.forget(&id),
            Change::Links => self.recordings.links.clear(),
            Change::Bans => self.bans_changed.notify_one(),
            // Cached sessions were judged under the old idle timeout.
            Change::Settings => {
                self.auth.sessions.clear();
                self.reload_settings().await;
            }
            // Read from the database at each use: nothing cached to drop.
            Change::AmiClients | Change::SipCredentials | Change::Heartbeat(_) => {}
        }
    }

    /// Reloads the JWT and link keys and drops the links cached under the old ones.
    async fn reload_keys(&self) {
        self.recordings.links.clear();
        if let Err(e) = self.auth.reload_keys(&self.vault).await {
            tracing::error!(error = %e, "reloading JWT keys after a change failed; keeping the old ones");
        }
        if let Err(e) = self.recordings.reload_keys(&self.vault).await {
            tracing::error!(error = %e, "reloading link keys after a change failed; keeping the old ones");
        }
    }

    /// The features' subsystems, in start order: realtime, the AMI gateway, the SIP edge
    /// (the HTTP listeners, above this layer, come first; see `daemon`).
    pub fn subsystems(self: &Arc<Self>) -> Vec<Box<dyn Managed<Config>>> {
        let realtime = crate::realtime::Context::new(
            self.store.clone(),
            self.vault.clone(),
            self.metrics.clone(),
        );
        vec![
            manage(
                crate::realtime::service::Realtime::new(Arc::new(realtime), self.httpd.clone()),
                |c: &Config| c.realtime.clone(),
            ),
            manage(
                crate::ami::service::Ami::new(self.ami.clone()),
                |c: &Config| c.ami.clone(),
            ),
            manage(
                crate::sip::service::Sip::new(Arc::new(self.sip_context())),
                edge_config,
            ),
        ]
    }

    fn sip_context(self: &Arc<Self>) -> crate::sip::Context {
        let app = self.clone();
        crate::sip::Context {
            store: self.store.clone(),
            vault: self.vault.clone(),
            metrics: self.metrics.clone(),
            auth: self.auth.clone(),
            tickets: self.sip_tickets.clone(),
            sync_auth: Box::new(move || {
                let app = app.clone();
                Box::pin(async move { app.sync_auth().await })
            }),
            config: ArcSwapOption::empty(),
            session_idle_timeout: Box::new({
                let app = self.clone();
                move || app.config.load().auth.session_idle_timeout
            }),
            bans: self.bans.clone(),
            dialing: self.dialing.clone(),
        }
    }
}
