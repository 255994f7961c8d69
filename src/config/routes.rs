//! `[[route]]` tables: several Braze workspaces → several Heap environments.
//!
//! A route matches on the ingest query parameter `workspace` and/or on the event's
//! `properties.app_group_id`, and names its Heap app id, base URL, budgets, ingest tokens and
//! mapping options. The flat settings form the default route, used when no route matches.

use std::num::NonZeroU32;

use serde::Deserialize;

use super::BLANK_TOKEN;
use super::mapping::MappingSettings;
use super::sources::{Scalar, Tokens, list};
use super::values::{ConfigError, HeapAppId, Secret, validate_base_url};

/// One `[[route]]` table as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    pub name: Option<String>,
    pub workspace: Option<String>,
    pub app_group_id: Option<String>,
    pub heap_app_id: Option<Scalar>,
    pub heap_base_url: Option<String>,
    pub heap_events_per_minute: Option<Scalar>,
    pub heap_identity_events_per_minute: Option<Scalar>,
    pub ingest_token: Option<Tokens>,
    pub event_naming: Option<String>,
    pub event_prefix: Option<String>,
    pub anonymous: Option<String>,
    pub include_event_types: Option<Tokens>,
    pub exclude_event_types: Option<Tokens>,
    pub drop_properties: Option<Tokens>,
    pub dead_letter_skipped: Option<bool>,
}

/// A validated route.
#[derive(Debug, Clone)]
pub struct RouteSettings {
    /// Unique; a bounded metric label.
    pub name: String,
    pub workspace: Option<String>,
    pub app_group_id: Option<String>,
    pub heap_app_id: HeapAppId,
    pub heap_base_url: String,
    pub heap_events_per_minute: NonZeroU32,
    pub heap_identity_events_per_minute: NonZeroU32,
    /// Empty: the global tokens apply.
    pub ingest_tokens: Vec<Secret>,
    pub mapping: MappingSettings,
    pub dead_letter_skipped: bool,
}

/// The name of the route formed by the flat settings.
pub const DEFAULT_ROUTE: &str = "default";

/// What a route inherits from the flat settings when it does not say.
pub(super) struct Inherited<'a> {
    pub heap_base_url: &'a str,
    pub heap_events_per_minute: NonZeroU32,
    pub heap_identity_events_per_minute: NonZeroU32,
    pub mapping: &'a MappingSettings,
    pub dead_letter_skipped: bool,
}

fn route_error(
    index: usize,
    name: Option<&str>,
    key: &str,
    message: impl Into<String>,
) -> ConfigError {
    let which = match name {
        Some(n) => format!("[[route]] #{} (name = {n:?})", index + 1),
        None => format!("[[route]] #{}", index + 1),
    };
    ConfigError {
        setting: format!("`{key}` of {which}"),
        message: message.into(),
    }
}

fn positive(raw: Option<&Scalar>, default: NonZeroU32) -> Result<NonZeroU32, String> {
    match raw {
        None => Ok(default),
        Some(v) => v
            .to_string()
            .trim()
            .parse::<NonZeroU32>()
            .map_err(|_| format!("{v} is not a positive integer")),
    }
}

