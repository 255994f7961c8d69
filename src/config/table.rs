//! **Every setting, declared once.** Each entry gives the TOML key (the flag is `--` and the key
//! with `-` for `_`), the help text, the parsed type and its parser, how it is written (its
//! [`Kind`]), the environment variable and the default. From this table come the clap arguments
//! ([`SettingsArgs`]), the file keys ([`FileConfig`], [`RouteFile`]), the layering (file <
//! environment < flag), the errors that name a bad value, and the `check-config` print.
//! Relations between settings (a window at least a request, ...) are checked in `mod.rs`.
//!
//! The README's settings table documents the same settings; a test holds it to this table.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use glob::Pattern;

use super::declare::{Kind, Show, help, inherit, layer, line, maybe, need};
use super::mapping::{self, AnonymousMode, Naming};
use super::nats::{self, NatsUrl};
use super::parse::{
    address, app_id, base_url, count, duration, log_format, path, per_minute, secret, size,
    strings, switch, tokens,
};
use super::sources::{Scalar, Tokens};
use super::values::{ConfigError, Decl, HeapAppId, LogFormat, Secret};

/// Braze drops events above 900 KB, so a one-event batch must always fit under the body limit.
const MIN_BODY_BYTES: u64 = 1024 * 1024;
/// Floor of `heap_max_request_bytes`: below it a typo ("4" for "4MiB") would send every event
/// alone. An event larger than the cap is still sent (alone), so any floor is safe.
const MIN_HEAP_REQUEST_BYTES: u64 = 64 * 1024;
const NO_MIN: Duration = Duration::ZERO;
const MS10: Duration = Duration::from_millis(10);
const ONE_DAY: Duration = Duration::from_secs(24 * 3600);
const AT_LEAST_10MS: &str = "must be at least 10ms";

