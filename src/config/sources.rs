//! The TOML value shapes a setting may take in the file, and reading the file.

use std::fmt;
use std::path::Path;

use serde::Deserialize;

use super::table::FileConfig;
use super::values::ConfigError;

/// A TOML value that may be written as a number or a string (`15000`, `"10GiB"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    Int(i64),
    Str(String),
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scalar::Int(i) => write!(f, "{i}"),
            Scalar::Str(s) => f.write_str(s),
        }
    }
}

/// A list written as `"a,b"` or `["a", "b"]` (tokens, globs, property keys).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Tokens {
    One(String),
    Many(Vec<String>),
}

/// Largest configuration file read: a real one is a few kilobytes, and `--config /dev/zero`
/// (or a log file by mistake) must not be read without end.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// The configuration file, read up to [`MAX_CONFIG_BYTES`] (plus one byte, to tell a file over
/// the limit) and parsed.
pub(super) fn read_config_file(path: &Path) -> Result<FileConfig, ConfigError> {
    use std::io::Read;
    let cannot = |e: std::io::Error| ConfigError::file(path, format!("cannot read: {e}"));
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(cannot)?
        .take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(ConfigError::file(
            path,
            "is larger than 1 MiB, the most a configuration file may hold (is --config / \
             CURRENTS_HEAP_CONFIG pointing at the right file?)",
        ));
    }
    let text = String::from_utf8(bytes)
        .map_err(|_| ConfigError::file(path, "cannot read: the file is not UTF-8 text"))?;
    toml::from_str(&text).map_err(|e| ConfigError::file(path, e.to_string()))
}
