//! One AMI client connection: TLS (optional), the banner, the login phase ([`super::login`]),
//! then the relay to the client's own Asterisk session ([`super::relay`]). Owns the client's
//! output queue and its writer, and closes the connection however the session ends.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::codec::{ClientFramer, Message, MAX_UPSTREAM_MESSAGE};
use super::config::AmiConfig;
use super::login::login;
use super::policy::ClientPolicy;
use super::relay::relay;
use super::upstream::Upstream;
use super::{try_slot, Gateway};

const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes handed to one write to the client at most (coalesced small messages).
const WRITE_BATCH: usize = 64 << 10;
/// Output allowed to pile up before login: answers to a flood of junk stay small.
const UNAUTHENTICATED_OUTPUT: usize = 64 << 10;
/// Messages a connection may send before logging in; no client needs more than a few.
pub(super) const MAX_MESSAGES_BEFORE_LOGIN: usize = 64;

/// An answer as Asterisk formats it (`astman_send_response_full`).
pub(super) fn answer(response: &str, action_id: Option<&[u8]>, message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + message.len());
    out.extend_from_slice(b"Response: ");
    out.extend_from_slice(response.as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(id) = action_id {
        out.extend_from_slice(b"ActionID: ");
        out.extend_from_slice(id);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Message: ");
    out.extend_from_slice(message.as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    out
}

/// When a write to the client last moved bytes into its socket. Asterisk's `writetimeout`
/// counts time without progress, not the time a large write takes, and with TLS only the
/// socket underneath shows whether the client reads.
pub(super) struct Progress {
    base: std::time::Instant,
    /// Milliseconds since `base`.
    last: AtomicU64,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            base: std::time::Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    fn mark(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Release);
    }

    fn last(&self) -> tokio::time::Instant {
        let at = self.base + Duration::from_millis(self.last.load(Ordering::Acquire));
        tokio::time::Instant::from_std(at)
    }
}

/// The client's TCP socket, noting every write that moved bytes (see [`Progress`]).
pub(super) struct Watched<S> {
    inner: S,
    progress: Arc<Progress>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.progress.mark();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Why the writer stopped, when it stopped on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WriterEnd {
    /// The client accepted no bytes for `write_timeout`.
    Stalled,
    /// The socket failed (the client went away).
    Failed,
}

/// What the output queue's two ends share.
struct Queue {
    queued: AtomicUsize,
    /// Small until login (nothing legitimate is large before it); after login a safety bound
    /// well above `max_output_bytes`, which flow control keeps the queue under.
    limit: AtomicUsize,
    /// Where reading from Asterisk resumes (half of `max_output_bytes`).
    low_water: AtomicUsize,
    /// Signalled by the writer when the queue drops to `low_water`.
    drained: Notify,
    ended: OnceLock<WriterEnd>,
}

/// The client's output queue. Before login, overflowing it ends the session (answers to junk
/// must not pile up); after login its one producer, the relay from Asterisk, waits for room
/// instead ([`Output::room`]), so a client slower than Asterisk slows its own Asterisk session
/// down exactly as a direct reader would.
#[derive(Clone)]
pub(super) struct Output {
    tx: mpsc::UnboundedSender<Bytes>,
    q: Arc<Queue>,
}

#[derive(Debug)]
pub(super) struct Overflow;

impl Output {
    pub(super) fn send(&self, bytes: impl Into<Bytes>) -> Result<(), Overflow> {
        let bytes = bytes.into();
        let n = bytes.len();
        if self.q.queued.fetch_add(n, Ordering::AcqRel) + n > self.q.limit.load(Ordering::Acquire) {
            return Err(Overflow);
        }
        self.tx.send(bytes).map_err(|_| Overflow)
    }

    /// Bytes queued and not yet written to the client.
    pub(super) fn queued(&self) -> usize {
        self.q.queued.load(Ordering::Acquire)
    }

    /// Returns once the queue is at or below its low-water mark, or the writer has ended.
    pub(super) async fn room(&self) {
        loop {
            let drained = self.q.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if self.queued() <= self.q.low_water.load(Ordering::Acquire) {
                return;
            }
            tokio::select! {
                _ = &mut drained => {}
                _ = self.tx.closed() => return,
            }
        }
    }

    /// Resolves when the writer has ended (the client stalled or went away); says why.
    pub(super) async fn writer_ended(&self) -> WriterEnd {
        self.tx.closed().await;
        self.q.ended.get().copied().unwrap_or(WriterEnd::Failed)
    }

    /// Why the writer ended, if it has.
    pub(super) fn writer_end(&self) -> Option<WriterEnd> {
        self.tx
            .is_closed()
            .then(|| self.q.ended.get().copied().unwrap_or(WriterEnd::Failed))
    }
}

/// Runs `op` (a write or flush to the client) until it completes, or until no byte has moved
/// for `limit` (Asterisk's `writetimeout`, counted from the last progress).
async fn progressing<F>(op: F, progress: &Progress, limit: Duration) -> Result<(), WriterEnd>
where
    F: std::future::Future<Output = std::io::Result<()>>,
{
    progress.mark();
    tokio::pin!(op);
    loop {
        let deadline = progress.last() + limit;
        tokio::select! {
            r = &mut op => return r.map_err(|_| WriterEnd::Failed),
            _ = tokio::time::sleep_until(deadline) => {
                if progress.last() + limit <= tokio::time::Instant::now() {
                    return Err(WriterEnd::Stalled);
                }
            }
        }
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut w: W,
    mut rx: mpsc::UnboundedReceiver<Bytes>,
    q: Arc<Queue>,
    progress: Arc<Progress>,
    limit: Duration,
) {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    while let Some(first) = rx.recv().await {
        // Small pieces waiting together go out in one write; a lone piece is written as is.
        let mut next = rx.try_recv().ok();
        let result = if next.is_none() {
            progressing(w.write_all(&first), &progress, limit)
                .await
                .map(|()| first.len())
        } else {
            batch.clear();
            batch.extend_from_slice(&first);
            while let Some(more) = next.take() {
                batch.extend_from_slice(&more);
                if batch.len() < WRITE_BATCH {
                    next = rx.try_recv().ok();
                }
            }
            progressing(w.write_all(&batch), &progress, limit)
                .await
                .map(|()| batch.len())
        };
        let result = match result {
            Ok(n) => progressing(w.flush(), &progress, limit).await.map(|()| n),
            Err(e) => Err(e),
        };
        match result {
            Ok(written) => {
                let left = q
                    .queued
                    .fetch_sub(written, Ordering::AcqRel)
                    .saturating_sub(written);
                if left <= q.low_water.load(Ordering::Acquire) {
                    q.drained.notify_one();
                }
            }
            Err(end) => {
                let _ = q.ended.set(end);
                return;
            }
        }
    }
    let _ = w.shutdown().await;
}

/// Entry point for one accepted connection.
pub async fn run(
    gw: Arc<Gateway>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    stop: CancellationToken,
) {
    let Some(cfg) = gw.config() else { return };
    let counters = gw.clone();
    let Some(_client) = try_slot(&counters.clients, cfg.max_clients) else {
        debug!(%peer, "AMI connection refused: max_clients reached");
        gw.ctx
            .metrics
            .connections_refused
            .get_or_create(&crate::metrics::ListenerLabels { listener: "ami" })
            .inc();
        return;
    };
    // Asterisk's authlimit: over it, the connection is closed without a banner.
    let Some(unauth) = try_slot(&counters.unauthenticated, cfg.max_unauthenticated) else {
        debug!(%peer, "AMI connection refused: max_unauthenticated reached");
        return;
    };
    let _ = stream.set_nodelay(true);
    let progress = Arc::new(Progress::new());
    let stream = Watched {
        inner: stream,
        progress: progress.clone(),
    };
    let tls = gw.tls.load_full();
    match tls {
        Some(tls) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(tls);
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(s)) => client(gw, s, progress, peer, stop, cfg, unauth).await,
                _ => {
                    debug!(%peer, "AMI TLS handshake failed");
                    gw.ctx
                        .metrics
                        .tls_handshake_failures
                        .get_or_create(&crate::metrics::ListenerLabels { listener: "ami" })
                        .inc();
                }
            }
        }
        None => client(gw, stream, progress, peer, stop, cfg, unauth).await,
    }
}

