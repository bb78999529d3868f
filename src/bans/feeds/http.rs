//! One HTTP GET for a feed: a connection of its own (feeds are fetched minutes apart, a pool
//! would hold idle sockets for nothing), TLS with rustls and the system's trusted roots, HTTP/1.1
//! with hyper, a body read up to a limit. Redirects are answers like any other: the caller
//! refuses them. The whole exchange runs under the caller's timeout.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use hyper::body::Body as _;
use hyper::header;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::config::FeedUrl;
use super::FeedError;

/// What came back: the status and the whole body.
#[derive(Debug)]
pub(crate) struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

/// The TLS client configuration, built on first use: reading the system's roots costs a few
/// milliseconds and is only needed by https feeds. A failure is not kept, so roots installed
/// later are found at the next refresh.
#[derive(Default)]
pub(crate) struct Client {
    tls: OnceLock<Arc<rustls::ClientConfig>>,
}

impl Client {
    fn tls(&self) -> Result<Arc<rustls::ClientConfig>, FeedError> {
        if let Some(config) = self.tls.get() {
            return Ok(config.clone());
        }
        let config = client_config().map_err(FeedError::NoRoots)?;
        Ok(self.tls.get_or_init(|| config).clone())
    }

    /// GETs `path` (path and query) from `url`'s host. `path` may carry a secret (APIBAN's
    /// key): it is never part of an error.
    pub async fn get(
        &self,
        url: &FeedUrl,
        path: &str,
        accept: &str,
        max_body: usize,
    ) -> Result<Answer, FeedError> {
        let host = url.origin();
        let stream = connect(url).await?;
        let request = hyper::Request::get(path)
            .header(header::HOST, &url.authority)
            .header(
                header::USER_AGENT,
                concat!("pbxguard/", env!("CARGO_PKG_VERSION")),
            )
            .header(header::ACCEPT, accept)
            .header(header::CONNECTION, "close")
            .body(String::new())
            .map_err(|_| FeedError::Url("the path is not a valid request target".into()))?;
        if url.https {
            let tls = self.tls()?;
            let name = rustls::pki_types::ServerName::try_from(url.host.clone()).map_err(|e| {
                FeedError::Tls {
                    host: host.clone(),
                    reason: e.to_string(),
                }
            })?;
            let stream = tokio_rustls::TlsConnector::from(tls)
                .connect(name, stream)
                .await
                .map_err(|e| FeedError::Tls {
                    host: host.clone(),
                    reason: e.to_string(),
                })?;
            exchange(stream, request, &host, max_body).await
        } else {
            exchange(stream, request, &host, max_body).await
        }
    }
}

fn client_config() -> Result<Arc<rustls::ClientConfig>, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map(|e| e.to_string())
            .unwrap_or_else(|| "none found".into());
        return Err(why);
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Resolves the host and connects to the first address that answers. Plain http must stay
/// on this machine: every address the name resolves to must be loopback.
async fn connect(url: &FeedUrl) -> Result<TcpStream, FeedError> {
    let addrs: Vec<SocketAddr> = match url.host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, url.port)],
        Err(_) => tokio::net::lookup_host((url.host.as_str(), url.port))
            .await
            .map_err(|e| FeedError::Resolve {
                host: url.host.clone(),
                reason: e.to_string(),
            })?
            .collect(),
    };
    if addrs.is_empty() {
        return Err(FeedError::Resolve {
            host: url.host.clone(),
            reason: "no address".into(),
        });
    }
    if !url.https && !addrs.iter().all(crate::net::is_loopback) {
        return Err(FeedError::Insecure {
            host: url.host.clone(),
        });
    }
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(FeedError::Connect {
        host: url.origin(),
        reason: last.map(|e| e.to_string()).unwrap_or_default(),
    })
}

/// Sends `request` on `io` and reads the answer, at most `max_body` bytes of body.
async fn exchange<S>(
    io: S,
    request: hyper::Request<String>,
    host: &str,
    max_body: usize,
) -> Result<Answer, FeedError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let http = |e: hyper::Error| FeedError::Http {
        host: host.to_string(),
        reason: e.to_string(),
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(http)?;
    let work = async move {
        let response = sender.send_request(request).await.map_err(http)?;
        let status = response.status().as_u16();
        let declared = response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max_body as u64) {
            return Err(FeedError::TooLarge { limit: max_body });
        }
        let mut body = response.into_body();
        let mut out = Vec::with_capacity(declared.unwrap_or(0) as usize);
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        {
            let frame = frame.map_err(http)?;
            if let Ok(data) = frame.into_data() {
                if out.len() + data.len() > max_body {
                    return Err(FeedError::TooLarge { limit: max_body });
                }
                out.extend_from_slice(&data);
            }
        }
        Ok(Answer { status, body: out })
    };
    // The connection future drives the socket; the request future reads what it delivers. If
    // the connection ends first without an error, the body already delivered is still read.
    let mut conn = std::pin::pin!(conn);
    let mut work = std::pin::pin!(work);
    tokio::select! {
        answer = &mut work => answer,
        ended = &mut conn => match ended {
            Ok(()) => work.await,
            Err(e) => Err(http(e)),
        },
    }
}
