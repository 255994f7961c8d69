//! The catalogue: every exported metric with its type, labels and help text, and the closed
//! sets its label values come from.

use prometheus::Error;

/// `(name, type, labels, help)` of every exported metric.
pub const CATALOGUE: &[(&str, &str, &str, &str)] = &[
    (
        "currents_heap_build_info",
        "gauge",
        "version",
        "Always 1; the version label tells which build runs.",
    ),
    (
        "currents_heap_ingest_requests_total",
        "counter",
        "outcome",
        "Requests to the ingest and admin paths by outcome.",
    ),
    (
        "currents_heap_ingest_request_duration_seconds",
        "histogram",
        "status",
        "Ingest request latency by HTTP status, from headers received to response.",
    ),
    (
        "currents_heap_events_received_total",
        "counter",
        "",
        "Events in structurally parsed request bodies, before validation and dedup.",
    ),
    (
        "currents_heap_events_accepted_total",
        "counter",
        "event_type,route",
        "Events durably queued (after dedup), by event type (unknown types as `other`).",
    ),
    (
        "currents_heap_events_duplicate_total",
        "counter",
        "",
        "Events acknowledged but not queued again: their id was accepted within the dedup window.",
    ),
    (
        "currents_heap_events_rejected_total",
        "counter",
        "reason",
        "Events refused and not stored, by reason.",
    ),
    (
        "currents_heap_queue_events",
        "gauge",
        "",
        "Events waiting in the durable queue.",
    ),
    (
        "currents_heap_queue_bytes",
        "gauge",
        "",
        "Payload bytes of the events waiting in the durable queue (the quota counts these).",
    ),
    (
        "currents_heap_queue_max_bytes",
        "gauge",
        "",
        "The configured backlog quota (--max-queue-bytes).",
    ),
    (
        "currents_heap_queue_oldest_event_age_seconds",
        "gauge",
        "",
        "Time since the oldest queued event was received; 0 when the queue is empty.",
    ),
    (
        "currents_heap_queue_drain_seconds_estimate",
        "gauge",
        "",
        "Estimated time to empty the queue: queued events over the summed app budgets of all delivery lanes (at the ~97 % of the budget delivery uses).",
    ),
    (
        "currents_heap_dedup_ids",
        "gauge",
        "",
        "Event ids remembered by the dedup window.",
    ),
    (
        "currents_heap_dedup_capacity",
        "gauge",
        "",
        "Most ids the dedup window remembers (--dedup-capacity); at it, the oldest are forgotten early.",
    ),
    (
        "currents_heap_events_delivered_total",
        "counter",
        "route",
        "Events Heap acknowledged (2xx on /api/track).",
    ),
    (
        "currents_heap_events_skipped_total",
        "counter",
        "route,reason",
        "Events accepted but not sent to Heap, by reason (anonymous, excluded, ...).",
    ),
    (
        "currents_heap_events_dead_lettered_total",
        "counter",
        "route,reason",
        "Events moved to the dead-letter store, by reason.",
    ),
    (
        "currents_heap_dead_letter_events",
        "gauge",
        "reason",
        "Events in the dead-letter store, by reason.",
    ),
    (
        "currents_heap_heap_requests_total",
        "counter",
        "route,endpoint,status_class",
        "Requests to Heap by endpoint and status class (`error` = no HTTP answer).",
    ),
    (
        "currents_heap_heap_request_duration_seconds",
        "histogram",
        "route,endpoint",
        "Heap request latency by endpoint.",
    ),
    (
        "currents_heap_delivery_retries_total",
        "counter",
        "route,reason",
        "Heap requests that failed transiently and will be retried, by reason.",
    ),
    (
        "currents_heap_delivery_paused",
        "gauge",
        "route",
        "1 while delivery waits out a Retry-After or a backoff after a failure.",
    ),
    (
        "currents_heap_lane_leader",
        "gauge",
        "route",
        "1 on the replica that holds the lane (delivers its Heap app id), else 0. With the SQLite store the one process holds every lane; with --nats-url one replica per lane, through a lease.",
    ),
    (
        "currents_heap_delivery_window_bytes",
        "gauge",
        "route",
        "Event bytes a delivery lane holds in memory (read ahead, in flight, awaiting a retry); bounded by --delivery-window-bytes, except that one event is always held.",
    ),
    (
        "currents_heap_rate_limit_waits_total",
        "counter",
        "route,budget",
        "Times a send waited for the app budget (`app`) or an identity was deferred (`identity`).",
    ),
    (
        "currents_heap_rate_limit_wait_seconds_total",
        "counter",
        "route,budget",
        "Time spent waiting for the app budget.",
    ),
    (
        "currents_heap_heap_budget_events_per_minute",
        "gauge",
        "route,budget",
        "The configured outbound budgets (app, identity).",
    ),
    (
        "currents_heap_connections_open",
        "gauge",
        "",
        "Client connections open on --listen.",
    ),
    (
        "currents_heap_connections_max",
        "gauge",
        "",
        "The connection cap in force (--max-connections, lowered to fit the descriptor limit).",
    ),
    (
        "currents_heap_connections_closed_total",
        "counter",
        "reason",
        "Connections the server closed or refused: idle_timeout, header_timeout, evicted (longest idle, to make room), refused (at the cap, none idle), tls_handshake_failed.",
    ),
    (
        "currents_heap_config_reloads_total",
        "counter",
        "outcome",
        "Configuration reloads on SIGHUP: applied, or refused (invalid; the old configuration stays in force).",
    ),
    (
        "currents_heap_tls_reloads_total",
        "counter",
        "outcome",
        "Re-reads of the TLS certificate and key after a change on disk or SIGHUP: reloaded, or failed (the previous pair stays in use).",
    ),
    (
        "currents_heap_ingest_buffer_bytes",
        "gauge",
        "",
        "Request body bytes (raw and decoded) held in memory now.",
    ),
    (
        "currents_heap_ingest_buffer_capacity_bytes",
        "gauge",
        "",
        "The ingest memory budget (--ingest-buffer-bytes).",
    ),
    (
        "currents_heap_properties_dropped_total",
        "counter",
        "reason",
        "Values left out of mapped events because Heap cannot take them (non_finite_number, invalid_string, too_deep); the rest of each event is sent. Process-wide; counted each time an event is mapped.",
    ),
    (
        "currents_heap_store_healthy",
        "gauge",
        "",
        "1 while the store commits, 0 after a commit failed for a reason other than a full disk.",
    ),
    (
        "currents_heap_deletions_total",
        "counter",
        "route,outcome",
        "User deletions (users.UserDeleteRequest) by outcome: received, unknown_user (no Heap identity known), submitted, completed, failed, unconfigured (no heap_api_key) count deletions; retried counts transient failures sending them; purged_events counts the user's queued, parked and dead-lettered events removed locally.",
    ),
    (
        "currents_heap_deletions_pending",
        "gauge",
        "route",
        "Deletions Heap still owes: ledger entries pending_submit, submitted, failed or unconfigured.",
    ),
    (
        "currents_heap_deletions_open",
        "gauge",
        "route,status",
        "Open deletion ledger entries by status (pending_submit, submitted, failed, unconfigured).",
    ),
    (
        "currents_heap_deletions_overdue",
        "gauge",
        "route",
        "Open deletions received longer ago than --deletion-overdue-after (default 7 days).",
    ),
];

