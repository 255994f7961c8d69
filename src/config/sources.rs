//! Where settings come from: flags and environment variables (clap) and the TOML file.

use std::fmt;
use std::path::PathBuf;

use clap::Args;
use serde::Deserialize;

/// The flag / environment forms of every setting. `None` means "not given at this layer".
#[derive(Debug, Clone, Default, Args)]
pub struct SettingsArgs {
    /// TOML configuration file (at most 1 MiB); flags and environment variables override it.
    #[arg(long, env = "CURRENTS_HEAP_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Ingest + admin HTTP address [default: 127.0.0.1:8080].
    #[arg(long, env = "CURRENTS_HEAP_LISTEN")]
    pub listen: Option<String>,
    /// Bearer token(s) Braze must send; a comma-separated list allows rotation.
    #[arg(long, env = "CURRENTS_HEAP_INGEST_TOKEN", hide_env_values = true)]
    pub ingest_token: Option<String>,
    /// Directory of the durable queue and dead-letter store [default: ./data].
    #[arg(long, env = "CURRENTS_HEAP_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Heap environment id (numeric) of the default route.
    #[arg(long, env = "HEAP_APP_ID")]
    pub heap_app_id: Option<String>,
    /// Heap API base URL [default: https://heapanalytics.com; EU: https://c.eu.heap-api.com].
    #[arg(long, env = "HEAP_BASE_URL")]
    pub heap_base_url: Option<String>,
    /// Outbound event budget per app_id, events per minute [default: 15000].
    #[arg(long, env = "HEAP_EVENTS_PER_MINUTE")]
    pub heap_events_per_minute: Option<String>,
    /// Outbound event budget per identity, events per minute [default: 1000].
    #[arg(long, env = "HEAP_IDENTITY_EVENTS_PER_MINUTE")]
    pub heap_identity_events_per_minute: Option<String>,
    /// Disk quota of the backlog (e.g. 10GiB); above it ingest answers 503 [default: 10GiB].
    #[arg(long, env = "CURRENTS_HEAP_MAX_QUEUE_BYTES")]
    pub max_queue_bytes: Option<String>,
    /// Largest accepted request body, compressed or decompressed [default: 8MiB; at least 1MiB].
    #[arg(long, env = "CURRENTS_HEAP_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<String>,
    /// Free disk space kept in reserve under the data directory; below it ingest answers 503
    /// [default: 256MiB].
    #[arg(long, env = "CURRENTS_HEAP_MIN_FREE_DISK_BYTES")]
    pub min_free_disk_bytes: Option<String>,
    /// How long an accepted event id is remembered to drop Braze re-sends [default: 24h].
    #[arg(long, env = "CURRENTS_HEAP_DEDUP_WINDOW")]
    pub dedup_window: Option<String>,
    /// Most event ids the dedup window remembers (about 10–20 bytes of memory each); past it
    /// the oldest are forgotten early [default: 4000000].
    #[arg(long, env = "CURRENTS_HEAP_DEDUP_CAPACITY")]
    pub dedup_capacity: Option<String>,
    /// How long shutdown waits for in-flight requests to finish [default: 30s].
    #[arg(long, env = "CURRENTS_HEAP_SHUTDOWN_GRACE")]
    pub shutdown_grace: Option<String>,
    /// Time a client has, from the first byte of a request, to send its headers [default: 10s].
    #[arg(long, env = "CURRENTS_HEAP_HEADER_READ_TIMEOUT")]
    pub header_read_timeout: Option<String>,
    /// Time a connection may stay open with no request in progress [default: 75s].
    #[arg(long, env = "CURRENTS_HEAP_IDLE_TIMEOUT")]
    pub idle_timeout: Option<String>,
    /// Time a client has to send a request body once its headers are in; past it, 408
    /// [default: 60s].
    #[arg(long, env = "CURRENTS_HEAP_BODY_READ_TIMEOUT")]
    pub body_read_timeout: Option<String>,
    /// Time a request waits for room in the ingest memory budget; past it, 503 + Retry-After
    /// [default: 5s].
    #[arg(long, env = "CURRENTS_HEAP_INGEST_WAIT_TIMEOUT")]
    pub ingest_wait_timeout: Option<String>,
    /// Open client connections at most; past it the longest-idle one is closed, or the new one
    /// refused [default: 1024; `serve` lowers it to fit the process's descriptor limit].
    #[arg(long, env = "CURRENTS_HEAP_MAX_CONNECTIONS")]
    pub max_connections: Option<String>,
    /// Bytes of request bodies (raw and decoded) held in memory at once, all requests together
    /// [default: 64MiB; at least twice --max-body-bytes].
    #[arg(long, env = "CURRENTS_HEAP_INGEST_BUFFER_BYTES")]
    pub ingest_buffer_bytes: Option<String>,
    /// PEM certificate chain: serve HTTPS (HTTP/1.1 and HTTP/2) on --listen; re-read on change
    /// or SIGHUP [default: none, plain HTTP].
    #[arg(long, env = "CURRENTS_HEAP_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "CURRENTS_HEAP_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Log format: json or text [default: json].
    #[arg(long, env = "CURRENTS_HEAP_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Most events per bulk request to Heap (1..=1000) [default: 1000; the app budget's burst,
    /// 1/60 of it, may lower it further].
    #[arg(long, env = "HEAP_BATCH_SIZE")]
    pub heap_batch_size: Option<String>,
    /// How long a partial batch waits for more events before it is sent [default: 1s].
    #[arg(long, env = "HEAP_LINGER")]
    pub heap_linger: Option<String>,
    /// Largest body of one Heap request (e.g. 4MiB); a batch that would be larger is split
    /// before it is sent, an event larger on its own goes alone [default: 4MiB; at least 64KiB].
    #[arg(long, env = "HEAP_MAX_REQUEST_BYTES")]
    pub heap_max_request_bytes: Option<String>,
    /// Most event bytes a delivery lane holds in memory (read ahead, in flight, awaiting a
    /// retry), besides the event-count bound [default: 32MiB; at least --heap-max-request-bytes].
    #[arg(long, env = "CURRENTS_HEAP_DELIVERY_WINDOW_BYTES")]
    pub delivery_window_bytes: Option<String>,
    /// Timeout of one Heap request, connection included [default: 30s].
    #[arg(long, env = "HEAP_TIMEOUT")]
    pub heap_timeout: Option<String>,
    /// The window of the Heap budgets [default: 60s, Heap's minute]. Only tests change it, to
    /// scale budgets down in time.
    #[arg(long, env = "HEAP_BUDGET_WINDOW")]
    pub heap_budget_window: Option<String>,
    /// First retry delay after a transient Heap failure; doubles per failure, full jitter
    /// [default: 1s].
    #[arg(long, env = "CURRENTS_HEAP_RETRY_INITIAL_BACKOFF")]
    pub retry_initial_backoff: Option<String>,
    /// Cap of the retry delay [default: 5m].
    #[arg(long, env = "CURRENTS_HEAP_RETRY_MAX_BACKOFF")]
    pub retry_max_backoff: Option<String>,
    /// Events not delivered this long after they were received are dead-lettered as
    /// `expired` [default: 72h].
    #[arg(long, env = "CURRENTS_HEAP_MAX_EVENT_AGE")]
    pub max_event_age: Option<String>,
    /// Heap event names: `friendly` (the mapping table, e.g. "Email Sent") or `raw` (the
    /// Currents event_type) [default: friendly].
    #[arg(long, env = "CURRENTS_HEAP_EVENT_NAMING")]
    pub event_naming: Option<String>,
    /// Prefix added to every Heap event name, e.g. `braze-` [default: none].
    #[arg(long, env = "CURRENTS_HEAP_EVENT_PREFIX")]
    pub event_prefix: Option<String>,
    /// Events without an external_user_id: `skip` (counted) or `synthetic_user_id` (a Heap
    /// user_id hashed from the Braze user_id) [default: skip].
    #[arg(long, env = "CURRENTS_HEAP_ANONYMOUS")]
    pub anonymous: Option<String>,
    /// Only these event types (comma-separated globs, e.g. `users.messages.email.*`).
    #[arg(long, env = "CURRENTS_HEAP_INCLUDE_EVENT_TYPES")]
    pub include_event_types: Option<String>,
    /// Never these event types (comma-separated globs).
    #[arg(long, env = "CURRENTS_HEAP_EXCLUDE_EVENT_TYPES")]
    pub exclude_event_types: Option<String>,
    /// Property keys (after flattening) never sent to Heap, comma-separated, e.g.
    /// `email_address,phone_number`.
    #[arg(long, env = "CURRENTS_HEAP_DROP_PROPERTIES")]
    pub drop_properties: Option<String>,
    /// Keep skipped events (anonymous, excluded, ...) in the dead-letter store, not only count
    /// them [default: false].
    #[arg(
        long,
        env = "CURRENTS_HEAP_DEAD_LETTER_SKIPPED",
        num_args = 0..=1,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub dead_letter_skipped: Option<bool>,
    /// Accept and store as usual, but write Heap requests to the log instead of sending them.
    #[arg(
        long,
        env = "CURRENTS_HEAP_DRY_RUN",
        num_args = 0..=1,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub dry_run: Option<bool>,
}

