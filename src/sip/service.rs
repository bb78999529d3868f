//! `[sip]` as a daemon subsystem. The edge outlives reloads: a new listen address closes only
//! the old socket (its connections stay), new TLS files apply from the next handshake, and a
//! moved Asterisk side gets a new socket while the client connections stay. Removing the
//! section, or shutdown, ends every client's calls towards Asterisk first, then closes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::flow::Kind;
use super::upstream::Upstream;
use super::{Context, Edge, EdgeConfig, TlsPair};
use crate::sip::config::SipTransport;
use crate::subsystem::{bind_changed, Host, Running, Subsystem, SubsystemError};

/// How long the SIP edge's Asterisk side outlives its clients at shutdown, to write the BYEs
/// and CANCELs that end their calls.
const UPSTREAM_FLUSH: Duration = Duration::from_millis(300);

/// The Asterisk side as configured: a change means a new socket.
type UpstreamKey = (SipTransport, SocketAddr, SocketAddr);

fn upstream_key(config: &EdgeConfig) -> UpstreamKey {
    let sip = &config.sip;
    (sip.upstream_transport, sip.upstream_bind, sip.upstream)
}

/// The SIP edge while `[sip]` is configured.
pub struct Sip {
    ctx: Arc<Context>,
    running: Option<Active>,
}

struct Active {
    edge: Arc<Edge>,
    tls: Running,
    wss: Running,
    /// Ends every client connection (the section went, or shutdown).
    conns: CancellationToken,
    /// Stops the current Asterisk-side readers (replaced when a reload moves that side).
    upstream_stop: CancellationToken,
    upstream_key: UpstreamKey,
    maintenance: CancellationToken,
}

/// What a (re)start of the SIP edge needs bound beforehand; `None` fields are kept as running.
#[derive(Default)]
pub struct Prepared {
    config: Option<EdgeConfig>,
    tls: Option<TcpListener>,
    wss: Option<TcpListener>,
    upstream: Option<Upstream>,
    tls_configs: Option<TlsPair>,
}

impl Sip {
    pub fn new(ctx: Arc<Context>) -> Sip {
        Sip { ctx, running: None }
    }

    /// A new edge on `upstream`, its Asterisk side and maintenance started; no listener yet.
    fn start(&self, config: &EdgeConfig, upstream: Upstream, host: &Host) -> Active {
        let upstream = Arc::new(upstream);
        let edge = Arc::new(Edge::new(self.ctx.clone(), upstream.clone()));
        // Not a child of `shutdown`: at shutdown the clients' calls are ended towards
        // Asterisk first (Active::stop), and this side must still carry that.
        let upstream_stop = CancellationToken::new();
        edge.start_upstream(&upstream, &host.tracker, upstream_stop.clone());
        let maintenance = host.shutdown.child_token();
        edge.start_maintenance(&host.tracker, maintenance.clone());
        Active {
            edge,
            tls: Running {
                addr: config.sip.tls_listen,
                stop: CancellationToken::new(),
            },
            wss: Running {
                addr: config.sip.wss_listen,
                stop: CancellationToken::new(),
            },
            conns: host.shutdown.child_token(),
            upstream_stop,
            upstream_key: upstream_key(config),
            maintenance,
        }
    }
}

impl Active {
    /// Moves the edge to a new Asterisk side; the old side's readers stop.
    fn move_upstream(&mut self, config: &EdgeConfig, upstream: Upstream, host: &Host) {
        let upstream = Arc::new(upstream);
        self.upstream_stop.cancel();
        self.upstream_stop = CancellationToken::new();
        self.edge
            .start_upstream(&upstream, &host.tracker, self.upstream_stop.clone());
        self.edge.set_upstream(upstream);
        self.upstream_key = upstream_key(config);
        info!(upstream = %config.sip.upstream, "SIP edge now relays to a new Asterisk side");
    }

    /// Serves the listeners bound anew; the ones they replace stop accepting.
    fn listen(&mut self, tls: Option<TcpListener>, wss: Option<TcpListener>, host: &Host) {
        for (kind, listener, slot) in [
            (Kind::Tls, tls, &mut self.tls),
            (Kind::Wss, wss, &mut self.wss),
        ] {
            let Some(listener) = listener else { continue };
            slot.stop.cancel();
            let stop = host.shutdown.child_token();
            slot.stop = stop.clone();
            host.tracker.spawn(super::transport::serve(
                self.edge.clone(),
                kind,
                listener,
                host.tracker.clone(),
                stop,
                self.conns.clone(),
            ));
        }
    }

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

impl Subsystem for Sip {
    type Config = Option<EdgeConfig>;
    type Prepared = Prepared;

    /// Binds what the configuration needs and the running edge does not already have.
    async fn prepare(&self, config: Option<EdgeConfig>) -> Result<Prepared, SubsystemError> {
        let Some(cfg) = &config else {
            return Ok(Prepared::default());
        };
        let tls_configs = super::tls_configs(cfg).map_err(|source| SubsystemError::Tls {
            section: "sip",
            source,
        })?;
        let running = self.running.as_ref();
        let sip = &cfg.sip;
        let tls = bind_changed("sip.tls_listen", sip.tls_listen, running.map(|r| &r.tls)).await?;
        let wss = bind_changed("sip.wss_listen", sip.wss_listen, running.map(|r| &r.wss)).await?;
        let mut upstream = None;
        if running.is_none_or(|r| r.upstream_key != upstream_key(cfg)) {
            let up = Upstream::bind(sip.upstream_transport, sip.upstream_bind, sip.upstream)
                .await
                .map_err(|e| {
                    SubsystemError::Other(format!(
                        "sip.upstream_bind: cannot bind {}: {e}",
                        sip.upstream_bind
                    ))
                })?;
            upstream = Some(up);
        }
        Ok(Prepared {
            config,
            tls,
            wss,
            upstream,
            tls_configs,
        })
    }

    /// Brings the edge in line with the prepared configuration; everything not in it keeps
    /// running.
    fn commit(&mut self, prepared: Prepared, host: &Host) {
        self.ctx.config.store(prepared.config.clone().map(Arc::new));
        let Some(config) = &prepared.config else {
            if let Some(old) = self.running.take() {
                info!("closing the SIP edge ([sip] removed)");
                old.stop();
            }
            return;
        };
        let mut fresh_upstream = prepared.upstream;
        let mut running = match self.running.take() {
            Some(r) => r,
            None => {
                let Some(upstream) = fresh_upstream.take() else {
                    return;
                };
                self.start(config, upstream, host)
            }
        };
        if running.upstream_key != upstream_key(config) {
            if let Some(upstream) = fresh_upstream {
                running.move_upstream(config, upstream, host);
            }
        }
        let (tls, wss) = match prepared.tls_configs {
            Some((t, w)) => (Some(t), Some(w)),
            None => (None, None),
        };
        running.edge.tls.store(tls);
        running.edge.wss_tls.store(wss);
        running.listen(prepared.tls, prepared.wss, host);
        // Listener addresses are kept as configured so a reload compares like with like.
        running.tls.addr = config.sip.tls_listen;
        running.wss.addr = config.sip.wss_listen;
        self.running = Some(running);
    }

    fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop();
        }
    }
}
