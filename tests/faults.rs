//! Fault injection on the store file itself: a truncated or overwritten `queue.sqlite3` makes
//! `serve` refuse to start, say so clearly, and leave the file untouched — it never silently
//! starts over with an empty queue.

use std::path::Path;
use std::process::Command;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_currents-heap"));
    for (k, _) in std::env::vars() {
        if k.starts_with("CURRENTS_HEAP_") || k.starts_with("HEAP_") {
            c.env_remove(k);
        }
    }
    c
}

/// A store holding a few queued events, closed cleanly (WAL checkpointed into the file).
fn store_with_events(dir: &Path) {
    use currents_heap::queue::{NewEvent, Store, Writer, WriterConfig};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = Store::open(dir).unwrap();
    let (writer, handle) = Writer::spawn(
        &store,
        WriterConfig {
            max_queue_bytes: u64::MAX,
            min_free_disk_bytes: 0,
            dedup_window: std::time::Duration::from_secs(3600),
            dedup_capacity: 1000,
        },
    )
    .unwrap();
    let events = (0..200)
        .map(|i| NewEvent {
            route: "default".into(),
            app_id: "1".into(),
            workspace: None,
            dead_letter: None,
            event_id: format!("e-{i}"),
            event_type: "users.messages.email.Send".into(),
            identity: Some("u".into()),
            event_time: 1,
            payload: bytes::Bytes::from(format!(
                "{{\"id\":\"e-{i}\",\"pad\":\"{}\"}}",
                "x".repeat(500)
            )),
        })
        .collect();
    rt.block_on(writer.append(events)).unwrap();
    drop(writer);
    handle.close();
}

fn serve(dir: &Path) -> std::process::Output {
    bin()
        .args([
            "serve",
            "--dry-run",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir)
        .output()
        .unwrap()
}

#[test]
fn a_truncated_store_is_refused_with_a_clear_message_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    store_with_events(dir.path());
    let file = dir.path().join("queue.sqlite3");
    let len = std::fs::metadata(&file).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    f.set_len(len / 3).unwrap();
    drop(f);
    let before = std::fs::read(&file).unwrap();

    let out = serve(dir.path());
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("is damaged") && err.contains("will not start"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&file).unwrap(),
        before,
        "the damaged file was modified"
    );
}

#[test]
fn a_store_overwritten_with_garbage_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    store_with_events(dir.path());
    let file = dir.path().join("queue.sqlite3");
    let garbage: Vec<u8> = (0..8192u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&file, &garbage).unwrap();
    let out = serve(dir.path());
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("is damaged"), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), garbage);
}
