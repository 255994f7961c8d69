//! The queue on NATS JetStream (product.md §8): `--nats-url` selects it instead of the SQLite
//! store in `--data-dir`; `--nats-stream`, `--nats-replicas` and `--nats-creds` shape it and are
//! ignored without `--nats-url`. Their declarations are in `table.rs`.
//!
//! A URL may carry credentials (`nats://user:pass@host`), so a [`NatsUrl`] prints its userinfo
//! as `<redacted>` in `Debug` and in `check-config`; only [`NatsUrl::expose`] gives it whole.

use std::fmt;
use std::net::Ipv6Addr;
use std::path::PathBuf;

use super::parse::path;
use super::table::Flat;
use super::values::Raw;

/// The port of a NATS URL that names none.
pub const DEFAULT_NATS_PORT: u16 = 4222;
/// Longest `--nats-stream` prefix: the forwarder appends its own suffixes to it, and stream,
/// consumer and bucket names must stay short.
pub const MAX_NATS_STREAM_CHARS: usize = 32;
/// JetStream's most replicas of a stream or bucket.
pub const MAX_NATS_REPLICAS: usize = 5;

/// What the queue on NATS JetStream is opened with: [`super::Settings::nats`], `Some` when
/// `--nats-url` is set.
#[derive(Clone, PartialEq, Eq)]
pub struct NatsSettings {
    /// The servers, each a full URL with its scheme (`nats://` or `tls://`) and port, and its
    /// credentials when the setting gave some: one `async_nats::ServerAddr` each.
    pub urls: Vec<String>,
    /// Name prefix of the streams, consumers and key-value buckets the forwarder creates
    /// (`[A-Za-z0-9_-]`, 1 to 32 characters: valid in stream names and subject tokens).
    pub stream: String,
    /// Replicas of every stream and bucket (1 to 5).
    pub replicas: usize,
    /// NATS credentials file (`--nats-creds`), present when the settings were validated.
    pub creds: Option<PathBuf>,
    /// Lease of a delivery lane (`--nats-lease`).
    pub lease: std::time::Duration,
}

/// Credentials in the URLs never print.
impl fmt::Debug for NatsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let urls: Vec<String> = self.urls.iter().map(|u| redact_userinfo(u)).collect();
        f.debug_struct("NatsSettings")
            .field("urls", &urls)
            .field("stream", &self.stream)
            .field("replicas", &self.replicas)
            .field("creds", &self.creds)
            .field("lease", &self.lease)
            .finish()
    }
}

impl NatsSettings {
    /// The NATS settings among the flat ones: `None` (the SQLite store) without `nats_url`.
    pub(super) fn from_flat(v: &Flat) -> Option<Self> {
        let urls = v.nats_url.as_ref()?;
        Some(Self {
            urls: urls.iter().map(NatsUrl::expose).collect(),
            stream: v.nats_stream.clone(),
            replicas: v.nats_replicas,
            creds: v.nats_creds.clone(),
            lease: v.nats_lease,
        })
    }
}

/// `nats` or `tls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatsScheme {
    Nats,
    Tls,
}

impl NatsScheme {
    pub fn as_str(self) -> &'static str {
        match self {
            NatsScheme::Nats => "nats",
            NatsScheme::Tls => "tls",
        }
    }
}

/// One NATS server URL as validated: scheme, optional credentials, host and port.
#[derive(Clone, PartialEq, Eq)]
pub struct NatsUrl {
    scheme: NatsScheme,
    /// `user`, `user:password` or a token, as written (percent-encoding kept).
    userinfo: Option<String>,
    /// A name, an IPv4 address, or an IPv6 address in brackets.
    host: String,
    port: u16,
}

impl NatsUrl {
    /// `nats://host:port`, `tls://host:port` or a bare `host:port` (meaning `nats://`), with
    /// optional `user:password@` or `token@`; the port is 4222 when omitted.
    pub fn parse(given: &str) -> Result<Self, String> {
        let s = given.trim();
        if s.is_empty() {
            return Err("holds an empty URL (two commas in a row, or a trailing comma?)".into());
        }
        // Messages never repeat credentials.
        let shown = redact_userinfo(s);
        let (scheme, rest) = match s.split_once("://") {
            Some((scheme, rest)) => match scheme.to_ascii_lowercase().as_str() {
                "nats" => (NatsScheme::Nats, rest),
                "tls" => (NatsScheme::Tls, rest),
                _ => {
                    return Err(format!(
                        "{shown:?} must start with nats:// or tls:// (or be a bare host:port)"
                    ));
                }
            },
            None => (NatsScheme::Nats, s),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#']) || rest.chars().any(char::is_whitespace) {
            return Err(format!(
                "{shown:?} must be a server address only (scheme://host:port, no path or query)"
            ));
        }
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some(("", _)) => return Err(format!("{shown:?} has an empty user before '@'")),
            Some((user, hostport)) => (Some(user.to_owned()), hostport),
            None => (None, rest),
        };
        let (host, port) = split_host_port(hostport).map_err(|why| format!("{shown:?} {why}"))?;
        Ok(Self {
            scheme,
            userinfo,
            host,
            port,
        })
    }

    pub fn scheme(&self) -> NatsScheme {
        self.scheme
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the URL carries credentials.
    pub fn has_credentials(&self) -> bool {
        self.userinfo.is_some()
    }

    /// The full URL, credentials included: for connecting only, never for a log line.
    pub fn expose(&self) -> String {
        self.with_userinfo(self.userinfo.as_deref())
    }

    /// The URL with its credentials (if any) replaced by `<redacted>`: safe to print.
    pub fn redacted(&self) -> String {
        self.with_userinfo(self.userinfo.as_ref().map(|_| "<redacted>"))
    }

    fn with_userinfo(&self, userinfo: Option<&str>) -> String {
        let scheme = self.scheme.as_str();
        let (host, port) = (&self.host, self.port);
        match userinfo {
            Some(u) => format!("{scheme}://{u}@{host}:{port}"),
            None => format!("{scheme}://{host}:{port}"),
        }
    }
}

