//! The accept loop shared by the HTTP listeners: connection limit, TLS handshake with a
//! timeout, hyper with header limits and timeouts, and graceful drain on shutdown.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::Router;
use hyper::body::Incoming;
use hyper::{Method, Request};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::{debug, info, warn};

use super::idle::{Activity, Tracked};
use crate::app::App;
use crate::metrics::ListenerLabels;
use crate::net::Peer;

/// Largest request head (request line + headers) hyper buffers; 16 KiB fits any browser or
/// nginx `auth_request` subrequest with cookies, and bounds memory per slow client.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// A TLS handshake must finish within this; half-open handshakes are a cheap DoS otherwise.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 streams per connection.
const MAX_H2_STREAMS: u32 = 64;
/// Bytes queued per HTTP/2 stream before the body stream is asked for more.
const H2_SEND_BUF: usize = 128 * 1024;

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Listener {
    /// `[http] listen`: the API, TLS when `[http]` has a certificate.
    Main,
    /// `[http] redirect_listen`: plain HTTP that redirects everything to `public_url`.
    Redirect,
    /// `[realtime] listen`: Asterisk's res_config_curl, plain HTTP on loopback.
    Realtime,
}

impl Listener {
    pub fn name(self) -> &'static str {
        match self {
            Listener::Main => "http",
            Listener::Redirect => "http_redirect",
            Listener::Realtime => "realtime",
        }
    }
}

/// Serves `listener` until `shutdown`, then stops accepting and drains open connections for
/// at most the configured grace period.
pub async fn serve(
    listener: TcpListener,
    kind: Listener,
    app: Arc<App>,
    router: Arc<ArcSwap<Router>>,
    shutdown: CancellationToken,
) {
    let labels = ListenerLabels {
        listener: kind.name(),
    };
    // A counter rather than a semaphore, so a reload that changes max_connections applies to
    // the next accept without rebinding.
    let open = Arc::new(AtomicUsize::new(0));
    let graceful = GracefulShutdown::new();
    let local = listener.local_addr().ok();
    info!(listener = kind.name(), addr = ?local, "listening");

    loop {
        let (stream, addr) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    warn!(listener = kind.name(), error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let config = app.config.load_full();
        let limits = Limits::of(config.http.as_ref());
        if open.load(Ordering::Acquire) >= limits.max_connections {
            app.metrics.connections_refused.get_or_create(&labels).inc();
            debug!(listener = kind.name(), %addr, "connection limit reached; closing");
            continue;
        }
        let slot = Slot::take(&open);
        let _ = stream.set_nodelay(true);
        app.metrics.connections.get_or_create(&labels).inc();
        let tls = match kind {
            Listener::Main => app.http_tls.load_full(),
            Listener::Redirect | Listener::Realtime => None,
        };
        let ctx = Conn {
            idle_timeout: limits.idle_timeout,
            app: app.clone(),
            router: router.load_full(),
            builder: builder(&limits),
            watcher: graceful.watcher(),
            labels: labels.clone(),
            addr,
        };
        let (app_c, labels_c) = (app.clone(), labels.clone());
        let idle = limits.idle_timeout;
        tokio::spawn(async move {
            app_c
                .metrics
                .connections_open
                .get_or_create(&labels_c)
                .inc();
            match tls {
                Some(tls) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
                    match tokio::time::timeout(
                        TLS_HANDSHAKE_TIMEOUT.min(idle),
                        acceptor.accept(stream),
                    )
                    .await
                    {
                        Ok(Ok(stream)) => ctx.run(stream, true).await,
                        Ok(Err(e)) => ctx.handshake_failed(&e.to_string()),
                        Err(_) => ctx.handshake_failed("timed out"),
                    }
                }
                None => ctx.run(stream, false).await,
            }
            app_c
                .metrics
                .connections_open
                .get_or_create(&labels_c)
                .dec();
            drop(slot);
        });
    }

    drop(listener);
    let grace = app.config.load().daemon.shutdown_grace;
    info!(listener = kind.name(), "draining connections");
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        warn!(listener = kind.name(), grace = ?grace, "connections still open after the grace period; closing them");
    }
}

/// The connection limits of `[http]`, which apply to every listener (the realtime listener
/// works without an `[http]` section, with the same defaults).
struct Limits {
    max_connections: usize,
    header_timeout: Duration,
    idle_timeout: Duration,
}

impl Limits {
    fn of(http: Option<&crate::config::HttpConfig>) -> Limits {
        match http {
            Some(h) => Limits {
                max_connections: h.max_connections,
                header_timeout: h.header_timeout,
                idle_timeout: h.idle_timeout,
            },
            None => Limits {
                max_connections: 1024,
                header_timeout: Duration::from_secs(10),
                idle_timeout: Duration::from_secs(60),
            },
        }
    }
}

/// Builder with the current limits; made per connection so reloads apply at once.
fn builder(http: &Limits) -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(http.header_timeout)
        .max_buf_size(MAX_HEADER_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        .max_concurrent_streams(MAX_H2_STREAMS)
        // hyper's default (~400 KiB) queued per stream, times 64 streams, lets one client that
        // reads slowly pin tens of MB with recording downloads.
        .max_send_buf_size(H2_SEND_BUF);
    builder
}

/// One counted open connection; released on drop, whatever path the task takes.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(open: &Arc<AtomicUsize>) -> Slot {
        open.fetch_add(1, Ordering::AcqRel);
        Slot(open.clone())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// `GET /api/v1/auth/check` bypasses the router and its layers: the web tier calls it on every
/// request it serves, it has no body to limit, and its answer is computed from the headers
/// alone. It keeps the same metrics (resolved once) and HSTS.
async fn fast_check(app: &App, req: &Request<Incoming>, tls: bool) -> axum::response::Response {
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

struct Conn {
    /// A connection that moves no byte for this long is closed.
    idle_timeout: Duration,
    app: Arc<App>,
    router: Arc<Router>,
    builder: Builder<TokioExecutor>,
    watcher: Watcher,
    labels: ListenerLabels,
    addr: SocketAddr,
}

impl Conn {
    fn handshake_failed(&self, reason: &str) {
        self.app
            .metrics
            .tls_handshake_failures
            .get_or_create(&self.labels)
            .inc();
        debug!(listener = self.labels.listener, addr = %self.addr, reason, "TLS handshake failed");
    }

    async fn run<IO>(self, io: IO, tls: bool)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let peer = Peer {
            addr: self.addr,
            tls,
        };
        let router = self.router.clone();
        let app = self.app.clone();
        let fast = self.labels.listener == Listener::Main.name();
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(peer);
            let router = router.clone();
            let app = app.clone();
            async move {
                if fast
                    && req.method() == Method::GET
                    && req.uri().path() == super::auth_api::CHECK_PATH
                {
                    return Ok(fast_check(&app, &req, tls).await);
                }
                Router::clone(&router).oneshot(req).await
            }
        });
        let activity = Activity::new();
        let io = Tracked::new(io, activity.clone());
        let conn = self.builder.serve_connection(TokioIo::new(io), service);
        tokio::select! {
            result = self.watcher.watch(conn) => {
                if let Err(e) = result {
                    debug!(listener = self.labels.listener, addr = %self.addr, error = %e, "connection ended with an error");
                }
            }
            _ = activity.expired(self.idle_timeout) => {
                debug!(listener = self.labels.listener, addr = %self.addr, "closing an idle connection");
            }
        }
    }
}
