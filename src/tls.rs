//! TLS for clients: `https://` and `wss://` served by the node itself (rustls), for deployments
//! without a load balancer in front.
//!
//! Why a certificate *resolver* rather than a fixed certificate: the `rustls::ServerConfig`
//! is built once and shared by every worker's acceptor, while the certificate it presents is
//! read from [`CertStore`] at each new TLS handshake. Reloading (SIGHUP) loads the files anew,
//! checks them (the chain parses, the key parses and matches the leaf certificate), and only
//! then swaps them in. Connections already established keep their session (their keys were
//! agreed at their handshake), so a reload drops nobody; a reload that fails keeps the
//! certificate in use and says why in the log and in `roomcast_tls_reloads_total{result}`.
//!
//! Crypto comes from rustls' `ring` provider (pure Rust plus ring's assembly: no C library to
//! link), chosen per config rather than installed process-wide.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Why the certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS certificate file {path}: {detail}")]
    Cert { path: PathBuf, detail: String },
    #[error("TLS key file {path}: {detail}")]
    Key { path: PathBuf, detail: String },
    #[error("TLS key file {key} does not belong to the certificate in {cert}: {detail}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        detail: String,
    },
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// Where the certificate chain and private key are read from (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The leaf certificate first, then any intermediates.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1/RSA or SEC1/EC).
    pub key: PathBuf,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads and checks the chain and key.
fn load(files: &TlsFiles, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let cert_err = |detail: String| TlsError::Cert {
        path: files.cert.clone(),
        detail,
    };
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_err("no PEM certificate in it".into()));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| TlsError::Key {
        path: files.key.clone(),
        detail: e.to_string(),
    })?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| TlsError::Mismatch {
        cert: files.cert.clone(),
        key: files.key.clone(),
        detail: e.to_string(),
    })
}

/// The certificate the node presents, swappable while the node runs.
pub struct CertStore {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl CertStore {
    /// Loads the files; an error here stops the node from starting.
    pub fn load(files: TlsFiles) -> Result<Arc<CertStore>, TlsError> {
        let provider = provider();
        let key = load(&files, &provider)?;
        Ok(Arc::new(CertStore {
            files,
            provider,
            current: RwLock::new(Arc::new(key)),
        }))
    }

    /// Loads the files again and, if they are good, presents them from the next handshake on.
    /// On error the certificate in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let key = load(&self.files, &self.provider)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(key);
        Ok(())
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// The rustls server configuration (TLS 1.2 and 1.3, no client certificates) presenting
    /// this store's certificate. ALPN is set by the HTTP layer (`http/1.1`).
    pub fn server_config(self: &Arc<Self>) -> Result<rustls::ServerConfig, TlsError> {
        let resolver: Arc<dyn ResolvesServerCert> = Arc::new(Resolver(self.clone()));
        rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))
            .map(|b| b.with_no_client_auth().with_cert_resolver(resolver))
    }

    fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// rustls asks this for the certificate at every handshake.
#[derive(Debug)]
struct Resolver(Arc<CertStore>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current())
    }
}

/// Both files or neither: the config's `tls_cert_file` and `tls_key_file`.
pub fn files_from(cert: Option<&Path>, key: Option<&Path>) -> Result<Option<TlsFiles>, String> {
    match (cert, key) {
        (None, None) => Ok(None),
        (Some(c), Some(k)) => Ok(Some(TlsFiles {
            cert: c.to_path_buf(),
            key: k.to_path_buf(),
        })),
        (Some(_), None) => Err("tls_cert_file is set but tls_key_file is not: set both".into()),
        (None, Some(_)) => Err("tls_key_file is set but tls_cert_file is not: set both".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_files_or_neither() {
        let p = Path::new("x");
        assert_eq!(files_from(None, None), Ok(None));
        assert!(files_from(Some(p), Some(p)).unwrap().is_some());
        assert!(
            files_from(Some(p), None)
                .unwrap_err()
                .contains("tls_key_file")
        );
        assert!(
            files_from(None, Some(p))
                .unwrap_err()
                .contains("tls_cert_file")
        );
    }

    #[test]
    fn a_missing_file_is_named() {
        let files = TlsFiles {
            cert: "/nonexistent/roomcast.crt".into(),
            key: "/nonexistent/roomcast.key".into(),
        };
        let e = CertStore::load(files).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/roomcast.crt"), "{e}");
    }
}
