//! The real binary as a child process: spawning `serve` and waiting until it listens,
//! posting to it as Braze does, reading its `/metrics`, killing it, reloading it, and running
//! its other commands.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use currents_heap_testkit::process::ServerProcess;
use http::Method;
use serde_json::Value;

use super::app::{APP_ID, TOKEN};
use super::client::{HttpClient, Reply, full, http_client, send, unpooled_http_client};

/// The `currents-heap` binary of this package.
pub fn forwarder_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_currents-heap"))
}

/// Spawns `currents-heap serve --listen 127.0.0.1:0 --data-dir DATA_DIR ARGS…` and waits
/// until it listens.
pub fn spawn_forwarder(data_dir: &Path, args: &[&str]) -> ServerProcess {
    ServerProcess::spawn(forwarder_bin(), data_dir, args)
}

/// [`spawn_forwarder`] taking token [`TOKEN`] and delivering to Heap app [`APP_ID`] at
/// `heap_url`, then `extra` settings.
pub fn spawn_delivering(data_dir: &Path, heap_url: &str, extra: &[&str]) -> ServerProcess {
    let mut args = vec![
        "--ingest-token",
        TOKEN,
        "--heap-app-id",
        APP_ID,
        "--heap-base-url",
        heap_url,
    ];
    args.extend_from_slice(extra);
    spawn_forwarder(data_dir, &args)
}

/// `kill -9` (from a blocking thread): no drain, no checkpoint.
pub async fn kill_9(server: ServerProcess) {
    tokio::task::spawn_blocking(move || server.kill_9())
        .await
        .unwrap();
}

/// `SIGTERM` (from a blocking thread), then waits for a clean exit.
pub async fn terminate(server: ServerProcess) {
    tokio::task::spawn_blocking(move || server.terminate())
        .await
        .unwrap();
}

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

/// A client of spawned forwarders, posting as Braze does (bearer [`TOKEN`], JSON). Errors
/// (a killed server, no answer in time) are returned, not panics.
pub struct Braze {
    client: HttpClient,
}

impl Braze {
    /// Keeps idle connections for reuse.
    pub fn new() -> Self {
        Self {
            client: http_client(),
        }
    }

    /// A new connection per request: a killed server leaves no dead pooled connection.
    pub fn unpooled() -> Self {
        Self {
            client: unpooled_http_client(),
        }
    }

    /// `POST /currents` with `body`, answered within `within`.
    pub async fn post(
        &self,
        addr: SocketAddr,
        body: impl Into<Bytes>,
        within: Duration,
    ) -> Result<Reply, String> {
        let bearer = format!("Bearer {TOKEN}");
        let headers = [
            ("authorization", bearer.as_str()),
            ("content-type", "application/json"),
        ];
        let url = format!("http://{addr}/currents");
        send(
            &self.client,
            Method::POST,
            &url,
            &headers,
            full(body),
            Some(within),
        )
        .await
    }

    /// The `/metrics` text.
    pub async fn metrics(&self, addr: SocketAddr) -> Result<String, String> {
        let url = format!("http://{addr}/metrics");
        let reply = send(
            &self.client,
            Method::GET,
            &url,
            &[],
            full(Bytes::new()),
            Some(Duration::from_secs(20)),
        )
        .await?;
        Ok(reply.text())
    }
}

/// Runs the real binary with `args` (blocking, on a blocking thread) and returns its output.
pub async fn run_binary(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(forwarder_bin())
            .args(&args)
            .env_remove("CURRENTS_HEAP_CONFIG")
            .env_remove("CURRENTS_HEAP_DATA_DIR")
            .output()
            .expect("run the currents-heap binary")
    })
    .await
    .expect("the binary runs")
}

/// `currents-heap dlq ARGS --data-dir DIR`, with the same Heap app id as the server (so a
/// replay routes to it, as an operator passing the server's configuration would).
pub async fn dlq(data_dir: &Path, args: &[&str]) -> std::process::Output {
    maintenance("dlq", data_dir, args).await
}

/// `currents-heap COMMAND ARGS --data-dir DIR --heap-app-id APP_ID`: a maintenance command
/// (`dlq`, `deletions`) with the server's data directory and Heap app id.
pub async fn maintenance(command: &str, data_dir: &Path, args: &[&str]) -> std::process::Output {
    let mut all: Vec<String> = vec![command.into()];
    all.extend(args.iter().map(|a| (*a).to_owned()));
    all.push("--data-dir".into());
    all.push(PathBuf::from(data_dir).display().to_string());
    all.push("--heap-app-id".into());
    all.push(APP_ID.into());
    run_binary(all).await
}

/// The JSON lines `dlq list` printed on stdout.
pub fn json_lines(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}
