//! Configuration: a TOML file, overridden by environment variables, overridden by flags.
//!
//! **Where a setting is declared:** `table.rs`, once: key, help, type and parser, kind,
//! environment variable, default. The `settings!` macro (`declare.rs`) makes from that table the
//! clap arguments ([`SettingsArgs`]), the file keys ([`FileConfig`], [`RouteFile`]), the layering,
//! the errors and the `check-config` print. This file checks the relations between settings and
//! assembles [`Settings`], the validated values the rest of the program reads.
//!
//! Validation is pure, so `check-config` and `serve` share it and tests call it with plain
//! values. A bad value becomes a [`ConfigError`] that names the setting in all its forms, and
//! the CLI turns it into exit code 2. This module imports nothing else of the crate: the
//! delivery and mapping types are built from its values where they live.
#[macro_use]
mod declare;
mod deletions;
mod edge;
mod mapping;
mod nats;
mod parse;
mod print;
mod routes;
mod sources;
mod table;
#[cfg(test)]
mod tests;
mod values;

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use deletions::DeletionAccount;
pub use edge::{EdgeSettings, TlsFiles};
pub use mapping::{
    AnonymousMode, MAX_PREFIX_CHARS, MappingSettings, Naming, check_prefix, patterns,
};
pub use nats::{
    DEFAULT_NATS_PORT, MAX_NATS_REPLICAS, MAX_NATS_STREAM_CHARS, NatsScheme, NatsSettings, NatsUrl,
};
pub use routes::{DEFAULT_ROUTE, Route, RouteSettings};
pub use sources::{Scalar, Tokens};
pub use table::{DECLARATIONS, FileConfig, RouteFile, SettingsArgs};
use table::{Flat, Shared, setting};
pub use values::{ConfigError, Decl, HeapAppId, LogFormat, RetryBackoff, Secret};

/// Validated, effective settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub ingest_tokens: Vec<Secret>,
    pub data_dir: PathBuf,
    pub heap_app_id: Option<HeapAppId>,
    pub heap_base_url: String,
    pub heap_events_per_minute: NonZeroU32,
    pub heap_identity_events_per_minute: NonZeroU32,
    pub max_queue_bytes: u64,
    pub max_body_bytes: u64,
    pub min_free_disk_bytes: u64,
    pub dedup_window: Duration,
    pub dedup_capacity: usize,
    pub shutdown_grace: Duration,
    /// Connection timeouts, the connection cap and the ingest memory budget.
    pub edge: EdgeSettings,
    pub log_format: LogFormat,
    pub heap_batch_size: usize,
    pub heap_linger: Duration,
    /// Largest body of one Heap request; larger batches are split before sending.
    pub heap_max_request_bytes: u64,
    /// Most event bytes one delivery lane holds in memory.
    pub delivery_window_bytes: u64,
    pub heap_timeout: Duration,
    pub heap_budget_window: Duration,
    pub retry_backoff: RetryBackoff,
    pub max_event_age: Duration,
    /// The default route's mapping settings.
    pub mapping: MappingSettings,
    pub dead_letter_skipped: bool,
    pub dry_run: bool,
    /// The default route's key of Heap's privacy API; `None`: its deletions stay
    /// `unconfigured`. [`Settings::deletion_accounts`] resolves every route's.
    pub heap_api_key: Option<Secret>,
    /// The default route's Heap account (Main Production environment) id; `None`: its
    /// `heap_app_id`.
    pub heap_account_app_id: Option<HeapAppId>,
    /// How long a Braze user_id → Heap identity mapping is kept after the user was last seen.
    pub identity_map_retention: Duration,
    /// Least time between two requests to Heap's deletion API, per Heap account.
    pub deletion_request_interval: Duration,
    /// How often a submitted deletion's status is asked.
    pub deletion_poll_interval: Duration,
    /// A deletion not complete this long after it was received counts as overdue.
    pub deletion_overdue_after: Duration,
    /// `[[route]]` tables, in file order.
    pub routes: Vec<RouteSettings>,
    /// The queue on NATS JetStream, when `nats_url` is set; read with [`Settings::nats`].
    nats: Option<NatsSettings>,
    /// The declared settings as resolved, for `check-config`.
    flat: Flat,
    shared: Shared,
}

impl Settings {
    /// Reads the file named by `args.config` (if any) and resolves the layers.
    ///
    /// clap takes an environment variable set to the empty string for an absent one; here an
    /// empty `CURRENTS_HEAP_INGEST_TOKEN`, `HEAP_API_KEY` or `CURRENTS_HEAP_NATS_URL` counts as
    /// given (and is refused as blank), because an empty secret mounted into it must not
    /// silently turn authentication off, leave deletions unsent, or move the queue from NATS
    /// onto a local disk that a deployment without a volume loses.
    pub fn load(args: &SettingsArgs) -> Result<Self, ConfigError> {
        let mut args = std::borrow::Cow::Borrowed(args);
        if args.nats_url.is_none()
            && let Some(v) = std::env::var_os(setting::nats_url.env)
        {
            args.to_mut().nats_url = Some(v.to_string_lossy().into_owned());
        }
        if args.ingest_token.is_none()
            && let Some(v) = std::env::var_os(setting::ingest_token.env)
        {
            args.to_mut().ingest_token = Some(v.to_string_lossy().into_owned());
        }
        if args.heap_api_key.is_none()
            && let Some(v) = std::env::var_os(setting::heap_api_key.env)
        {
            args.to_mut().heap_api_key = Some(v.to_string_lossy().into_owned());
        }
        let file = match &args.config {
            Some(path) => read_config_file(path)?,
            None => FileConfig::default(),
        };
        Self::resolve(&args, file)
    }