pub(super) fn validate_routes(
    raw: &[RouteFile],
    inherited: &Inherited<'_>,
) -> Result<Vec<RouteSettings>, ConfigError> {
    let mut routes: Vec<RouteSettings> = Vec::with_capacity(raw.len());
    for (i, r) in raw.iter().enumerate() {
        let err = |key: &str, m: String| route_error(i, r.name.as_deref(), key, m);
        let name = r
            .name
            .clone()
            .ok_or_else(|| err("name", "is required (it labels the route's metrics)".into()))?;
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(err(
                "name",
                format!("{name:?} must be 1–64 characters of letters, digits, '-', '_' or '.'"),
            ));
        }
        if name == DEFAULT_ROUTE || name == "unroutable" {
            return Err(err(
                "name",
                format!(
                    "{name:?} is reserved (the flat settings' route, or events no route takes)"
                ),
            ));
        }
        if routes.iter().any(|o| o.name == name) {
            return Err(err("name", format!("{name:?} is used by an earlier route")));
        }
        let non_empty = |v: &Option<String>| {
            v.as_ref()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
        };
        let workspace = non_empty(&r.workspace);
        let app_group_id = non_empty(&r.app_group_id);
        if workspace.is_none() && app_group_id.is_none() {
            return Err(err(
                "workspace",
                "a route needs `workspace` (the ?workspace= query parameter) or `app_group_id` (or both)".into(),
            ));
        }
        if let Some(o) = routes
            .iter()
            .find(|o| o.workspace == workspace && o.app_group_id == app_group_id)
        {
            return Err(err(
                "workspace",
                format!(
                    "matches exactly what route {:?} matches; one of them would never be used",
                    o.name
                ),
            ));
        }
        let heap_app_id = match &r.heap_app_id {
            Some(v) => HeapAppId::parse(&v.to_string()).map_err(|m| err("heap_app_id", m))?,
            None => return Err(err("heap_app_id", "is required".into())),
        };
        let heap_base_url = match &r.heap_base_url {
            Some(u) => validate_base_url(u).map_err(|m| err("heap_base_url", m))?,
            None => inherited.heap_base_url.to_owned(),
        };
        let heap_events_per_minute = positive(
            r.heap_events_per_minute.as_ref(),
            inherited.heap_events_per_minute,
        )
        .map_err(|m| err("heap_events_per_minute", m))?;
        let heap_identity_events_per_minute = positive(
            r.heap_identity_events_per_minute.as_ref(),
            inherited.heap_identity_events_per_minute,
        )
        .map_err(|m| err("heap_identity_events_per_minute", m))?;
        let ingest_tokens = list(&None, r.ingest_token.clone())
            .into_iter()
            .map(|t| {
                if t.bytes().all(|b| b.is_ascii_graphic()) {
                    Ok(Secret(t))
                } else {
                    Err(err(
                        "ingest_token",
                        "a token may only contain printable ASCII without spaces".into(),
                    ))
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        if r.ingest_token.is_some() && ingest_tokens.is_empty() {
            return Err(err("ingest_token", BLANK_TOKEN.into()));
        }
        let or_list = |v: &Option<Tokens>, d: &[String]| match v {
            Some(t) => list(&None, Some(t.clone())),
            None => d.to_vec(),
        };
        let inherit = inherited.mapping;
        let or = |v: &Option<String>, d: &str| v.clone().unwrap_or_else(|| d.to_owned());
        let mapping = MappingSettings::build(
            or(&r.event_naming, &inherit.event_naming),
            or(&r.event_prefix, &inherit.event_prefix),
            or(&r.anonymous, &inherit.anonymous),
            or_list(&r.include_event_types, &inherit.include_event_types),
            or_list(&r.exclude_event_types, &inherit.exclude_event_types),
            or_list(&r.drop_properties, &inherit.drop_properties),
        )
        .map_err(|(key, m)| err(key, m))?;
        routes.push(RouteSettings {
            name,
            workspace,
            app_group_id,
            heap_app_id,
            heap_base_url,
            heap_events_per_minute,
            heap_identity_events_per_minute,
            ingest_tokens,
            mapping,
            dead_letter_skipped: r
                .dead_letter_skipped
                .unwrap_or(inherited.dead_letter_skipped),
        });
    }
    Ok(routes)
}

/// Routes sharing a Heap app id share its budgets and pause, so they must agree on them.
pub(super) fn check_shared_app_ids(
    lanes: &[(&str, &HeapAppId, &str, NonZeroU32, NonZeroU32)],
) -> Result<(), ConfigError> {
    for (i, a) in lanes.iter().enumerate() {
        for b in &lanes[..i] {
            if a.1 == b.1 && (a.2 != b.2 || a.3 != b.3 || a.4 != b.4) {
                return Err(ConfigError {
                    setting: format!("routes {:?} and {:?}", b.0, a.0),
                    message: format!(
                        "both deliver to Heap app id {} but disagree on its base URL or budgets; \
                         one environment has one base URL and one budget",
                        a.1.as_str()
                    ),
                });
            }
        }
    }
    Ok(())
}
