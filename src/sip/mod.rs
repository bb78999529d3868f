//! The SIP edge: softphones reach Asterisk only through here, over TLS or secure WebSocket.
//!
//! [`framing`] cuts TLS streams into messages (exactly one valid Content-Length, size caps);
//! [`message`] and [`uri`] are our strict message model, which re-serialises whatever passes
//! so Asterisk never sees a client's bytes; [`sdp`] is the SRTP-only media policy;
//! [`transport`] runs the listeners, [`flow`] names client connections in what we send
//! Asterisk, [`upstream`] is the loopback side, [`transaction`] retransmits for phones when
//! that side is UDP, [`proxy`] decides what crosses, [`dial`] applies the toll-fraud rules to
//! the calls phones place, [`guards`] holds rates, scanner
//! filtering and bans (kept in the one ban list, `crate::bans`), [`ticket`] binds browser WebSockets to web sessions, and [`service`]
//! starts, reloads and stops the edge for the daemon.

pub mod calls;
pub mod config;
pub mod dial;
pub mod digest;
pub mod flow;
pub mod framing;
pub mod guards;
pub mod message;
pub mod proxy;
pub mod reauth;
pub mod sdp;
pub mod service;
pub mod ticket;
pub mod transaction;
pub mod transport;
pub mod upstream;
pub mod uri;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use futures_util::future::BoxFuture;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

pub use proxy::Edge;

use crate::auth::Auth;
use crate::clock::now_unix;
use crate::metrics::Metrics;
use crate::sip::config::SipConfig;
use crate::store::{SessionRow, Store};
use crate::tls::{self, TlsError, TlsFiles};
use crate::vault::Vault;

/// How often the edge's own housekeeping runs (new bans wake it at once).
const BAN_REFRESH: Duration = Duration::from_secs(2);
/// How often WebSockets are checked against their web sessions (revocation, expiry).
const SESSION_RECHECK: Duration = Duration::from_secs(5);
/// The timer task's longest sleep while no transaction is in flight.
const TIMER_IDLE: Duration = Duration::from_secs(60);

/// What the edge reads of the configuration: `[sip]`, and two values other sections own.
#[derive(Debug, Clone, PartialEq)]
pub struct EdgeConfig {
    pub sip: SipConfig,
    /// `[http]`'s certificate pair, used when `[sip]` names none.
    pub http_tls: Option<TlsFiles>,
}

/// What the edge uses of the rest of the daemon.
pub struct Context {
    pub store: Store,
    /// SIP credentials the edge answers challenges with.
    pub vault: Vault,
    pub metrics: Metrics,
    /// The web sessions WebSockets are bound to: a logout or revocation wakes the edge.
    pub auth: Arc<Auth>,
    /// Minted by the web API, redeemed by the WebSocket listener.
    pub tickets: Arc<ticket::Tickets>,
    /// Run with every ban refresh: picks up auth changes other processes (the CLI) made, for
    /// the edge and for the rest of the daemon alike.
    pub sync_auth: Box<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>,
    /// The configuration in force: set by [`service::Sip`] on start and reload, `None` once
    /// `[sip]` is removed.
    pub config: ArcSwapOption<EdgeConfig>,
    /// The session idle timeout in force (a runtime setting): a WebSocket whose web session
    /// idles past it is closed.
    pub session_idle_timeout: Box<dyn Fn() -> Duration + Send + Sync>,
    /// The one ban list: the edge refuses its addresses and adds its own offenders.
    pub bans: crate::bans::Bans,
    /// The toll-fraud rules: destinations, calls at once and attempts per minute.
    pub dialing: crate::dialing::Guard,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

/// TLS for the SIP listener and for the WebSocket listener: `[sip]`'s pair, else `[http]`'s.
pub type TlsPair = (Arc<rustls::ServerConfig>, Arc<rustls::ServerConfig>);

pub fn tls_configs(config: &EdgeConfig) -> Result<Option<TlsPair>, TlsError> {
    let files = config.sip.tls.as_ref().or(config.http_tls.as_ref());
    let Some(f) = files else {
        return Ok(None);
    };
    // No TLS 1.3 session tickets on the SIP port: phones keep one long connection and never
    // resume, and some SIP stacks (sipsak) mistake the ticket record for the first answer.
    let mut sip_tls = (*tls::server_config(f, &[])?).clone();
    sip_tls.send_tls13_tickets = 0;
    Ok(Some((
        Arc::new(sip_tls),
        tls::server_config(f, &[b"http/1.1"])?,
    )))
}

/// Whether a web session still backs a WebSocket: not revoked, the user enabled and at the
/// same level, within its lifetime and not idle past the limit.
fn session_alive(row: &SessionRow, now: i64, idle: i64) -> bool {
    row.revoked_at.is_none()
        && !row.user_disabled
        && row.level == row.user_level
        && now < row.expires_at
        && now - row.last_seen <= idle
}

impl Edge {
    /// Starts reading from Asterisk (until `stop`).
    pub fn start_upstream(
        self: &Arc<Self>,
        upstream: &Arc<upstream::Upstream>,
        tracker: &TaskTracker,
        stop: CancellationToken,
    ) {
        let edge = Arc::downgrade(self);
        upstream.start(
            tracker,
            stop,
            Arc::new(move |msg| {
                if let Some(edge) = edge.upgrade() {
                    edge.from_upstream(&msg);
                }
            }),
        );
    }

