//! `currents-heap`: a durable, rate-paced forwarder from Braze Currents to Heap.
//!
//! # Layout
//!
//! | module | owns |
//! |---|---|
//! | [`config`] | settings, each declared once (`config/table.rs`): TOML file < environment < flags, validation, redaction |
//! | [`app`] | process wiring: build the store, writer and HTTP server; run until a signal; drain |
//! | [`lanes`] | the delivery lanes of a configuration (one per Heap app id) and how a reload replaces them |
//! | [`leadership`] | with several replicas on JetStream: one holder per lane (a lease), the fence that stops a replica that lost it |
//! | [`reload`] | `SIGHUP`: re-read the configuration, swap tokens/routes/lanes, refuse an invalid file |
//! | [`server`] | the listener: connection cap, header-read and idle timeouts, serving each connection |
//! | [`ingest`] | the HTTP surface: `POST /currents`, `/healthz`, `/readyz`, `/metrics`, status codes |
//! | [`currents`] | the Braze Currents wire model and its structural validation (no I/O) |
//! | [`transform`] | the pure, documented mapping of one Currents event to Heap items (`docs/MAPPING.md`) |
//! | [`heap`] | Heap's server-side API: request shapes and limits ([`heap::model`]), the batch builder ([`heap::bulk`]), HTTPS client, retry classification, the deletion (privacy) API client ([`heap::deletion`]) |
//! | [`queue`] | the [`queue::Queue`] seam and its stores ([`queue::sqlite`]: queue, dedup window, dead letters, group commit; identity map, tombstones, deletion ledger; [`queue::jetstream`]: the same in NATS JetStream, and the lanes' leases) |
//! | [`delivery`] | one lane per Heap app id, as steps: refill, select, send, Heap's answer |
//! | [`deletions`] | Braze user deletions on their way to Heap: one submitter per Heap account walks the ledger (submit, poll) |
//! | [`dlq`] | `dlq list/replay/purge` over the queue |
//! | [`routing`] | which route (and Heap app id) an event takes |
//! | [`metrics`] | the metric catalogue and registry |
//! | [`shutdown`] | SIGTERM/SIGINT |
//! | [`telemetry`] | JSON logs via `tracing-subscriber` |
//!
//! Test-only tooling (the Heap stand-in, the load generator, the forwarder as a child process)
//! lives in the workspace's dev-only crate `currents-heap-testkit` (`testkit/`), which the
//! product never depends on.
//!
//! Dependency direction (no cycle; `config` imports nothing of the crate): `ingest` →
//! `currents`, `queue`, `metrics`, `routing`, `transform` (which Heap user an event is for),
//! `delivery` (a lane's bell); `deletions` → `queue`, `heap`, `metrics`, `delivery` (backoff); `delivery` → `queue`, `transform`, `heap`,
//! `metrics`, `config`; `metrics` → the label sets of `currents`, `transform`, `heap`; `currents` and `heap` never import each other (only `transform` sees
//! both); `currents` and `queue` know nothing of HTTP; `app` wires them together; only `app`
//! and the `dlq` command choose a queue store, everything else sees the [`queue::Queue`] trait.
#![forbid(unsafe_code)]

pub mod app;
pub mod config;
pub mod currents;
pub mod deletions;
pub mod delivery;
pub mod dlq;
pub mod heap;
pub mod ingest;
pub mod lanes;
pub mod leadership;
pub mod metrics;
pub mod queue;
pub mod reload;
pub mod routing;
pub mod server;
pub mod shutdown;
pub mod telemetry;
pub mod transform;
