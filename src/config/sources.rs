//! The TOML value shapes a setting may take in the file.

use std::fmt;

use serde::Deserialize;

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
