//! `[[route]]` tables: several Braze workspaces → several Heap environments.
//!
//! A route matches on the ingest query parameter `workspace` and/or on the event's
//! `properties.app_group_id`, and names its Heap app id and ingest tokens; the settings
//! declared `shared` in `table.rs` (base URL, budgets, mapping, ...) it may override, else it
//! inherits the flat ones. The flat settings form the default route, used when no route matches.
//! [`Route`] is the one view of a route, default or not, that the rest of the program reads.

use std::num::NonZeroU32;

use super::declare::Given;
use super::mapping::MappingSettings;
use super::parse::{app_id, tokens};
use super::table::{RouteFile, Shared};
use super::values::{ConfigError, HeapAppId, Secret};

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
    /// Key of Heap's privacy API (deletions); `None`: deletions stay `unconfigured`.
    pub heap_api_key: Option<Secret>,
    /// The Heap account's Main Production environment id; `None`: `heap_app_id`.
    pub heap_account_app_id: Option<HeapAppId>,
    /// The shared settings as resolved for this route, for `check-config`.
    pub(super) shared: Shared,
}

/// The name of the route formed by the flat settings.
pub const DEFAULT_ROUTE: &str = "default";

/// A route as delivery, routing and the CLI see it: the default route (the flat settings) or a
/// `[[route]]` table.
#[derive(Debug, Clone, Copy)]
pub struct Route<'a> {
    pub name: &'a str,
    /// `None` only for the default route when `heap_app_id` is not set.
    pub heap_app_id: Option<&'a HeapAppId>,
    pub heap_base_url: &'a str,
    pub heap_events_per_minute: NonZeroU32,
    pub heap_identity_events_per_minute: NonZeroU32,
    pub mapping: &'a MappingSettings,
    pub dead_letter_skipped: bool,
    /// Key of Heap's privacy API (deletions); `None`: deletions stay `unconfigured`.
    pub heap_api_key: Option<&'a Secret>,
    /// The Heap account's Main Production environment id as configured; see
    /// [`Route::account_app_id`] for the one in force.
    pub heap_account_app_id: Option<&'a HeapAppId>,
}

impl<'a> Route<'a> {
    /// The environment id Heap's `auth_token` takes for this route's deletions:
    /// `heap_account_app_id`, else the route's own `heap_app_id` (`None` only for a default
    /// route without an app id).
    pub fn account_app_id(&self) -> Option<&'a HeapAppId> {
        self.heap_account_app_id.or(self.heap_app_id)
    }
}

impl RouteSettings {
    /// This route as the rest of the program reads every route.
    pub fn view(&self) -> Route<'_> {
        Route {
            name: &self.name,
            heap_app_id: Some(&self.heap_app_id),
            heap_base_url: &self.heap_base_url,
            heap_events_per_minute: self.heap_events_per_minute,
            heap_identity_events_per_minute: self.heap_identity_events_per_minute,
            mapping: &self.mapping,
            dead_letter_skipped: self.dead_letter_skipped,
            heap_api_key: self.heap_api_key.as_ref(),
            heap_account_app_id: self.heap_account_app_id.as_ref(),
        }
    }
}

impl Shared {
    /// The mapping settings among the shared ones.
    pub(super) fn mapping(&self) -> MappingSettings {
        MappingSettings {
            event_naming: self.event_naming,
            event_prefix: self.event_prefix.clone(),
            anonymous: self.anonymous,
            include_event_types: self.include_event_types.clone(),
            exclude_event_types: self.exclude_event_types.clone(),
            drop_properties: self.drop_properties.clone(),
        }
    }
}

fn route_error(index: usize, name: Option<&str>, key: &str, message: String) -> ConfigError {
    let which = match name {
        Some(n) => format!("[[route]] #{} (name = {n:?})", index + 1),
        None => format!("[[route]] #{}", index + 1),
    };
    ConfigError {
        setting: format!("`{key}` of {which}"),
        message,
    }
}

