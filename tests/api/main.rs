//! Black-box tests of the accept path (product.md §2–§3), over real HTTP against an in-process
//! server bound to port 0 (the harness is `tests/common`, shared with the other test binaries).
//! One binary for all modules keeps link time down.
// Test code: `unwrap` is an assertion, and helpers are `pub` for the modules that share them.
#![allow(clippy::unwrap_used, unreachable_pub, missing_debug_implementations)]

#[path = "../common/mod.rs"]
mod common;

mod admin;
mod auth;
mod backpressure;
mod dedup;
mod edge;
mod encoding;
mod ingest;
mod samples;
mod shutdown;
mod validation;
