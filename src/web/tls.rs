//! TLS material: loading a PEM certificate and key into a rustls server config (TLS 1.2 and
//! 1.3 only: rustls implements nothing older), and generating the self-signed pair `init` writes
//! when the configured files are absent.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

use crate::problems::TlsFiles;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificate {path}: {reason}")]
    Cert { path: String, reason: String },
    #[error("cannot read private key {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("certificate {cert} and key {key} do not form a usable pair: {reason}")]
    Pair {
        cert: String,
        key: String,
        reason: String,
    },
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(String),
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// The process-wide crypto provider (aws-lc-rs), installed once before any TLS is used.
pub fn install_provider() {
    // Err only means another call installed it first, which is what we want anyway.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Loads a cert chain + key and builds a server config advertising `alpn`.
pub fn server_config(files: &TlsFiles, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, TlsError> {
    install_provider();
    let cert_path = files.cert.display().to_string();
    let key_path = files.key.display().to_string();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| TlsError::Cert {
            path: cert_path.clone(),
            reason: e.to_string(),
        })?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Cert {
            path: cert_path.clone(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Cert {
            path: cert_path,
            reason: "no CERTIFICATE block found".into(),
        });
    }
    // The key error is generic on purpose: rustls' messages never contain key material, but we
    // keep the reason to the PEM structure only.
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| TlsError::Key {
        path: key_path.clone(),
        reason: e.to_string(),
    })?;
    let mut config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Pair {
            cert: cert_path,
            key: key_path,
            reason: e.to_string(),
        })?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Writes a self-signed ECDSA P-256 certificate for `names` (DNS names or IP literals) and its
/// key (mode 0600). Refuses to overwrite either file.
pub fn write_self_signed(files: &TlsFiles, names: &[String]) -> Result<(), TlsError> {
    let mut params = rcgen::CertificateParams::new(names.to_vec())
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "pbxguard self-signed");
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(825);
    let key = rcgen::KeyPair::generate().map_err(|e| TlsError::Generate(e.to_string()))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    let key_pem = zeroize::Zeroizing::new(key.serialize_pem());
    write_new(&files.key, key_pem.as_bytes(), 0o600)?;
    write_new(&files.cert, cert.pem().as_bytes(), 0o644)?;
    Ok(())
}

fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| TlsError::Write {
        path: path.display().to_string(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(err)?;
    f.write_all(data).and_then(|_| f.sync_all()).map_err(err)
}
