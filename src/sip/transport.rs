//! The client-facing listeners: SIP over TLS (RFC 3261 §26, RFC 5630) and SIP over secure
//! WebSocket (RFC 7118). There is no plain UDP or TCP listener towards clients, by design.
//!
//! A TLS stream is cut into messages by the strict framer; a WebSocket carries one message
//! per WebSocket message. Either way each message goes to [`Edge::from_client`], and what the
//! edge sends back is written by the same task, so a slow client only ever delays itself.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::flow::Kind;
use super::framing::{Frame, StreamFramer};
use super::message::MAX_MESSAGE_BYTES;
use super::proxy::Edge;
use super::ticket::Binding;
use crate::metrics::{ListenerLabels, ResultLabels};

/// The TLS (and WebSocket) handshake must finish within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The WebSocket path, as Asterisk's own (`/ws`).
pub const WS_PATH: &str = "/ws";
/// Bytes read per call; small, because idle connections are what a PBX edge has most of.
const READ_CHUNK: usize = 4096;

/// The WebSocket limits of the SIP listener: one SIP message per WebSocket message, so a
/// message or frame larger than the largest SIP message is refused by the WebSocket layer
/// before it is buffered. Public for the fuzz target that reads WebSocket streams.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_CHUNK)
        .write_buffer_size(0)
        .max_write_buffer_size(256 * 1024)
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES))
}

/// Counts a connection for `max_connections`; released on drop.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts a connection against its address's share; released on drop.
struct IpSlot {
    map: Arc<Mutex<HashMap<String, usize>>>,
    key: String,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

fn try_ip_slot(map: &Arc<Mutex<HashMap<String, usize>>>, ip: IpAddr, max: usize) -> Option<IpSlot> {
    let key = super::guards::ban_key(ip);
    let mut held = map.lock().unwrap_or_else(|e| e.into_inner());
    let n = held.entry(key.clone()).or_insert(0);
    if *n >= max {
        return None;
    }
    *n += 1;
    Some(IpSlot {
        map: map.clone(),
        key,
    })
}

fn try_slot(count: &Arc<AtomicUsize>, max: usize) -> Option<Slot> {
    count
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .ok()
        .map(|_| Slot(count.clone()))
}

/// Accepts clients on `listener` until `stop`; their connections end with `conns`.
pub async fn serve(
    edge: Arc<Edge>,
    kind: Kind,
    listener: TcpListener,
    tracker: TaskTracker,
    stop: CancellationToken,
    conns: CancellationToken,
) {
    let addr = listener.local_addr().ok();
    info!(listen = ?addr, transport = kind.name(), "SIP edge listening");
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "SIP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let own = stream.local_addr().is_ok_and(|l| l.ip() == peer.ip());
        if !own && edge.bans.banned(peer.ip()).is_some() {
            debug!(%peer, "closing a connection from a banned address");
            continue;
        }
        let edge = edge.clone();
        let end = conns.child_token();
        tracker.spawn(async move { connection(edge, kind, stream, peer, end).await });
    }
    info!(transport = kind.name(), "SIP edge stopped accepting");
}

async fn connection(
    edge: Arc<Edge>,
    kind: Kind,
    stream: TcpStream,
    peer: SocketAddr,
    end: CancellationToken,
) {
    let Some(cfg) = edge.ctx.config.load().as_ref().map(|c| c.sip.clone()) else {
        return;
    };
    let labels = ListenerLabels {
        listener: kind.name(),
    };
    let slots = try_slot(&edge.connections, cfg.max_connections).and_then(|s| {
        try_ip_slot(&edge.per_ip, peer.ip(), cfg.max_connections_per_ip).map(|i| (s, i))
    });
    let Some(_slots) = slots else {
        debug!(%peer, "SIP connection refused: max_connections or max_connections_per_ip reached");
        edge.ctx
            .metrics
            .connections_refused
            .get_or_create(&ListenerLabels { listener: "sip" })
            .inc();
        return;
    };
    let local = stream.local_addr().unwrap_or(peer);
    let _ = stream.set_nodelay(true);
    let tls = match kind {
        Kind::Tls => edge.tls.load_full(),
        Kind::Wss => edge.wss_tls.load_full(),
    };
    let Some(tls) = tls else { return };
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(s)) => s,
        _ => {
            debug!(%peer, "SIP TLS handshake failed");
            edge.ctx
                .metrics
                .tls_handshake_failures
                .get_or_create(&ListenerLabels { listener: "sip" })
                .inc();
            return;
        }
    };
    let gauge = edge
        .ctx
        .metrics
        .sip_connections
        .get_or_create(&labels)
        .clone();
    gauge.inc();
    match kind {
        Kind::Tls => tls_client(&edge, stream, peer, local, end, &cfg).await,
        Kind::Wss => ws_client(&edge, stream, peer, local, end, &cfg).await,
    }
    gauge.dec();
}

