//! Settings of the public edge: connection timeouts, the connection cap and the ingest memory
//! budget (README "Facing the internet").
//!
//! They live apart from the rest because they answer one question, "what may a client that
//! connects to `--listen` cost us?", and every one of them must hold against a client that is
//! slow, idle or hostile, authenticated or not. Their declarations are in `table.rs`.

use std::path::PathBuf;
use std::time::Duration;

use super::table::{Flat, setting};
use super::values::ConfigError;

/// Validated edge settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeSettings {
    /// Time a client has, from the first byte of a request, to send its whole header block.
    pub header_read_timeout: Duration,
    /// Time a connection may stay open with no request in progress.
    pub idle_timeout: Duration,
    /// Time a client has to send a request body, once its headers are in.
    pub body_read_timeout: Duration,
    /// Time a request may wait for room in the ingest memory budget before it gets 503.
    pub ingest_wait_timeout: Duration,
    /// Open client connections at most (lowered at start to fit the descriptor limit).
    pub max_connections: usize,
    /// Bytes of request bodies (raw and decoded) held in memory at once, across all requests.
    pub ingest_buffer_bytes: u64,
    /// Serve HTTPS with this certificate chain and key (both PEM files).
    pub tls: Option<TlsFiles>,
}

/// `--tls-cert` and `--tls-key`: both or neither.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl EdgeSettings {
    /// The edge settings among the flat ones, with the checks that relate them: the TLS files
    /// come in pairs, and a compressed body of the largest size and its decoded form must fit
    /// in the ingest budget at once, or such a request could never be accepted.
    pub(super) fn from_flat(v: &Flat) -> Result<Self, ConfigError> {
        let tls = match (&v.tls_cert, &v.tls_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            (Some(_), None) => {
                return Err(ConfigError::new(
                    &setting::tls_key,
                    "is required with tls_cert (the certificate's private key, PEM)",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    &setting::tls_cert,
                    "is required with tls_key (the certificate chain, PEM)",
                ));
            }
        };
        if v.ingest_buffer_bytes < 2 * v.max_body_bytes {
            return Err(ConfigError::new(
                &setting::ingest_buffer_bytes,
                format!(
                    "must be at least twice max_body_bytes ({} bytes): a compressed request and \
                     its decoded body are held at once",
                    2 * v.max_body_bytes
                ),
            ));
        }
        Ok(Self {
            header_read_timeout: v.header_read_timeout,
            idle_timeout: v.idle_timeout,
            body_read_timeout: v.body_read_timeout,
            ingest_wait_timeout: v.ingest_wait_timeout,
            max_connections: v.max_connections,
            ingest_buffer_bytes: v.ingest_buffer_bytes,
            tls,
        })
    }
}