    /// Lays `args` (flags, then env) over `file`, validates every setting and the relations
    /// between them.
    pub fn resolve(args: &SettingsArgs, file: FileConfig) -> Result<Self, ConfigError> {
        let flat = Flat::from_layers(args, &file)?;
        let shared = Shared::from_layers(args, &file)?;
        let edge = EdgeSettings::from_flat(&flat)?;
        if flat.delivery_window_bytes < flat.heap_max_request_bytes {
            return Err(ConfigError::new(
                &setting::delivery_window_bytes,
                format!(
                    "must be at least heap_max_request_bytes ({} bytes), so that a full request \
                     fits in the window",
                    flat.heap_max_request_bytes
                ),
            ));
        }
        if flat.retry_max_backoff < flat.retry_initial_backoff {
            return Err(ConfigError::new(
                &setting::retry_max_backoff,
                format!(
                    "must be at least retry_initial_backoff ({})",
                    humantime::format_duration(flat.retry_initial_backoff)
                ),
            ));
        }
        let routes = routes::validate_routes(&file.route, &shared)?;
        // Without nats_url the other NATS settings are ignored (not an error), and with it
        // data_dir is not where the queue lives (not an error either: nothing to refuse).
        let nats = NatsSettings::from_flat(&flat);
        let settings = Settings {
            listen: flat.listen,
            ingest_tokens: flat.ingest_token.clone().unwrap_or_default(),
            data_dir: flat.data_dir.clone(),
            heap_app_id: flat.heap_app_id.clone(),
            heap_base_url: shared.heap_base_url.clone(),
            heap_events_per_minute: shared.heap_events_per_minute,
            heap_identity_events_per_minute: shared.heap_identity_events_per_minute,
            max_queue_bytes: flat.max_queue_bytes,
            max_body_bytes: flat.max_body_bytes,
            min_free_disk_bytes: flat.min_free_disk_bytes,
            dedup_window: flat.dedup_window,
            dedup_capacity: flat.dedup_capacity,
            shutdown_grace: flat.shutdown_grace,
            edge,
            log_format: flat.log_format,
            heap_batch_size: flat.heap_batch_size,
            heap_linger: flat.heap_linger,
            heap_max_request_bytes: flat.heap_max_request_bytes,
            delivery_window_bytes: flat.delivery_window_bytes,
            heap_timeout: flat.heap_timeout,
            heap_budget_window: flat.heap_budget_window,
            retry_backoff: RetryBackoff {
                initial: flat.retry_initial_backoff,
                max: flat.retry_max_backoff,
            },
            max_event_age: flat.max_event_age,
            mapping: shared.mapping(),
            dead_letter_skipped: shared.dead_letter_skipped,
            dry_run: flat.dry_run,
            heap_api_key: shared.heap_api_key.clone(),
            heap_account_app_id: shared.heap_account_app_id.clone(),
            identity_map_retention: flat.identity_map_retention,
            deletion_request_interval: flat.deletion_request_interval,
            deletion_poll_interval: flat.deletion_poll_interval,
            deletion_overdue_after: flat.deletion_overdue_after,
            routes,
            nats,
            flat,
            shared,
        };
        routes::check_shared_app_ids(settings.all_routes())?;
        Ok(settings)
    }

    /// The checks that only `serve` needs: a destination for the default route.
    pub fn validate_for_serve(&self) -> Result<(), ConfigError> {
        if self.heap_app_id.is_none() && !self.dry_run && self.routes.is_empty() {
            return Err(ConfigError::new(
                &setting::heap_app_id,
                "is required to deliver to Heap (or configure [[route]] tables, or run with --dry-run)",
            ));
        }
        Ok(())
    }

    /// The queue on NATS JetStream (product.md §8): `Some` when `nats_url` is set, `None` for
    /// the SQLite store in `data_dir`. Its URLs carry any credentials the setting gave.
    pub fn nats(&self) -> Option<NatsSettings> {
        self.nats.clone()
    }

    /// The effective settings as TOML, secrets redacted (printed by `check-config`).
    pub fn to_redacted_toml(&self) -> String {
        print::redacted(&self.flat, &self.shared, &self.routes)
    }

    /// The default route: the flat settings.
    pub fn default_route(&self) -> Route<'_> {
        Route {
            name: DEFAULT_ROUTE,
            heap_app_id: self.heap_app_id.as_ref(),
            heap_base_url: &self.heap_base_url,
            heap_events_per_minute: self.heap_events_per_minute,
            heap_identity_events_per_minute: self.heap_identity_events_per_minute,
            mapping: &self.mapping,
            dead_letter_skipped: self.dead_letter_skipped,
            heap_api_key: self.heap_api_key.as_ref(),
            heap_account_app_id: self.heap_account_app_id.as_ref(),
        }
    }

    /// Every route: the default one first, then the `[[route]]` tables in file order.
    pub fn all_routes(&self) -> impl Iterator<Item = Route<'_>> {
        std::iter::once(self.default_route()).chain(self.routes.iter().map(RouteSettings::view))
    }

    /// The route named `name` ([`DEFAULT_ROUTE`] for the flat settings).
    pub fn route(&self, name: &str) -> Option<Route<'_>> {
        self.all_routes().find(|r| r.name == name)
    }
}

/// Largest configuration file read: a real one is a few kilobytes, and `--config /dev/zero`
/// (or a log file by mistake) must not be read without end.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// The configuration file, read up to [`MAX_CONFIG_BYTES`] (plus one byte, to tell a file over
/// the limit) and parsed.
fn read_config_file(path: &Path) -> Result<FileConfig, ConfigError> {
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
