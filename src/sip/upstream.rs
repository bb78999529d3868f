//! The loopback side towards Asterisk: one UDP socket, or (with `upstream_transport = "tcp"`)
//! one outgoing TCP connection for everything we send plus a listener on `upstream_bind` for
//! the connections Asterisk opens to reach phones. Sending never waits: a datagram that
//! finds the socket buffer full is queued (a bounded amount) for a writer task that waits for
//! room, and TCP queues a bounded amount. Phones on TLS or WebSocket do not retransmit, so
//! over UDP the edge does it for them (`transaction`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::config::SipTransport;
use super::framing::{Frame, StreamFramer};

/// Messages queued for the TCP connection to Asterisk before new ones are dropped.
const TCP_QUEUE: usize = 4096;
/// Datagrams queued while the UDP socket's send buffer is full before new ones are dropped.
const UDP_QUEUE: usize = 4096;
/// The largest datagram we read (SIP over UDP on loopback; our messages are far smaller).
const MAX_DATAGRAM: usize = 65_535;

#[derive(Debug)]
enum Link {
    Udp {
        socket: Arc<UdpSocket>,
        tx: mpsc::Sender<Bytes>,
        rx: std::sync::Mutex<Option<mpsc::Receiver<Bytes>>>,
        /// Datagrams waiting in the queue: while any are, new ones queue behind them.
        queued: Arc<AtomicUsize>,
    },
    Tcp {
        tx: mpsc::Sender<Bytes>,
        listener: std::sync::Mutex<Option<TcpListener>>,
        rx: std::sync::Mutex<Option<mpsc::Receiver<Bytes>>>,
    },
}

#[derive(Debug)]
pub struct Upstream {
    link: Link,
    target: SocketAddr,
    local: SocketAddr,
}

impl Upstream {
    /// Binds `bind` (UDP socket or TCP listener).
    pub async fn bind(
        transport: SipTransport,
        bind: SocketAddr,
        target: SocketAddr,
    ) -> std::io::Result<Upstream> {
        match transport {
            SipTransport::Udp => {
                let socket = UdpSocket::bind(bind).await?;
                let local = socket.local_addr()?;
                let (tx, rx) = mpsc::channel(UDP_QUEUE);
                Ok(Upstream {
                    link: Link::Udp {
                        socket: Arc::new(socket),
                        tx,
                        rx: std::sync::Mutex::new(Some(rx)),
                        queued: Arc::default(),
                    },
                    target,
                    local,
                })
            }
            SipTransport::Tcp => {
                let listener = TcpListener::bind(bind).await?;
                let local = listener.local_addr()?;
                let (tx, rx) = mpsc::channel(TCP_QUEUE);
                Ok(Upstream {
                    link: Link::Tcp {
                        tx,
                        listener: std::sync::Mutex::new(Some(listener)),
                        rx: std::sync::Mutex::new(Some(rx)),
                    },
                    target,
                    local,
                })
            }
        }
    }

    /// Our address as it appears in `Via`, `Record-Route` and `Path`.
    pub fn local(&self) -> SocketAddr {
        self.local
    }

    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Whether requests to Asterisk need our retransmissions.
    pub fn is_udp(&self) -> bool {
        matches!(self.link, Link::Udp { .. })
    }

    /// `UDP` or `TCP`, for our `Via`.
    pub fn via_transport(&self) -> &'static str {
        match self.link {
            Link::Udp { .. } => "UDP",
            Link::Tcp { .. } => "TCP",
        }
    }

    pub fn uri_transport(&self) -> &'static str {
        match self.link {
            Link::Udp { .. } => "udp",
            Link::Tcp { .. } => "tcp",
        }
    }

    /// Sends one message to Asterisk; `false` when it had to be dropped.
    pub fn send(&self, msg: Bytes) -> bool {
        match &self.link {
            Link::Udp {
                socket, tx, queued, ..
            } => {
                if queued.load(Ordering::Acquire) == 0 {
                    match socket.try_send_to(&msg, self.target) {
                        Ok(_) => return true,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) => {
                            debug!(error = %e, "dropping a datagram to Asterisk");
                            return false;
                        }
                    }
                }
                queued.fetch_add(1, Ordering::AcqRel);
                if tx.try_send(msg).is_ok() {
                    return true;
                }
                queued.fetch_sub(1, Ordering::AcqRel);
                debug!("the queue towards Asterisk is full; dropping a datagram");
                false
            }
            Link::Tcp { tx, .. } => tx.try_send(msg).is_ok(),
        }
    }

    /// Starts the readers (and for TCP the writer); each complete message from Asterisk is
    /// handed to `deliver`.
    pub fn start(
        self: &Arc<Self>,
        tracker: &TaskTracker,
        stop: CancellationToken,
        deliver: Arc<dyn Fn(Bytes) + Send + Sync>,
    ) {
        match &self.link {
            Link::Udp {
                socket, rx, queued, ..
            } => {
                let rx = rx.lock().unwrap_or_else(|e| e.into_inner()).take();
                if let Some(rx) = rx {
                    tracker.spawn(write_udp(
                        socket.clone(),
                        self.target,
                        rx,
                        queued.clone(),
                        stop.clone(),
                    ));
                }
                tracker.spawn(read_udp(socket.clone(), self.target, stop, deliver));
            }
            Link::Tcp { listener, rx, .. } => {
                let listener = listener.lock().unwrap_or_else(|e| e.into_inner()).take();
                let rx = rx.lock().unwrap_or_else(|e| e.into_inner()).take();
                if let Some(rx) = rx {
                    tracker.spawn(write_tcp(
                        self.target,
                        rx,
                        tracker.clone(),
                        stop.clone(),
                        deliver.clone(),
                    ));
                }
                if let Some(listener) = listener {
                    tracker.spawn(accept_tcp(listener, tracker.clone(), stop, deliver));
                }
            }
        }
    }
}