/// The TOML file. Keys are the flag names with `_` for `-`; unknown keys are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub ingest_token: Option<Tokens>,
    pub data_dir: Option<PathBuf>,
    pub heap_app_id: Option<Scalar>,
    pub heap_base_url: Option<String>,
    pub heap_events_per_minute: Option<Scalar>,
    pub heap_identity_events_per_minute: Option<Scalar>,
    pub max_queue_bytes: Option<Scalar>,
    pub max_body_bytes: Option<Scalar>,
    pub min_free_disk_bytes: Option<Scalar>,
    pub dedup_window: Option<String>,
    pub dedup_capacity: Option<Scalar>,
    pub shutdown_grace: Option<String>,
    pub header_read_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub body_read_timeout: Option<String>,
    pub ingest_wait_timeout: Option<String>,
    pub max_connections: Option<Scalar>,
    pub ingest_buffer_bytes: Option<Scalar>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub log_format: Option<String>,
    pub heap_batch_size: Option<Scalar>,
    pub heap_linger: Option<String>,
    pub heap_max_request_bytes: Option<Scalar>,
    pub delivery_window_bytes: Option<Scalar>,
    pub heap_timeout: Option<String>,
    pub heap_budget_window: Option<String>,
    pub retry_initial_backoff: Option<String>,
    pub retry_max_backoff: Option<String>,
    pub max_event_age: Option<String>,
    pub event_naming: Option<String>,
    pub event_prefix: Option<String>,
    pub anonymous: Option<String>,
    pub include_event_types: Option<Tokens>,
    pub exclude_event_types: Option<Tokens>,
    pub drop_properties: Option<Tokens>,
    pub dead_letter_skipped: Option<bool>,
    pub dry_run: Option<bool>,
    /// `[[route]]` tables.
    #[serde(default)]
    pub route: Vec<super::routes::RouteFile>,
}

/// A TOML value that may be written as a number or a string (`15000`, `"10GiB"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    Int(i64),
    Str(String),
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scalar::Int(i) => write!(f, "{i}"),
            Scalar::Str(s) => f.write_str(s),
        }
    }
}

/// A list written as `"a,b"` or `["a", "b"]` (tokens, globs, property keys).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Tokens {
    One(String),
    Many(Vec<String>),
}

/// A list setting: the flag/env value (comma-separated) wins over the file's; empty items
/// are dropped.
pub(super) fn list(arg: &Option<String>, file: Option<Tokens>) -> Vec<String> {
    let items = match (arg, file) {
        (Some(s), _) => s.split(',').map(str::to_owned).collect(),
        (None, Some(Tokens::One(s))) => s.split(',').map(str::to_owned).collect(),
        (None, Some(Tokens::Many(v))) => v,
        (None, None) => Vec::new(),
    };
    items
        .into_iter()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .collect()
}
