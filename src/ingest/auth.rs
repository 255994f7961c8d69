//! Bearer-token check for `POST /currents`.
//!
//! Tokens are compared as SHA-256 digests with a constant-time equality, and every configured
//! token is compared (no early exit), so neither the position of the first differing byte nor
//! the length of a configured token, nor which rotation slot matched, shows in the timing.
//! Tokens never reach a log line.

use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use crate::config::Secret;

pub struct Auth {
    digests: Vec<[u8; 32]>,
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

impl Auth {
    pub fn new(tokens: &[Secret]) -> Self {
        Self {
            digests: tokens
                .iter()
                .map(|t| digest(t.expose().as_bytes()))
                .collect(),
        }
    }

    /// No token configured: every request is accepted (with a warning at start-up).
    pub fn is_open(&self) -> bool {
        self.digests.is_empty()
    }

    /// True when the request carries `Authorization: Bearer <one of the tokens>`.
    pub fn allows(&self, headers: &HeaderMap) -> bool {
        if self.is_open() {
            return true;
        }
        let Some(presented) = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| bearer_token(v.as_bytes()))
        else {
            return false;
        };
        let presented = digest(presented);
        let mut ok = Choice::from(0);
        for d in &self.digests {
            ok |= d.ct_eq(&presented);
        }
        ok.into()
    }
}

/// The token of an RFC 6750 `Bearer` credential (scheme case-insensitive).
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || !rest.starts_with(b" ") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, v.parse().unwrap());
        h
    }

    fn auth(tokens: &[&str]) -> Auth {
        let secrets: Vec<Secret> = tokens
            .iter()
            .map(|t| {
                let args = crate::config::SettingsArgs {
                    ingest_token: Some((*t).into()),
                    ..Default::default()
                };
                crate::config::Settings::resolve(&args, Default::default())
                    .unwrap()
                    .ingest_tokens
                    .remove(0)
            })
            .collect();
        Auth::new(&secrets)
    }

    #[test]
    fn rotation_accepts_any_configured_token() {
        let a = auth(&["new-token", "0p3n5354m3=="]);
        assert!(a.allows(&headers("Bearer new-token")));
        assert!(a.allows(&headers("bearer 0p3n5354m3==")));
        assert!(!a.allows(&headers("Bearer new-toke")));
        assert!(!a.allows(&headers("Basic new-token")));
        assert!(!a.allows(&headers("Bearer ")));
        assert!(!a.allows(&headers("Bearernew-token")));
        assert!(!a.allows(&HeaderMap::new()));
    }

    #[test]
    fn no_token_configured_means_open() {
        let a = Auth::new(&[]);
        assert!(a.is_open());
        assert!(a.allows(&HeaderMap::new()));
    }
}