    /// Bans from the store, WebSockets whose web session ended, expired tickets and
    /// transactions: checked periodically until `stop`; and the retransmission timers.
    pub fn start_maintenance(self: &Arc<Self>, tracker: &TaskTracker, stop: CancellationToken) {
        let edge = self.clone();
        let timers_stop = stop.clone();
        tracker.spawn(async move {
            loop {
                let next = edge
                    .next_timer()
                    .unwrap_or_else(|| Instant::now() + TIMER_IDLE);
                tokio::select! {
                    _ = timers_stop.cancelled() => return,
                    _ = edge.timer_wake.notified() => {}
                    _ = tokio::time::sleep_until(next.into()) => {}
                }
                edge.run_timers(Instant::now());
            }
        });
        let edge = self.clone();
        let sessions_stop = stop.clone();
        tracker.spawn(async move {
            loop {
                // A logout or revocation in this process wakes us at once; changes made by
                // the CLI are seen through the auth stamp, read with the bans.
                tokio::select! {
                    _ = sessions_stop.cancelled() => return,
                    _ = edge.ctx.auth.sessions.may_have_ended() => {}
                    _ = tokio::time::sleep(SESSION_RECHECK) => {}
                }
                edge.recheck_sessions().await;
            }
        });
        let edge = self.clone();
        let mut bans = self.bans.subscribe();
        tracker.spawn(async move {
            let mut tick = tokio::time::interval(BAN_REFRESH);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                    _ = bans.changed() => {}
                }
                edge.refresh_bans().await;
                edge.refresh_bound_extensions().await;
                (edge.ctx.sync_auth)().await;
                edge.ctx.tickets.sweep(Instant::now());
                edge.sweep();
            }
        });
    }

    /// Closes the connections of addresses banned since (by any source, on any node).
    async fn refresh_bans(&self) {
        for flow in self.flows.all() {
            if self.bans.banned(flow.peer.ip()).is_some() {
                flow.close.cancel();
            }
        }
    }

    /// Whether a WebSocket's binding still holds: its web session is alive and the user still
    /// has that extension (`set-extension` may have given it to someone else).
    pub async fn binding_alive(&self, binding: &ticket::Binding) -> bool {
        // Without a configuration the edge is closing anyway; sessions are not judged idle.
        let idle = self.ctx.config.load().as_ref().map_or(i64::MAX, |_| {
            (self.ctx.session_idle_timeout)().as_secs() as i64
        });
        let session = match self.ctx.store.session(&binding.session).await {
            Ok(Some(row)) => session_alive(&row, now_unix(), idle),
            Ok(None) => false,
            // Do not cut phones off because the database hiccuped.
            Err(_) => return true,
        };
        if !session {
            return false;
        }
        match self.ctx.store.user_extension(&binding.user).await {
            Ok(ext) => ext.as_deref() == Some(binding.extension.as_str()),
            Err(_) => true,
        }
    }

    async fn recheck_sessions(&self) {
        let mut verdicts: std::collections::HashMap<String, bool> = Default::default();
        for flow in self.flows.all() {
            let Some(binding) = &flow.binding else {
                continue;
            };
            let alive = match verdicts.get(&binding.session) {
                Some(v) => *v,
                None => {
                    let v = self.binding_alive(binding).await;
                    verdicts.insert(binding.session.clone(), v);
                    v
                }
            };
            if !alive {
                info!(user = %binding.user, peer = %flow.peer, "web session or extension changed; closing its SIP WebSocket");
                flow.close.cancel();
            }
        }
    }
}
