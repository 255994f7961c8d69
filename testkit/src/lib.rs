//! `currents-heap-testkit`: test-only tooling of the `currents-heap` workspace, used by the
//! product's tests, benchmarks and the load harness (`examples/load.rs`). Never a normal
//! dependency of the product, and it does not depend on the product crate: it speaks to the
//! forwarder only over HTTP, on the command line and through JSON.
//!
//! | module | owns |
//! |---|---|
//! | [`heap`] | the stand-in's own reading of Heap's item rules (`heap-api.md`), independent of the product's validators |
//! | [`standin`] | a local Heap stand-in HTTP server (ingestion and the deletion API) that enforces Heap's documented limits (not Heap) |
//! | [`process`] | a `currents-heap serve` child process on an ephemeral port |
//! | [`nats`] | real `nats-server` clusters (JetStream) on loopback ports, for the JetStream queue's tests |
//! | [`loadgen`] | realistic Braze Currents batches for the load harness and benchmarks |
#![forbid(unsafe_code)]

pub mod heap;
pub mod loadgen;
pub mod nats;
pub mod process;
pub mod standin;
