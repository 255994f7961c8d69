//! The parsers the settings table names. A parser takes one [`Raw`] value (flag, environment,
//! file or default) and returns the typed value or a message; the caller adds which setting, in
//! which form, was refused.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::values::{HeapAppId, LogFormat, Raw, Secret};

/// Why a token setting that is present but holds no token is refused.
pub(super) const BLANK_TOKEN: &str = "is set but holds no token (empty, blank, or only commas): \
    that would turn authentication off. Set a token, or remove the setting altogether to accept \
    unauthenticated requests (a warning is logged then)";

pub(super) fn address(raw: Raw) -> Result<SocketAddr, String> {
    let s = raw.text();
    s.parse()
        .map_err(|e| format!("{s:?} is not an address like 127.0.0.1:8080: {e}"))
}

/// Bearer tokens: given but empty is an error, never "no token" (an empty secret mounted into
/// the variable must not turn authentication off).
pub(super) fn tokens(raw: Raw) -> Result<Vec<Secret>, String> {
    let list = raw.list();
    if list.is_empty() {
        return Err(BLANK_TOKEN.to_owned());
    }
    list.into_iter()
        .map(|t| {
            if t.bytes().all(|b| b.is_ascii_graphic()) {
                Ok(Secret(t))
            } else {
                Err("a token may only contain printable ASCII without spaces".to_owned())
            }
        })
        .collect()
}

/// One secret (an API key): given but blank is an error, never "no key"; printable ASCII
/// without spaces.
pub(super) fn secret(raw: Raw) -> Result<Secret, String> {
    let s = raw.text();
    let s = s.trim();
    if s.is_empty() {
        return Err("is set but blank: remove the setting altogether to leave it unset".to_owned());
    }
    if !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("may only contain printable ASCII without spaces".to_owned());
    }
    Ok(Secret(s.to_owned()))
}

pub(super) fn path(raw: Raw) -> Result<PathBuf, String> {
    let p = match raw {
        Raw::Path(p) => p,
        other => PathBuf::from(other.text()),
    };
    if p.as_os_str().is_empty() {
        return Err("must not be empty".to_owned());
    }
    Ok(p)
}

pub(super) fn app_id(raw: Raw) -> Result<HeapAppId, String> {
    HeapAppId::parse(&raw.text())
}

pub(super) fn base_url(raw: Raw) -> Result<String, String> {
    let raw = raw.text();
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

pub(super) fn per_minute(raw: Raw) -> Result<std::num::NonZeroU32, String> {
    let s = raw.text();
    s.trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a positive integer"))
}

/// A whole number from `lo` to `hi`.
pub(super) fn count(lo: usize, hi: usize) -> impl Fn(Raw) -> Result<usize, String> {
    move |raw| {
        let s = raw.text();
        s.trim()
            .parse::<usize>()
            .ok()
            .filter(|n| (lo..=hi).contains(n))
            .ok_or_else(|| format!("{s:?} is not a whole number from {lo} to {hi}"))
    }
}

/// A size (`8MiB`, `10GB`, plain bytes) from `lo` to `hi`; `why` says what is out of bounds.
pub(super) fn size(lo: u64, hi: u64, why: &'static str) -> impl Fn(Raw) -> Result<u64, String> {
    move |raw| {
        let s = raw.text();
        let t = s.trim();
        let n = match t.parse::<u64>() {
            Ok(n) => n,
            Err(_) => t
                .parse::<bytesize::ByteSize>()
                .map(|b| b.as_u64())
                .map_err(|_| format!("{s:?} is not a size such as 8MiB or 10GiB"))?,
        };
        if !(lo..=hi).contains(&n) {
            return Err(why.to_owned());
        }
        Ok(n)
    }
}

/// A duration (`30s`, `24h`) of at least `min`; `why` says what is too short.
pub(super) fn duration(
    min: Duration,
    why: &'static str,
) -> impl Fn(Raw) -> Result<Duration, String> {
    move |raw| {
        let s = raw.text();
        let d = humantime::parse_duration(s.trim())
            .map_err(|e| format!("{s:?} is not a duration such as 30s or 24h: {e}"))?;
        if d < min {
            return Err(why.to_owned());
        }
        Ok(d)
    }
}

pub(super) fn log_format(raw: Raw) -> Result<LogFormat, String> {
    match raw.text().trim() {
        "json" => Ok(LogFormat::Json),
        "text" => Ok(LogFormat::Text),
        other => Err(format!("{other:?} is neither \"json\" nor \"text\"")),
    }
}

/// On or off: a TOML boolean, or what the flag and environment accept (`true`, `1`, `yes`, ...).
pub(super) fn switch(raw: Raw) -> Result<bool, String> {
    match raw {
        Raw::Bool(b) => Ok(b),
        other => {
            let s = other.text();
            match s.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "y" | "on" => Ok(true),
                "false" | "0" | "no" | "n" | "off" | "" => Ok(false),
                _ => Err(format!("{s:?} is neither true nor false")),
            }
        }
    }
}

/// A list of plain strings (property keys).
pub(super) fn strings(raw: Raw) -> Result<Vec<String>, String> {
    Ok(raw.list())
}
