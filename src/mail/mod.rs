//! Outgoing mail (the emailed second factor) through `[smtp]` with lettre over rustls.
//! `starttls = "required"` refuses to send unless the server upgrades the connection with a
//! certificate we trust (the system's CAs plus `ca_file`); the SMTP password comes from the
//! vault and never appears in errors.

pub mod config;

use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use self::config::{SmtpConfig, StartTls};
use crate::vault::Vault;

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("bad address: {0}")]
    Address(String),
    #[error("[smtp] ca_file {0}: {1}")]
    Ca(String, String),
    #[error("the SMTP password (vault secret {0}) is unavailable")]
    Password(String),
    #[error("TLS setup for SMTP failed: {0}")]
    Tls(String),
    #[error("building the message failed: {0}")]
    Build(String),
    /// The server refused, was unreachable, timed out, or could not do STARTTLS when required.
    #[error("sending through {server} failed: {reason}")]
    Send { server: String, reason: String },
}

/// Sends a plain-text message.
pub async fn send(
    config: &SmtpConfig,
    vault: &Vault,
    to: &str,
    subject: &str,
    body: String,
) -> Result<(), MailError> {
    let from = config
        .from
        .parse()
        .map_err(|_| MailError::Address(config.from.clone()))?;
    let to_addr = to.parse().map_err(|_| MailError::Address(to.to_string()))?;
    let message = Message::builder()
        .from(from)
        .to(to_addr)
        .subject(subject)
        .header(ContentType::TEXT_PLAIN)
        .body(body)
        .map_err(|e| MailError::Build(e.to_string()))?;

    let mut params = TlsParameters::builder(config.host.clone());
    if let Some(ca) = &config.ca_file {
        let pem = std::fs::read(ca)
            .map_err(|e| MailError::Ca(ca.display().to_string(), e.to_string()))?;
        let cert = Certificate::from_pem(&pem)
            .map_err(|e| MailError::Ca(ca.display().to_string(), e.to_string()))?;
        params = params.add_root_certificate(cert);
    }
    let params = params
        .build_rustls()
        .map_err(|e| MailError::Tls(e.to_string()))?;
    let tls = match config.starttls {
        StartTls::Required => Tls::Required(params),
        StartTls::Opportunistic => Tls::Opportunistic(params),
        StartTls::None => Tls::None,
    };
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&config.host)
        .port(config.port)
        .tls(tls)
        .timeout(Some(config.timeout));
    if !config.username.is_empty() {
        let password = vault
            .get(&config.password_secret)
            .await
            .map_err(|_| MailError::Password(config.password_secret.clone()))?;
        let password = String::from_utf8(password.to_vec())
            .map_err(|_| MailError::Password(config.password_secret.clone()))?;
        builder = builder.credentials(Credentials::new(config.username.clone(), password));
    }
    let server = format!("{}:{}", config.host, config.port);
    builder
        .build()
        .send(message)
        .await
        .map(|_| ())
        .map_err(|e| MailError::Send {
            server,
            reason: e.to_string(),
        })
}
