//! `[ami]` as a daemon subsystem. The gateway outlives reloads: a new listen address closes
//! only the old socket (its sessions stay), new TLS files apply from the next handshake, and
//! removing the section ends every session and the upstream maintenance.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::{Context, Gateway};
use crate::ami::config::AmiConfig;
use crate::subsystem::{bind_changed, Host, Running, Subsystem, SubsystemError};
use crate::tls;

/// The AMI gateway while `[ami]` is configured.
pub struct Ami {
    ctx: Arc<Context>,
    running: Option<Active>,
}

/// A running gateway: its listener, and a token that ends its sessions and upstream
/// maintenance (cancelled when the section goes or at shutdown).
struct Active {
    gateway: Arc<Gateway>,
    listener: Running,
    sessions: CancellationToken,
}

/// What a new `[ami]` needs, loaded and bound.
pub struct Prepared {
    config: Option<AmiConfig>,
    tls: Option<Arc<rustls::ServerConfig>>,
    /// Bound when the address changed, or nothing runs yet.
    listener: Option<TcpListener>,
    /// Made when nothing runs yet.
    gateway: Option<Arc<Gateway>>,
}

impl Ami {
    pub fn new(ctx: Arc<Context>) -> Ami {
        Ami { ctx, running: None }
    }

    /// Starts the gateway on `listener`: the running one, else `fresh`.
    fn start(
        &mut self,
        listener: TcpListener,
        tls: Option<Arc<rustls::ServerConfig>>,
        fresh: Option<Arc<Gateway>>,
        host: &Host,
    ) {
        let addr = match listener.local_addr() {
            Ok(a) => a,
            Err(e) => {
                error!(error = %e, "AMI listener has no address");
                return;
            }
        };
        let (gateway, sessions) = match (self.running.take(), fresh) {
            (Some(old), _) => {
                old.listener.stop.cancel();
                old.gateway.set_tls(tls);
                (old.gateway, old.sessions)
            }
            (None, Some(gateway)) => {
                let sessions = host.shutdown.child_token();
                gateway.start_maintenance(&host.tracker, sessions.clone());
                (gateway, sessions)
            }
            (None, None) => return,
        };
        let stop = host.shutdown.child_token();
        host.tracker.spawn(super::serve(
            gateway.clone(),
            listener,
            host.tracker.clone(),
            stop.clone(),
            sessions.clone(),
        ));
        self.running = Some(Active {
            gateway,
            listener: Running { addr, stop },
            sessions,
        });
    }
}

impl Subsystem for Ami {
    type Config = Option<AmiConfig>;
    type Prepared = Prepared;

    async fn prepare(&self, config: Option<AmiConfig>) -> Result<Prepared, SubsystemError> {
        let Some(cfg) = &config else {
            return Ok(Prepared {
                config,
                tls: None,
                listener: None,
                gateway: None,
            });
        };
        let tls = match &cfg.tls {
            Some(files) => {
                Some(
                    tls::server_config(files, &[]).map_err(|source| SubsystemError::Tls {
                        section: "ami",
                        source,
                    })?,
                )
            }
            None => None,
        };
        if cfg.plaintext_off_loopback() {
            warn!(listen = %cfg.listen, "the AMI gateway listens without TLS where other hosts reach it ([ami] allow_plaintext = true): client secrets and call events cross the network in clear text; add tls_cert and tls_key");
        }
        let running = self.running.as_ref().map(|r| &r.listener);
        let listener = bind_changed("ami.listen", cfg.listen, running).await?;
        let gateway = match self.running {
            Some(_) => None,
            None => Some(Gateway::new(self.ctx.clone(), tls.clone()).await),
        };
        Ok(Prepared {
            config,
            tls,
            listener,
            gateway,
        })
    }

    fn commit(&mut self, prepared: Prepared, host: &Host) {
        let wanted = prepared.config.is_some();
        self.ctx.config.store(prepared.config.map(Arc::new));
        match (prepared.listener, wanted) {
            (Some(listener), _) => self.start(listener, prepared.tls, prepared.gateway, host),
            (None, true) => {
                if let Some(ami) = &self.running {
                    ami.gateway.set_tls(prepared.tls);
                }
            }
            (None, false) => {
                if let Some(old) = self.running.take() {
                    info!(addr = %old.listener.addr, "closing the AMI gateway ([ami] removed)");
                    old.listener.stop.cancel();
                    old.sessions.cancel();
                }
            }
        }
    }

    fn stop(&mut self) {
        if let Some(ami) = &self.running {
            ami.listener.stop.cancel();
            ami.sessions.cancel();
        }
    }
}
