//! Opening the queue for a maintenance command (`dlq`, `deletions`): beside a running server
//! or without one, never creating a store that is not there. `--nats-url` selects the JetStream
//! queue (its streams must exist), else the SQLite store of `--data-dir`.

use std::process::ExitCode;
use std::sync::Arc;

use currents_heap::app::jetstream_config;
use currents_heap::config::Settings;
use currents_heap::queue::Queue;
use currents_heap::queue::jetstream::JetStreamQueue;
use currents_heap::queue::sqlite::SqliteQueue;

/// Runs `f` on the queue the settings select and a single-threaded runtime, then closes the
/// queue. `f` returns what to print on failure.
pub(super) fn with_store(
    settings: &Settings,
    f: impl FnOnce(&dyn Queue, &tokio::runtime::Runtime) -> Result<(), String>,
) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("currents-heap: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let queue = match open(settings, &runtime) {
        Ok(q) => q,
        Err(e) => {
            eprintln!("currents-heap: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = f(&*queue, &runtime);
    if let Err(e) = runtime.block_on(queue.close()) {
        eprintln!("currents-heap: {e}");
        return ExitCode::FAILURE;
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("currents-heap: {e}");
            ExitCode::FAILURE
        }
    }
}

fn open(settings: &Settings, runtime: &tokio::runtime::Runtime) -> Result<Arc<dyn Queue>, String> {
    if let Some(config) = jetstream_config(settings, false) {
        let queue = runtime
            .block_on(JetStreamQueue::open(config))
            .map_err(|e| e.to_string())?;
        return Ok(Arc::new(queue));
    }
    let data_dir = &settings.data_dir;
    // A typo in --data-dir must not read as "nothing there".
    if !data_dir.join("queue.sqlite3").exists() {
        return Err(format!(
            "no store in {} (is --data-dir / CURRENTS_HEAP_DATA_DIR right?)",
            data_dir.display()
        ));
    }
    let queue = SqliteQueue::open_maintenance(data_dir).map_err(|e| e.to_string())?;
    Ok(Arc::new(queue))
}
