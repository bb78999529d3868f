//! The accept loop shared by the HTTP listeners (the API and redirect listeners of `web`, the
//! realtime listener): connection limit, TLS handshake with a timeout, hyper with header limits
//! and timeouts, and graceful drain on shutdown.
//!
//! It sits below every feature that serves HTTP, so it takes what it needs as plain values: the
//! limits and metrics all listeners share ([`Httpd`]), and per listener a router, optional TLS
//! and an optional [`Shortcut`] ([`Endpoint`]).

pub mod idle;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use axum::response::Response;
use axum::Router;
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::{debug, info, warn};

use crate::metrics::{ListenerLabels, Metrics};
use crate::net::Peer;
use idle::{Activity, Tracked};

/// Largest request head (request line + headers) hyper buffers; 16 KiB fits any browser or
/// nginx `auth_request` subrequest with cookies, and bounds memory per slow client.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// A TLS handshake must finish within this; half-open handshakes are a cheap DoS otherwise.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 streams per connection.
const MAX_H2_STREAMS: u32 = 64;
/// Bytes queued per HTTP/2 stream before the body stream is asked for more.
const H2_SEND_BUF: usize = 128 * 1024;

/// The connection limits (`[http]`'s, which apply to every listener) and the drain time.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    /// How long open connections may finish after the listener stops.
    pub shutdown_grace: Duration,
}

impl Limits {
    /// The limits without an `[http]` section (the realtime listener works without one).
    pub fn defaults(shutdown_grace: Duration) -> Limits {
        Limits {
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            shutdown_grace,
        }
    }
}

/// What every HTTP listener of the process shares.
/// Whether a new connection from this address is closed at once (a banned address).
pub type Gate = Arc<dyn Fn(std::net::IpAddr) -> bool + Send + Sync>;

pub struct Httpd {
    /// Read per accepted connection, so a reload applies to the next accept without rebinding.
    limits: ArcSwap<Limits>,
    metrics: Metrics,
    /// Set once by the daemon: the ban list, which lives above this layer.
    gate: std::sync::OnceLock<Gate>,
}

impl std::fmt::Debug for Httpd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Httpd").finish_non_exhaustive()
    }
}

impl Httpd {
    pub fn new(limits: Limits, metrics: Metrics) -> Httpd {
        Httpd {
            limits: ArcSwap::from_pointee(limits),
            metrics,
            gate: std::sync::OnceLock::new(),
        }
    }

    pub fn set_limits(&self, limits: Limits) {
        self.limits.store(Arc::new(limits));
    }

    /// Closes every new connection `gate` refuses (set once; later calls are ignored).
    pub fn set_gate(&self, gate: Gate) {
        let _ = self.gate.set(gate);
    }

    fn refuses(&self, ip: std::net::IpAddr) -> bool {
        self.gate.get().is_some_and(|g| g(ip))
    }
}

/// A request answered before the router and its layers (see `web`'s forward-auth check).
pub trait Shortcut: Send + Sync + 'static {
    /// The answer to `req`, or `None` to hand it to the router.
    fn answer<'a>(
        &'a self,
        req: &'a Request<Incoming>,
        tls: bool,
    ) -> Option<Pin<Box<dyn Future<Output = Response> + Send + 'a>>>;
}

/// One listener: its name (logs and metrics), what it serves and how.
#[derive(Clone)]
pub struct Endpoint {
    pub name: &'static str,
    /// Swapped on reload; a connection keeps the router it started with.
    pub router: Arc<ArcSwap<Router>>,
    /// Read per accepted connection, so new certificates apply from the next handshake;
    /// `None` (or an empty slot): plain HTTP.
    pub tls: Option<Arc<ArcSwapOption<rustls::ServerConfig>>>,
    pub shortcut: Option<Arc<dyn Shortcut>>,
}

/// Serves `listener` until `shutdown`, then stops accepting and drains open connections for
/// at most the grace period.
pub async fn serve(
    httpd: Arc<Httpd>,
    endpoint: Endpoint,
    listener: TcpListener,
    shutdown: CancellationToken,
) {
    let name = endpoint.name;
    let labels = ListenerLabels { listener: name };
    // A counter rather than a semaphore, so a reload that changes max_connections applies to
    // the next accept without rebinding.
    let open = Arc::new(AtomicUsize::new(0));
    let graceful = GracefulShutdown::new();
    let local = listener.local_addr().ok();
    info!(listener = name, addr = ?local, "listening");

    loop {
        let (stream, addr) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // This host connecting to its own address is never refused (a ban of the /64 the
        // PBX shares with the office's phones must not cut it off from itself).
        let own = stream.local_addr().is_ok_and(|l| l.ip() == addr.ip());
        if !own && httpd.refuses(addr.ip()) {
            debug!(listener = name, %addr, "closing a connection from a banned address");
            continue;
        }
        let limits = httpd.limits.load_full();
        if open.load(Ordering::Acquire) >= limits.max_connections {
            httpd
                .metrics
                .connections_refused
                .get_or_create(&labels)
                .inc();
            debug!(listener = name, %addr, "connection limit reached; closing");
            continue;
        }
        let slot = Slot::take(&open);
        let _ = stream.set_nodelay(true);
        httpd.metrics.connections.get_or_create(&labels).inc();
        let tls = endpoint.tls.as_ref().and_then(|t| t.load_full());
        let ctx = Conn {
            idle_timeout: limits.idle_timeout,
            metrics: httpd.metrics.clone(),
            router: endpoint.router.load_full(),
            shortcut: endpoint.shortcut.clone(),
            builder: builder(&limits),
            watcher: graceful.watcher(),
            labels: labels.clone(),
            addr,
        };
        let (metrics, labels_c) = (httpd.metrics.clone(), labels.clone());
        let idle = limits.idle_timeout;
        tokio::spawn(async move {
            metrics.connections_open.get_or_create(&labels_c).inc();
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
            metrics.connections_open.get_or_create(&labels_c).dec();
            drop(slot);
        });
    }

    drop(listener);
    let grace = httpd.limits.load().shutdown_grace;
    info!(listener = name, "draining connections");
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        warn!(listener = name, grace = ?grace, "connections still open after the grace period; closing them");
    }
}

/// Builder with the current limits; made per connection so reloads apply at once.
fn builder(limits: &Limits) -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
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

struct Conn {
    /// A connection that moves no byte for this long is closed.
    idle_timeout: Duration,
    metrics: Metrics,
    router: Arc<Router>,
    shortcut: Option<Arc<dyn Shortcut>>,
    builder: Builder<TokioExecutor>,
    watcher: Watcher,
    labels: ListenerLabels,
    addr: SocketAddr,
}

impl Conn {
    fn handshake_failed(&self, reason: &str) {
        self.metrics
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
        let shortcut = self.shortcut.clone();
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(peer);
            let router = router.clone();
            let shortcut = shortcut.clone();
            async move {
                if let Some(answer) = shortcut.as_ref().and_then(|s| s.answer(&req, tls)) {
                    return Ok(answer.await);
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