/// SIP over TLS: framed by Content-Length; a framing error closes the connection (the stream
/// cannot be resynchronised safely).
async fn tls_client<S>(
    edge: &Arc<Edge>,
    stream: S,
    peer: SocketAddr,
    local: SocketAddr,
    end: CancellationToken,
    cfg: &super::config::SipConfig,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (flow, mut rx) = edge.flows.add(Kind::Tls, peer, local, None, end.clone());
    let (mut rd, mut wr) = tokio::io::split(stream);
    let writer_end = end.clone();
    let writer = tokio::spawn(async move {
        loop {
            let msg = tokio::select! {
                _ = writer_end.cancelled() => break,
                m = rx.recv() => match m { Some(m) => m, None => break },
            };
            let write = tokio::time::timeout(HANDSHAKE_TIMEOUT, wr.write_all(&msg)).await;
            if !matches!(write, Ok(Ok(()))) {
                writer_end.cancel();
                break;
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), wr.shutdown()).await;
    });
    let mut framer = StreamFramer::new();
    let mut buf = vec![0u8; READ_CHUNK];
    let idle = cfg.idle_timeout;
    let unproven_until = Instant::now() + cfg.auth_timeout;
    // The edge's own timeouts end the connection as surely as a ban does.
    let mut timed_out = false;
    'read: loop {
        // Until Asterisk accepts something from it, a connection lives `auth_timeout` at
        // most, however chatty; afterwards only silence for `idle` ends it.
        let wait = if flow.proven() {
            idle
        } else {
            unproven_until.saturating_duration_since(Instant::now())
        };
        let n = tokio::select! {
            _ = end.cancelled() => break,
            r = tokio::time::timeout(wait, rd.read(&mut buf)) => match r {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => n,
                // Proven while we waited on the shorter deadline: wait again, now for `idle`.
                Err(_) if flow.proven() && wait < idle => continue 'read,
                Err(_) if flow.proven() => {
                    debug!(%peer, "closing an idle SIP connection");
                    timed_out = true;
                    break
                }
                Err(_) => {
                    debug!(%peer, "closing a SIP connection Asterisk never accepted anything from");
                    timed_out = true;
                    break
                }
            },
        };
        if !flow.proven() && Instant::now() >= unproven_until {
            timed_out = true;
            break;
        }
        framer.push(&buf[..n]);
        loop {
            // Closed while handling this read (banned, not reading): judge nothing more.
            if end.is_cancelled() {
                break 'read;
            }
            match framer.next() {
                Ok(Some(Frame::Message(m))) => edge.from_client(&flow, &m),
                // RFC 5626 §4.4.1: a double-CRLF ping gets a single-CRLF pong.
                Ok(Some(Frame::Ping)) => {
                    flow.send(Bytes::from_static(b"\r\n"));
                }
                Ok(None) => break,
                Err(e) => {
                    debug!(%peer, error = %e, "unframeable SIP stream; closing");
                    edge.ctx
                        .metrics
                        .sip_client_messages
                        .get_or_create(&ResultLabels { result: "invalid" })
                        .inc();
                    break 'read;
                }
            }
        }
    }
    // Cancelled before the loop ended, or timed out: the edge closed it (ban, shutdown, a
    // client not reading or silent too long); otherwise the phone went away (or broke its
    // stream), and may come back to send its BYE itself.
    let by_edge = timed_out || end.is_cancelled();
    end.cancel();
    edge.connection_ended(&flow, by_edge);
    edge.flows.remove(flow.id);
    let _ = writer.await;
}

/// Why a WebSocket upgrade was refused (metrics label and HTTP answer).
fn refuse(status: u16, reason: &'static str) -> ErrorResponse {
    let mut resp = ErrorResponse::new(Some(format!("{reason}\n")));
    *resp.status_mut() =
        axum::http::StatusCode::from_u16(status).unwrap_or(axum::http::StatusCode::FORBIDDEN);
    resp
}

