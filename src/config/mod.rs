//! Configuration: a TOML file, overridden by environment variables, overridden by flags.
//!
//! Every setting exists in all three forms (product.md §2). The layering works in two steps:
//! clap resolves "flag, else environment variable" for each setting into [`SettingsArgs`], and
//! [`Settings::resolve`] lays that over the optional file ([`FileConfig`]) and validates the
//! result. Validation is pure, so `check-config` and `serve` share it and tests call it with
//! plain values. A bad value becomes a [`ConfigError`] that names the setting in all its forms, and
//! `main` turns it into exit code 2.
mod edge;
mod mapping;
mod routes;
mod sources;
mod values;

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use crate::delivery::Backoff;

pub use edge::{EdgeSettings, TlsFiles};
pub use mapping::MappingSettings;
pub use routes::{DEFAULT_ROUTE, RouteFile, RouteSettings};
use sources::list;
pub use sources::{FileConfig, Scalar, SettingsArgs, Tokens};
pub use values::{ConfigError, HeapAppId, LogFormat, Secret};
use values::{parse_duration, parse_size, validate_base_url};

/// Why a token setting that is present but holds no token is refused.
const BLANK_TOKEN: &str = "is set but holds no token (empty, blank, or only commas): that would \
    turn authentication off. Set a token, or remove the setting altogether to accept \
    unauthenticated requests (a warning is logged then)";

/// Braze drops events above 900 KB, so a one-event batch must always fit under the body limit.
const MIN_BODY_BYTES: u64 = 1024 * 1024;
/// Floor of `heap_max_request_bytes`: below it a typo ("4" for "4MiB") would send every event
/// alone. An event larger than the cap is still sent (alone), so any floor is safe.
const MIN_HEAP_REQUEST_BYTES: u64 = 64 * 1024;

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
    pub retry_backoff: Backoff,
    pub max_event_age: Duration,
    /// The default route's mapping settings.
    pub mapping: MappingSettings,
    pub dead_letter_skipped: bool,
    pub dry_run: bool,
    /// `[[route]]` tables, in file order.
    pub routes: Vec<RouteSettings>,
}

/// Largest configuration file read: a real one is a few kilobytes, and `--config /dev/zero`
/// (or a log file by mistake) must not be read without end.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// The text of the configuration file, read up to [`MAX_CONFIG_BYTES`] (plus one byte, to tell
/// a file over the limit).
fn read_config_file(path: &std::path::Path) -> Result<String, ConfigError> {
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
    String::from_utf8(bytes)
        .map_err(|_| ConfigError::file(path, "cannot read: the file is not UTF-8 text"))
}

/// Picks the flag/env value if given, else the file value.
fn pick<T>(args: Option<T>, file: Option<T>) -> Option<T> {
    args.or(file)
}

impl Settings {
    /// Reads the file named by `args.config` (if any) and resolves the layers.
    ///
    /// clap takes an environment variable set to the empty string for an absent one; here an
    /// empty `CURRENTS_HEAP_INGEST_TOKEN` counts as given (and is refused as blank), because an
    /// empty secret mounted into it must not silently turn authentication off.
    pub fn load(args: &SettingsArgs) -> Result<Self, ConfigError> {
        let mut args = std::borrow::Cow::Borrowed(args);
        if args.ingest_token.is_none()
            && let Some(v) = std::env::var_os("CURRENTS_HEAP_INGEST_TOKEN")
        {
            args.to_mut().ingest_token = Some(v.to_string_lossy().into_owned());
        }
        let args = args.as_ref();
        let file = match &args.config {
            Some(path) => {
                let text = read_config_file(path)?;
                toml::from_str::<FileConfig>(&text)
                    .map_err(|e| ConfigError::file(path, e.to_string()))?
            }
            None => FileConfig::default(),
        };
        Self::resolve(args, file)
    }

