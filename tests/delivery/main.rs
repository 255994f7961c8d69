//! Black-box tests of the delivery side (product.md §4–§6): Braze batches go in over real HTTP,
//! the in-process server delivers them to the Heap stand-in (`currents_heap_testkit::standin`), and
//! the tests look at what the stand-in received, at `/metrics` and at the dead-letter store.
//! One binary for all modules keeps link time down; the pacing measurements have a binary of
//! their own (`tests/pacing.rs`), so no other test competes with them for the two cores.
//!
//! Budgets are the production ones unless a test scales them (`heap_budget_window`); backoffs
//! are shortened to milliseconds; every wait polls with a deadline. The harness is
//! `tests/common` (`TestApp::start`), shared with the other test binaries.
// Test code: `unwrap` is an assertion, and helpers are `pub` for the modules that share them.
#![allow(clippy::unwrap_used, unreachable_pub, missing_debug_implementations)]

#[path = "../common/mod.rs"]
mod common;

mod dlq;
mod end_to_end;
mod parity;
mod quota;
mod rejections;
mod retries;
mod sizes;