/// What the login phase ended with.
pub(super) struct Accepted {
    /// The client's policy; the gateway's re-check swaps a changed one in while the session
    /// runs, and the relay reads it for every action.
    pub(super) policy: Arc<ArcSwap<ClientPolicy>>,
    /// The stored client's `credential` (which secret) at login.
    pub(super) credential: i64,
    pub(super) upstream: Upstream,
    pub(super) mask: u32,
    /// Messages the client pipelined after its Login.
    pub(super) rest: VecDeque<Message>,
}

pub(super) enum Login {
    Accepted(Box<Accepted>),
    Close,
}

async fn client<S>(
    gw: Arc<Gateway>,
    stream: S,
    progress: Arc<Progress>,
    peer: SocketAddr,
    stop: CancellationToken,
    cfg: AmiConfig,
    unauth: super::Slot<'_>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut rd, wr) = tokio::io::split(stream);
    let (tx, rx) = mpsc::unbounded_channel();
    let q = Arc::new(Queue {
        queued: AtomicUsize::new(0),
        limit: AtomicUsize::new(UNAUTHENTICATED_OUTPUT),
        low_water: AtomicUsize::new(UNAUTHENTICATED_OUTPUT / 2),
        drained: Notify::new(),
        ended: OnceLock::new(),
    });
    let out = Output { tx, q: q.clone() };
    let mut writer = tokio::spawn(write_loop(wr, rx, q, progress, cfg.write_timeout));
    let banner = format!("{}\r\n", gw.banner.load());
    let _ = out.send(banner.into_bytes());

    let mut framer = ClientFramer::default();
    let deadline = tokio::time::Instant::now() + cfg.auth_timeout;
    let login = tokio::select! {
        _ = stop.cancelled() => Login::Close,
        r = tokio::time::timeout_at(deadline, login(&gw, &cfg, &mut rd, &mut framer, &out, peer)) => {
            r.unwrap_or_else(|_| {
                debug!(%peer, "AMI client did not log in within auth_timeout");
                Login::Close
            })
        }
    };
    drop(unauth);
    if let Login::Accepted(accepted) = login {
        out.q
            .low_water
            .store(cfg.max_output_bytes / 2, Ordering::Release);
        // Flow control keeps the queue under max_output_bytes plus what one read from
        // Asterisk completes; this bound only guards against a bug in it.
        out.q.limit.store(
            cfg.max_output_bytes + MAX_UPSTREAM_MESSAGE + (256 << 10),
            Ordering::Release,
        );
        let name = accepted.policy.load().name.clone();
        gw.ctx.metrics.ami_sessions.inc();
        info!(client = %name, %peer, "AMI client logged in");
        let (id, end) = gw.register(
            &name,
            peer.ip(),
            accepted.policy.clone(),
            accepted.credential,
            &stop,
        );
        let why = relay(&gw, &cfg, (rd, framer), &out, peer, *accepted, end).await;
        gw.unregister(id);
        gw.ctx.metrics.ami_sessions.dec();
        info!(client = %name, %peer, reason = why, "AMI client session ended");
    }
    drop(out);
    // The writer ends once the queue is drained, or by itself when the client accepts nothing
    // for write_timeout; a client that trickles could still hold it (and the socket and the
    // queued bytes) for long, so it is cut off after a bound.
    if tokio::time::timeout(cfg.write_timeout + Duration::from_secs(5), &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
}

pub(super) async fn read_messages<R: AsyncRead + Unpin>(
    rd: &mut R,
    framer: &mut ClientFramer,
    queue: &mut VecDeque<Message>,
) -> bool {
    let mut buf = [0u8; 8192];
    match rd.read(&mut buf).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            let mut out = Vec::new();
            framer.push(&buf[..n], &mut out);
            queue.extend(out);
            true
        }
    }
}

/// Answers Asterisk gives to a message it cannot run, whoever the client is.
pub(super) fn malformed(msg: &Message) -> Option<Vec<u8>> {
    let id = msg.action_id();
    if msg.line_too_long {
        return Some(answer(
            "Error",
            id,
            "Failed to parse message: line too long",
        ));
    }
    if msg.header_loss {
        return Some(answer(
            "Error",
            id,
            "Too many lines in message or allocation failure",
        ));
    }
    if msg.action().is_none() {
        return Some(answer("Error", id, "Missing action in request"));
    }
    None
}

pub(super) fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}
