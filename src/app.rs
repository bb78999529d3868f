//! The shared state handed to every listener: the current configuration (swapped atomically on
//! reload), the store, the vault, TLS material and metrics.

use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};

use crate::auth::Auth;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::recordings::Recordings;
use crate::store::Store;
use crate::vault::Vault;

pub struct App {
    /// The configuration in force; a reload replaces it in one step, so a request sees either
    /// the old or the new settings, never a mix.
    pub config: ArcSwap<Config>,
    pub store: Store,
    pub vault: Vault,
    /// The `[http]` TLS config; read per accepted connection so new certificates apply from
    /// the next handshake after SIGHUP without rebinding.
    pub http_tls: ArcSwapOption<rustls::ServerConfig>,
    pub metrics: Metrics,
    pub auth: Auth,
    pub recordings: Recordings,
    /// WebSocket tickets minted by the web API and redeemed by the SIP edge.
    pub sip_tickets: crate::sip::ticket::Tickets,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").finish_non_exhaustive()
    }
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
        Arc::new(App {
            auth,
            recordings,
            config: ArcSwap::from_pointee(config),
            store,
            vault,
            http_tls: ArcSwapOption::new(http_tls),
            metrics,
            sip_tickets: Default::default(),
        })
    }

    /// Picks up changes other processes made to users, sessions or signing keys (announced
    /// through the auth stamp): drops the session cache and reloads the JWT and link keys.
    pub async fn sync_auth(&self) {
        if self.auth.sessions.sync() {
            self.recordings.links.clear();
            if let Err(e) = self.auth.reload_keys(&self.vault).await {
                tracing::error!(error = %e, "reloading JWT keys after an auth change failed; keeping the old ones");
            }
            if let Err(e) = self.recordings.reload_keys(&self.vault).await {
                tracing::error!(error = %e, "reloading link keys after an auth change failed; keeping the old ones");
            }
        }
    }
}
