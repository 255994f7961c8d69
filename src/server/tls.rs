//! TLS on `--listen` (`--tls-cert` / `--tls-key`), so the forwarder can face Braze directly
//! (Braze only calls HTTPS endpoints).
//!
//! Why a resolver instead of a fixed certificate: certificates are renewed (cert-manager,
//! Let's Encrypt every 60–90 days) and a restart to pick them up would answer 503 while the
//! single pod restarts. The server asks [`CertStore`] for the certificate at every handshake;
//! the store re-reads the files when they change on disk (checked every few seconds, which
//! also follows Kubernetes' symlink swap of a mounted Secret) or on `SIGHUP`. Connections
//! already open keep the certificate they were set up with; none is dropped. A pair that
//! cannot be read or does not match is refused with a log line and a metric, and the old one
//! stays in use.
//!
//! ALPN offers `h2` and `http/1.1`; the connection then speaks what was agreed.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

use crate::metrics::ReloadMetrics;

/// Certificate and key files larger than this are refused (a chain is a few KiB).
const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// Modification time and length of the certificate and the key files.
type Stamps = [(Option<SystemTime>, u64); 2];

/// How often the files are checked for a change.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path} holds no PEM private key: {message}")]
    NoKey { path: PathBuf, message: String },
    #[error("the private key in {key} does not belong to the certificate in {cert} ({message})")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        message: String,
    },
}

/// The serving certificate, re-read when its files change.
pub struct CertStore {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    /// Modification time and length of both files when last loaded.
    seen: Mutex<Stamps>,
    /// A change the watch saw, waiting one more interval for the files to settle.
    settling: Mutex<Option<Stamps>>,
    metrics: ReloadMetrics,
}

impl CertStore {
    /// Loads the pair once; an error here stops the start (exit 2 from `serve`).
    pub fn load(
        cert_path: &Path,
        key_path: &Path,
        metrics: ReloadMetrics,
    ) -> Result<Arc<Self>, TlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let seen = [stamp(cert_path), stamp(key_path)];
        let key = read_pair(cert_path, key_path, &provider)?;
        Ok(Arc::new(Self {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            provider,
            current: RwLock::new(Arc::new(key)),
            seen: Mutex::new(seen),
            settling: Mutex::new(None),
            metrics,
        }))
    }

    /// Checks that the pair loads, as [`Self::load`] would (`check-config`), without serving
    /// or counting anything.
    pub fn check(cert_path: &Path, key_path: &Path) -> Result<(), TlsError> {
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        read_pair(cert_path, key_path, &provider).map(drop)
    }

    /// A TLS acceptor that asks this store at every handshake.
    pub fn acceptor(self: &Arc<Self>) -> Result<TlsAcceptor, rustls::Error> {
        let mut config = ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }

    /// Re-reads the pair: on `SIGHUP` (`force`) at once; after a change on disk once the files
    /// have stayed the same for one more check (a rotation writes the certificate and the key
    /// one after the other, and the half-written pair in between is no error). Returns whether
    /// a different pair is now served; re-reading the same pair changes and counts nothing.
    pub fn reload(&self, force: bool) -> bool {
        let now = [stamp(&self.cert_path), stamp(&self.key_path)];
        if !force {
            let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            let mut settling = self.settling.lock().unwrap_or_else(|p| p.into_inner());
            if *seen == now {
                *settling = None;
                return false;
            }
            if *settling != Some(now) {
                *settling = Some(now);
                return false;
            }
        }
        let reloaded = match read_pair(&self.cert_path, &self.key_path, &self.provider) {
            Ok(key) => {
                let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
                if current.cert == key.cert {
                    drop(current);
                    *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = now;
                    return false;
                }
                *current = Arc::new(key);
                self.metrics.tls_reloaded(&self.cert_path);
                true
            }
            Err(e) => {
                self.metrics.tls_failed(&e);
                false
            }
        };
        // Remember the stamps either way: a broken pair is reported once, not every interval.
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = now;
        reloaded
    }
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self.current.read().unwrap_or_else(|p| p.into_inner()),
        ))
    }
}

fn stamp(path: &Path) -> (Option<SystemTime>, u64) {
    std::fs::metadata(path).map_or((None, 0), |m| (m.modified().ok(), m.len()))
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, TlsError> {
    use std::io::Read;
    let err = |message: String| TlsError::Read {
        path: path.to_owned(),
        message,
    };
    let file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| err(e.to_string()))?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(err(format!("larger than {MAX_PEM_BYTES} bytes")));
    }
    Ok(bytes)
}

fn read_pair(
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let cert_pem = read_bounded(cert_path)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Read {
            path: cert_path.to_owned(),
            message: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert_path.to_owned(),
        });
    }
    let key_pem = read_bounded(key_path)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::NoKey {
        path: key_path.to_owned(),
        message: e.to_string(),
    })?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| TlsError::Mismatch {
        cert: cert_path.to_owned(),
        key: key_path.to_owned(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/tls")
            .join(name)
    }

    #[test]
    fn a_matching_pair_loads_and_a_mismatched_one_is_refused() {
        let m = Metrics::new().unwrap().reloads;
        assert!(CertStore::load(&fixture("cert-a.pem"), &fixture("key-a.pem"), m.clone()).is_ok());
        let err =
            CertStore::load(&fixture("cert-a.pem"), &fixture("key-b.pem"), m.clone()).unwrap_err();
        assert!(matches!(err, TlsError::Mismatch { .. }), "{err}");
        let err = CertStore::load(&fixture("key-a.pem"), &fixture("key-a.pem"), m).unwrap_err();
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err}");
    }

    #[test]
    fn a_change_on_disk_is_picked_up_and_a_broken_pair_keeps_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::copy(fixture("cert-a.pem"), &cert).unwrap();
        std::fs::copy(fixture("key-a.pem"), &key).unwrap();
        let m = Metrics::new().unwrap().reloads;
        let store = CertStore::load(&cert, &key, m.clone()).unwrap();
        let served = |s: &CertStore| s.current.read().unwrap().cert[0].clone();
        let a = served(&store);
        assert!(!store.reload(false), "nothing changed");
        assert!(!store.reload(true), "the same pair again is no reload");
        assert_eq!(m.tls_reload_count("reloaded"), 0);

        // Half-written rotation: a new certificate with the old key is refused.
        std::fs::copy(fixture("cert-b.pem"), &cert).unwrap();
        assert!(!store.reload(true));
        assert_eq!(served(&store), a);
        assert_eq!(m.tls_reload_count("failed"), 1);

        std::fs::copy(fixture("key-b.pem"), &key).unwrap();
        assert!(
            !store.reload(false),
            "a change is applied once the files settle"
        );
        assert!(store.reload(false));
        assert_ne!(served(&store), a);
        assert_eq!(m.tls_reload_count("reloaded"), 1);
    }
}