/// A route's name: a bounded metric label, unique, not reserved.
fn check_name(name: &str, earlier: &[RouteSettings]) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(format!(
            "{name:?} must be 1–64 characters of letters, digits, '-', '_' or '.'"
        ));
    }
    if name == DEFAULT_ROUTE || name == "unroutable" {
        return Err(format!(
            "{name:?} is reserved (the flat settings' route, or events no route takes)"
        ));
    }
    if earlier.iter().any(|o| o.name == name) {
        return Err(format!("{name:?} is used by an earlier route"));
    }
    Ok(())
}

pub(super) fn validate_routes(
    raw: &[RouteFile],
    flat: &Shared,
) -> Result<Vec<RouteSettings>, ConfigError> {
    let mut routes: Vec<RouteSettings> = Vec::with_capacity(raw.len());
    for (i, r) in raw.iter().enumerate() {
        let err = |key: &str, m: String| route_error(i, r.name.as_deref(), key, m);
        let name = r
            .name
            .clone()
            .ok_or_else(|| err("name", "is required (it labels the route's metrics)".into()))?;
        check_name(&name, &routes).map_err(|m| err("name", m))?;
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
        let heap_app_id = match r.heap_app_id.clone() {
            Some(v) => app_id(v.raw()).map_err(|m| err("heap_app_id", m))?,
            None => return Err(err("heap_app_id", "is required".into())),
        };
        let ingest_tokens = match r.ingest_token.clone() {
            Some(t) => tokens(t.raw()).map_err(|m| err("ingest_token", m))?,
            None => Vec::new(),
        };
        let shared = flat.overridden(r, err)?;
        routes.push(RouteSettings {
            name,
            workspace,
            app_group_id,
            heap_app_id,
            heap_base_url: shared.heap_base_url.clone(),
            heap_events_per_minute: shared.heap_events_per_minute,
            heap_identity_events_per_minute: shared.heap_identity_events_per_minute,
            ingest_tokens,
            mapping: shared.mapping(),
            dead_letter_skipped: shared.dead_letter_skipped,
            heap_api_key: shared.heap_api_key.clone(),
            heap_account_app_id: shared.heap_account_app_id.clone(),
            shared,
        });
    }
    Ok(routes)
}

/// Routes sharing a Heap app id share its budgets and pause, so they must agree on them; and
/// one environment belongs to one Heap account, so they must agree on its account id.
pub(super) fn check_shared_app_ids<'a>(
    routes: impl Iterator<Item = Route<'a>>,
) -> Result<(), ConfigError> {
    let lanes: Vec<Route<'_>> = routes.filter(|r| r.heap_app_id.is_some()).collect();
    for (i, a) in lanes.iter().enumerate() {
        for b in &lanes[..i] {
            if a.heap_app_id == b.heap_app_id
                && (a.heap_base_url != b.heap_base_url
                    || a.heap_events_per_minute != b.heap_events_per_minute
                    || a.heap_identity_events_per_minute != b.heap_identity_events_per_minute)
            {
                return Err(ConfigError {
                    setting: format!("routes {:?} and {:?}", b.name, a.name),
                    message: format!(
                        "both deliver to Heap app id {} but disagree on its base URL or budgets; \
                         one environment has one base URL and one budget",
                        a.heap_app_id.map_or("", HeapAppId::as_str)
                    ),
                });
            }
            if a.heap_app_id == b.heap_app_id && a.account_app_id() != b.account_app_id() {
                return Err(ConfigError {
                    setting: format!("routes {:?} and {:?}", b.name, a.name),
                    message: format!(
                        "both deliver to Heap app id {} but name different Heap accounts \
                         (heap_account_app_id {} and {}); one environment belongs to one account",
                        a.heap_app_id.map_or("", HeapAppId::as_str),
                        b.account_app_id().map_or("", HeapAppId::as_str),
                        a.account_app_id().map_or("", HeapAppId::as_str),
                    ),
                });
            }
        }
    }
    Ok(())
}
