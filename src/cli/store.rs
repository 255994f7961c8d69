//! Opening the store of `--data-dir` for a maintenance command (`dlq`, `deletions`): beside a
//! running server or without one, never creating a store that is not there.

use std::path::Path;
use std::process::ExitCode;

use currents_heap::queue::Queue;
use currents_heap::queue::sqlite::SqliteQueue;

/// Runs `f` on the store of `data_dir` and a single-threaded runtime, then closes the store.
/// `f` returns what to print on failure.
pub(super) fn with_store(
    data_dir: &Path,
    f: impl FnOnce(&SqliteQueue, &tokio::runtime::Runtime) -> Result<(), String>,
) -> ExitCode {
    // A typo in --data-dir must not read as "nothing there".
    if !data_dir.join("queue.sqlite3").exists() {
        eprintln!(
            "currents-heap: no store in {} (is --data-dir / CURRENTS_HEAP_DATA_DIR right?)",
            data_dir.display()
        );
        return ExitCode::FAILURE;
    }
    let queue = match SqliteQueue::open_maintenance(data_dir) {
        Ok(q) => q,
        Err(e) => {
            eprintln!("currents-heap: {e}");
            return ExitCode::FAILURE;
        }
    };
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
    let result = f(&queue, &runtime);
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
