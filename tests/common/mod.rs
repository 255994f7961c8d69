//! The one test harness, shared by every test binary that talks to the forwarder
//! (`tests/api`, `tests/delivery`, `pacing`, `routing`, `reload`, the crash tests, ...). Each
//! binary includes it with `mod common;` (or `#[path = "../common/mod.rs"] mod common;` from
//! a folder) and uses the part it needs:
//!
//! * [`client`]: one [`Reply`] for every response, one HTTP client, a hand-driven connection
//!   ([`RawConn`]) for bodies that must arrive in pieces, `/metrics` readers, polling waits;
//! * [`app`]: the in-process app builder, [`TestApp`]: a server on port 0 and a temporary data
//!   directory (restartable on it), delivering either to a Heap that refuses every connection
//!   ([`spawn_app`]) or to the Heap stand-in ([`TestApp::start`]), with readers of its store;
//! * [`process`]: the real binary as a child process ([`spawn_forwarder`],
//!   [`spawn_delivering`]), posting to it ([`Braze`]), killing and reloading it, and running
//!   its other commands;
//! * [`events`]: Braze-shaped events, batches and fixtures.
#![allow(dead_code, unused_imports)]

pub mod app;
pub mod client;
pub mod events;
pub mod process;

pub use app::*;
pub use client::*;
pub use events::*;
pub use process::*;
