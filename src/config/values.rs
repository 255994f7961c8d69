//! The vocabulary of the configuration: a declared setting ([`Decl`]), a value as given
//! ([`Raw`]), the error, and the validated value types.

use std::fmt;
use std::path::{Path, PathBuf};
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

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Json => "json",
            LogFormat::Text => "text",
        }
    }
}

/// The retry delays after transient Heap failures: `initial` doubles per consecutive failure
/// up to `max` (validated: `0 < initial <= max`). `delivery::Backoff` is built from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryBackoff {
    pub initial: Duration,
    pub max: Duration,
}

/// A setting that failed validation, named in every form an operator may have used.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting {setting}: {message}")]
pub struct ConfigError {
    pub setting: String,
    pub message: String,
}

impl ConfigError {
    /// A flat setting: its key, flag and environment variable.
    pub(super) fn new(decl: &Decl, message: impl Into<String>) -> Self {
        Self {
            setting: format!("`{}` (flag {}, env {})", decl.key, decl.flag(), decl.env),
            message: message.into(),
        }
    }

    /// A flat setting and where its value came from.
    pub(super) fn given(decl: &Decl, source: &str, message: impl Into<String>) -> Self {
        Self {
            setting: format!(
                "`{}` (flag {}, env {}; {source})",
                decl.key,
                decl.flag(),
                decl.env
            ),
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

/// One setting as declared: what the help, the errors, the README test and the defaults use.
#[derive(Debug, Clone, Copy)]
pub struct Decl {
    /// The TOML key; the flag is `--` and the key with `-` for `_`.
    pub key: &'static str,
    pub env: &'static str,
    /// Parsed like a given value when the setting is not given; `None`: not set.
    pub default: Option<&'static str>,
}

impl Decl {
    /// The flag of the setting.
    pub fn flag(&self) -> String {
        format!("--{}", self.key.replace('_', "-"))
    }
}

/// A value as given, before parsing.
#[derive(Debug, Clone)]
pub(super) enum Raw {
    Text(String),
    List(Vec<String>),
    Path(PathBuf),
    Bool(bool),
}

impl Raw {
    pub(super) fn text(self) -> String {
        match self {
            Raw::Text(s) => s,
            Raw::List(v) => v.join(","),
            Raw::Path(p) => p.display().to_string(),
            Raw::Bool(b) => b.to_string(),
        }
    }

    /// The items of a list (a comma-separated string or an array), trimmed, empty ones dropped.
    pub(super) fn list(self) -> Vec<String> {
        let items = match self {
            Raw::List(v) => v,
            other => other.text().split(',').map(str::to_owned).collect(),
        };
        items
            .into_iter()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .collect()
    }
}
