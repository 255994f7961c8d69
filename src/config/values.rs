//! Validated value types and the parsers of sizes, durations and URLs.

use std::fmt;
use std::path::Path;
use std::time::Duration;

/// A secret that never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub(super) String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A Heap environment id: a non-empty string of ASCII digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeapAppId(String);

impl HeapAppId {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() || s.len() > 32 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "{s:?} is not a Heap environment id (a numeric string)"
            ));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

/// A setting that failed validation, named in every form an operator may have used.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting {setting}: {message}")]
pub struct ConfigError {
    pub setting: String,
    pub message: String,
}

impl ConfigError {
    pub(super) fn new(key: &str, env: &str, message: impl Into<String>) -> Self {
        Self {
            setting: format!("`{key}` (flag --{}, env {env})", key.replace('_', "-")),
            message: message.into(),
        }
    }

    pub(super) fn file(path: &Path, message: impl Into<String>) -> Self {
        Self {
            setting: format!("--config {}", path.display()),
            message: message.into(),
        }
    }
}

pub(super) fn validate_base_url(raw: &str) -> Result<String, String> {
    let url = raw.trim().trim_end_matches('/');
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{raw:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => {
            return Err(format!(
                "{raw:?} must start with https:// (or http:// for a local stand-in)"
            ));
        }
    }
    if uri.host().is_none() {
        return Err(format!("{raw:?} has no host"));
    }
    if uri.query().is_some() {
        return Err(format!("{raw:?} must not carry a query string"));
    }
    Ok(url.to_owned())
}

pub(super) fn parse_size(
    key: &str,
    env: &str,
    raw: Option<String>,
    default: &str,
) -> Result<u64, ConfigError> {
    let s = raw.unwrap_or_else(|| default.to_owned());
    let t = s.trim();
    if let Ok(n) = t.parse::<u64>() {
        return Ok(n);
    }
    t.parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|_| {
            ConfigError::new(
                key,
                env,
                format!("{s:?} is not a size such as 8MiB or 10GiB"),
            )
        })
}

pub(super) fn parse_duration(
    key: &str,
    env: &str,
    raw: Option<String>,
    default: &str,
) -> Result<Duration, ConfigError> {
    let s = raw.unwrap_or_else(|| default.to_owned());
    humantime::parse_duration(s.trim()).map_err(|e| {
        ConfigError::new(
            key,
            env,
            format!("{s:?} is not a duration such as 30s or 24h: {e}"),
        )
    })
}
