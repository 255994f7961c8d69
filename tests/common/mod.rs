//! Shared by the test binaries that spawn the real forwarder (`hostile`, `tls`, `reload`): its
//! settings with an unreachable Heap, `SIGHUP`, and waiting for a log line. Each binary uses a
//! part of it.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use currents_heap_testkit::process::ServerProcess;

/// Token `tok`, Heap app 1 at a port where nothing listens, retried only after an hour: the
/// queue only grows, and nothing leaves the machine.
pub const HEAP_UNREACHABLE: &[&str] = &[
    "--ingest-token",
    "tok",
    "--heap-app-id",
    "1",
    "--heap-base-url",
    "http://127.0.0.1:9",
    "--retry-initial-backoff",
    "1h",
    "--retry-max-backoff",
    "1h",
];

/// `HEAP_UNREACHABLE` followed by `extra`.
pub fn heap_unreachable_and<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    HEAP_UNREACHABLE
        .iter()
        .copied()
        .chain(extra.iter().copied())
        .collect()
}

/// `kill -HUP` the server: reload its configuration and TLS files.
pub fn sighup(server: &ServerProcess) {
    let sent = std::process::Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .expect("run kill -HUP");
    assert!(sent.success());
}

/// Waits (at most `within`) until the server has logged a line containing `needle`.
pub async fn wait_for_log(server: &ServerProcess, needle: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while !server.log().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in the log:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
