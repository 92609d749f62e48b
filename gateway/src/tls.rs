//! TLS on the public listener: a certificate and key from PEM files (in a
//! cluster, a `kubernetes.io/tls` Secret mounted as files), read again when
//! they change, so a renewed certificate (cert-manager, or `kubectl create
//! secret tls ... | kubectl apply`) is served without a restart. A pair that
//! becomes invalid (half written, or a key that does not match) keeps the
//! last valid one in force.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// How often the certificate files are checked for changes.
pub const CERT_CHECK: Duration = Duration::from_secs(5);

/// The certificate in force and the files it came from.
pub struct CertFiles {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    /// The certificate, and the files' bytes it was made from.
    current: RwLock<(Arc<CertifiedKey>, Vec<u8>)>,
}

impl std::fmt::Debug for CertFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertFiles")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn certified(
    cert_pem: &[u8],
    key_pem: &[u8],
    provider: &CryptoProvider,
) -> Result<CertifiedKey, String> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("certificate: {e}"))?;
    if chain.is_empty() {
        return Err("certificate: no PEM certificate in the file".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("key: {e}"))?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| format!("certificate and key: {e}"))
}

impl CertFiles {
    /// Reads the pair; both must exist and match.
    pub fn open(cert: &Path, key: &Path) -> Result<CertFiles, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (cert_pem, key_pem) = (read(cert)?, read(key)?);
        let pair = certified(&cert_pem, &key_pem, &provider)?;
        Ok(CertFiles {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            provider,
            current: RwLock::new((Arc::new(pair), [cert_pem, key_pem].concat())),
        })
    }

    fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone()
    }

    /// Reads the files again; `Ok(true)` when the certificate changed.
    pub fn reload(&self) -> Result<bool, String> {
        let (cert_pem, key_pem) = (read(&self.cert)?, read(&self.key)?);
        let bytes = [cert_pem.as_slice(), key_pem.as_slice()].concat();
        if self.current.read().unwrap_or_else(|p| p.into_inner()).1 == bytes {
            return Ok(false);
        }
        let pair = certified(&cert_pem, &key_pem, &self.provider)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = (Arc::new(pair), bytes);
        Ok(true)
    }

    /// A TLS acceptor (TLS 1.2 and 1.3, HTTP/1.1) that always serves the
    /// certificate in force.
    pub fn acceptor(self: &Arc<Self>) -> Result<TlsAcceptor, String> {
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }

    /// Checks the files every [`CERT_CHECK`] until `stop`.
    pub async fn watch(self: Arc<Self>, stop: CancellationToken) {
        crate::reread::reread_every(CERT_CHECK, stop, "TLS certificate", || self.reload()).await;
    }
}

impl ResolvesServerCert for CertFiles {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(name: &str) -> (String, String) {
        let c = rcgen::generate_simple_self_signed(vec![name.to_string()]).expect("cert");
        (c.cert.pem(), c.signing_key.serialize_pem())
    }

    #[test]
    fn pairs_load_reload_and_survive_a_bad_edit() {
        let dir = std::env::temp_dir().join(format!("porchlight-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
        assert!(CertFiles::open(&cert, &key).is_err(), "missing files");

        let (c1, k1) = pair("one.example");
        std::fs::write(&cert, &c1).expect("write");
        std::fs::write(&key, &k1).expect("write");
        let files = Arc::new(CertFiles::open(&cert, &key).expect("valid"));
        let first = files.current().cert[0].clone();
        assert_eq!(files.reload(), Ok(false), "unchanged");

        // A new certificate with the old key: refused, the old pair stays.
        let (c2, k2) = pair("two.example");
        std::fs::write(&cert, &c2).expect("write");
        assert!(files.reload().is_err(), "key does not match");
        assert_eq!(files.current().cert[0], first);

        std::fs::write(&key, &k2).expect("write");
        assert_eq!(files.reload(), Ok(true));
        assert_ne!(files.current().cert[0], first);
        assert!(files.acceptor().is_ok());

        std::fs::write(&cert, "not a certificate").expect("write");
        assert!(CertFiles::open(&cert, &key).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
