//! Settings of the public edge: connection timeouts, the connection cap and the ingest memory
//! budget (README "Facing the internet").
//!
//! They live apart from the rest because they answer one question, "what may a client that
//! connects to `--listen` cost us?", and every one of them must hold against a client that is
//! slow, idle or hostile, authenticated or not.

use std::path::PathBuf;
use std::time::Duration;

use super::sources::{FileConfig, SettingsArgs};
use super::values::{ConfigError, parse_duration, parse_size};

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

impl Default for EdgeSettings {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(75),
            body_read_timeout: Duration::from_secs(60),
            ingest_wait_timeout: Duration::from_secs(5),
            max_connections: 1024,
            ingest_buffer_bytes: 64 * 1024 * 1024,
            tls: None,
        }
    }
}

/// Lays the flag/env values over the file's and validates them (the relation to the body
/// limit is checked by [`EdgeSettings::check_body_limit`]).
pub(super) fn resolve(args: &SettingsArgs, file: &FileConfig) -> Result<EdgeSettings, ConfigError> {
    let d = EdgeSettings::default();
    let duration = |key: &str, env: &str, arg: &Option<String>, file: &Option<String>, def| {
        let v = parse_duration(key, env, arg.clone().or_else(|| file.clone()), def)?;
        if v < Duration::from_millis(10) {
            return Err(ConfigError::new(key, env, "must be at least 10ms"));
        }
        Ok(v)
    };
    let header_read_timeout = duration(
        "header_read_timeout",
        "CURRENTS_HEAP_HEADER_READ_TIMEOUT",
        &args.header_read_timeout,
        &file.header_read_timeout,
        "10s",
    )?;
    let idle_timeout = duration(
        "idle_timeout",
        "CURRENTS_HEAP_IDLE_TIMEOUT",
        &args.idle_timeout,
        &file.idle_timeout,
        "75s",
    )?;
    let body_read_timeout = duration(
        "body_read_timeout",
        "CURRENTS_HEAP_BODY_READ_TIMEOUT",
        &args.body_read_timeout,
        &file.body_read_timeout,
        "60s",
    )?;
    let ingest_wait_timeout = duration(
        "ingest_wait_timeout",
        "CURRENTS_HEAP_INGEST_WAIT_TIMEOUT",
        &args.ingest_wait_timeout,
        &file.ingest_wait_timeout,
        "5s",
    )?;
    let max_connections = match args
        .max_connections
        .clone()
        .or_else(|| file.max_connections.as_ref().map(ToString::to_string))
    {
        None => d.max_connections,
        Some(s) => s
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=1_000_000).contains(n))
            .ok_or_else(|| {
                ConfigError::new(
                    "max_connections",
                    "CURRENTS_HEAP_MAX_CONNECTIONS",
                    format!("{s:?} is not a whole number from 1 to 1000000"),
                )
            })?,
    };
    let ingest_buffer_bytes = parse_size(
        "ingest_buffer_bytes",
        "CURRENTS_HEAP_INGEST_BUFFER_BYTES",
        args.ingest_buffer_bytes
            .clone()
            .or_else(|| file.ingest_buffer_bytes.as_ref().map(ToString::to_string)),
        "64MiB",
    )?;
    if ingest_buffer_bytes > 1 << 40 {
        return Err(ConfigError::new(
            "ingest_buffer_bytes",
            "CURRENTS_HEAP_INGEST_BUFFER_BYTES",
            "must be at most 1TiB",
        ));
    }
    let tls = match (
        args.tls_cert.clone().or_else(|| file.tls_cert.clone()),
        args.tls_key.clone().or_else(|| file.tls_key.clone()),
    ) {
        (None, None) => None,
        (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
        (Some(_), None) => {
            return Err(ConfigError::new(
                "tls_key",
                "CURRENTS_HEAP_TLS_KEY",
                "is required with tls_cert (the certificate's private key, PEM)",
            ));
        }
        (None, Some(_)) => {
            return Err(ConfigError::new(
                "tls_cert",
                "CURRENTS_HEAP_TLS_CERT",
                "is required with tls_key (the certificate chain, PEM)",
            ));
        }
    };
    Ok(EdgeSettings {
        header_read_timeout,
        idle_timeout,
        body_read_timeout,
        ingest_wait_timeout,
        max_connections,
        ingest_buffer_bytes,
        tls,
    })
}

impl EdgeSettings {
    /// A compressed body of the largest size and its decoded form must fit in the budget at
    /// once, or such a request could never be accepted.
    pub(super) fn check_body_limit(&self, max_body_bytes: u64) -> Result<(), ConfigError> {
        if self.ingest_buffer_bytes < 2 * max_body_bytes {
            return Err(ConfigError::new(
                "ingest_buffer_bytes",
                "CURRENTS_HEAP_INGEST_BUFFER_BYTES",
                format!(
                    "must be at least twice max_body_bytes ({} bytes): a compressed request and its decoded body are held at once",
                    2 * max_body_bytes
                ),
            ));
        }
        Ok(())
    }

    /// `(key, value)` lines of the effective settings, for `check-config`.
    pub(super) fn print(&self, line: &mut dyn FnMut(&str, String)) {
        let q = |d: Duration| {
            toml::Value::String(humantime::format_duration(d).to_string()).to_string()
        };
        line("header_read_timeout", q(self.header_read_timeout));
        line("idle_timeout", q(self.idle_timeout));
        line("body_read_timeout", q(self.body_read_timeout));
        line("ingest_wait_timeout", q(self.ingest_wait_timeout));
        line("max_connections", self.max_connections.to_string());
        line("ingest_buffer_bytes", self.ingest_buffer_bytes.to_string());
        let path = |p: &PathBuf| toml::Value::String(p.display().to_string()).to_string();
        match &self.tls {
            Some(t) => {
                line("tls_cert", path(&t.cert));
                line("tls_key", path(&t.key));
            }
            None => line("# tls_cert", "(not set: plain HTTP)".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve_args(args: SettingsArgs) -> Result<EdgeSettings, ConfigError> {
        let e = resolve(&args, &FileConfig::default())?;
        e.check_body_limit(8 * 1024 * 1024)?;
        Ok(e)
    }

    #[test]
    fn defaults_are_documented_values() {
        assert_eq!(
            resolve_args(SettingsArgs::default()).unwrap(),
            EdgeSettings::default()
        );
    }

    #[test]
    fn flags_win_over_the_file() {
        let file: FileConfig =
            toml::from_str("idle_timeout = \"5s\"\nmax_connections = 10\n").unwrap();
        let args = SettingsArgs {
            idle_timeout: Some("7s".into()),
            ..Default::default()
        };
        let e = resolve(&args, &file).unwrap();
        assert_eq!(e.idle_timeout, Duration::from_secs(7));
        assert_eq!(e.max_connections, 10);
    }

    #[test]
    fn bad_values_name_the_setting() {
        for (args, key) in [
            (
                SettingsArgs {
                    max_connections: Some("0".into()),
                    ..Default::default()
                },
                "max_connections",
            ),
            (
                SettingsArgs {
                    header_read_timeout: Some("0s".into()),
                    ..Default::default()
                },
                "header_read_timeout",
            ),
            (
                SettingsArgs {
                    ingest_buffer_bytes: Some("8MiB".into()),
                    ..Default::default()
                },
                "ingest_buffer_bytes",
            ),
        ] {
            let e = resolve_args(args).unwrap_err();
            assert!(e.to_string().contains(key), "{e}");
        }
    }
}
