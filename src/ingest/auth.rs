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

#[derive(Debug)]
pub struct Auth {
    /// Accepted without a routing hint: the global tokens and every route's own tokens.
    digests: Vec<[u8; 32]>,
    /// Requests whose `?workspace=` names a route with its own tokens accept only those.
    by_workspace: Vec<(String, Vec<[u8; 32]>)>,
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
            by_workspace: Vec::new(),
        }
    }

    /// Global tokens plus routes' own tokens: `(workspace, tokens)` of each route that has
    /// tokens (workspace `None` for routes matching on app_group_id only).
    pub fn with_routes(global: &[Secret], routes: &[(Option<&str>, &[Secret])]) -> Self {
        let mut auth = Self::new(global);
        for (workspace, tokens) in routes {
            let digests: Vec<[u8; 32]> = tokens
                .iter()
                .map(|t| digest(t.expose().as_bytes()))
                .collect();
            auth.digests.extend(digests.iter().copied());
            if let Some(w) = workspace {
                match auth.by_workspace.iter_mut().find(|(x, _)| x == w) {
                    Some((_, d)) => d.extend(digests),
                    None => auth.by_workspace.push(((*w).to_owned(), digests)),
                }
            }
        }
        auth
    }

    /// No token configured: every request is accepted (with a warning at start-up).
    pub fn is_open(&self) -> bool {
        self.digests.is_empty()
    }

    /// True when the request carries `Authorization: Bearer <one of the tokens>`.
    pub fn allows(&self, headers: &HeaderMap) -> bool {
        self.allows_for(headers, None)
    }

    /// As [`Auth::allows`] for a request naming `workspace`: a route of that workspace with
    /// its own tokens accepts only those; otherwise any configured token is accepted.
    pub fn allows_for(&self, headers: &HeaderMap, workspace: Option<&str>) -> bool {
        if self.is_open() {
            return true;
        }
        let allowed = workspace
            .and_then(|w| self.by_workspace.iter().find(|(x, _)| x == w))
            .map_or(&self.digests, |(_, d)| d);
        let Some(presented) = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| bearer_token(v.as_bytes()))
        else {
            return false;
        };
        let presented = digest(presented);
        let mut ok = Choice::from(0);
        for d in allowed {
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
    fn a_workspace_route_with_its_own_tokens_accepts_only_those() {
        let global = auth(&["global"]).digests;
        let a = Auth {
            digests: global,
            by_workspace: Vec::new(),
        };
        let route_token = crate::config::Settings::resolve(
            &crate::config::SettingsArgs {
                ingest_token: Some("brand-a-token".into()),
                ..Default::default()
            },
            Default::default(),
        )
        .unwrap()
        .ingest_tokens;
        let mut with = Auth::with_routes(&[], &[(Some("brand-a"), &route_token)]);
        with.digests.extend(a.digests.iter().copied());
        assert!(with.allows_for(&headers("Bearer brand-a-token"), Some("brand-a")));
        assert!(!with.allows_for(&headers("Bearer global"), Some("brand-a")));
        assert!(with.allows_for(&headers("Bearer global"), Some("brand-b")));
        assert!(with.allows_for(&headers("Bearer brand-a-token"), None));
    }

    #[test]
    fn no_token_configured_means_open() {
        let a = Auth::new(&[]);
        assert!(a.is_open());
        assert!(a.allows(&HeaderMap::new()));
    }
}
