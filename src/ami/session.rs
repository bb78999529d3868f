//! One AMI client connection: TLS (optional), the banner, the login phase ([`super::login`]),
//! then the relay to the client's own Asterisk session ([`super::relay`]). Owns the client's
//! output queue and its writer, and closes the connection however the session ends.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::codec::{ClientFramer, Message};
use super::login::login;
use super::policy::ClientPolicy;
use super::relay::relay;
use super::upstream::Upstream;
use super::{try_slot, Gateway};
use crate::config::AmiConfig;

const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes handed to one write to the client at most (coalesced small messages).
const WRITE_BATCH: usize = 64 << 10;
/// A write to the client that makes no progress for this long ends the session (Asterisk's
/// `writetimeout` is 100 ms; the output queue absorbs bursts, this catches a reader that
/// stopped altogether).
pub(super) const WRITE_STALL: Duration = Duration::from_secs(10);
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

/// The client's output queue; overflowing it ends the session (Asterisk drops slow readers
/// too, rather than buffering without bound).
#[derive(Clone)]
pub(super) struct Output {
    tx: mpsc::UnboundedSender<Bytes>,
    queued: Arc<AtomicUsize>,
    /// Small until login (nothing legitimate is large before it), `max_output_bytes` after.
    limit: Arc<AtomicUsize>,
}

#[derive(Debug)]
pub(super) struct Overflow;

impl Output {
    pub(super) fn send(&self, bytes: impl Into<Bytes>) -> Result<(), Overflow> {
        let bytes = bytes.into();
        let n = bytes.len();
        if self.queued.fetch_add(n, Ordering::AcqRel) + n > self.limit.load(Ordering::Acquire) {
            return Err(Overflow);
        }
        self.tx.send(bytes).map_err(|_| Overflow)
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut w: W,
    mut rx: mpsc::UnboundedReceiver<Bytes>,
    queued: Arc<AtomicUsize>,
) {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    while let Some(first) = rx.recv().await {
        // Small pieces waiting together go out in one write; a lone piece is written as is.
        let mut next = rx.try_recv().ok();
        let written = if next.is_none() {
            if !matches!(timeout(WRITE_STALL, w.write_all(&first)).await, Ok(Ok(()))) {
                return;
            }
            first.len()
        } else {
            batch.clear();
            batch.extend_from_slice(&first);
            while let Some(more) = next.take() {
                batch.extend_from_slice(&more);
                if batch.len() < WRITE_BATCH {
                    next = rx.try_recv().ok();
                }
            }
            if !matches!(timeout(WRITE_STALL, w.write_all(&batch)).await, Ok(Ok(()))) {
                return;
            }
            batch.len()
        };
        if !matches!(timeout(WRITE_STALL, w.flush()).await, Ok(Ok(()))) {
            return;
        }
        queued.fetch_sub(written, Ordering::AcqRel);
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
        gw.app
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
    let tls = gw.tls.load_full();
    match tls {
        Some(tls) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(tls);
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(s)) => client(gw, s, peer, stop, cfg, unauth).await,
                _ => {
                    debug!(%peer, "AMI TLS handshake failed");
                    gw.app
                        .metrics
                        .tls_handshake_failures
                        .get_or_create(&crate::metrics::ListenerLabels { listener: "ami" })
                        .inc();
                }
            }
        }
        None => client(gw, stream, peer, stop, cfg, unauth).await,
    }
}

/// What the login phase ended with.
pub(super) struct Accepted {
    pub(super) policy: ClientPolicy,
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
    peer: SocketAddr,
    stop: CancellationToken,
    cfg: AmiConfig,
    unauth: super::Slot<'_>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut rd, wr) = tokio::io::split(stream);
    let (tx, rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let out = Output {
        tx,
        queued: queued.clone(),
        limit: Arc::new(AtomicUsize::new(UNAUTHENTICATED_OUTPUT)),
    };
    let mut writer = tokio::spawn(write_loop(wr, rx, queued));
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
        out.limit.store(cfg.max_output_bytes, Ordering::Release);
        let policy = accepted.policy.clone();
        gw.app.metrics.ami_sessions.inc();
        info!(client = %policy.name, %peer, "AMI client logged in");
        let (id, end) = gw.register(&policy.name, policy.updated_at, &stop);
        let why = relay(&gw, &cfg, (rd, framer), &out, peer, *accepted, end).await;
        gw.unregister(id);
        gw.app.metrics.ami_sessions.dec();
        info!(client = %policy.name, %peer, reason = why, "AMI client session ended");
    }
    drop(out);
    // The writer ends once the queue is drained; a client that stopped reading could hold it
    // forever (and with it the socket and the queued bytes), so it is cut off.
    if tokio::time::timeout(Duration::from_secs(5), &mut writer)
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
