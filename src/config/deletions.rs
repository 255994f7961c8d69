//! The Heap accounts that user deletions go to (README "Deletions").
//!
//! Heap deletes a user from every environment of an account at once, and its `auth_token`
//! names the account by its *Main Production* environment id. So the deletion submitter does
//! not work per route but per account: routes with the same base URL, account id
//! (`heap_account_app_id`, else the route's `heap_app_id`) and API key share one
//! [`DeletionAccount`], and so one deletion request per batch of users.

use super::values::Secret;
use super::{Route, Settings};

/// One Heap account as the deletion submitter sees it, and the routes whose deletions go to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletionAccount {
    /// Heap API base URL (`heap_base_url` of its routes).
    pub base_url: String,
    /// The environment id `auth_token` takes: `heap_account_app_id`, else the route's
    /// `heap_app_id`.
    pub account_app_id: String,
    /// `None`: no `heap_api_key` for these routes; their deletions are recorded `unconfigured`.
    pub api_key: Option<Secret>,
    /// Names of the routes that share this account and key, in configuration order (the
    /// default route first).
    pub routes: Vec<String>,
}

impl Settings {
    /// Every Heap account deletions go to, one entry per (base URL, account id, API key), in
    /// the order of the first route of each. Every route with a Heap app id is in exactly one
    /// entry (the default route without an app id is in none: it delivers nowhere). Routes
    /// without a key form entries with `api_key: None`.
    pub fn deletion_accounts(&self) -> Vec<DeletionAccount> {
        let mut accounts: Vec<DeletionAccount> = Vec::new();
        for route in self.all_routes() {
            let Some(account) = route.account_app_id() else {
                continue;
            };
            let key = route.heap_api_key;
            let same = |a: &&mut DeletionAccount| {
                a.base_url == route.heap_base_url
                    && a.account_app_id == account.as_str()
                    && a.api_key.as_ref() == key
            };
            match accounts.iter_mut().find(same) {
                Some(a) => a.routes.push(route.name.to_owned()),
                None => accounts.push(DeletionAccount {
                    base_url: route.heap_base_url.to_owned(),
                    account_app_id: account.as_str().to_owned(),
                    api_key: key.cloned(),
                    routes: vec![route.name.to_owned()],
                }),
            }
        }
        accounts
    }

    /// The routes whose deletions cannot reach Heap: no `heap_api_key` (for the start-up
    /// warning).
    pub fn routes_without_deletion_key(&self) -> Vec<&str> {
        self.all_routes()
            .filter(|r| r.heap_app_id.is_some() && r.heap_api_key.is_none())
            .map(|r: Route<'_>| r.name)
            .collect()
    }
}