    /// Lays `args` (flags, then env) over `file` and validates every setting.
    pub fn resolve(args: &SettingsArgs, file: FileConfig) -> Result<Self, ConfigError> {
        let scalar = |s: Option<Scalar>| s.map(|v| v.to_string());
        let edge = edge::resolve(args, &file)?;

        let listen_raw =
            pick(args.listen.clone(), file.listen).unwrap_or_else(|| "127.0.0.1:8080".to_owned());
        let listen = listen_raw.parse::<SocketAddr>().map_err(|e| {
            ConfigError::new(
                "listen",
                "CURRENTS_HEAP_LISTEN",
                format!("{listen_raw:?} is not an address like 127.0.0.1:8080: {e}"),
            )
        })?;

        // Given (by flag, environment or file) but holding no token is an error, never "no
        // token configured": an empty secret mounted into the variable must not turn
        // authentication off.
        let token_given = args.ingest_token.is_some() || file.ingest_token.is_some();
        let token_list = list(&args.ingest_token, file.ingest_token);
        if token_given && token_list.is_empty() {
            return Err(ConfigError::new(
                "ingest_token",
                "CURRENTS_HEAP_INGEST_TOKEN",
                BLANK_TOKEN,
            ));
        }
        let mut ingest_tokens = Vec::with_capacity(token_list.len());
        for t in token_list {
            let t = t.trim();
            if t.is_empty() {
                continue;
            }
            if !t.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ConfigError::new(
                    "ingest_token",
                    "CURRENTS_HEAP_INGEST_TOKEN",
                    "a token may only contain printable ASCII without spaces",
                ));
            }
            ingest_tokens.push(Secret(t.to_owned()));
        }

        let data_dir =
            pick(args.data_dir.clone(), file.data_dir).unwrap_or_else(|| "./data".into());
        if data_dir.as_os_str().is_empty() {
            return Err(ConfigError::new(
                "data_dir",
                "CURRENTS_HEAP_DATA_DIR",
                "must not be empty",
            ));
        }

        let heap_app_id = match pick(args.heap_app_id.clone(), scalar(file.heap_app_id)) {
            Some(s) => Some(
                HeapAppId::parse(&s)
                    .map_err(|m| ConfigError::new("heap_app_id", "HEAP_APP_ID", m))?,
            ),
            None => None,
        };

        let heap_base_url = pick(args.heap_base_url.clone(), file.heap_base_url)
            .unwrap_or_else(|| "https://heapanalytics.com".to_owned());
        let heap_base_url = validate_base_url(&heap_base_url)
            .map_err(|m| ConfigError::new("heap_base_url", "HEAP_BASE_URL", m))?;

        let per_minute = |key: &str, env: &str, raw: Option<String>, default: u32| match raw {
            None => Ok(NonZeroU32::new(default).expect("non-zero default")),
            Some(s) => s.trim().parse::<NonZeroU32>().map_err(|_| {
                ConfigError::new(key, env, format!("{s:?} is not a positive integer"))
            }),
        };
        let heap_events_per_minute = per_minute(
            "heap_events_per_minute",
            "HEAP_EVENTS_PER_MINUTE",
            pick(
                args.heap_events_per_minute.clone(),
                scalar(file.heap_events_per_minute),
            ),
            15_000,
        )?;
        let heap_identity_events_per_minute = per_minute(
            "heap_identity_events_per_minute",
            "HEAP_IDENTITY_EVENTS_PER_MINUTE",
            pick(
                args.heap_identity_events_per_minute.clone(),
                scalar(file.heap_identity_events_per_minute),
            ),
            1_000,
        )?;

        let max_queue_bytes = parse_size(
            "max_queue_bytes",
            "CURRENTS_HEAP_MAX_QUEUE_BYTES",
            pick(args.max_queue_bytes.clone(), scalar(file.max_queue_bytes)),
            "10GiB",
        )?;
        if max_queue_bytes == 0 {
            return Err(ConfigError::new(
                "max_queue_bytes",
                "CURRENTS_HEAP_MAX_QUEUE_BYTES",
                "must be greater than 0",
            ));
        }
        let max_body_bytes = parse_size(
            "max_body_bytes",
            "CURRENTS_HEAP_MAX_BODY_BYTES",
            pick(args.max_body_bytes.clone(), scalar(file.max_body_bytes)),
            "8MiB",
        )?;
        if max_body_bytes < MIN_BODY_BYTES {
            return Err(ConfigError::new(
                "max_body_bytes",
                "CURRENTS_HEAP_MAX_BODY_BYTES",
                "must be at least 1MiB: Braze sends single events of up to 900 KB",
            ));
        }
        edge.check_body_limit(max_body_bytes)?;
        let min_free_disk_bytes = parse_size(
            "min_free_disk_bytes",
            "CURRENTS_HEAP_MIN_FREE_DISK_BYTES",
            pick(
                args.min_free_disk_bytes.clone(),
                scalar(file.min_free_disk_bytes),
            ),
            "256MiB",
        )?;

        let dedup_window = parse_duration(
            "dedup_window",
            "CURRENTS_HEAP_DEDUP_WINDOW",
            pick(args.dedup_window.clone(), file.dedup_window),
            "24h",
        )?;
        let dedup_capacity = match pick(args.dedup_capacity.clone(), scalar(file.dedup_capacity)) {
            None => 4_000_000,
            Some(s) => s
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=1 << 31).contains(n))
                .ok_or_else(|| {
                    ConfigError::new(
                        "dedup_capacity",
                        "CURRENTS_HEAP_DEDUP_CAPACITY",
                        format!("{s:?} is not a whole number between 1 and 2147483648"),
                    )
                })?,
        };
        let shutdown_grace = parse_duration(
            "shutdown_grace",
            "CURRENTS_HEAP_SHUTDOWN_GRACE",
            pick(args.shutdown_grace.clone(), file.shutdown_grace),
            "30s",
        )?;

        let log_format = match pick(args.log_format.clone(), file.log_format)
            .as_deref()
            .map(str::trim)
        {
            None | Some("json") => LogFormat::Json,
            Some("text") => LogFormat::Text,
            Some(other) => {
                return Err(ConfigError::new(
                    "log_format",
                    "CURRENTS_HEAP_LOG_FORMAT",
                    format!("{other:?} is neither \"json\" nor \"text\""),
                ));
            }
        };

        let heap_batch_size = match pick(args.heap_batch_size.clone(), scalar(file.heap_batch_size))
        {
            None => 1000,
            Some(s) => s
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=1000).contains(n))
                .ok_or_else(|| {
                    ConfigError::new(
                        "heap_batch_size",
                        "HEAP_BATCH_SIZE",
                        format!("{s:?} is not a whole number from 1 to 1000 (Heap's bulk limit)"),
                    )
                })?,
        };
        let heap_linger = parse_duration(
            "heap_linger",
            "HEAP_LINGER",
            pick(args.heap_linger.clone(), file.heap_linger),
            "1s",
        )?;
        let heap_max_request_bytes = parse_size(
            "heap_max_request_bytes",
            "HEAP_MAX_REQUEST_BYTES",
            pick(
                args.heap_max_request_bytes.clone(),
                scalar(file.heap_max_request_bytes),
            ),
            "4MiB",
        )?;
        if heap_max_request_bytes < MIN_HEAP_REQUEST_BYTES {
            return Err(ConfigError::new(
                "heap_max_request_bytes",
                "HEAP_MAX_REQUEST_BYTES",
                "must be at least 64KiB",
            ));
        }
        let delivery_window_bytes = parse_size(
            "delivery_window_bytes",
            "CURRENTS_HEAP_DELIVERY_WINDOW_BYTES",
            pick(
                args.delivery_window_bytes.clone(),
                scalar(file.delivery_window_bytes),
            ),
            "32MiB",
        )?;
        if delivery_window_bytes < heap_max_request_bytes {
            return Err(ConfigError::new(
                "delivery_window_bytes",
                "CURRENTS_HEAP_DELIVERY_WINDOW_BYTES",
                format!(
                    "must be at least heap_max_request_bytes ({heap_max_request_bytes} bytes), \
                     so that a full request fits in the window"
                ),
            ));
        }
        let heap_timeout = parse_duration(
            "heap_timeout",
            "HEAP_TIMEOUT",
            pick(args.heap_timeout.clone(), file.heap_timeout),
            "30s",
        )?;
        let heap_budget_window = parse_duration(
            "heap_budget_window",
            "HEAP_BUDGET_WINDOW",
            pick(args.heap_budget_window.clone(), file.heap_budget_window),
            "60s",
        )?;
        for (key, env, d) in [
            ("heap_timeout", "HEAP_TIMEOUT", heap_timeout),
            (
                "heap_budget_window",
                "HEAP_BUDGET_WINDOW",
                heap_budget_window,
            ),
        ] {
            if d < Duration::from_millis(10) {
                return Err(ConfigError::new(key, env, "must be at least 10ms"));
            }
        }
        let retry_initial = parse_duration(
            "retry_initial_backoff",
            "CURRENTS_HEAP_RETRY_INITIAL_BACKOFF",
            pick(
                args.retry_initial_backoff.clone(),
                file.retry_initial_backoff,
            ),
            "1s",
        )?;
        let retry_max = parse_duration(
            "retry_max_backoff",
            "CURRENTS_HEAP_RETRY_MAX_BACKOFF",
            pick(args.retry_max_backoff.clone(), file.retry_max_backoff),
            "5m",
        )?;
        let retry_backoff = Backoff::try_new(retry_initial, retry_max).map_err(|m| {
            ConfigError::new("retry_max_backoff", "CURRENTS_HEAP_RETRY_MAX_BACKOFF", m)
        })?;
        let max_event_age = parse_duration(
            "max_event_age",
            "CURRENTS_HEAP_MAX_EVENT_AGE",
            pick(args.max_event_age.clone(), file.max_event_age),
            "72h",
        )?;

        if max_event_age < Duration::from_secs(1) {
            return Err(ConfigError::new(
                "max_event_age",
                "CURRENTS_HEAP_MAX_EVENT_AGE",
                "must be at least 1s (0 would dead-letter every event)",
            ));
        }
        let event_naming =
            pick(args.event_naming.clone(), file.event_naming).unwrap_or_else(|| "friendly".into());
        let event_prefix = pick(args.event_prefix.clone(), file.event_prefix).unwrap_or_default();
        let anonymous =
            pick(args.anonymous.clone(), file.anonymous).unwrap_or_else(|| "skip".into());
        let include_event_types = list(&args.include_event_types, file.include_event_types);
        let exclude_event_types = list(&args.exclude_event_types, file.exclude_event_types);
        let drop_properties = list(&args.drop_properties, file.drop_properties);
        let mapping = MappingSettings::build(
            event_naming,
            event_prefix,
            anonymous,
            include_event_types,
            exclude_event_types,
            drop_properties,
        )
        .map_err(|(key, m)| ConfigError::new(key, &env_of(key), m))?;
        let dead_letter_skipped =
            pick(args.dead_letter_skipped, file.dead_letter_skipped).unwrap_or(false);
        let routes = routes::validate_routes(
            &file.route,
            &routes::Inherited {
                heap_base_url: &heap_base_url,
                heap_events_per_minute,
                heap_identity_events_per_minute,
                mapping: &mapping,
                dead_letter_skipped,
            },
        )?;
        let mut lanes: Vec<_> = routes
            .iter()
            .map(|r| {
                (
                    r.name.as_str(),
                    &r.heap_app_id,
                    r.heap_base_url.as_str(),
                    r.heap_events_per_minute,
                    r.heap_identity_events_per_minute,
                )
            })
            .collect();
        if let Some(id) = &heap_app_id {
            lanes.insert(
                0,
                (
                    DEFAULT_ROUTE,
                    id,
                    heap_base_url.as_str(),
                    heap_events_per_minute,
                    heap_identity_events_per_minute,
                ),
            );
        }
        routes::check_shared_app_ids(&lanes)?;
        let dry_run = pick(args.dry_run, file.dry_run).unwrap_or(false);

        Ok(Settings {
            listen,
            ingest_tokens,
            data_dir,
            heap_app_id,
            heap_base_url,
            heap_events_per_minute,
            heap_identity_events_per_minute,
            max_queue_bytes,
            max_body_bytes,
            min_free_disk_bytes,
            dedup_window,
            dedup_capacity,
            shutdown_grace,
            edge,
            log_format,
            heap_batch_size,
            heap_linger,
            heap_max_request_bytes,
            delivery_window_bytes,
            heap_timeout,
            heap_budget_window,
            retry_backoff,
            max_event_age,
            mapping,
            dead_letter_skipped,
            dry_run,
            routes,
        })
    }

    /// The checks that only `serve` needs: a destination for the default route.
    pub fn validate_for_serve(&self) -> Result<(), ConfigError> {
        if self.heap_app_id.is_none() && !self.dry_run && self.routes.is_empty() {
            return Err(ConfigError::new(
                "heap_app_id",
                "HEAP_APP_ID",
                "is required to deliver to Heap (or configure [[route]] tables, or run with --dry-run)",
            ));
        }
        Ok(())
    }

    /// The effective settings as TOML, secrets redacted (printed by `check-config`).
    pub fn to_redacted_toml(&self) -> String {
        let tokens: Vec<&str> = self.ingest_tokens.iter().map(|_| "<redacted>").collect();
        let mut out = String::new();
        let mut line = |k: &str, v: String| {
            out.push_str(k);
            out.push_str(" = ");
            out.push_str(&v);
            out.push('\n');
        };
        let q = |s: &str| toml::Value::String(s.to_owned()).to_string();
        line("listen", q(&self.listen.to_string()));
        if tokens.is_empty() {
            // Commented out: `ingest_token = []` would be refused when read back.
            line(
                "# ingest_token",
                "(not set: requests are accepted unauthenticated)".into(),
            );
        } else {
            line(
                "ingest_token",
                toml::Value::Array(
                    tokens
                        .iter()
                        .map(|t| toml::Value::String((*t).into()))
                        .collect(),
                )
                .to_string(),
            );
        }
        line("data_dir", q(&self.data_dir.display().to_string()));
        match &self.heap_app_id {
            Some(id) => line("heap_app_id", q(id.as_str())),
            None => line("# heap_app_id", "(not set)".into()),
        }
        line("heap_base_url", q(&self.heap_base_url));
        line(
            "heap_events_per_minute",
            self.heap_events_per_minute.to_string(),
        );
        line(
            "heap_identity_events_per_minute",
            self.heap_identity_events_per_minute.to_string(),
        );
        line("max_queue_bytes", self.max_queue_bytes.to_string());
        line("max_body_bytes", self.max_body_bytes.to_string());
        line("min_free_disk_bytes", self.min_free_disk_bytes.to_string());
        line(
            "dedup_window",
            q(&humantime::format_duration(self.dedup_window).to_string()),
        );
        line("dedup_capacity", self.dedup_capacity.to_string());
        line(
            "shutdown_grace",
            q(&humantime::format_duration(self.shutdown_grace).to_string()),
        );
        self.edge.print(&mut line);
        line(
            "log_format",
            q(match self.log_format {
                LogFormat::Json => "json",
                LogFormat::Text => "text",
            }),
        );
        let dur = |d: Duration| q(&humantime::format_duration(d).to_string());
        line("heap_batch_size", self.heap_batch_size.to_string());
        line("heap_linger", dur(self.heap_linger));
        line(
            "heap_max_request_bytes",
            self.heap_max_request_bytes.to_string(),
        );
        line(
            "delivery_window_bytes",
            self.delivery_window_bytes.to_string(),
        );
        line("heap_timeout", dur(self.heap_timeout));
        line("heap_budget_window", dur(self.heap_budget_window));
        line("retry_initial_backoff", dur(self.retry_backoff.ceiling(0)));
        line(
            "retry_max_backoff",
            dur(self.retry_backoff.ceiling(u32::MAX)),
        );
        line("max_event_age", dur(self.max_event_age));
        for (key, value) in self.mapping.toml_values() {
            line(key, value.to_string());
        }
        line("dead_letter_skipped", self.dead_letter_skipped.to_string());
        line("dry_run", self.dry_run.to_string());
        for r in &self.routes {
            out.push('\n');
            out.push_str(&route_toml(r));
        }
        out
    }
}

