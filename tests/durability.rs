//! "A 200 means the events are on disk" (product.md §1.3), proven at the system-call level.
//!
//! `kill -9` cannot reveal a missing fsync (the page cache survives a process kill), so the
//! crash tests would pass with `synchronous=OFF`. Here `strace` follows the running forwarder:
//! for every acknowledged batch, an `fsync`/`fdatasync` of the store's write-ahead log must
//! complete after the request arrived and before the `200` is written to the socket. With
//! `synchronous=NORMAL` (WAL commits without a sync) this test fails.
//!
//! `.ci/run` installs `strace`; elsewhere, without it, the test says so and passes (under `CI`
//! it fails instead).
// Test code: `unwrap` is an assertion, and helpers are `pub` for the modules that share them.
#![allow(clippy::unwrap_used, unreachable_pub, missing_debug_implementations)]

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod common;

fn strace_available() -> bool {
    Command::new("strace")
        .arg("-V")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Descriptors of `pid` open on the store's write-ahead log.
fn wal_descriptors(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            std::fs::read_link(e.path())
                .is_ok_and(|t| t.to_string_lossy().ends_with("queue.sqlite3-wal"))
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

async fn post(addr: std::net::SocketAddr, round: usize) -> String {
    let events: Vec<_> = (0..3)
        .map(|i| {
            json!({
                "id": format!("durable-{round}-{i}"),
                "event_type": "users.messages.email.Send",
                "time": 1_764_000_000,
                "user": {"user_id": "u", "external_user_id": "someone"},
                "properties": {}
            })
        })
        .collect();
    let body = serde_json::to_vec(&json!({ "events": events })).unwrap();
    let mut raw = format!(
        "POST /currents HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer tok\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(&body);
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&raw).await.unwrap();
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).await.unwrap();
    String::from_utf8_lossy(&reply).into_owned()
}

/// Checks the trace: every `HTTP/1.1 200` written follows a completed sync of a WAL
/// descriptor that completed after its request was read. Returns how many 200s were checked.
fn check_trace(trace: &str, wal_fds: &[String]) -> usize {
    let is_wal = |fd: &str| wal_fds.iter().any(|w| w == fd);
    // Thread id → descriptor of its sync in progress (strace splits a call that another
    // thread's call interrupts into "<unfinished ...>" and "<... resumed>").
    let mut unfinished: HashMap<&str, String> = HashMap::new();
    let (mut request_seen, mut synced, mut checked) = (false, false, 0);
    for line in trace.lines() {
        let tid = line.split_whitespace().next().unwrap_or("");
        let sync_call = ["fsync(", "fdatasync("]
            .iter()
            .find_map(|c| line.split_once(c).map(|(_, rest)| rest));
        if let Some(rest) = sync_call {
            let fd = rest.split([')', ' ', '<']).next().unwrap_or("").to_owned();
            if line.contains("<unfinished") {
                unfinished.insert(tid, fd);
            } else if line.trim_end().ends_with("= 0") && is_wal(&fd) && request_seen {
                synced = true;
            }
            continue;
        }
        if (line.contains("<... fsync resumed>") || line.contains("<... fdatasync resumed>"))
            && line.trim_end().ends_with("= 0")
        {
            if let Some(fd) = unfinished.remove(tid)
                && is_wal(&fd)
                && request_seen
            {
                synced = true;
            }
            continue;
        }
        // The read may be split too: `<... recvfrom resumed>"POST /currents…`.
        if line.contains("POST /currents") && (line.contains("recvfrom") || line.contains("read")) {
            request_seen = true;
            synced = false;
            continue;
        }
        if line.contains("HTTP/1.1 200") {
            assert!(
                request_seen,
                "a 200 with no request before it in the trace:\n{line}"
            );
            assert!(
                synced,
                "the 200 was written before the write-ahead log was synced:\n{line}\n\ntrace:\n{trace}"
            );
            checked += 1;
            request_seen = false;
            synced = false;
        }
    }
    checked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_200_follows_a_sync_of_the_write_ahead_log() {
    if !strace_available() {
        assert!(
            std::env::var_os("CI").is_none(),
            "strace is missing (CI is set: .ci/run installs it)"
        );
        eprintln!("note: strace is not installed; skipping the fsync-before-200 check");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = common::spawn_forwarder(&dir.path().join("data"), common::HEAP_UNREACHABLE);
    let pid = server.pid();
    let wal = wal_descriptors(pid);
    assert!(!wal.is_empty(), "the store's WAL is open");
    let trace_path = dir.path().join("trace");
    let mut strace: Child = Command::new("strace")
        .args(["-f", "-ttt", "-s", "48", "-e"])
        .arg("trace=fsync,fdatasync,read,recvfrom,write,writev,sendto,sendmsg")
        .arg("-o")
        .arg(&trace_path)
        .args(["-p", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start strace");
    // strace says "Process N attached with M threads" once every thread is traced.
    let stderr = strace.stderr.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    // Reads strace's stderr to its end (so it never blocks or dies on a closed pipe).
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("attached") {
                let _ = tx.send(());
            }
        }
    });
    let attached = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(30)))
        .await
        .unwrap();
    assert!(attached.is_ok(), "strace could not attach to the forwarder");

    const BATCHES: usize = 5;
    for round in 0..BATCHES {
        let reply = post(server.addr, round).await;
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // SIGINT detaches strace cleanly and flushes the trace.
    let _ = Command::new("kill")
        .args(["-INT", &strace.id().to_string()])
        .status();
    let _ = strace.wait();
    let trace = std::fs::read_to_string(&trace_path).unwrap();
    assert_eq!(
        check_trace(&trace, &wal),
        BATCHES,
        "every acknowledged batch is in the trace:\n{trace}"
    );
    server.kill_9();
}
