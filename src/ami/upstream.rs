//! Sessions with Asterisk's own AMI on loopback: connect, read the banner, log in with the MD5
//! challenge (the secret never crosses the socket), and a pool of ready sessions.

use std::net::SocketAddr;
use std::time::Duration;

use md5::{Digest, Md5};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use zeroize::Zeroizing;

use super::codec::{Reply, UpstreamFramer};

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to Asterisk's AMI at {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("Asterisk's AMI at {0} did not answer in time")]
    Timeout(SocketAddr),
    #[error("Asterisk's AMI closed the connection")]
    Closed,
    #[error("Asterisk's AMI could not be reached a moment ago")]
    Down,
    #[error("reading from Asterisk's AMI: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0} does not look like Asterisk's AMI (banner {1:?})")]
    NotAmi(SocketAddr, String),
    #[error("Asterisk refused pbxguard's login as {user:?} ({message}); check [ami] upstream_username and the vault secret [ami] upstream_secret names")]
    LoginRefused { user: String, message: String },
    #[error(transparent)]
    Frame(#[from] super::codec::UpstreamFrameError),
}

/// One logged-in session with Asterisk, owned by exactly one client at a time.
#[derive(Debug)]
pub struct Upstream {
    pub stream: TcpStream,
    /// Bytes already read past the login exchange (e.g. the FullyBooted event).
    pub framer: UpstreamFramer,
    pub banner: String,
}

pub const BANNER_PREFIX: &str = "Asterisk Call Manager/";

/// `md5(challenge + secret)` in lower-case hex, as `manager.c` compares it.
pub fn md5_key(challenge: &[u8], secret: &[u8]) -> String {
    let mut h = Md5::new();
    h.update(challenge);
    h.update(secret);
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

async fn read_reply(
    stream: &mut TcpStream,
    framer: &mut UpstreamFramer,
    out: &mut Vec<Reply>,
) -> Result<Reply, UpstreamError> {
    loop {
        framer.messages(out)?;
        if !out.is_empty() {
            return Ok(out.remove(0));
        }
        if stream.read_buf(framer.buffer()).await? == 0 {
            return Err(UpstreamError::Closed);
        }
    }
}

async fn read_banner(
    stream: &mut TcpStream,
    framer: &mut UpstreamFramer,
    addr: SocketAddr,
) -> Result<String, UpstreamError> {
    loop {
        if let Some(line) = framer.line() {
            let banner = String::from_utf8_lossy(&line).into_owned();
            if !banner.starts_with(BANNER_PREFIX) || banner.len() > 100 {
                return Err(UpstreamError::NotAmi(addr, banner));
            }
            return Ok(banner);
        }
        if framer.buffer().len() > 200 {
            let seen = String::from_utf8_lossy(&framer.buffer()[..100]).into_owned();
            return Err(UpstreamError::NotAmi(addr, seen));
        }
        if stream.read_buf(framer.buffer()).await? == 0 {
            return Err(UpstreamError::Closed);
        }
    }
}

/// Connects and logs in as `user`, asking Asterisk for the events in `events` (its syntax).
pub async fn connect(
    addr: SocketAddr,
    user: &str,
    secret: &Zeroizing<Vec<u8>>,
    events: &str,
    timeout: Duration,
) -> Result<Upstream, UpstreamError> {
    tokio::time::timeout(timeout, connect_inner(addr, user, secret, events))
        .await
        .map_err(|_| UpstreamError::Timeout(addr))?
}

async fn connect_inner(
    addr: SocketAddr,
    user: &str,
    secret: &Zeroizing<Vec<u8>>,
    events: &str,
) -> Result<Upstream, UpstreamError> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|source| UpstreamError::Connect { addr, source })?;
    stream.set_nodelay(true)?;
    let mut framer = UpstreamFramer::default();
    let banner = read_banner(&mut stream, &mut framer, addr).await?;
    let mut pending = Vec::new();
    stream
        .write_all(b"Action: Challenge\r\nAuthType: MD5\r\nActionID: pbxguard-challenge\r\n\r\n")
        .await?;
    let reply = read_reply(&mut stream, &mut framer, &mut pending).await?;
    let challenge = reply
        .get("Challenge")
        .filter(|c| !c.is_empty())
        .ok_or_else(|| UpstreamError::LoginRefused {
            user: user.to_string(),
            message: "no MD5 challenge offered".into(),
        })?
        .to_vec();
    let key = md5_key(&challenge, secret);
    let login = format!(
        "Action: Login\r\nActionID: pbxguard-login\r\nAuthType: MD5\r\nUsername: {user}\r\nKey: {key}\r\nEvents: {events}\r\n\r\n"
    );
    stream.write_all(login.as_bytes()).await?;
    let reply = read_reply(&mut stream, &mut framer, &mut pending).await?;
    if reply.get("Response") != Some(b"Success") {
        let message = reply
            .get("Message")
            .map(|m| String::from_utf8_lossy(m).into_owned())
            .unwrap_or_default();
        return Err(UpstreamError::LoginRefused {
            user: user.to_string(),
            message,
        });
    }
    // Anything that followed the login reply (FullyBooted) goes back in front of the buffer.
    if !pending.is_empty() {
        let mut again = Vec::new();
        for r in &pending {
            again.extend_from_slice(&r.raw);
        }
        again.extend_from_slice(framer.buffer());
        framer.buffer().clear();
        framer.buffer().extend_from_slice(&again);
    }
    Ok(Upstream {
        stream,
        framer,
        banner,
    })
}

impl Upstream {
    /// Whether a pooled session is still usable: nothing to read and not closed. Asterisk
    /// sends nothing unasked to a session logged in with `Events: off`.
    pub fn is_fresh(&self) -> bool {
        if !self.framer_is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    fn framer_is_empty(&self) -> bool {
        self.framer.pending_is_empty()
    }
}

/// Sends `Events` on a pooled session and consumes the answer.
pub async fn set_events(
    up: &mut Upstream,
    events: &str,
    timeout: Duration,
) -> Result<(), UpstreamError> {
    let action =
        format!("Action: Events\r\nActionID: pbxguard-events\r\nEventMask: {events}\r\n\r\n");
    let exchange = async {
        up.stream.write_all(action.as_bytes()).await?;
        let mut replies = Vec::new();
        loop {
            up.framer.messages(&mut replies)?;
            if let Some(pos) = replies
                .iter()
                .position(|r| r.get("ActionID") == Some(b"pbxguard-events"))
            {
                // Anything else that arrived first (none expected) is dropped with it.
                replies.drain(..=pos);
                return Ok(());
            }
            if up.stream.read_buf(up.framer.buffer()).await? == 0 {
                return Err(UpstreamError::Closed);
            }
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| UpstreamError::Closed)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_key_is_lower_hex_of_challenge_then_secret() {
        // md5("123456789" + "secret")
        assert_eq!(
            md5_key(b"123456789", b"secret"),
            "7ccde16e862dfe7681297713e9e9cadb"
        );
        assert_eq!(md5_key(b"", b""), "d41d8cd98f00b204e9800998ecf8427e");
    }
}
