//! `[realtime]` as a daemon subsystem: one plain HTTP listener (loopback, for Asterisk) served
//! by the shared accept loop, rebound only when its address changes.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::Router;
use tokio::net::TcpListener;
use tracing::info;

use super::Context;
use crate::httpd::{self, Endpoint, Httpd};
use crate::realtime::config::RealtimeConfig;
use crate::subsystem::{bind_changed, Host, Running, Subsystem, SubsystemError};

/// The realtime listener while `[realtime]` is configured.
pub struct Realtime {
    ctx: Arc<Context>,
    httpd: Arc<Httpd>,
    /// Built once: nothing in it depends on the configuration.
    router: Arc<ArcSwap<Router>>,
    running: Option<Running>,
}

/// What a new `[realtime]` needs, bound.
pub struct Prepared {
    config: Option<RealtimeConfig>,
    /// Bound when the address changed, or nothing runs yet.
    listener: Option<(SocketAddr, TcpListener)>,
}

impl Realtime {
    pub fn new(ctx: Arc<Context>, httpd: Arc<Httpd>) -> Realtime {
        Realtime {
            router: Arc::new(ArcSwap::from_pointee(super::router(ctx.clone()))),
            ctx,
            httpd,
            running: None,
        }
    }
}

impl Subsystem for Realtime {
    type Config = Option<RealtimeConfig>;
    type Prepared = Prepared;

    async fn prepare(&self, config: Option<RealtimeConfig>) -> Result<Prepared, SubsystemError> {
        let listener = match &config {
            Some(rt) => bind_changed("realtime.listen", rt.listen, self.running.as_ref())
                .await?
                .map(|l| (rt.listen, l)),
            None => None,
        };
        Ok(Prepared { config, listener })
    }

    fn commit(&mut self, prepared: Prepared, host: &Host) {
        let wanted = prepared.config.is_some();
        self.ctx.config.store(prepared.config.map(Arc::new));
        if wanted && prepared.listener.is_none() {
            return;
        }
        if let Some(old) = self.running.take() {
            info!(listener = "realtime", addr = %old.addr, "closing listener (address changed or removed)");
            old.stop.cancel();
        }
        let Some((addr, listener)) = prepared.listener else {
            return;
        };
        let stop = host.shutdown.child_token();
        let endpoint = Endpoint {
            name: "realtime",
            router: self.router.clone(),
            tls: None,
            shortcut: None,
        };
        host.tracker.spawn(httpd::serve(
            self.httpd.clone(),
            endpoint,
            listener,
            stop.clone(),
        ));
        self.running = Some(Running { addr, stop });
    }

    fn stop(&mut self) {
        if let Some(running) = &self.running {
            running.stop.cancel();
        }
    }
}
