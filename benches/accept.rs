//! The accept path without the network: parse + validate a 100-event batch, and the same plus
//! the durable append (group commit, fsync) through the real writer thread.
//!
//! `cargo bench --bench accept`. Templates come from `../shared/currents-samples/custom-http`
//! when present, else `fixtures/currents`. Every iteration uses fresh ids, so the append really
//! inserts (a repeated id would only hit the dedup window).
// Test code: `unwrap` is an assertion, and helpers are `pub` for the modules that share them.
#![allow(clippy::unwrap_used, unreachable_pub, missing_debug_implementations)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use currents_heap::currents::parse_batch;
use currents_heap::queue::HeapUser;
use currents_heap::queue::NewEvent;
use currents_heap::queue::sqlite::{Store, Writer, WriterConfig};
use currents_heap_testkit::loadgen::{Template, build_batch, load_templates};

const BATCH: usize = 100;

fn templates() -> Vec<Template> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let shared = root.join("../shared/currents-samples/custom-http");
    let dir = if shared.is_dir() {
        shared
    } else {
        root.join("fixtures/currents")
    };
    let t = load_templates(&dir);
    assert!(!t.is_empty(), "no template events under {}", dir.display());
    t
}

fn to_new_events(body: &Bytes, route: &Arc<str>) -> Vec<NewEvent> {
    let batch = parse_batch(body).expect("valid batch");
    batch
        .events
        .iter()
        .map(|ev| NewEvent {
            route: Arc::clone(route),
            app_id: Arc::clone(route),
            workspace: None,
            dead_letter: None,
            event_id: ev.id.clone().into_owned(),
            event_type: ev.event_type.clone().into_owned(),
            identity: ev.external_user_id.as_ref().map(|s| s.clone().into_owned()),
            event_time: ev.time,
            payload: body.slice_ref(ev.raw.get().as_bytes()),
            // As ingest does: the identity map is part of the accept path.
            braze_user_id: ev.braze_user_id.as_ref().map(|s| s.clone().into_owned()),
            heap_user: ev
                .external_user_id
                .as_ref()
                .map(|s| HeapUser::Identity(s.clone().into_owned())),
            deletion: false,
        })
        .collect()
}

fn bench_accept(c: &mut Criterion) {
    let templates = templates();
    let mut counter = 0u64;
    let sample = build_batch(&templates, BATCH, 0, &mut counter, 1);

    let mut group = c.benchmark_group("accept");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("parse_validate_100", |b| {
        b.iter(|| parse_batch(&sample).expect("valid").events.len())
    });

    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (writer, handle) = Writer::spawn(
        &store,
        WriterConfig {
            max_queue_bytes: u64::MAX,
            min_free_disk_bytes: 0,
            dedup_window: Duration::from_secs(24 * 3600),
            dedup_capacity: 4_000_000,
            identity_map_retention: std::time::Duration::from_secs(400 * 86_400),
        },
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let route: Arc<str> = Arc::from("default");

    // One request at a time: every batch pays a whole fsync.
    group.bench_function("parse_validate_append_100_serial", |b| {
        b.iter(|| {
            let body = Bytes::from(build_batch(&templates, BATCH, 1, &mut counter, 1));
            let events = to_new_events(&body, &route);
            rt.block_on(writer.append(events)).unwrap().accepted()
        })
    });

    // Eight requests in flight, as with eight Braze connections: they share commits.
    group.throughput(Throughput::Elements(8 * BATCH as u64));
    group.bench_function("parse_validate_append_100_x8_concurrent", |b| {
        b.iter(|| {
            let bodies: Vec<Bytes> = (0..8)
                .map(|c| Bytes::from(build_batch(&templates, BATCH, 2 + c, &mut counter, 1)))
                .collect();
            rt.block_on(async {
                let tasks: Vec<_> = bodies
                    .into_iter()
                    .map(|body| {
                        let writer = writer.clone();
                        let route = Arc::clone(&route);
                        tokio::spawn(async move {
                            let events = to_new_events(&body, &route);
                            writer.append(events).await.unwrap().accepted()
                        })
                    })
                    .collect();
                let mut n = 0;
                for t in tasks {
                    n += t.await.unwrap();
                }
                n
            })
        })
    });
    group.finish();
    drop(writer);
    handle.close();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(8));
    targets = bench_accept
}
criterion_main!(benches);