settings! {
    flat {
        /// Ingest + admin HTTP address.
        listen: SocketAddr = need(address), Text, env "CURRENTS_HEAP_LISTEN",
            default "127.0.0.1:8080";
        /// Bearer token(s) Braze must send; a comma-separated list allows rotation.
        ingest_token: Option<Vec<Secret>> = maybe(tokens), Secret,
            env "CURRENTS_HEAP_INGEST_TOKEN",
            unset "requests are accepted unauthenticated";
        /// Directory of the durable queue and dead-letter store.
        data_dir: PathBuf = need(path), Path, env "CURRENTS_HEAP_DATA_DIR", default "./data";
        /// Comma-separated NATS server URLs (nats://host:port, tls://host:port or a bare
        /// host:port; port 4222 when omitted); setting it selects the queue on NATS JetStream
        /// instead of the SQLite store in --data-dir.
        nats_url: Option<Vec<NatsUrl>> = maybe(nats::urls), Secret, env "CURRENTS_HEAP_NATS_URL",
            unset "the queue is the SQLite store in data_dir";
        /// Name prefix of the JetStream streams, consumers and key-value buckets the forwarder
        /// creates (1 to 32 characters of A-Z, a-z, 0-9, _ and -; only with --nats-url).
        nats_stream: String = need(nats::stream), Text, env "CURRENTS_HEAP_NATS_STREAM",
            default "currents-heap";
        /// Replicas of every JetStream stream and bucket, 1 to 5 (1 for a single development
        /// server; only with --nats-url).
        nats_replicas: usize = need(nats::replicas), Scalar, env "CURRENTS_HEAP_NATS_REPLICAS",
            default "3";
        /// NATS credentials file (only with --nats-url; tls:// URLs use TLS).
        nats_creds: Option<PathBuf> = maybe(nats::creds), Path, env "CURRENTS_HEAP_NATS_CREDS",
            unset "no credentials file";
        /// Lease of a delivery lane with --nats-url: one replica holds each Heap app id's lane
        /// and renews its lease; when it dies, another takes the lane over within about this
        /// long (at least 1s).
        nats_lease: Duration = need(duration(Duration::from_secs(1), "must be at least 1s")),
            Text, env "CURRENTS_HEAP_NATS_LEASE", default "10s";
        /// Heap environment id (numeric) of the default route.
        heap_app_id: Option<HeapAppId> = maybe(app_id), Scalar, env "HEAP_APP_ID";
        /// Disk quota of the backlog (e.g. 10GiB); above it ingest answers 503.
        max_queue_bytes: u64 = need(size(1, u64::MAX, "must be greater than 0")), Scalar,
            env "CURRENTS_HEAP_MAX_QUEUE_BYTES", default "10GiB";
        /// Largest accepted request body, compressed or decompressed (at least 1MiB).
        max_body_bytes: u64 = need(size(MIN_BODY_BYTES, u64::MAX,
            "must be at least 1MiB: Braze sends single events of up to 900 KB")), Scalar,
            env "CURRENTS_HEAP_MAX_BODY_BYTES", default "8MiB";
        /// Free disk space kept in reserve under the data directory; below it ingest answers
        /// 503.
        min_free_disk_bytes: u64 = need(size(0, u64::MAX, "")), Scalar,
            env "CURRENTS_HEAP_MIN_FREE_DISK_BYTES", default "256MiB";
        /// How long an accepted event id is remembered to drop Braze re-sends.
        dedup_window: Duration = need(duration(NO_MIN, "")), Text,
            env "CURRENTS_HEAP_DEDUP_WINDOW", default "24h";
        /// Most event ids the dedup window remembers (about 10–20 bytes of memory each); past
        /// it the oldest are forgotten early.
        dedup_capacity: usize = need(count(1, 1 << 31)), Scalar,
            env "CURRENTS_HEAP_DEDUP_CAPACITY", default "4000000";
        /// How long shutdown waits for in-flight requests to finish.
        shutdown_grace: Duration = need(duration(NO_MIN, "")), Text,
            env "CURRENTS_HEAP_SHUTDOWN_GRACE", default "30s";
        /// Time a client has, from the first byte of a request, to send its headers.
        header_read_timeout: Duration = need(duration(MS10, AT_LEAST_10MS)), Text,
            env "CURRENTS_HEAP_HEADER_READ_TIMEOUT", default "10s";
        /// Time a connection may stay open with no request in progress.
        idle_timeout: Duration = need(duration(MS10, AT_LEAST_10MS)), Text,
            env "CURRENTS_HEAP_IDLE_TIMEOUT", default "75s";
        /// Time a client has to send a request body once its headers are in; past it, 408.
        body_read_timeout: Duration = need(duration(MS10, AT_LEAST_10MS)), Text,
            env "CURRENTS_HEAP_BODY_READ_TIMEOUT", default "60s";
        /// Time a request waits for room in the ingest memory budget; past it, 503 +
        /// Retry-After.
        ingest_wait_timeout: Duration = need(duration(MS10, AT_LEAST_10MS)), Text,
            env "CURRENTS_HEAP_INGEST_WAIT_TIMEOUT", default "5s";
        /// Open client connections at most; past it the longest-idle one is closed, or the new
        /// one refused (`serve` lowers it to fit the process's descriptor limit).
        max_connections: usize = need(count(1, 1_000_000)), Scalar,
            env "CURRENTS_HEAP_MAX_CONNECTIONS", default "1024";
        /// Bytes of request bodies (raw and decoded) held in memory at once, all requests
        /// together (at least twice --max-body-bytes).
        ingest_buffer_bytes: u64 = need(size(0, 1 << 40, "must be at most 1TiB")), Scalar,
            env "CURRENTS_HEAP_INGEST_BUFFER_BYTES", default "64MiB";
        /// PEM certificate chain: serve HTTPS (HTTP/1.1 and HTTP/2) on --listen; re-read on
        /// change or SIGHUP (not set: plain HTTP).
        tls_cert: Option<PathBuf> = maybe(path), Path, env "CURRENTS_HEAP_TLS_CERT",
            unset "plain HTTP";
        /// PEM private key of --tls-cert.
        tls_key: Option<PathBuf> = maybe(path), Path, env "CURRENTS_HEAP_TLS_KEY";
        /// Log format: json or text.
        log_format: LogFormat = need(log_format), Text, env "CURRENTS_HEAP_LOG_FORMAT",
            default "json";
        /// Most events per bulk request to Heap (1..=1000, Heap's bulk limit); the app
        /// budget's burst, 1/60 of it, may lower it further.
        heap_batch_size: usize = need(count(1, 1000)), Scalar, env "HEAP_BATCH_SIZE",
            default "1000";
        /// How long a partial batch waits for more events before it is sent.
        heap_linger: Duration = need(duration(NO_MIN, "")), Text, env "HEAP_LINGER",
            default "1s";
        /// Largest body of one Heap request (e.g. 4MiB, at least 64KiB); a batch that would be
        /// larger is split before it is sent, an event larger on its own goes alone.
        heap_max_request_bytes: u64 = need(size(MIN_HEAP_REQUEST_BYTES, u64::MAX,
            "must be at least 64KiB")), Scalar, env "HEAP_MAX_REQUEST_BYTES", default "4MiB";
        /// Most event bytes a delivery lane holds in memory (read ahead, in flight, awaiting a
        /// retry), besides the event-count bound (at least --heap-max-request-bytes).
        delivery_window_bytes: u64 = need(size(0, u64::MAX, "")), Scalar,
            env "CURRENTS_HEAP_DELIVERY_WINDOW_BYTES", default "32MiB";
        /// Timeout of one Heap request, connection included.
        heap_timeout: Duration = need(duration(MS10, AT_LEAST_10MS)), Text,
            env "HEAP_TIMEOUT", default "30s";
        /// The window of the Heap budgets (Heap's minute). Only tests change it, to scale
        /// budgets down in time.
        heap_budget_window: Duration = need(duration(MS10, AT_LEAST_10MS)), Text,
            env "HEAP_BUDGET_WINDOW", default "60s";
        /// First retry delay after a transient Heap failure; doubles per failure, full jitter.
        retry_initial_backoff: Duration = need(duration(Duration::from_nanos(1),
            "must be greater than 0")), Text,
            env "CURRENTS_HEAP_RETRY_INITIAL_BACKOFF", default "1s";
        /// Cap of the retry delay (at least --retry-initial-backoff).
        retry_max_backoff: Duration = need(duration(NO_MIN, "")), Text,
            env "CURRENTS_HEAP_RETRY_MAX_BACKOFF", default "5m";
        /// Events not delivered this long after they were received are dead-lettered as
        /// `expired`.
        max_event_age: Duration = need(duration(Duration::from_secs(1),
            "must be at least 1s (0 would dead-letter every event)")), Text,
            env "CURRENTS_HEAP_MAX_EVENT_AGE", default "72h";
        /// Accept and store as usual, but write Heap requests to the log instead of sending
        /// them; the events stay queued for a real run.
        dry_run: bool = need(switch), Switch, env "CURRENTS_HEAP_DRY_RUN", default "false";
        /// How long a Braze user_id → Heap identity mapping is kept after the user was last
        /// seen (at least 1d); a deletion of a user not seen for longer reaches no Heap user.
        identity_map_retention: Duration = need(duration(ONE_DAY,
            "must be at least 1d (a deletion must find the identity of a user seen yesterday)")),
            Text, env "CURRENTS_HEAP_IDENTITY_MAP_RETENTION", default "400d";
        /// Least time between two requests to Heap's deletion API, per Heap account.
        deletion_request_interval: Duration = need(duration(NO_MIN, "")), Text,
            env "CURRENTS_HEAP_DELETION_REQUEST_INTERVAL", default "1s";
        /// How often Heap is asked for the status of a submitted deletion.
        deletion_poll_interval: Duration = need(duration(MS10, AT_LEAST_10MS)), Text,
            env "CURRENTS_HEAP_DELETION_POLL_INTERVAL", default "5m";
        /// A deletion not complete at Heap this long after it was received counts as overdue
        /// (metric and alert).
        deletion_overdue_after: Duration = need(duration(Duration::from_secs(1),
            "must be at least 1s")), Text,
            env "CURRENTS_HEAP_DELETION_OVERDUE_AFTER", default "7d";
    }
    shared {
        /// Heap API base URL (EU: https://c.eu.heap-api.com).
        heap_base_url: String = need(base_url), Text, env "HEAP_BASE_URL",
            default "https://heapanalytics.com";
        /// Outbound event budget per app_id, events per minute.
        heap_events_per_minute: NonZeroU32 = need(per_minute), Scalar,
            env "HEAP_EVENTS_PER_MINUTE", default "15000";
        /// Outbound event budget per identity, events per minute.
        heap_identity_events_per_minute: NonZeroU32 = need(per_minute), Scalar,
            env "HEAP_IDENTITY_EVENTS_PER_MINUTE", default "1000";
        /// Heap event names: `friendly` (the mapping table, e.g. "Email Sent") or `raw` (the
        /// Currents event_type).
        event_naming: Naming = need(mapping::naming), Text, env "CURRENTS_HEAP_EVENT_NAMING",
            default "friendly";
        /// Prefix added to every Heap event name, e.g. `braze-`.
        event_prefix: String = need(mapping::prefix), Text, env "CURRENTS_HEAP_EVENT_PREFIX",
            default "";
        /// Events without an external_user_id: `skip` (counted) or `synthetic_user_id` (a
        /// Heap user_id hashed from the Braze user_id).
        anonymous: AnonymousMode = need(mapping::anonymous), Text,
            env "CURRENTS_HEAP_ANONYMOUS", default "skip";
        /// Only these event types (comma-separated globs, e.g. `users.messages.email.*`).
        include_event_types: Vec<Pattern> = need(mapping::include), List,
            env "CURRENTS_HEAP_INCLUDE_EVENT_TYPES", default "";
        /// Never these event types (comma-separated globs).
        exclude_event_types: Vec<Pattern> = need(mapping::exclude), List,
            env "CURRENTS_HEAP_EXCLUDE_EVENT_TYPES", default "";
        /// Property keys (after flattening) never sent to Heap, comma-separated, e.g.
        /// `email_address,phone_number`.
        drop_properties: Vec<String> = need(strings), List,
            env "CURRENTS_HEAP_DROP_PROPERTIES", default "";
        /// Keep skipped events (anonymous, excluded, ...) in the dead-letter store, not only
        /// count them.
        dead_letter_skipped: bool = need(switch), Switch,
            env "CURRENTS_HEAP_DEAD_LETTER_SKIPPED", default "false";
        /// Heap API key for the privacy API (user deletions); a secret, never printed or
        /// logged. Not set: deletions are purged locally and recorded as `unconfigured`.
        heap_api_key: Option<Secret> = maybe(secret), SecretText, env "HEAP_API_KEY",
            unset "deletions are purged locally and recorded as unconfigured";
        /// The Heap account's Main Production environment id, which Heap's auth_token for
        /// deletions requires (not set: the route's heap_app_id).
        heap_account_app_id: Option<HeapAppId> = maybe(app_id), Scalar,
            env "HEAP_ACCOUNT_APP_ID", unset "the route's heap_app_id";
    }
    route_only {
        /// Unique; a bounded metric label.
        name: Text;
        /// Matches `POST /currents?workspace=...`.
        workspace: Text;
        /// Matches the event's `properties.app_group_id`.
        app_group_id: Text;
        /// The route's Heap environment id (required; parsed as `heap_app_id`).
        heap_app_id: Scalar;
        /// The route's own tokens (parsed as `ingest_token`); else the global ones apply.
        ingest_token: Secret;
    }
}
