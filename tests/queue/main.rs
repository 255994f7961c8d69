//! The queue seam's conformance suite, run against every store behind
//! [`currents_heap::queue::Queue`]. `conformance.rs` states each promise once, generically;
//! each store adds a [`conformance::Backend`] and one `conformance_suite!` line below.
// Test code: `unwrap` is an assertion, and helpers are `pub` for the modules that share them.
#![allow(clippy::unwrap_used, unreachable_pub, missing_debug_implementations)]

mod conformance;
mod continuity;
mod deletions;
mod model;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use currents_heap::queue::Queue;
use currents_heap::queue::jetstream::{JetStreamConfig, JetStreamQueue};
use currents_heap::queue::sqlite::{SqliteQueue, WriterConfig};
use currents_heap_testkit::nats::{NatsCluster, SharedCluster, nats_server_binary};
use tempfile::TempDir;

use conformance::{Backend, Limits};

/// The default store: one SQLite database in a temporary data directory.
struct Sqlite {
    dir: TempDir,
}

impl Backend for Sqlite {
    async fn fresh() -> Self {
        Sqlite {
            dir: tempfile::tempdir().expect("temporary data directory"),
        }
    }

    async fn open(&self, limits: Limits) -> Arc<dyn Queue> {
        let dir: PathBuf = self.dir.path().into();
        let config = WriterConfig {
            // JetStream reserves a stream's `max_bytes` on every replica's disk: the suite's
            // unlimited 1 GiB, over dozens of streams, would not be placed.
            max_queue_bytes: limits.max_queue_bytes.min(16 << 20),
            min_free_disk_bytes: 0,
            dedup_window: limits.dedup_window,
            dedup_capacity: 100_000,
            identity_map_retention: Duration::from_secs(400 * 86_400),
        };
        // A closed queue releases the data directory, so it can be opened again at once.
        Arc::new(SqliteQueue::open(&dir, config).expect("open the SQLite queue"))
    }
}

conformance_suite!(sqlite, Sqlite);

/// The JetStream store, on a three-node cluster on loopback shared by the binary's tests; each
/// backend has its own stream prefix.
struct JetStream {
    prefix: String,
}

/// The three-node cluster of this test binary, started at its first use; `None` (the checks
/// skip) when no `nats-server` is installed, outside CI.
fn nats_urls() -> Option<&'static str> {
    static CLUSTER: OnceLock<Option<SharedCluster>> = OnceLock::new();
    CLUSTER
        .get_or_init(|| {
            let Some(binary) = nats_server_binary() else {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "no nats-server: .ci/run installs it (CURRENTS_HEAP_NATS_SERVER)"
                );
                eprintln!("no nats-server installed: the JetStream queue checks are skipped");
                return None;
            };
            // Started off the test's runtime thread: the start blocks until the cluster is up.
            let cluster = std::thread::spawn(move || NatsCluster::start(&binary, 3))
                .join()
                .expect("start a three-node NATS cluster");
            Some(cluster.outlive_nothing())
        })
        .as_ref()
        .map(SharedCluster::urls)
}

impl Backend for JetStream {
    const PAYLOAD_BYTES: bool = false;
    const MODEL_CASES: u32 = 12;
    const MODEL: bool = false;

    fn available() -> bool {
        nats_urls().is_some()
    }

    async fn fresh() -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        JetStream {
            prefix: format!("t{}-{n}", std::process::id()),
        }
    }

    async fn open(&self, limits: Limits) -> Arc<dyn Queue> {
        let urls = nats_urls().expect("checked by `available`");
        let config = JetStreamConfig {
            servers: urls.split(',').map(str::to_owned).collect(),
            prefix: self.prefix.clone(),
            replicas: 3,
            creds: None,
            // JetStream reserves a stream's `max_bytes` on every replica's disk: the suite's
            // unlimited 1 GiB, over dozens of streams, would not be placed.
            max_queue_bytes: limits.max_queue_bytes.min(16 << 20),
            dedup_window: limits.dedup_window,
            identity_map_retention: Duration::from_secs(400 * 86_400),
            provision: true,
        };
        Arc::new(
            JetStreamQueue::open(config)
                .await
                .expect("open the JetStream queue"),
        )
    }
}

conformance_suite!(jetstream, JetStream);