/// Sends the datagrams that found the socket buffer full, waiting for room for each.
async fn write_udp(
    socket: Arc<UdpSocket>,
    target: SocketAddr,
    mut rx: mpsc::Receiver<Bytes>,
    queued: Arc<AtomicUsize>,
    stop: CancellationToken,
) {
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => return,
            msg = rx.recv() => match msg { Some(m) => m, None => return },
        };
        let sent = tokio::select! {
            _ = stop.cancelled() => return,
            sent = socket.send_to(&msg, target) => sent,
        };
        if let Err(e) = sent {
            debug!(error = %e, "dropping a queued datagram to Asterisk");
        }
        queued.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn read_udp(
    socket: Arc<UdpSocket>,
    target: SocketAddr,
    stop: CancellationToken,
    deliver: Arc<dyn Fn(Bytes) + Send + Sync>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let got = tokio::select! {
            _ = stop.cancelled() => return,
            got = socket.recv_from(&mut buf) => got,
        };
        match got {
            // Only Asterisk's own socket may speak to us here (pjsip sends from its transport's
            // bound address); any other local process is ignored.
            Ok((n, from)) if from == target => {
                if buf[..n].iter().all(|b| matches!(b, b'\r' | b'\n')) {
                    continue;
                }
                deliver(Bytes::copy_from_slice(&buf[..n]));
            }
            Ok((_, from)) => debug!(%from, "ignoring a datagram that is not from Asterisk"),
            // ICMP port unreachable surfaces here on Linux when Asterisk is down.
            Err(e) => {
                debug!(error = %e, "reading from the Asterisk socket");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Keeps one connection to Asterisk for everything we send; reconnects on demand.
async fn write_tcp(
    target: SocketAddr,
    mut rx: mpsc::Receiver<Bytes>,
    tracker: TaskTracker,
    stop: CancellationToken,
    deliver: Arc<dyn Fn(Bytes) + Send + Sync>,
) {
    let mut conn: Option<tokio::net::tcp::OwnedWriteHalf> = None;
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => return,
            msg = rx.recv() => match msg { Some(m) => m, None => return },
        };
        if conn.is_none() {
            match tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(target)).await {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    let (read, write) = stream.into_split();
                    tracker.spawn(read_tcp(read, stop.clone(), deliver.clone()));
                    conn = Some(write);
                }
                _ => {
                    warn!(%target, "cannot connect to Asterisk over TCP; dropping a message");
                    continue;
                }
            }
        }
        if let Some(w) = conn.as_mut() {
            if let Err(e) = w.write_all(&msg).await {
                warn!(error = %e, "writing to Asterisk failed; reconnecting for the next message");
                conn = None;
            }
        }
    }
}

async fn accept_tcp(
    listener: TcpListener,
    tracker: TaskTracker,
    stop: CancellationToken,
    deliver: Arc<dyn Fn(Bytes) + Send + Sync>,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, from)) if from.ip().is_loopback() => {
                let (read, _write) = stream.into_split();
                tracker.spawn(read_tcp(read, stop.clone(), deliver.clone()));
            }
            Ok((_, from)) => {
                debug!(%from, "refusing a non-loopback connection on the upstream side")
            }
            Err(e) => {
                debug!(error = %e, "accept on the upstream side failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn read_tcp(
    mut read: tokio::net::tcp::OwnedReadHalf,
    stop: CancellationToken,
    deliver: Arc<dyn Fn(Bytes) + Send + Sync>,
) {
    let mut framer = StreamFramer::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            _ = stop.cancelled() => return,
            n = read.read(&mut buf) => match n { Ok(0) | Err(_) => return, Ok(n) => n },
        };
        framer.push(&buf[..n]);
        loop {
            match framer.next() {
                Ok(Some(Frame::Message(m))) => deliver(m),
                Ok(Some(Frame::Ping)) => {}
                Ok(None) => break,
                Err(e) => {
                    warn!(error = %e, "unframeable bytes from Asterisk; dropping the connection");
                    return;
                }
            }
        }
    }
}
