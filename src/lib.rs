//! `currents-heap`: a durable, rate-paced forwarder from Braze Currents to Heap.
//!
//! # Layout
//!
//! | module | owns |
//! |---|---|
//! | [`config`] | settings: TOML file < environment < flags, validation, redaction |
//! | [`app`] | process wiring: build the store, writer and HTTP server; run until a signal; drain |
//! | [`ingest`] | the HTTP surface: `POST /currents`, `/healthz`, `/readyz`, `/metrics`, status codes |
//! | [`currents`] | the Braze Currents wire model and its structural validation (no I/O) |
//! | [`queue`] | the crash-safe SQLite store: queue, dedup window, dead letters, group commit |
//! | [`loadgen`] | realistic batches for the load generator and benchmarks |
//! | [`metrics`] | the metric catalogue and registry |
//! | [`shutdown`] | SIGTERM/SIGINT |
//! | [`telemetry`] | JSON logs via `tracing-subscriber` |
//!
//! Dependency direction: `ingest` → `currents`, `queue`, `metrics`; `currents` and `queue` know
//! nothing of HTTP; `app` wires them together.

pub mod app;
pub mod config;
pub mod currents;
pub mod dlq;
pub mod heap;
pub mod ingest;
pub mod loadgen;
pub mod metrics;
pub mod queue;
pub mod shutdown;
pub mod telemetry;
