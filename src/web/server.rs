//! `[http]` as a daemon subsystem: the API listener (TLS when the section names a certificate)
//! and the redirect listener, served by the shared accept loop of [`crate::httpd`].
//!
//! A reload rebuilds both routers (new limits apply to new connections), swaps the certificate
//! (applied from the next handshake) and rebinds only a listener whose address changed.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::response::Response;
use axum::Router;
use hyper::body::Incoming;
use hyper::{Method, Request};
use tokio::net::TcpListener;
use tracing::info;

use crate::app::App;
use crate::config::HttpConfig;
use crate::httpd::{self, Endpoint, Shortcut};
use crate::subsystem::{bind_changed, Host, Running, Subsystem, SubsystemError};
use crate::tls;

/// The `[http]` listeners.
pub struct Http {
    app: Arc<App>,
    api: Arc<ArcSwap<Router>>,
    redirect: Arc<ArcSwap<Router>>,
    main_running: Option<Running>,
    redirect_running: Option<Running>,
}

/// What a new `[http]` needs, bound and loaded.
pub struct Prepared {
    tls: Option<Arc<rustls::ServerConfig>>,
    main: Listen,
    redirect: Listen,
}

/// The plan for one listener.
enum Listen {
    /// Not configured: close what runs.
    Off,
    /// Configured at the address already served.
    Keep,
    /// Configured at a new address, bound here.
    Open(std::net::SocketAddr, TcpListener),
}

async fn plan(
    key: &'static str,
    wanted: Option<std::net::SocketAddr>,
    running: Option<&Running>,
) -> Result<Listen, SubsystemError> {
    let Some(addr) = wanted else {
        return Ok(Listen::Off);
    };
    Ok(match bind_changed(key, addr, running).await? {
        Some(listener) => Listen::Open(addr, listener),
        None => Listen::Keep,
    })
}

impl Http {
    pub fn new(app: Arc<App>) -> Http {
        Http {
            app,
            api: Arc::new(ArcSwap::from_pointee(Router::new())),
            redirect: Arc::new(ArcSwap::from_pointee(Router::new())),
            main_running: None,
            redirect_running: None,
        }
    }

    fn endpoint(&self, main: bool) -> Endpoint {
        if main {
            Endpoint {
                name: "http",
                router: self.api.clone(),
                tls: Some(self.app.http_tls.clone()),
                shortcut: Some(Arc::new(Check(self.app.clone()))),
            }
        } else {
            Endpoint {
                name: "http_redirect",
                router: self.redirect.clone(),
                tls: None,
                shortcut: None,
            }
        }
    }

    fn apply(&mut self, main: bool, listen: Listen, host: &Host) {
        let endpoint = self.endpoint(main);
        let slot = if main {
            &mut self.main_running
        } else {
            &mut self.redirect_running
        };
        let (addr, listener) = match listen {
            Listen::Keep => return,
            Listen::Off => (None, None),
            Listen::Open(addr, listener) => (Some(addr), Some(listener)),
        };
        if let Some(old) = slot.take() {
            info!(listener = endpoint.name, addr = %old.addr, "closing listener (address changed or removed)");
            old.stop.cancel();
        }
        let (Some(addr), Some(listener)) = (addr, listener) else {
            return;
        };
        let stop = host.shutdown.child_token();
        host.tracker.spawn(httpd::serve(
            self.app.httpd.clone(),
            endpoint,
            listener,
            stop.clone(),
        ));
        *slot = Some(Running { addr, stop });
    }
}

impl Subsystem for Http {
    type Config = Option<HttpConfig>;
    type Prepared = Prepared;

    async fn prepare(&self, config: Option<HttpConfig>) -> Result<Prepared, SubsystemError> {
        let Some(http) = config else {
            return Ok(Prepared {
                tls: None,
                main: Listen::Off,
                redirect: Listen::Off,
            });
        };
        let tls = match &http.tls {
            Some(files) => Some(tls::server_config(files, &[b"h2", b"http/1.1"]).map_err(
                |source| SubsystemError::Tls {
                    section: "http",
                    source,
                },
            )?),
            None => None,
        };
        let main = plan("http.listen", Some(http.listen), self.main_running.as_ref()).await?;
        let redirect = plan(
            "http.redirect_listen",
            http.redirect_listen,
            self.redirect_running.as_ref(),
        )
        .await?;
        Ok(Prepared {
            tls,
            main,
            redirect,
        })
    }

    fn commit(&mut self, prepared: Prepared, host: &Host) {
        self.app.http_tls.store(prepared.tls);
        self.api
            .store(Arc::new(super::api_router(self.app.clone())));
        self.redirect
            .store(Arc::new(super::redirect_router(self.app.clone())));
        self.apply(true, prepared.main, host);
        self.apply(false, prepared.redirect, host);
    }

    fn stop(&mut self) {
        for running in [&self.main_running, &self.redirect_running]
            .into_iter()
            .flatten()
        {
            running.stop.cancel();
        }
    }
}

/// `GET /api/v1/auth/check` bypasses the router and its layers: the web tier calls it on every
/// request it serves, it has no body to limit, and its answer is computed from the headers
/// alone. It keeps the same metrics (resolved once) and HSTS.
struct Check(Arc<App>);

impl Shortcut for Check {
    fn answer<'a>(
        &'a self,
        req: &'a Request<Incoming>,
        tls: bool,
    ) -> Option<Pin<Box<dyn Future<Output = Response> + Send + 'a>>> {
        if req.method() != Method::GET || req.uri().path() != super::auth_api::CHECK_PATH {
            return None;
        }
        Some(Box::pin(fast_check(&self.0, req, tls)))
    }
}

async fn fast_check(app: &App, req: &Request<Incoming>, tls: bool) -> Response {
    let started = std::time::Instant::now();
    let mut response = super::auth_api::check_response(app, req.headers(), req.uri()).await;
    if tls {
        response.headers_mut().insert(
            axum::http::header::STRICT_TRANSPORT_SECURITY,
            axum::http::HeaderValue::from_static(super::HSTS),
        );
    }
    app.metrics
        .observe_check_request(response.status(), started.elapsed());
    response
}