impl fmt::Debug for NatsUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`.
fn split_host_port(s: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(after) = s.strip_prefix('[') {
        let (v6, tail) = after
            .split_once(']')
            .ok_or("has an IPv6 address without its closing ']'")?;
        v6.parse::<Ipv6Addr>()
            .map_err(|_| format!("has {v6:?} in brackets, which is not an IPv6 address"))?;
        let port = match tail {
            "" => None,
            t => Some(
                t.strip_prefix(':')
                    .ok_or("has text after the IPv6 address")?,
            ),
        };
        (format!("[{v6}]"), port)
    } else {
        match s.split_once(':') {
            Some((_, p)) if p.contains(':') => {
                return Err("has more than one ':' (write an IPv6 address in brackets)".into());
            }
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (s.to_owned(), None),
        }
    };
    if host.is_empty() {
        return Err("has no host".into());
    }
    if !host.starts_with('[')
        && !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    {
        return Err(format!("has {host:?}, which is not a host name or address"));
    }
    let port = match port {
        None => DEFAULT_NATS_PORT,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("has {p:?}, which is not a port from 1 to 65535"))?,
    };
    Ok((host, port))
}

/// `scheme://userinfo@rest` with the userinfo replaced by `<redacted>` (for messages about a
/// URL that may not parse).
fn redact_userinfo(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    match rest.rsplit_once('@') {
        Some((_, hostport)) => format!("{scheme}<redacted>@{hostport}"),
        None => url.to_owned(),
    }
}

/// `--nats-url`: one URL or more, comma-separated (a string or an array in the file). Given but
/// blank is an error, never "the SQLite store": a blank variable must not quietly move the queue
/// onto a disk that a deployment without a volume loses.
pub(super) fn urls(raw: Raw) -> Result<Vec<NatsUrl>, String> {
    let items = match raw {
        Raw::List(v) => v,
        other => other.text().split(',').map(str::to_owned).collect(),
    };
    if items.iter().all(|i| i.trim().is_empty()) {
        return Err(
            "is set but holds no URL: remove the setting altogether to keep the queue \
                    in the SQLite store of data_dir"
                .into(),
        );
    }
    items.iter().map(|i| NatsUrl::parse(i)).collect()
}

/// `--nats-stream`: valid in JetStream stream, consumer and bucket names and in subject tokens.
pub(super) fn stream(raw: Raw) -> Result<String, String> {
    let text = raw.text();
    let s = text.trim();
    let ok = (1..=MAX_NATS_STREAM_CHARS).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
    if !ok {
        return Err(format!(
            "{s:?} is not a stream name prefix: 1 to {MAX_NATS_STREAM_CHARS} characters of \
             A-Z, a-z, 0-9, '_' and '-' (no dots, spaces, '*' or '>')"
        ));
    }
    Ok(s.to_owned())
}

/// `--nats-replicas`: 1 to 5, JetStream's limit.
pub(super) fn replicas(raw: Raw) -> Result<usize, String> {
    let s = raw.text();
    s.trim()
        .parse::<usize>()
        .ok()
        .filter(|n| (1..=MAX_NATS_REPLICAS).contains(n))
        .ok_or_else(|| {
            format!(
                "{s:?} is not a whole number from 1 to {MAX_NATS_REPLICAS} (JetStream's most \
                 replicas; 1 for a single development server)"
            )
        })
}

/// `--nats-creds`: a file that exists and can be opened.
pub(super) fn creds(raw: Raw) -> Result<PathBuf, String> {
    let p = path(raw)?;
    let shown = p.display();
    match std::fs::metadata(&p) {
        Ok(m) if m.is_file() => {}
        Ok(_) => return Err(format!("{shown} is not a file (a NATS .creds file)")),
        Err(e) => return Err(format!("cannot read {shown}: {e}")),
    }
    std::fs::File::open(&p).map_err(|e| format!("cannot read {shown}: {e}"))?;
    Ok(p)
}