/// Outcomes of a user deletion (label `outcome` of `deletions_total`); `purged_events` counts
/// events, the others deletions.
pub const DELETION_OUTCOMES: &[&str] = &[
    "received",
    "purged_events",
    "unknown_user",
    "submitted",
    "completed",
    "failed",
    "unconfigured",
    "retried",
];

/// The open statuses of the deletion ledger (label `status` of `deletions_open`): the
/// deletions Heap still owes. The closed ones are `complete` and `unknown_user`.
pub const DELETION_OPEN_STATUSES: &[&str] =
    &["pending_submit", "submitted", "failed", "unconfigured"];

/// Outcomes of a request (label `outcome`).
pub const OUTCOMES: &[&str] = &[
    "accepted",
    "empty",
    "unauthorized",
    "malformed",
    "invalid_events",
    "unsupported_encoding",
    "corrupt_body",
    "too_large",
    "body_timeout",
    "over_quota",
    "disk_full",
    "store_busy",
    "store_unavailable",
    "draining",
    "saturated",
    "not_found",
    "method_not_allowed",
];

/// Why the server closed or refused a connection (label `reason`).
pub const CONNECTION_CLOSE_REASONS: &[&str] = &[
    "idle_timeout",
    "header_timeout",
    "evicted",
    "refused",
    "tls_handshake_failed",
];

/// Outcomes of a TLS certificate re-read (label `outcome` of `tls_reloads_total`).
pub const TLS_RELOAD_OUTCOMES: &[&str] = &["reloaded", "failed"];

/// Outcomes of a configuration reload (label `outcome` of `config_reloads_total`).
pub const CONFIG_RELOAD_OUTCOMES: &[&str] = &["applied", "refused"];

/// Reasons an event is refused (label `reason` of `events_rejected_total`).
pub const REJECT_REASONS: &[&str] = &[
    "invalid_event",
    "invalid_batch",
    "over_quota",
    "disk_full",
    "store_busy",
    "store_unavailable",
];

/// The `route` label of events no route takes (and their dead-letter reason).
pub const UNROUTABLE: &str = "unroutable";

/// Reasons an event is dead-lettered (label `reason`).
pub const DEAD_LETTER_REASONS: &[&str] = &[
    "unroutable",
    "rejected",
    "rejected_user_properties",
    "too_large",
    "expired",
    "invalid_mapping",
    "anonymous",
    "invalid_identity",
    "excluded",
    "unparseable",
    "user_deletion",
];

/// HTTP statuses the ingest path answers with (label `status`).
pub const STATUSES: &[&str] = &[
    "200", "400", "401", "404", "405", "408", "413", "415", "503",
];

/// One metric of the catalogue.
pub(super) struct Entry {
    pub kind: &'static str,
    pub labels: Vec<&'static str>,
    pub help: &'static str,
}

/// The catalogue entry of `name`.
pub(super) fn entry(name: &str) -> Result<Entry, Error> {
    CATALOGUE
        .iter()
        .find(|(n, ..)| *n == name)
        .map(|(_, kind, labels, help)| Entry {
            kind,
            labels: labels.split(',').filter(|l| !l.is_empty()).collect(),
            help,
        })
        .ok_or_else(|| Error::Msg(format!("{name} is not in the metric catalogue")))
}
