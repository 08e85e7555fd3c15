//! TLS on the listener (`[server.tls]`): rustls with the ring provider, HTTP/2 and HTTP/1.1
//! offered by ALPN, client certificates required when `client_ca` is set.
//!
//! [`Tls`] owns the current acceptor; [`Tls::reload`] (SIGHUP) re-reads the files and swaps it
//! in for the connections accepted from then on, keeping the listener and every open
//! connection. A reload that fails (a missing or bad file) is logged and the old certificate
//! stays. The handshake itself runs under the connection's first-request deadline (see
//! [`super::serve`]), so a client that never finishes it is closed like a silent one.

use crate::config::TlsSettings;
use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

/// Why a certificate, key or CA could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        key: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse {
        key: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
    #[error("client CA: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

impl TlsError {
    /// The configuration key to blame.
    pub fn key(&self) -> &'static str {
        match self {
            Self::Read { key, .. } | Self::Parse { key, .. } => key,
            Self::Rustls(_) => "server.tls.cert",
            Self::Verifier(_) => "server.tls.client_ca",
        }
    }
}

/// The protocols offered by ALPN, preferred first.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        key,
        path: path.to_path_buf(),
        source,
    })
}

fn certificates(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(key, path)?;
    let parse_error = |message: String| TlsError::Parse {
        key,
        path: path.to_path_buf(),
        message,
    };
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| parse_error(format!("not a PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(parse_error("no PEM certificate in the file".into()));
    }
    Ok(certs)
}

/// The rustls configuration `settings` describe, read from the files now.
pub fn server_config(settings: &TlsSettings) -> Result<ServerConfig, TlsError> {
    let certs = certificates("server.tls.cert", &settings.cert)?;
    let key_bytes = read("server.tls.key", &settings.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| TlsError::Parse {
        key: "server.tls.key",
        path: settings.key.clone(),
        message: format!("not a PEM private key: {e}"),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match &settings.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certificates("server.tls.client_ca", ca)? {
                roots.add(cert).map_err(|e| TlsError::Parse {
                    key: "server.tls.client_ca",
                    path: ca.clone(),
                    message: format!("not a CA certificate: {e}"),
                })?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build()?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key)?;
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// The listener's current TLS acceptor.
pub struct Tls {
    settings: TlsSettings,
    acceptor: ArcSwap<TlsAcceptor>,
}

impl Tls {
    /// Loads the certificate and key.
    pub fn new(settings: TlsSettings) -> Result<Arc<Self>, TlsError> {
        let config = server_config(&settings)?;
        Ok(Arc::new(Self {
            settings,
            acceptor: ArcSwap::from_pointee(TlsAcceptor::from(Arc::new(config))),
        }))
    }

    /// The acceptor for a connection accepted now.
    pub fn acceptor(&self) -> Arc<TlsAcceptor> {
        self.acceptor.load_full()
    }

    /// Re-reads the files; on failure the current certificate stays (and the error is logged).
    pub fn reload(&self) -> Result<(), TlsError> {
        match server_config(&self.settings) {
            Ok(config) => {
                self.acceptor
                    .store(Arc::new(TlsAcceptor::from(Arc::new(config))));
                tracing::info!(cert = %self.settings.cert.display(), "TLS certificate reloaded");
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "TLS reload failed; keeping the current certificate");
                Err(e)
            }
        }
    }
}