/// What the upgrade request must carry: our path, an allowed `Origin`, the `sip`
/// subprotocol and an unused ticket.
fn judge_upgrade(
    edge: &Edge,
    req: &Request,
    origins: &[String],
) -> Result<Binding, (u16, &'static str)> {
    if req.uri().path() != WS_PATH {
        return Err((404, "path"));
    }
    let origin = req
        .headers()
        .get("origin")
        .and_then(|v| v.to_str().ok())
        .ok_or((403, "origin"))?;
    if !origins.iter().any(|o| o.eq_ignore_ascii_case(origin)) {
        return Err((403, "origin"));
    }
    let sip = req
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("sip"));
    if !sip {
        return Err((400, "protocol"));
    }
    let ticket = req
        .uri()
        .query()
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|kv| kv.strip_prefix("ticket="))
        .ok_or((401, "ticket"))?;
    edge.ctx
        .tickets
        .redeem(ticket, Instant::now())
        .ok_or((401, "ticket"))
}

// The upgrade callback's error type is tungstenite's HTTP response, whatever its size.
#[allow(clippy::result_large_err)]
async fn ws_client<S>(
    edge: &Arc<Edge>,
    stream: S,
    peer: SocketAddr,
    local: SocketAddr,
    end: CancellationToken,
    cfg: &super::config::SipConfig,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut bound: Option<Binding> = None;
    let mut refusal: Option<&'static str> = None;
    let callback =
        |req: &Request, mut resp: Response| match judge_upgrade(edge, req, &cfg.wss_origins) {
            Ok(binding) => {
                bound = Some(binding);
                resp.headers_mut().insert(
                    "sec-websocket-protocol",
                    axum::http::HeaderValue::from_static("sip"),
                );
                Ok(resp)
            }
            Err((status, reason)) => {
                refusal = Some(reason);
                Err(refuse(status, reason))
            }
        };
    let config = ws_config();
    let upgraded = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config)),
    )
    .await;
    let ws = match upgraded {
        Ok(Ok(ws)) => ws,
        _ => {
            let reason = refusal.unwrap_or("handshake");
            debug!(%peer, reason, "SIP WebSocket upgrade refused");
            edge.ctx
                .metrics
                .sip_ws_refusals
                .get_or_create(&ResultLabels { result: reason })
                .inc();
            return;
        }
    };
    let Some(binding) = bound else { return };
    // The ticket proved the session when it was minted; it must still hold now.
    if !edge.binding_alive(&binding).await {
        edge.ctx
            .metrics
            .sip_ws_refusals
            .get_or_create(&ResultLabels { result: "session" })
            .inc();
        let mut ws = ws;
        let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
        return;
    }
    info!(%peer, user = %binding.user, extension = %binding.extension, "SIP WebSocket opened");
    let (flow, mut rx) = edge
        .flows
        .add(Kind::Wss, peer, local, Some(binding), end.clone());
    let (mut sink, mut source) = ws.split();
    loop {
        tokio::select! {
            _ = end.cancelled() => break,
            out = rx.recv() => {
                let Some(out) = out else { break };
                let msg = match String::from_utf8(out.to_vec()) {
                    Ok(text) => WsMessage::text(text),
                    Err(_) => WsMessage::binary(out),
                };
                let sent = tokio::time::timeout(HANDSHAKE_TIMEOUT, sink.send(msg)).await;
                if !matches!(sent, Ok(Ok(()))) {
                    break;
                }
            }
            got = tokio::time::timeout(cfg.idle_timeout, source.next()) => match got {
                Ok(Some(Ok(WsMessage::Text(t)))) => edge.from_client(&flow, t.as_bytes()),
                Ok(Some(Ok(WsMessage::Binary(b)))) => edge.from_client(&flow, &b),
                Ok(Some(Ok(WsMessage::Close(_)))) | Ok(Some(Err(_))) | Ok(None) => break,
                Ok(Some(Ok(_))) => {
                    // Pings are answered by the library on the next write; make it happen now.
                    let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, sink.flush()).await;
                }
                Err(_) => { debug!(%peer, "closing an idle SIP WebSocket"); break }
            },
        }
    }
    let by_edge = end.is_cancelled();
    end.cancel();
    edge.connection_ended(&flow, by_edge);
    edge.flows.remove(flow.id);
    let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
}
