//! Which route an event takes: by the request's `workspace` query parameter and/or the event's
//! `properties.app_group_id`, else the default route (the flat settings), else none
//! (*unroutable*: acknowledged, kept as a dead letter, replayable after a config fix).
//!
//! Order: routes that name both a workspace and an app group id are tried first, then the
//! others, each group in file order; the first whose criteria all match wins. `check-config`
//! refuses two routes with identical criteria.

use std::sync::Arc;

use crate::config::{AnonymousMode, DEFAULT_ROUTE, Settings};
use crate::queue::HeapUser;
use crate::transform::target::{Target, resolve_ids};

/// Where an event goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTarget {
    pub name: Arc<str>,
    pub app_id: Arc<str>,
    /// How the route's mapping treats users without an `external_user_id`: ingest needs it
    /// to know which Heap user an event is sent for (the identity map).
    pub anonymous: AnonymousMode,
}

#[derive(Debug, Clone)]
struct Rule {
    target: RouteTarget,
    workspace: Option<String>,
    app_group_id: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Router {
    rules: Vec<Rule>,
    default: Option<RouteTarget>,
}

impl RouteTarget {
    /// The Heap user this route's mapping sends an event for, from its `user.external_user_id`
    /// and `user.user_id`: what the identity map remembers (ingest, and `dlq replay`).
    pub fn heap_user(
        &self,
        external_user_id: Option<&str>,
        braze_user_id: Option<&str>,
    ) -> Option<HeapUser> {
        match resolve_ids(external_user_id, braze_user_id, self.anonymous).ok()? {
            Target::Identity(id) => Some(HeapUser::Identity(id)),
            Target::UserId(id) => Some(HeapUser::UserId(id)),
        }
    }
}

/// The app id of the default route under `--dry-run` without `--heap-app-id`.
pub const DRY_RUN_APP_ID: &str = "0";

/// The Heap app id of the default route, if there is one: `--heap-app-id`; or, under
/// `--dry-run` with no `[[route]]` at all, a placeholder so a newcomer sees the whole flow.
/// With routes configured, a dry run routes exactly as the real run would.
pub fn default_app_id(settings: &Settings) -> Option<&str> {
    match &settings.heap_app_id {
        Some(id) => Some(id.as_str()),
        None if settings.dry_run && settings.routes.is_empty() => Some(DRY_RUN_APP_ID),
        None => None,
    }
}

impl Router {
    pub fn from_settings(settings: &Settings) -> Self {
        let mut rules: Vec<Rule> = settings
            .routes
            .iter()
            .map(|r| Rule {
                target: RouteTarget {
                    name: Arc::from(r.name.as_str()),
                    app_id: Arc::from(r.heap_app_id.as_str()),
                    anonymous: r.mapping.anonymous,
                },
                workspace: r.workspace.clone(),
                app_group_id: r.app_group_id.clone(),
            })
            .collect();
        // Stable: both-criteria routes first, file order kept within each group.
        rules.sort_by_key(|r| !(r.workspace.is_some() && r.app_group_id.is_some()));
        let default = default_app_id(settings).map(|app_id| RouteTarget {
            name: Arc::from(DEFAULT_ROUTE),
            app_id: Arc::from(app_id),
            anonymous: settings.mapping.anonymous,
        });
        Self { rules, default }
    }

    /// True when some route matches on `app_group_id` (ingest then reads it from each event).
    pub fn needs_app_group_id(&self) -> bool {
        self.rules.iter().any(|r| r.app_group_id.is_some())
    }

    pub fn route(
        &self,
        workspace: Option<&str>,
        app_group_id: Option<&str>,
    ) -> Option<&RouteTarget> {
        self.rules
            .iter()
            .find(|r| {
                r.workspace.as_deref().is_none_or(|w| Some(w) == workspace)
                    && r.app_group_id
                        .as_deref()
                        .is_none_or(|g| Some(g) == app_group_id)
            })
            .map(|r| &r.target)
            .or(self.default.as_ref())
    }

    /// True when some route delivers to Heap app id `app_id`.
    pub fn serves(&self, app_id: &str) -> bool {
        !app_id.is_empty() && self.targets().any(|t| &*t.app_id == app_id)
    }

    /// Every route target (default first), for metric labels and delivery lanes.
    pub fn targets(&self) -> impl Iterator<Item = &RouteTarget> {
        self.default
            .iter()
            .chain(self.rules.iter().map(|r| &r.target))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FileConfig, SettingsArgs};

    fn router(toml: &str, app_id: Option<&str>) -> Router {
        let args = SettingsArgs {
            heap_app_id: app_id.map(str::to_owned),
            ..Default::default()
        };
        let file: FileConfig = toml::from_str(toml).unwrap();
        Router::from_settings(&Settings::resolve(&args, file).unwrap())
    }

    const TWO: &str = r#"
        [[route]]
        name = "brand-a"
        workspace = "brand-a"
        heap_app_id = "1111"
        [[route]]
        name = "brand-b"
        app_group_id = "grp-b"
        heap_app_id = "2222"
        [[route]]
        name = "brand-b-eu"
        workspace = "eu"
        app_group_id = "grp-b"
        heap_app_id = "3333"
        heap_base_url = "https://c.eu.heap-api.com"
    "#;

    #[test]
    fn matches_by_workspace_by_app_group_and_by_both() {
        let r = router(TWO, Some("9999"));
        let name = |w, g| r.route(w, g).map(|t| t.name.to_string());
        assert_eq!(name(Some("brand-a"), None).as_deref(), Some("brand-a"));
        assert_eq!(
            name(Some("brand-a"), Some("grp-b")).as_deref(),
            Some("brand-a")
        );
        assert_eq!(name(None, Some("grp-b")).as_deref(), Some("brand-b"));
        assert_eq!(
            name(Some("eu"), Some("grp-b")).as_deref(),
            Some("brand-b-eu")
        );
        assert_eq!(
            name(Some("other"), Some("grp-x")).as_deref(),
            Some("default")
        );
        assert!(r.needs_app_group_id());
        assert_eq!(
            r.route(Some("eu"), Some("grp-b")).unwrap().app_id.as_ref(),
            "3333"
        );
    }

    #[test]
    fn without_a_default_unmatched_events_are_unroutable() {
        let r = router(TWO, None);
        assert!(r.route(Some("nope"), None).is_none());
        assert!(r.route(Some("brand-a"), None).is_some());
    }
}
