//! `currents-heap`: a durable, rate-paced forwarder from Braze Currents to Heap.
//!
//! # Layout
//!
//! | module | owns |
//! |---|---|
//! | [`config`] | settings: TOML file < environment < flags, validation, redaction |
//! | [`app`] | process wiring: build the store, writer and HTTP server; run until a signal; drain |
//! | [`lanes`] | the delivery lanes of a configuration (one per Heap app id) and how a reload replaces them |
//! | [`reload`] | `SIGHUP`: re-read the configuration, swap tokens/routes/lanes, refuse an invalid file |
//! | [`server`] | the listener: connection cap, header-read and idle timeouts, serving each connection |
//! | [`ingest`] | the HTTP surface: `POST /currents`, `/healthz`, `/readyz`, `/metrics`, status codes |
//! | [`currents`] | the Braze Currents wire model and its structural validation (no I/O) |
//! | [`transform`] | the pure, documented mapping of one Currents event to Heap items (`docs/MAPPING.md`) |
//! | [`heap`] | Heap's server-side API: request shapes and limits ([`heap::model`]), HTTPS client, retry classification |
//! | [`queue`] | the crash-safe SQLite store: queue, dedup window, dead letters, group commit |
//! | [`metrics`] | the metric catalogue and registry |
//! | [`shutdown`] | SIGTERM/SIGINT |
//! | [`telemetry`] | JSON logs via `tracing-subscriber` |
//!
//! Test-only tooling (the Heap stand-in, the load generator, the forwarder as a child process)
//! lives in the workspace's dev-only crate `currents-heap-testkit` (`testkit/`), which the
//! product never depends on.
//!
//! Dependency direction: `ingest` → `currents`, `queue`, `metrics`; `currents` and `queue` know
//! nothing of HTTP; `app` wires them together.
#![forbid(unsafe_code)]

pub mod app;
pub mod config;
pub mod currents;
pub mod delivery;
pub mod dlq;
pub mod heap;
pub mod ingest;
pub mod lanes;
pub mod metrics;
pub mod queue;
pub mod reload;
pub mod routing;
pub mod server;
pub mod shutdown;
pub mod telemetry;
pub mod transform;