/// The environment variable of a mapping setting.
fn env_of(key: &str) -> String {
    format!("CURRENTS_HEAP_{}", key.to_ascii_uppercase())
}

fn route_toml(r: &RouteSettings) -> String {
    let mut t = toml::Table::new();
    let s = |v: &str| toml::Value::String(v.to_owned());
    t.insert("name".into(), s(&r.name));
    if let Some(w) = &r.workspace {
        t.insert("workspace".into(), s(w));
    }
    if let Some(g) = &r.app_group_id {
        t.insert("app_group_id".into(), s(g));
    }
    t.insert("heap_app_id".into(), s(r.heap_app_id.as_str()));
    t.insert("heap_base_url".into(), s(&r.heap_base_url));
    t.insert(
        "heap_events_per_minute".into(),
        toml::Value::Integer(i64::from(r.heap_events_per_minute.get())),
    );
    t.insert(
        "heap_identity_events_per_minute".into(),
        toml::Value::Integer(i64::from(r.heap_identity_events_per_minute.get())),
    );
    t.insert(
        "ingest_token".into(),
        toml::Value::Array(r.ingest_tokens.iter().map(|_| s("<redacted>")).collect()),
    );
    for (key, value) in r.mapping.toml_values() {
        t.insert(key.into(), value);
    }
    t.insert(
        "dead_letter_skipped".into(),
        toml::Value::Boolean(r.dead_letter_skipped),
    );
    format!("[[route]]\n{t}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> FileConfig {
        toml::from_str(text).expect("valid toml")
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let s = Settings::resolve(&SettingsArgs::default(), FileConfig::default()).unwrap();
        assert_eq!(s.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(s.data_dir, PathBuf::from("./data"));
        assert_eq!(s.heap_base_url, "https://heapanalytics.com");
        assert_eq!(s.heap_events_per_minute.get(), 15_000);
        assert_eq!(s.heap_identity_events_per_minute.get(), 1_000);
        assert_eq!(s.max_queue_bytes, 10 * 1024 * 1024 * 1024);
        assert_eq!(s.max_body_bytes, 8 * 1024 * 1024);
        assert_eq!(s.heap_max_request_bytes, 4 * 1024 * 1024);
        assert_eq!(s.delivery_window_bytes, 32 * 1024 * 1024);
        assert_eq!(s.dedup_window, Duration::from_secs(24 * 3600));
        assert!(s.ingest_tokens.is_empty());
        assert!(!s.dry_run);
    }

    #[test]
    fn flags_override_file() {
        let args = SettingsArgs {
            heap_events_per_minute: Some("600".into()),
            ingest_token: Some("new, old".into()),
            ..Default::default()
        };
        let s = Settings::resolve(
            &args,
            file("heap_events_per_minute = 100\nheap_app_id = 123\ningest_token = [\"x\"]\n"),
        )
        .unwrap();
        assert_eq!(s.heap_events_per_minute.get(), 600);
        assert_eq!(s.heap_app_id.unwrap().as_str(), "123");
        let tokens: Vec<&str> = s.ingest_tokens.iter().map(Secret::expose).collect();
        assert_eq!(tokens, ["new", "old"]);
    }

    #[test]
    fn invalid_values_name_the_setting() {
        let cases = [
            ("heap_app_id = \"abc\"", "heap_app_id"),
            ("max_queue_bytes = \"lots\"", "max_queue_bytes"),
            ("max_body_bytes = \"512KiB\"", "max_body_bytes"),
            ("listen = \"nowhere\"", "listen"),
            ("heap_base_url = \"ftp://x\"", "heap_base_url"),
            (
                "heap_identity_events_per_minute = 0",
                "heap_identity_events_per_minute",
            ),
            ("dedup_window = \"forever\"", "dedup_window"),
            ("log_format = \"xml\"", "log_format"),
            ("dedup_capacity = 0", "dedup_capacity"),
            ("event_naming = \"weird\"", "event_naming"),
            ("anonymous = \"maybe\"", "anonymous"),
            ("include_event_types = [\"[\"]", "include_event_types"),
            ("max_event_age = \"0s\"", "max_event_age"),
            ("heap_max_request_bytes = \"4\"", "heap_max_request_bytes"),
            ("heap_max_request_bytes = \"big\"", "heap_max_request_bytes"),
            ("delivery_window_bytes = \"1MiB\"", "delivery_window_bytes"),
            (
                "heap_max_request_bytes = \"128MiB\"",
                "delivery_window_bytes",
            ),
        ];
        for (text, key) in cases {
            let err = Settings::resolve(&SettingsArgs::default(), file(text)).unwrap_err();
            assert!(err.to_string().contains(key), "{text}: {err}");
            assert!(
                err.to_string()
                    .contains(&format!("--{}", key.replace('_', "-")))
            );
        }
    }

    #[test]
    fn a_blank_token_is_an_error_not_authentication_off() {
        for blank in ["", " ", "\t", ",", ",,", " , ,"] {
            let args = SettingsArgs {
                ingest_token: Some(blank.into()),
                ..Default::default()
            };
            let err = Settings::resolve(&args, FileConfig::default()).unwrap_err();
            let text = err.to_string();
            for form in [
                "ingest_token",
                "--ingest-token",
                "CURRENTS_HEAP_INGEST_TOKEN",
            ] {
                assert!(text.contains(form), "{blank:?}: {text}");
            }
            assert!(text.contains("holds no token"), "{text}");
            // A blank flag or variable is not overridden by the file: it wins, and is refused.
            assert!(Settings::resolve(&args, file("ingest_token = [\"t\"]")).is_err());
        }
        for blank in [
            "ingest_token = \"\"",
            "ingest_token = [\"\"]",
            "ingest_token = [\" \", \"\"]",
            "ingest_token = []",
        ] {
            let err = Settings::resolve(&SettingsArgs::default(), file(blank)).unwrap_err();
            assert!(err.to_string().contains("holds no token"), "{blank}: {err}");
        }
        let route = |token: &str| {
            format!(
                "[[route]]\nname = \"r\"\nworkspace = \"w\"\nheap_app_id = \"1\"\ningest_token = {token}\n"
            )
        };
        for blank in ["[\"\"]", "\"\"", "[\" \"]", "\",\""] {
            let err = Settings::resolve(&SettingsArgs::default(), file(&route(blank))).unwrap_err();
            let text = err.to_string();
            assert!(
                text.contains("`ingest_token` of [[route]] #1") && text.contains("holds no token"),
                "{blank}: {text}"
            );
        }
        // Not set at all: no token, authentication off (serve warns loudly).
        let s = Settings::resolve(&SettingsArgs::default(), FileConfig::default()).unwrap();
        assert!(s.ingest_tokens.is_empty());
        let s = Settings::resolve(&SettingsArgs::default(), file(&route("[\"ok\"]"))).unwrap();
        assert_eq!(s.routes[0].ingest_tokens.len(), 1);
        // Empty entries next to real tokens are ignored, as before.
        let args = SettingsArgs {
            ingest_token: Some("new,,old,".into()),
            ..Default::default()
        };
        assert_eq!(
            Settings::resolve(&args, FileConfig::default())
                .unwrap()
                .ingest_tokens
                .len(),
            2
        );
    }

    #[test]
    fn the_config_file_is_read_up_to_a_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.toml");
        let mut text = "heap_app_id = \"1\"\n".to_string();
        text.push_str(&"#".repeat(MAX_CONFIG_BYTES as usize - text.len()));
        std::fs::write(&path, &text).unwrap();
        let args = SettingsArgs {
            config: Some(path.clone()),
            ..Default::default()
        };
        assert!(Settings::load(&args).is_ok(), "exactly 1 MiB is fine");
        text.push('#');
        std::fs::write(&path, &text).unwrap();
        let err = Settings::load(&args).unwrap_err().to_string();
        assert!(
            err.contains("larger than 1 MiB") && err.contains("big.toml"),
            "{err}"
        );
        let err = Settings::load(&SettingsArgs {
            config: Some("/dev/zero".into()),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("larger than 1 MiB"), "{err}");
    }

    #[test]
    fn byte_bounds_take_sizes_in_every_form() {
        let args = SettingsArgs {
            heap_max_request_bytes: Some("1MiB".into()),
            ..Default::default()
        };
        let s = Settings::resolve(
            &args,
            file("heap_max_request_bytes = \"8MiB\"\ndelivery_window_bytes = 16777216\n"),
        )
        .unwrap();
        assert_eq!(s.heap_max_request_bytes, 1024 * 1024);
        assert_eq!(s.delivery_window_bytes, 16 * 1024 * 1024);
        let printed = s.to_redacted_toml();
        assert!(
            printed.contains("heap_max_request_bytes = 1048576"),
            "{printed}"
        );
        assert!(
            printed.contains("delivery_window_bytes = 16777216"),
            "{printed}"
        );
    }

    #[test]
    fn unknown_file_keys_are_rejected() {
        assert!(toml::from_str::<FileConfig>("lsiten = \"x\"").is_err());
    }

    #[test]
    fn redacted_output_never_contains_tokens() {
        let args = SettingsArgs {
            ingest_token: Some("s3cr3t-one,s3cr3t-two".into()),
            ..Default::default()
        };
        let s = Settings::resolve(&args, FileConfig::default()).unwrap();
        let printed = s.to_redacted_toml();
        assert!(!printed.contains("s3cr3t"));
        assert!(printed.contains("<redacted>"));
        assert!(!format!("{s:?}").contains("s3cr3t"));
        toml::from_str::<toml::Table>(&printed).expect("printed settings are TOML");
    }

    #[test]
    fn serve_needs_an_app_id_unless_dry_run() {
        let s = Settings::resolve(&SettingsArgs::default(), FileConfig::default()).unwrap();
        assert!(
            s.validate_for_serve()
                .unwrap_err()
                .to_string()
                .contains("heap_app_id")
        );
        let dry = SettingsArgs {
            dry_run: Some(true),
            ..Default::default()
        };
        let s = Settings::resolve(&dry, FileConfig::default()).unwrap();
        s.validate_for_serve().unwrap();
    }
}
